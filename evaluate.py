"""Image metrics as SR3 / DREAM compute them, a folder-vs-folder CLI, loss-curve plots, checkpoint / step sweeps.

    python evaluate.py --pred out/sr --gt data/hr_128 [--lr data/lr_16] [--y-channel] [--json]
    python evaluate.py --sweep snapshots --runs runs/std runs/dream --data D --n 50 --steps 50 --out res/snap [--json]
    python evaluate.py --sweep steps --runs runs/std runs/dream --data D --steps 5 10 20 50 --sampler ddpm ddim --out res/steps

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
import csv
import json
import math
import os
import re
import sys
import time

import torch
from tqdm import tqdm

import data

RECIPE = ("PSNR/SSIM on RGB uint8 0-255, SSIM 11x11 gaussian sigma 1.5 valid, no crop; "
          "consistency = MSE[0,1] of bicubic-down(pred) vs lr")
_LPIPS = {}  # net -> (fn, reason), built once
_NOT_EVAL = {"step", "time", "elapsed", "lr", "epoch", "it_s", "imgs_s", "grad_norm"}  # log keys that are not metrics
COLUMNS = ('run label ckpt step train_s task sampler steps n psnr ssim consistency bicubic_psnr bicubic_ssim '
           'bicubic_consistency wall_s').split()  # sweep CSV


def _batch(x):
    x = torch.as_tensor(x)
    return x.unsqueeze(0) if x.dim() == 3 else x


def quantize(x):
    """[-1,1] floats -> the uint8 values (0..255) as float64, as SR3's tensor2img (float32 math, half to even)."""
    return ((torch.as_tensor(x).float().clamp(-1, 1) + 1) / 2 * 255.0).round().double()


def rgb_to_y(q):
    """(B,3,H,W) 0-255 RGB -> (B,1,H,W) BT.601 studio-swing luma (16-235), BasicSR's rgb2ycbcr(y_only=True)."""
    return (q * q.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)).sum(1, keepdim=True) / 255.0 + 16.0


