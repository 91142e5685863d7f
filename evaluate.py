"""Image metrics as SR3 / DREAM compute them, a folder-vs-folder CLI, and a loss-curve plot.

    python evaluate.py --pred out/sr --gt data/hr_128 [--lr data/lr_16] [--y-channel] [--json]

Recipes, as SR3 / DREAM compute them (so our numbers compare with theirs):
* images are quantized as SR3's tensor2img: clamp [-1,1] -> [0,1] -> x255 -> round (float32 math), uint8 values;
* PSNR = 10 log10(255^2 / MSE), MSE over all RGB values of one image, no crop, no Y. Identical images: +inf
  (SR3's calculate_psnr; a mean with one is inf; --json writes non-finite numbers as null);
* SSIM (Wang 2004) on the 0-255 values in float64: 11x11 Gaussian window sigma 1.5, C1 = (0.01*255)^2,
  C2 = (0.03*255)^2, 'valid' region only (5 px dropped per side), mean over pixels and RGB channels;
* psnr_y / ssim_y (--y-channel): BasicSR's rgb2ycbcr luma, ITU-R BT.601 studio swing (16-235), unrounded:
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on 0-255 values;
* consistency = MSE on the [0,1] scale of data.resize(pred, lr size, bicubic) vs lr (raw; DREAM prints x1e5);
* LPIPS (AlexNet, `lpips` package, only when its weights are already on disk) on [-1,1] inputs, the
  package's convention; the DREAM code feeds [0,1], so its LPIPS numbers are not comparable.
"""
import argparse
import json
import math
import os
import sys

import torch

import data

RECIPE = ("PSNR/SSIM on RGB uint8 0-255, SSIM 11x11 gaussian sigma 1.5 valid, no crop; "
          "consistency = MSE[0,1] of bicubic-down(pred) vs lr")


def _batch(x):
    x = torch.as_tensor(x)
    return x.unsqueeze(0) if x.dim() == 3 else x


def quantize(x):
    """[-1,1] floats -> the uint8 values (0..255) as float64, as SR3's tensor2img (float32 math, half to even)."""
    x = torch.as_tensor(x).float().clamp(-1, 1)
    return ((x + 1) / 2 * 255.0).round().double()


def rgb_to_y(q):
    """(B,3,H,W) 0-255 RGB -> (B,1,H,W) BT.601 studio-swing luma (16-235), BasicSR's rgb2ycbcr(y_only=True)."""
    w = q.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return (q * w).sum(1, keepdim=True) / 255.0 + 16.0


def _prep(pred, gt, y_channel):
    pred, gt = _batch(pred), _batch(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    p, g = quantize(pred), quantize(gt)
    return (rgb_to_y(p), rgb_to_y(g)) if y_channel else (p, g)


def psnr(pred, gt, y_channel=False):
    """Per-image PSNR (B,) in dB of [-1,1] images after uint8 quantization; +inf for identical images."""
    p, g = _prep(pred, gt, y_channel)
    mse = (p - g).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse)  # mse == 0 -> +inf


def _gaussian_valid(n, device=None, size=11, sigma=1.5):
    """(n-10, n) banded matrix M: M @ v = 'valid' 1-D Gaussian filtering of v (no padding, 5 px lost per side).
    Taps = cv2.getGaussianKernel(11, 1.5) = scipy's gaussian_filter(sigma=1.5, truncate=3.5) used by skimage."""
    k = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    k = torch.exp(-k ** 2 / (2 * sigma ** 2))
    rows = torch.arange(n - size + 1, device=device).unsqueeze(1)
    m = torch.zeros(n - size + 1, n, dtype=torch.float64, device=device)
    m[rows, rows + torch.arange(size, device=device)] = k / k.sum()
    return m


