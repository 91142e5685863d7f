"""Folder-vs-folder image metrics, as SR3 / DREAM compute them (the recipes: metrics.py).

    python evaluate.py --pred out/sr --gt data/hr_128 [--lr data/lr_16] [--y-channel] [--no-lpips] [--json]

Images are matched by file name (without extension); `--json` prints one JSON object with the mean of each metric
(non-finite numbers as null). Sweeps over checkpoints and sampling steps: experiments/sweep.py.

    python evaluate.py --pred runs/relay_gen --gt data/faces_64 --kid --fid [--kid-subset N] [--json]

--kid / --fid (generation, RDM's metrics; keys kid, kid_std, fid): every image under --pred (recursive; all of one
size, so a stray grid is refused by name) vs every one under --gt, names need not match; real images of another size
are resized (bicubic, data.resize) to the size of the samples. The images stream through the metrics in batches, and
the report says which files were scored (key `scored`: how many, under which folder, first .. last). They use
torch-fidelity's Inception (optional: pip install torch-fidelity; weights download once). When it is missing or
offline, one line on stderr says so, the other metrics still print and the exit code stays 0.
"""
import argparse
import json
import math
import os
import sys

import torch

import data
import metrics
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


def _load_batches(paths, size, batch=64, resize=True):
    """Batches (B,3,H,W) of the images at paths, read as they are needed (never the whole folder at once), all of
    size (H, W): images of another size are resized (bicubic, data.resize) when `resize`, else refused in one line
    (samples of one generator share a size: another one is not a sample, e.g. an old grid.png)."""
    buf = []
    for p in paths:
        x = data.load_image(p)
        if tuple(x.shape[-2:]) != size and not resize:
            raise data.DataError(f"{p}: {x.shape[-1]}x{x.shape[-2]}, but the first sample is {size[1]}x{size[0]}: "
                                 f"the samples of --pred must share one size (is it a grid? move it out)")
        buf.append(x if tuple(x.shape[-2:]) == size else data.resize(x, size))
        if len(buf) == batch:
            yield torch.stack(buf)
            buf = []
    if buf:
        yield torch.stack(buf)


def generation_metrics(pred_dir, gt_dir, use_kid=True, use_fid=True, kid_subset=None, feature=None, batch=64):
    """KID (kid, kid_std) / FID of every image under pred_dir (samples, recursive) vs every one under gt_dir (real),
    names need not match; real images are resized to the size of the first sample, samples of another size are
    refused. The images stream through the metrics in batches of `batch` (only Inception's features are kept).
    Raises metrics.MetricUnavailable if no Inception."""
    fake_paths, real_paths = data.list_images(pred_dir), data.list_images(gt_dir)
    if len(fake_paths) < 2 or len(real_paths) < 2:
        raise data.DataError(f"KID/FID need at least 2 images in each of {pred_dir} ({len(fake_paths)}) "
                             f"and {gt_dir} ({len(real_paths)})")
    size = tuple(data.load_image(fake_paths[0]).shape[-2:])
    fake = _load_batches(fake_paths, size, batch, resize=False)
    real = _load_batches(real_paths, size, batch)
    out = metrics.kid_fid(fake, real, len(fake_paths), len(real_paths), use_kid, use_fid, feature, kid_subset)
    return dict(out, n_fake=len(fake_paths), n_real=len(real_paths),
                scored=f"{len(fake_paths)} images under {pred_dir} ({_span(pred_dir, fake_paths)}) vs "
                       f"{len(real_paths)} under {gt_dir} ({_span(gt_dir, real_paths)})")


def _span(root, paths):
    """'first .. last' file names of a sorted listing, relative to root."""
    names = [os.path.relpath(p, root) if p != root else os.path.basename(p) for p in (paths[0], paths[-1])]
    return names[0] if len(paths) == 1 else f"{names[0]} .. {names[-1]}"


def evaluate_dirs(pred_dir, gt_dir, lr_dir=None, y_channel=False, use_lpips=True, batch_values=2**21,
                  allow_unmatched=False):
    """Means over the images of pred_dir and gt_dir whose names (stems) match; sizes must agree.
    allow_unmatched (KID/FID runs): no names in common, or images of other sizes, give {n: 0, pixel_skipped: why}
    instead of an error."""
    preds, gts, lrs = _by_stem(pred_dir), _by_stem(gt_dir), (_by_stem(lr_dir) if lr_dir else None)
    names = sorted(set(preds) & set(gts))
    if not names and allow_unmatched:
        return {"n": 0, "pixel_skipped": "no file names in common between --pred and --gt"}
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
            if allow_unmatched:  # samples of a generator vs real images of another size
                return {"n": 0, "pixel_skipped": f"sizes differ ({preds[name]}: {tuple(p.shape[1:])}, "
                                                 f"{gts[name]}: {tuple(g.shape[1:])}): no paired metrics"}
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
    ap.add_argument("--kid", action="store_true",
                    help="KID (mean +- std over subsets) of all --pred images (samples) vs all --gt images (real); "
                         "names need not match, real images of another size are resized (bicubic) to the sample "
                         "size. Needs torch-fidelity's Inception (pip install torch-fidelity); if missing, one line "
                         "on stderr and the other metrics still print (exit 0)")
    ap.add_argument("--fid", action="store_true", help="FID, as --kid (biased at small n: not the paper's 50k FID)")
    ap.add_argument("--kid-subset", type=int, default=None,
                    help="KID subset size (default min(n_pred, n_gt, 1000); 100 subsets)")
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
    if "flat_noise" in res:
        print(f"{'flat_noise':<14}{res['flat_noise']:>12.4f}   (speckle where gt is smooth; 1 = as much as gt has)")
    if "grid_texture" in res:
        print(f"{'grid_texture':<14}{res['grid_texture']:>12.4f}   (LR-grid texture; 1 = none, real faces 0.99)")
    c = res.get("consistency")
    if c is not None:
        print(f"{'consistency':<14}{c:>12.3e}   (x1e5, as DREAM prints it: {c * 1e5:.3f})")
    if "kid" in res:
        print(f"{'kid':<14}{res['kid']:>12.5f}   +- {res['kid_std']:.5f} (std over 100 subsets of {res['kid_subset']})")
    if "fid" in res:
        print(f"{'fid':<14}{res['fid']:>12.3f}   ({res['n_fake']} samples vs {res['n_real']} real: biased at small n)")
    if "scored" in res:
        print(f"{'kid/fid on':<14}{res['scored']}")
    if "generation_skipped" in res:
        print(f"{'kid/fid':<14}{'skipped':>12}   ({res['generation_skipped']})")
    if "pixel_skipped" in res:
        print(f"psnr/ssim skipped ({res['pixel_skipped']})")
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
        res = evaluate_dirs(args.pred, args.gt, args.lr, args.y_channel, use_lpips=not args.no_lpips,
                            allow_unmatched=args.kid or args.fid)
        if args.kid or args.fid:
            try:
                res.update(generation_metrics(args.pred, args.gt, args.kid, args.fid, args.kid_subset))
            except metrics.MetricUnavailable as e:  # optional extra: say what is missing, keep the other metrics
                print(f"evaluate: {e}", file=sys.stderr)
                res["generation_skipped"] = str(e)
    except (data.DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
