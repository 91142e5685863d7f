"""Tests for the relay's tile-mean consistency step (relay.TileMeanProjection, relay_sampler(project=...)) and its
plumbing (train.py --project for relayL_H runs, sample.py --relay --project / --no-project / --project-smooth).

The references are independent of the code under test: tile means by F.avg_pool2d, the L2-closest consistent image
by a dense KKT solve built from basis images, the sampler's behaviour by the closed-form Gaussian denoiser of
tests/test_relay.py."""
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import block_noise as bn  # noqa: E402
import checkpoint  # noqa: E402
import relay  # noqa: E402
import sample  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402
from test_relay import blur_gaussian_denoiser, gen, tile_variance  # noqa: E402
from test_reliability import RELAY, smooth  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


# ----------------------------------------------------------------------------------------------
# The projection itself

@pytest.mark.parametrize('block, smooth_weight', [(4, 0.0), (2, 0.0), (4, 10.0)])
def test_projection_hits_the_tile_means_exactly_and_is_idempotent(block, smooth_weight):
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64, generator=gen(1))
    lr = torch.randn(2, 3, 16 // block, 24 // block, dtype=torch.float64, generator=gen(2))
    project = relay.TileMeanProjection(lr, block, smooth_weight)
    px = project(x)
    assert px.shape == x.shape and px.dtype == torch.float64
    assert (F.avg_pool2d(px, block) - lr).abs().max() < 1e-13
    assert (project(px) - px).abs().max() < 1e-13


def test_projection_of_smooth_zero_is_the_nearest_up_correction_by_hand():
    """The docstring's closed form, written out: each tile shifted by (lr - its mean); one tile checked by hand."""
    x = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    lr = torch.tensor([[[[10.0, 0.0], [0.0, -1.0]]]], dtype=torch.float64)
    px = relay.TileMeanProjection(lr, 2)(x)
    # top-left tile [[0, 1], [4, 5]] has mean 2.5: shifted by 10 - 2.5 = 7.5
    assert torch.allclose(px[0, 0, :2, :2], torch.tensor([[7.5, 8.5], [11.5, 12.5]], dtype=torch.float64))
    # bottom-right tile [[10, 11], [14, 15]] has mean 12.5: shifted by -1 - 12.5
    assert torch.allclose(px[0, 0, 2:, 2:], torch.tensor([[-3.5, -2.5], [0.5, 1.5]], dtype=torch.float64))


def second_difference_gram(n):
    """G^T G for the second difference G, built by hand: z^T G^T G z = sum_i (z[i] - 2 z[i+1] + z[i+2])^2."""
    G = np.zeros((n - 2, n))
    for i in range(n - 2):
        G[i, i] = 1.0
        G[i, i + 1] = -2.0
        G[i, i + 2] = 1.0
    return G.T @ G


def kkt_closest(x, lr, block, smooth_weight):
    """argmin_z (z - x)^T W (z - x) subject to box(z) = lr, W = (I + s G^T G) kron (I + s G^T G) (W = I for s = 0),
    by one dense solve of the KKT system [[2W, A^T], [A, 0]] [z; mu] = [2W x; lr], A's rows from avg_pool2d of
    basis images. One channel, float64 numpy."""
    h, w = x.shape
    n = h * w
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, h, w)
    A = F.avg_pool2d(basis, block).reshape(n, -1).T.numpy()  # (m, n): column j = tile means of basis image j
    m = A.shape[0]
    M_h = np.eye(h) + smooth_weight * second_difference_gram(h)
    M_w = np.eye(w) + smooth_weight * second_difference_gram(w)
    W = np.kron(M_h, M_w)
    K = np.block([[2 * W, A.T], [A, np.zeros((m, m))]])
    rhs = np.concatenate([2 * W @ x.reshape(-1), lr.reshape(-1)])
    return np.linalg.solve(K, rhs)[:n].reshape(h, w)