def ssim(pred, gt, y_channel=False):
    """Per-image SSIM (B,), SR3's calculate_ssim: float64, 11x11 gaussian, valid region, mean over pixels+channels."""
    p, g = _prep(pred, gt, y_channel)
    H, W = p.shape[-2:]
    if H < 11 or W < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {H}x{W}")
    x = torch.stack([p, g, p * p, g * g, p * g])  # (5, B, C, H, W)
    mu1, mu2, e11, e22, e12 = _gaussian_valid(H, x.device) @ x @ _gaussian_valid(W, x.device).T  # separable 2-D filter
    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s1, s2, s12 = e11 - mu1 ** 2, e22 - mu2 ** 2, e12 - mu1 * mu2
    smap = (2 * mu1 * mu2 + C1) * (2 * s12 + C2) / ((mu1 ** 2 + mu2 ** 2 + C1) * (s1 + s2 + C2))
    return smap.flatten(1).mean(1)


def consistency(pred, lr):
    """Per-image (B,) MSE in [0,1] between bicubic-down(pred) (data.resize, uint8 PIL) and lr (quantized)."""
    pred, lr = _batch(pred), _batch(lr)
    size = tuple(lr.shape[-2:])
    down = data.resize(pred, size)
    return ((quantize(down) - quantize(lr)) / 255.0).pow(2).flatten(1).mean(1)


_LPIPS = {}


def lpips_fn(net="alex"):
    """(fn, reason): fn(pred, gt) -> (B,) LPIPS of [-1,1] images, or (None, why) if unavailable. Never downloads."""
    if net in _LPIPS:
        return _LPIPS[net]
    try:
        import lpips as lp
        import torchvision
        wdir = os.path.join(os.path.dirname(lp.__file__), "weights", "v0.1", f"{net}.pth")
        weights = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights"}[net]  # torchvision loads the backbone
        url = getattr(torchvision.models, weights).IMAGENET1K_V1.url
        backbone = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        missing = [f for f in (wdir, backbone) if not os.path.isfile(f)]
        if missing:
            result = (None, f"LPIPS weights not on disk ({', '.join(missing)}); not downloading")
        else:
            model = lp.LPIPS(net=net, verbose=False).eval()

            def fn(pred, gt):  # [-1,1] in (LPIPS' own convention), on pred's device
                pred, gt = _batch(pred).float().clamp(-1, 1), _batch(gt).float().clamp(-1, 1)
                with torch.no_grad():
                    return model.to(pred.device)(pred, gt.to(pred.device)).flatten().cpu()
            result = (fn, "")
    except Exception as e:  # not installed, no torchvision, corrupt weights...
        result = (None, f"LPIPS unavailable: {type(e).__name__}: {e}".splitlines()[0])
    _LPIPS[net] = result
    return result


def compute_metrics(pred, gt, lr=None, lpips=None, y_channel=False):
    """Per-image lists: psnr, ssim (+ psnr_y, ssim_y), consistency if lr given, lpips if a callable is given."""
    out = {"psnr": psnr(pred, gt).tolist(), "ssim": ssim(pred, gt).tolist()}
    if y_channel:
        out["psnr_y"] = psnr(pred, gt, True).tolist()
        out["ssim_y"] = ssim(pred, gt, True).tolist()
    if lr is not None:
        out["consistency"] = consistency(pred, lr).tolist()
    if lpips is not None:
        out["lpips"] = lpips(pred, gt).tolist()
    return out


def mean_metrics(per_image):
    """Lists -> means, plus n (the number of images)."""
    out = {k: sum(v) / len(v) for k, v in per_image.items() if v}
    out["n"] = max((len(v) for v in per_image.values()), default=0)
    return out


def _by_stem(root):
    """{relative path without extension: path} of the images of a folder / .zip (data.list_images)."""
    out = {}
    for p in data.list_images(root):
        key = os.path.splitext(os.path.basename(p) if p == root else os.path.relpath(p, root))[0]
        key = key.replace(os.sep, "/")
        if key in out:
            raise data.DataError(f"{p} and {out[key]} have the same name: cannot match them by name")
        out[key] = p
    return out


