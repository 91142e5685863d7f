"""
Train an SR3 super-resolution model (optionally with DREAM) or a Relay Diffusion stage.

    python train.py --task sr16_128 --dream                      # the DREAM paper setting (downloads data)
    python train.py --task sr16_64 --data faces_16_64 --model tiny --max-iters 2000 --out out/tiny
    python train.py --task relay16 --data faces --holdout 100    # RDM stage 1: EDM at 16x16
    python train.py --task relay16_64 --data faces --holdout 100 # RDM stage 2: blur diffusion 16 -> 64
    torchrun --nproc_per_node 2 train.py ...                     # DistributedDataParallel (gloo/nccl)

Writes DIR/ckpt.pt (atomic, torch.load(weights_only=True)), DIR/ckpt_<step>.pt snapshots, DIR/log.jsonl (one JSON
object per step: step, loss; evaluation lines: step, psnr, ...), DIR/loss.png, DIR/samples_<step>.png (LR|bicubic|SR|HR).
"""
import argparse
import contextlib
import copy
import json
import math
import os
import random
import re
import signal
import sys
import time
import timeit

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import evaluate
import relay
from diffusion import GaussianDiffusion, beta_schedule, unwrap
from unet import PRESETS, build_unet


class TrainError(Exception):
    """A problem with flags, data or checkpoints: reported as one line, no traceback."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise TrainError(message)


# ----------------------------------------------------------------------------- tasks, flags, device
def parse_task(task):
    """sr16_128 -> SR 16->128; relay64 -> RDM stage 1 at 64; relay64_256 -> RDM stage 2 from 64 to 256."""
    m = re.fullmatch(r'(sr|relay)(\d+)(?:_(\d+))?', task or '')
    if not m or (m[1] == 'sr' and not m[3]):
        raise TrainError(f"unknown task '{task}' (use srL_H like sr16_128, relayL like relay64, relayL_H like relay64_256)")
    lo, hi = int(m[2]), int(m[3]) if m[3] else None
    if lo <= 0 or (hi is not None and hi <= lo):
        raise TrainError(f"task '{task}': resolutions must satisfy 0 < L < H")
    if m[1] == 'sr':
        return dict(kind='sr', lr=lo, hr=hi, res=hi)
    if hi is None:
        return dict(kind='relay1', lr=lo, hr=lo, res=lo)
    if hi % lo:
        raise TrainError(f"task '{task}': H={hi} must be a multiple of L={lo} (the DCT block is H/L)")
    return dict(kind='relay2', lr=lo, hr=hi, res=hi, block=hi // lo)


def get_args(argv=None):
    p = Parser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--task', default='sr16_128')
    p.add_argument('--dream', action='store_true', help='DREAM rectified loss')
    p.add_argument('--dream-p', type=float, default=1.0, help='lambda = sqrt(1 - alpha_bar)^p (default 1)')
    p.add_argument('--data', default=None, help='image folder / zip (SR: hr_H, lr_L[, sr_L_H] layout)')
    p.add_argument('--val-data', default=None, help='held-out images (default: DATA/val, or --holdout)')
    p.add_argument('--holdout', type=int, default=0, help='hold out the first N sorted images for evaluation')
    p.add_argument('--out', default='out')
    p.add_argument('--model', default='small', choices=list(PRESETS))
    p.add_argument('--max-iters', type=int, default=1_000_000)
    p.add_argument('--batch-size', type=int, default=4, help='per process (paper: 4)')
    p.add_argument('--grad-accum', type=int, default=1, help='global batch = batch x K x world size')
    p.add_argument('--grad-checkpoint', action='store_true', help='activation checkpointing in the UNet')
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--ema-decay', type=float, default=0.9999)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'])
    p.add_argument('--compile', action='store_true', help='torch.compile the UNet (CUDA)')
    p.add_argument('--workers', type=int, default=-1, help='data loader workers (-1: 0 on CPU, 4 on CUDA)')
    p.add_argument('--schedule', default='linear')
    p.add_argument('--timesteps', type=int, default=2000)
    p.add_argument('--beta-start', type=float, default=1e-6)
    p.add_argument('--beta-end', type=float, default=1e-2)
    p.add_argument('--loss', default='l1', choices=['l1', 'l2'], help='SR loss (SR3/DREAM: l1)')
    p.add_argument('--blur-sigma-max', type=float, default=3.0, help='relay stage 2 (CelebA-HQ model: 2.0)')
    p.add_argument('--prob-length', type=float, default=0.93, help='relay stage 2 (CelebA-HQ model: 0.89)')
    p.add_argument('--log-every', type=int, default=10)
    p.add_argument('--eval-every', type=int, default=1000)
    p.add_argument('--eval-n', type=int, default=16, help='held-out images per evaluation')
    p.add_argument('--eval-steps', type=int, default=100, help='sampling steps for evaluation')
    p.add_argument('--ckpt-every', type=int, default=1000)
    p.add_argument('--snapshot-every', type=int, default=0, help='also keep ckpt_<step>.pt every N steps')
    for flag in ('--resume', '--overwrite'):
        p.add_argument(flag, action='store_true')
    a = p.parse_args(argv)
    a.task_info = parse_task(a.task)
    for k in ('max_iters batch_size grad_accum timesteps log_every eval_n eval_steps ckpt_every eval_every lr '
              'snapshot_every holdout').split():
        v, zero_ok = getattr(a, k), k in ('snapshot_every', 'holdout')  # `not v > 0` also refuses nan
        if not (v >= 0 if zero_ok else v > 0):
            raise TrainError(f'--{k.replace("_", "-")} must be {"non-negative" if zero_ok else "positive"}, got {v}')
    if a.eval_steps > a.timesteps:
        raise TrainError(f'--eval-steps {a.eval_steps} exceeds --timesteps {a.timesteps}')
    if a.resume and not os.path.exists(os.path.join(a.out, 'ckpt.pt')):
        raise TrainError(f'--resume: no checkpoint to resume in {a.out}')
    found = [f for f in (os.listdir(a.out) if os.path.isdir(a.out) else []) if re.fullmatch(r'ckpt(_\d+)?\.pt|log\.jsonl', f)]
    if found and not (a.resume or a.overwrite):  # a checkpoint, a snapshot or a log: a run
        raise TrainError(f'{a.out} already holds a run: pass --resume to continue it or --overwrite to start over')
    min_size = 2 ** (len(PRESETS[a.model]['channel_mults']) - 1)
    if a.task_info['res'] % min_size:
        raise TrainError(f"task '{a.task}': resolution {a.task_info['res']} must be divisible by {min_size} for --model {a.model}")
    return a


def pick_device(name):
    if name == 'cuda' and not torch.cuda.is_available():
        raise TrainError('--device cuda: no CUDA device is available')
    return torch.device('cuda' if name == 'cuda' or (name == 'auto' and torch.cuda.is_available()) else 'cpu')


def pick_dtype(name, device):
    """bf16 autocast where it is really faster; fp32 elsewhere. Returns (dtype, reason)."""
    if name != 'auto':
        return (torch.bfloat16 if name == 'bf16' else torch.float32), 'requested'
    if device.type == 'cuda':
        return torch.bfloat16, 'CUDA'
    cap = torch.backends.cpu.get_cpu_capability()
    if 'AVX512' not in cap or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.float32, f'CPU capability {cap}: no native bf16, autocast would hit slow kernels'
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)  # one-off timing
    x = torch.randn(4, 64, 32, 32).to(memory_format=torch.channels_last)
    def timed(bf16):
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            conv(x)  # warm-up
            return timeit.timeit(lambda: conv(x), number=5)
    t32, t16 = timed(False), timed(True)
    return (torch.bfloat16, f'{cap}, bf16 conv {t32 / t16:.1f}x faster') if t16 < t32 else \
        (torch.float32, f'{cap}, bf16 conv not faster ({t32 / t16:.2f}x)')


# ----------------------------------------------------------------------------- model and loss
def build_model(task, model='small', grad_checkpoint=False, **_):
    t = parse_task(task) if isinstance(task, str) else task
    in_ch = 6 if t['kind'] == 'sr' else 3  # SR: x_t + bicubic-upsampled LR; relay stages: x_t alone
    return build_unet(model, in_ch, 3, t['res'], grad_checkpoint=grad_checkpoint)


def make_diffusion(model, cfg):
    return GaussianDiffusion(model, beta_schedule(cfg['schedule'], cfg['timesteps'], cfg['beta_start'], cfg['beta_end']))


def compute_loss(net, batch, a):
    """One training loss for the task; `net` may be DDP-wrapped (the DREAM no-grad pass unwraps it)."""
    t, p = a.task_info, (a.dream_p if a.dream else None)
    if t['kind'] == 'sr':
        return make_diffusion(net, vars(a)).loss(batch['hr'], batch['sr'], dream_p=p, loss_type=a.loss)
    D, D0 = relay.EDMPrecond(net), relay.EDMPrecond(unwrap(net))
    if t['kind'] == 'relay1':
        return relay.edm_loss(D, batch['image'], dream_p=p, D_nograd=D0)
    return relay.blur_loss(D, batch['image'], block=t['block'], blur_sigma_max=a.blur_sigma_max,
                           prob_length=a.prob_length, dream_p=p, D_nograd=D0)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, state):
    """Atomic: write a temp file, flush + fsync, rename over the old file, fsync the folder. A failure
    (disk full, ...) leaves the previous file as it was, removes the temp file and raises TrainError."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        raise TrainError(f"could not write {path} ({' '.join(str(e).split())}); the previous file is untouched")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    os.fsync(fd), os.close(fd)  # the rename itself survives a power cut


