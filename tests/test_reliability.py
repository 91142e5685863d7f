"""Reliability (issue 7): atomic checkpoints and exact resume; kill -9, SIGTERM, Ctrl-C; bad input as one line that
keeps an existing run intact; non-finite losses; DDP (torchrun, gloo on CPU); a half-downloaded data set.

Tiny model, 4 -> 16 pixels, a few steps each. A few tests start `python train.py` / torchrun (seconds each)."""
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import checkpoint  # noqa: E402
import runtime  # noqa: E402
import sample  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402
import trainset  # noqa: E402

FAST = ['--model', 'tiny', '--batch-size', '2', '--eval-n', '2', '--eval-steps', '2', '--timesteps', '50',
        '--log-every', '5', '--eval-every', '1000', '--device', 'cpu', '--dtype', 'fp32']
SR = FAST + ['--task', 'sr4_16']
RELAY = FAST + ['--task', 'relay4_16', '--holdout', '2']
ENV = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg')


def smooth(seed, h, w):
    g = np.random.default_rng(seed)
    return Image.fromarray(g.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
    """sr4_16 layout: train/ (8 pairs) and val/ (2 pairs)."""
    root = tmp_path_factory.mktemp('pairs')
    os.makedirs(root / 'src')
    for i in range(10):
        smooth(i, 16, 16).save(root / 'src' / f'{i:02d}.png')
    data.prepare(str(root / 'src'), str(root / 'pairs'), 4, 16, val=2, progress=False)
    return str(root / 'pairs')


@pytest.fixture(scope='module')
def faces(tmp_path_factory):
    """Images for relay4_16 in assorted modes and sizes: grayscale, RGBA, 16-bit and palette must be converted."""
    root = tmp_path_factory.mktemp('faces')
    for i in range(10):
        img = smooth(i, 16 + 2 * (i % 3), 16)
        mode = ['RGB', 'L', 'RGBA', 'P', 'RGB'][i % 5]
        img = img.convert(mode) if mode != 'P' else img.quantize(16)
        img.save(root / f'{i:02d}.png')
    Image.fromarray((np.asarray(smooth(10, 20, 16).convert('L'), np.uint16) * 257)).save(root / '10.png')  # I;16
    assert Image.open(root / '10.png').mode == 'I;16' and Image.open(root / '02.png').mode == 'RGBA'
    return str(root)


@pytest.fixture(scope='module', autouse=True)
def quick_plots():
    """In-process runs: an empty loss.png instead of a matplotlib figure (about a second each on a slow CPU)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, 'plot_loss', lambda log, png: open(png, 'wb').close())
        yield


def run(argv):
    train.main(argv)
    return [json.loads(l) for l in open(os.path.join(argv[argv.index('--out') + 1], 'log.jsonl'))]


def losses(rows):
    return [(r['step'], r['loss']) for r in rows if 'loss' in r]


@pytest.fixture(scope='module')
def sr_run(pairs, tmp_path_factory):
    """A finished 2-step SR run: ckpt.pt, ckpt_0000002.pt, log.jsonl, loss.png, samples_0000002.png."""
    out = str(tmp_path_factory.mktemp('sr_run') / 'run')
    run(SR + ['--data', pairs, '--out', out, '--max-iters', '2', '--snapshot-every', '2'])
    return out


@pytest.fixture(scope='module')
def relay_run(faces, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('relay_run') / 'run')
    run(RELAY + ['--data', faces, '--out', out, '--max-iters', '1'])
    return out


def test_relay_stage2_evaluation_carries_its_baselines(relay_run):
    """Results rows of relay stage 2 carry input_psnr (the relay's own input, nearest-up tile means) and
    bicubic_psnr (bicubic-up of the same tile means) beside the output's (DESIGN.md "Results files")."""
    evals = [json.loads(line) for line in open(os.path.join(relay_run, 'log.jsonl')) if '"eval"' in line]
    ev = evals[-1]
    for k in ('psnr', 'ssim', 'flat_noise', 'input_psnr', 'input_ssim', 'bicubic_psnr', 'bicubic_ssim'):
        assert math.isfinite(ev[k]), (k, ev)
    assert ev['bicubic_psnr'] > ev['input_psnr'], ev  # on smooth images bicubic beats blocky nearest upsampling


def test_default_truncation_sigma_stays_inside_the_blur_process():
    import relay
    from block_noise import sigma_to_t
    assert relay.default_truncation_sigma(0.93) == 0.9  # RDM's start; the process ends at sigma 1.77
    for p in (0.5, 0.3):
        s = relay.default_truncation_sigma(p)
        assert s < 0.9 and 0.99 < float(sigma_to_t(s, prob_length=p)) <= 1.0, (p, s)


def test_relay_sampling_options_default_to_the_stage2_run():
    """sample.py --relay takes s_noise / s_block from the stage-2 run's flags unless given; old runs get RDM's."""
    import argparse
    import sample
    a = argparse.Namespace(truncation_t=None, truncation_sigma=None, s_block=None, s_noise=None, heun_noise='reuse')
    cfg = dict(prob_length=0.5, blur_sigma_max=3.0, s_noise=1.0, block_noise=0.0)
    kw = sample.relay_kwargs(a, cfg)
    assert (kw['s_noise'], kw['s_block']) == (1.0, 0.0)
    old = dict(prob_length=0.93, blur_sigma_max=3.0)  # a checkpoint from before the flags
    kw = sample.relay_kwargs(a, old)
    assert (kw['s_noise'], kw['s_block'], kw['truncation_sigma']) == (0.2, 0.15, 0.9)
    kw = sample.relay_kwargs(argparse.Namespace(**dict(vars(a), s_noise=0.5)), cfg)
    assert kw['s_noise'] == 0.5
    with pytest.raises(runtime.UsageError, match='--s-noise must be in'):
        sample.relay_kwargs(argparse.Namespace(**dict(vars(a), s_noise=2.0)), cfg)


def copy_run(src, tmp_path, name='run'):
    return shutil.copytree(src, str(tmp_path / name))


def contents(folder):
    return {f: open(os.path.join(folder, f), 'rb').read() for f in sorted(os.listdir(folder))}


def one_error_line(err, *needles):
    """stderr (progress bar included) holds exactly one error line, no traceback; it contains the needles."""
    assert 'Traceback' not in err, err[-3000:]
    lines = [l for l in err.splitlines() if 'error' in l.lower()]
    assert len(lines) == 1 and lines[0].startswith('error: '), err[-3000:]
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def fails(main, argv, capsys, *needles):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    exc = e.value  # free the frames now: a DataLoader iterator they hold then stops its workers at once, where a
    while exc is not None:  # later garbage collection would wait 5 s for them
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__context__
    return one_error_line(capsys.readouterr().err, *needles)

# ----------------------------------------------------------------------------- 1. checkpoints


def test_a_failed_checkpoint_write_keeps_the_previous_one(pairs, sr_run, tmp_path, monkeypatch, capsys):
    out = copy_run(sr_run, tmp_path)
    ck, before = os.path.join(out, 'ckpt.pt'), contents(out)
    real_save, calls = torch.save, []

    def save_fails_halfway(obj, f, *a, fail_at=1, **k):
        calls.append(1)
        if len(calls) >= fail_at:
            f.write(b'PK\x03\x04' + b'\0' * 4000)
            raise OSError(28, 'No space left on device')
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, 'save', save_fails_halfway)
    with pytest.raises(runtime.UsageError, match=r'could not write .*ckpt\.pt \(\[Errno 28\] No space left on device\); '
                                               r'the previous file is untouched'):
        checkpoint.save_checkpoint(ck, {'step': 3})
    assert contents(out) == before  # same files, same bytes: no temp file left
    assert checkpoint.load_checkpoint(ck)['step'] == 2
    # inside a run: the save at step 4 works, the one at step 6 fails -> one line, exit 2, step 4 kept
    calls.clear()
    monkeypatch.setattr(torch, 'save', lambda obj, f, *a, **k: save_fails_halfway(obj, f, *a, fail_at=2, **k))
    fails(train.main, SR + ['--data', pairs, '--out', out, '--resume', '--max-iters', '6',
                            '--ckpt-every', '2'], capsys, 'could not write', ck)
    monkeypatch.undo()
    assert len(calls) == 2 and checkpoint.load_checkpoint(ck)['step'] == 4
    assert not [f for f in os.listdir(out) if '.tmp' in f]


def test_checkpoints_hold_plain_types_and_data_order_is_a_function_of_the_step(sr_run):
    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (torch.Tensor, bool, int, float, str))
    for name in ('ckpt.pt', 'ckpt_0000002.pt'):
        ck = torch.load(os.path.join(sr_run, name), weights_only=True)
        assert plain(ck) and ck['step'] == 2 and set(ck['rng']) >= {'python', 'numpy', 'torch'}
        assert {'model', 'ema', 'opt', 'args', 'train_s'} <= ck.keys() and ck['args']['task'] == 'sr4_16'
    # the RNG states survive torch.save / torch.load(weights_only=True) and restore every generator
    st = checkpoint.rng_state()
    path = os.path.join(tempfile.mkdtemp(), 'rng.pt')
    torch.save(st, path)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    # StepBatches: started at micro-step s it yields what a run from 0 yields from s on; ranks take disjoint slices
    ref = list(islice(iter(trainset.StepBatches(10, 2, 7, 0, 1, 0)), 20))
    for s in (0, 3, 5, 11):
        assert list(islice(iter(trainset.StepBatches(10, 2, 7, 0, 1, s)), 20 - s)) == ref[s:]
    r0, r1 = (list(islice(iter(trainset.StepBatches(10, 2, 7, r, 2, 0)), 4)) for r in (0, 1))
    assert all(not set(a) & set(b) for a, b in zip(r0, r1))


