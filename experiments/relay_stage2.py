"""Relay stage 2 at 16 -> 64 against the training-free baseline (issue 29, item 1): what the exact tile-mean
consistency step in the sampler (relay_sampler(project=True), the relay's `--project`) and a longer training buy.

    python experiments/relay_stage2.py --train --runs /work/runs/relay_stage2          # train 3 seeds, then score
    python experiments/relay_stage2.py --runs /work/runs/relay_stage2                  # score finished runs only

Training (--train): the README's stage-2 recipe (RECIPE below; fp32, the precision of the README's earlier relay
runs), one seed after the other, each as `train.py` in a subprocess with OMP_NUM_THREADS=1, logging to
RUNS/train_<run>.log. A finished run (its checkpoint at --max-iters) is skipped, an unfinished one is resumed.
--continue-from N: the run RUNS/s<seed> is copied to RUNS/s<seed>_it<max-iters> and trained on from there
(constant learning rate: the same as training --max-iters from the start).

Scoring: the first --n held-out faces (faces 00000-00099 are held out, as in train.py --holdout 100), 64x64, their
4x4 tile means as the input. Every checkpoint is sampled with one fixed noise seed (--sample-seed) for each sampler
setting: projection off / on / smooth (--smooth weights), block noise at sampling 0 / 0.15, --steps grids. Rows go
to OUT/stage2_projection.csv (one per point; `baseline_psnr` is the training-free baseline: bicubic of the tile
means with each tile's mean reset to the input's, as experiments/baselines.py --relay), a summary with
mean +- std (min-max) over seeds per label to OUT/stage2_summary.md, and seed 0's grid to OUT/stage2_s0.png
(input | relay | relay + projection | relay + smooth projection | baseline | HR).
"""
import argparse
import os
import shutil
import statistics
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'experiments'))
import data  # noqa: E402
import metrics  # noqa: E402
import relay  # noqa: E402
from checkpoint import load_model  # noqa: E402
from tasks import heldout, parse_task, relay_inputs  # noqa: E402
from runtime import autocast  # noqa: E402
from common import checkpoint_step, run_jobs, train_command, write_results  # noqa: E402  (experiments/common.py)

RECIPE = ['--task', 'relay16_64', '--holdout', '100', '--model', 'tiny', '--batch-size', '8', '--lr', '5e-4',
          '--prob-length', '0.5', '--s-noise', '1', '--dtype', 'fp32', '--eval-n', '32', '--eval-steps', '40',
          '--ckpt-every', '250']
COLUMNS = ('task label seed step train_s sampler steps n psnr ssim flat_noise input_psnr bicubic_psnr baseline_psnr '
           'smooth_baseline_psnr project project_smooth s_block s_noise ckpt').split()


def run_name(seed, max_iters, base_iters):
    return f's{seed}' if max_iters == base_iters else f's{seed}_it{max_iters}'


def train_seed(a, seed):
    """One training run (skip if finished, resume if not, or continue a shorter run of the same seed)."""
    out = os.path.join(a.runs, run_name(seed, a.max_iters, a.base_iters))
    ckpt = os.path.join(out, 'ckpt.pt')
    step = checkpoint_step(ckpt)
    if step is not None and step >= a.max_iters:
        print(f'{out}: finished ({step} iterations), skipped', flush=True)
        return
    if step is None and a.max_iters != a.base_iters:  # continue the base run of this seed
        base = os.path.join(a.runs, run_name(seed, a.base_iters, a.base_iters))
        if checkpoint_step(os.path.join(base, 'ckpt.pt')) != a.base_iters:
            raise SystemExit(f'{base}: no finished {a.base_iters}-iteration run to continue')
        shutil.copytree(base, out)
    cmd = train_command([*RECIPE, '--data', a.data, '--seed', seed, '--eval-every', a.max_iters], out, a.max_iters)
    run_jobs([(out, cmd, os.path.join(a.runs, f'train_{os.path.basename(out)}.log'))], cwd=ROOT)


def scores(x, hr):
    m = metrics.mean_metrics(metrics.compute_metrics(x.float().clamp(-1, 1), hr))
    return {k: round(m[k], 5) for k in ('psnr', 'ssim', 'flat_noise')}


def baselines(hr, block, smooth):
    """(input, bicubic, bicubic + box projection, bicubic + smooth box projection), clamped like the outputs."""
    x_up, bicubic = relay_inputs(hr, block)
    lr = F.avg_pool2d(hr, block)
    projected = relay.TileMeanProjection(lr, block)(bicubic).clamp(-1, 1)
    smooth_projected = relay.TileMeanProjection(lr, block, smooth)(bicubic).clamp(-1, 1)
    return x_up, bicubic, projected, smooth_projected