def load_checkpoint(path, task=None, model=None):
    """Load a checkpoint (weights_only) and check it fits the given task / model size; one-line errors."""
    if not os.path.isfile(path):
        raise TrainError(f'checkpoint {path}: no such file')
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
        if not (isinstance(ck, dict) and isinstance(ck.get('args'), dict) and {'model', 'ema', 'opt', 'rng', 'step'} <= ck.keys()):
            raise ValueError
    except Exception as e:
        raise TrainError(f'checkpoint {path}: not a dream-relay checkpoint or corrupted ({type(e).__name__})')
    for key, want in (('task', task), ('model', model)):
        if want is not None and ck['args'][key] != want:
            raise TrainError(f"checkpoint {path} is for --{key} {ck['args'][key]}, not {want}")
    return ck


def load_model(path, device='cpu', ema=True, task=None):
    """The (EMA) network of a checkpoint, in eval mode, with its argparse values. For sample.py / evaluate.py."""
    ck = load_checkpoint(path, task=task)
    net = build_model(ck['args']['task'], ck['args']['model'])
    load_weights(path, [(net, ck['ema' if ema else 'model'])])
    return net.to(device).eval(), ck['args']


def load_weights(path, pairs):
    """module.load_state_dict(state) for (module, state) pairs; a mismatch (e.g. an older preset) is one line."""
    try:
        for module, state in pairs:
            module.load_state_dict(state)
    except Exception as e:
        raise TrainError(f"checkpoint {path}: does not fit the network ({' '.join(str(e).split())[:160]})")


