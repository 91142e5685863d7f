"""
Speed and memory benchmark: the production training step (standard and DREAM), the sampler, this machine's
matmul peak, MFU, and peak memory.

    python bench.py                                   # paper model, SR 16->128 (6-channel input), batch 4
    python bench.py --model tiny --json               # ... the last line is one JSON object
    python bench.py --device cuda --compile --mem-table
    python bench.py --model tiny --res 256 --attention    # the attention / memory-layout ratios only (below)

What is timed: the training step as train.py runs it: tasks.build_model, the precision of runtime.pick_dtype
(bf16 autocast or fp32), channels_last where train.py uses it (bf16 or CUDA), tasks.compute_loss
(GaussianDiffusion.loss, standard or DREAM), backward, Adam step, zero_grad, EMA lerp; random images, no data
loading; warm-up steps untimed; standard and DREAM steps interleaved. img/s = batch / mean step time.
FLOPs: torch.utils.flop_counter.FlopCounterMode counts the matmul, convolution and attention FLOPs (2 per
multiply-add; elementwise ops not counted) of one training loss forward + backward at batch 1, run on the
'meta' device (shapes only, nothing computed). The DREAM loss is counted the same way: it adds one no-grad
forward, so F_dream ~ 4/3 F_std; F_dream - F_std is the forward alone (one sampling step per image).
Peak: the measured rate of n x n matmuls after warm-up in the dtype the run chose (n up to 2048 on CPU, smaller
where it is slow, e.g. bf16 without AVX-512; 8192 on CUDA, TF32 allowed as train.py does).
MFU = F_per_img * img/s / peak (a convolution can beat the matmul rate, so MFU > 1 is possible). The targets
(MFU >= 0.6 for the paper model, DREAM step <= 1.35x standard, --dtype auto = the faster dtype) print PASS / MISS.
Memory: CUDA torch.cuda.max_memory_allocated; CPU the peak RSS of the whole
process (VmHWM, i.e. ru_maxrss without what a child inherits from its parent at fork; Python and the torch runtime,
~0.3-0.5 GB, included), measured in a fresh subprocess per config (2 steps: Adam state exists in step 2).
--attention: two ratios behind choices in unet.py and relay.py, interleaved rounds, nothing else measured: SDPA on
(B, 1, HW, C) views of a transposed tensor against the same values made contiguous (why unet.SelfAttention copies
them), at the pixel count of the network's middle (H/4 squared for `tiny`), and one forward of the network in the
run's dtype with an NCHW input against a channels_last one (why the relay samplers hand the denoiser channels_last).
"""
import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from runtime import UsageError, allow_tf32, autocast, memory_format, pick_device, pick_dtype
from tasks import build_model, check_resolution, compute_loss, loss_config, make_diffusion, parse_task
from unet import PRESETS, build_unet

TARGET_MFU, TARGET_DREAM = 0.6, 1.35
F32, BF16 = torch.float32, torch.bfloat16
DTYPE_NAME = {F32: 'fp32', BF16: 'bf16'}
TRAIN_LR = 1e-4  # train.py's default --lr (Adam)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='paper', choices=list(PRESETS))
    p.add_argument('--batch-size', type=int, default=4, help='default batch (the paper: 4)')
    p.add_argument('--res', type=int, default=None, help='image size (default 128, the 16->128 task; tiny: 64)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'])
    p.add_argument('--compile', action='store_true', help='torch.compile the training step (CUDA)')
    p.add_argument('--iters', type=int, default=None, 
                   help='timed rounds per measurement, medians reported (default: 20 CUDA, 5 CPU)')
    p.add_argument('--budget', type=float, default=60.0, help='seconds: optional measurements predicted to take '
                   'longer are skipped (bigger batches, the other dtype, sampling at batch 16, memory probes)')
    p.add_argument('--sample-steps', type=int, default=100, help='sampling steps of a whole image (sample.py: 100)')
    p.add_argument('--mem-table', action='store_true', help='peak memory of every preset at batch 1 and 4')
    p.add_argument('--no-probe', action='store_true', help='no memory subprocesses (grad-checkpoint on/off, table)')
    p.add_argument('--json', action='store_true', help='end with one JSON line')
    p.add_argument('--attention', action='store_true', help='only the attention-layout and input-layout ratios')
    p.add_argument('--probe-mem', action='store_true', help=argparse.SUPPRESS)  # child mode: 2 steps, print peak
    p.add_argument('--grad-checkpoint', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.res = a.res or (64 if a.model == 'tiny' else 128)
    a.device = pick_device(a.device)
    a.iters = a.iters or (20 if a.device.type == 'cuda' else 5)
    task_config(a.model, a.res, a.batch_size)  # bad --res / --batch-size: one line, before any timing
    return a


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)  # CUDA runs asynchronously: wait before reading the clock