def _prep(pred, gt, y_channel):
    pred, gt = _batch(pred), _batch(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    return (rgb_to_y(quantize(pred)), rgb_to_y(quantize(gt))) if y_channel else (quantize(pred), quantize(gt))


def psnr(pred, gt, y_channel=False):
    """Per-image PSNR (B,) in dB of [-1,1] images after uint8 quantization; +inf for identical images."""
    p, g = _prep(pred, gt, y_channel)
    return 10 * torch.log10(255.0 ** 2 / (p - g).pow(2).flatten(1).mean(1))  # mse == 0 -> +inf


def _gaussian_valid(n, device=None, size=11, sigma=1.5):
    """(n-10, n) banded matrix M: M @ v = 'valid' 1-D Gaussian filtering of v (no padding, 5 px lost per side).
    Taps = cv2.getGaussianKernel(11, 1.5) = scipy's gaussian_filter(sigma=1.5, truncate=3.5) used by skimage."""
    k = torch.exp(-(torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
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
    lr = _batch(lr)
    down = data.resize(_batch(pred), tuple(lr.shape[-2:]))
    return ((quantize(down) - quantize(lr)) / 255.0).pow(2).flatten(1).mean(1)


def lpips_fn(net="alex"):
    """(fn, reason): fn(pred, gt) -> (B,) LPIPS of [-1,1] images, or (None, why) if unavailable. Never downloads."""
    if net in _LPIPS:
        return _LPIPS[net]
    try:
        import lpips as lp
        import torchvision
        url = getattr(torchvision.models, {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights"}[net]).IMAGENET1K_V1.url
        missing = [f for f in (os.path.join(os.path.dirname(lp.__file__), "weights", "v0.1", f"{net}.pth"),
                               os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))) if not os.path.isfile(f)]
        model = None if missing else lp.LPIPS(net=net, verbose=False).eval()

        def fn(pred, gt):  # [-1,1] in (LPIPS' own convention), on pred's device
            pred, gt = _batch(pred).float().clamp(-1, 1), _batch(gt).float().clamp(-1, 1)
            with torch.no_grad():
                return model.to(pred.device)(pred, gt.to(pred.device)).flatten().cpu()
        result = (None, f"LPIPS weights not on disk ({', '.join(missing)}); not downloading") if missing else (fn, "")
    except Exception as e:  # not installed, no torchvision, corrupt weights...
        result = (None, f"LPIPS unavailable: {type(e).__name__}: {e}".splitlines()[0])
    return _LPIPS.setdefault(net, result)


def compute_metrics(pred, gt, lr=None, lpips=None, y_channel=False):
    """Per-image lists: psnr, ssim (+ psnr_y, ssim_y), consistency if lr given, lpips if a callable is given."""
    out = {"psnr": psnr(pred, gt).tolist(), "ssim": ssim(pred, gt).tolist()}
    if y_channel:
        out.update(psnr_y=psnr(pred, gt, True).tolist(), ssim_y=ssim(pred, gt, True).tolist())
    if lr is not None:
        out["consistency"] = consistency(pred, lr).tolist()
    if lpips is not None:
        out["lpips"] = lpips(pred, gt).tolist()
    return out


def mean_metrics(per_image):
    """Lists -> means, plus n (the number of images)."""
    out = {k: sum(v) / len(v) for k, v in per_image.items() if v}
    return dict(out, n=max((len(v) for v in per_image.values()), default=0))


def _by_stem(root):
    """{relative path without extension: path} of the images of a folder / .zip (data.list_images)."""
    out = {}
    for p in data.list_images(root):
        key = os.path.splitext(os.path.basename(p) if p == root else os.path.relpath(p, root))[0].replace(os.sep, "/")
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
    (lp, reason), per, buf = lpips_fn() if use_lpips else (None, "disabled"), {}, []

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
        (steps, loss), ax = zip(*train), axes[0]
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="raw")
        ax.plot(steps, ema(loss, smoothing), color="tab:blue", lw=1.6, label=f"EMA {smoothing}")
        if min(loss) > 0:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="loss", title="training loss"), ax.legend()
    for ax, k in zip(axes[int(bool(train)):], keys):
        pts = [(r["step"], r[k]) for r in evals if _num(r.get(k))]
        ax.plot(*zip(*pts), "o-", color="tab:orange", ms=3)
        ax.set(xlabel="step", ylabel=k, title=f"eval {k}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout(), os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
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
        return print(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in res.items()}))
    print(f"{'metric':<14}{'mean':>12}")
    for k in [k for k in ("psnr", "ssim", "psnr_y", "ssim_y", "lpips") if k in res]:
        print(f"{k:<14}{res[k]:>12.4f}")
    if (c := res.get("consistency")) is not None:
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
        if (rc := run_sweep(args)) is not None:  # None: not a sweep invocation
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
    t, device = train.parse_task(cfg['task']), torch.device(device)
    rgen = generator if generator is None or device.type == generator.device.type else torch.Generator(device).manual_seed(
        int(torch.randint(2 ** 62, (), generator=generator)))  # relay samplers draw noise on the images' device
    ac = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    if t['kind'] == 'sr':
        hr, lr, sr = (batch[k].to(device) for k in ('hr', 'lr', 'sr'))
        with ac:
            out = train.make_diffusion(model, cfg).sample(sr, steps, sampler=sampler, generator=generator).float()
        res = mean_metrics(compute_metrics(out.cpu(), hr.cpu(), lr.cpu()))
        res.update({f'bicubic_{k}': v for k, v in mean_metrics(compute_metrics(sr.cpu(), hr.cpu(), lr.cpu())).items() if k != 'n'})
        cols = [F.interpolate(lr, size=hr.shape[-2:], mode='nearest'), sr, out, hr]
    elif t['kind'] == 'relay1':
        x = torch.randn(len(next(iter(batch.values()))), 3, t['res'], t['res'], generator=generator).to(device)
        with ac:
            out = relay.edm_sampler(relay.EDMPrecond(model), x, steps=steps, generator=rgen).float()
        return {}, out.cpu(), None
    else:
        hr = batch['image'].to(device)
        x_up = F.interpolate(F.avg_pool2d(hr, t['block']), scale_factor=t['block'], mode='nearest')
        with ac:
            out = relay.relay_sampler(relay.EDMPrecond(model), x_up, steps=steps, block=t['block'],
                                      blur_sigma_max=cfg['blur_sigma_max'], truncation_t=cfg['prob_length'],
                                      generator=rgen).float()
        res = mean_metrics(compute_metrics(out.cpu(), hr.cpu()))
        cols = [x_up, out, hr]
    return res, torch.stack(cols, 1).flatten(0, 1).cpu(), len(cols)


