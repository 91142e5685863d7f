"""Sweeps for the DREAM experiments: sample held-out images with the checkpoints of training runs.

    python experiments/sweep.py --sweep snapshots --runs runs/std runs/dream --data D --n 50 --steps 50 --out res/snap
    python experiments/sweep.py --sweep steps --runs runs/std runs/dream --data D --steps 5 10 20 50 \
        --sampler ddpm ddim --out res/steps [--json]

snapshots: every checkpoint of each run (ckpt_<step>.pt, and ckpt.pt if its step is new), x = training iteration;
steps: one checkpoint per run (--ckpt-name) x samplers x sampling steps. One CSV row per point (OUT.csv, rewritten
after each point; `seed` is the run's training seed, `sample_seed` --seed), a PNG of PSNR / SSIM (OUT.png), the
best PSNR per run; --json ends with one JSON line.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from runtime import UsageError, allow_tf32, pick_device, pick_dtype  # noqa: E402
from tasks import heldout, model_from_args, parse_task, sample_and_score  # noqa: E402

COLUMNS = ('run label seed sample_seed ckpt step train_s task sampler steps temperature n psnr ssim consistency '
           'flat_noise grid_texture bicubic_psnr bicubic_ssim bicubic_consistency bicubic_flat_noise bicubic_grid_texture '
           'input_psnr input_ssim wall_s').split()


def get_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--sweep', required=True, choices=['snapshots', 'steps'],
                    help='snapshots: every checkpoint; steps: samplers x steps')
    ap.add_argument('--runs', nargs='+', metavar='DIR', help='run folders (train.py --out)')
    ap.add_argument('--labels', nargs='+', help='names of the runs in the plot (default: folder names)')
    ap.add_argument('--data', help='held-out set: SR layout (hr_H/ lr_L/) or images (relay); a root with val/ uses val/')
    ap.add_argument('--n', type=int, default=50, help='held-out images per point (the first N, sorted)')
    ap.add_argument('--steps', type=int, nargs='+', help='sampling steps (default: snapshots 100; steps 5 10 20 50 100 200)')
    ap.add_argument('--sampler', nargs='+', default=['ddpm'], choices=['ddpm', 'ddim'], help='SR samplers (relay: its own)')
    ap.add_argument('--ckpt-name', default='ckpt.pt', help='--sweep steps: the checkpoint file of each run')
    ap.add_argument('--out', help='writes OUT.csv and OUT.png (default: sweep_MODE)')
    ap.add_argument('--seed', type=int, default=0, help='one seed for every point, so curves compare')
    ap.add_argument('--temperature', type=float, default=None,
                    help="SR sampling temperature for every point (default: each run's own --temperature)")
    ap.add_argument('--batch-size', type=int, default=50)
    ap.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    ap.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'])
    ap.add_argument('--json', action='store_true', help='end with one JSON line (the rest goes to stderr)')
    a = ap.parse_args(argv)
    a.steps = a.steps or ([100] if a.sweep == 'snapshots' else [5, 10, 20, 50, 100, 200])
    a.labels = a.labels or [os.path.basename(os.path.normpath(r)) for r in a.runs or []]
    if not a.runs or not a.data or min(a.n, a.batch_size, *a.steps) <= 0 or len(a.labels) != len(a.runs):
        raise ValueError('--sweep needs --runs DIR.., --data PATH, positive --n/--steps/--batch-size, one --labels per run')
    return a


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def checkpoints(run, a):
    """[(path, checkpoint)] by step: --ckpt-name, or the snapshots (+ ckpt.pt if its step is new); memory-mapped."""
    if not os.path.isdir(run):
        raise ValueError(f'run folder {run}: no such folder')
    if a.sweep == 'steps':
        names = [a.ckpt_name]
    else:
        names = sorted(f for f in os.listdir(run) if re.fullmatch(r'ckpt_\d+\.pt', f))
        if os.path.isfile(os.path.join(run, 'ckpt.pt')):
            names.append('ckpt.pt')
    by_step = {}
    for path in (os.path.join(run, f) for f in names):
        try:
            ck = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except Exception:
            ck = None
        if not (isinstance(ck, dict) and {'ema', 'args', 'step'} <= ck.keys()):
            ck = load_checkpoint(path)  # raises its one-line error
        by_step.setdefault(ck['step'], (path, ck))  # a snapshot wins over ckpt.pt of the same step
    if not by_step:
        raise ValueError(f'run folder {run}: no checkpoints (ckpt.pt or ckpt_<step>.pt)')
    return [by_step[s] for s in sorted(by_step)]


def heldout_set(root, info, n):
    """SRPairs for SR tasks; the images at H (of hr_H/ in an SR layout) for relay stage 2."""
    if info['kind'] == 'sr':
        return heldout(data.SRPairs(root, info['lr'], info['hr']), n)
    hr = os.path.join(root, f"hr_{info['hr']}")
    return heldout(data.ImageFolder(hr if os.path.isdir(hr) else root, info['hr']), n)


def plan(a):
    """Every point (run, label, path, checkpoint, sampler, steps) and the held-out sets, checked before the first."""
    sets, points = {}, []
    root = data.split_root(a.data)[1] or a.data
    for run, label in zip(a.runs, a.labels):
        for path, ck in checkpoints(run, a):
            cfg = ck['args']
            info = parse_task(cfg['task'])
            if info['kind'] == 'relay1':
                raise ValueError(f"{path}: relay stage 1 ({cfg['task']}) has no reference images: sweep srL_H or relayL_H runs")
            if info['kind'] == 'sr' and max(a.steps) > cfg['timesteps']:
                raise ValueError(f"{path}: --steps {max(a.steps)} exceeds its {cfg['timesteps']} training timesteps")
            if cfg['task'] not in sets:
                sets[cfg['task']] = heldout_set(root, info, a.n)
            samplers = a.sampler if info['kind'] == 'sr' else ['relay']  # relay stage 2: its Heun blur sampler
            for sampler in samplers:
                for steps in a.steps:
                    points.append((run, label, path, ck, sampler, steps))
    return sets, points


def score_point(ck, batch, steps, sampler, a, device, dtype):
    """Means over the held-out batch, sampled in --batch-size chunks with the same --seed for every point."""
    model = model_from_args(ck['args']).to(device).eval()
    model.load_state_dict(ck['ema'])
    generator = torch.Generator().manual_seed(a.seed)
    n = len(next(iter(batch.values())))
    totals = {}
    cfg = ck['args'] if a.temperature is None else dict(ck['args'], temperature=a.temperature)
    t0 = time.perf_counter()
    for i in range(0, n, a.batch_size):
        chunk = {k: v[i:i + a.batch_size] for k, v in batch.items()}
        res = sample_and_score(model, cfg, chunk, steps, sampler, generator, device, dtype)[0]
        for k, v in res.items():
            totals[k] = totals.get(k, 0.0) + v * res['n']
    res = {k: float(f'{v / n:.6g}') for k, v in totals.items()}
    res['n'] = n
    res['wall_s'] = round(time.perf_counter() - t0, 3)
    return res


def write_csv(rows, path):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)


def plot_sweep(rows, out_png, mode):
    """PSNR / SSIM panels, a line per run (x sampler / steps when they vary), dashed bicubic baseline. snapshots:
    x = training iteration (+ a row vs training seconds when all checkpoints have them); steps: x = steps, log."""
    from matplotlib.figure import Figure
    if mode == 'steps':
        xs = [('steps', 'sampling steps')]
    else:
        xs = [('step', 'training iteration')]
        if all(_num(r['train_s']) for r in rows):
            xs.append(('train_s', 'training seconds'))
    keys = [k for k in ('sampler', 'steps') if k != xs[0][0] and len({r[k] for r in rows}) > 1]
    lines = {}
    for r in rows:
        lines.setdefault((r['run'], r['label'], *(r[k] for k in keys)), []).append(r)
    fig = Figure(figsize=(11, 3.8 * len(xs)))
    panels = [(x, m) for x in xs for m in ('psnr', 'ssim')]
    for ax, ((x, xlabel), m) in zip(fig.subplots(len(xs), 2).flat, panels):
        for (_, *name), rs in lines.items():
            ax.plot(*zip(*sorted((r[x], r[m]) for r in rs)), 'o-', ms=3, label=' '.join(map(str, name)))
        baselines = sorted({r[f'bicubic_{m}'] for r in rows if _num(r.get(f'bicubic_{m}'))})
        for i, b in enumerate(baselines):
            ax.axhline(b, ls='--', color='gray', lw=1, label='bicubic' if i == 0 else None)
        if mode == 'steps':
            ticks = sorted({r['steps'] for r in rows})
            ax.set(xscale='log', xticks=ticks, xticklabels=[str(t) for t in ticks])
            ax.minorticks_off()
        ax.set(xlabel=xlabel, ylabel=m.upper(), title=f'{m.upper()} vs {xlabel} (n={rows[0]["n"]} held-out)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def sweep(a):
    sets, points = plan(a)
    out = re.sub(r'\.(csv|png)$', '', a.out or f'sweep_{a.sweep}')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    device = pick_device(a.device)
    dtype, why = pick_dtype(a.dtype, device)
    allow_tf32(device)
    log = sys.stderr if a.json else sys.stdout  # --json: stdout holds one JSON line
    print(f'device {device}, {"bf16 autocast" if dtype == torch.bfloat16 else "fp32"} ({why}); {len(points)} points',
          file=log)
    rows, best = [], {}
    bar = tqdm(points, desc=f'{a.sweep} sweep', unit='pt')
    for run, label, path, ck, sampler, steps in bar:
        bar.set_postfix_str(f'{label} {os.path.basename(path)} {sampler} {steps} steps')
        res = score_point(ck, sets[ck['args']['task']], steps, sampler, a, device, dtype)
        rows.append(dict(run=run, label=label, seed=ck['args'].get('seed'), sample_seed=a.seed,
                         ckpt=os.path.basename(path), step=ck['step'], train_s=ck.get('train_s'),
                         task=ck['args']['task'], sampler=sampler, steps=steps,
                         temperature=a.temperature if a.temperature is not None else ck['args'].get('temperature', 1.0),
                         **res))
        write_csv(rows, out + '.csv')  # after every point: a stopped sweep keeps its rows
        if _num(res['psnr']) and res['psnr'] > best.get(label, {}).get('psnr', -math.inf):
            best[label] = {k: rows[-1][k] for k in ('psnr', 'ssim', 'ckpt', 'step', 'sampler', 'steps')}
    plot_sweep(rows, out + '.png', a.sweep)
    print(f"{len(rows)} points of n = {rows[0]['n']} held-out images: wrote {out}.csv and {out}.png; "
          'best PSNR per run:', file=log)
    for label, b in best.items():
        print(f"  {label}: {b['psnr']:.3f} dB, {b['ckpt']}, {b['sampler']} {b['steps']} steps", file=log)
    if a.json:  # best holds finite numbers only
        print(json.dumps(dict(sweep=a.sweep, rows=len(rows), n=rows[0]['n'], seed=a.seed, csv=out + '.csv',
                              png=out + '.png', best=best)))
    return 0


def main(argv=None):
    try:
        return sweep(get_args(argv))
    except (data.DataError, UsageError, OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