@pytest.mark.parametrize('smooth_weight', [0.0, 3.0])
def test_projection_is_the_closest_consistent_image_by_least_squares(smooth_weight):
    """smooth 0: the L2-closest image with the given tile means; smooth s: the one whose correction is smallest in
    the norm I + s G^T G per axis (a Kronecker product), both from a brute-force KKT solve on an 8 x 12 image."""
    block = 4
    x = torch.randn(8, 12, dtype=torch.float64, generator=gen(4))
    lr = torch.randn(2, 3, dtype=torch.float64, generator=gen(5))
    want = kkt_closest(x.numpy(), lr.numpy(), block, smooth_weight)
    got = relay.TileMeanProjection(lr[None, None], block, smooth_weight)(x[None, None])[0, 0].numpy()
    assert np.abs(got - want).max() < 1e-10
    # and every other consistent image is farther from x (a random consistent perturbation)
    if smooth_weight == 0:
        bump = torch.randn(8, 12, dtype=torch.float64, generator=gen(6))
        bump = bump - F.interpolate(F.avg_pool2d(bump[None, None], block), scale_factor=block)[0, 0]  # tile means 0
        other = torch.from_numpy(got) + 0.1 * bump
        assert (other - x).norm() > (torch.from_numpy(got) - x).norm()


def test_smooth_correction_is_smoother_than_the_tile_steps():
    """The smooth variant trades the pseudo-inverse's 4x4 steps for a smooth correction: much less second-difference
    energy for the same constraint."""
    lr = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=gen(7))
    zero = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    rough = relay.TileMeanProjection(lr, 4, 0.0)(zero)
    soft = relay.TileMeanProjection(lr, 4, 10.0)(zero)
    energy = lambda c: (torch.diff(c, n=2, dim=-1) ** 2).sum() + (torch.diff(c, n=2, dim=-2) ** 2).sum()
    assert energy(soft) < 0.2 * energy(rough)
    with pytest.raises(ValueError, match='smooth'):
        relay.TileMeanProjection(lr, 4, -1.0)


# ----------------------------------------------------------------------------------------------
# The sampler with the projection, against the closed-form Gaussian denoiser

def gaussian_tiles(seed, block=4, B=16, H=32):
    """Data with independent per-tile DCT coefficients N(0, v) (as tests/test_relay.py) and its x_up (tile means)."""
    i = torch.arange(block, dtype=torch.float64)
    v = 0.5 / (1 + i[:, None] + i[None, :]) ** 2
    v[0, 0] = 1.0
    u0 = torch.randn(B, 1, H, H, dtype=torch.float64, generator=gen(seed)) * bn.expand_factors(v.sqrt()[None, None],
                                                                                                H, H)
    y = bn.idct_2d(u0, block)
    return v, y, bn.dct_blur(y, block, float('inf'), min_scale=0.0)


@pytest.mark.parametrize('s_block', [0.0, 0.15])
def test_sampler_projection_keeps_every_other_frequency_of_the_exact_denoiser(s_block):
    """With the exact Gaussian denoiser every DCT frequency evolves on its own (diagonal update), and the tile mean is
    frequency (0, 0), which is independent of the others here. So project=True must (i) give the output x_up's tile
    means exactly, (ii) leave every other frequency of the output as project=False does with the same noise, and
    (iii) hand the callback projected estimates at every step."""
    block = 4
    v, y, x_up = gaussian_tiles(21)
    D = blur_gaussian_denoiser(v, block)
    seen = []
    kw = dict(steps=20, sigma_max=0.89, s_block=s_block)
    plain = relay.relay_sampler(D, x_up, generator=gen(22), **kw)
    projected = relay.relay_sampler(D, x_up, generator=gen(22), project=True,
                                    callback=lambda i, x, den: seen.append(den.clone()), **kw)
    assert (F.avg_pool2d(projected, block) - F.avg_pool2d(x_up, block)).abs().max() < 1e-12
    assert (F.avg_pool2d(plain, block) - F.avg_pool2d(x_up, block)).abs().max() > 1e-3  # it was not so without
    ac = torch.ones(block, block, dtype=torch.bool)
    ac[0, 0] = False
    mask = bn.expand_factors(ac.double()[None, None], *x_up.shape[-2:]).bool().expand_as(x_up)
    diff = bn.dct_2d(projected, block) - bn.dct_2d(plain, block)
    assert diff[mask].abs().max() < 1e-10
    assert len(seen) > 3
    for den in seen:
        assert (F.avg_pool2d(den, block) - F.avg_pool2d(x_up, block)).abs().max() < 1e-12


def test_sampler_projection_output_variance_stays_the_datas():
    """The output distribution stays right: per-frequency variance / v within the bounds of
    tests/test_relay.py's 160-step check, and the tile means are the data's exactly (ratio 1)."""
    block = 4
    v, y, x_up = gaussian_tiles(23, B=32, H=64)
    out = relay.relay_sampler(blur_gaussian_denoiser(v, block), x_up, steps=160, sigma_max=0.89, s_block=0.0,
                              generator=gen(24), project=True)
    ratio = tile_variance(out, block) / tile_variance(y, block)
    assert abs(ratio[0, 0] - 1) < 1e-12
    ratio = tile_variance(out, block) / v
    assert ratio.min() > 0.91 and ratio.max() < 1.04, ratio