# ============================================================================= sweeps
def add_sweep_args(ap):
    g = ap.add_argument_group('sweeps: sample held-out images with the checkpoints of training runs')
    g.add_argument('--sweep', choices=['snapshots', 'steps'], help='snapshots: every checkpoint; steps: samplers x steps')
    g.add_argument('--runs', nargs='+', metavar='DIR', help='run folders (train.py --out)')
    g.add_argument('--labels', nargs='+', help='names of the runs in the plot (default: folder names)')
    g.add_argument('--data', help='held-out set: SR layout (hr_H/ lr_L/) or images (relay); a root with val/ uses val/')
    g.add_argument('--n', type=int, default=50, help='held-out images per point (the first N, sorted)')
    g.add_argument('--steps', type=int, nargs='+', help='sampling steps (default: snapshots 100; steps 5 10 20 50 100 200)')
    g.add_argument('--sampler', nargs='+', default=['ddpm'], choices=['ddpm', 'ddim'], help='SR samplers (relay: its own)')
    g.add_argument('--ckpt-name', default='ckpt.pt', help='--sweep steps: the checkpoint file of each run')
    g.add_argument('--out', help='writes OUT.csv and OUT.png (default: sweep_MODE)')
    g.add_argument('--seed', type=int, default=0, help='one seed for every point, so curves compare')
    g.add_argument('--batch-size', type=int, default=50)
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    g.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'])


def _checkpoints(run, a, train):
    """[(path, checkpoint)] by step: --ckpt-name, or the snapshots (+ ckpt.pt if its step is new); memory-mapped."""
    if not os.path.isdir(run):
        raise ValueError(f'run folder {run}: no such folder')
    out, names = {}, [a.ckpt_name] if a.sweep == 'steps' else sorted(f for f in os.listdir(run) if re.fullmatch(
        r'ckpt_\d+\.pt', f)) + ['ckpt.pt'] * os.path.isfile(os.path.join(run, 'ckpt.pt'))
    for path in (os.path.join(run, f) for f in names):
        try:
            ck = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except Exception:
            ck = None
        ck = ck if isinstance(ck, dict) and {'ema', 'args', 'step'} <= ck.keys() else train.load_checkpoint(path)  # its error
        out.setdefault(ck['step'], (path, ck))  # a snapshot wins over ckpt.pt of the same step
    if not out:
        raise ValueError(f'run folder {run}: no checkpoints (ckpt.pt or ckpt_<step>.pt)')
    return [out[s] for s in sorted(out)]


def plot_sweep(rows, out_png, mode):
    """PSNR / SSIM panels, a line per run (x sampler / steps when they vary), dashed bicubic baseline. snapshots:
    x = training iteration (+ a row vs training seconds when all checkpoints have them); steps: x = steps, log."""
    from matplotlib.figure import Figure
    xs = [('steps', 'sampling steps')] if mode == 'steps' else \
        [('step', 'training iteration')] + [('train_s', 'training seconds')] * all(_num(r['train_s']) for r in rows)
    keys, lines = [k for k in ('sampler', 'steps') if k != xs[0][0] and len({r[k] for r in rows}) > 1], {}
    for r in rows:
        lines.setdefault((r['run'], r['label'], *(r[k] for k in keys)), []).append(r)
    fig = Figure(figsize=(11, 3.8 * len(xs)))
    for ax, ((x, xlabel), m) in zip(fig.subplots(len(xs), 2).flat, [(x, m) for x in xs for m in ('psnr', 'ssim')]):
        for (_, *name), rs in lines.items():
            ax.plot(*zip(*sorted((r[x], r[m]) for r in rs)), 'o-', ms=3, label=' '.join(map(str, name)))
        for i, b in enumerate(sorted({r[f'bicubic_{m}'] for r in rows if _num(r.get(f'bicubic_{m}'))})):
            ax.axhline(b, ls='--', color='gray', lw=1, label=None if i else 'bicubic')
        if mode == 'steps':
            ax.set(xscale='log', xticks=(ticks := sorted({r['steps'] for r in rows})), xticklabels=map(str, ticks))
            ax.minorticks_off()
        ax.set(xlabel=xlabel, ylabel=m.upper(), title=f'{m.upper()} vs {xlabel} (n={rows[0]["n"]} held-out)')
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out_png, dpi=100)


def run_sweep(args):
    """--sweep: one CSV row per run x checkpoint x sampler x steps, a PNG, a summary; None when not a sweep."""
    import train  # lazy: train imports this module
    try:
        return None if args.sweep is None else _sweep(args, train)
    except train.TrainError as e:
        raise ValueError(str(e)) from None


