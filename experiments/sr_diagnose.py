"""
Diagnose an SR checkpoint on held-out images: where does it lose against bicubic?

    python experiments/sr_diagnose.py --ckpt runs/quick/ckpt.pt --data data/faces_16_64 --n 100 \
        --label "tiny eps" --csv results/quickstart/diagnose.csv

Measures, for the EMA and the raw weights (issue "models that super-resolve"):
  * PSNR / SSIM / consistency of samples vs HR, bicubic's beside them;
  * colour shift: the mean over images of |per-channel mean of (x - HR)| (in [-1, 1] units), for samples and bicubic;
  * residual noise: the energy of (x - HR) above the LR's Nyquist frequency, as a ratio to bicubic's (1 = as much
    high-frequency error as bicubic; a sample that hallucinates uncorrelated detail of the right power is ~2), and
    hf_power, the energy of x itself above that frequency over HR's (1 = detail of the right power; > 1 is noise
    left in the sample, < 1 over-smoothing);
  * flat_noise (metrics.flat_noise): pixel-scale fluctuation where HR is smooth, over HR's own (1 = as much as the
    real image; > 1 = speckle the model left or invented there);
  * grid_texture (metrics.grid_texture): texture tied to the LR pixel grid (1 = none; real faces 0.99, bicubic 1.53);
  * the denoising error per noise-level band: MSE of x0_hat vs x0 on held-out images at fixed gamma, in 8 bands
    of the training grid t (a model that fails at high noise shows it here first), and the flat_noise of that
    one-shot estimate (a denoiser that leaves noise in smooth regions at some noise level shows it here).
"""
import argparse
import csv
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402

import metrics  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from tasks import make_diffusion, model_from_args  # noqa: E402


METRICS = ('psnr', 'ssim', 'consistency', 'colour_shift', 'hf_ratio', 'hf_power', 'flat_noise', 'grid_texture')


def load(path):
    """The EMA and the raw network of a checkpoint (eval mode), its flags and its step."""
    ck = load_checkpoint(path)
    nets = {}
    for which in ('ema', 'model'):
        net = model_from_args(ck['args'])
        net.load_state_dict(ck[which])
        nets[which] = net.eval()
    return nets, ck['args'], ck['step']


def colour_shift(x, hr):
    return (x - hr).mean((2, 3)).abs().mean().item()


def high_freq_energy(x, hr, scale):
    """Energy of the error above the LR Nyquist (|f| > 0.5 / scale cycles per HR pixel, either axis)."""
    err = torch.fft.fft2((x - hr).double())
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h).abs()[:, None]
    fx = torch.fft.fftfreq(w).abs()[None, :]
    mask = (fy > 0.5 / scale) | (fx > 0.5 / scale)
    return (err.abs() ** 2 * mask).sum().item()


@torch.inference_mode()
def band_errors(diff, hr, sr, bands=8, seed=0):
    """MSE of x0_hat vs x0 (the image, not the residual) at gamma of the middle t of each band."""
    g = torch.Generator().manual_seed(seed)
    T = diff.num_timesteps
    rows = []
    for k in range(bands):
        t = int((k + 0.5) * T / bands)
        gamma = diff.gamma[t].float().expand(hr.shape[0])
        x0 = hr - sr if diff.residual else hr
        eps = torch.randn(hr.shape, generator=g)
        x_t = diff.q_sample(x0, gamma, eps)
        x0_hat, _ = diff.predict(x_t, sr, gamma)
        image = (x0_hat + sr if diff.residual else x0_hat).clamp(-1, 1)
        rows.append(dict(t=t, gamma=round(gamma[0].item(), 5), x0_mse=F.mse_loss(x0_hat.clamp(-2, 2), x0).item(),
                         x0_flat_noise=round(metrics.flat_noise(image, hr).mean().item(), 4)))
    return rows