@pytest.mark.parametrize('smooth_weight', [0.0, 5.0])
def test_sampler_projection_of_a_denoiser_that_knows_nothing(smooth_weight):
    """D = 0: the output is P(0), the image whose tile means are x_up's and nothing else: x_up itself (smooth 0), and
    with smooth > 0 the smoothest image with those tile means (independent KKT reference on one channel)."""
    block = 4
    _, _, x_up = gaussian_tiles(25, B=1, H=8)
    out = relay.relay_sampler(lambda x, s: torch.zeros_like(x), x_up, steps=10, sigma_max=0.89, generator=gen(26),
                              project=True, project_smooth=smooth_weight)
    lr = F.avg_pool2d(x_up, block)[0, 0].numpy()
    want = kkt_closest(np.zeros((8, 8)), lr, block, smooth_weight)
    assert np.abs(out[0, 0].numpy() - want).max() < 1e-10
    if smooth_weight == 0:
        assert torch.equal(out, x_up) or (out - x_up).abs().max() < 1e-14


# ----------------------------------------------------------------------------------------------
# Plumbing: train.py --project on a relay stage-2 run, sample.py --project / --no-project / --project-smooth

@pytest.fixture(scope='module')
def projected_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('relay_project')
    faces = root / 'faces'
    os.makedirs(faces)
    os.makedirs(root / 'lr')
    for i in range(6):
        smooth(i, 16, 16).save(faces / f'{i:02d}.png')
    for i in range(2):
        smooth(i, 4, 4).save(root / 'lr' / f'{i:02d}.png')
    out = root / 'run'
    train.main(RELAY + ['--data', str(faces), '--out', str(out), '--max-iters', '1', '--project',
                        '--project-smooth', '2'])
    return root, out / 'ckpt.pt'


def test_a_run_trained_with_project_evaluates_with_it(projected_run):
    root, ckpt = projected_run
    model, cfg = checkpoint.load_model(str(ckpt))
    assert cfg['project'] is True and cfg['project_smooth'] == 2
    assert tasks.relay_projection(cfg) == dict(project=True, project_smooth=2)
    assert tasks.relay_projection(dict(cfg, project=False, project_smooth=0.0))['project'] is False
    hr = torch.rand(2, 3, 16, 16, generator=gen(8)) * 2 - 1
    _, grid, ncol = tasks.sample_and_score(model, cfg, {'image': hr}, steps=6, generator=gen(9))
    x_up, out = grid.reshape(2, ncol, 3, 16, 16)[:, 0], grid.reshape(2, ncol, 3, 16, 16)[:, 1]
    assert (F.avg_pool2d(out, 4) - F.avg_pool2d(hr, 4)).abs().max() < 1e-5
    assert torch.allclose(x_up, F.interpolate(F.avg_pool2d(hr, 4), scale_factor=4))


@pytest.mark.parametrize('flags, want', [([], (True, 2.0)), (['--no-project'], (False, 2.0)),
                                         (['--project-smooth', '0'], (True, 0.0))])
def test_sample_relay_reads_the_runs_project_and_its_overrides(projected_run, monkeypatch, flags, want):
    root, ckpt = projected_run
    seen = []

    def spy(D, x_up, *args, project=False, project_smooth=0.0, **kwargs):
        seen.append((project, project_smooth))
        return x_up

    monkeypatch.setattr(relay, 'relay_sampler', spy)
    sample.main(['--relay', '--ckpt-second', str(ckpt), '--input', str(root / 'lr'), '--out',
                 str(root / 'gen'), '--device', 'cpu', '--dtype', 'fp32', '--steps-second', '4'] + flags)
    assert seen and all(s == want for s in seen), seen


@pytest.mark.parametrize('flags', [['--project-smooth', '-1'], ['--no-project', '--project-smooth', '3']])
def test_sample_relay_refuses_a_smoothness_that_cannot_act(projected_run, capsys, flags):
    root, ckpt = projected_run
    with pytest.raises(SystemExit) as e:
        sample.main(['--relay', '--ckpt-second', str(ckpt), '--input', str(root / 'lr'), '--out',
                     str(root / 'gen2'), '--device', 'cpu'] + flags)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'project-smooth' in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(root / 'gen2')
