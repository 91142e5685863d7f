"""Training-free super-resolution baselines on a held-out SR set, scored like the models (metrics.compute_metrics).

    python experiments/sr_baselines.py --data data/faces_16_64/val --out results/sr_baselines.csv

Rows (deterministic: no seed, one row each): the input itself (nearest upsampling of the LR), PIL bilinear, bicubic
(SR3's condition), Lanczos, and bicubic followed by the exact low-resolution projection that `--project` applies to
every x0_hat in the sampler (diffusion.LowResProjection: the closest image whose bicubic downsample is the LR; this is
one exact step of iterative back-projection, Irani & Peleg 1991). The last one is what a model with `--project` gets
for free, so it is the baseline such a model has to beat; it is also where the LR-grid texture of the projection
shows (grid_texture, metrics.py).
"""
import argparse
import csv
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import metrics  # noqa: E402
from diffusion import LowResProjection  # noqa: E402

COLUMNS = 'label seed step train_s sampler steps n psnr ssim consistency flat_noise grid_texture'.split()


def load_folder(path, size):
    files = data.list_images(path)
    if not files:
        raise SystemExit(f'{path}: no images')
    x = torch.stack([data.load_image(f) for f in files])
    if x.shape[-1] != size:
        raise SystemExit(f'{path}: images are {x.shape[-1]}x{x.shape[-2]}, expected {size}x{size}')
    return x


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--data', required=True, help='a split in the SR layout: hr_H/ and lr_L/ (e.g. data/faces_16_64/val)')
    ap.add_argument('--lr-size', type=int, default=16)
    ap.add_argument('--hr-size', type=int, default=64)
    ap.add_argument('--out', required=True, help='CSV to write')
    a = ap.parse_args(argv)
    lr = load_folder(os.path.join(a.data, f'lr_{a.lr_size}'), a.lr_size)
    hr = load_folder(os.path.join(a.data, f'hr_{a.hr_size}'), a.hr_size)
    if len(lr) != len(hr):
        raise SystemExit(f'{a.data}: {len(lr)} LR images but {len(hr)} HR images')
    rows = []
    for label, x in baselines(lr, a.hr_size).items():
        m = metrics.mean_metrics(metrics.compute_metrics(x, hr, lr))
        rows.append(dict(label=label, seed='', step=0, train_s=0, sampler='', steps=0, n=m['n'],
                         **{k: round(m[k], 6) for k in COLUMNS[7:]}))
        print(f"{label:<40} PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.4f}  consistency {m['consistency']:.2e}  "
              f"flat {m['flat_noise']:.3f}  grid {m['grid_texture']:.3f}")
    os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)
    with open(a.out, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