def score(x, hr, lr, sr, scale):
    return dict(psnr=metrics.psnr(x, hr).mean().item(), ssim=metrics.ssim(x, hr).mean().item(),
                consistency=metrics.consistency(x, lr).mean().item(), colour_shift=colour_shift(x, hr),
                hf_ratio=high_freq_energy(x, hr, scale) / high_freq_energy(sr, hr, scale),
                hf_power=high_freq_energy(x, torch.zeros_like(x), scale)
                / high_freq_energy(hr, torch.zeros_like(hr), scale),
                flat_noise=metrics.flat_noise(x, hr).mean().item(),
                grid_texture=metrics.grid_texture(x, scale).mean().item())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--ckpt', required=True)
    ap.add_argument('--data', required=True, help='SR layout root; held-out images from DATA/val')
    ap.add_argument('--n', type=int, default=100)
    ap.add_argument('--steps', type=int, default=50)
    ap.add_argument('--sampler', default='ddpm')
    ap.add_argument('--temperature', type=float, default=None, help="sampling temperature (default: the run's)")
    ap.add_argument('--label', default='')
    ap.add_argument('--csv', default=None)
    ap.add_argument('--json', default=None)
    ap.add_argument('--raw', action='store_true', help='also score the raw (non-EMA) weights')
    ap.add_argument('--project', action='store_true', help='sample with the low-res consistency projection')
    ap.add_argument('--project-smooth', type=float, default=0.0,
                    help="with --project: the correction's smoothness (diffusion.LowResProjection; 0 = pseudo-inverse)")
    ap.add_argument('--bf16-bands', action='store_true', help='also the band errors of the EMA net under bf16 autocast')
    a = ap.parse_args()
    if a.project_smooth and not a.project:
        ap.error('--project-smooth has no effect without --project')
    nets, args, step = load(a.ckpt)
    t = args['task']
    lo, hi = (int(v) for v in t[2:].split('_'))
    ds = data.SRPairs(os.path.join(a.data, 'val'), lo, hi)
    items = [ds[i] for i in range(min(a.n, len(ds)))]
    hr, lr, sr = (torch.stack([it[k] for it in items]) for k in ('hr', 'lr', 'sr'))
    out = dict(label=a.label, ckpt=a.ckpt, step=step, n=len(hr), steps=a.steps, sampler=a.sampler,
               bicubic=score(sr, hr, lr, sr, hi // lo))
    for which in (('ema', 'model') if a.raw else ('ema',)):
        diff = make_diffusion(nets[which], args)
        project_on = lr if a.project else None
        temperature = a.temperature if a.temperature is not None else args.get('temperature', 1.0)
        x = diff.sample(sr, a.steps, sampler=a.sampler, generator=torch.Generator().manual_seed(1234), lr=project_on,
                        temperature=temperature, project_smooth=a.project_smooth)
        out[which] = score(x, hr, lr, sr, hi // lo)
        out[which]['bands'] = band_errors(diff, hr, sr)
    if a.bf16_bands:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out['ema']['bands_bf16'] = band_errors(make_diffusion(nets['ema'], args), hr, sr)
    print(json.dumps(out))
    if a.json:
        with open(a.json, 'a') as f:
            f.write(json.dumps(out) + '\n')
    if a.csv:
        header = ['label', 'seed', 'step', 'weights', 'sampler', 'steps', 'temperature', 'n', *METRICS,
                  *(f'bicubic_{k}' for k in METRICS)]
        new = not os.path.exists(a.csv)
        if not new and next(csv.reader(open(a.csv)), None) != header:
            raise SystemExit(f'{a.csv}: has other columns than this script writes; give a new --csv')
        with open(a.csv, 'a', newline='') as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            for which in (('ema', 'model') if a.raw else ('ema',)):
                w.writerow([a.label, args.get('seed', 0), step, which, a.sampler, a.steps, temperature, len(hr),
                            *(round(out[which][k], 5) for k in METRICS),
                            *(round(out['bicubic'][k], 5) for k in METRICS)])


if __name__ == '__main__':
    main()