def test_resume_is_exact_with_grad_accum(pairs, tmp_path):
    common = SR + ['--data', pairs, '--grad-accum', '2', '--ckpt-every', '3', '--dream']
    straight = run(common + ['--out', str(tmp_path / 'a'), '--max-iters', '6'])
    run(common + ['--out', str(tmp_path / 'b'), '--max-iters', '3'])
    resumed = run(common + ['--out', str(tmp_path / 'b'), '--max-iters', '6', '--resume'])
    assert [s for s, _ in losses(straight)] == list(range(1, 7)) and losses(straight) == losses(resumed)
    a, b = (torch.load(tmp_path / r / 'ckpt.pt', weights_only=True) for r in 'ab')
    for key in ('model', 'ema'):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert all(torch.equal(a['opt']['state'][i]['exp_avg'], b['opt']['state'][i]['exp_avg']) for i in a['opt']['state'])
    assert torch.equal(a['rng']['torch'], b['rng']['torch'])


def test_resume_is_exact_for_relay_and_snapshots_follow_the_same_rules(faces, tmp_path):
    common = RELAY + ['--data', faces, '--ckpt-every', '3', '--snapshot-every', '3', '--dream']
    straight = run(common + ['--out', str(tmp_path / 'a'), '--max-iters', '6'])
    run(common + ['--out', str(tmp_path / 'b'), '--max-iters', '3'])
    resumed = run(common + ['--out', str(tmp_path / 'b'), '--max-iters', '6', '--resume'])
    assert [s for s, _ in losses(straight)] == list(range(1, 7)) and losses(straight) == losses(resumed)
    for name in ('ckpt_0000003.pt', 'ckpt_0000006.pt', 'ckpt.pt'):
        a, b = (torch.load(tmp_path / r / name, weights_only=True) for r in 'ab')
        assert a['step'] == b['step'] == int(name[5:12] if name != 'ckpt.pt' else 6)
        assert all(torch.equal(a['ema'][k], b['ema'][k]) for k in a['ema'])

