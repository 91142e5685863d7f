"""Tests written for the mutants that survived experiments/mutation.sh (issue 31): each pins a behaviour the rest of
the suite left free, against a hand value or a closed form."""
import math

import pytest
import torch

import dream


# ----------------------------------------------------------------------------- dream.py
def test_dream_lambda_is_zero_for_the_standard_loss_whatever_alpha_bar():
    """p = inf or None is the standard loss: lambda = 0 exactly, even at alpha_bar = 0 where (1 - a)^inf would be 1,
    and a tensor in gives a tensor of the same shape out (it broadcasts against x)."""
    a = torch.tensor([0.0, 0.3, 1.0]).reshape(3, 1, 1, 1)
    for p in (math.inf, None):
        lam = dream.dream_lambda(a, p)
        assert torch.is_tensor(lam) and lam.shape == a.shape and torch.equal(lam, torch.zeros_like(a))
        assert dream.dream_lambda(0.0, p) == 0.0 and dream.dream_lambda(0.36, p) == 0.0
    assert dream.dream_lambda(0.36, 2.0) == pytest.approx(0.64)  # (1 - a)^(p/2)
    assert dream.dream_lambda(0.36, 1.0) == pytest.approx(0.8)


def test_rectified_input_and_target_keep_the_noise_dtype():
    """A network answering in another precision (float64 here, bf16 under autocast) must not change the dtype of
    the rectified input and target: they stay in eps's (and y's) fp32."""
    x_t = torch.randn(2, 3, 4, 4)
    eps = torch.randn(2, 3, 4, 4)
    a = torch.full((2, 1, 1, 1), 0.5)
    x_new, eps_new = dream.rectify_eps(lambda x: x.double() * 0.5, x_t, eps, a, 1.0)
    assert x_new.dtype == eps_new.dtype == torch.float32
    delta = eps - 0.5 * x_t
    lam = 0.5 ** 0.5
    torch.testing.assert_close(eps_new, eps + lam * delta)
    torch.testing.assert_close(x_new, x_t + lam * 0.5 ** 0.5 * delta)
    y = torch.randn(2, 3, 4, 4)
    out = dream.rectify_x0(lambda x: x.double(), x_t, y, 0.25)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x_t + 0.25 * (x_t - y))


# ----------------------------------------------------------------------------- block_noise.py
import block_noise as bn  # noqa: E402


def test_blur_schedule_of_python_floats_is_float64_and_of_tensors_keeps_their_dtype():
    """s(t) = blur_sigma_max sin(pi t / 2)^2 with RDM's default blur_sigma_max = 3 (DESIGN), the EDM clock
    t = Phi((ln sigma - P_mean) / P_std) / prob_length and its inverse: a Python float is computed in float64,
    a float32 tensor stays float32."""
    assert bn.blur_sigma(1.0).dtype == torch.float64 and bn.blur_sigma(1.0).item() == pytest.approx(3.0)
    assert bn.blur_sigma(0.5).item() == pytest.approx(3.0 * math.sin(math.pi / 4) ** 2)
    assert bn.blur_sigma(torch.tensor([0.5])).dtype == torch.float32
    phi = 0.5 * (1 + math.erf((math.log(0.9) + 1.2) / 1.2 / math.sqrt(2)))
    assert bn.sigma_to_t(0.9).dtype == torch.float64
    assert bn.sigma_to_t(0.9).item() == pytest.approx(phi / 0.93, rel=1e-12)
    assert bn.sigma_to_t(torch.tensor([0.9])).dtype == torch.float32
    assert bn.t_to_sigma(phi / 0.93).dtype == torch.float64
    assert bn.t_to_sigma(phi / 0.93).item() == pytest.approx(0.9, rel=1e-9)
    assert bn.t_to_sigma(torch.tensor([0.5])).dtype == torch.float32


