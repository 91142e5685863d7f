"""Training-free upsampling baselines on held-out faces, scored like the models (metrics.compute_metrics).

    python experiments/baselines.py --data data/faces_16_64/val --out results/quickstart/baselines.csv
    python experiments/baselines.py --relay ../shared/data/faces --n 32 --out results/relay/baselines.csv

SR (--data, the SR layout: LR = PIL's antialiased bicubic downsample): the input itself (nearest upsampling of the
LR), PIL bilinear, bicubic (SR3's condition), Lanczos, and bicubic followed by the exact low-resolution projection
that `--project` applies to every x0_hat in the sampler (diffusion.LowResProjection: the closest image whose bicubic
downsample is the LR; one exact step of iterative back-projection, Irani & Peleg 1991). The last one is what a model
with `--project` gets for free, so it is the baseline such a model has to beat.

Relay stage 2 (--relay, the first --n images of a folder at --hr-size; LR = the 4x4 tile means, as
tasks.relay_inputs): the relay's own input (nearest upsampling of the tile means), bicubic of the tile means, and
bicubic followed by the box projection (each tile's mean reset to the LR pixel's: x + nearest(lr - box(x))).
Deterministic: no seed, one row each.
"""
import argparse
import csv
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import metrics  # noqa: E402
from diffusion import LowResProjection  # noqa: E402
from tasks import relay_inputs  # noqa: E402

COLUMNS = 'label seed step train_s sampler steps n psnr ssim consistency flat_noise grid_texture'.split()


def baselines(lr, hr_size):
    """label -> upsampled images (B, 3, hr_size, hr_size) in [-1, 1]."""
    bicubic = data.resize(lr, hr_size)
    return {
        'input (nearest)': data.resize(lr, hr_size, 'nearest'),
        'bilinear': data.resize(lr, hr_size, 'bilinear'),
        'bicubic': bicubic,
        'lanczos': data.resize(lr, hr_size, 'lanczos'),
        'bicubic + projection (back-projection)': LowResProjection(lr, (hr_size, hr_size))(bicubic).clamp(-1, 1),
    }


def relay_baselines(hr, block):
    """label -> images, for relay stage 2: LR = the block x block tile means of hr (tasks.relay_inputs)."""
    x_up, bicubic = relay_inputs(hr, block)
    lr = F.avg_pool2d(hr, block)
    box_projected = bicubic + F.interpolate(lr - F.avg_pool2d(bicubic, block), scale_factor=block, mode='nearest')
    return lr, {'input (nearest up of the tile means)': x_up, 'bicubic of the tile means': bicubic,
                'bicubic + box projection (tile means restored)': box_projected.clamp(-1, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--data', help='SR: a split in the SR layout, hr_H/ and lr_L/ (e.g. data/faces_16_64/val)')
    ap.add_argument('--relay', help='relay stage 2: a folder of images (the first --n are the held-out faces)')
    ap.add_argument('--n', type=int, help='the first N images, sorted (default: --relay 32, SR all)')
    ap.add_argument('--block', type=int, default=4, help='--relay: tile size (hr / lr)')
    ap.add_argument('--lr-size', type=int, default=16)
    ap.add_argument('--hr-size', type=int, default=64)
    ap.add_argument('--out', required=True, help='CSV to write')
    a = ap.parse_args(argv)
    if bool(a.data) == bool(a.relay):
        raise SystemExit('give one of --data (SR) or --relay (relay stage 2)')
    if a.relay:
        files = data.list_images(a.relay)[:a.n or 32]
        if not files:
            raise SystemExit(f'{a.relay}: no images')
        hr = torch.stack([data.resize(data.load_image(f), a.hr_size) for f in files])
        lr, methods = relay_baselines(hr, a.block)
    else:
        pairs = data.SRPairs(a.data, a.lr_size, a.hr_size)  # pairs by name, checks sizes, one-line errors
        items = [pairs[i] for i in range(min(a.n or len(pairs), len(pairs)))]
        hr, lr = (torch.stack([it[k] for it in items]) for k in ('hr', 'lr'))
        methods = baselines(lr, a.hr_size)
    rows = []
    for label, x in methods.items():
        m = metrics.mean_metrics(metrics.compute_metrics(x, hr, lr))
        rows.append(dict(label=label, seed='', step=0, train_s=0, sampler='', steps=0, n=m['n'],
                         **{k: round(m[k], 6) for k in COLUMNS[7:]}))
        if a.relay:  # metrics.consistency checks a bicubic downsample; the relay's LR is the box one
            rows[-1]['consistency'] = ''
        print(f"{label:<48} PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.4f}  flat {m['flat_noise']:.3f}  "
              f"grid {m['grid_texture']:.3f}" + ('' if a.relay else f"  consistency {m['consistency']:.2e}"))
    os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)
    with open(a.out, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