# ----------------------------------------------------------------------------- 2. kill -9, SIGTERM, Ctrl-C


def start(args, cwd):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def n_lines(path):
    return sum(1 for _ in open(path)) if os.path.exists(path) else 0


@pytest.fixture(scope='module')
def cli_runs(pairs, sr_run, tmp_path_factory):
    """Real `python train.py` runs, started together (importing torch takes seconds; on 2 cores they overlap):
    SIGKILL, SIGTERM and SIGINT (Ctrl-C: to the whole process group) once each run has a checkpoint and a few
    logged steps; and a resumed run that meets truncated images in a DataLoader worker.
    Returns {name: (returncode, stdout, stderr, out folder, extra)}."""
    root = tmp_path_factory.mktemp('cli')
    procs = {}
    for sig in ('SIGKILL', 'SIGTERM', 'SIGINT'):
        out = str(root / sig)
        procs[sig] = start(SR + ['--data', pairs, '--out', out, '--ckpt-every', '2', '--log-every', '1',
                                 '--max-iters', '100000', '--workers', '1' if sig == 'SIGINT' else '0'], str(root)), out
    bad, names = break_data('truncated', pairs, root)
    out = copy_run(sr_run, root)
    before = contents(out)
    procs['bad'] = start(SR + ['--data', bad, '--out', out, '--resume', '--max-iters', '40', '--workers', '1',
                               '--log-every', '1000', '--ckpt-every', '1000'], str(root)), out
    try:
        waiting, t = ['SIGKILL', 'SIGTERM', 'SIGINT'], time.time()
        while waiting:
            for sig in list(waiting):
                proc, out_sig = procs[sig]
                if os.path.exists(os.path.join(out_sig, 'ckpt.pt')) and n_lines(os.path.join(out_sig, 'log.jsonl')) >= 3:
                    if sig == 'SIGINT':
                        os.killpg(proc.pid, signal.SIGINT)
                    else:
                        proc.send_signal(getattr(signal, sig))
                    waiting.remove(sig)
                elif proc.poll() is not None or time.time() - t > 240:
                    pytest.fail(f'{sig} run: no checkpoint: ' + proc.communicate()[1][-3000:])
            time.sleep(0.02)
        res = {}
        for name, (proc, out_dir) in procs.items():
            stdout, stderr = proc.communicate(timeout=240)
            res[name] = proc.returncode, stdout, stderr, out_dir, (names, before) if name == 'bad' else proc.pid
        return res
    finally:
        for proc, _ in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, DataLoader workers included
            except ProcessLookupError:
                pass
            proc.wait()


