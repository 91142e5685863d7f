"""Tests that fail when the code is wrong (issue 31): each checks a result against an independent reference (a closed
form in float64, a hand-computed EMA, the images' own files, a hand-computed mean) rather than against the code under
test. Each names the one-line bug it was seen to catch."""
import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import data
import metrics
import runtime
import tasks
import train
from diffusion import beta_schedule
from test_train import smooth_faces

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- beta schedules: closed forms
def expected_betas(kind, T, start, end, s=8e-3):
    """The schedules written out element by element in float64 (SR3's make_beta_schedule; cosine: Nichol & Dhariwal
    2021 Eq. 17, alpha_bar(t) = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) * pi/2)^2, beta clipped at 0.999)."""
    def lin(i, n, lo, hi):
        return lo + (hi - lo) * i / (n - 1) if n > 1 else lo
    if kind == 'linear':
        return [lin(i, T, start, end) for i in range(T)]
    if kind == 'quad':
        return [lin(i, T, math.sqrt(start), math.sqrt(end)) ** 2 for i in range(T)]
    if kind in ('warmup10', 'warmup50'):
        w = int(T * (0.1 if kind == 'warmup10' else 0.5))
        return [lin(i, w, start, end) if i < w else end for i in range(T)]
    if kind == 'const':
        return [end] * T
    if kind == 'jsd':
        return [1.0 / (T - i) for i in range(T)]
    if kind == 'cosine':
        def f(t):
            return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        return [min(1 - f(t) / f(t - 1), 0.999) for t in range(1, T + 1)]
    raise AssertionError(kind)


@pytest.mark.parametrize('kind', ['linear', 'quad', 'warmup10', 'warmup50', 'const', 'jsd', 'cosine'])
@pytest.mark.parametrize('T', [20, 1000])
def test_every_beta_schedule_matches_its_closed_form(kind, T):
    """Seen failing: quad without its square, warm-up over the wrong fraction, jsd reversed, cosine without its
    offset s."""
    start, end = 1e-4, 2e-2
    got = beta_schedule(kind, T, start, end)
    assert got.dtype == np.float64 and got.shape == (T,)
    np.testing.assert_allclose(got, expected_betas(kind, T, start, end), rtol=1e-12, atol=1e-15)


def test_beta_schedules_hand_values():
    """A few values worked out on paper: quad's midpoint is ((sqrt(a) + sqrt(b)) / 2)^2, not (a + b) / 2."""
    quad = beta_schedule('quad', 3, 1e-4, 1e-2)
    assert quad[1] == pytest.approx(((0.01 + 0.1) / 2) ** 2, rel=1e-12)  # 0.003025; linear's would be 0.00505
    assert list(beta_schedule('jsd', 4)) == pytest.approx([1 / 4, 1 / 3, 1 / 2, 1])
    assert list(beta_schedule('warmup10', 20, 0.0, 1.0)) == pytest.approx([0.0, 1.0] + [1.0] * 18)
    cosine = beta_schedule('cosine', 1000)
    assert cosine[-1] == 0.999 and 0 < cosine[0] < 1e-4  # clipped at the end, tiny at the start
    with pytest.raises(ValueError, match="unknown beta schedule 'sigmoid'"):
        beta_schedule('sigmoid', 10)


# ----------------------------------------------------------------------------- training step: EMA, grad accumulation
@pytest.fixture(scope='module')
def flat_pairs(tmp_path_factory):
    """12 distinct smooth images as 8 -> 32 pairs in one folder (no val split)."""
    root = tmp_path_factory.mktemp('holes')
    smooth_faces(root / 'src', 12)
    data.prepare(str(root / 'src'), str(root / 'pairs'), lr=8, hr=32, progress=False)
    return root


STEP = ['--task', 'sr8_32', '--model', 'tiny', '--timesteps', '100', '--beta-end', '0.1', '--eval-n', '2',
        '--eval-steps', '2', '--log-every', '1', '--dtype', 'fp32', '--device', 'cpu']


def initial_weights(seed):
    """The network train.py builds before its first step: seeded as train.py seeds it (rank 0), tiny preset."""
    runtime.seed_everything(seed, 0)
    return tasks.build_model('sr8_32', 'tiny', norm_groups=tasks.preset_norm_groups('tiny')).state_dict()


