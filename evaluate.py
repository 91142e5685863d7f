"""Folder-vs-folder image metrics, as SR3 / DREAM compute them (the recipes: metrics.py).

    python evaluate.py --pred out/sr --gt data/hr_128 [--lr data/lr_16] [--y-channel] [--no-lpips] [--json]

Images are matched by file name (without extension); `--json` prints one JSON object with the mean of each metric
(non-finite numbers as null). Sweeps over checkpoints and sampling steps: experiments/sweep.py.
"""
import argparse
import json
import math
import os
import sys

import torch

import data
from metrics import RECIPE, compute_metrics, lpips_fn, mean_metrics


def _by_stem(root):
    """{relative path without extension: path} of the images of a folder / .zip (data.list_images)."""
    out = {}
    for p in data.list_images(root):
        relative = os.path.basename(p) if p == root else os.path.relpath(p, root)
        key = os.path.splitext(relative)[0].replace(os.sep, "/")
        if key in out:
            raise data.DataError(f"{p} and {out[key]} have the same name: cannot match them by name")
        out[key] = p
    return out


def evaluate_dirs(pred_dir, gt_dir, lr_dir=None, y_channel=False, use_lpips=True, batch_values=2**21):
    """Means over the images of pred_dir and gt_dir whose names (stems) match; sizes must agree."""
    preds, gts, lrs = _by_stem(pred_dir), _by_stem(gt_dir), (_by_stem(lr_dir) if lr_dir else None)
    names = sorted(set(preds) & set(gts))
    if not names:
        raise data.DataError(f"no image names in common between {pred_dir} ({len(preds)} images) and {gt_dir} ({len(gts)} images)")
    lp, reason = lpips_fn() if use_lpips else (None, "disabled")
    per, buf = {}, []

    def flush():  # a batch of same-size images (~batch_values floats): fewer tiny ops, bounded memory
        if buf:
            p, g, lr = (torch.stack(t) if t[0] is not None else None for t in zip(*buf))
            for k, v in compute_metrics(p, g, lr, lp, y_channel).items():
                per.setdefault(k, []).extend(v)
            buf.clear()

    for name in names:
        p, g = data.load_image(preds[name]), data.load_image(gts[name])
        if p.shape != g.shape:
            raise data.DataError(f"{preds[name]}: size {tuple(p.shape[1:])} differs from {gts[name]}: {tuple(g.shape[1:])}")
        if lrs is not None and name not in lrs:
            raise data.DataError(f"no low-res image for {preds[name]} in {lr_dir}")
        lr = data.load_image(lrs[name]) if lrs is not None else None
        if buf and (len(buf) * p.numel() >= batch_values or buf[0][0].shape != p.shape
                    or (lr is not None and buf[0][2].shape != lr.shape)):
            flush()
        buf.append((p, g, lr))
    flush()
    out = dict(mean_metrics(per), unmatched=len(set(preds) ^ set(gts)))
    return out if lp is not None else dict(out, lpips_skipped=reason)


# ----------------------------------------------------------------------------- CLI
def build_parser():
    ap = argparse.ArgumentParser(description="PSNR / SSIM / consistency / LPIPS of a folder of outputs.")
    ap.add_argument("--pred", help="folder of predicted images")
    ap.add_argument("--gt", help="folder of ground-truth images (same file names)")
    ap.add_argument("--lr", help="folder of low-res inputs (same file names): adds consistency")
    ap.add_argument("--y-channel", action="store_true", help="also report psnr_y / ssim_y (BT.601 luma)")
    ap.add_argument("--no-lpips", action="store_true", help="skip LPIPS even if available")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return ap


def print_report(res, as_json=False):
    if as_json:
        finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in res.items()}
        print(json.dumps(finite))
        return
    print(f"{'metric':<14}{'mean':>12}")
    for k in [k for k in ("psnr", "ssim", "psnr_y", "ssim_y", "lpips") if k in res]:
        print(f"{k:<14}{res[k]:>12.4f}")
    c = res.get("consistency")
    if c is not None:
        print(f"{'consistency':<14}{c:>12.3e}   (x1e5, as DREAM prints it: {c * 1e5:.3f})")
    if "lpips_skipped" in res:
        print(f"{'lpips':<14}{'skipped':>12}   ({res['lpips_skipped']})")
    ignored = f" ({res['unmatched']} files without a partner ignored)" if res.get("unmatched") else ""
    print(f"n images: {res['n']}{ignored}\n{RECIPE}")


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.pred or not args.gt:
        ap.error("--pred and --gt are required")
    try:
        res = evaluate_dirs(args.pred, args.gt, args.lr, args.y_channel, use_lpips=not args.no_lpips)
    except (data.DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
