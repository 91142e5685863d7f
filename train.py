"""
Train an SR3 super-resolution model (optionally with DREAM) or a Relay Diffusion stage.

    python data.py prepare SRC faces_16_128 --lr 16 --hr 128                 # a training set from any face folder
    python train.py --task sr16_128 --dream --data faces_16_128              # held out: DREAM's 100 validation faces
    python train.py --config configs/quickstart_cpu.toml                     # a recipe file (TOML); flags after it override
    python train.py --task sr16_64 --data faces_16_64 --model tiny --max-iters 2000 --out out/tiny
    python train.py --task relay16 --data faces --holdout 100 --model tiny   # RDM stage 1: EDM at 16x16
    python train.py --task relay16_64 --data faces --holdout 100 --model tiny  # RDM stage 2: blur diffusion 16 -> 64
    torchrun --nproc_per_node 2 train.py ...                                 # DistributedDataParallel (gloo/nccl)

Writes DIR/ckpt.pt (atomic, torch.load(weights_only=True)), DIR/ckpt_<step>.pt snapshots, DIR/log.jsonl (one JSON
object per step: step, loss; evaluation lines: step, psnr, ...), DIR/loss.png, DIR/samples_<step>.png (LR|bicubic|SR|HR).
The defaults are the paper's setting (SR3's network, linear schedule 1e-6..1e-2 over 2000 steps, L1, Adam 1e-4, batch 4,
1M iterations); on a machine without a GPU the paper's network first times two iterations and prints what the run
would cost there. SIGINT / SIGTERM (also to the whole process group) save a checkpoint at the end of the step.
"""
import contextlib
import copy
import json
import math
import os
import re
import signal
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
from checkpoint import (gather_rng_states, load_checkpoint, load_weights, rank_rng_state, save_checkpoint,
                        set_rng_state)
from plots import plot_loss
from runtime import (Parser, UsageError, allow_tf32, describe, memory_format, pick_device, pick_dtype, seed_everything,
                     setup_ddp, teardown_ddp, autocast)
from tasks import (LOSS_DEFAULTS as LOSS, RDM_S_NOISE, build_model, check_resolution, compute_loss, heldout, parse_task,
                   preset_norm_groups, sample_and_score, time_iterations)
from trainset import check_data_flags, datasets, make_loader, to_device
from unet import INITS, PRESETS

POSITIVE = 'max_iters batch_size grad_accum timesteps log_every eval_n eval_steps eval_batch ckpt_every eval_every lr'.split()
NON_NEGATIVE = ['snapshot_every', 'holdout', 'warmup', 'temperature', 'block_noise', 'project_smooth']
# --resume refuses a change of these (what the network learns, and how): one line naming the flag. Allowed: --max-iters,
# logging, evaluation and sampling flags, hardware (--device, --dtype, --compile, --workers, --grad-checkpoint),
# --data (a folder may move), --lr-horizon (said aloud).
LEARNING_FLAGS = ('norm_groups', 'upsample', 'pred', 'residual', 'noise_cond', 'init', 'schedule', 'timesteps',
                  'beta_start', 'beta_end', 'loss', 'dream', 'dream_p', 'blur_sigma_max', 'prob_length', 'block_noise',
                  'batch_size', 'grad_accum', 'lr', 'lr_schedule', 'warmup', 'ema_decay', 'seed', 'holdout')
PAPER_ITERS = 1_000_000  # SR3's and DREAM's 16 -> 128 face training: 1M iterations (the default --max-iters)
CPU_RECIPE = 'configs/quickstart_cpu.toml'
EVAL_TIMEOUT_PER_IMAGE_STEP = 2.0  # DDP: seconds the other ranks wait per held-out image and sampling step (generous)


# ----------------------------------------------------------------------------- flags
def get_args(argv=None):
    p = make_parser()
    a = p.parse_args(argv)  # --config FILE: the file's flags at its place (runtime.Parser)
    a.task_info = parse_task(a.task)
    if a.norm_groups is None and a.model in PRESETS:
        a.norm_groups = preset_norm_groups(a.model)  # saved with the run, so the checkpoint rebuilds the same net
    if a.lr_horizon is None and not a.resume:
        a.lr_horizon = a.max_iters  # a resumed run keeps its checkpoint's horizon (train)
    check_args(a)
    return a