def test_blur_factors_closed_form_with_the_default_and_a_given_blur_sigma_max():
    """a_ij(t) = (1 - m) exp(-|w_ij|^2 s^2 / 2) + m, w = pi (i, j) / block, s = blur_sigma_max sin(pi t / 2)^2,
    with the defaults blur_sigma_max 3 and min_scale 1e-3 (DESIGN), and with blur_sigma_max 2 passed through."""
    def expected(t, block, s_max, m=1e-3):
        s = s_max * math.sin(math.pi * t / 2) ** 2
        return torch.tensor([[(1 - m) * math.exp(-(math.pi ** 2) * (i * i + j * j) / block ** 2 * s * s / 2) + m
                              for j in range(block)] for i in range(block)], dtype=torch.float64)
    torch.testing.assert_close(bn.blur_factors(0.7, 4)[0, 0], expected(0.7, 4, 3.0))
    torch.testing.assert_close(bn.blur_factors(0.7, 4, blur_sigma_max=2.0)[0, 0], expected(0.7, 4, 2.0))
    torch.testing.assert_close(bn.sigma_factors(1.5, 4)[0, 0], expected(1.0, 4, 1.5))
    s = torch.tensor([1.5], dtype=torch.float32)
    assert bn.sigma_factors(s, 4).dtype == torch.float32


def test_dct_blur_keeps_the_image_dtype():
    x = torch.randn(1, 3, 8, 8)
    assert bn.dct_blur(x, 4, 1.0).dtype == torch.float32
    assert bn.apply_factors(x, 4, bn.blur_factors(0.5, 4)).dtype == torch.float32


def test_block_noise_of_block_2_is_the_sum_of_four_shifts_of_one_field_over_2():
    """(g + roll(g, (0, 1)) + roll(g, (1, 0)) + roll(g, (1, 1))) / 2 on the last two dims, also for a 3-D (C, H, W)
    shape; block 1 is the field itself."""
    for shape in ((3, 6, 8), (2, 1, 4, 4)):
        g = torch.randn(shape, generator=torch.Generator().manual_seed(5))
        expected = sum(torch.roll(g, shifts=(i, j), dims=(len(shape) - 2, len(shape) - 1))
                       for i in (0, 1) for j in (0, 1)) / 2
        got = bn.block_noise(shape, 2, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(got, expected)
        assert torch.equal(bn.block_noise(shape, 1, generator=torch.Generator().manual_seed(5)), g)


# ----------------------------------------------------------------------------- train.py: the learning rate
def test_learning_rate_warm_up_and_cosine_decay_closed_form():
    """lr of iteration step + 1: lr * min(1, (step + 1) / warmup), times 0.5 (1 + cos(pi min(step, T) / T)) for the
    cosine schedule (T = --max-iters); constant without either."""
    import train
    a = train.get_args(['--data', 'x', '--out', 'never_written', '--lr', '0.2', '--warmup', '4', '--max-iters', '10',
                        '--lr-schedule', 'cosine'])
    for step in (0, 2, 3, 7, 10, 12):
        warm = min(1.0, (step + 1) / 4)
        assert train.lr_at(a, step) == pytest.approx(0.2 * warm * 0.5 * (1 + math.cos(math.pi * min(step, 10) / 10)))
    a = train.get_args(['--data', 'x', '--out', 'never_written', '--lr', '0.2'])
    assert train.lr_at(a, 0) == train.lr_at(a, 999) == 0.2


# ----------------------------------------------------------------------------- metrics.py: KID / FID edges, Y channel
import metrics  # noqa: E402


class _Flat(torch.nn.Module):
    """Own 'feature network': the 4 pixel values of a (B, 1, 2, 2) image."""
    num_features = 4

    def forward(self, x):
        return x.flatten(1)


def _points(n, seed):
    return torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed))


def test_frechet_distance_of_equal_nonzero_gaussians_is_zero():
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    sigma = torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    assert metrics.frechet_distance(mu, sigma, -mu, sigma) == pytest.approx(4 * float(mu @ mu), rel=1e-9)


