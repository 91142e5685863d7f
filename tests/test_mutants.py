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