def make_parser():
    """train.py's flags. With no flags: the paper's setting (sr16_128, SR3's network, schedule and optimiser)."""
    p = Parser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=None, help='a recipe: TOML whose keys are these flags with underscores '
                   '(max_iters = 2100); flags after --config override it (configs/)')
    # task and method
    p.add_argument('--task', default='sr16_128')
    p.add_argument('--dream', action='store_true', help='DREAM rectified loss')
    p.add_argument('--dream-p', type=float, default=LOSS['dream_p'], help='lambda = sqrt(1 - alpha_bar)^p (default 1)')
    # data
    p.add_argument('--data', default=None, help='training images / zip (SR: hr_H, lr_L[, sr_L_H] layout; '
                   'build with data.py prepare)')
    p.add_argument('--val-data', default=None, help='held-out images (default: DATA/val, or --holdout; sr16_128: '
                   "DREAM's 100 validation faces)")
    p.add_argument('--holdout', type=int, default=0, help='hold out the first N sorted images for evaluation')
    p.add_argument('--smoke-on-eval-set', action='store_true', help="sr16_128 without --data: train AND evaluate on "
                   "DREAM's 100 validation faces (a smoke test of the code, never a result)")
    p.add_argument('--out', default='out')
    # network and optimisation
    p.add_argument('--model', default='paper', choices=list(PRESETS), help="the network (default: SR3's paper network; "
                   'tiny trains on a CPU in minutes)')
    p.add_argument('--max-iters', type=int, default=PAPER_ITERS, help='training iterations (SR3 / DREAM: 1M)')
    p.add_argument('--batch-size', type=int, default=4, help='per process (paper: 4)')
    p.add_argument('--grad-accum', type=int, default=1, help='global batch = batch x K x world size')
    p.add_argument('--grad-checkpoint', action='store_true', help='activation checkpointing in the UNet')
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--lr-schedule', default='constant', choices=['constant', 'cosine'],
                   help='constant (SR3) or cosine decay to 0 at --lr-horizon')
    p.add_argument('--lr-horizon', type=int, default=None, help='cosine: the iteration where the learning rate '
                   "reaches 0 (default: the first run's --max-iters; kept in the checkpoint, so --resume with a larger "
                   '--max-iters keeps the schedule)')
    p.add_argument('--warmup', type=int, default=0, help='linear learning-rate warm-up iterations')
    p.add_argument('--ema-decay', type=float, default=0.9999)
    p.add_argument('--seed', type=int, default=0, help='rank r of a DDP run seeds its noise with seed + 1000 r')
    # hardware
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'])
    p.add_argument('--compile', action='store_true', help='torch.compile the UNet (CUDA)')
    p.add_argument('--workers', type=int, default=-1, help='data loader workers (-1: 0 on CPU, 4 on CUDA)')
    # diffusion (SR3) and relay stage 2: what tasks.make_diffusion / compute_loss read
    p.add_argument('--schedule', default=LOSS['schedule'])
    p.add_argument('--timesteps', type=int, default=LOSS['timesteps'])
    p.add_argument('--beta-start', type=float, default=LOSS['beta_start'])
    p.add_argument('--beta-end', type=float, default=LOSS['beta_end'])
    p.add_argument('--loss', default=LOSS['loss'], choices=['l1', 'l2'], help='SR loss (SR3/DREAM: l1)')
    # SR options beyond SR3 (README "What made it work"); the defaults are SR3's
    p.add_argument('--pred', default=LOSS['pred'], choices=['eps', 'x0', 'v'], help='what the network predicts')
    p.add_argument('--residual', action='store_true', help='diffuse HR - bicubic(LR) (SRDiff) instead of HR')
    p.add_argument('--noise-cond', default=LOSS['noise_cond'], choices=['gamma', 'log_sigma'],
                   help="the network's noise level input: SR3's gamma, or ln(sigma)/4")
    p.add_argument('--project', action='store_true',
                   help='sampling: project every x0 estimate onto the images whose bicubic downsample is the LR '
                        '(relay stage 2: whose tile means are the input\'s)')
    p.add_argument('--project-smooth', type=float, default=LOSS['project_smooth'],
                   help='with --project: make the correction the smoothest consistent one (weight of its second '
                        'differences; 0 = the pseudo-inverse) instead of the smallest: less LR-grid texture')
    p.add_argument('--temperature', type=float, default=1.0,
                   help='sampling (evaluation and sample.py): scale of the noise added after x_T (1 = DDPM as written)')
    p.add_argument('--norm-groups', type=int, default=None, help="GroupNorm groups (default: the preset's)")
    p.add_argument('--init', default='default', choices=list(INITS),
                   help="initial weights: PyTorch's default, SR3's orthogonal, or zero-initialised residual branches")
    p.add_argument('--upsample', default='nearest', choices=['nearest', 'bilinear'],
                   help="the UNet decoder's x2 upsample (SR3: nearest)")
    p.add_argument('--blur-sigma-max', type=float, default=LOSS['blur_sigma_max'],
                   help='relay stage 2 (CelebA-HQ model: 2.0)')
    p.add_argument('--prob-length', type=float, default=LOSS['prob_length'],
                   help='relay stage 2 (CelebA-HQ model: 0.89)')
    p.add_argument('--s-noise', type=float, default=RDM_S_NOISE,
                   help="relay stage 2 sampling (evaluation and sample.py's default): the share of each step's noise "
                        "drawn afresh (RDM 0.2; 1 = re-noise the clean estimate fully)")
    p.add_argument('--block-noise', type=float, default=LOSS['block_noise'],
                   help="relay stage 2: scale of RDM's block noise in training (0 = plain Gaussian noise)")
    # logging, evaluation, checkpoints
    p.add_argument('--log-every', type=int, default=10)
    p.add_argument('--eval-every', type=int, default=1000)
    p.add_argument('--eval-n', type=int, default=16, help='held-out images per evaluation')
    p.add_argument('--eval-steps', type=int, default=100, help='sampling steps for evaluation')
    p.add_argument('--eval-batch', type=int, default=100, help='held-out images sampled at a time in an evaluation')
    p.add_argument('--ckpt-every', type=int, default=1000)
    p.add_argument('--snapshot-every', type=int, default=0, help='also keep ckpt_<step>.pt every N steps')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--overwrite', action='store_true')
    return p


