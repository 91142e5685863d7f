"""Issue 13 items 1-3 and 7-10: per-rank DDP seeds and RNG states (the DDP run itself is in test_reliability.py),
each rank's own CUDA RNG state, generators on the sampling device, --dtype auto from the hardware's flags, no training
on DREAM's validation faces, README accuracy."""
import os
import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoint  # noqa: E402
import data  # noqa: E402
import relay  # noqa: E402
import runtime  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402
from test_reliability import RELAY, smooth  # noqa: E402


# ----------------------------------------------------------------------------- 1. DDP: per-rank noise, exact resume
# (the DDP run itself: tests/test_reliability.py::test_ddp_rank0_writes_ranks_draw_their_own_noise_and_resume_exactly)
def test_rank_seeds_differ_and_single_process_seeding_is_unchanged():
    runtime.seed_everything(5, rank=0)
    a = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(a, torch.rand(3))  # rank 0 (and a single process) seeds with --seed itself
    runtime.seed_everything(5, rank=1)
    assert not torch.equal(a, torch.rand(3))
    assert runtime.rank_seed(5, 1) == 5 + runtime.RANK_SEED_STRIDE


def test_resume_state_per_rank_and_old_checkpoints():
    new = {'rng': 'r0', 'rng_ranks': ['r0', 'r1']}
    assert checkpoint.rank_rng_state(new, 1, 2) == 'r1' and checkpoint.rank_rng_state(new, 0, 2) == 'r0'
    old = {'rng': 'r0'}  # before per-rank states: a single process resumes from 'rng'
    assert checkpoint.rank_rng_state(old, 0, 1) == 'r0'
    assert checkpoint.rank_rng_state(old, 1, 2) is None  # another world size: no state to resume, said in one line
    assert checkpoint.rank_rng_state(new, 0, 3) is None