def test_kid_and_fid_accept_two_images_and_refuse_one_counting_every_batch():
    """The smallest sample is 2 fake and 2 real images (KID subset size 2), counted over all batches of an iterable."""
    two, one = _points(2, 0), _points(1, 1)
    assert math.isfinite(metrics.kid(two, _points(2, 2), feature=_Flat(), subset_size=2)[0])
    assert math.isfinite(metrics.kid(two, _points(2, 2), feature=_Flat())[0])  # default subset size min(n, 1000) = 2
    with pytest.raises(ValueError, match='at least 2 fake and 2 real images, got 1'):
        metrics.kid(one, two, feature=_Flat())
    with pytest.raises(ValueError, match=r'subset size 1 must be in \[2, 2\]'):
        metrics.kid(two, _points(2, 2), feature=_Flat(), subset_size=1)
    assert math.isfinite(metrics.fid([one, _points(1, 3)], two, feature=_Flat()))  # 1 + 1 fake images
    with pytest.raises(ValueError, match='got 1 fake, 2 real'):
        metrics.fid(one, two, feature=_Flat())
    with pytest.raises(ValueError, match='got 2 fake, 1 real'):
        metrics.fid(two, one, feature=_Flat())


def test_y_channel_metrics_keep_one_channel_per_image():
    """BT.601 luma Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 of uint8 values: (B, 1, H, W)."""
    q = torch.tensor([255.0, 0.0, 0.0]).reshape(1, 3, 1, 1).expand(2, 3, 4, 5)
    y = metrics.rgb_to_y(q)
    assert y.shape == (2, 1, 4, 5) and torch.allclose(y, torch.full_like(y, 16 + 65.481))


# ----------------------------------------------------------------------------- relay.py: the two-stage pipeline
import relay  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _shrink(x, sigma):
    """The exact denoiser of y ~ N(0, 1) per pixel: E[y | y + sigma n] = x / (1 + sigma^2)."""
    return x / (1 + sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2)


def test_relay_generate_is_stage_one_then_nearest_upsampling_then_stage_two():
    """relay_generate(D1, D2, n, res1) against the contract written out: unit latents (n, 3, res1, res1) from the
    generator, EDM's sampler with 18 steps (first_kwargs passed on), nearest upsampling by `block`, the relay sampler
    with 18 steps, that block, the same generator and relay_kwargs."""
    def by_hand(seed, block, steps_first=18, steps_second=18, first_kwargs=None, **relay_kwargs):
        g = torch.Generator().manual_seed(seed)
        latents = torch.randn((2, 3, 4, 4), generator=g)
        low = relay.edm_sampler(_shrink, latents, steps=steps_first, generator=g, **(first_kwargs or {}))
        x_up = F.interpolate(low, scale_factor=block, mode='nearest')
        return low, relay.relay_sampler(_shrink, x_up, steps_second, block=block, generator=g, **relay_kwargs)

    churn = dict(S_churn=5.0)  # stage-1 noise: the generator matters there too
    got = relay.relay_generate(_shrink, _shrink, 2, 4, block=2, generator=torch.Generator().manual_seed(3),
                               first_kwargs=churn, s_noise=0.7)
    expected = by_hand(3, 2, first_kwargs=churn, s_noise=0.7)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    assert got[1].shape == (2, 3, 8, 8)
    got = relay.relay_generate(_shrink, _shrink, 2, 4, block=2, steps_first=5, steps_second=7,
                               generator=torch.Generator().manual_seed(4), first_kwargs=churn)
    for a, b in zip(got, by_hand(4, 2, steps_first=5, steps_second=7, first_kwargs=churn)):
        torch.testing.assert_close(a, b)
    got = relay.relay_generate(_shrink, _shrink, 2, 4, steps_first=5, steps_second=7)  # generator None: on the CPU
    assert got[0].device.type == 'cpu' and got[1].shape == (2, 3, 16, 16)


# ----------------------------------------------------------------------------- diffusion.py
import diffusion  # noqa: E402


def test_beta_schedule_defaults_are_sr3s_and_unwrap_reaches_the_plain_module():
    """Defaults 1e-6 .. 1e-2 (SR3 / DREAM, DESIGN); unwrap takes off DDP's .module and torch.compile's ._orig_mod."""
    assert list(diffusion.beta_schedule('linear', 3)) == pytest.approx([1e-6, (1e-6 + 1e-2) / 2, 1e-2], rel=1e-12)
    plain = torch.nn.Linear(1, 1)
    compiled = type('Compiled', (), {'_orig_mod': plain})()
    ddp = type('DDP', (), {'module': compiled})()
    assert diffusion.unwrap(ddp) is plain and diffusion.unwrap(compiled) is plain and diffusion.unwrap(plain) is plain