def test_ema_is_the_hand_computed_average_of_the_raw_weights(flat_pairs, tmp_path):
    """ema_0 = w_0, ema_k = d_k ema_{k-1} + (1 - d_k) w_k with the warm-up decay d_k = min(decay, (1 + k) / (10 + k)),
    computed here in float64 from the raw weights of snapshots 1, 2, 3. Seen failing: a plain copy of the raw weights
    (lerp weight 1), the decay of step k - 1, no warm-up."""
    out = tmp_path / 'ema'
    decay = 0.5  # below the warm-up's 2/11, 3/12, 4/13 from step 3 on: both branches of the min are used
    train.main(STEP + ['--data', str(flat_pairs / 'pairs'), '--out', str(out), '--max-iters', '3', '--batch-size',
                       '2', '--lr', '1e-2', '--snapshot-every', '1', '--eval-every', '100', '--ema-decay', str(decay)])
    raw = [initial_weights(0)]
    for k in (1, 2, 3):
        ck = torch.load(out / f'ckpt_{k:07d}.pt', weights_only=True)
        raw.append(ck['model'])
    ema = {name: w.double() for name, w in raw[0].items()}
    for k in (1, 2, 3):
        d = min(decay, (1 + k) / (10 + k))
        ema = {name: d * ema[name] + (1 - d) * raw[k][name].double() for name in ema}
        saved = torch.load(out / f'ckpt_{k:07d}.pt', weights_only=True)['ema']
        moved = 0.0
        for name, expected in ema.items():
            if not expected.is_floating_point():
                continue
            torch.testing.assert_close(saved[name].double(), expected, rtol=1e-5, atol=1e-6, msg=f'step {k} {name}')
            moved = max(moved, (raw[k][name].double() - expected).abs().max().item())
        assert moved > 1e-3  # the EMA is not the raw weights: the test can see a plain copy


def fixed_loss(net, batch, cfg):
    """A deterministic loss of the batch (no random noise level, no random noise), its mean over the images."""
    x = torch.cat([batch['sr'], batch['hr']], 1)
    out = net(x, torch.full((x.shape[0],), 0.5)).float()
    return ((out - batch['hr']) ** 2).mean()


def no_flip(batch, device, fmt, batch_size):
    return {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}


def test_grad_accumulation_of_k_micro_batches_equals_one_batch_of_k_times_b(flat_pairs, tmp_path, monkeypatch):
    """2 micro-batches of 4 accumulate the gradient of one batch of 8 (the same 8 images: the batch order is a
    function of the micro-step), so one SGD step moves the weights the same, and the logged loss is the batch's.
    Plain SGD, not Adam: Adam's step does not depend on the gradient's scale, SGD's does. Seen failing: the loss not
    divided by --grad-accum (twice the step, twice the logged loss), zero_grad inside the micro-batch loop."""
    monkeypatch.setattr(train, 'compute_loss', fixed_loss)
    monkeypatch.setattr(train, 'to_device', no_flip)
    monkeypatch.setattr(torch.optim, 'Adam', lambda params, lr: torch.optim.SGD(params, lr=lr))
    results = {}
    for name, batch, accum in (('full', 8, 1), ('accum', 4, 2)):
        out = tmp_path / name
        logged = [r for r in run_log(STEP + ['--data', str(flat_pairs / 'pairs'), '--out', str(out), '--max-iters',
                                             '1', '--batch-size', str(batch), '--grad-accum', str(accum), '--lr',
                                             '0.5', '--eval-every', '100'], out) if 'loss' in r]
        ck = torch.load(out / 'ckpt.pt', weights_only=True)
        assert ck['step'] == 1 and len(logged) == 1  # --max-iters 1: one update, one loss line
        assert logged[0]['img_s'] > 0
        results[name] = (logged[0]['loss'], ck['model'])
    w0 = initial_weights(0)
    loss_full, w_full = results['full']
    loss_accum, w_accum = results['accum']
    assert loss_accum == pytest.approx(loss_full, rel=1e-5)
    step_size = max((w_full[k] - w0[k]).abs().max().item() for k in w0 if w0[k].is_floating_point())
    gap = max((w_full[k] - w_accum[k]).abs().max().item() for k in w0 if w0[k].is_floating_point())
    assert step_size > 1e-3 and gap < 1e-4 * step_size, (step_size, gap)


