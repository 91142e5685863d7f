"""Recipes as files (issue 32): `train.py --config FILE` reads TOML whose keys are train.py's flags (argparse names);
flags after --config override it; an unknown key or a bad value is one line naming the key and the file."""
import os
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402
from runtime import UsageError  # noqa: E402

CONFIGS = sorted(os.path.join(ROOT, 'configs', f) for f in os.listdir(os.path.join(ROOT, 'configs'))
                 if f.endswith('.toml'))


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative --out folders: nothing there holds a run


def test_the_shipped_configs_are_there():
    names = {os.path.basename(f) for f in CONFIGS}
    assert {'quickstart_cpu.toml', 'sr16_128_paper.toml', 'relay16_cpu.toml', 'relay16_64_cpu.toml',
            'relay64_256_rdm.toml', 'relay64_256_cpu.toml'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_every_config_parses_to_its_values(path):
    """Each key's value (read here with tomllib) is the flag train.py resolves; every line carries a comment."""
    with open(path, 'rb') as f:
        values = tomllib.load(f)
    no_data = [] if 'data' in values else ['--data', 'x']  # the paper's: FFHQ downloaded when --data is absent
    a = vars(train.get_args(['--config', path] + no_data))
    for key, value in values.items():
        assert a[key] == value, (key, a[key], value)
    assert a['config'] == path
    for line in open(path):
        if '=' in line and not line.lstrip().startswith('#'):
            assert '#' in line, line


def test_a_few_recipe_values():
    quick = train.get_args(['--config', os.path.join(ROOT, 'configs', 'quickstart_cpu.toml')])
    assert (quick.task, quick.model, quick.batch_size, quick.lr, quick.max_iters, quick.init) == \
        ('sr16_64', 'tiny', 4, 1e-3, 2100, 'orthogonal')
    assert (quick.residual, quick.pred, quick.project, quick.project_smooth, quick.dream, quick.temperature) == \
        (True, 'v', True, 10.0, True, 0.6)
    assert (quick.eval_n, quick.eval_steps, quick.eval_every, quick.holdout) == (100, 100, 2100, 100)
    assert (quick.data, quick.out) == ('data/ffhq128_16_64', 'runs/quickstart')
    rdm = train.get_args(['--config', os.path.join(ROOT, 'configs', 'relay64_256_rdm.toml')])
    assert (rdm.task, rdm.blur_sigma_max, rdm.prob_length, rdm.block_noise, rdm.s_noise) == \
        ('relay64_256', 2.0, 0.89, 0.15, 0.2)
    stage2 = train.get_args(['--config', os.path.join(ROOT, 'configs', 'relay16_64_cpu.toml')])
    assert (stage2.prob_length, stage2.s_noise, stage2.batch_size, stage2.lr, stage2.max_iters) == (0.5, 1.0, 8, 5e-4, 1500)
    cpu256 = train.get_args(['--config', os.path.join(ROOT, 'configs', 'relay64_256_cpu.toml')])
    assert (cpu256.task, cpu256.model, cpu256.prob_length, cpu256.s_noise, cpu256.blur_sigma_max, cpu256.block_noise) == \
        ('relay64_256', 'tiny', 0.5, 1.0, 3.0, 0.15)
    assert (cpu256.batch_size, cpu256.lr, cpu256.max_iters, cpu256.holdout, cpu256.dtype) == (4, 5e-4, 1400, 32, 'auto')


def write(tmp_path, text):
    path = tmp_path / 'recipe.toml'
    path.write_text(text)
    return str(path)


def test_a_flag_after_config_overrides_it_and_one_before_is_overridden(tmp_path):
    path = write(tmp_path, 'task = "sr4_16"  # t\nmodel = "tiny"  # m\nmax_iters = 50  # n\ndata = "d"  # d\n'
                           'dream = true  # on\n')
    a = train.get_args(['--config', path, '--max-iters', '7'])
    assert (a.max_iters, a.model, a.task, a.dream) == (7, 'tiny', 'sr4_16', True)
    b = train.get_args(['--max-iters', '7', '--config', path])
    assert b.max_iters == 50


@pytest.mark.parametrize('text, needles', [
    ('max_iter = 5  # a typo\n', ["unknown key 'max_iter' in", 'recipe.toml']),
    ('max_iters = "many"  # a string\n', ['recipe.toml', '--max-iters', "'many'"]),
    ('dream = 1  # not a bool\n', ['dream = 1 in', 'recipe.toml', 'true or false']),
    ('max_iters = [1, 2]  # a list\n', ['max_iters = [1, 2] in', 'recipe.toml']),
    ('max_iters = \n', ['recipe.toml', 'not valid TOML']),
])
def test_a_bad_config_is_one_line_naming_key_and_file(tmp_path, capsys, text, needles):
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as e:
        train.main(['--config', path])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('error: '), err
    for needle in needles:
        assert needle in err, err


def test_a_missing_config_file_is_one_line(tmp_path):
    with pytest.raises(UsageError, match='--config .*nowhere.toml: No such file'):
        train.get_args(['--config', str(tmp_path / 'nowhere.toml')])


def test_the_resolved_values_are_saved_in_the_checkpoint(tmp_path):
    """--config is a flag like the others: the checkpoint keeps every resolved value and the file's name."""
    import torch
    from PIL import Image
    import numpy as np
    import data
    os.makedirs(tmp_path / 'src')
    for i in range(6):
        g = np.random.default_rng(i)
        Image.fromarray(g.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((16, 16)).save(tmp_path / 'src' / f'{i}.png')
    data.prepare(str(tmp_path / 'src'), str(tmp_path / 'pairs'), 4, 16, val=2, progress=False)
    path = write(tmp_path, 'task = "sr4_16"  # t\nmodel = "tiny"  # m\nmax_iters = 2  # n\nbatch_size = 2  # b\n'
                           'timesteps = 50  # T\neval_n = 1  # e\neval_steps = 2  # s\ndevice = "cpu"  # cpu\n'
                           'dtype = "fp32"  # fp32\ndream = true  # DREAM\n')
    train.main(['--config', path, '--data', str(tmp_path / 'pairs'), '--out', str(tmp_path / 'run')])
    args = torch.load(tmp_path / 'run' / 'ckpt.pt', weights_only=True)['args']
    assert (args['config'], args['max_iters'], args['dream'], args['timesteps'], args['model']) == \
        (path, 2, True, 50, 'tiny')