def evaluate_dirs(pred_dir, gt_dir, lr_dir=None, y_channel=False, use_lpips=True, batch_values=2**21):
    """Means over the images of pred_dir and gt_dir whose names (stems) match; sizes must agree."""
    preds, gts = _by_stem(pred_dir), _by_stem(gt_dir)
    lrs = _by_stem(lr_dir) if lr_dir else None
    names = sorted(set(preds) & set(gts))
    if not names:
        raise data.DataError(f"no image names in common between {pred_dir} ({len(preds)} images) "
                             f"and {gt_dir} ({len(gts)} images)")
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
            raise data.DataError(f"{preds[name]}: size {tuple(p.shape[1:])} differs from "
                                 f"{gts[name]}: {tuple(g.shape[1:])}")
        lr = None
        if lrs is not None:
            if name not in lrs:
                raise data.DataError(f"no low-res image for {preds[name]} in {lr_dir}")
            lr = data.load_image(lrs[name])
        if buf and (len(buf) * p.numel() >= batch_values or buf[0][0].shape != p.shape
                    or (lr is not None and buf[0][2].shape != lr.shape)):
            flush()
        buf.append((p, g, lr))
    flush()
    out = mean_metrics(per)
    out["unmatched"] = len(set(preds) ^ set(gts))
    if lp is None:
        out["lpips_skipped"] = reason
    return out


# ----------------------------------------------------------------------------- plots

def _read_jsonl(path):
    """The JSON objects with a numeric `step`; a missing file, junk or a half-written last line are skipped."""
    rows = []
    with open(path, errors="replace") if os.path.isfile(path) else open(os.devnull) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return [r for r in rows if isinstance(r, dict) and _num(r.get("step"))]


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ema(values, alpha=0.95):
    """Debiased exponential moving average (as TensorBoard's smoothing)."""
    out, m = [], 0.0
    for i, v in enumerate(values):
        m = alpha * m + (1 - alpha) * v
        out.append(m / (1 - alpha ** (i + 1)))
    return out


_NOT_EVAL = {"step", "time", "elapsed", "lr", "epoch", "it_s", "imgs_s", "grad_norm"}


def plot_loss(log_jsonl_path, out_png, smoothing=0.95):
    """Loss vs step (raw light, EMA dark, log y) + one panel per eval metric. Returns False if nothing to plot."""
    rows = _read_jsonl(log_jsonl_path)
    train = [(r["step"], r["loss"]) for r in rows if _num(r.get("loss"))]
    evals = [r for r in rows if "loss" not in r]
    first = ["psnr", "ssim", "lpips", "consistency"]
    keys = sorted({k for r in evals for k, v in r.items() if k not in _NOT_EVAL and _num(v)},
                  key=lambda k: (first.index(k) if k in first else len(first), k))[:4]
    if not train and not keys:
        return False
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state
    n = int(bool(train)) + len(keys)
    fig = Figure(figsize=(5 * n, 3.6))
    axes = fig.subplots(1, n, squeeze=False)[0]
    if train:
        steps, loss = zip(*train)
        ax = axes[0]
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="raw")
        ax.plot(steps, ema(loss, smoothing), color="tab:blue", lw=1.6, label=f"EMA {smoothing}")
        if min(loss) > 0:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="loss", title="training loss")
        ax.legend()
    for ax, k in zip(axes[int(bool(train)):], keys):
        pts = [(r["step"], r[k]) for r in evals if _num(r.get(k))]
        ax.plot(*zip(*pts), "o-", color="tab:orange", ms=3)
        ax.set(xlabel="step", ylabel=k, title=f"eval {k}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return True


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
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in res.items()}
        print(json.dumps(clean))
        return
    print(f"{'metric':<14}{'mean':>12}")
    for k in ("psnr", "ssim", "psnr_y", "ssim_y", "lpips"):
        if k in res:
            print(f"{k:<14}{res[k]:>12.4f}")
    if "consistency" in res:
        c = res["consistency"]
        print(f"{'consistency':<14}{c:>12.3e}   (x1e5, as DREAM prints it: {c * 1e5:.3f})")
    if "lpips_skipped" in res:
        print(f"{'lpips':<14}{'skipped':>12}   ({res['lpips_skipped']})")
    ignored = f" ({res['unmatched']} files without a partner ignored)" if res.get("unmatched") else ""
    print(f"n images: {res['n']}{ignored}\n{RECIPE}")


