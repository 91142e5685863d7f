"""A checkpoint from another version of dream-relay is refused in one line; this version's loads.

No code reads older layouts (issue 27): a file whose format number differs, or whose flags do not name the whole
network (norm_groups, upsample: what older versions left out), is a one-line UsageError at load_checkpoint, and the
sampling command line prints that line and exits with status 2.
"""
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

import checkpoint
import tasks
from runtime import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def this_version(tmp_path, **changes):
    """A checkpoint as train.py writes one (save_checkpoint stamps the format), of a tiny sr8_32 network; `changes`
    edits the flags (None deletes one), `format=` overrides the stamp."""
    args = dict(tasks.LOSS_DEFAULTS, task='sr8_32', model='tiny', norm_groups=8, upsample='nearest', seed=0)
    fmt = changes.pop('format', None)
    for key, value in changes.items():
        if value is None:
            del args[key]
        else:
            args[key] = value
    net = tasks.build_model('sr8_32', 'tiny', norm_groups=8)
    state = dict(model=net.state_dict(), ema=net.state_dict(), opt={}, rng={}, step=1, args=args)
    path = str(tmp_path / 'ckpt.pt')
    checkpoint.save_checkpoint(path, state)
    if fmt is not None:  # another version's stamp, written past save_checkpoint
        saved = torch.load(path, weights_only=True)
        saved['format'] = fmt
        torch.save(saved, path)
    return path


def test_this_versions_checkpoint_loads_and_is_stamped(tmp_path):
    path = this_version(tmp_path)
    assert torch.load(path, weights_only=True)['format'] == checkpoint.FORMAT == 1
    net, args = checkpoint.load_model(path)
    assert net.conv_out[0].num_groups == 8 and args['upsample'] == 'nearest'


@pytest.mark.parametrize('changes, why', [
    (dict(norm_groups=None), 'its flags lack norm_groups'),
    (dict(upsample=None), 'its flags lack upsample'),
    (dict(norm_groups=None, upsample=None), 'its flags lack norm_groups, upsample'),
    (dict(format=0), 'format 0, not 1'),
    (dict(format=2), 'format 2, not 1'),
])
def test_a_checkpoint_from_another_version_is_refused_in_one_line(tmp_path, changes, why):
    path = this_version(tmp_path, **changes)
    with pytest.raises(UsageError) as e:
        checkpoint.load_model(path)
    message = str(e.value)
    assert message == f'checkpoint {path}: written by another version of dream-relay ({why}); retrain with this one'
    assert '\n' not in message


def test_the_sampling_command_prints_the_one_line_and_exits_2(tmp_path):
    path = this_version(tmp_path, norm_groups=None)
    inputs = tmp_path / 'in'
    inputs.mkdir()
    Image.new('RGB', (16, 16), (90, 120, 150)).save(inputs / 'face.png')  # a valid input: the checkpoint is what fails
    proc = subprocess.run([sys.executable, 'sample.py', '--ckpt', path, '--input', str(inputs), '--out',
                           str(tmp_path / 'out'), '--steps', '2'], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f'error: checkpoint {path}: written by another version of dream-relay (its flags lack '
                     'norm_groups); retrain with this one']
    assert not os.path.exists(tmp_path / 'out')