def task_config(model, res, batch, dream=False, grad_checkpoint=False):
    """train.py's settings for an SR task at `res` (6-channel input), so compute_loss sees production flags."""
    task = f'sr{max(res // 8, 1)}_{res}'
    parse_task(task)
    check_resolution(task, model)
    if batch <= 0:
        raise UsageError(f'--batch-size must be positive, got {batch}')
    cfg = loss_config(task, dream=dream)
    cfg.update(model=model, batch_size=batch, grad_checkpoint=grad_checkpoint, lr=TRAIN_LR)
    return cfg


def images(batch, res, device, fmt, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(batch, 3, res, res, generator=g) * 2 - 1).to(device).contiguous(memory_format=fmt)
            for k in ('hr', 'sr')}


class Trainer:
    """A fresh model + Adam + EMA; `step(cfg, batch)` is one train.py training step (standard or DREAM per `cfg`)."""

    def __init__(self, cfg, device, dtype, fmt, compile=False, tf32=True):
        torch.manual_seed(0)
        self.model = build_model(cfg['task'], cfg['model'], cfg['grad_checkpoint']).to(device).to(memory_format=fmt)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg['lr'])  # as train.py
        self.net = torch.compile(self.model) if compile else self.model
        self.params = list(self.model.parameters())
        self.ema_params = list(self.ema.parameters())
        self.device, self.dtype, self.fmt = device, dtype, fmt
        self.tf32 = tf32 and device.type == 'cuda'

    def flags(self):
        torch.backends.cuda.matmul.allow_tf32 = self.tf32  # train.py: on for CUDA
        torch.backends.cudnn.allow_tf32 = self.tf32

    def step(self, cfg, batch):
        self.flags()
        self.model.train()
        with autocast(self.device, self.dtype):
            loss = compute_loss(self.net, batch, cfg).float()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(self.ema_params, self.params, 1e-4)

    def sample_ms(self, cfg, batch, steps):
        """ms per step of GaussianDiffusion.sample (the DDPM sampler sample.py / evaluate run)."""
        diffusion = make_diffusion(self.model, cfg)
        cond = images(batch, parse_task(cfg['task'])['res'], self.device, self.fmt)['sr']
        self.flags()
        with autocast(self.device, self.dtype):
            diffusion.sample(cond, 1)  # warm-up
            sync(self.device)
            t = time.perf_counter()
            diffusion.sample(cond, steps)
            sync(self.device)
        return 1e3 * (time.perf_counter() - t) / steps


def rounds(steps, iters, warmup, device):
    """Seconds of every call: `warmup` untimed rounds, then `iters` rounds in which the functions take turns, so
    load that comes and goes on the machine hits the compared calls alike. -> one list of `iters` times per function."""
    for _ in range(warmup):
        for f in steps:
            f()
    times = [[] for _ in steps]
    for _ in range(iters):
        for i, f in enumerate(steps):
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            times[i].append(time.perf_counter() - t)
    return times


def timed(steps, iters, warmup, device):
    """Median seconds per call of each function in `steps` (rounds())."""
    return [statistics.median(t) for t in rounds(steps, iters, warmup, device)]


