"""The shipped models in pretrained/ (issue 32 item 4): each one that is there loads with weights_only=True, is small
and in bf16, and rebuilds its network; where ../shared/data is present the shipped SR model beats bicubic on 16
held-out faces. Every test skips when its file (or the data) is absent, as on a checkout without the weights."""
import glob
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import checkpoint  # noqa: E402
import data  # noqa: E402
import metrics  # noqa: E402
import sample  # noqa: E402
from tasks import parse_task  # noqa: E402

PRETRAINED = os.path.join(ROOT, 'pretrained')
SHIPPED = sorted(glob.glob(os.path.join(PRETRAINED, '*.pt')))
FACES = os.path.join(ROOT, '..', 'shared', 'data', 'faces')
MAX_BYTES = 2.5 * 2 ** 20


@pytest.mark.skipif(not SHIPPED, reason='no pretrained/*.pt in this checkout')
@pytest.mark.parametrize('path', SHIPPED, ids=os.path.basename)
def test_a_shipped_model_is_small_bf16_and_loads(path):
    assert os.path.getsize(path) < MAX_BYTES
    state = torch.load(path, map_location='cpu', weights_only=True)
    assert state['format'] == checkpoint.PRETRAINED_FORMAT and 'opt' not in state and 'model' not in state
    floats = [v for v in state['ema'].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.bfloat16 for v in floats)
    stem = os.path.splitext(os.path.basename(path))[0]
    assert state['args']['task'] == stem  # the file name says the task (sample.py picks SR models by it)
    net, cfg = checkpoint.load_model(path)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in net.parameters())


SR = os.path.join(PRETRAINED, 'sr16_64.pt')


@pytest.mark.skipif(not os.path.isfile(SR), reason='pretrained/sr16_64.pt is not in this checkout')
@pytest.mark.skipif(not os.path.isdir(FACES), reason='no ../shared/data/faces (held-out faces) beside the repository')
def test_the_shipped_sr_model_beats_bicubic_on_held_out_faces():
    """faces/00000-00015 (never trained on): each face as the demo takes a photo (sample.sr_input), super-resolved
    with the demo's defaults (sample.SR_STEPS, seed 0); mean PSNR against the original above bicubic's."""
    torch.manual_seed(0)
    model, cfg = checkpoint.load_model(SR)
    task = parse_task(cfg['task'])
    files = [os.path.join(FACES, f'{i:05d}.png') for i in range(16)]
    pairs = [sample.sr_input(data.load_image(f), f, task['lr'], task['hr']) for f in files]
    lr = torch.stack([p[0] for p in pairs])
    hr = torch.stack([p[1] for p in pairs])
    out, bicubic = sample.super_resolve(model, cfg, lr, sample.SR_STEPS, generator=torch.Generator().manual_seed(0))
    sr_psnr, bicubic_psnr = metrics.psnr(out, hr).mean().item(), metrics.psnr(bicubic, hr).mean().item()
    assert sr_psnr > bicubic_psnr, (sr_psnr, bicubic_psnr)


def load_scorer():
    import importlib.util  # by path: `import pretrained` could find the pretrained/ folder as a namespace package
    path = os.path.join(ROOT, 'experiments', 'pretrained.py')
    spec = importlib.util.spec_from_file_location('pretrained_scores', path)
    pretrained = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrained)
    return pretrained


def test_relay_scores_use_faces_at_their_own_size():
    """experiments/pretrained.py scores a relay stage 2 above 128 pixels on faces256's held-out 32, never on 128-pixel
    faces upsampled to the target (which a 256 model would 'restore' to a blurred truth)."""
    pretrained = load_scorer()
    a = pretrained.argparse.Namespace(faces='F128', faces256='F256', n=100)
    assert pretrained.relay_faces(a, 64) == ('F128', 100)
    assert pretrained.relay_faces(a, 128) == ('F128', 100)
    assert pretrained.relay_faces(a, 256) == ('F256', 32)
    assert pretrained.relay_faces(pretrained.argparse.Namespace(faces='F128', faces256='F256', n=8), 256) == ('F256', 8)


RELAY16_64 = os.path.join(PRETRAINED, 'relay16_64.pt')


@pytest.mark.skipif(not os.path.exists(RELAY16_64), reason='no pretrained/relay16_64.pt in this checkout')
def test_kept_scores_get_the_shipped_files_label_and_seed(tmp_path):
    """A row kept from results/pretrained/scores.csv (same file, step, n, dtype) is not scored again, but gets the label
    and the training seed the shipped file records, so every row carries task, label, seed (issue 29 item 4)."""
    pretrained = load_scorer()
    ck = torch.load(RELAY16_64, map_location='cpu', weights_only=True)
    (tmp_path / 'models').mkdir()
    os.symlink(RELAY16_64, tmp_path / 'models' / 'relay16_64.pt')
    out = tmp_path / 'scores.csv'
    out.write_text('file,task,step,n,steps,dtype,psnr\n'
                   f"relay16_64.pt,relay16_64,{ck['step']},7,40,float32,99.0\n")
    pretrained.main(['--pretrained-dir', str(tmp_path / 'models'), '--out', str(out), '--n', '7', '--dtype', 'fp32'])
    rows = list(pretrained.csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 1 and rows[0]['psnr'] == '99.0'  # kept, not scored again
    assert rows[0]['seed'] == str(ck['args']['seed'])
    assert rows[0]['label'].startswith('relay16_64.pt') and '40 steps' in rows[0]['label']
