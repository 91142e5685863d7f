"""The SR options beyond SR3 (x0 / v targets, residual over bicubic, log-sigma conditioning, the low-res consistency
projection), checked against hand computations and closed forms."""
import math

import pytest
import torch
import torch.nn.functional as F

from diffusion import GaussianDiffusion, LowResProjection, beta_schedule


def betas():
    return beta_schedule('linear', 2000, 1e-6, 1e-2)


class Oracle(torch.nn.Module):
    """A 'network' that outputs the exact target of the parametrisation for known x0 and eps."""

    def __init__(self, diff, x0, eps):
        super().__init__()
        self.diff, self.x0, self.eps = diff, x0, eps
        self.gamma = None

    def forward(self, inp, level):
        return self.diff.target(self.x0, self.eps, self.gamma)


@pytest.mark.parametrize('pred', ['eps', 'x0', 'v'])
def test_predict_recovers_x0_and_eps_from_the_exact_target(pred):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(3, 3, 8, 8, generator=g)
    diff = GaussianDiffusion(None, betas(), pred=pred)
    gamma = torch.tensor([0.99, 0.5, 0.01])
    oracle = Oracle(diff, x0, eps)
    oracle.gamma = gamma
    diff.model = oracle
    x_t = diff.q_sample(x0, gamma, eps)
    x0_hat, eps_hat = diff.predict(x_t, None, gamma)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-4, atol=1e-4)


def test_v_target_by_hand():
    diff = GaussianDiffusion(None, betas(), pred='v')
    x0, eps, gamma = torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), -1.0), torch.tensor([0.6])
    assert diff.target(x0, eps, gamma).item() == pytest.approx(0.6 * -1.0 - 0.8 * 0.5)


def test_residual_loss_regresses_on_hr_minus_bicubic_and_sampling_adds_it_back():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, inp, level):
            seen['inp'] = inp
            return torch.zeros_like(inp[:, 3:])

    g = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    sr = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    diff = GaussianDiffusion(Probe(), betas(), pred='x0', residual=True)
    loss = diff.loss(hr, sr, loss_type='l2', generator=torch.Generator().manual_seed(2))
    # a network predicting x0 = 0 misses exactly the residual hr - sr
    torch.testing.assert_close(loss, F.mse_loss(torch.zeros_like(hr), hr - sr))
    torch.testing.assert_close(seen['inp'][:, :3], sr)
    # sampling with x0_hat = 0 everywhere returns the bicubic condition itself
    out = diff.sample(sr, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, sr.clamp(-1, 1), rtol=0, atol=1e-5)


def test_log_sigma_noise_level_by_hand():
    diff = GaussianDiffusion(None, betas(), noise_cond='log_sigma')
    gamma = torch.tensor([0.6, 0.999999], dtype=torch.float64)
    want = [math.log(0.8 / 0.6) / 4, math.log(math.sqrt(1 - 0.999999 ** 2) / 0.999999) / 4]
    torch.testing.assert_close(diff.noise_level(gamma), torch.tensor(want), rtol=1e-5, atol=1e-6)
    assert torch.equal(GaussianDiffusion(None, betas()).noise_level(gamma), gamma)  # SR3: gamma itself
    with pytest.raises(ValueError, match='noise conditioning'):
        GaussianDiffusion(None, betas(), noise_cond='t')