def paired_ratio(num, den):
    """A ratio of two interleaved measurements: the median of the per-round ratios (each round's two calls ran
    back to back, under the same load) and their min / max (the spread the JSON reports)."""
    r = [a / b for a, b in zip(num, den)]
    return statistics.median(r), min(r), max(r)


def count_flops(cfg):
    """FLOPs per image of one training loss forward + backward (FlopCounterMode on the meta device, batch 1)."""
    res = parse_task(cfg['task'])['res']
    with torch.device('meta'):
        net = build_model(cfg['task'], cfg['model'])
        x = torch.zeros(1, 3, res, res)
    with FlopCounterMode(display=False) as counter:
        compute_loss(net, {'hr': x, 'sr': x}, cfg).backward()
    return counter.get_total_flops()


def matmul_peak(dtype, device, max_n, cap_s=5.0):
    """GFLOP/s of n x n matmuls after warm-up; n doubles from 256 to max_n while one matmul stays cheap."""
    n = 256
    while True:
        x = torch.randn(n, n, device=device, dtype=dtype)
        y = torch.randn(n, n, device=device, dtype=dtype)
        x @ y
        sync(device)
        reps, t = 0, time.perf_counter()
        while reps < 3 or (time.perf_counter() - t < 0.3 and reps < 200):
            x @ y
            sync(device)
            reps += 1
        dt = (time.perf_counter() - t) / reps
        if n >= max_n or dt * 8 * 4 > cap_s:  # the next size would cost 8x per matmul
            return 2 * n ** 3 / dt / 1e9, n
        n *= 2


def peak_mem_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:  # Linux: the peak RSS of this program alone (ru_maxrss would include what a child inherits at fork)
        with open('/proc/self/status') as f:
            line = next(line for line in f if line.startswith('VmHWM'))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        scale = 2 ** 20 if sys.platform == 'darwin' else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def probe_main(a, dtype):
    """Child mode: two production steps of one config (Adam state exists from step 2), then print the peak."""
    cfg = task_config(a.model, a.res, a.batch_size, grad_checkpoint=a.grad_checkpoint)
    base = peak_mem_mb(a.device)
    trainer = Trainer(cfg, a.device, dtype, memory_format(dtype, a.device), a.compile)
    batch = images(a.batch_size, a.res, a.device, trainer.fmt)
    timed([lambda: trainer.step(cfg, batch)], 1, 1, a.device)
    print('PROBE ' + json.dumps(dict(peak_mb=round(peak_mem_mb(a.device), 1), base_mb=round(base, 1))))


def probe(a, model, batch, grad_checkpoint=False):
    """Peak memory of one config, measured in a fresh process: {'peak_mb', 'base_mb'} or {'error'}."""
    cmd = [sys.executable, os.path.abspath(__file__), '--probe-mem', '--model', model, '--batch-size', str(batch),
           '--res', str(a.res), '--device', a.device.type, '--dtype', a.dtype]
    if grad_checkpoint:
        cmd.append('--grad-checkpoint')
    if a.compile:
        cmd.append('--compile')
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(600, 10 * a.budget))
    lines = [line for line in r.stdout.splitlines() if line.startswith('PROBE ')]
    if r.returncode or not lines:
        err = (r.stderr.strip().splitlines() or [f'exit status {r.returncode} (killed: out of memory?)'])[-1]
        return {'error': 'out of memory' if 'out of memory' in err.lower() else err[-200:]}
    return json.loads(lines[-1][len('PROBE '):])


def mem_text(r):
    return f'{r["peak_mb"]:.0f} MB' if 'peak_mb' in r else r['error']


# ----------------------------------------------------------------------------- the measurements
# Each takes `b` (the run: flags, device, chosen dtype and memory format, the production trainer and its step time)
# and the result dict R, prints its lines and fills its keys.

