"""Relay Diffusion at the paper's resolution, 64 -> 256 on faces at CPU scale (issue 29, items 2 and 3): a relay64_256
stage 2 that must beat its input by >= 1 dB and come within 0.5 dB of bicubic of the tile means in <= 30 minutes of
training alone; block noise in training on / off x at sampling on / off; RDM's CelebA-HQ blur settings against the
CPU recipe's, 3 seeds each; and two-stage generation 64 -> 256 from trained models.

    python experiments/relay64_256.py cost               # s/it of the recipe alone (all cores): the 30-minute budget
    python experiments/relay64_256.py train --jobs 2     # 3 variants x 3 seeds + stage 1, two at a time, 1 thread each
    python experiments/relay64_256.py score --jobs 2     # 32 held-out faces, every run x sampler setting
    python experiments/relay64_256.py two_stage          # 16 faces: stage 1 (relay64) -> stage 2 (recipe, first seed)
    python experiments/relay64_256.py report             # mean ± std (min-max) over seeds, margins, targets, effects
    python experiments/relay64_256.py all --smoke        # every stage on 12 faces, 2 iterations, 2 steps, seed 0

Training: configs/relay64_256_cpu.toml (the recipe) with each variant's flags (VARIANTS), each run a train.py
subprocess with OMP_NUM_THREADS=1 in RUNS/<variant>_s<seed> (log RUNS/<variant>_s<seed>.log); a finished run (its
checkpoint at --max-iters) is skipped, a stopped one resumed. Stage 1 (S1_FLAGS) trains in RUNS/stage1_relay64.
Scoring: the first --n faces of --data at 256 (held out by train.py --holdout 32); input = nearest-up of their 4x4 tile
means, beside bicubic of the tile means and the training-free baseline (bicubic + tile-mean projection,
relay.TileMeanProjection); each checkpoint under the relay sampler with and without `project`, s_block 0.15 and 0,
one noise seed (experiments/relay_stage2.py's scoring, cached in RUN/stage2_scores.pt). Files in --out:
relay64_256_scores.csv (one row per point), relay64_256_summary.md, relay64_256_s0.png (input | relay | relay +
projection | baseline | HR, center 128x128 crops), relay64_256_cost.json, two_stage_64_256.jpg (stage 1 | stage 2).
"""
import argparse
import csv
import json
import os
import statistics
import sys

import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'experiments'))
import data  # noqa: E402
from common import checkpoint_step, run_jobs, train_command, write_results  # noqa: E402
from relay_stage2 import COLUMNS as STAGE2_COLUMNS, baseline_rows, baselines, cached_scores, spread  # noqa: E402
from runtime import pick_dtype  # noqa: E402
from tasks import heldout  # noqa: E402

CONFIG = 'configs/relay64_256_cpu.toml'
VARIANTS = {  # name: (label, train.py flags over the recipe)
    'recipe': ('CPU recipe', []),
    'no_bn': ('recipe, no block noise in training', ['--block-noise', '0']),
    'rdm_blur': ("recipe + RDM's CelebA-HQ blur (prob_length 0.89, blur_sigma_max 2)",
                 ['--prob-length', '0.89', '--blur-sigma-max', '2']),
}
S1_FLAGS = ['--task', 'relay64', '--holdout', '32', '--model', 'tiny', '--batch-size', '16', '--lr', '1e-3',
            '--eval-n', '64', '--eval-steps', '40', '--ckpt-every', '250', '--seed', '0']
SMOKE_FLAGS = ['--holdout', '4', '--eval-n', '2', '--eval-steps', '2', '--log-every', '1', '--batch-size', '2']
COLUMNS = STAGE2_COLUMNS + ['variant', 'prob_length', 'blur_sigma_max', 'block_noise']
TARGETS = (('input', 'input_psnr', 1.0), ('bicubic', 'bicubic_psnr', -0.5))  # PSNR - reference >= threshold
BUDGET_S = 30 * 60


# ----------------------------------------------------------------------------- training
def run_dir(a, variant, seed):
    return os.path.join(a.runs, f'{variant}_s{seed}')