def test_low_res_projection_is_exact_and_idempotent():
    g = torch.Generator().manual_seed(3)
    lr = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    project = LowResProjection(lr, (32, 32))
    y = project(x)
    down = F.interpolate(y.double(), size=(8, 8), mode='bicubic', antialias=True, align_corners=False)
    torch.testing.assert_close(down, lr.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(project(y), y, rtol=0, atol=1e-5)
    # it changes only what the downsample sees: the difference is in the range of the pseudo-inverse
    assert (y - x).abs().max() > 0.01


def test_smooth_projection_is_as_exact_and_its_correction_is_smoother():
    """--project-smooth: still exact and idempotent; the correction it adds has less energy in second differences
    than the pseudo-inverse's (it is the smoothest consistent correction); smooth 0 is the pseudo-inverse itself."""
    import metrics
    g = torch.Generator().manual_seed(5)
    lr = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    x = F.interpolate(lr, scale_factor=4, mode='bicubic', align_corners=False)  # a bicubic start, as in SR
    plain, smooth = LowResProjection(lr, (32, 32)), LowResProjection(lr, (32, 32), smooth=10.0)
    y = smooth(x)
    down = F.interpolate(y.double(), size=(8, 8), mode='bicubic', antialias=True, align_corners=False)
    torch.testing.assert_close(down, lr.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(smooth(y), y, rtol=0, atol=1e-5)
    def roughness(c):
        return sum(c.double().diff(n=2, dim=d).pow(2).sum().item() for d in (-1, -2))
    assert roughness(y - x) < 0.8 * roughness(plain(x) - x)
    assert metrics.grid_texture(y, 4).mean() < metrics.grid_texture(plain(x), 4).mean()
    torch.testing.assert_close(LowResProjection(lr, (32, 32), smooth=0.0).P_h, plain.P_h, rtol=0, atol=0)
    with pytest.raises(ValueError, match='smooth must be >= 0'):
        LowResProjection(lr, (32, 32), smooth=-1)


def test_projected_sampling_is_consistent_with_its_input():
    g = torch.Generator().manual_seed(4)
    lr = torch.rand(2, 3, 4, 4, generator=g) * 0.5
    sr = F.interpolate(lr, scale_factor=4, mode='bicubic', align_corners=False)
    s2 = 0.25

    def eps_fn(x, gamma):  # the Gaussian data's optimal denoiser: samples are noise-like, far from consistent
        a = (gamma.double() ** 2).reshape(-1, 1, 1, 1)
        return (torch.sqrt(1 - a) * x.double() / (a * s2 + 1 - a)).float()

    diff = GaussianDiffusion(None, betas())
    free = diff.sample(sr, 20, clip=False, generator=torch.Generator().manual_seed(0), eps_fn=eps_fn)
    tied = diff.sample(sr, 20, clip=False, generator=torch.Generator().manual_seed(0), eps_fn=eps_fn, lr=lr)
    down = lambda x: F.interpolate(x.double(), size=(4, 4), mode='bicubic', antialias=True, align_corners=False)
    assert (down(tied) - lr).abs().max() < 1e-4
    assert (down(free) - lr).abs().max() > 0.1


def test_sr_noise_is_drawn_where_the_generator_lives(monkeypatch):
    """A CUDA generator must draw on CUDA (a CPU draw with it raises): every randn/rand/randint of the SR loss and
    sampler passes the generator's own device. Checked on CPU by recording the calls."""
    seen = []
    for name in ('randn', 'rand', 'randint'):
        real = getattr(torch, name)

        def spy(*args, _real=real, **kwargs):
            if kwargs.get('generator') is not None:
                seen.append(kwargs.get('device'))
            return _real(*args, **kwargs)
        monkeypatch.setattr(torch, name, spy)
    diff = GaussianDiffusion(None, betas())
    gen = torch.Generator().manual_seed(0)
    cond = torch.zeros(2, 3, 4, 4)
    diff.sample(cond, 3, generator=gen, eps_fn=lambda x, g: torch.zeros_like(x))
    diff.model = lambda inp, level: torch.zeros_like(inp[:, 3:])
    diff.loss(torch.zeros(2, 3, 4, 4), cond, generator=gen)
    assert len(seen) >= 5 and all(d is not None and torch.device(d) == gen.device for d in seen), seen


def test_lr_schedule_warms_up_linearly_then_follows_the_cosine_to_zero():
    import train
    a = train.get_args(['--data', 'x', '--lr', '1e-3', '--max-iters', '1000', '--warmup', '100',
                        '--lr-schedule', 'cosine'])
    cos = lambda s: 0.5 * (1 + math.cos(math.pi * s / 1000))  # noqa: E731
    assert train.lr_at(a, 0) == pytest.approx(1e-5 * cos(0))  # iteration 1 of 100 warm-up iterations
    assert train.lr_at(a, 49) == pytest.approx(0.5e-3 * cos(49))
    assert train.lr_at(a, 500) == pytest.approx(0.5e-3)  # half-way: cos(pi / 2) = 0
    assert train.lr_at(a, 999) < 1e-8
    const = train.get_args(['--data', 'x', '--lr', '1e-3'])
    assert {train.lr_at(const, s) for s in (0, 10, 10 ** 6)} == {1e-3}  # SR3's default: constant, no warm-up