def affordable(b, seconds, what):
    """Optional measurements run only when predicted to take at most --budget seconds."""
    if seconds > b.a.budget:
        print(f'{what}: skipped (predicted {seconds:.1f} s > --budget {b.a.budget:g} s)')
    return seconds <= b.a.budget


def measure_setup(a):
    """Device, dtype, memory format: the production path; warns when other load shares the CPU."""
    dev = a.device
    allow_tf32(dev)  # as train.py (the matmul peak too)
    dtype, why = pick_dtype(a.dtype, dev)
    fmt = memory_format(dtype, dev)
    cpu = torch.backends.cpu.get_cpu_capability()
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU {cpu}, {torch.get_num_threads()} thread(s)'
    fmt_name = 'channels_last' if fmt == torch.channels_last else 'NCHW'
    path = f"{DTYPE_NAME[dtype]}{' autocast' if dtype == BF16 else ''}, {fmt_name}"
    if a.compile:
        path += ', torch.compile'
    print(f'device {dev} ({name}); model {a.model} at {a.res}x{a.res}, 6-channel SR input, batch {a.batch_size}; '
          f'production path: {path} ({why}); {a.iters} timed steps per measurement')
    if dev.type == 'cpu' and os.getloadavg()[0] > 1.5 * os.cpu_count():
        print(f'WARNING: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other processes share the '
              'CPU, timings are pessimistic')
    R = dict(device=str(dev), device_name=name, cpu_capability=cpu, model=a.model, res=a.res, batch=a.batch_size,
             dtype=DTYPE_NAME[dtype], dtype_reason=why, memory_format='channels_last' if fmt == torch.channels_last
             else 'nchw', compile=a.compile, iters=a.iters)
    b = SimpleNamespace(a=a, dev=dev, dtype=dtype, fmt=fmt, warm=3 if dev.type == 'cuda' else 1, done={},
                        std=task_config(a.model, a.res, a.batch_size),
                        dream=task_config(a.model, a.res, a.batch_size, dream=True))
    return b, R


def measure_matmul_peaks(b, R):
    """The matmul rate of both dtypes; the chosen one is the MFU denominator."""
    max_n = 8192 if b.dev.type == 'cuda' else 2048
    for key, dt in (('fp32', F32), ('bf16', BF16)):
        gflops, n = matmul_peak(dt, b.dev, max_n, min(5.0, b.a.budget / 4))
        R.setdefault('matmul_gflops', {})[key] = gflops
        tf32 = ', TF32 allowed' if b.dev.type == 'cuda' and key == 'fp32' else ''
        print(f'matmul peak {key}: {gflops:9.1f} GFLOP/s ({n}x{n}{tf32})')
    R['peak_gflops'] = b.peak = R['matmul_gflops'][DTYPE_NAME[b.dtype]]


def measure_flops(b, R):
    b.f_std = count_flops(b.std)
    b.f_dream = count_flops(b.dream)
    b.f_fwd = b.f_dream - b.f_std
    print(f'FLOPs per image (FlopCounterMode, meta device, matmul/conv/attention): training forward+backward '
          f'{b.f_std / 1e9:.2f} GFLOP, DREAM {b.f_dream / 1e9:.2f} GFLOP (+1 no-grad forward {b.f_fwd / 1e9:.2f})')
    R.update(flops_per_img=b.f_std, flops_per_img_dream=b.f_dream, flops_fwd_per_img=b.f_fwd)