def check_args(a):
    for name in POSITIVE + NON_NEGATIVE:
        value = getattr(a, name)
        flag = '--' + name.replace('_', '-')
        if name in POSITIVE and not value > 0:  # `not v > 0` also refuses nan
            raise UsageError(f'{flag} must be positive, got {value}')
        if name in NON_NEGATIVE and not value >= 0:
            raise UsageError(f'{flag} must be non-negative, got {value}')
    if not 0 <= a.s_noise <= 1:
        raise UsageError(f'--s-noise must be in [0, 1], got {a.s_noise}')
    if a.project_smooth and not a.project:
        raise UsageError(f'--project-smooth {a.project_smooth} has no effect without --project')
    if a.norm_groups is not None and not a.norm_groups > 0:
        raise UsageError(f'--norm-groups must be positive, got {a.norm_groups}')
    if a.lr_horizon is not None and not a.lr_horizon > 0:
        raise UsageError(f'--lr-horizon must be positive, got {a.lr_horizon}')
    check_horizon(a)
    if a.eval_steps > a.timesteps:
        raise UsageError(f'--eval-steps {a.eval_steps} exceeds --timesteps {a.timesteps}')
    if a.resume and not os.path.exists(os.path.join(a.out, 'ckpt.pt')):
        raise UsageError(f'--resume: no checkpoint to resume in {a.out}')
    if holds_a_run(a.out) and not (a.resume or a.overwrite):
        raise UsageError(f'{a.out} already holds a run: pass --resume to continue it or --overwrite to start over')
    check_resolution(a.task, a.model)
    check_data_flags(a)