def run_log(args, out):
    import json
    train.main(args)
    return [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]


# ----------------------------------------------------------------------------- held-out images never trained on
def image_tensor(path):
    """A PNG as the data set gives it: RGB in [-1, 1], (3, H, W)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert('RGB'), dtype=np.float64)
    return torch.from_numpy(arr / 127.5 - 1).permute(2, 0, 1).float()


def name_of(img, known):
    """The file whose image (or its mirror: training flips) is `img`; None when it is none of `known`."""
    for name, ref in known.items():
        for candidate in (ref, ref.flip(-1)):
            if (candidate - img).abs().max() < 1e-4:
                return name
    return None


@pytest.mark.parametrize('split', ['holdout', 'val_folder', 'val_data'])
def test_held_out_images_never_reach_a_training_batch(split, flat_pairs, tmp_path, monkeypatch):
    """Every image of every training batch is identified by its pixels among the files on disk: none is a held-out
    file and all are training files, for --holdout N (the first N sorted names), DATA/val and --val-data. Seen
    failing: --holdout's training Subset starting at 0."""
    root = tmp_path / 'data'
    smooth_faces(root / 'src', 12, seed=1)
    if split == 'holdout':
        data_dir = flat_pairs / 'pairs'
        names = sorted(os.listdir(data_dir / 'hr_32'))
        held, trained, extra = names[:4], names[4:], ['--holdout', '4']
        folders = {n: data_dir / 'hr_32' for n in names}
    elif split == 'val_folder':
        data_dir = root / 'split'
        data.prepare(str(root / 'src'), str(data_dir), lr=8, hr=32, val=4, progress=False)
        held, trained, extra = sorted(os.listdir(data_dir / 'val' / 'hr_32')), sorted(
            os.listdir(data_dir / 'train' / 'hr_32')), []
        folders = {**{n: data_dir / 'val' / 'hr_32' for n in held}, **{n: data_dir / 'train' / 'hr_32' for n in trained}}
    else:
        data_dir = flat_pairs / 'pairs'
        data.prepare(str(root / 'src'), str(root / 'other'), lr=8, hr=32, progress=False)
        trained = sorted(os.listdir(data_dir / 'hr_32'))
        held = ['other/' + n for n in sorted(os.listdir(root / 'other' / 'hr_32'))[:6]]
        extra = ['--val-data', str(root / 'other')]
        folders = {**{n: data_dir / 'hr_32' for n in trained}, **{n: root / 'other' / 'hr_32' for n in held}}
    known = {n: image_tensor(folders[n] / os.path.basename(n)) for n in folders}
    assert len({tuple(t.flatten()[:50].tolist()) for t in known.values()}) == len(known)  # all distinct
    seen = []
    original = train.to_device

    def recording(batch, device, fmt, batch_size):
        seen.extend(batch['hr'])
        return original(batch, device, fmt, batch_size)
    monkeypatch.setattr(train, 'to_device', recording)
    out = tmp_path / 'run'
    train.main(STEP + ['--data', str(data_dir), '--out', str(out), '--max-iters', '8', '--batch-size', '4',
                       '--eval-every', '100'] + extra)
    assert len(seen) == 32
    names_seen = [name_of(img, known) for img in seen]
    assert None not in names_seen
    assert set(names_seen) <= set(trained) and not set(names_seen) & set(held)
    assert set(names_seen) == set(trained)  # 32 draws over 8 or 12 images in whole epochs: every one is seen


# ----------------------------------------------------------------------------- metrics: the mean of known values
def test_mean_metrics_is_the_arithmetic_mean_of_known_per_image_values():
    """Seen failing: max instead of mean, a sum divided by n - 1, n counted from the first list."""
    per_image = {'psnr': [10.0, 20.0, 36.0], 'ssim': [0.5, 0.25, 0.0], 'consistency': [1e-4, 3e-4, 2e-4]}
    res = metrics.mean_metrics(per_image)
    assert res == pytest.approx({'psnr': 22.0, 'ssim': 0.25, 'consistency': 2e-4, 'n': 3})
    assert metrics.mean_metrics({'psnr': [7.5]}) == {'psnr': 7.5, 'n': 1}
    assert metrics.mean_metrics({}) == {'n': 0}