def measure_production_step(b, R):
    """The production step, standard and DREAM in turns, at the default batch: img/s, MFU, DREAM overhead."""
    B, dev = b.a.batch_size, b.dev
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(dev)
    b.trainer = Trainer(b.std, dev, b.dtype, b.fmt, b.a.compile)
    batch = images(B, b.a.res, dev, b.fmt)
    b.production = lambda: b.trainer.step(b.std, batch)
    times = rounds([b.production, lambda: b.trainer.step(b.dream, batch)], b.a.iters, b.warm, dev)
    t_std, t_dream = (statistics.median(t) for t in times)
    overhead, lo, hi = paired_ratio(times[1], times[0])
    b.t_std = t_std
    b.rate = b.f_std * B / t_std  # achieved FLOP/s: predicts the cost of the optional measurements
    b.done[(b.dtype, b.fmt, b.a.compile, b.trainer.tf32)] = (B / t_std, 1.0, [1.0, 1.0])
    R['peak_mem_mb'], R['peak_mem_source'] = round(peak_mem_mb(dev), 1), 'in-process'
    R.update(train_img_s=B / t_std, step_s=t_std, dream_img_s=B / t_dream, dream_step_s=t_dream,
             dream_overhead=overhead, dream_overhead_range=[lo, hi], mfu=b.f_std * B / t_std / 1e9 / b.peak,
             mfu_dream=b.f_dream * B / t_dream / 1e9 / b.peak)
    print(f'train batch {B}: standard {B / t_std:8.2f} img/s ({t_std * 1e3:.0f} ms/step), MFU {R["mfu"]:.3f} '
          f'({b.f_std * B / t_std / 1e9:.1f} of {b.peak:.1f} GFLOP/s)')
    print(f'train batch {B}: DREAM    {B / t_dream:8.2f} img/s ({t_dream * 1e3:.0f} ms/step), MFU {R["mfu_dream"]:.3f}; '
          f'DREAM step / standard step = {overhead:.3f} (median of {len(times[0])} interleaved pairs, '
          f'{lo:.3f}-{hi:.3f})')


def measure_path(b, dtype, fmt, label, compile=False, tf32=True):
    """Another path of the same network (batch B, standard loss), timed in turns with the production step:
    (img/s, its step time / the production step time). Each path is measured once."""
    B = b.a.batch_size
    key = (dtype, fmt, compile, tf32 and b.dev.type == 'cuda')
    if key in b.done:
        print(f'train batch {B}: {label:27s} = the production path')
        return b.done[key]
    trainer = Trainer(b.std, b.dev, dtype, fmt, compile, tf32)
    batch = images(B, b.a.res, b.dev, fmt)
    times = rounds([b.production, lambda: trainer.step(b.std, batch)], b.a.iters, b.warm, b.dev)
    t = statistics.median(times[1])
    ratio, lo, hi = paired_ratio(times[1], times[0])
    print(f'train batch {B}: {label:27s} {B / t:8.2f} img/s ({t * 1e3:.0f} ms/step, '
          f'{ratio:.2f}x the production step timed in turns with it, {lo:.2f}-{hi:.2f})')
    b.done[key] = (B / t, ratio, [lo, hi])
    return b.done[key]


def measure_baselines(b, R):
    """The plain baseline (fp32, NCHW, eager, TF32 off); on a CPU in fp32 also fp32 channels_last."""
    img_s, ratio, spread = measure_path(b, F32, torch.contiguous_format, 'fp32 eager NCHW baseline', tf32=False)
    R['fp32_eager_img_s'], R['speedup_vs_fp32_eager'] = img_s, ratio
    R['speedup_vs_fp32_eager_range'] = spread
    if b.dev.type == 'cpu' and b.dtype == F32 and affordable(b, (b.warm + b.a.iters) * b.t_std * 2.5,
                                                             'fp32 channels_last'):
        img_s, ratio, spread = measure_path(b, F32, torch.channels_last, 'fp32 channels_last')
        R['fp32_cl_img_s'], R['fp32_cl_step_ratio'], R['fp32_cl_step_ratio_range'] = img_s, ratio, spread
        if ratio > 1.05:
            verdict = 'NCHW faster'
        elif ratio < 0.95:
            verdict = 'channels_last faster'
        else:
            verdict = 'within 5%'
        print(f'  -> fp32 training on this CPU: channels_last step / NCHW step = {ratio:.2f} ({verdict})')