def _sweep(a, train):
    steps = a.steps or ([100] if a.sweep == 'snapshots' else [5, 10, 20, 50, 100, 200])
    if not a.runs or not a.data or min(a.n, a.batch_size, *steps) <= 0 or len(a.labels or a.runs) != len(a.runs):
        raise ValueError('--sweep needs --runs DIR.., --data PATH, positive --n/--steps/--batch-size, one --labels per run')
    sets, points, root = {}, [], data.split_root(a.data)[1] or a.data  # check all before the first point
    for run, label in zip(a.runs, a.labels or [os.path.basename(os.path.normpath(r)) for r in a.runs]):
        for path, ck in _checkpoints(run, a, train):
            cfg, t = ck['args'], train.parse_task(ck['args']['task'])
            if t['kind'] == 'relay1':
                raise ValueError(f"{path}: relay stage 1 ({cfg['task']}) has no reference images: sweep srL_H or relayL_H runs")
            if t['kind'] == 'sr' and max(steps) > cfg['timesteps']:
                raise ValueError(f"{path}: --steps {max(steps)} exceeds its {cfg['timesteps']} training timesteps")
            if cfg['task'] not in sets:  # held-out sets: SRPairs, or the images at H (of hr_H/ in an SR layout)
                hr = os.path.join(root, f"hr_{t['hr']}")
                sets[cfg['task']] = heldout(data.SRPairs(root, t['lr'], t['hr']) if t['kind'] == 'sr'
                                            else data.ImageFolder(hr if os.path.isdir(hr) else root, t['hr']), a.n)
            points += [(run, label, path, ck, sampler, s) for sampler in (a.sampler if t['kind'] == 'sr' else ['relay'])
                       for s in steps]  # relay stage 2 has one sampler: its Heun blur sampler
    out = re.sub(r'\.(csv|png)$', '', a.out or f'sweep_{a.sweep}')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    dtype, why = train.pick_dtype(a.dtype, device := train.pick_device(a.device))
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    say = lambda *s: print(*s, file=sys.stderr if a.json else sys.stdout)  # --json: stdout holds one JSON line
    say(f'device {device}, {"bf16 autocast" if dtype == torch.bfloat16 else "fp32"} ({why}); {len(points)} points')
    rows, best = [], {}
    for run, label, path, ck, sampler, s in (bar := tqdm(points, desc=f'{a.sweep} sweep', unit='pt')):
        bar.set_postfix_str(f'{label} {os.path.basename(path)} {sampler} {s} steps')
        model = train.build_model(ck['args']['task'], ck['args']['model']).to(device).eval()
        model.load_state_dict(ck['ema'])
        batch, gen, tot, t0 = sets[ck['args']['task']], torch.Generator().manual_seed(a.seed), {}, time.perf_counter()
        for i in range(0, n := len(next(iter(batch.values()))), a.batch_size):  # same --seed for every point
            res = sample_and_score(model, ck['args'], {k: v[i:i + a.batch_size] for k, v in batch.items()}, s, sampler,
                                   gen, device, dtype)[0]
            tot = {k: tot.get(k, 0.0) + v * res['n'] for k, v in res.items()}  # means over the batches
        res = {k: float(f'{v / n:.6g}') for k, v in tot.items()} | {'n': n, 'wall_s': round(time.perf_counter() - t0, 3)}
        rows.append(dict(run=run, label=label, ckpt=os.path.basename(path), step=ck['step'], train_s=ck.get('train_s'),
                         task=ck['args']['task'], sampler=sampler, steps=s, **res))
        with open(out + '.csv', 'w', newline='') as f:  # rewritten per point: a stopped sweep keeps its rows
            (w := csv.DictWriter(f, COLUMNS, extrasaction='ignore')).writeheader()
            w.writerows(rows)
        if _num(res['psnr']) and res['psnr'] > best.get(label, {}).get('psnr', -math.inf):
            best[label] = {k: rows[-1][k] for k in ('psnr', 'ssim', 'ckpt', 'step', 'sampler', 'steps')}
    plot_sweep(rows, out + '.png', a.sweep)
    say(f"{len(rows)} points of n = {rows[0]['n']} held-out images: wrote {out}.csv and {out}.png; best PSNR per run:")
    say('\n'.join(f"  {k}: {b['psnr']:.3f} dB, {b['ckpt']}, {b['sampler']} {b['steps']} steps" for k, b in best.items()))
    if a.json:  # best holds finite numbers only
        print(json.dumps(dict(sweep=a.sweep, rows=len(rows), n=rows[0]['n'], seed=a.seed, csv=out + '.csv',
                              png=out + '.png', best=best)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
