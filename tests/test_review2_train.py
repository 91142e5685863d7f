"""Review 2 (issue 30) on the training side: SIGTERM with loader workers, gamma == 1 in float32, checkpoint before
evaluation, held-out images checked at start-up, evaluation in batches at --eval-steps, native bf16 on CUDA, DDP
timeout, --resume refusing learning flags, the cosine horizon, DATA/val without DATA/train; and issue 32: the paper's
setting as the defaults, the CPU cost line. Tiny models, 4 -> 16 pixels, a few steps each."""
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import diffusion  # noqa: E402
import runtime  # noqa: E402
import train  # noqa: E402
import trainset  # noqa: E402

FAST = ['--model', 'tiny', '--batch-size', '2', '--eval-n', '2', '--eval-steps', '2', '--timesteps', '50',
        '--log-every', '5', '--eval-every', '1000', '--device', 'cpu', '--dtype', 'fp32']
SR = FAST + ['--task', 'sr4_16']
ENV = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg')


from test_reliability import pairs, smooth  # noqa: E402,F401  the same tiny sr4_16 data set


@pytest.fixture(autouse=True)
def quick_plots(monkeypatch):
    monkeypatch.setattr(train, 'plot_loss', lambda log, png: open(png, 'wb').close())


def fails(argv, capsys, *needles):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert 'Traceback' not in err, err
    err = err.splitlines()[-1]  # the one error line (after the progress bar's, if training started)
    assert err.startswith('error: '), err
    for needle in needles:
        assert needle in err, err
    return err


# ----------------------------------------------------------------------------- 1. SIGTERM with loader workers
def test_loader_workers_ignore_sigterm_and_sigint():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        trainset.worker_init(0)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_sigterm_to_the_process_group_with_two_workers_saves_a_resumable_checkpoint(pairs, tmp_path):
    """As torchrun or a scheduler stops a run: SIGTERM to the whole process group, loader workers included."""
    out = str(tmp_path / 'run')
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), *SR, '--data', pairs, '--out', out,
                             '--workers', '2', '--log-every', '1', '--ckpt-every', '1000', '--max-iters', '100000'],
                            cwd=str(tmp_path), env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        log = os.path.join(out, 'log.jsonl')
        t = time.time()
        while not (os.path.exists(log) and sum(1 for _ in open(log)) >= 3):
            assert proc.poll() is None and time.time() - t < 120, proc.communicate()[1][-2000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, stderr[-3000:]
    assert 'killed by signal' not in stderr and 'Traceback' not in stderr, stderr[-3000:]
    said = [line for line in stdout.splitlines() if line.startswith('SIGTERM: checkpoint saved at step ')]
    assert len(said) == 1, stdout
    step = int(said[0].split('at step ')[1].split()[0])
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['step'] == step >= 3
    train.main(SR + ['--data', pairs, '--out', out, '--resume', '--max-iters', str(step + 1)])
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['step'] == step + 1


# ----------------------------------------------------------------------------- 2. gamma == 1 in float32
class Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x, noise_level):
        return self.conv(x) + noise_level.reshape(-1, 1, 1, 1)


def test_a_drawn_gamma_of_exactly_one_gives_a_finite_x0_dream_loss():
    """betas all 0: every gamma of the grid is 1, so every draw is exactly 1 (as ~2.5e-5 of SR3's draws are in
    float32). The draw is capped at float32's largest value below 1, and --pred x0 --dream stays finite."""
    torch.manual_seed(0)
    diff = diffusion.GaussianDiffusion(Conv(), np.zeros(10), pred='x0')
    gamma = diff.sample_gamma(4, 'cpu')
    below_one = np.nextafter(np.float32(1), np.float32(0))
    assert (gamma.float() == torch.tensor(float(below_one))).all()
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    cond = torch.rand(4, 3, 8, 8) * 2 - 1
    for dream_p in (1.0, 0.0, None):
        loss = diff.loss(x0, cond, dream_p=dream_p)
        assert torch.isfinite(loss), dream_p