def check_auto_dtype(b, R):
    """Does --dtype auto pick the faster dtype? Both dtypes on the chosen config if affordable, else on tiny."""
    dev = b.dev
    b.auto_dtype = pick_dtype('auto', dev)[0]
    tiny = task_config('tiny', 32, 1)
    trainers = {dt: Trainer(tiny, dev, dt, memory_format(dt, dev)) for dt in (F32, BF16)}
    batches = {dt: images(1, 32, dev, memory_format(dt, dev)) for dt in (F32, BF16)}
    tiny_times = timed([lambda dt=dt: trainers[dt].step(tiny, batches[dt]) for dt in trainers], 1, 1, dev)
    times = dict(zip(trainers, tiny_times))
    other = BF16 if b.dtype == F32 else F32
    where = 'tiny 32x32 batch 1, 1 step'
    cost = (b.warm + b.a.iters) * b.t_std * (1 + times[other] / times[b.dtype])
    if affordable(b, cost, f'{DTYPE_NAME[other]} on {b.a.model} batch {b.a.batch_size}'):
        ratio = measure_path(b, other, memory_format(other, dev), f'{DTYPE_NAME[other]} (the other dtype)')[1]
        times = {b.dtype: b.t_std, other: b.t_std * ratio}
        where = f'{b.a.model} batch {b.a.batch_size}'
    b.faster = min(times, key=times.get)
    b.dtype_where = where
    R['dtype_check'] = dict(where=where, fp32_step_s=times[F32], bf16_step_s=times[BF16],
                            auto=DTYPE_NAME[b.auto_dtype], faster=DTYPE_NAME[b.faster],
                            bf16_speedup=times[F32] / times[BF16])
    print(f'dtype check ({where}): fp32 {times[F32] * 1e3:.0f} ms, bf16 {times[BF16] * 1e3:.0f} ms per step '
          f'(bf16 {times[F32] / times[BF16]:.2f}x); auto picks {DTYPE_NAME[b.auto_dtype]}, '
          f'faster is {DTYPE_NAME[b.faster]}')


def measure_best_batch(b, R):
    """The best batch that fits: CUDA doubles until out of memory or > 90% memory; CPU tries 8, 16 within the budget."""
    dev, B = b.dev, b.a.batch_size
    best = (B, R['train_img_s'])
    if dev.type == 'cuda':
        candidates = [B * 2 ** k for k in range(1, 9)]
    else:
        candidates = [n for n in (8, 16) if n > B]
    for n in candidates:
        if dev.type == 'cpu' and not affordable(b, (b.warm + b.a.iters) * n * b.f_std / b.rate, f'train batch {n}'):
            break
        try:
            if dev.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(dev)
            batch = images(n, b.a.res, dev, b.fmt)
            t = timed([lambda: b.trainer.step(b.std, batch)], b.a.iters, b.warm, dev)[0]
        except torch.OutOfMemoryError:
            b.trainer.opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            print(f'train batch {n}: out of memory')
            break
        print(f'train batch {n}: standard {n / t:8.2f} img/s ({t * 1e3:.0f} ms/step)')
        best = max(best, (n, n / t), key=lambda pair: pair[1])
        if dev.type == 'cuda':
            total = torch.cuda.get_device_properties(dev).total_memory
            if torch.cuda.max_memory_allocated(dev) > 0.9 * total:
                break
    R['best_batch'], R['best_batch_img_s'] = best
    R['best_batch_mfu'] = b.f_std * best[1] / 1e9 / b.peak