def stage2_flags(a, variant, seed):
    return ['--config', CONFIG, *VARIANTS[variant][1], '--data', a.data, '--seed', seed, '--eval-every', a.max_iters,
            *a.extra]


def stage1_flags(a):
    return [*S1_FLAGS, '--data', a.data, '--eval-every', a.s1_iters, *a.extra]


def train(a):
    jobs = []
    for variant in a.variants:
        for seed in a.seeds:
            out = run_dir(a, variant, seed)
            cmd = train_command(stage2_flags(a, variant, seed), out, a.max_iters)
            jobs += [(out, cmd, out + '.log')] if cmd else []
    s1 = os.path.join(a.runs, 'stage1_relay64')
    cmd = train_command(stage1_flags(a), s1, a.s1_iters) if a.stage1 else None
    jobs += [(s1, cmd, s1 + '.log')] if cmd else []
    print(f'{len(jobs)} runs to train, {a.jobs} at a time', flush=True)
    run_jobs(jobs, a.jobs, ROOT)


def cost(a):
    """--cost-iters iterations of the recipe alone (torch's threads: all cores), timed by train.py after the first
    log line (warm-up): s/it and the iterations that fit 30 minutes."""
    out, every = os.path.join(a.runs, 'cost'), 1 if a.smoke else 5
    cmd = [sys.executable, 'train.py', '--config', CONFIG, '--data', a.data, *a.extra, '--eval-n', '1', '--log-every',
           str(every), '--max-iters', str(a.cost_iters), '--eval-every', str(a.cost_iters), '--out', out, '--overwrite']
    if os.path.exists(out + '.log'):
        os.remove(out + '.log')
    run_jobs([('cost', cmd, out + '.log')], 1, ROOT, threads=None)
    timed = [r for r in map(json.loads, open(os.path.join(out, 'log.jsonl'))) if 'train_s' in r]
    first, last = timed[0], timed[-1]
    s_it = (last['train_s'] - first['train_s']) / (last['step'] - first['step'])
    device = next((line.strip() for line in open(out + '.log') if line.startswith('device ')), '')
    res = dict(s_per_it=round(s_it, 4), iterations=[first['step'], last['step']], threads=torch.get_num_threads(),
               device=device, max_iters_30min=int(BUDGET_S // s_it), command=' '.join(['python', *cmd[1:]]))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, 'relay64_256_cost.json'), 'w') as f:
        json.dump(res, f, indent=1)
    print(f"cost: {s_it:.3f} s/it alone ({device}); {res['max_iters_30min']} iterations fit 30 minutes")


# ----------------------------------------------------------------------------- scoring
def heldout_faces(a):
    return heldout(data.ImageFolder(os.path.join(ROOT, a.data), 256), a.n)['image']


def score_settings(a, step):
    """The namespace relay_stage2's scoring reads: projection off / on (no smooth variant), a.s_block, a.steps, and
    the network's autocast dtype (--dtype auto: bf16 where the CPU has it natively)."""
    return argparse.Namespace(steps=a.steps, s_block=a.s_block, smooth=[], sample_seed=a.sample_seed, base_iters=step,
                              dtype=pick_dtype(a.dtype, torch.device('cpu'))[0])


def finished_runs(a):
    """(variant, seed, ckpt) of every run whose checkpoint reached --max-iters; the others are named."""
    runs = []
    for variant in a.variants:
        for seed in a.seeds:
            ckpt = os.path.join(run_dir(a, variant, seed), 'ckpt.pt')
            step = checkpoint_step(ckpt)
            if step is None or step < a.max_iters:
                print(f'{ckpt}: not finished ({step} of {a.max_iters} iterations), not scored', flush=True)
            else:
                runs.append((variant, seed, ckpt))
    return runs


def score_run(a):
    """One checkpoint (--run), in this process: its rows cached beside it (RUN/stage2_scores.pt)."""
    ckpt = os.path.join(a.run, 'ckpt.pt')
    hr = heldout_faces(a)
    cached_scores(score_settings(a, checkpoint_step(ckpt)), ckpt, hr, baselines(hr, 4, a.smooth))


def score(a):
    runs = finished_runs(a)
    flags = ['--runs', a.runs, '--data', a.data, '--n', a.n, '--steps', *a.steps, '--s-block', *a.s_block,
             '--smooth', a.smooth, '--sample-seed', a.sample_seed, '--dtype', a.dtype]
    run_jobs([(ckpt, [sys.executable, os.path.abspath(__file__), 'score_run', '--run', os.path.dirname(ckpt),
                      *map(str, flags)], os.path.join(os.path.dirname(ckpt), 'score.log')) for _, _, ckpt in runs],
             a.jobs, ROOT)
    hr = heldout_faces(a)
    base = baselines(hr, 4, a.smooth)
    rows, grid = baseline_rows(argparse.Namespace(smooth=[a.smooth]), hr, base, task='relay64_256'), None
    for variant, seed, ckpt in runs:
        run_rows, outputs = cached_scores(score_settings(a, checkpoint_step(ckpt)), ckpt, hr, base)
        args = torch.load(ckpt, map_location='cpu', weights_only=True)['args']
        for r in run_rows:
            r.update(variant=variant, label=f'{VARIANTS[variant][0]}: {r["label"]}', prob_length=args['prob_length'],
                     blur_sigma_max=args['blur_sigma_max'], block_noise=args['block_noise'])
        rows += run_rows
        if variant == 'recipe' and seed == a.seeds[0]:
            key = (a.steps[0], a.s_block[0])
            grid = [base[0], outputs[key + ('',)], outputs[key + (' + projection',)], base[2], hr]
    path = os.path.join(a.out, 'relay64_256_scores.csv')
    write_results(path, rows, COLUMNS)
    print(f'wrote {path}: {len(rows)} rows')
    if grid is not None:  # 4 faces, center 128x128 crops at full resolution
        crops = [c[:4, :, 64:192, 64:192].float().clamp(-1, 1) for c in grid]
        data.save_grid(torch.stack(crops, 1).flatten(0, 1), os.path.join(a.out, 'relay64_256_s0.png'), nrow=len(crops))


# ----------------------------------------------------------------------------- two-stage generation
def two_stage(a):
    """Stage 1 (trained here if needed) -> sample.py --relay with the recipe's first seed -> the grid."""
    s1 = os.path.join(a.runs, 'stage1_relay64')
    cmd = train_command(stage1_flags(a), s1, a.s1_iters)
    if cmd:
        run_jobs([(s1, cmd, s1 + '.log')], 1, ROOT)
    s2 = os.path.join(run_dir(a, 'recipe', a.seeds[0]), 'ckpt.pt')
    if (checkpoint_step(s2) or 0) < a.max_iters:
        raise SystemExit(f'{s2}: stage 2 not trained to {a.max_iters} iterations (run the train stage)')
    os.makedirs(a.out, exist_ok=True)
    steps = '2' if a.smoke else '40'
    sample = [sys.executable, 'sample.py', '--relay', '--ckpt-first', os.path.join(s1, 'ckpt.pt'), '--ckpt-second',
              s2, '--n', str(a.gen_n), '--steps-first', steps, '--steps-second', steps, '--project', '--seed', '0',
              '--dtype', a.dtype, '--out', os.path.join(a.runs, 'two_stage'),
              '--grid', os.path.join(a.runs, 'two_stage_grid.png')]
    run_jobs([('two_stage', sample, os.path.join(a.runs, 'two_stage.log'))], 1, ROOT, threads=None)
    path = os.path.join(a.out, 'two_stage_64_256.jpg')  # 16 pairs at 256: 1.9 MB as PNG, 0.54 MB as this JPEG
    Image.open(os.path.join(a.runs, 'two_stage_grid.png')).convert('RGB').save(path, quality=90)
    print(f'grid: {path}')


# ----------------------------------------------------------------------------- report (pure: rows as in the CSV)
def target(values, threshold):
    """Whether PSNR margins reach `threshold`: on every seed, on the mean only, or not."""
    if min(values) >= threshold:
        return 'met (every seed)'
    return 'met (mean)' if statistics.mean(values) >= threshold else 'not met'


def summary(rows, s_per_it=None):
    """Markdown, one line per label: mean ± std (min-max) over seeds of PSNR / SSIM / flat noise and of the margins
    over the input, bicubic and the training-free baseline; the targets (+1 dB over the input, -0.5 dB to bicubic)
    for the relay rows; with s_per_it (the cost stage), the iterations in minutes alone against 30."""
    lines = ['| label | seeds | PSNR | SSIM | flat noise | PSNR - input | PSNR - bicubic | PSNR - baseline | targets |',
             '|---|---|---|---|---|---|---|---|---|']
    for label in dict.fromkeys(r['label'] for r in rows):
        group = [r for r in rows if r['label'] == label]
        col = lambda k: [float(r[k]) for r in group]  # noqa: E731
        margins = {name: [p - q for p, q in zip(col('psnr'), col(ref))] for name, ref, _ in TARGETS}
        cells = [label, '-' if group[0]['seed'] == '' else str(len(group)), spread(col('psnr'), '.2f'),
                 spread(col('ssim'), '.3f'), spread(col('flat_noise'), '.2f'), spread(margins['input'], '+.2f'),
                 spread(margins['bicubic'], '+.2f'),
                 spread([p - q for p, q in zip(col('psnr'), col('baseline_psnr'))], '+.2f')]
        if group[0]['seed'] == '':
            cells.append('')
        else:
            cells.append('; '.join(f'{name} {thr:+g} dB: {target(margins[name], thr)}' for name, _, thr in TARGETS))
        lines.append('| ' + ' | '.join(cells) + ' |')
    for step in sorted({int(r['step']) for r in rows if r['seed'] != ''}):
        if s_per_it:
            minutes = step * s_per_it / 60
            verdict = 'met' if minutes <= BUDGET_S / 60 else 'not met'
            lines.append(f'\nTraining: {step} iterations x {s_per_it:.3f} s/it alone = {minutes:.1f} min '
                         f'(<= 30 min: {verdict}).')
        else:
            lines.append(f'\nTraining: {step} iterations (no cost stage: minutes alone unknown).')
    return '\n'.join(lines)


def sampler_key(r):
    return r['steps'], r['project'], float(r['s_block'])


def setting_name(steps, project, s_block=None):
    name = f"{steps} steps, projection {'on' if project == 'True' else 'off'}"
    return name if s_block is None else f'{name}, s_block {s_block:g}'


def paired(rows, a_key, b_key, metric):
    """metric(a) - metric(b) per seed, over the seeds both (variant, sampler setting) keys have."""
    at = {(r['variant'], *sampler_key(r), r['seed']): float(r[metric]) for r in rows}
    seeds = sorted({r['seed'] for r in rows})
    return [at[a_key + (s,)] - at[b_key + (s,)] for s in seeds if a_key + (s,) in at and b_key + (s,) in at]


def effects(rows):
    """Markdown: the effects the issue asks about, as paired differences by seed (mean ± std (min-max)):
    block noise in training (recipe - no_bn), RDM's blur (rdm_blur - recipe), at each sampler setting; block noise
    at sampling (the largest s_block - 0) for each variant and projection."""
    relay = [r for r in rows if r.get('variant')]
    settings = list(dict.fromkeys(sampler_key(r) for r in relay))
    specs = []
    for key in settings:
        specs.append(('block noise in training (recipe - no block noise)', ('recipe', *key), ('no_bn', *key),
                      setting_name(*key)))
        specs.append(("RDM's CelebA-HQ blur - recipe", ('rdm_blur', *key), ('recipe', *key), setting_name(*key)))
    for variant in dict.fromkeys(r['variant'] for r in relay):
        for steps, project in dict.fromkeys(k[:2] for k in settings):
            s_blocks = sorted({k[2] for k in settings if k[:2] == (steps, project)})
            if len(s_blocks) > 1:  # (a missing s_block 0 pairs nothing: no line)
                on, off = (steps, project, s_blocks[-1]), (steps, project, 0.0)
                specs.append((f'block noise at sampling (s_block {s_blocks[-1]:g} - 0), {variant}', (variant, *on),
                              (variant, *off), setting_name(steps, project)))
    lines = ['| effect | sampler | seeds | PSNR | SSIM |', '|---|---|---|---|---|']
    for name, a_key, b_key, sampler in specs:
        d_psnr = paired(relay, a_key, b_key, 'psnr')
        if d_psnr:
            d_ssim = paired(relay, a_key, b_key, 'ssim')
            cells = [name, sampler, str(len(d_psnr)), spread(d_psnr, '+.2f'), spread(d_ssim, '+.3f')]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def report(a):
    with open(os.path.join(a.out, 'relay64_256_scores.csv'), newline='') as f:
        rows = list(csv.DictReader(f))
    cost_path = os.path.join(a.out, 'relay64_256_cost.json')
    s_per_it = json.load(open(cost_path))['s_per_it'] if os.path.isfile(cost_path) else None
    text = summary(rows, s_per_it) + '\n\nPaired by seed:\n\n' + effects(rows)
    write_results(None, rows, COLUMNS, os.path.join(a.out, 'relay64_256_summary.md'), text)


# ----------------------------------------------------------------------------- command line
def smoke_faces(src, dst, n=12):
    """The first n images of src (sorted), linked into dst: the --smoke data set."""
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src))[:n]:
        if not os.path.exists(os.path.join(dst, name)):
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(dst, name))
    return dst