def settings(a):
    """(label suffix, project, project_smooth) for each projection setting."""
    out = [('', False, 0.0), (' + projection', True, 0.0)]
    for s in a.smooth:
        out.append((f' + smooth projection ({s:g})', True, s))
    return out


def cached_scores(a, ckpt, hr, base):
    """score_run, kept next to the checkpoint (RUN/stage2_scores.pt) for the same settings, step and faces, so a
    run is scored once even when the driver is started again as the other seeds finish."""
    cache = os.path.join(os.path.dirname(ckpt), 'stage2_scores.pt')
    key = dict(step=checkpoint_step(ckpt), n=len(hr), steps=a.steps, s_block=a.s_block, smooth=a.smooth,
               sample_seed=a.sample_seed, hr_sum=round(float(hr.double().sum()), 6))
    if network_dtype(a) != torch.float32:
        key['dtype'] = str(network_dtype(a))
    if os.path.isfile(cache):
        saved = torch.load(cache, weights_only=True)
        if saved['key'] == key:
            print(f'{ckpt}: scores from {cache}', flush=True)
            return saved['rows'], saved['outputs']
    rows, outputs = score_run(a, ckpt, hr, base)
    torch.save(dict(key=key, rows=rows, outputs={k: v[:8] for k, v in outputs.items()}), cache)
    return rows, outputs


def network_dtype(a):
    """The network's autocast dtype while sampling: a.dtype where the caller sets it (relay64_256.py), else fp32."""
    return getattr(a, 'dtype', torch.float32)


@torch.inference_mode()
def score_run(a, ckpt, hr, base):
    net, cfg = load_model(ckpt)
    info = parse_task(cfg['task'])
    ck = torch.load(ckpt, map_location='cpu', weights_only=True)
    D = relay.EDMPrecond(net)
    x_up, _, _, _ = base
    rows, outputs = [], {}
    for steps in a.steps:
        for s_block in a.s_block:
            for suffix, project, smooth in settings(a):
                with autocast(torch.device('cpu'), network_dtype(a)):  # the network only; the metrics in fp32
                    out = relay.relay_sampler(D, x_up, steps, truncation_sigma=relay.default_truncation_sigma(
                                              cfg['prob_length']),
                                              truncation_t=cfg['prob_length'], block=info['block'],
                                              s_block=s_block, s_noise=cfg['s_noise'],
                                              blur_sigma_max=cfg['blur_sigma_max'],
                                              generator=torch.Generator().manual_seed(a.sample_seed), project=project,
                                              project_smooth=smooth)
                label = f'relay{suffix}, s_block {s_block:g}, {steps} steps'
                if ck['step'] != a.base_iters:
                    label = f'{ck["step"]} it., ' + label
                rows.append(dict(task=cfg['task'], label=label, seed=cfg['seed'], step=ck['step'],
                                 train_s=round(ck.get('train_s', 0.0), 1), sampler='relay', steps=steps, n=len(hr),
                                 **scores(out, hr), **base_scores(a, hr, base), project=project,
                                 project_smooth=smooth, s_block=s_block, s_noise=cfg['s_noise'], ckpt=ckpt))
                outputs[(steps, s_block, suffix)] = out.float()
                print(f"{os.path.basename(os.path.dirname(ckpt))} {label}: PSNR {rows[-1]['psnr']:.2f} "
                      f"SSIM {rows[-1]['ssim']:.3f} flat {rows[-1]['flat_noise']:.2f}", flush=True)
    return rows, outputs


def base_scores(a, hr, base):
    x_up, bicubic, projected, smooth_projected = base
    return dict(input_psnr=scores(x_up, hr)['psnr'], bicubic_psnr=scores(bicubic, hr)['psnr'],
                baseline_psnr=scores(projected, hr)['psnr'], smooth_baseline_psnr=scores(smooth_projected, hr)['psnr'])


def baseline_rows(a, hr, base, task='relay16_64'):
    names = ['input (nearest up of the tile means)', 'bicubic of the tile means',
             'baseline: bicubic + box projection (tile means restored)',
             f'baseline: bicubic + smooth box projection ({a.smooth[0]:g})']
    rows = []
    for name, x in zip(names, base):
        rows.append(dict(task=task, label=name, seed='', step=0, train_s=0, sampler='', steps=0, n=len(hr),
                         **scores(x, hr), **base_scores(a, hr, base), project='', project_smooth='', s_block='',
                         s_noise='', ckpt=''))
    return rows