def test_smooth_right_inverse_closed_form_and_non_square_projection():
    """P = M^-1 D^T (D M^-1 D^T)^-1, M = I + s G^T G, G the second difference (rows [1, -2, 1]) built by hand; s = 0 is
    the pseudo-inverse. A 4x6 low-res input on a 16x24 image: each axis its own operator; the result keeps x's dtype
    and downsamples to the input."""
    D = diffusion.downsample_matrix(8, 4)
    n = 8
    G = torch.zeros(n - 2, n, dtype=torch.float64)
    for i in range(n - 2):
        G[i, i], G[i, i + 1], G[i, i + 2] = 1.0, -2.0, 1.0
    for s in (1.0, 3.0):
        Minv = torch.linalg.inv(torch.eye(n, dtype=torch.float64) + s * G.T @ G)
        expected = Minv @ D.T @ torch.linalg.inv(D @ Minv @ D.T)
        torch.testing.assert_close(diffusion._right_inverse(D, s), expected)
    torch.testing.assert_close(diffusion._right_inverse(D, 0), torch.linalg.pinv(D))
    lr = torch.rand(1, 3, 4, 6) * 2 - 1
    proj = diffusion.LowResProjection(lr, (16, 24), smooth=1.0)
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    out = proj(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    down = diffusion.downsample_matrix(16, 4) @ out.double() @ diffusion.downsample_matrix(24, 6).T
    torch.testing.assert_close(down, lr.double(), atol=1e-5, rtol=0)


def test_gaussian_diffusion_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown prediction target 'eps2' \(eps, x0, v\)"):
        diffusion.GaussianDiffusion(None, [0.1], pred='eps2')
    with pytest.raises(ValueError, match=r"unknown noise conditioning 'sigma' \(gamma, log_sigma\)"):
        diffusion.GaussianDiffusion(None, [0.1], noise_cond='sigma')
    net = lambda x, level: x[:, -1:]  # noqa: E731
    with pytest.raises(ValueError, match=r"unknown loss type 'l3' \(l1, l2\)"):
        diffusion.GaussianDiffusion(net, [0.1, 0.2]).loss(torch.zeros(1, 1, 2, 2), None, loss_type='l3')


class _Recorder(torch.nn.Module):
    """A 'network' that records the dtype of its noise-level input and returns its last channel's input."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.levels = []

    def forward(self, x, level):
        self.levels.append(level.dtype)
        return x[:, -1:] * self.scale


def test_v_loss_without_condition_and_the_noise_level_in_the_input_dtype():
    """The v-target uses gamma: v = gamma eps - sqrt(1 - gamma^2) x0 (loss with cond None must run); the network's
    noise level arrives in x_t's dtype (fp32) although gamma is kept in float64."""
    net = _Recorder()
    diff = diffusion.GaussianDiffusion(net, diffusion.beta_schedule('linear', 10, 1e-3, 0.2), pred='v')
    x0 = torch.rand(4, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    loss = diff.loss(x0, None, loss_type='l2', generator=g)
    g = torch.Generator().manual_seed(0)
    gamma = diff.sample_gamma(4, 'cpu', g).float().reshape(-1, 1, 1, 1)
    eps = torch.randn(x0.shape, generator=g)
    x_t = gamma * x0 + (1 - gamma ** 2).sqrt() * eps
    v = gamma * eps - (1 - gamma ** 2).sqrt() * x0
    assert loss.item() == pytest.approx(((x_t - v) ** 2).mean().item(), rel=1e-5)
    assert net.levels and set(net.levels) == {torch.float32}


def test_training_noise_levels_draw_t_from_1_to_T():
    """t ~ U{1..T}, gamma ~ U(gamma_t, gamma_{t-1}): with T = 2 exactly half the draws lie above gamma_1."""
    diff = diffusion.GaussianDiffusion(None, [0.1, 0.9])
    gamma = diff.sample_gamma(20000, 'cpu', torch.Generator().manual_seed(0))
    assert gamma.dtype == torch.float64
    above = (gamma > diff.gamma[1]).double().mean().item()
    assert abs(above - 0.5) < 0.02, above


def test_default_truncation_sigma_closed_form():
    """min(cap, 0.999 sigma(t = 1)), sigma(t) = exp(P_mean + P_std Phi^-1(t prob_length)): the relay sampler starts
    just below the largest noise level the stage-2 model was trained on, and never above the cap 0.9."""
    from statistics import NormalDist

    def sigma_at_one(prob_length, p_mean=-1.2, p_std=1.2):
        return math.exp(p_mean + p_std * NormalDist().inv_cdf(prob_length))
    assert relay.default_truncation_sigma(0.5) == pytest.approx(0.999 * sigma_at_one(0.5), rel=1e-9)  # 0.3009
    assert relay.default_truncation_sigma(0.6) == pytest.approx(0.999 * sigma_at_one(0.6), rel=1e-9)  # P_std counts
    assert relay.default_truncation_sigma(0.6, P_mean=-1.0, P_std=2.0) == pytest.approx(
        0.999 * sigma_at_one(0.6, -1.0, 2.0), rel=1e-9)
    assert relay.default_truncation_sigma(0.93) == 0.9  # 0.999 * 1.77 capped
    assert relay.default_truncation_sigma(0.93, cap=1.5) == pytest.approx(1.5)


# ----------------------------------------------------------------------------- tasks.py: flags -> sampler, network
import tasks  # noqa: E402


def test_sr_sampling_and_relay_noise_read_the_runs_flags_with_sr3_and_rdm_defaults():
    assert tasks.sr_sampling({}, 'LR') == dict(lr=None, temperature=1.0, project_smooth=0.0)
    assert tasks.sr_sampling({'project': True, 'temperature': 0.5, 'project_smooth': 3.0}, 'LR') == \
        dict(lr='LR', temperature=0.5, project_smooth=3.0)
    assert tasks.sr_sampling({'project': False, 'temperature': 0.0}, 'LR') == \
        dict(lr=None, temperature=0.0, project_smooth=0.0)
    assert tasks.relay_noise({}) == (0.2, 0.15)  # RDM's s_noise and block noise
    assert tasks.relay_noise({'s_noise': 1.0, 'block_noise': 0.0}) == (1.0, 0.0)


def test_model_from_args_builds_the_groups_and_upsampling_a_run_names():
    """The network comes from the run's flags: its GroupNorm groups and decoder upsampling (a checkpoint without
    them is from another version and refused by checkpoint.load_checkpoint, tests/test_checkpoint_version.py)."""
    new = tasks.model_from_args({'task': 'relay8', 'model': 'tiny', 'norm_groups': 8, 'upsample': 'bilinear'})
    assert new.conv_out[0].num_groups == 8
    assert {m.mode for m in new.modules() if isinstance(m, torch.nn.Upsample)} == {'bilinear'}
    other = tasks.model_from_args({'task': 'sr8_32', 'model': 'tiny', 'norm_groups': 16, 'upsample': 'nearest'})
    assert other.conv_out[0].num_groups == 16
    assert {m.mode for m in other.modules() if isinstance(m, torch.nn.Upsample)} == {'nearest'}


def test_relay_inputs_are_the_tile_means_nearest_and_bicubic_upsampled():
    hr = torch.rand(1, 3, 8, 8) * 2 - 1
    x_up, bicubic = tasks.relay_inputs(hr, 2)
    means = hr.reshape(1, 3, 4, 2, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(x_up, means.repeat_interleave(2, -2).repeat_interleave(2, -1))
    expected = F.interpolate(means, size=(8, 8), mode='bicubic', align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(bicubic, expected)
    torch.testing.assert_close(tasks.nearest_up(means, 2), x_up)


def test_make_diffusion_reads_the_formulation_with_sr3_defaults():
    cfg = dict(schedule='quad', timesteps=5, beta_start=1e-4, beta_end=1e-2)
    diff = tasks.make_diffusion(None, cfg)
    assert (diff.pred, diff.residual, diff.noise_cond, diff.num_timesteps) == ('eps', False, 'gamma', 5)
    expected = torch.cumprod(1 - torch.as_tensor(diffusion.beta_schedule('quad', 5, 1e-4, 1e-2)), 0)
    torch.testing.assert_close(diff.alpha_bar[1:], expected)
    diff = tasks.make_diffusion(None, dict(cfg, pred='v', residual=True, noise_cond='log_sigma'))
    assert (diff.pred, diff.residual, diff.noise_cond) == ('v', True, 'log_sigma')
