"""The shipped models' scores, from the shipped files themselves (bf16 weights, as a user gets them), on the held-out
faces, with the training-free baselines beside them. pretrained/README.md and the README cite the file it writes.

    python data.py prepare ../shared/data/faces data/faces_16_64  --lr 16 --hr 64  --val 100
    python data.py prepare ../shared/data/faces data/faces_16_128 --lr 16 --hr 128 --val 100
    python experiments/pretrained.py [--n 100] [--only sr16_64.pt ...]     # -> results/pretrained/scores.csv

Each model is sampled the way `sample.py` samples it by default (SR: DDPM, 100 steps, the run's temperature and
projection; relay stage 2: 40 steps of the relay sampler with the run's settings; --dtype auto: bf16 autocast where
the CPU has native bf16), one fixed noise seed.
* srL_H.pt: the first --n faces of data/faces_L_H/val (faces 00000-00099); baselines bicubic and bicubic + the exact
  low-resolution projection (back-projection).
* relayL_H.pt: the first --n held-out faces of ../shared/data/faces at H pixels (H above 128, the faces' own size:
  the first min(--n, 32) of ../shared/data/faces256, held out there), their tile means as the input; baselines the
  input, bicubic of the tile means, and bicubic with each tile's mean restored (the training-free baseline of
  docs/relay.md).
A row already in the CSV for the same file, step, n and dtype is kept (delete the CSV to score again); its label
and seed (the training seed) are read from the shipped file.
"""
import argparse
import csv
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import metrics  # noqa: E402
import relay  # noqa: E402
from checkpoint import load_model  # noqa: E402
from runtime import pick_dtype  # noqa: E402
from diffusion import LowResProjection  # noqa: E402
from tasks import heldout, parse_task, relay_inputs, sample_and_score  # noqa: E402

SR_STEPS, RELAY_STEPS = 100, 40  # sample.py's defaults
COLUMNS = ('file task label seed step train_s n steps dtype psnr ssim input_psnr bicubic_psnr bicubic_ssim '
           'baseline_psnr baseline_ssim').split()


def describe(name, ck):
    """A shipped file's label and training seed: read from the file, so a row kept from the CSV gets them too."""
    steps = RELAY_STEPS if parse_task(ck['args']['task'])['kind'] == 'relay2' else SR_STEPS
    return dict(label=f"{name} as shipped, sample.py's defaults ({steps} steps)", seed=ck['args'].get('seed', ''))


def write_rows(rows, out):
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    tmp = out + '.tmp'
    with open(tmp, 'w', newline='') as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows({k: r.get(k, '') for k in COLUMNS} for r in rows)
    os.replace(tmp, out)


def mean_scores(x, hr, lr=None):
    m = metrics.mean_metrics(metrics.compute_metrics(x.float().clamp(-1, 1), hr, lr))
    return m['psnr'], m['ssim']


def score_sr(a, path, info, chunk=25):
    val = os.path.join(ROOT, 'data', f"faces_{info['lr']}_{info['hr']}", 'val')
    if not os.path.isdir(val):
        raise SystemExit(f"{val}: not there; run `python data.py prepare ../shared/data/faces "
                         f"data/faces_{info['lr']}_{info['hr']} --lr {info['lr']} --hr {info['hr']} --val 100`")
    pairs = data.SRPairs(val, info['lr'], info['hr'])
    batch = {k: v for k, v in heldout(pairs, a.n).items() if k in ('hr', 'lr', 'sr')}
    model, cfg = load_model(path)
    gen = torch.Generator().manual_seed(a.seed)
    outs = []
    for i in range(0, len(batch['hr']), chunk):
        part = {k: v[i:i + chunk] for k, v in batch.items()}
        _, grid, ncol = sample_and_score(model, cfg, part, SR_STEPS, generator=gen, dtype=a.dtype)
        outs.append(grid.reshape(-1, ncol, *grid.shape[1:])[:, 2])  # grid columns: LR | bicubic | SR | HR
    out = torch.cat(outs)
    hr, lr, bic = batch['hr'], batch['lr'], batch['sr']
    back = LowResProjection(lr, hr.shape[-2:])(bic).clamp(-1, 1)
    row = dict(steps=SR_STEPS, n=len(hr))
    row['psnr'], row['ssim'] = mean_scores(out, hr, lr)
    row['bicubic_psnr'], row['bicubic_ssim'] = mean_scores(bic, hr, lr)
    row['baseline_psnr'], row['baseline_ssim'] = mean_scores(back, hr, lr)
    return row


