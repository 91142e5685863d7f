"""Tests for the mutants that survived experiments/mutation.sh's full runs of relay.py, tasks.py and metrics.py
(issue 31), third round: the defaults written out from the papers, the dtype contracts the docstrings state
(preconditioning in float32 under bf16, the network in its own dtype, the caller's autocast), the train / eval mode
around DREAM's gradient-free pass, and the sampler's progress switch. Each checks a closed form or a written-out
contract, not the code under test."""
import math

import pytest
import torch
import torch.nn as nn

import relay

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- relay.py: EDM preconditioning
class _Zero(nn.Module):
    """F = 0 with one parameter of a chosen dtype; records the dtypes it is called with."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=dtype))
        self.seen = []

    def forward(self, x, noise):
        self.seen.append((x.dtype, noise.dtype))
        return torch.zeros_like(x[:, :3]) + self.w


class _NoParams(nn.Module):
    def forward(self, x, noise):
        return torch.ones_like(x[:, :3])


def test_edm_precond_default_sigma_data_is_edm_0_5_by_closed_form():
    """EDM Table 1 with sigma_data = 0.5 and F = 0: D(x, sigma) = c_skip x = 0.25 / (sigma^2 + 0.25) x."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    out = relay.EDMPrecond(_Zero(torch.float64))(x, sigma)
    want = 0.25 / (sigma.view(-1, 1, 1, 1) ** 2 + 0.25) * x
    torch.testing.assert_close(out, want, rtol=1e-12, atol=0)


def test_edm_precond_runs_in_float32_for_bf16_inputs_and_float64_sigmas():
    """The docstring's contract: the preconditioning in float32 for a bf16 x (and a float64 sigma does not lift it
    to float64), so the result is c_skip x computed in float32 from the bf16 values."""
    x = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    out = relay.EDMPrecond(_Zero())(x, sigma)
    assert out.dtype == torch.float32
    s = sigma.float().view(-1, 1, 1, 1)
    want = 0.25 / (s ** 2 + 0.25) * x.float()  # float32 arithmetic on the bf16 values
    torch.testing.assert_close(out, want, rtol=1e-6, atol=0)
    assert not torch.equal(out, (0.25 / (s ** 2 + 0.25)).to(torch.bfloat16) * x)  # not bf16 arithmetic


def test_edm_precond_feeds_the_network_its_parameters_dtype_for_input_and_noise_level():
    net = _Zero(torch.bfloat16)
    relay.EDMPrecond(net)(torch.randn(2, 3, 4, 4), torch.tensor([0.5, 1.0]))
    assert net.seen == [(torch.bfloat16, torch.bfloat16)]


def test_edm_precond_takes_a_network_without_parameters():
    """A parameter-free network is called in the input's dtype: D = c_skip x + c_out * 1."""
    x = torch.zeros(1, 3, 2, 2)
    out = relay.EDMPrecond(_NoParams())(x, torch.tensor([1.0]))
    torch.testing.assert_close(out, torch.full_like(x, 1.0 * 0.5 / math.sqrt(1.25)))


def test_at_least_fp32_lifts_low_precision_and_keeps_float64():
    assert relay._at_least_fp32(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert relay._at_least_fp32(torch.ones(2, dtype=torch.float16)).dtype == torch.float32
    assert relay._at_least_fp32(torch.ones(2, dtype=torch.float64)).dtype == torch.float64


# ----------------------------------------------------------------------------- relay.py: DREAM's estimate
class _Probe(nn.Module):
    """Records, per call, whether it was in training mode, autocast's state and the dtype a Linear computes in."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = []

    def forward(self, z, sigma):
        out = self.lin(z)
        self.calls.append((self.training, torch.is_autocast_enabled('cpu'), out.dtype))
        return out


def test_dream_estimate_runs_in_eval_mode_and_restores_training_mode():
    D = _Probe().train()
    est = relay._estimate(D, torch.zeros(1))
    est(torch.randn(2, 4), torch.ones(2))
    assert D.calls == [(False, False, torch.float32)]
    assert D.training  # back in training mode for the training pass
    D.eval()
    est(torch.randn(2, 4), torch.ones(2))
    assert not D.training  # a model the caller had in eval mode stays there


def test_dream_estimate_uses_the_callers_autocast_dtype_and_state():
    """Read when the estimate is made: float16 autocast (not autocast's bf16 default) applies to the network;
    without autocast the network runs in float32. The output is lifted to float32 either way."""
    D = _Probe()
    with torch.autocast('cpu', dtype=torch.float16):
        est = relay._estimate(D, torch.zeros(1))
    out = est(torch.randn(2, 4), torch.ones(2))
    assert D.calls[-1][1:] == (True, torch.float16) and out.dtype == torch.float32
    est_off = relay._estimate(D, torch.zeros(1))
    with torch.autocast('cpu', dtype=torch.bfloat16):  # on now, but it was off when the estimate was made
        est_off(torch.randn(2, 4), torch.ones(2))
    assert D.calls[-1][1:] == (False, torch.float32)


# ----------------------------------------------------------------------------- relay.py: blur_loss weight clamp
def test_blur_loss_weight_is_clamped_at_exactly_1e5():
    """With every sigma far below 0.0063 (EDM's lambda = (s^2 + 0.25) / (0.25 s^2) > 1e5 there) the clamp holds
    for every sample, so with D = 0 the loss is 1e5 mean(y^2) exactly."""
    y = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    loss = relay.blur_loss(lambda x, s: torch.zeros_like(x), y, P_mean=-12.0, P_std=0.1, truncate_sigma=1e-7,
                           generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, 1e5 * (y ** 2).mean(), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- relay.py: EDM's sigma grid
def test_edm_sigmas_defaults_are_edm_s_written_out():
    """EDM Eq. 5 with the paper's sigma_min 0.002, sigma_max 80, rho 7 (EDM Sec. 3), computed here."""
    N = 5
    want = torch.tensor([(80 ** (1 / 7) + i / (N - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(N)],
                        dtype=torch.float64)
    torch.testing.assert_close(relay.edm_sigmas(N), want, rtol=1e-12, atol=0)


def test_edm_sigmas_with_two_steps_are_the_two_ends():
    torch.testing.assert_close(relay.edm_sigmas(2, 0.01, 10.0, 7.0), torch.tensor([10.0, 0.01], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(relay.edm_sigmas(1, 0.01, 10.0, 7.0), torch.tensor([10.0], dtype=torch.float64))


# ----------------------------------------------------------------------------- relay.py: tile-mean projection
def test_tile_mean_projection_returns_the_images_dtype():
    """It computes in float64 and hands back x's dtype: float32 in, float32 out, with the tile means of the
    result equal to lr to float32 precision."""
    lr = torch.randn(1, 3, 2, 3)
    x = torch.randn(1, 3, 8, 12)
    out = relay.TileMeanProjection(lr, 4)(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(out, 4), lr, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- relay.py: the progress switch
def test_progress_bar_only_when_asked(capsys):
    assert list(relay._progress(range(3), False)) == [0, 1, 2]
    assert capsys.readouterr().err == ''
    assert list(relay._progress(range(3), True)) == [0, 1, 2]
    assert '3/3' in capsys.readouterr().err