def test_kill_9_then_resume(cli_runs):
    rc, _, _, out, pid = cli_runs['SIGKILL']
    assert rc == -signal.SIGKILL
    ck = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)  # whole, whatever the kill interrupted
    s = ck['step']
    assert s >= 2 and s % 2 == 0
    with open(os.path.join(out, 'log.jsonl'), 'a') as f:
        f.write('{"step": 99999, "lo')  # as if the kill had torn a line
    open(os.path.join(out, f'ckpt.pt.tmp{pid}'), 'wb').write(b'half a checkpoint')  # as if it had cut a save short
    rows = run(SR + ['--data', ck['args']['data'], '--out', out, '--ckpt-every', '2', '--log-every', '1',
                     '--max-iters', str(s + 3), '--resume'])
    assert [st for st, _ in losses(rows)] == list(range(1, s + 4))  # each step once: what came after s was redone
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['step'] == s + 3
    assert not [f for f in os.listdir(out) if '.tmp' in f]


@pytest.mark.parametrize('sig', ['SIGTERM', 'SIGINT'])
def test_sigterm_and_ctrl_c_save_and_exit_cleanly(sig, cli_runs):
    rc, stdout, stderr, out, _ = cli_runs[sig]
    assert rc == 0, stderr[-3000:]
    assert 'Traceback' not in stderr and 'error' not in stderr.lower()
    msg = [l for l in stdout.splitlines() if 'checkpoint saved' in l]
    assert len(msg) == 1 and msg[0].startswith(f'{sig}: checkpoint saved at step ') and '--resume' in msg[0], stdout
    step = int(msg[0].split('at step ')[1].split()[0])
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['step'] == step >= 3
    rows = [json.loads(l) for l in open(os.path.join(out, 'log.jsonl'))]
    assert [s for s, _ in losses(rows)] == list(range(1, step + 1))  # logged up to the saved step
    assert not [f for f in os.listdir(out) if f.startswith('samples_') or '.tmp' in f]  # no evaluation on a signal


def test_bad_data_through_the_cli(cli_runs):
    """A real `python train.py --resume`: truncated images met by a DataLoader worker mid-training."""
    rc, _, stderr, out, (names, before) = cli_runs['bad']
    assert rc == 2
    one_error_line(stderr, 'error: data: ', names, 'truncated or corrupt')
    assert contents(out) == before


