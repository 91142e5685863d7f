"""
Diagnose a relay stage-2 checkpoint on held-out faces: does it improve its own input, and where does it lose?

    python experiments/relay_diagnose.py --ckpt runs/relay2/ckpt.pt --data data/faces_16_64 --n 32 \
        --label "tiny, 1500 it" --csv results/relay/diagnose.csv --json results/relay/diagnose.json

Input: the held-out HR faces (DATA/val), box-downsampled by the block and nearest-upsampled (the relay's input,
as in training and train.py's evaluation). Measures (issue "Relay Diffusion that improves its input"):
  * the sampler's output vs HR for a grid of sampler settings (--truncation-sigma, --s-noise, --s-block, --steps):
    PSNR / SSIM / flat_noise (metrics.flat_noise: pixel-scale fluctuation where HR is smooth, over HR's own;
    > 1 = noise left in the output), with the input's and bicubic's (of the same tile means) in the same row;
  * the one-shot denoising error per noise level: at sigma on a grid of blur times u, the network's D(x, sigma)
    for x = blur(y) + sigma (n + 0.15 n_block) as in training: MSE vs y and flat_noise, beside the MSE of the
    blurred image itself (what D must improve on) and the input's (the tile means).
"""
import argparse
import csv
import itertools
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import metrics  # noqa: E402
import relay  # noqa: E402
from block_noise import blur_sigma, block_noise, dct_blur, t_to_sigma  # noqa: E402
from checkpoint import load_model  # noqa: E402
from tasks import heldout, parse_task, relay_inputs  # noqa: E402

COLUMNS = ('label seed step sampler steps nfe truncation_sigma s_noise s_block heun_noise n psnr ssim flat_noise '
           'input_psnr input_ssim input_flat_noise bicubic_psnr bicubic_ssim bicubic_flat_noise ckpt').split()


def scores(x, hr):
    m = metrics.mean_metrics(metrics.compute_metrics(x.float(), hr))
    return {k: round(m[k], 5) for k in ('psnr', 'ssim', 'flat_noise')}


@torch.inference_mode()
def band_errors(D, hr, cfg, block, us=(0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95), seed=0):
    """One-shot D(x, sigma) vs HR at fixed blur times u (the training process's u -> (sigma, blur std))."""
    g = torch.Generator().manual_seed(seed)
    y = hr.double()
    rows = []
    for u in us:
        ut = torch.tensor([u], dtype=torch.float64)
        sigma = float(t_to_sigma(ut, prob_length=cfg['prob_length']))
        s_blur = blur_sigma(ut, cfg['blur_sigma_max']).expand(len(y))
        blurred = dct_blur(y, block, s_blur, 1e-3)
        n = torch.randn(y.shape, generator=g, dtype=torch.float64) + 0.15 * block_noise(y, block, g)
        den = D(blurred + sigma * n, torch.full((len(y),), sigma, dtype=torch.float64)).clamp(-1, 1)
        rows.append(dict(u=u, sigma=round(sigma, 5), mse=F.mse_loss(den, y).item(),
                         blurred_mse=F.mse_loss(blurred, y).item(),
                         flat_noise=round(metrics.flat_noise(den, y).mean().item(), 4)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--ckpt', required=True)
    ap.add_argument('--data', required=True, help='SR layout root (held-out HR images from DATA/val)')
    ap.add_argument('--n', type=int, default=32)
    ap.add_argument('--steps', type=int, nargs='+', default=[40])
    ap.add_argument('--truncation-sigma', type=float, nargs='+', default=None,
                    help="default: relay.default_truncation_sigma of the model's --prob-length (0.9 for RDM's)")
    ap.add_argument('--s-noise', type=float, nargs='+', default=[0.2])
    ap.add_argument('--s-block', type=float, nargs='+', default=[0.15])
    ap.add_argument('--heun-noise', nargs='+', default=['reuse'], choices=['reuse', 'fresh'])
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--label', default='')
    ap.add_argument('--csv', default=None)
    ap.add_argument('--json', default=None)
    ap.add_argument('--grid', default=None, help='PNG: input | outputs of each setting | HR, 8 faces')
    a = ap.parse_args()
    net, cfg = load_model(a.ckpt)
    t = parse_task(cfg['task'])
    if t.get('block') is None:
        raise SystemExit(f"{a.ckpt}: task {cfg['task']} is not a relay stage 2 (relayL_H)")
    hr = heldout(data.SRPairs(data.split_root(a.data)[1] or a.data, t['lr'], t['hr']), a.n)['hr']
    x_up, bicubic = relay_inputs(hr, t['block'])
    base = {**{f'input_{k}': v for k, v in scores(x_up, hr).items()},
            **{f'bicubic_{k}': v for k, v in scores(bicubic, hr).items()}}
    D = relay.EDMPrecond(net)
    calls = [0]

    def counted(x, s):
        calls[0] += 1
        return D(x, s)

    rows, pics = [], [x_up[:8]]
    step = torch.load(a.ckpt, map_location='cpu', weights_only=True)['step']
    truncs = a.truncation_sigma or [relay.default_truncation_sigma(cfg['prob_length'])]
    for steps, trunc, s_noise, s_block, heun in itertools.product(a.steps, truncs, a.s_noise, a.s_block,
                                                                   a.heun_noise):
        calls[0] = 0
        out = relay.relay_sampler(counted, x_up, steps, truncation_sigma=trunc, truncation_t=cfg['prob_length'],
                                  block=t['block'], s_block=s_block, s_noise=s_noise,
                                  blur_sigma_max=cfg['blur_sigma_max'], heun_noise=heun,
                                  generator=torch.Generator().manual_seed(a.seed))
        row = dict(label=a.label, seed=cfg['seed'], step=step, sampler='relay', steps=steps, nfe=calls[0],
                   truncation_sigma=trunc, s_noise=s_noise, s_block=s_block, heun_noise=heun, n=len(hr),
                   **scores(out, hr), **base, ckpt=a.ckpt)
        rows.append(row)
        pics.append(out[:8].float())
        print(json.dumps(row), flush=True)
    bands = band_errors(D, hr, cfg, t['block'])
    input_mse = F.mse_loss(x_up, hr).item()
    for b in bands:
        print(json.dumps(dict(b, input_mse=round(input_mse, 6))), flush=True)
    if a.csv:
        new = not os.path.exists(a.csv)
        if not new and next(csv.reader(open(a.csv)), None) != COLUMNS:
            raise SystemExit(f'{a.csv}: has other columns than this script writes; give a new --csv')
        with open(a.csv, 'a', newline='') as f:
            w = csv.DictWriter(f, COLUMNS)
            if new:
                w.writeheader()
            w.writerows(rows)
    if a.json:
        with open(a.json, 'a') as f:
            f.write(json.dumps(dict(label=a.label, ckpt=a.ckpt, step=step, rows=rows, bands=bands,
                                    input_mse=input_mse)) + '\n')
    if a.grid:
        pics.append(hr[:8])
        data.save_grid(torch.stack(pics, 0).flatten(0, 1), a.grid, nrow=len(pics[0]))


if __name__ == '__main__':
    main()