def check_horizon(a):
    """A cosine schedule ends at --lr-horizon: iterations past it would train at learning rate 0."""
    if a.lr_schedule == 'cosine' and a.lr_horizon is not None and a.max_iters > a.lr_horizon:
        raise UsageError(f'--max-iters {a.max_iters} runs past the cosine schedule\'s end (--lr-horizon '
                         f'{a.lr_horizon}), where the learning rate is 0: pass --lr-horizon to move it')


def check_same_formulation(path, saved, a):
    """--resume continues what the network learns and how (LEARNING_FLAGS): refuse a change in one line naming the
    flag. Flags a checkpoint predates read their defaults (the loss flags) or are skipped."""
    saved_values = {**LOSS, **saved}
    for key in LEARNING_FLAGS:
        if key not in saved_values or saved_values[key] == getattr(a, key):
            continue
        flag = '--' + key.replace('_', '-')
        if isinstance(saved_values[key], bool):
            was = f'with {flag}' if saved_values[key] else f'without {flag}'
            now = 'with it' if getattr(a, key) else 'without it'
            raise UsageError(f'--resume: {path} was trained {was}, not {now}; start a new run (another --out) to change it')
        raise UsageError(f'--resume: {path} was trained with {flag} {saved_values[key]}, not {getattr(a, key)}; '
                         'start a new run (another --out) to change it')


def resume_horizon(a, saved, step, say):
    """--lr-horizon on --resume: the checkpoint's (older checkpoints: their --max-iters) unless given; a change is
    said aloud with the learning-rate jump it makes."""
    saved_horizon = saved.get('lr_horizon') or saved['max_iters']
    if a.lr_horizon is None:
        a.lr_horizon = saved_horizon
    elif a.lr_horizon != saved_horizon and a.lr_schedule == 'cosine':
        old = copy.copy(a)
        old.lr_horizon = saved_horizon
        say(f'--lr-horizon {saved_horizon} -> {a.lr_horizon}: the cosine learning rate jumps from '
            f'{lr_at(old, step):.3g} to {lr_at(a, step):.3g}')
    check_horizon(a)


def holds_a_run(out):
    """A checkpoint, a snapshot or a log: a run."""
    if not os.path.isdir(out):
        return False
    return any(re.fullmatch(r'ckpt(_\d+)?\.pt|log\.jsonl', f) for f in os.listdir(out))


# ----------------------------------------------------------------------------- output folder, log, evaluation
def clean_out(a, step):
    """Rank 0, once data and checkpoint have loaded (bad input leaves the folder as it was): drop temp files of a
    killed save and log lines after `step` (and one torn by kill -9); a fresh run also drops old checkpoints, plots."""
    os.makedirs(a.out, exist_ok=True)
    stale = r'ckpt(_\d+)?\.pt\.tmp\d+'
    if not a.resume:
        stale += r'|ckpt(_\d+)?\.pt|(loss|samples_\d+)\.png'
    for f in os.listdir(a.out):
        if re.fullmatch(stale, f):
            os.remove(os.path.join(a.out, f))
    log = os.path.join(a.out, 'log.jsonl')
    old = []
    if os.path.exists(log):
        old = [json.loads(line) for line in open(log) if line.endswith('\n')]
    log_lines(log + '.tmp', [r for r in old if r['step'] <= step], mode='w')
    os.replace(log + '.tmp', log)


def log_lines(path, rows, mode='a'):
    with open(path, mode) as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)


def run_flags(a):
    """The run's flags as a plain dict (what the checkpoint keeps and the task library reads)."""
    return {k: v for k, v in vars(a).items() if k != 'task_info'}


