"""
Speed and memory benchmark: the production training step (standard and DREAM), the sampler, this machine's
matmul peak, MFU, and peak memory.

    python bench.py                                   # paper model, SR 16->128 (6-channel input), batch 4
    python bench.py --model tiny --json               # ... the last line is one JSON object
    python bench.py --device cuda --compile --mem-table

What is timed: the training step as train.py runs it: train.build_model, the precision of train.pick_dtype
(bf16 autocast or fp32), channels_last where train.py uses it (bf16 or CUDA), train.compute_loss
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
"""
import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import train

TARGET_MFU, TARGET_DREAM = 0.6, 1.35
F32, BF16 = torch.float32, torch.bfloat16


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='paper', choices=list(train.PRESETS))
    p.add_argument('--batch-size', type=int, default=4, help='default batch (the paper: 4)')
    p.add_argument('--res', type=int, default=None, help='image size (default 128, the 16->128 task; tiny: 64)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'])
    p.add_argument('--compile', action='store_true', help='torch.compile the training step (CUDA)')
    p.add_argument('--iters', type=int, default=None, help='timed steps per measurement (default: 20 CUDA, 3 CPU)')
    p.add_argument('--budget', type=float, default=60.0, help='seconds: optional measurements predicted to take '
                   'longer are skipped (bigger batches, the other dtype, sampling at batch 16, memory probes)')
    p.add_argument('--sample-steps', type=int, default=100, help='sampling steps of a whole image (sample.py: 100)')
    p.add_argument('--mem-table', action='store_true', help='peak memory of every preset at batch 1 and 4')
    p.add_argument('--no-probe', action='store_true', help='no memory subprocesses (grad-checkpoint on/off, table)')
    p.add_argument('--json', action='store_true', help='end with one JSON line')
    p.add_argument('--probe-mem', action='store_true', help=argparse.SUPPRESS)  # child mode: 2 steps, print peak
    p.add_argument('--grad-checkpoint', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.res = a.res or (64 if a.model == 'tiny' else 128)
    a.device = train.pick_device(a.device)
    a.iters = a.iters or (20 if a.device.type == 'cuda' else 3)
    task_args(a.model, a.res, a.batch_size)  # bad --res / --batch-size: train.py's one-line error, before any timing
    return a


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)  # CUDA runs asynchronously: wait before reading the clock


def task_args(model, res, batch, dream=False, grad_checkpoint=False):
    """train.py's own argparse values for an SR task at `res` (6-channel input), so compute_loss sees production flags."""
    argv = ['--task', f'sr{max(res // 8, 1)}_{res}', '--model', model, '--batch-size', str(batch),
            '--overwrite']  # get_args refuses an --out holding a run; bench writes nothing there
    return train.get_args(argv + ['--dream'] * dream + ['--grad-checkpoint'] * grad_checkpoint)


def memory_format(dtype, device):
    """The rule of train.train(): channels_last for bf16 autocast or on CUDA, NCHW for fp32 on the CPU."""
    return torch.channels_last if dtype == BF16 or device.type == 'cuda' else torch.contiguous_format


def images(batch, res, device, fmt, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(batch, 3, res, res, generator=g) * 2 - 1).to(device).contiguous(memory_format=fmt)
            for k in ('hr', 'sr')}


class Trainer:
    """A fresh model + Adam + EMA; `step(a, batch)` is one train.py training step (standard or DREAM per `a`)."""

    def __init__(self, a, device, dtype, fmt, compile=False, tf32=True):
        torch.manual_seed(0)
        self.model = train.build_model(a.task_info, a.model, a.grad_checkpoint).to(device).to(memory_format=fmt)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=a.lr)  # as train.py
        self.net = torch.compile(self.model) if compile else self.model
        self.params, self.ema_params = list(self.model.parameters()), list(self.ema.parameters())
        self.device, self.dtype, self.fmt, self.tf32 = device, dtype, fmt, tf32 and device.type == 'cuda'

    def flags(self):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32  # train.py: on for CUDA

    def step(self, a, batch):
        self.flags()
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != F32):
            loss = train.compute_loss(self.net, batch, a).float()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(self.ema_params, self.params, 1e-4)

    def sample_ms(self, a, batch, steps):
        """ms per step of GaussianDiffusion.sample (the DDPM sampler sample.py / evaluate.py run)."""
        diff, cond = train.make_diffusion(self.model, vars(a)), images(batch, a.task_info['res'], self.device, self.fmt)['sr']
        self.flags()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != F32):
            diff.sample(cond, 1)  # warm-up
            sync(self.device)
            t = time.perf_counter()
            diff.sample(cond, steps)
            sync(self.device)
        return 1e3 * (time.perf_counter() - t) / steps


