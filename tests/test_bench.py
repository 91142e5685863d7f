"""bench.py: the CLI's JSON line, the memory probe, and the fast path (bf16 autocast + channels_last) as a correctness check."""
import json
import os
import subprocess
import sys

import pytest
import torch

import bench
import unet
from diffusion import GaussianDiffusion, beta_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = {'train_img_s', 'mfu', 'dream_overhead', 'sample_step_ms', 'peak_mem_mb', 'dtype', 'peak_gflops',
            'cpu_capability', 'device', 'model', 'batch', 'flops_per_img', 'fp32_eager_img_s', 'speedup_vs_fp32_eager',
            'best_batch', 'best_batch_img_s', 'dtype_check', 'targets'}


def test_cli_ends_with_one_json_line_holding_the_required_keys():
    # --budget 0: every optional measurement is skipped, so this stays a few seconds on any CPU
    cmd = [sys.executable, 'bench.py', '--model', 'tiny', '--res', '32', '--batch-size', '2', '--iters', '1',
           '--budget', '0', '--device', 'cpu', '--json']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert REQUIRED <= out.keys(), REQUIRED - out.keys()
    assert out['model'] == 'tiny' and out['device'] == 'cpu' and out['dtype'] in ('fp32', 'bf16')
    assert out['train_img_s'] > 0 and out['peak_gflops'] > 0 and out['peak_mem_mb'] > 0 and out['sample_step_ms'] > 0
    assert 0 < out['mfu'] < 5 and out['dream_overhead'] > 0.5
    # FlopCounterMode: DREAM adds one forward, about a third of forward + backward
    assert 1.2 < out['flops_per_img_dream'] / out['flops_per_img'] < 1.45
    assert set(out['targets']) == {'mfu', 'dream_overhead', 'auto_dtype_fastest'}
    assert 'target DREAM step <= 1.35x' in r.stdout and 'MFU' in r.stdout


def test_memory_probe_runs_in_a_fresh_process_and_sees_the_batch_grow():
    """Each probe is a child process (its own peak, not this test process's): a batch of 16 at 32x32 holds ~16x the
    activations of a batch of 1 (measured: 166 vs 126 MB above a 226 MB base), so its peak above the base is larger."""
    a = bench.get_args(['--model', 'tiny', '--res', '32', '--device', 'cpu'])
    one = bench.probe(a, 'tiny', 1)
    many = bench.probe(a, 'tiny', 16)
    assert 'error' not in one and 'error' not in many, (one, many)
    assert one['peak_mb'] > one['base_mb'] > 0
    assert many['peak_mb'] - many['base_mb'] > one['peak_mb'] - one['base_mb'] + 10, (one, many)


@pytest.mark.parametrize('dream_p', [None, 1.0])
def test_fast_path_gives_the_fp32_loss_and_gradients_within_bf16_tolerance(dream_p):
    """bf16 autocast + channels_last (the production fast path) vs fp32 NCHW: same weights, batch and noise."""
    torch.manual_seed(0)
    m = unet.build_unet('tiny', 6, 3, 32)
    hr, sr = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    betas = beta_schedule('linear', 2000, 1e-6, 1e-2)

    def loss_and_grad(fast):
        net = m.to(memory_format=torch.channels_last if fast else torch.contiguous_format)
        net.zero_grad(set_to_none=True)
        fmt = torch.channels_last if fast else torch.contiguous_format
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=fast):
            loss = GaussianDiffusion(net, betas).loss(hr.contiguous(memory_format=fmt), sr.contiguous(memory_format=fmt),
                                                      dream_p=dream_p, generator=torch.Generator().manual_seed(7))
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in net.parameters()])

    l32, g32 = loss_and_grad(False)
    l16, g16 = loss_and_grad(True)
    assert l16 == pytest.approx(l32, rel=5e-3)  # seen: <= 1.5e-4
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.98  # seen: >= 0.997


def test_attention_mode_reports_both_layout_ratios_and_nothing_else():
    cmd = [sys.executable, 'bench.py', '--model', 'tiny', '--res', '32', '--batch-size', '2', '--iters', '1',
           '--device', 'cpu', '--attention', '--json']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # tiny: 3 levels, so the middle of a 32x32 input is 8x8 = 64 pixels of 16 x 4 = 64 channels
    assert out['attention_pixels'] == 64 and out['attention_channels'] == 64 and out['res'] == 32
    for key in ('sdpa_view_over_contiguous', 'forward_nchw_over_channels_last'):
        ratio, lo, hi = out[key]
        assert lo <= ratio <= hi and lo > 0
    assert 'train_img_s' not in out and 'MFU' not in r.stdout