# ----------------------------------------------------------------------------- 4. checkpoint before evaluation
def test_a_failing_evaluation_keeps_the_checkpoint_of_its_step(pairs, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise runtime.UsageError('evaluation failed')
    monkeypatch.setattr(train, 'sample_and_score', broken)
    out = str(tmp_path / 'run')
    fails(SR + ['--data', pairs, '--out', out, '--max-iters', '8', '--ckpt-every', '4', '--eval-every', '4'], capsys,
          'evaluation failed')
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['step'] == 4


def test_a_bad_held_out_image_stops_the_run_before_training(pairs, tmp_path, capsys):
    bad = tmp_path / 'bad'
    os.system(f'cp -r {pairs} {bad}')
    name = sorted(os.listdir(bad / 'val' / 'hr_16'))[0]
    smooth(0, 20, 20).save(bad / 'val' / 'hr_16' / name)  # wrong size
    out = tmp_path / 'run'
    fails(SR + ['--data', str(bad), '--out', str(out), '--max-iters', '4', '--eval-every', '4'], capsys, name)
    assert not (out / 'log.jsonl').exists() and not (out / 'ckpt.pt').exists()


# ----------------------------------------------------------------------------- 13. evaluation in batches, at eval_steps
def fake_scores(calls):
    """A sample_and_score that scores each image by its index (item 'hr' holds the index): psnr = mean index."""
    def score(model, cfg, batch, steps, **kwargs):
        index = batch['hr'][:, 0, 0, 0]
        calls.append((len(index), steps))
        return {'psnr': float(index.mean()), 'n': len(index)}, torch.zeros(len(index), 3, 4, 4), 1
    return score


def test_evaluation_samples_eval_batch_images_at_a_time_and_averages_over_all(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, 'sample_and_score', fake_scores(calls))
    a = train.get_args(SR + ['--data', 'x', '--out', str(tmp_path), '--eval-n', '7', '--eval-batch', '3'])
    batch = {'hr': torch.arange(7.0).reshape(7, 1, 1, 1).expand(7, 3, 4, 4)}
    res = train.run_eval(None, a, batch, 1, torch.device('cpu'), torch.float32)
    assert [n for n, _ in calls] == [3, 3, 1]
    assert res['psnr'] == pytest.approx(3.0)  # (0 + 1 + ... + 6) / 7, not the mean of the batch means (1, 4, 6)


def test_relay_stage1_evaluation_samples_with_eval_steps(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, 'sample_and_score', fake_scores(calls))
    a = train.get_args(FAST + ['--task', 'relay16', '--data', 'x', '--out', str(tmp_path), '--eval-steps', '60',
                        '--timesteps', '100'])
    train.run_eval(None, a, {'hr': torch.zeros(2, 3, 4, 4)}, 1, torch.device('cpu'), torch.float32)
    assert [steps for _, steps in calls] == [60]


# ----------------------------------------------------------------------------- 5. native bf16 on CUDA (mocked)
def test_auto_dtype_on_a_gpu_with_emulated_bf16_is_fp32(monkeypatch):
    """torch counts pre-Ampere emulation as bf16 support unless asked not to (T4, V100)."""
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation)
    dtype, why = runtime.pick_dtype('auto', torch.device('cuda'))
    assert dtype == torch.float32 and 'no bf16 in hardware' in why
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)  # Ampere and later
    assert runtime.pick_dtype('auto', torch.device('cuda'))[0] == torch.bfloat16


# ----------------------------------------------------------------------------- 13. DDP timeout from the evaluation
def test_ddp_timeout_is_sized_to_the_evaluation(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setattr(runtime.dist, 'init_process_group', lambda backend, **kw: seen.update(backend=backend, **kw))
    runtime.setup_ddp(torch.device('cpu'), timeout_s=5000)
    assert seen == dict(backend='gloo', timeout=datetime.timedelta(seconds=5000))

    def stop(device, timeout_s=None):
        seen['train'] = timeout_s
        raise runtime.UsageError('stop here')
    monkeypatch.setattr(train, 'setup_ddp', stop)
    a = train.get_args(SR + ['--data', 'x', '--out', str(tmp_path / 'r'), '--eval-n', '100', '--eval-steps', '50'])
    with pytest.raises(runtime.UsageError):
        train.train(a)
    assert seen['train'] == 2.0 * 100 * 50 > 600  # NCCL's default: 10 min


# ----------------------------------------------------------------------------- 8. --resume and learning flags
@pytest.fixture(scope='module')
def finished(pairs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('finished') / 'run')
    train.main(SR + ['--data', pairs, '--out', out, '--max-iters', '2', '--lr-schedule', 'cosine', '--lr-horizon', '4'])
    return out


@pytest.mark.parametrize('flag, value', [
    ('--schedule', 'cosine'), ('--timesteps', '60'), ('--beta-start', '1e-5'), ('--beta-end', '2e-2'),
    ('--loss', 'l2'), ('--dream', None), ('--blur-sigma-max', '2.0'), ('--prob-length', '0.89'),
    ('--block-noise', '0.3'), ('--lr', '3e-4'), ('--batch-size', '4'), ('--seed', '3'), ('--ema-decay', '0.99')])
def test_resume_refuses_a_changed_learning_flag(flag, value, finished, pairs, capsys):
    extra = [flag] if value is None else [flag, value]
    fails(SR + ['--data', pairs, '--out', finished, '--resume', '--max-iters', '3', '--lr-schedule', 'cosine']
          + extra, capsys, f'{finished}/ckpt.pt was trained', flag)
    assert torch.load(os.path.join(finished, 'ckpt.pt'), weights_only=True)['step'] == 2


def test_resume_allows_iterations_logging_and_evaluation_flags(pairs, tmp_path):
    out = str(tmp_path / 'run')
    train.main(SR + ['--data', pairs, '--out', out, '--max-iters', '2'])
    train.main(SR + ['--data', pairs, '--out', out, '--resume', '--max-iters', '3', '--log-every', '1',
                     '--eval-every', '3', '--eval-n', '1', '--eval-steps', '3', '--ckpt-every', '5',
                     '--temperature', '0.5', '--workers', '0'])
    ck = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ck['step'] == 3 and ck['args']['eval_steps'] == 3


# ----------------------------------------------------------------------------- 10. the cosine horizon
def test_cosine_learning_rate_follows_its_horizon_not_max_iters():
    a = train.get_args(['--data', 'x', '--lr', '1e-3', '--lr-schedule', 'cosine', '--max-iters', '20000',
                        '--lr-horizon', '20000'])
    a.lr_horizon = 10000  # a run started with --max-iters 10000, resumed with 20000
    assert train.lr_at(a, 5000) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # 0.50, not 0.85
    assert train.lr_at(a, 10000) == pytest.approx(0.0, abs=1e-12)


def test_resume_keeps_the_saved_horizon_and_refuses_to_run_past_it(finished, pairs, capsys):
    assert torch.load(os.path.join(finished, 'ckpt.pt'), weights_only=True)['args']['lr_horizon'] == 4
    cosine = SR + ['--data', pairs, '--out', finished, '--resume', '--lr-schedule', 'cosine']
    fails(cosine + ['--max-iters', '6'], capsys, '--max-iters 6 runs past', '--lr-horizon 4')
    fails(SR + ['--data', pairs, '--out', 'new_run', '--lr-schedule', 'cosine', '--max-iters', '6',
                '--lr-horizon', '4'], capsys, '--max-iters 6 runs past')


def test_resume_with_a_new_horizon_says_the_jump(pairs, tmp_path, capsys):
    out = str(tmp_path / 'run')
    cosine = SR + ['--data', pairs, '--out', out, '--lr-schedule', 'cosine', '--lr', '1e-3']
    train.main(cosine + ['--max-iters', '2'])  # horizon 2: the learning rate of step 3 would be 0
    capsys.readouterr()
    train.main(cosine + ['--resume', '--max-iters', '3', '--lr-horizon', '4'])
    jump = 1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 4))
    assert f'--lr-horizon 2 -> 4: the cosine learning rate jumps from 0 to {jump:.3g}' in capsys.readouterr().out
    rows = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert [r['lr'] for r in rows if r['step'] == 3 and 'lr' in r] == [pytest.approx(jump)]