def measure_sampling(b, R):
    """ms per sampling step at batch 1 and 16; a whole image = steps x per-step time (extrapolated)."""
    k = 20 if b.dev.type == 'cuda' else 2
    R['sample_step_ms'] = b.trainer.sample_ms(b.std, 1, k)
    R['sample_steps'] = b.a.sample_steps
    R['sample_image_ms'] = R['sample_step_ms'] * b.a.sample_steps
    print(f'sampling batch 1: {R["sample_step_ms"]:.1f} ms/step (mean of {k}); one 16->{b.a.res} image with '
          f'{b.a.sample_steps} DDPM steps ~ {R["sample_image_ms"] / 1e3:.2f} s (extrapolated from the per-step time)')
    if affordable(b, (1 + k) * 16 * b.f_fwd / b.rate, 'sampling batch 16'):
        R['sample_step_ms_b16'] = b.trainer.sample_ms(b.std, 16, k)
        print(f'sampling batch 16: {R["sample_step_ms_b16"]:.1f} ms/step, '
              f'{R["sample_step_ms_b16"] / 16:.1f} ms per image-step')
    del b.trainer
    if b.dev.type == 'cuda':
        torch.cuda.empty_cache()  # the memory subprocesses need the GPU


def measure_memory(b, R):
    """Peak memory with grad-checkpoint off / on, and optionally every preset at batch 1 and 4 (fresh processes)."""
    a, B = b.a, b.a.batch_size
    if not a.no_probe:
        if affordable(b, 2 * 2.4 * B * b.f_std / b.rate + 6, 'memory with grad-checkpoint off/on'):  # 2 steps each
            off = probe(a, a.model, B)
            on = probe(a, a.model, B, grad_checkpoint=True)
            R['mem_grad_checkpoint'] = {'off': off, 'on': on}
            print(f'peak memory {a.model} batch {B}: grad-checkpoint off {mem_text(off)}, on {mem_text(on)}')
            if b.dev.type == 'cpu' and 'peak_mb' in off:
                R['peak_mem_mb'], R['peak_mem_source'] = off['peak_mb'], 'fresh subprocess'
        if a.mem_table:
            R['mem_table'] = {}
            for model in ('tiny', 'small', 'paper'):
                flops = count_flops(task_config(model, a.res, 1))
                for n in (1, 4):
                    if affordable(b, 2 * n * flops / b.rate + 3, f'peak memory {model} batch {n}'):
                        R['mem_table'][f'{model}/{n}'] = r = probe(a, model, n)
                        print(f'peak memory {model:6s} batch {n}: {mem_text(r)}')
    unit = 'max_memory_allocated' if b.dev.type == 'cuda' else 'process peak RSS incl. the torch runtime'
    print(f'peak memory (standard step, batch {B}): {R["peak_mem_mb"]:.0f} MB ({unit}, {R["peak_mem_source"]})')


def report_targets(b, R):
    R['targets'] = targets = dict(mfu=R['mfu'] >= TARGET_MFU, dream_overhead=R['dream_overhead'] <= TARGET_DREAM,
                                  auto_dtype_fastest=b.auto_dtype == b.faster)

    def mark(ok):
        return 'PASS' if ok else 'MISS'
    measured_on = '' if b.a.model == 'paper' else f', measured on {b.a.model}'
    print(f'target MFU >= {TARGET_MFU} (paper model training step): {mark(targets["mfu"])} ({R["mfu"]:.3f}{measured_on})')
    print(f'target DREAM step <= {TARGET_DREAM}x standard: {mark(targets["dream_overhead"])} '
          f'({R["dream_overhead"]:.3f}x)')
    print(f'target --dtype auto picks the faster dtype: {mark(targets["auto_dtype_fastest"])} '
          f'(auto {DTYPE_NAME[b.auto_dtype]}, faster {DTYPE_NAME[b.faster]} on {b.dtype_where})')


# What each ratio of the JSON divides by (all times are medians of interleaved rounds, see rounds()).
RATIOS = dict(
    dream_overhead='DREAM step / standard step, production path, --batch-size; median of per-round ratios, '
                   'dream_overhead_range their min-max',
    speedup_vs_fp32_eager='fp32 eager NCHW step (TF32 off) / production step, --batch-size, timed in turns; '
                          'median of per-round ratios, speedup_vs_fp32_eager_range their min-max',
    fp32_cl_step_ratio='fp32 channels_last step / production step (CPU fp32 only)',
    mfu='standard step FLOP/s (FlopCounterMode FLOPs x batch / median step s) / matmul peak of the production dtype',
    dtype_check_bf16_speedup='dtype_check.fp32_step_s / dtype_check.bf16_step_s, on dtype_check.where',
)