def get_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('stage', choices=['cost', 'train', 'score', 'two_stage', 'report', 'all', 'score_run'])
    ap.add_argument('--runs', default=None, help='training runs (default runs/relay64_256; --smoke: runs/smoke/...)')
    ap.add_argument('--data', default='../shared/data/faces256')
    ap.add_argument('--out', default=None, help='results folder (default results/relay; --smoke: RUNS/results)')
    ap.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument('--seeds', type=int, nargs='+', default=None, help='default 0 1 2 (--smoke: 0)')
    ap.add_argument('--max-iters', type=int, default=1400, help='stage 2 (the recipe\'s; the cost stage tells the fit)')
    ap.add_argument('--s1-iters', type=int, default=4000, help='stage 1 relay64 iterations')
    ap.add_argument('--no-stage1', dest='stage1', action='store_false', help='train: the stage-2 runs only')
    ap.add_argument('--jobs', type=int, default=2, help='train / score: runs at a time, one thread each')
    ap.add_argument('--cost-iters', type=int, default=30)
    ap.add_argument('--n', type=int, default=32, help='held-out faces scored')
    ap.add_argument('--steps', type=int, nargs='+', default=[40])
    ap.add_argument('--s-block', type=float, nargs='+', default=[0.15, 0.0], help='block noise at sampling')
    ap.add_argument('--smooth', type=float, default=10.0, help='the smooth-projection baseline row\'s weight')
    ap.add_argument('--sample-seed', type=int, default=0)
    ap.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'], help='scoring and sampling')
    ap.add_argument('--gen-n', type=int, default=16, help='two_stage: faces generated')
    ap.add_argument('--run', help=argparse.SUPPRESS)  # score_run: one run folder
    ap.add_argument('--smoke', action='store_true', help='12 faces (4 held out), 2 iterations, 2 steps, seed 0')
    a = ap.parse_args(argv)
    a.extra = []
    if a.smoke:
        a.runs = a.runs or 'runs/smoke/relay64_256'
        a.data = smoke_faces(os.path.join(ROOT, a.data), os.path.join(ROOT, a.runs, 'faces'))
        a.extra = SMOKE_FLAGS
        a.max_iters, a.s1_iters, a.cost_iters, a.n, a.steps, a.gen_n = 2, 2, 2, 4, [2], 4
        a.seeds = a.seeds or [0]
    a.seeds = a.seeds or [0, 1, 2]
    a.runs = a.runs or 'runs/relay64_256'
    a.out = a.out or (os.path.join(a.runs, 'results') if a.smoke else 'results/relay')
    return a


def main(argv=None):
    a = get_args(argv)
    stages = dict(cost=cost, train=train, score=score, two_stage=two_stage, report=report, score_run=score_run)
    for name in (['cost', 'train', 'score', 'two_stage', 'report'] if a.stage == 'all' else [a.stage]):
        print(f'== {name}', flush=True)
        stages[name](a)


if __name__ == '__main__':
    main()