def timed(steps, iters, warmup, device):
    """Mean seconds per call of each function in `steps` after `warmup` untimed rounds. They take turns, so
    other load on the machine slows them alike and their ratios stay fair."""
    for _ in range(warmup):
        for f in steps:
            f()
    total = [0.0] * len(steps)
    for _ in range(iters):
        for i, f in enumerate(steps):
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            total[i] += time.perf_counter() - t
    return [t / iters for t in total]


def count_flops(a):
    """FLOPs per image of one training loss forward + backward (FlopCounterMode on the meta device, batch 1)."""
    with torch.device('meta'):
        net = train.build_model(a.task_info, a.model)
        x = torch.zeros(1, 3, a.task_info['res'], a.task_info['res'])
    with FlopCounterMode(display=False) as fc:
        train.compute_loss(net, {'hr': x, 'sr': x}, a).backward()
    return fc.get_total_flops()


def matmul_peak(dtype, device, max_n, cap_s=5.0):
    """GFLOP/s of n x n matmuls after warm-up; n doubles from 256 to max_n while one matmul stays cheap."""
    n = 256
    while True:
        x, y = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
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
        return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == 'darwin' else 1024)


def probe_main(a, dtype):
    """Child mode: two production steps of one config (Adam state exists from step 2), then print the peak."""
    ta = task_args(a.model, a.res, a.batch_size, grad_checkpoint=a.grad_checkpoint)
    base = peak_mem_mb(a.device)
    tr = Trainer(ta, a.device, dtype, memory_format(dtype, a.device), a.compile)
    batch = images(a.batch_size, a.res, a.device, tr.fmt)
    timed([lambda: tr.step(ta, batch)], 1, 1, a.device)
    print('PROBE ' + json.dumps(dict(peak_mb=round(peak_mem_mb(a.device), 1), base_mb=round(base, 1))))


def probe(a, model, batch, grad_checkpoint=False):
    """Peak memory of one config, measured in a fresh process: {'peak_mb', 'base_mb'} or {'error'}."""
    cmd = [sys.executable, os.path.abspath(__file__), '--probe-mem', '--model', model, '--batch-size', str(batch),
           '--res', str(a.res), '--device', a.device.type, '--dtype', a.dtype]
    r = subprocess.run(cmd + ['--grad-checkpoint'] * grad_checkpoint + ['--compile'] * a.compile,
                       capture_output=True, text=True, timeout=max(600, 10 * a.budget))
    line = [l for l in r.stdout.splitlines() if l.startswith('PROBE ')]
    if r.returncode or not line:
        err = (r.stderr.strip().splitlines() or [f'exit status {r.returncode} (killed: out of memory?)'])[-1]
        return {'error': 'out of memory' if 'out of memory' in err.lower() else err[-200:]}
    return json.loads(line[-1][6:])