def rng_state():
    npst = np.random.get_state()  # (name, uint32 array, ...): the array as an int64 tensor for weights_only
    return dict(python=random.getstate(), numpy=[npst[0], torch.from_numpy(npst[1].astype(np.int64)), *npst[2:]],
                torch=torch.get_rng_state(), **({'cuda': torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}))


def set_rng_state(st):
    random.setstate(st['python'])
    n = st['numpy']
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(st['torch'])
    if 'cuda' in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st['cuda'])


# ----------------------------------------------------------------------------- data
def datasets(a):
    """(train set, held-out set, note). Held-out: --val-data, DATA/val, or the first --holdout images."""
    t, root = a.task_info, a.data
    if root is None:
        if a.task != 'sr16_128':
            raise TrainError(f'--data is required for --task {a.task}')
        print('no --data given: using the DREAM CelebA-HQ 16->128 data set (downloading once to the cache)')
        root = data.download('celebahq_16_128')  # a failure is a one-line data.DataError
    train_root, val_root = data.split_root(root)
    val_root = a.val_data or val_root
    make = (lambda r: data.SRPairs(r, t['lr'], t['hr'])) if t['kind'] == 'sr' else (lambda r: data.ImageFolder(r, t['res']))
    train = make(train_root)
    if val_root is not None:
        return train, make(val_root), f'held-out set {val_root}'
    if a.holdout:
        if a.holdout >= len(train):
            raise TrainError(f'--holdout {a.holdout} leaves no training images (data set has {len(train)})')
        return (torch.utils.data.Subset(train, range(a.holdout, len(train))), torch.utils.data.Subset(train, range(a.holdout)),
                f'held out the first {a.holdout} images')
    return train, train, 'WARNING: no held-out split, evaluating on training images'