def spread(vals, fmt):
    """'mean ± std (min-max)' over seeds, or the one value."""
    if len(vals) == 1:
        return format(vals[0], fmt)
    mean, std = statistics.mean(vals), statistics.stdev(vals)
    std_fmt = fmt.lstrip('+')
    dash = ' to ' if fmt.startswith('+') else '-'  # signed values: '-0.65 to -0.60', not '-0.65--0.60'
    return f'{mean:{fmt}} ± {std:{std_fmt}} ({min(vals):{fmt}}{dash}{max(vals):{fmt}})'


def summary(rows):
    """Markdown: mean ± std (min-max) over seeds per label, and the margin over the training-free baseline (and over
    its smooth-projection twin, the baseline the smooth variant has to beat)."""
    lines = ['| label | seeds | PSNR | SSIM | flat noise | PSNR - baseline | PSNR - smooth baseline |',
             '|---|---|---|---|---|---|---|']
    for label in dict.fromkeys(r['label'] for r in rows):
        group = [r for r in rows if r['label'] == label]
        seeds = '-' if group[0]['seed'] == '' else str(len(group))
        psnr = spread([float(r['psnr']) for r in group], '.2f')
        ssim = spread([float(r['ssim']) for r in group], '.3f')
        flat = spread([float(r['flat_noise']) for r in group], '.2f')
        margin = spread([float(r['psnr']) - float(r['baseline_psnr']) for r in group], '+.2f')
        smooth_margin = spread([float(r['psnr']) - float(r['smooth_baseline_psnr']) for r in group], '+.2f')
        lines.append(f'| {label} | {seeds} | {psnr} | {ssim} | {flat} | {margin} | {smooth_margin} |')
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--runs', default='/work/runs/relay_stage2', help='folder of the training runs (outside the repo)')
    ap.add_argument('--data', default='../shared/data/faces')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--train', action='store_true', help='train the missing / unfinished runs first')
    ap.add_argument('--train-only', action='store_true', help='with --train: stop after training')
    ap.add_argument('--max-iters', type=int, nargs='+', default=[1500],
                    help='training lengths; a length above the first continues the first length\'s run of that seed')
    ap.add_argument('--n', type=int, default=32)
    ap.add_argument('--steps', type=int, nargs='+', default=[40, 20])
    ap.add_argument('--s-block', type=float, nargs='+', default=[0.0, 0.15])
    ap.add_argument('--smooth', type=float, nargs='+', default=[10.0], help='smooth projection weights')
    ap.add_argument('--sample-seed', type=int, default=0)
    ap.add_argument('--out', default='results/relay')
    a = ap.parse_args()
    a.base_iters = a.max_iters[0]
    if a.train:
        for max_iters in a.max_iters:
            for seed in a.seeds:
                train_seed(argparse.Namespace(**{**vars(a), 'max_iters': max_iters}), seed)
        if a.train_only:
            return
    hr = heldout(data.ImageFolder(os.path.join(ROOT, a.data) if not os.path.isabs(a.data) else a.data, 64),
                 a.n)['image']
    base = baselines(hr, 4, a.smooth[0])
    rows = baseline_rows(a, hr, base)
    grid_cols = None
    for max_iters in a.max_iters:
        for seed in a.seeds:
            ckpt = os.path.join(a.runs, run_name(seed, max_iters, a.base_iters), 'ckpt.pt')
            if checkpoint_step(ckpt) != max_iters:
                print(f'{ckpt}: not finished, not scored', flush=True)
                continue
            run_rows, outputs = cached_scores(a, ckpt, hr, base)
            rows += run_rows
            if seed == a.seeds[0] and max_iters == a.base_iters:
                key = (a.steps[0], a.s_block[0])
                grid_cols = [base[0], outputs[key + ('',)], outputs[key + (' + projection',)],
                             outputs[key + (f' + smooth projection ({a.smooth[0]:g})',)], base[2], hr]
    path = os.path.join(a.out, 'stage2_projection.csv')
    write_results(path, rows, COLUMNS, os.path.join(a.out, 'stage2_summary.md'), summary(rows))
    if grid_cols is not None:
        data.save_grid(torch.stack([c[:8].clamp(-1, 1) for c in grid_cols], 1).flatten(0, 1),
                       os.path.join(a.out, 'stage2_s0.png'), nrow=len(grid_cols))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