def main(argv=None):
    a = get_args(argv)
    dev = a.device
    if dev.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py (matmul peak)
    dtype, why = train.pick_dtype(a.dtype, dev)
    if a.probe_mem:
        return probe_main(a, dtype)
    say, cpu = print, torch.backends.cpu.get_cpu_capability()
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU {cpu}, {torch.get_num_threads()} thread(s)'
    fmt = memory_format(dtype, dev)
    dname = {F32: 'fp32', BF16: 'bf16'}
    path = f"{dname[dtype]}{' autocast' if dtype == BF16 else ''}, {'channels_last' if fmt == torch.channels_last else 'NCHW'}" \
           + (', torch.compile' if a.compile else '')
    B, res, it = a.batch_size, a.res, a.iters
    say(f'device {dev} ({name}); model {a.model} at {res}x{res}, 6-channel SR input, batch {B}; '
        f'production path: {path} ({why}); {it} timed steps per measurement')
    if dev.type == 'cpu' and os.getloadavg()[0] > 1.5 * os.cpu_count():
        say(f'WARNING: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other processes share the CPU, '
            'timings are pessimistic')
    R = dict(device=str(dev), device_name=name, cpu_capability=cpu, model=a.model, res=res, batch=B,
             dtype=dname[dtype], dtype_reason=why, memory_format='channels_last' if fmt == torch.channels_last else 'nchw',
             compile=a.compile, iters=it)

    # --- matmul peak of both dtypes (the MFU denominator is the chosen one)
    max_n = 8192 if dev.type == 'cuda' else 2048
    mm = {k: matmul_peak(dt, dev, max_n, min(5.0, a.budget / 4)) for k, dt in (('fp32', F32), ('bf16', BF16))}
    for k, (g, n) in mm.items():
        say(f'matmul peak {k}: {g:9.1f} GFLOP/s ({n}x{n}{", TF32 allowed" if dev.type == "cuda" and k == "fp32" else ""})')
    R['matmul_gflops'], R['peak_gflops'] = {k: g for k, (g, n) in mm.items()}, mm[dname[dtype]][0]
    peak = R['peak_gflops']

    # --- FLOPs per image
    sa, da = task_args(a.model, res, B), task_args(a.model, res, B, dream=True)
    f_std, f_dream = count_flops(sa), count_flops(da)
    f_fwd = f_dream - f_std
    say(f'FLOPs per image (FlopCounterMode, meta device, matmul/conv/attention): training forward+backward '
        f'{f_std / 1e9:.2f} GFLOP, DREAM {f_dream / 1e9:.2f} GFLOP (+1 no-grad forward {f_fwd / 1e9:.2f})')
    R.update(flops_per_img=f_std, flops_per_img_dream=f_dream, flops_fwd_per_img=f_fwd)

    # --- production step, standard and DREAM, at the default batch
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(dev)
    tr = Trainer(sa, dev, dtype, fmt, a.compile)
    warm = 3 if dev.type == 'cuda' else 1
    batch = images(B, res, dev, fmt)
    prod = lambda: tr.step(sa, batch)
    t_std, t_dream = timed([prod, lambda: tr.step(da, batch)], it, warm, dev)
    R['peak_mem_mb'], R['peak_mem_source'] = round(peak_mem_mb(dev), 1), 'in-process'
    R.update(train_img_s=B / t_std, step_s=t_std, dream_img_s=B / t_dream, dream_step_s=t_dream,
             dream_overhead=t_dream / t_std, mfu=f_std * B / t_std / 1e9 / peak, mfu_dream=f_dream * B / t_dream / 1e9 / peak)
    say(f'train batch {B}: standard {B / t_std:8.2f} img/s ({t_std * 1e3:.0f} ms/step), MFU {R["mfu"]:.3f} '
        f'({f_std * B / t_std / 1e9:.1f} of {peak:.1f} GFLOP/s)')
    say(f'train batch {B}: DREAM    {B / t_dream:8.2f} img/s ({t_dream * 1e3:.0f} ms/step), MFU {R["mfu_dream"]:.3f}; '
        f'DREAM step / standard step = {R["dream_overhead"]:.3f}')
    rate = f_std * B / t_std  # achieved FLOP/s: predicts the cost of the optional measurements below

    def affordable(seconds, what):
        """Optional measurements run only when predicted to take at most --budget seconds."""
        if seconds > a.budget:
            say(f'{what}: skipped (predicted {seconds:.1f} s > --budget {a.budget:g} s)')
        return seconds <= a.budget

    # --- other paths of the same network, batch B, standard loss, each timed in turns with the production step:
    # (dtype, memory format, compile, TF32) -> (img/s, its step time / the production step time)
    done = {(dtype, fmt, a.compile, tr.tf32): (B / t_std, 1.0)}

    def measure(dt, mf, label, comp=False, tf32=True):
        key = (dt, mf, comp, tf32 and dev.type == 'cuda')
        if key in done:
            say(f'train batch {B}: {label:27s} = the production path')
            return done[key]
        t2, b2 = Trainer(sa, dev, dt, mf, comp, tf32), images(B, res, dev, mf)
        tp, t = timed([prod, lambda: t2.step(sa, b2)], it, warm, dev)
        say(f'train batch {B}: {label:27s} {B / t:8.2f} img/s ({t * 1e3:.0f} ms/step, '
            f'{t / tp:.2f}x the production step timed in turns with it)')
        done[key] = (B / t, t / tp)
        return done[key]

    # the plain baseline: fp32, NCHW, eager, TF32 off (true fp32 on CUDA)
    R['fp32_eager_img_s'], R['speedup_vs_fp32_eager'] = measure(F32, torch.contiguous_format, 'fp32 eager NCHW baseline',
                                                                tf32=False)
    if dev.type == 'cpu' and dtype == F32 and affordable((warm + it) * t_std * 2.5, 'fp32 channels_last'):
        R['fp32_cl_img_s'], R['fp32_cl_step_ratio'] = r = measure(F32, torch.channels_last, 'fp32 channels_last')
        say(f'  -> fp32 training on this CPU: channels_last step / NCHW step = {r[1]:.2f} '
            f'({"NCHW faster" if r[1] > 1.05 else "channels_last faster" if r[1] < 0.95 else "within 5%"})')

    # --- does --dtype auto pick the faster dtype? Both dtypes timed on the chosen config if affordable, else tiny
    auto_dt = train.pick_dtype('auto', dev)[0]
    ta = task_args('tiny', 32, 1)
    tt = {dt: Trainer(ta, dev, dt, memory_format(dt, dev)) for dt in (F32, BF16)}
    tb = {dt: images(1, 32, dev, memory_format(dt, dev)) for dt in (F32, BF16)}
    tiny = dict(zip(tt, timed([lambda dt=dt: tt[dt].step(ta, tb[dt]) for dt in tt], 1, 1, dev)))
    other = BF16 if dtype == F32 else F32
    if affordable((warm + it) * t_std * (1 + tiny[other] / tiny[dtype]), f'{dname[other]} on {a.model} batch {B}'):
        ts = {dtype: t_std, other: t_std * measure(other, memory_format(other, dev), f'{dname[other]} (the other dtype)')[1]}
        where = f'{a.model} batch {B}'
    else:
        ts, where = tiny, 'tiny 32x32 batch 1, 1 step'
    faster = min(ts, key=ts.get)
    R['dtype_check'] = dict(where=where, fp32_step_s=ts[F32], bf16_step_s=ts[BF16], auto=dname[auto_dt],
                            faster=dname[faster], bf16_speedup=ts[F32] / ts[BF16])
    say(f'dtype check ({where}): fp32 {ts[F32] * 1e3:.0f} ms, bf16 {ts[BF16] * 1e3:.0f} ms per step '
        f'(bf16 {ts[F32] / ts[BF16]:.2f}x); auto picks {dname[auto_dt]}, faster is {dname[faster]}')

    # --- the best batch that fits (CUDA: double until OOM or > 90% memory; CPU: 8, 16 within the budget)
    best = (B, R['train_img_s'])
    cands = [B * 2 ** k for k in range(1, 9)] if dev.type == 'cuda' else [b for b in (8, 16) if b > B]
    for b in cands:
        if dev.type == 'cpu' and not affordable((warm + it) * b * f_std / rate, f'train batch {b}'):
            break
        try:
            if dev.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(dev)
            bb = images(b, res, dev, fmt)
            t = timed([lambda: tr.step(sa, bb)], it, warm, dev)[0]
        except torch.OutOfMemoryError:
            tr.opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            say(f'train batch {b}: out of memory')
            break
        say(f'train batch {b}: standard {b / t:8.2f} img/s ({t * 1e3:.0f} ms/step)')
        best = max(best, (b, b / t), key=lambda x: x[1])
        if dev.type == 'cuda' and torch.cuda.max_memory_allocated(dev) > 0.9 * torch.cuda.get_device_properties(dev).total_memory:
            break
    R['best_batch'], R['best_batch_img_s'], R['best_batch_mfu'] = *best, f_std * best[1] / 1e9 / peak

    # --- sampling: ms per step at batch 1 and 16; a whole image = steps x per-step time (extrapolated)
    k = 20 if dev.type == 'cuda' else 2
    R['sample_step_ms'] = tr.sample_ms(sa, 1, k)
    R['sample_steps'], R['sample_image_ms'] = a.sample_steps, R['sample_step_ms'] * a.sample_steps
    say(f'sampling batch 1: {R["sample_step_ms"]:.1f} ms/step (mean of {k}); one 16->{res} image with {a.sample_steps} '
        f'DDPM steps ~ {R["sample_image_ms"] / 1e3:.2f} s (extrapolated from the per-step time)')
    if affordable((1 + k) * 16 * f_fwd / rate, 'sampling batch 16'):
        R['sample_step_ms_b16'] = tr.sample_ms(sa, 16, k)
        say(f'sampling batch 16: {R["sample_step_ms_b16"]:.1f} ms/step, {R["sample_step_ms_b16"] / 16:.1f} ms per image-step')
    del tr
    if dev.type == 'cuda':
        torch.cuda.empty_cache()  # the memory subprocesses below need the GPU

    # --- memory: grad-checkpoint off/on for this config, optional table of presets (fresh process each)
    mb = lambda r: f'{r["peak_mb"]:.0f} MB' if 'peak_mb' in r else r['error']
    if not a.no_probe:
        if affordable(2 * 2.4 * B * f_std / rate + 6, 'memory with grad-checkpoint off/on'):  # 2 steps each, +1/3
            off, on = probe(a, a.model, B), probe(a, a.model, B, grad_checkpoint=True)
            R['mem_grad_checkpoint'] = {'off': off, 'on': on}
            say(f'peak memory {a.model} batch {B}: grad-checkpoint off {mb(off)}, on {mb(on)}')
            if dev.type == 'cpu' and 'peak_mb' in off:
                R['peak_mem_mb'], R['peak_mem_source'] = off['peak_mb'], 'fresh subprocess'
        if a.mem_table:
            R['mem_table'] = {}
            for m in ('tiny', 'small', 'paper'):
                fm = count_flops(task_args(m, res, 1))
                for b in (1, 4):
                    if affordable(2 * b * fm / rate + 3, f'peak memory {m} batch {b}'):
                        R['mem_table'][f'{m}/{b}'] = r = probe(a, m, b)
                        say(f'peak memory {m:6s} batch {b}: {mb(r)}')
    unit = 'max_memory_allocated' if dev.type == 'cuda' else 'process peak RSS incl. the torch runtime'
    say(f'peak memory (standard step, batch {B}): {R["peak_mem_mb"]:.0f} MB ({unit}, {R["peak_mem_source"]})')

    # --- targets
    R['targets'] = tg = dict(mfu=R['mfu'] >= TARGET_MFU, dream_overhead=R['dream_overhead'] <= TARGET_DREAM,
                             auto_dtype_fastest=auto_dt == faster)
    mark = lambda ok: 'PASS' if ok else 'MISS'
    say(f'target MFU >= {TARGET_MFU} (paper model training step): {mark(tg["mfu"])} ({R["mfu"]:.3f}'
        f'{"" if a.model == "paper" else f", measured on {a.model}"})')
    say(f'target DREAM step <= {TARGET_DREAM}x standard: {mark(tg["dream_overhead"])} ({R["dream_overhead"]:.3f}x)')
    say(f'target --dtype auto picks the faster dtype: {mark(tg["auto_dtype_fastest"])} (auto {dname[auto_dt]}, '
        f'faster {dname[faster]} on {where})')
    if a.json:
        rnd = lambda v: {k: rnd(x) for k, x in v.items()} if isinstance(v, dict) else round(v, 4) if isinstance(v, float) else v
        print(json.dumps(rnd(R)))
    return R


if __name__ == '__main__':
    try:
        main()
    except train.TrainError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
