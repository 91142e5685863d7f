"""experiments/gpu_check.sh --dry-run: every step of the GPU check, on the CPU with every size shrunk, ends in the
JSON that docs/speed.md tabulates (bench at each batch, compile off and on; training; relay 64 -> 256; torchrun)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_dry_run_writes_every_step(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', GPU_CHECK_OUT=str(tmp_path))
    proc = subprocess.run(['bash', os.path.join(ROOT, 'experiments', 'gpu_check.sh'), '--dry-run'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.load(open(tmp_path / 'gpu_dryrun.json'))
    assert result['dry_run'] is True
    steps = result['steps']
    assert set(steps) == {'bench_b2', 'bench_b2_compile', 'train_sr', 'train_relay', 'torchrun'}, steps.keys()
    for name, step in steps.items():
        assert step['status'] == 'ok', (name, step)
    for name in ('bench_b2', 'bench_b2_compile'):
        bench = steps[name]['bench']
        assert bench['batch'] == 2 and bench['train_img_s'] > 0 and bench['mfu'] > 0 and bench['peak_mem_mb'] > 0
        assert bench['compile'] == name.endswith('compile')
    for name in ('train_sr', 'train_relay', 'torchrun'):
        assert steps[name]['ckpt'] and steps[name]['eval'] and steps[name]['img_s_last'] > 0, (name, steps[name])
    assert steps['torchrun']['ddp'] and not steps['train_sr']['ddp']
    assert 'psnr' in steps['train_sr']['eval'][-1] and 'input_psnr' in steps['train_relay']['eval'][-1]
    assert not os.path.exists(os.path.join(ROOT, 'results', 'speed', 'gpu_dryrun.json'))
