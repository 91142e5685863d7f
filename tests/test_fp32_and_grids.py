"""Review fixes (issue 13, items 4-6): forward processes in fp32 under autocast, every sampling grid starts at t = T,
DREAM's gradient-free pass in eval mode for relay. Each test fails on the code before the fix."""
import math

import pytest
import torch
import torch.nn as nn

import relay
import unet
from diffusion import GaussianDiffusion, beta_schedule
from test_diffusion import gaussian_eps_fn


class ConvRecorder(nn.Module):
    """A 1x1 conv (autocast lowers it to bf16) that records its inputs and whether it ran in train mode."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)
        self.inputs, self.modes = [], []

    def forward(self, x, noise_level):
        self.inputs.append(x.detach().clone())
        self.modes.append(self.training)
        return self.conv(x)


def test_sr_noisy_input_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    net = ConvRecorder(6, 3)
    d = GaussianDiffusion(net, beta_schedule('linear', 2000, 1e-6, 1e-2))
    hr, sr = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4, 3, 8, 8) * 2 - 1
    d.loss(hr, sr, generator=torch.Generator().manual_seed(1))
    ref = net.inputs[-1]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        d.loss(hr, sr, generator=torch.Generator().manual_seed(1))
    assert net.inputs[-1].dtype == torch.float32
    torch.testing.assert_close(net.inputs[-1], ref, rtol=0, atol=0)


def test_sr_dream_correction_is_fp32_arithmetic_under_autocast():
    """The rectified input is x_t + lam sqrt(1-a) (eps - eps_hat) computed in fp32 from the (bf16) estimate."""
    torch.manual_seed(0)
    net = ConvRecorder(6, 3)
    d = GaussianDiffusion(net, beta_schedule('linear', 2000, 1e-6, 1e-2))
    hr, sr = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4, 3, 8, 8) * 2 - 1
    with torch.autocast('cpu', dtype=torch.bfloat16):
        d.loss(hr, sr, dream_p=1.0, generator=torch.Generator().manual_seed(1))
    assert net.modes == [False, True]  # estimate in eval mode, training pass in train mode
    first, second = net.inputs
    x_t = first[:, 3:]
    g = torch.Generator().manual_seed(1)
    gamma = d.sample_gamma(4, 'cpu', g)
    eps = torch.randn(hr.shape, generator=g)
    torch.testing.assert_close(x_t, d.q_sample(hr, gamma, eps), rtol=0, atol=0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        eps_hat = net.conv(first).float()
    a = (gamma.double() ** 2).float().view(-1, 1, 1, 1)
    want = x_t + (1 - a).sqrt() * (1 - a).sqrt() * (eps - eps_hat)
    torch.testing.assert_close(second[:, 3:], want, rtol=1e-6, atol=1e-6)


def test_blur_loss_noisy_input_is_fp32_under_bf16_autocast():
    """The DCT blur is a matmul: under bf16 autocast it rounds by ~1e-2, above the smallest training sigma."""
    y = torch.rand(8, 3, 16, 16) * 2 - 1
    recorded = {}

    def D(x, sigma):
        recorded['x'] = x.detach().clone()
        return x

    relay.blur_loss(D, y, generator=torch.Generator().manual_seed(3))
    ref = recorded['x']
    with torch.autocast('cpu', dtype=torch.bfloat16):
        relay.blur_loss(D, y, generator=torch.Generator().manual_seed(3))
    assert recorded['x'].dtype == torch.float32
    assert (recorded['x'] - ref).abs().max().item() < 1e-6


@pytest.mark.parametrize('loss', ['edm', 'blur'])
def test_relay_dream_estimate_runs_in_eval_mode(loss):
    """With dropout presets the gradient-free DREAM pass must not drop units (as in the SR path)."""
    net = ConvRecorder(3, 3)
    net.train()
    D, D0 = relay.EDMPrecond(net), relay.EDMPrecond(net)  # as tasks build them: D0 wraps the unwrapped network
    y = torch.rand(2, 3, 8, 8) * 2 - 1
    if loss == 'edm':
        relay.edm_loss(D, y, dream_p=1.0, D_nograd=D0, generator=torch.Generator().manual_seed(0))
    else:
        relay.blur_loss(D, y, block=4, dream_p=1.0, D_nograd=D0, generator=torch.Generator().manual_seed(0))
    assert net.modes == [False, True]
    assert net.training and D0.training


def test_relay_dream_estimate_with_real_dropout_is_deterministic():
    torch.manual_seed(0)
    net = unet.build_unet('tiny', 3, 3, 8, dropout=0.5)
    net.train()
    D0 = relay.EDMPrecond(net)
    y = torch.rand(2, 3, 8, 8) * 2 - 1
    est = relay._estimate(D0, y)
    a = est(y, torch.full((2,), 0.5))
    b = est(y, torch.full((2,), 0.5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # dropout would make two passes differ
    assert net.training


def test_every_grid_starts_at_T():
    d = GaussianDiffusion(None, beta_schedule('linear', 2000, 1e-6, 1e-2))
    ab = d.alpha_bar
    torch.testing.assert_close(d.respaced(1), torch.stack([ab[0], ab[2000]]))
    torch.testing.assert_close(d.respaced(2), torch.stack([ab[0], ab[1000], ab[2000]]))
    torch.testing.assert_close(d.respaced(2000), ab)
    for steps in (3, 7, 50, 999):
        grid = d.respaced(steps)
        assert len(grid) == steps + 1 and grid[-1] == ab[-1] and torch.all(grid[1:] < grid[:-1])


def _k(a, s2):
    """E[x0 | x_t] = k x_t for x0 ~ N(0, s2): k = sqrt(a) s2 / (a s2 + 1 - a)."""
    return math.sqrt(a) * s2 / (a * s2 + 1 - a)


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_one_and_two_step_sampling_match_closed_form(sampler):
    s2 = 0.25
    d = GaussianDiffusion(None, beta_schedule('linear', 2000, 1e-6, 1e-2))
    n = 40000
    cond = torch.zeros(n, 1, 1, 1)
    aT, aM = d.alpha_bar[2000].item(), d.alpha_bar[1000].item()
    # 1 step: x_T ~ N(0, 1) -> x0_hat = k_T x_T (the last step returns the estimate itself)
    x1 = d.sample(cond, 1, sampler=sampler, shape=(n, 1, 1, 1), clip=False, generator=torch.Generator().manual_seed(0),
                  eps_fn=gaussian_eps_fn(s2))
    assert x1.std().item() == pytest.approx(_k(aT, s2), rel=0.02)
    # 2 steps: T -> T/2 -> 0. x_M = c x_T (+ noise of variance v for DDPM), output = k_M x_M
    kT = _k(aT, s2)
    e_coef = (1 - math.sqrt(aT) * kT) / math.sqrt(1 - aT)  # eps_hat = e_coef x_T
    if sampler == 'ddim':
        c, v = math.sqrt(aM) * kT + math.sqrt(1 - aM) * e_coef, 0.0
    else:
        beta = 1 - aT / aM
        c = (math.sqrt(aM) * beta * kT + math.sqrt(1 - beta) * (1 - aM)) / (1 - aT)
        v = beta * (1 - aM) / (1 - aT)
    want = _k(aM, s2) * math.sqrt(c * c + v)
    x2 = d.sample(cond, 2, sampler=sampler, shape=(n, 1, 1, 1), clip=False, generator=torch.Generator().manual_seed(0),
                  eps_fn=gaussian_eps_fn(s2))
    assert x2.std().item() == pytest.approx(want, rel=0.02)