def test_psnr_of_known_images_and_their_folder_mean(tmp_path):
    """PSNR of uint8 images with a known error: a constant error of e levels gives 20 log10(255 / e); the mean over
    images of 1, 2 and 4 levels is the mean of the three closed forms (not the PSNR of the mean MSE)."""
    levels = torch.tensor([1.0, 2.0, 4.0]).reshape(3, 1, 1, 1)
    gt = torch.full((3, 3, 16, 16), 2 * 100 / 255 - 1)  # uint8 level 100 in [-1, 1]
    pred = 2 * (100 + levels) / 255 - 1 + 0 * gt  # level 100 + e
    per = metrics.compute_metrics(pred, gt)
    expected = [20 * math.log10(255 / e) for e in (1, 2, 4)]
    assert per['psnr'] == pytest.approx(expected, abs=1e-4)
    assert metrics.mean_metrics(per)['psnr'] == pytest.approx(sum(expected) / 3, abs=1e-4)


# ----------------------------------------------------------------------------- sweep: per-chunk weighting
def test_sweep_weights_each_chunk_by_its_images(monkeypatch):
    """experiments/sweep.py samples the held-out set in --batch-size chunks and averages the chunks' means weighted by
    their sizes: 5 images with PSNR 10, 20, 30, 40, 100 in chunks of 2 give the plain mean 40, not the mean of the
    chunk means (15, 35, 100 -> 50) nor the unweighted sum over n (150 / 5 = 30). The sampler is replaced by one that
    returns the chunk's mean of these known values: what is tested is the sweep's averaging."""
    sys.path.insert(0, os.path.join(ROOT, 'experiments'))
    import sweep
    values = torch.tensor([10.0, 20.0, 30.0, 40.0, 100.0])

    def known_scores(model, cfg, chunk, steps, sampler, generator, device, dtype):
        v = chunk['psnr_of_image']
        return {'psnr': float(v.mean()), 'n': len(v)}, None, None
    monkeypatch.setattr(sweep, 'sample_and_score', known_scores)
    args = dict(task='sr8_32', model='tiny', norm_groups=8, upsample='nearest')
    ck = {'args': args, 'ema': tasks.model_from_args(args).state_dict()}
    a = type('Args', (), dict(batch_size=2, seed=0, temperature=None))()
    res = sweep.score_point(ck, {'psnr_of_image': values}, 3, 'ddim', a, 'cpu', torch.float32)
    assert res['n'] == 5 and res['psnr'] == pytest.approx(40.0)


def test_the_optimizer_steps_with_the_warm_up_learning_rate(flat_pairs, tmp_path, monkeypatch):
    """--warmup 4: the first update uses lr / 4 (lr_at(0)), so one plain-SGD step moves the weights a quarter as far
    as without warm-up, on the same batch and loss. Seen failing: the schedule computed but not put in the optimizer."""
    monkeypatch.setattr(train, 'compute_loss', fixed_loss)
    monkeypatch.setattr(train, 'to_device', no_flip)
    monkeypatch.setattr(torch.optim, 'Adam', lambda params, lr: torch.optim.SGD(params, lr=lr))
    w0 = initial_weights(0)
    moved = {}
    for name, extra in (('constant', []), ('warm', ['--warmup', '4'])):
        out = tmp_path / name
        train.main(STEP + ['--data', str(flat_pairs / 'pairs'), '--out', str(out), '--max-iters', '1', '--batch-size',
                           '4', '--lr', '0.5', '--eval-every', '100'] + extra)
        w = torch.load(out / 'ckpt.pt', weights_only=True)['model']
        moved[name] = torch.cat([(w[k] - w0[k]).flatten() for k in w0 if w0[k].is_floating_point()])
    torch.testing.assert_close(moved['warm'], moved['constant'] / 4, rtol=1e-4, atol=1e-7)