class StepBatches(torch.utils.data.Sampler):
    """Batch indices as a pure function of the micro-step: a fresh permutation per epoch (seed, epoch), each
    rank taking its slice of the global batch. Resuming at step s reproduces the exact data order."""

    def __init__(self, n, batch, seed, rank, world, start):
        self.n, self.batch, self.seed, self.rank, self.world, self.start = n, batch, seed, rank, world, start
        self.per_epoch = n // (batch * world)
        if self.per_epoch == 0:
            raise TrainError(f'data set has {n} images, fewer than the global batch {batch * world}')

    def __iter__(self):
        step, perm, epoch = self.start, None, -1
        while True:
            e, i = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, perm = e, torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + e))
            g = (i * self.world + self.rank) * self.batch
            yield perm[g:g + self.batch].tolist()
            step += 1


# ----------------------------------------------------------------------------- evaluation
def run_eval(ema, a, val, step, device, dtype):
    """Sample --eval-n held-out images with the EMA model (own generator: the training RNG never moves)."""
    cfg = {k: v for k, v in vars(a).items() if k != 'task_info'}
    steps = a.eval_steps if a.task_info['kind'] != 'relay1' else min(a.eval_steps, 40)
    res, grid, ncol = evaluate.sample_and_score(ema, cfg, evaluate.heldout(val, a.eval_n), steps,
                                                generator=torch.Generator().manual_seed(1234), device=device, dtype=dtype)
    data.save_grid(grid, os.path.join(a.out, f'samples_{step:07d}.png'), nrow=ncol)
    return {k: float(v) for k, v in res.items() if k != 'n'}


# ----------------------------------------------------------------------------- training
def clean_out(a, step):
    """Rank 0, once data and checkpoint have loaded (bad input leaves the folder as it was): drop temp files of a
    killed save and log lines after `step` (and one torn by kill -9); a fresh run also drops old checkpoints, plots."""
    os.makedirs(a.out, exist_ok=True)
    for f in os.listdir(a.out):
        if re.fullmatch(r'ckpt(_\d+)?\.pt\.tmp\d+' + ('' if a.resume else r'|ckpt(_\d+)?\.pt|(loss|samples_\d+)\.png'), f):
            os.remove(os.path.join(a.out, f))
    log = os.path.join(a.out, 'log.jsonl')
    old = [json.loads(l) for l in open(log) if l.endswith('\n')] if os.path.exists(log) else []
    log_lines(log + '.tmp', [r for r in old if r['step'] <= step], mode='w')
    os.replace(log + '.tmp', log)