def main(argv=None):
    ap = build_parser()
    add_sweep_args(ap)
    args = ap.parse_args(argv)
    try:
        rc = run_sweep(args)  # None: not a sweep invocation
        if rc is not None:
            return rc
        if not args.pred or not args.gt:
            ap.error("--pred and --gt are required")
        res = evaluate_dirs(args.pred, args.gt, args.lr, args.y_channel, use_lpips=not args.no_lpips)
    except (data.DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(res, args.json)
    return 0


# ============================================================================= sampling held-out images
def heldout(ds, n):
    """The first n items of a data set, stacked: dict of (n, 3, H, W) tensors."""
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0] if torch.is_tensor(items[0][k])}


@torch.inference_mode()
def sample_and_score(model, cfg, batch, steps, sampler='ddpm', generator=None, device='cpu', dtype=torch.float32):
    """Run a checkpoint's sampler on held-out `batch` -> (metrics of the means, grid images, grid columns).

    SR (srL_H): SR3 sampler conditioned on the bicubic-upsampled LR, metrics vs HR (+ bicubic baseline);
    grid LR | bicubic | SR | HR. Relay stage 2 (relayL_H): the relay sampler from the nearest-upsampled
    box-downsampled HR, metrics vs HR; grid LR | SR | HR. Relay stage 1 (relayL): unconditional samples.
    """
    import relay
    import train  # lazy: train imports this module
    import torch.nn.functional as F
    t = train.parse_task(cfg['task'])
    device = torch.device(device)
    ac = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    if t['kind'] == 'sr':
        hr, lr, sr = (batch[k].to(device) for k in ('hr', 'lr', 'sr'))
        with ac:
            out = train.make_diffusion(model, cfg).sample(sr, steps, sampler=sampler, generator=generator).float()
        res = mean_metrics(compute_metrics(out.cpu(), hr.cpu(), lr.cpu()))
        base = mean_metrics(compute_metrics(sr.cpu(), hr.cpu(), lr.cpu()))
        res.update({f'bicubic_{k}': v for k, v in base.items() if k != 'n'})
        cols = [F.interpolate(lr, size=hr.shape[-2:], mode='nearest'), sr, out, hr]
    elif t['kind'] == 'relay1':
        n = next(iter(batch.values())).shape[0]
        x = torch.randn(n, 3, t['res'], t['res'], generator=generator).to(device)
        with ac:
            out = relay.edm_sampler(relay.EDMPrecond(model), x, steps=steps, generator=generator).float()
        return {}, out.cpu(), None
    else:
        hr = batch['image'].to(device)
        x_up = F.interpolate(F.avg_pool2d(hr, t['block']), scale_factor=t['block'], mode='nearest')
        with ac:
            out = relay.relay_sampler(relay.EDMPrecond(model), x_up, steps=steps, block=t['block'],
                                      blur_sigma_max=cfg['blur_sigma_max'], truncation_t=cfg['prob_length'],
                                      generator=generator).float()
        res = mean_metrics(compute_metrics(out.cpu(), hr.cpu()))
        cols = [x_up, out, hr]
    return res, torch.stack(cols, 1).flatten(0, 1).cpu(), len(cols)


# ============================================================================= sweeps
# Step / checkpoint sweeps go below this line (added separately). Hooks called by main():
#   add_sweep_args(parser): add their flags;  run_sweep(args): return an exit code, or None when the
#   arguments do not ask for a sweep (then the plain --pred/--gt evaluation runs).

def add_sweep_args(parser):
    pass


def run_sweep(args):
    return None


if __name__ == "__main__":
    sys.exit(main())