# ----------------------------------------------------------------------------- 9. DATA/val without DATA/train
def test_data_with_val_but_no_train_is_refused(tmp_path, capsys):
    root = tmp_path / 'faces'
    os.makedirs(root / 'val')
    for i in range(6):
        smooth(i, 16, 16).save(root / f'{i:02d}.png')
    smooth(9, 16, 16).save(root / 'val' / 'held.png')
    fails(FAST + ['--task', 'relay4_16', '--data', str(root), '--out', str(tmp_path / 'r'), '--max-iters', '1'],
          capsys, f'{root} has val/ but no train/')


# ----------------------------------------------------------------------------- issue 32: the paper's setting by default
def test_no_flags_is_the_papers_setting():
    """`train.py --task sr16_128 --dream` is configs/sr16_128_paper.toml (SR3's network, schedule, optimiser)."""
    a = vars(train.get_args(['--task', 'sr16_128', '--dream', '--data', 'x']))
    with open(os.path.join(ROOT, 'configs', 'sr16_128_paper.toml'), 'rb') as f:
        paper = tomllib.load(f)
    assert {k: a[k] for k in paper if k != 'out' and not k.startswith('eval') and k != 'ckpt_every'} == \
        {k: v for k, v in paper.items() if k != 'out' and not k.startswith('eval') and k != 'ckpt_every'}
    assert (a['model'], a['schedule'], a['timesteps'], a['beta_start'], a['beta_end']) == \
        ('paper', 'linear', 2000, 1e-6, 1e-2)
    assert (a['lr'], a['lr_schedule'], a['batch_size'], a['max_iters'], a['loss']) == (1e-4, 'constant', 4, 10 ** 6, 'l1')


def test_on_a_cpu_the_paper_network_first_says_its_cost(tmp_path, monkeypatch, capsys):
    """Before the data sets are built (a missing --data fails after the line)."""
    monkeypatch.setattr(train, 'time_iterations', lambda *args, **kwargs: 9.0)
    with pytest.raises(SystemExit):
        train.main(['--task', 'sr16_128', '--dream', '--data', str(tmp_path / 'missing'), '--out', str(tmp_path / 'r')])
    captured = capsys.readouterr()
    days = 9.0 * 1e6 / 86400
    assert captured.out.splitlines()[-1] == (  # after the device line, before any data is read
        f'no GPU: one sr16_128 iteration of --model paper at batch 4 takes 9.0 s on this CPU (median of 2 timed): '
        f'--max-iters 1,000,000 would take {days:,.1f} days here; the CPU recipe: '
        'python train.py --config configs/quickstart_cpu.toml')
    assert 'missing' in captured.err


def test_timing_iterations_leaves_the_run_random_state_alone(tmp_path):
    a = train.get_args(SR + ['--data', 'x', '--out', str(tmp_path)])
    torch.manual_seed(5)
    before = torch.get_rng_state()
    seconds = train.time_iterations(train.run_flags(a), torch.device('cpu'), torch.float32)
    assert seconds > 0 and torch.equal(torch.get_rng_state(), before)