FACES_RES, FACES256_HELDOUT = 128, 32  # ../shared/data/faces is 128x128; faces256 holds out its first 32


def relay_faces(a, res):
    """(folder, n) of the held-out faces a relay stage 2 at `res` pixels is scored on: faces at up to their own 128
    pixels, faces256 (its 32 held out) above, so that no face is upsampled to make the target."""
    return (a.faces, a.n) if res <= FACES_RES else (a.faces256, min(a.n, FACES256_HELDOUT))


def score_relay2(a, path, info):
    folder, n = relay_faces(a, info['res'])
    hr = heldout(data.ImageFolder(folder, info['res']), n)['image']
    model, cfg = load_model(path)
    gen = torch.Generator().manual_seed(a.seed)
    res, grid, ncol = sample_and_score(model, cfg, {'image': hr}, RELAY_STEPS, generator=gen, dtype=a.dtype)
    out = grid.reshape(-1, ncol, *grid.shape[1:])[:, 1]  # grid columns: input | relay | HR
    x_up, bicubic = relay_inputs(hr, info['block'])
    baseline = relay.TileMeanProjection(F.avg_pool2d(hr, info['block']), info['block'])(bicubic).clamp(-1, 1)
    row = dict(steps=RELAY_STEPS, n=len(hr))
    row['psnr'], row['ssim'] = mean_scores(out, hr)
    row['input_psnr'], _ = mean_scores(x_up, hr)
    row['bicubic_psnr'], row['bicubic_ssim'] = mean_scores(bicubic, hr)
    row['baseline_psnr'], row['baseline_ssim'] = mean_scores(baseline, hr)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--pretrained-dir', default=os.path.join(ROOT, 'pretrained'))
    p.add_argument('--faces', default=os.path.join(ROOT, '..', 'shared', 'data', 'faces'))
    p.add_argument('--faces256', default=os.path.join(ROOT, '..', 'shared', 'data', 'faces256'))
    p.add_argument('--n', type=int, default=100)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--only', nargs='+', default=None, help='file names in --pretrained-dir (default: every *.pt)')
    p.add_argument('--out', default=os.path.join(ROOT, 'results', 'pretrained', 'scores.csv'))
    p.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'], help="as sample.py's --dtype")
    a = p.parse_args(argv)
    a.dtype, _ = pick_dtype(a.dtype, torch.device('cpu'))
    files = a.only or sorted(f for f in os.listdir(a.pretrained_dir) if f.endswith('.pt'))
    rows = []
    if os.path.exists(a.out):
        with open(a.out, newline='') as f:
            rows = list(csv.DictReader(f))
    for name in files:
        path = os.path.join(a.pretrained_dir, name)
        ck = torch.load(path, map_location='cpu', weights_only=True)
        info = parse_task(ck['args']['task'])
        dtype = str(a.dtype).replace('torch.', '')
        n = relay_faces(a, info['res'])[1] if info['kind'] == 'relay2' else a.n
        meta = {k: str(v) for k, v in describe(name, ck).items()}
        kept = [r for r in rows if r['file'] == name and r['step'] == str(ck['step']) and r['n'] == str(n)
                and r.get('dtype') == dtype]
        if kept:
            print(f'{name}: scored already')
            if any(r.get(k) != v for r in kept for k, v in meta.items()):
                for r in kept:
                    r.update(meta)
                write_rows(rows, a.out)
            continue
        if info['kind'] == 'sr':
            row = score_sr(a, path, info)
        elif info['kind'] == 'relay2':
            row = score_relay2(a, path, info)
        else:
            print(f'{name}: stage 1 (unconditional) has no held-out pair to score: docs/relay.md scores it by a '
                  f'Frechet distance')
            continue
        row.update(file=name, task=ck['args']['task'], step=ck['step'], train_s=round(ck.get('train_s', 0.0)),
                   dtype=dtype, **meta)
        rows.append({k: (f'{v:.4f}' if isinstance(v, float) else v) for k, v in row.items()})
        print(', '.join(f'{k} {rows[-1][k]}' for k in COLUMNS if rows[-1].get(k) not in (None, '')), flush=True)
        write_rows(rows, a.out)


if __name__ == '__main__':
    main()