def run_eval(ema, a, val_batch, step, device, dtype):
    """Sample the held-out images (val_batch: --eval-n of them, loaded at start-up) with the EMA model, --eval-batch
    at a time, --eval-steps steps (own generator: the training RNG never moves). Metrics: the mean over all images
    (each batch's means weighted by its size)."""
    cfg = run_flags(a)
    generator = torch.Generator().manual_seed(1234)
    n = len(next(iter(val_batch.values())))
    sums, count, grids = {}, 0, []
    for first in range(0, n, a.eval_batch):
        chunk = {k: v[first:first + a.eval_batch] for k, v in val_batch.items()}
        res, grid, ncol = sample_and_score(ema, cfg, chunk, a.eval_steps, generator=generator, device=device,
                                           dtype=dtype)
        grids.append(grid)
        size = res.pop('n', 0)
        count += size
        for k, v in res.items():
            sums[k] = sums.get(k, 0.0) + float(v) * size
    data.save_grid(torch.cat(grids), os.path.join(a.out, f'samples_{step:07d}.png'), nrow=ncol)
    return {k: v / count for k, v in sums.items()}


def eval_timeout(a):
    """DDP: seconds a rank may wait in a collective while rank 0 evaluates (torch's default, 10 min, is too short for
    the paper network's evaluation): generous per held-out image and sampling step, at least 30 min."""
    return max(1800.0, EVAL_TIMEOUT_PER_IMAGE_STEP * a.eval_n * a.eval_steps)


def cpu_cost_line(a, seconds, steps=2):
    """The one line a run of the paper network prints on a machine without a GPU, before anything else is built."""
    days = seconds * a.max_iters / 86400
    return (f'no GPU: one {a.task} iteration of --model {a.model} at batch {a.batch_size} takes {seconds:.1f} s on '
            f'this CPU (median of {steps} timed): --max-iters {a.max_iters:,} would take {days:,.1f} days here; '
            f'the CPU recipe: python train.py --config {CPU_RECIPE}')