def test_a_signal_during_evaluation_or_data_loading(pairs, tmp_path, monkeypatch, capsys):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    real_eval, real_item, items = train.run_eval, data.SRPairs.__getitem__, [0]

    def eval_with_sigterm(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_eval(*a, **k)

    monkeypatch.setattr(train, 'run_eval', eval_with_sigterm)
    out = str(tmp_path / 'eval')
    rows = run(SR + ['--data', pairs, '--out', out, '--max-iters', '50', '--eval-every', '3', '--ckpt-every', '100'])
    assert 'SIGTERM: checkpoint saved at step 3' in capsys.readouterr().out
    assert checkpoint.load_checkpoint(os.path.join(out, 'ckpt.pt'))['step'] == 3 and [s for s, _ in losses(rows)] == [1, 2, 3]
    assert [r['step'] for r in rows if r.get('eval')] == [3]  # the evaluation that was running finished

    def item_with_ctrl_c(self, i):
        items[0] += 1
        if items[0] == 11:  # the first image of step 5 (the 2 held-out images load at start-up, then batches of 2)
            os.kill(os.getpid(), signal.SIGINT)
        return real_item(self, i)

    monkeypatch.setattr(data.SRPairs, '__getitem__', item_with_ctrl_c)
    out = str(tmp_path / 'load')
    run(SR + ['--data', pairs, '--out', out, '--max-iters', '50', '--ckpt-every', '100'])
    assert 'SIGINT: checkpoint saved at step 5' in capsys.readouterr().out
    assert checkpoint.load_checkpoint(os.path.join(out, 'ckpt.pt'))['step'] == 5
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored

# ----------------------------------------------------------------------------- 3. bad input


def break_data(case, pairs, tmp_path):
    """A broken copy of the pairs data -> (path for --data, a string the error must name)."""
    bad = str(tmp_path / 'bad')
    if case == 'missing':
        return bad, bad
    if case == 'empty':
        os.makedirs(bad)
        return bad, bad
    shutil.copytree(pairs, bad)
    hr, lr = os.path.join(bad, 'train', 'hr_16'), os.path.join(bad, 'train', 'lr_4')
    for f in sorted(os.listdir(hr)):
        if case == 'truncated':
            b = open(os.path.join(hr, f), 'rb').read()
            open(os.path.join(hr, f), 'wb').write(b[:len(b) // 2])
        elif case == 'not-an-image':
            open(os.path.join(lr, f), 'w').write('<html>not a picture</html>')
        elif case.startswith('wrong-size'):
            smooth(0, 20, 20).save(os.path.join(hr, f))
    if case == 'unpaired':
        os.remove(os.path.join(lr, '03.png'))
        return bad, os.path.join(hr, '03.png')
    if case == 'bad-zip-member':  # every hr member of a zip with a bad CRC
        zpath = str(tmp_path / 'bad.zip')
        with zipfile.ZipFile(zpath, 'w', zipfile.ZIP_STORED) as z:
            for d in ('hr_16', 'lr_4', 'sr_4_16'):
                for f in sorted(os.listdir(os.path.join(bad, 'train', d))):
                    z.write(os.path.join(bad, 'train', d, f), f'{d}/{f}')
        raw = bytearray(open(zpath, 'rb').read())
        with zipfile.ZipFile(zpath) as z:
            for info in z.infolist():
                if info.filename.startswith('hr_16/'):
                    i = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
                    raw[i:i + 4] = bytes(255 - c for c in raw[i:i + 4])
        open(zpath, 'wb').write(bytes(raw))
        return zpath, os.path.join(zpath, 'hr_16')
    return bad, lr if case == 'not-an-image' else hr


@pytest.mark.parametrize('case, workers, needle', [
    ('truncated', '0', 'truncated or corrupt'),
    ('not-an-image', '0', 'not an image'),
    ('wrong-size', '0', 'expected 16x16, got 20x20'),
    ('wrong-size-in-a-worker', '1', 'expected 16x16, got 20x20'),
    ('bad-zip-member', '1', 'cannot read'),
    ('unpaired', '0', 'no file of that name in lr_4/'),
    ('empty', '0', 'no hr_16/ folder'),
    ('missing', '0', 'no such file or folder'),
])
def test_bad_data_is_one_line_and_the_run_is_kept(case, workers, needle, pairs, sr_run, tmp_path, capsys):
    bad, names = break_data(case, pairs, tmp_path)
    out = copy_run(sr_run, tmp_path)
    before = contents(out)
    fails(train.main, SR + ['--data', bad, '--out', out, '--resume', '--max-iters', '40', '--workers', workers,
                            '--log-every', '1000', '--ckpt-every', '1000'], capsys, 'error: data: ', names, needle)
    assert contents(out) == before


@pytest.mark.parametrize('argv, message', [
    (['--task', 'sr0_16'], '0 < L < H'),
    (['--task', 'relay0'], '0 < L < H'),
    (['--task', 'sr4_18'], 'resolution 18 must be divisible by 4'),
    (['--task', 'relay4_18'], 'H=18 must be a multiple of L=4'),
    (['--task', 'srx_16'], "unknown task 'srx_16'"),
    (['--ckpt-every', '0'], '--ckpt-every must be positive, got 0'),
    (['--grad-accum', '0'], '--grad-accum must be positive'),
    (['--lr', 'nan'], '--lr must be positive, got nan'),
    (['--eval-every', '-5'], '--eval-every must be positive'),
    (['--snapshot-every', '-1'], '--snapshot-every must be non-negative'),
    (['--holdout', '-2'], '--holdout must be non-negative'),
    (['--temperature', '-0.5'], '--temperature must be non-negative'),
    (['--block-noise', '-0.1'], '--block-noise must be non-negative'),
    (['--project-smooth', '-1', '--project'], '--project-smooth must be non-negative'),
    (['--project-smooth', '10'], '--project-smooth 10.0 has no effect without --project'),
    (['--s-noise', '1.5'], '--s-noise must be in [0, 1], got 1.5'),
    (['--eval-steps', '500', '--timesteps', '100'], '--eval-steps 500 exceeds --timesteps 100'),
    (['--max-iters', 'ten'], "invalid int value: 'ten'"),
    (['--no-such-flag'], 'unrecognized arguments: --no-such-flag'),
    (['--resume'], '--resume: no checkpoint to resume'),
])
def test_bad_flags(argv, message, tmp_path, capsys):
    out = str(tmp_path / 'never')
    fails(train.main, ['--model', 'tiny', '--task', 'sr4_16', '--out', out] + argv, capsys, message)
    assert not os.path.exists(out)


def test_foreign_or_corrupt_checkpoints_with_resume_and_sample(pairs, sr_run, relay_run, tmp_path, capsys):
    out = copy_run(sr_run, tmp_path)
    ck = os.path.join(out, 'ckpt.pt')
    resume = ['--data', pairs, '--out', out, '--resume', '--max-iters', '5']
    fails(train.main, SR[:-2] + ['--task', 'relay16'] + resume, capsys, f'checkpoint {ck} is for --task sr4_16, not relay16')
    fails(train.main, SR + ['--model', 'small'] + resume, capsys, f'checkpoint {ck} is for --model tiny, not small')
    good = open(ck, 'rb').read()
    state = torch.load(ck, weights_only=True)
    forged = str(tmp_path / 'forged.pt')  # says tiny, holds weights of another shape (e.g. an older preset)
    for key in ('model', 'ema'):
        state[key][next(iter(state[key]))] = torch.zeros(3)
    torch.save(state, forged)
    half = str(tmp_path / 'half.pt')
    open(half, 'wb').write(good[:len(good) // 2])
    for bad, needle in ((forged, 'does not fit the network'), (half, 'not a dream-relay checkpoint or corrupted')):
        shutil.copy(bad, ck)
        fails(train.main, SR + resume, capsys, ck, needle)
        assert open(ck, 'rb').read() == open(bad, 'rb').read()  # nothing was written over it
    lr = os.path.join(pairs, 'val', 'lr_4')
    so = str(tmp_path / 'sampled')
    for argv, needle in (
            (['--ckpt', os.path.join(relay_run, 'ckpt.pt'), '--input', lr], 'relay4_16 checkpoint, not super-resolution'),
            (['--relay', '--ckpt-second', os.path.join(sr_run, 'ckpt.pt'), '--input', lr], 'not a relay stage 2'),
            (['--relay', '--ckpt-second', os.path.join(relay_run, 'ckpt.pt'), '--ckpt-first', os.path.join(sr_run, 'ckpt.pt')],
             'is a sr4_16 checkpoint; stage 2 relay4_16 needs relay4'),
            (['--ckpt', half, '--input', lr], 'not a dream-relay checkpoint or corrupted'),
            (['--ckpt', forged, '--input', lr], 'does not fit the network'),
            (['--ckpt', str(tmp_path / 'nope.pt'), '--input', lr], 'no such file')):
        fails(sample.main, argv + ['--out', so, '--steps', '2', '--device', 'cpu', '--dtype', 'fp32'], capsys, needle)
        assert not os.path.exists(so)


def test_a_folder_holding_a_run_is_never_clobbered(pairs, sr_run, tmp_path, capsys):
    out = copy_run(sr_run, tmp_path)
    before = contents(out)
    for f in ('log.jsonl', 'ckpt_0000002.pt'):  # a log or a snapshot alone is a run too
        part = str(tmp_path / f)
        os.makedirs(part)
        shutil.copy(os.path.join(out, f), part)
        fails(train.main, SR + ['--data', pairs, '--out', part], capsys, f'{part} already holds a run')
        assert os.listdir(part) == [f]
    fails(train.main, SR + ['--data', pairs, '--out', out], capsys, 'already holds a run', '--resume', '--overwrite')
    fails(train.main, SR + ['--data', str(tmp_path / 'missing'), '--out', out, '--overwrite'], capsys, 'no such file')
    assert contents(out) == before  # --overwrite checks the data before it deletes anything
    run(SR + ['--data', pairs, '--out', out, '--overwrite', '--max-iters', '1'])
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'log.jsonl', 'loss.png', 'samples_0000001.png']  # old run gone
    assert checkpoint.load_checkpoint(os.path.join(out, 'ckpt.pt'))['step'] == 1


hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draw=st.data())
def test_random_bytes_at_load_checkpoint_raise_train_error_only(sr_run, draw):
    real = open(os.path.join(sr_run, 'ckpt.pt'), 'rb').read()
    kind = draw.draw(st.sampled_from(['random', 'zip-like', 'prefix', 'flip']))
    if kind == 'random':
        blob = draw.draw(st.binary(max_size=3000))
    elif kind == 'zip-like':
        blob = real[:draw.draw(st.integers(0, 200))] + draw.draw(st.binary(max_size=500))
    elif kind == 'prefix':
        blob = real[:draw.draw(st.integers(0, len(real) - 1))]
    else:
        i = draw.draw(st.integers(0, len(real) - 1))
        blob = real[:i] + bytes([real[i] ^ draw.draw(st.integers(1, 255))]) + real[i + 1:]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'ckpt.pt')
        open(path, 'wb').write(blob)
        try:
            ck = checkpoint.load_checkpoint(path, task='sr4_16')
        except runtime.UsageError as e:
            assert path in str(e) and '\n' not in str(e)
        else:
            assert isinstance(ck, dict) and ck['args']['task'] == 'sr4_16'

# ----------------------------------------------------------------------------- 4. non-finite loss


def saves_of(monkeypatch):
    """Record (step, bytes) of every ckpt.pt written."""
    real, saved = train.save_checkpoint, []

    def save(path, state):
        real(path, state)
        if path.endswith('ckpt.pt'):
            saved.append((state['step'], open(path, 'rb').read()))
    monkeypatch.setattr(train, 'save_checkpoint', save)
    return saved


def loss_from_step(monkeypatch, k, change):
    real, calls = train.compute_loss, [0]

    def loss(net, batch, a):
        calls[0] += 1
        out = real(net, batch, a)
        return change(out) if calls[0] >= k else out
    monkeypatch.setattr(train, 'compute_loss', loss)


def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(pairs, tmp_path, monkeypatch, capsys):
    saved = saves_of(monkeypatch)
    loss_from_step(monkeypatch, 6, lambda l: l * float('nan'))
    out = str(tmp_path / 'run')
    ck = os.path.join(out, 'ckpt.pt')
    fails(train.main, SR + ['--data', pairs, '--out', out, '--max-iters', '20', '--ckpt-every', '4', '--log-every', '10'],
          capsys, f'non-finite loss at step 6: stopped; the last good checkpoint {ck} is untouched')
    assert [s for s, _ in saved] == [4] and open(ck, 'rb').read() == saved[-1][1]
    rows = [json.loads(l) for l in open(os.path.join(out, 'log.jsonl'))]
    assert [s for s, _ in losses(rows)] == [1, 2, 3, 4] and all(math.isfinite(v) for _, v in losses(rows))


def test_a_nan_gradient_under_a_finite_loss_never_reaches_a_checkpoint(pairs, tmp_path, monkeypatch, capsys):
    saved = saves_of(monkeypatch)
    loss_from_step(monkeypatch, 4, lambda l: l + (l * 0).sqrt())  # value l, gradient NaN (0 * inf)
    out = str(tmp_path / 'run')
    fails(train.main, SR + ['--data', pairs, '--out', out, '--max-iters', '20', '--ckpt-every', '2'],
          capsys, 'non-finite weights after step 4')
    ck = checkpoint.load_checkpoint(os.path.join(out, 'ckpt.pt'))
    assert [s for s, _ in saved] == [2] and ck['step'] == 2
    assert all(torch.isfinite(v).all() for v in ck['model'].values())

# ----------------------------------------------------------------------------- 5. DDP


def weights_digest(model):
    return hashlib.sha256(b''.join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()


def torchrun(dump, args, tmp_path, extra_env=None):
    """`torchrun --standalone --nproc_per_node 2 tests/ddp_run.py DUMP ARGS` -> (result, per-rank weight digests)."""
    os.makedirs(dump)
    cwd = str(tmp_path / 'cwd')
    os.makedirs(cwd, exist_ok=True)
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        os.path.join(ROOT, 'tests', 'ddp_run.py'), dump, *args],
                       cwd=cwd, env=dict(ENV, **(extra_env or {})), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    assert os.listdir(cwd) == []  # nothing written outside --out
    return r, [open(os.path.join(dump, f'rank{k}.txt')).read() for k in (0, 1)]


def spawn_ranks(argv, logs, world=2, timeout=120, nan_from=None, extra_env=None):
    """train.main as `world` DDP ranks (gloo), each a `python tests/ddp_run.py LOGS ARGS` subprocess with the torchrun
    environment set by hand (no torchrun start-up; forking this process instead can deadlock gloo / OpenMP in a long
    test session). Each rank writes LOGS/rank<R>.log (stdout + stderr) and, when it finishes, LOGS/rank<R>.txt (its
    weights' digest). nan_from='STEP,RANK' makes that rank's loss NaN from STEP on; `extra_env` adds variables. Returns the exit codes; fails if a
    rank still runs after `timeout` seconds (a hang)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(world):
        env = dict(ENV, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1',
                   MASTER_PORT=str(port), **(extra_env or {}))
        if nan_from:
            env['DDP_RUN_NAN_FROM'] = nan_from
        log = open(os.path.join(logs, f'rank{r}.log'), 'w')
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'ddp_run.py'), logs, *argv],
                                      cwd=logs, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(1, timeout)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert len(codes) == world, f'{world - len(codes)} rank(s) hung'
    return codes


def test_ddp_rank0_writes_ranks_draw_their_own_noise_and_resume_exactly(pairs, tmp_path):
    """2 DDP ranks (gloo): 6 steps straight; 3 steps under torchrun, then resumed to 6 (2 rank processes). Rank 0 alone
    speaks and writes; the ranks hold identical weights but draw different noise at every step (each rank's own RNG
    stream, saved per rank in the checkpoint); the resumed run draws, logs and ends exactly as the straight one."""
    args = SR + ['--data', pairs, '--ckpt-every', '3', '--log-every', '1']
    record = {'DDP_RUN_RNG': '1'}  # tests/ddp_run.py: each rank's RNG-state digest at every loss
    out, logs = str(tmp_path / 'run'), {k: str(tmp_path / k) for k in ('straight', 'first', 'resumed')}
    os.makedirs(logs['straight'])
    os.makedirs(logs['resumed'])
    assert spawn_ranks(args + ['--out', str(tmp_path / 'straight_run'), '--max-iters', '6'], logs['straight'],
                       extra_env=record) == [0, 0]
    r, d1 = torchrun(logs['first'], args + ['--out', out, '--max-iters', '3'], tmp_path, extra_env=record)
    assert 'DDP world size 2' in r.stdout and r.stdout.count('model tiny') == 1  # rank 0 speaks, rank 1 does not
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'log.jsonl', 'loss.png', 'samples_0000003.png']
    assert d1[0] == d1[1]
    assert spawn_ranks(args + ['--out', out, '--max-iters', '6', '--resume'], logs['resumed'], extra_env=record) == [0, 0]
    said = [open(os.path.join(logs['resumed'], f'rank{k}.log')).read() for k in (0, 1)]
    assert 'resumed' in said[0] and 'resumed' not in said[1]
    d2 = [open(os.path.join(logs['resumed'], f'rank{k}.txt')).read() for k in (0, 1)]
    assert d2[0] == d2[1] != d1[0]
    rng = {k: [open(os.path.join(v, f'rank{r}_rng.txt')).read().split() for r in (0, 1)] for k, v in logs.items()}
    rank0, rank1 = rng['straight']
    assert len(rank0) == len(rank1) == 6 and all(a != b for a, b in zip(rank0, rank1))  # different noise per rank
    for k in (0, 1):  # each rank resumes its own stream: steps 4..6 draw what the uninterrupted run drew
        assert rng['first'][k] + rng['resumed'][k] == rng['straight'][k]
    lines = open(os.path.join(out, 'log.jsonl')).read().splitlines()
    rows = [json.loads(line) for line in lines]
    straight = losses([json.loads(line) for line in open(tmp_path / 'straight_run' / 'log.jsonl')])
    assert len(set(lines)) == len(lines) and [s for s, _ in straight] == list(range(1, 7)) and losses(rows) == straight
    assert [r['step'] for r in rows if r.get('eval')] == [3, 6]
    ck = checkpoint.load_checkpoint(os.path.join(out, 'ckpt.pt'), task='sr4_16')
    model = tasks.build_model('sr4_16', 'tiny')
    model.load_state_dict(ck['model'])
    assert ck['step'] == 6 and weights_digest(model) == d2[0]  # the checkpoint holds what the ranks trained
    assert len(ck['rng_ranks']) == 2 and not torch.equal(ck['rng_ranks'][0]['torch'], ck['rng_ranks'][1]['torch'])
    assert torch.equal(ck['rng']['torch'], ck['rng_ranks'][0]['torch'])  # 'rng': rank 0's, as before
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'log.jsonl', 'loss.png', 'samples_0000003.png', 'samples_0000006.png']


def test_ddp_a_nan_on_one_rank_stops_every_rank(pairs, tmp_path, monkeypatch):
    """Rank 1's loss turns NaN at step 3 (rank 0's only at step 4, through the averaged gradients): the flags are
    all-reduced at the flush, so both ranks stop at step 3, neither writes a checkpoint, nobody waits forever."""
    out = str(tmp_path / 'run')
    codes = spawn_ranks(SR + ['--data', pairs, '--out', out, '--ckpt-every', '2', '--log-every', '10', '--max-iters', '8'],
                        str(tmp_path), nan_from='3,1')
    logs = [open(tmp_path / f'rank{r}.log').read() for r in (0, 1)]
    assert codes == [2, 2], logs
    for log in logs:
        one_error_line(log, 'non-finite loss at step 3')
    assert checkpoint.load_checkpoint(os.path.join(out, 'ckpt.pt'))['step'] == 2


# ----------------------------------------------------------------------------- 6. download


def test_a_half_file_in_the_download_cache_never_passes_as_data(tmp_path):
    from test_data import _Handler, _toy_zip_bytes  # the local HTTP server of test_data.py
    import http.server
    import threading
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    body = _toy_zip_bytes()
    _Handler.routes, _Handler.hits = {'/toy.zip': (200, body, None)}, []
    threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
    try:
        dest = tmp_path / 'cache'
        os.makedirs(dest)
        (dest / 'toy_8_32.zip').write_bytes(body[:len(body) // 2])  # e.g. copied by hand, or an older tool's leftover
        with pytest.raises(data.DataError, match='not a folder or a valid .zip'):
            data.SRPairs(str(dest / 'toy_8_32.zip'), 8, 32)
        url = f'http://127.0.0.1:{httpd.server_address[1]}/toy.zip'
        path = data.download('toy_8_32', dest=str(dest), url=url, progress=False)
        assert _Handler.hits == ['/toy.zip'] and open(path, 'rb').read() == body  # fetched again, not trusted
        assert os.listdir(dest) == ['toy_8_32.zip'] and len(data.SRPairs(path, 8, 32)) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()