def log_lines(path, rows, mode='a'):
    with open(path, mode) as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)


def worker_init(_):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main process handles it


def train(a):
    ddp, device = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ, pick_device(a.device)
    rank, world = (int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])) if ddp else (0, 1)  # as torchrun sets them
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))  # this process's GPU (0 without torchrun)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if ddp:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    dtype, why = pick_dtype(a.dtype, device)
    say = tqdm.write if rank == 0 else (lambda *x, **k: None)  # tqdm.write: keeps the progress bar intact
    say(f'device {device}, {"bf16 autocast + channels_last" if dtype == torch.bfloat16 else "fp32"} ({why})'
        + (f', DDP world size {world}' if ddp else ''))
    ck_path = os.path.join(a.out, 'ckpt.pt')
    random.seed(a.seed), np.random.seed(a.seed), torch.manual_seed(a.seed)
    train_set, val_set, note = datasets(a)
    say(f'{len(train_set)} training images; evaluation on {min(a.eval_n, len(val_set))} images ({note}), {a.eval_steps} steps')
    fmt = torch.channels_last if dtype == torch.bfloat16 or device.type == 'cuda' else torch.contiguous_format
    model = build_model(a.task_info, a.model, a.grad_checkpoint).to(device, memory_format=fmt)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    step, train_s = 0, 0.0  # train_s: training seconds so far, evaluation excluded (for equal-time comparisons)
    if a.resume:
        ck = load_checkpoint(ck_path, task=a.task, model=a.model)
        load_weights(ck_path, [(model, ck['model']), (ema, ck['ema']), (opt, ck['opt'])])
        step, train_s = ck['step'], ck.get('train_s', 0.0)
        set_rng_state(ck['rng'])
        say(f'resumed {ck_path} at step {step}')
    if rank == 0:
        clean_out(a, step)
    say(f'model {a.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; '
        f'{"DREAM p=" + str(a.dream_p) if a.dream else "standard loss"}')
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    net = torch.compile(net) if a.compile else net
    workers = a.workers if a.workers >= 0 else (4 if device.type == 'cuda' else 0)
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=StepBatches(len(train_set), a.batch_size, a.seed, rank, world, step * a.grad_accum),
        num_workers=workers, pin_memory=device.type == 'cuda', generator=torch.Generator().manual_seed(a.seed),
        persistent_workers=workers > 0, worker_init_fn=worker_init)
    batches, log_path = iter(loader), os.path.join(a.out, 'log.jsonl')

    def checkpoint(s):  # every rank checks the weights (DDP keeps them equal): a NaN never reaches a checkpoint
        if not torch.stack([p.isfinite().all() for p in params]).all():
            raise TrainError(f'non-finite weights after step {s}: stopped; the last good checkpoint {ck_path} is untouched')
        if rank == 0:
            st = dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=s, rng=rng_state(),
                      train_s=train_s, args={k: v for k, v in vars(a).items() if k != 'task_info'})
            for path in [ck_path] + ([f'{a.out}/ckpt_{s:07d}.pt'] if a.snapshot_every and s % a.snapshot_every == 0 else []):
                save_checkpoint(path, st)

    stop, signals = [], (signal.SIGINT, signal.SIGTERM)
    old_handlers = [signal.signal(sig, lambda signum, frame: stop.append(signum)) for sig in signals]
    ema_params, params = list(ema.parameters()), list(model.parameters())
    pending, t0, imgs = [], time.perf_counter(), 0
    bar = tqdm(total=a.max_iters, initial=step, disable=rank != 0, dynamic_ncols=True, desc=a.task)
    try:
        while step < a.max_iters:
            model.train()
            for k in range(a.grad_accum):
                b = next(batches)
                b = {key: v.to(device, non_blocking=True).contiguous(memory_format=fmt) for key, v in b.items() if torch.is_tensor(v)}
                flip = torch.rand(a.batch_size) < 0.5  # horizontal flips (SR3), from the checkpointed torch RNG
                b = {key: torch.where(flip.to(device)[:, None, None, None], v.flip(-1), v) for key, v in b.items()}
                with (net.no_sync() if ddp and k < a.grad_accum - 1 else contextlib.nullcontext()):  # sync the last one
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                        loss = compute_loss(net, b, a).float() / a.grad_accum
                    loss.backward()
                pending.append(loss.detach())
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            decay = min(a.ema_decay, (1 + step) / (10 + step))  # EMA with warm-up (short runs still average)
            torch._foreach_lerp_(ema_params, params, 1 - decay)
            imgs += a.batch_size * a.grad_accum * world
            due_save = step % a.ckpt_every == 0 or step == a.max_iters or (a.snapshot_every and step % a.snapshot_every == 0)
            due_eval = step % a.eval_every == 0 or step == a.max_iters
            halt = bool(stop) and not ddp  # a signal: save and stop (DDP: once the ranks agree, at the next flush)
            if step % a.log_every == 0 or due_save or due_eval or halt:
                # one host sync per log interval: sum the micro-batch losses of each step, check they are finite
                vals = torch.stack(pending).view(-1, a.grad_accum).tolist()  # the steps since the last flush
                rows, pending = [dict(step=step - len(vals) + 1 + i, loss=sum(v)) for i, v in enumerate(vals)], []
                bad = next((r['step'] for r in rows if not math.isfinite(r['loss'])), 0)
                if ddp:  # one all-reduce per flush: the first bad step and a signal seen by any rank stop them all
                    f = torch.tensor([bad or 2 ** 62, -bool(stop)], device=device)
                    dist.all_reduce(f, op=dist.ReduceOp.MIN)
                    bad, halt = int(f[0]) % 2 ** 62, bool(f[1])
                if bad:
                    raise TrainError(f'non-finite loss at step {bad}: stopped; the last good checkpoint {ck_path} is untouched')
                dt = time.perf_counter() - t0
                train_s += dt
                rows[-1].update(img_s=round(imgs / dt, 3), lr=a.lr, train_s=round(train_s, 2))
                t0, imgs = time.perf_counter(), 0
                if rank == 0:
                    log_lines(log_path, rows)
                bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", img_s=f"{rows[-1]['img_s']:.2f}")
            bar.update(1)
            if due_save or halt:
                checkpoint(step)
            if due_eval and not halt:
                if rank == 0:
                    res = run_eval(ema, a, val_set, step, device, dtype)
                    if res:
                        log_lines(log_path, [dict(step=step, eval=True, eval_steps=a.eval_steps, **res)])
                        bar.write(f'step {step}: ' + ', '.join(f'{k} {v:.4f}' for k, v in res.items()))
                    evaluate.plot_loss(log_path, os.path.join(a.out, 'loss.png'))
                    t0 = time.perf_counter()  # evaluation time does not count against img/s
                if ddp:
                    dist.barrier()
                elif stop and not due_save:  # the signal came during evaluation (this step is flushed): save now
                    checkpoint(step)
                halt = bool(stop) and not ddp
            if halt:
                say(f"{signal.Signals(stop[0]).name if stop else 'a signal to another rank'}: checkpoint saved at "
                    f"step {step} in {ck_path}; continue with --resume")
                break
    finally:
        bar.close()
        for sig, h in zip(signals, old_handlers):
            signal.signal(sig, h)
    if ddp:
        dist.destroy_process_group()
    return step


def main(argv=None):
    try:
        a = get_args(argv)
        train(a)
    except (TrainError, data.DataError) as e:  # one line (a DataLoader worker wraps the error in its traceback)
        print('error: ' + re.sub(r'^[\w.]*Error: ', '', str(e).strip().splitlines()[-1]), file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