def rounded(value):
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 4)
    return value


def measure_attention(a):
    """--attention: the two layout ratios (module docstring), as paired ratios of interleaved rounds."""
    dtype, why = pick_dtype(a.dtype, a.device)
    preset = PRESETS[a.model]
    side = a.res // preset.get('unshuffle', 1) // 2 ** (len(preset['channel_mults']) - 1)  # the middle's side
    hw, ch = side ** 2, preset['channels'] * preset['channel_mults'][-1]
    g = torch.Generator().manual_seed(0)
    t = torch.randn(a.batch_size, 3, 1, ch, hw, generator=g).to(a.device, dtype).transpose(-1, -2)
    views, copies = t.unbind(1), t.contiguous().unbind(1)
    net = build_unet(a.model, 3, 3, a.res).to(a.device).eval()
    x = torch.randn(a.batch_size, 3, a.res, a.res, generator=g).to(a.device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    noise = torch.full((a.batch_size,), 0.5, device=a.device)
    with torch.inference_mode(), autocast(a.device, dtype):
        sdpa = rounds([lambda: F.scaled_dot_product_attention(*views), lambda: F.scaled_dot_product_attention(*copies)],
                      a.iters, 1, a.device)
        fwd = rounds([lambda: net(x, noise), lambda: net(x_cl, noise)], a.iters, 1, a.device)
    R = dict(device=a.device.type, model=a.model, res=a.res, batch=a.batch_size, dtype=DTYPE_NAME[dtype],
             dtype_reason=why, attention_pixels=hw, attention_channels=ch,
             sdpa_view_s=statistics.median(sdpa[0]), sdpa_contiguous_s=statistics.median(sdpa[1]),
             forward_nchw_s=statistics.median(fwd[0]), forward_channels_last_s=statistics.median(fwd[1]))
    R['sdpa_view_over_contiguous'] = paired_ratio(*sdpa)
    R['forward_nchw_over_channels_last'] = paired_ratio(*fwd)
    print(f"{a.model} {a.res}x{a.res}, batch {a.batch_size}, {R['dtype']}, {a.device.type}, {a.iters} rounds:")
    print(f"  SDPA over {hw} pixels x {ch} channels: transposed views {R['sdpa_view_s']:.3f} s, contiguous "
          f"{R['sdpa_contiguous_s']:.3f} s; ratio {R['sdpa_view_over_contiguous'][0]:.2f} (min-max "
          f"{R['sdpa_view_over_contiguous'][1]:.2f}-{R['sdpa_view_over_contiguous'][2]:.2f})")
    print(f"  network forward: NCHW input {R['forward_nchw_s']:.3f} s, channels_last {R['forward_channels_last_s']:.3f}"
          f" s; ratio {R['forward_nchw_over_channels_last'][0]:.2f} (min-max "
          f"{R['forward_nchw_over_channels_last'][1]:.2f}-{R['forward_nchw_over_channels_last'][2]:.2f})")
    if a.json:
        print(json.dumps(rounded(R)))
    return R


def main(argv=None):
    a = get_args(argv)
    if a.probe_mem:
        allow_tf32(a.device)
        return probe_main(a, pick_dtype(a.dtype, a.device)[0])
    if a.attention:
        return measure_attention(a)
    b, R = measure_setup(a)
    measure_matmul_peaks(b, R)
    measure_flops(b, R)
    measure_production_step(b, R)
    measure_baselines(b, R)
    check_auto_dtype(b, R)
    measure_best_batch(b, R)
    measure_sampling(b, R)
    measure_memory(b, R)
    report_targets(b, R)
    if a.json:
        R['ratio_definitions'] = RATIOS
        print(json.dumps(rounded(R)))
    return R


if __name__ == '__main__':
    try:
        main()
    except UsageError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