# ----------------------------------------------------------------------------- training
def train(a):
    # -- set-up: device, precision, DDP, seeds (each rank its own noise)
    dist_info = setup_ddp(pick_device(a.device), timeout_s=eval_timeout(a))
    ddp, rank, world, device = dist_info.ddp, dist_info.rank, dist_info.world, dist_info.device
    allow_tf32(device)
    dtype, why = pick_dtype(a.dtype, device)
    fmt = memory_format(dtype, device)
    say = tqdm.write if rank == 0 else (lambda *args, **kw: None)  # tqdm.write keeps the progress bar intact
    ddp_note = f', DDP world size {world}' if ddp else ''
    say(f'device {device}, {describe(dtype)} ({why}){ddp_note}')
    seed_everything(a.seed, rank)
    ck_path = os.path.join(a.out, 'ckpt.pt')
    log_path = os.path.join(a.out, 'log.jsonl')

    # -- no GPU and the paper's network: what it costs here, and the CPU recipe (before any data is fetched)
    if device.type == 'cpu' and not torch.cuda.is_available() and a.model == 'paper' and not ddp:
        print(cpu_cost_line(a, time_iterations(run_flags(a), device, dtype, fmt)), flush=True)

    # -- data; the held-out images are loaded (and checked) now, not at the first evaluation
    train_set, val_set, note = datasets(a)
    val_batch = heldout(val_set, a.eval_n)
    say(f'{len(train_set)} training images; evaluation on {min(a.eval_n, len(val_set))} images ({note}), '
        f'{a.eval_steps} steps')

    # -- model, optimizer, resume; then DDP (rank 0's weights) and the EMA copy
    model = build_model(a.task_info, a.model, a.grad_checkpoint, a.norm_groups, a.upsample, a.init)
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    step = 0
    train_s = 0.0  # training seconds so far, evaluation excluded (for equal-time comparisons)
    ck = None
    if a.resume:
        ck = load_checkpoint(ck_path, task=a.task, model=a.model)
        check_same_formulation(ck_path, ck['args'], a)
        resume_horizon(a, ck['args'], ck['step'], say)
        load_weights(ck_path, [(model, ck['model']), (opt, ck['opt'])])
        step = ck['step']
        train_s = ck.get('train_s', 0.0)
        rng = rank_rng_state(ck, rank, world)
        if rng is None:
            say(f'{ck_path} holds no RNG state for {world} ranks: each rank starts a fresh stream (not bit-exact)')
        else:
            set_rng_state(rng, device)
        say(f'resumed {ck_path} at step {step}')
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model  # broadcasts rank 0's weights
    if a.compile:
        net = torch.compile(net)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if ck is not None:
        load_weights(ck_path, [(ema, ck['ema'])])
    if rank == 0:
        clean_out(a, step)
    method = f'DREAM p={a.dream_p}' if a.dream else 'standard loss'
    say(f'model {a.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; {method}')
    batches = iter(make_loader(train_set, a, dist_info, step))
    params = list(model.parameters())
    ema_params = list(ema.parameters())

    # -- the loop; SIGINT / SIGTERM only set a flag, acted on at the end of a step
    signals_seen = []
    old_handlers = {sig: signal.signal(sig, lambda signum, frame: signals_seen.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
    pending = []  # the micro-batch losses since the last log line (device tensors: no host sync per step)
    t0 = time.perf_counter()
    imgs = 0
    bar = tqdm(total=a.max_iters, initial=step, disable=rank != 0, dynamic_ncols=True, desc=a.task)
    try:
        while step < a.max_iters:
            # forward backward update, with optional gradient accumulation (DDP syncs the last micro-batch only)
            model.train()
            # determine and set the learning rate
            for group in opt.param_groups:
                group['lr'] = lr_at(a, step)
            for k in range(a.grad_accum):
                batch = to_device(next(batches), device, fmt, a.batch_size)
                sync = not ddp or k == a.grad_accum - 1
                with contextlib.nullcontext() if sync else net.no_sync():
                    with autocast(device, dtype):
                        loss = compute_loss(net, batch, a).float() / a.grad_accum
                    loss.backward()
                pending.append(loss.detach())
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            imgs += a.batch_size * a.grad_accum * world

            # EMA with warm-up (short runs still average)
            decay = min(a.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)

            # what this step has to do
            snapshot_due = a.snapshot_every and step % a.snapshot_every == 0
            save_due = step % a.ckpt_every == 0 or step == a.max_iters or snapshot_due
            eval_due = step % a.eval_every == 0 or step == a.max_iters
            ranks_signalled = False  # DDP: whether any rank saw a signal, known at a log line (one all-reduce)
            log_due = step % a.log_every == 0 or save_due or eval_due or (bool(signals_seen) and not ddp)

            # timing and logging: one host sync per log interval; a non-finite loss or a signal on any rank stops all
            if log_due:
                losses = torch.stack(pending).view(-1, a.grad_accum).sum(1).tolist()
                pending = []
                rows = [dict(step=step - len(losses) + 1 + i, loss=v) for i, v in enumerate(losses)]
                bad_step = next((r['step'] for r in rows if not math.isfinite(r['loss'])), 0)
                if ddp:
                    bad_step, ranks_signalled = agree(bad_step, bool(signals_seen), device)
                if bad_step:
                    raise UsageError(f'non-finite loss at step {bad_step}: stopped; the last good checkpoint {ck_path} '
                                     'is untouched')
                dt = time.perf_counter() - t0
                train_s += dt
                rows[-1].update(img_s=round(imgs / dt, 3), lr=lr_at(a, step - 1), train_s=round(train_s, 2))
                t0 = time.perf_counter()
                imgs = 0
                if rank == 0:
                    log_lines(log_path, rows)
                bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", img_s=f"{rows[-1]['img_s']:.2f}")
            bar.update(1)

            # checkpoint, before the evaluation: an evaluation that fails loses nothing (and after a signal)
            stopping = stop_requested(signals_seen, ddp, ranks_signalled)
            saved = save_due or stopping
            if saved:
                write_checkpoint(a, step, train_s, model, ema, opt, dist_info)

            # evaluation of the EMA model on held-out images (rank 0; never after a signal)
            if eval_due and not stopping:
                if rank == 0:
                    res = run_eval(ema, a, val_batch, step, device, dtype)
                    if res:
                        log_lines(log_path, [dict(step=step, eval=True, eval_steps=a.eval_steps, **res)])
                        bar.write(f'step {step}: ' + ', '.join(f'{k} {v:.4f}' for k, v in res.items()))
                    plot_loss(log_path, os.path.join(a.out, 'loss.png'))
                    t0 = time.perf_counter()  # evaluation time does not count against img/s
                if ddp:
                    dist.barrier()

            # stop on a signal (one that came during the evaluation too: checkpoint first)
            stopping = stop_requested(signals_seen, ddp, ranks_signalled)
            if stopping and not saved:
                write_checkpoint(a, step, train_s, model, ema, opt, dist_info)
            if stopping:
                name = signal.Signals(signals_seen[0]).name if signals_seen else 'a signal to another rank'
                say(f'{name}: checkpoint saved at step {step} in {ck_path}; continue with --resume')
                break
    finally:
        bar.close()
        stop_workers(batches)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    teardown_ddp(dist_info)
    return step


def lr_at(a, step):
    """Learning rate of iteration step + 1: linear warm-up over --warmup, then constant or cosine to 0 at --lr-horizon
    (a function of the step and the horizon the checkpoint keeps, so a resumed run follows the same schedule, also
    with a larger --max-iters)."""
    lr = a.lr * min(1.0, (step + 1) / a.warmup) if a.warmup else a.lr
    if a.lr_schedule == 'cosine':
        horizon = a.lr_horizon or a.max_iters
        lr *= 0.5 * (1 + math.cos(math.pi * min(step, horizon) / horizon))
    return lr


def write_checkpoint(a, step, train_s, model, ema, opt, dist_info):
    """Every rank checks the weights (DDP keeps them equal: a NaN never reaches a checkpoint) and hands in its RNG
    state; rank 0 writes ckpt.pt (and ckpt_<step>.pt every --snapshot-every steps)."""
    ck_path = os.path.join(a.out, 'ckpt.pt')
    if not torch.stack([p.isfinite().all() for p in model.parameters()]).all():
        raise UsageError(f'non-finite weights after step {step}: stopped; the last good checkpoint {ck_path} is untouched')
    rng_ranks = gather_rng_states(dist_info.device, dist_info.world)
    if dist_info.rank != 0:
        return
    state = dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step, train_s=train_s,
                 rng=rng_ranks[0], rng_ranks=rng_ranks, args=run_flags(a))
    save_checkpoint(ck_path, state)
    if a.snapshot_every and step % a.snapshot_every == 0:
        save_checkpoint(os.path.join(a.out, f'ckpt_{step:07d}.pt'), state)


def stop_workers(batches):
    """Shut the loader's workers down now, on every way out of the loop. They ignore SIGTERM (trainset.worker_init),
    so they must not be left for interpreter exit, whose multiprocessing clean-up would SIGTERM and wait for them."""
    shutdown = getattr(batches, '_shutdown_workers', None)  # DataLoader's multi-process iterator (none with 0 workers)
    if shutdown is not None:
        shutdown()


def stop_requested(signals_seen, ddp, ranks_signalled):
    """A single process stops at the end of the step that saw SIGINT / SIGTERM; DDP ranks stop together at the
    log line where they learnt that one of them saw it."""
    return ranks_signalled if ddp else bool(signals_seen)


def agree(bad_step, signalled, device):
    """One all-reduce: the first non-finite step of any rank, and whether any rank saw a signal."""
    flags = torch.tensor([bad_step or 2 ** 62, -int(signalled)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return int(flags[0]) % 2 ** 62, bool(flags[1])


def main(argv=None):
    try:
        a = get_args(argv)
        train(a)
    except (UsageError, data.DataError) as e:  # one line (a DataLoader worker wraps the error in its traceback)
        message = str(e).strip().splitlines()[-1]
        print('error: ' + re.sub(r'^[\w.]*Error: ', '', message), file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