# ----------------------------------------------------------------------------- 2. CUDA RNG: each rank's own device
class FakeCuda:
    """torch.cuda's RNG functions, recorded: get_rng_state_all (every GPU, from rank 0) must not be used."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'get_rng_state', self.get)
        monkeypatch.setattr(torch.cuda, 'set_rng_state', self.set)
        monkeypatch.setattr(torch.cuda, 'get_rng_state_all', self.forbidden)
        monkeypatch.setattr(torch.cuda, 'set_rng_state_all', self.forbidden)

    def get(self, device='cuda'):
        self.calls.append(('get', torch.device(device)))
        return torch.tensor([torch.device(device).index], dtype=torch.uint8)

    def set(self, state, device='cuda'):
        self.calls.append(('set', int(state[0]), torch.device(device)))

    def forbidden(self, *a, **k):
        raise AssertionError('the state of every GPU: a rank must save and restore its own')


def test_each_rank_saves_and_restores_its_own_cuda_rng_state(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    gpu1 = torch.device('cuda', 1)
    state = checkpoint.rng_state(gpu1)
    assert cuda.calls == [('get', gpu1)] and int(state['cuda'][0]) == 1
    checkpoint.set_rng_state(state, gpu1)
    assert cuda.calls[-1] == ('set', 1, gpu1)
    cuda.calls.clear()
    cpu_state = checkpoint.rng_state(torch.device('cpu'))  # a CPU run touches no CUDA state
    checkpoint.set_rng_state(dict(cpu_state, cuda=state['cuda']), torch.device('cpu'))
    assert 'cuda' not in cpu_state and cuda.calls == []


# ----------------------------------------------------------------------------- 3. generators follow the device
def test_make_generator_and_generator_on_follow_the_device():
    g = runtime.make_generator(3, 'cpu')
    assert g.device == torch.device('cpu') and torch.equal(torch.rand(2, generator=g),
                                                           torch.rand(2, generator=torch.Generator().manual_seed(3)))
    assert runtime.generator_on('cpu', g) is g and runtime.generator_on('cpu', None) is None


def test_relay_sampling_gets_a_generator_made_for_the_sampling_device(tmp_path, monkeypatch):
    faces = tmp_path / 'faces'
    os.makedirs(faces)
    for i in range(6):
        smooth(i, 16, 16).save(faces / f'{i:02d}.png')
    for task in ('relay4', 'relay4_16'):
        args = list(RELAY)
        args[args.index('--task') + 1] = task
        train.main(args + ['--data', str(faces), '--out', str(tmp_path / task), '--max-iters', '1'])
    made, seen = {}, []
    real_make = sample.make_generator

    def spy_make(seed, device):
        g = real_make(seed, device)
        made[id(g)] = torch.device(device)
        return g

    def spy_sampler(name, real):
        def run(D, x, *args, generator=None, **kwargs):
            seen.append((name, id(generator), x.device))
            return real(D, x, *args, generator=generator, **kwargs)
        return run

    monkeypatch.setattr(sample, 'make_generator', spy_make)
    monkeypatch.setattr(relay, 'edm_sampler', spy_sampler('stage 1', relay.edm_sampler))
    monkeypatch.setattr(relay, 'relay_sampler', spy_sampler('stage 2', relay.relay_sampler))
    pngs = []
    for seed, folder in ((0, 'gen'), (0, 'again'), (1, 'other')):
        sample.main(['--relay', '--ckpt-first', str(tmp_path / 'relay4' / 'ckpt.pt'), '--ckpt-second',
                     str(tmp_path / 'relay4_16' / 'ckpt.pt'), '--n', '2', '--out', str(tmp_path / folder),
                     '--device', 'cpu', '--dtype', 'fp32', '--steps-first', '3', '--steps-second', '3',
                     '--seed', str(seed)])
        pngs.append(sorted(p for p in os.listdir(tmp_path / folder) if p.endswith('.png') and p != 'grid.png'))
        pngs[-1] = [np.asarray(Image.open(tmp_path / folder / p)) for p in pngs[-1]]
    assert [name for name, _, _ in seen] == ['stage 1', 'stage 2'] * 3
    # the real samplers draw from the generator they are handed: the same seed repeats the images, another does not
    assert len(pngs[0]) == 2 and all(np.array_equal(a, b) for a, b in zip(pngs[0], pngs[1]))
    assert not any(np.array_equal(a, b) for a, b in zip(pngs[0], pngs[2]))
    for _, gen_id, device in seen:  # the generator each sampler drew with was made for the device it samples on
        assert gen_id in made and made[gen_id] == device


# ----------------------------------------------------------------------------- 7, 8. --dtype auto from the hardware
AMX = 'processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n'
AVX512_BF16 = 'processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n'
AVX2 = 'processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 fma\n'


@pytest.mark.parametrize('text, dtype, flag', [(AMX, torch.bfloat16, 'amx_bf16'), (AVX512_BF16, torch.bfloat16,
                                                                                   'avx512_bf16'),
                                               (AVX2, torch.float32, 'no amx_bf16')])
def test_cpu_dtype_comes_from_the_cpu_flags_every_time(text, dtype, flag, tmp_path):
    path = tmp_path / 'cpuinfo'
    path.write_text(text)
    choices = [runtime.pick_dtype('auto', torch.device('cpu'), cpuinfo_path=str(path)) for _ in range(3)]
    assert all(c == choices[0] for c in choices)  # the same machine chooses the same way every time
    assert choices[0][0] == dtype and flag in choices[0][1]
    missing = runtime.pick_dtype('auto', torch.device('cpu'), cpuinfo_path=str(tmp_path / 'none'))
    assert missing[0] == torch.float32
    assert runtime.describe(dtype) == ('bf16 autocast + channels_last' if dtype == torch.bfloat16 else 'fp32')


def test_cuda_dtype_is_bf16_only_where_the_gpu_supports_it(monkeypatch):
    gpu = torch.device('cuda', 0)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: False)
    dtype, why = runtime.pick_dtype('auto', gpu)
    assert dtype == torch.float32 and 'no bf16' in why and 'fp32' in why
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    assert runtime.pick_dtype('auto', gpu)[0] == torch.bfloat16
    assert runtime.pick_dtype('fp32', gpu) == (torch.float32, 'requested')


# ----------------------------------------------------------------------------- 9. DREAM's validation faces
@pytest.fixture
def eval_faces(tmp_path, monkeypatch):
    """A tiny stand-in for data.download('celebahq_16_128') (3 faces) and a training set of 5 (16 -> 128)."""
    rng = np.random.default_rng(0)
    for folder, n in (('dl_src', 3), ('train_src', 5)):
        os.makedirs(tmp_path / folder)
        for i in range(n):
            img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((128, 128), Image.BICUBIC)
            img.save(tmp_path / folder / f'{i:02d}.png')
    data.prepare(str(tmp_path / 'dl_src'), str(tmp_path / 'dream'), 16, 128, progress=False)
    data.prepare(str(tmp_path / 'train_src'), str(tmp_path / 'mine'), 16, 128, progress=False)
    asked = []

    def download(name, *a, **k):
        asked.append(name)
        return str(tmp_path / 'dream')
    monkeypatch.setattr(data, 'download', download)
    return tmp_path, asked


def test_without_data_sr16_128_fetches_ffhq_not_the_validation_faces(eval_faces, capsys, monkeypatch):
    """No --data: sr16_128 downloads FFHQ (issue 32; tests/test_download.py covers it with a server). Offline (a
    mirror on a closed port) it stops in one line naming FFHQ's file, having fetched no validation faces to train on."""
    root, asked = eval_faces
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        closed = f'http://127.0.0.1:{s.getsockname()[1]}'
    monkeypatch.setenv('DREAM_RELAY_MIRROR', closed)
    monkeypatch.setenv('DREAM_RELAY_CACHE', str(root / 'cache'))
    with pytest.raises(SystemExit) as e:
        train.main(['--task', 'sr16_128', '--model', 'tiny', '--out', str(root / 'never')])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and '\n' not in err and closed + '/thumbnails128x128.zip' in err
    assert asked == [] and not os.path.exists(root / 'never')


def test_the_validation_faces_are_the_held_out_set_and_a_smoke_run_says_what_it_is(eval_faces, capsys):
    root, asked = eval_faces
    a = train.get_args(['--task', 'sr16_128', '--model', 'tiny', '--data', str(root / 'mine'), '--out', str(root / 'r')])
    train_set, val_set, note = train.datasets(a)
    assert asked == ['celebahq_16_128'] and len(train_set) == 5 and len(val_set) == 3 and 'validation faces' in note
    smoke = train.get_args(['--task', 'sr16_128', '--model', 'tiny', '--smoke-on-eval-set', '--out', str(root / 's')])
    train_set, val_set, note = train.datasets(smoke)
    assert len(train_set) == len(val_set) == 3 and 'WARNING' in note and 'WARNING' in capsys.readouterr().out
    for argv in (['--smoke-on-eval-set', '--data', str(root / 'mine')], ['--smoke-on-eval-set', '--task', 'sr8_32']):
        with pytest.raises(runtime.UsageError, match='--smoke-on-eval-set'):
            train.get_args(['--model', 'tiny', '--out', str(root / 'x')] + argv)


# ----------------------------------------------------------------------------- 10. README
def test_readme_describes_the_official_order_inf_path_as_it_is():
    readme = open(os.path.join(ROOT, 'README.md')).read()
    assert 'detached copy' not in readme and 'loss exactly 0' not in readme
    assert 'the DREAM paper setting' not in readme
    assert "order='inf'" in readme and 'dropout' in readme and 'never sees the true noise' in readme
