"""unet.SelfAttention against a float64 reference written from its definition, in both memory layouts, and the
relay samplers' denoiser calls (channels_last in on a CPU, float64 NCHW out)."""
import math

import torch

import relay
import unet


def reference(att, x):
    """x + W_out softmax(Q K^T / sqrt(C)) V, Q K V = W_qkv GroupNorm(x), over the H W pixels, all in float64."""
    x = x.double()
    b, c, h, w = x.shape
    g = att.norm.num_groups
    xg = x.reshape(b, g, -1)
    mu, var = xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True)
    n = ((xg - mu) / torch.sqrt(var + att.norm.eps)).reshape(b, c, h, w)
    n = n * att.norm.weight.double()[:, None, None] + att.norm.bias.double()[:, None, None]
    qkv = torch.einsum('oc,bcp->bop', att.qkv.weight.double()[:, :, 0, 0], n.reshape(b, c, h * w))
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]                           # (B, C, P)
    logits = torch.einsum('bci,bcj->bij', q, k) / math.sqrt(c)                         # (B, P, P)
    p = torch.exp(logits - logits.amax(-1, keepdim=True))
    p = p / p.sum(-1, keepdim=True)
    a = torch.einsum('bij,bcj->bci', p, v)                                             # (B, C, P)
    out = torch.einsum('oc,bcp->bop', att.out.weight.double()[:, :, 0, 0], a) + att.out.bias.double()[:, None]
    return x + out.reshape(b, c, h, w)


def test_self_attention_matches_its_definition_in_both_layouts():
    torch.manual_seed(0)
    att = unet.SelfAttention(16, 8).double()
    for p in att.parameters():  # non-trivial norm affine and output bias, so each is exercised
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    ref = reference(att, x)
    with torch.no_grad():
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            assert torch.allclose(att(inp), ref, atol=1e-10, rtol=0)


def test_relay_samplers_give_the_denoiser_channels_last_on_cpu_and_return_nchw():
    seen = []

    def D(x, sigma):
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return 0.5 * x

    x_up = torch.zeros(2, 3, 8, 8)
    out = relay.relay_sampler(D, x_up, 6, truncation_sigma=1.0, truncation_t=0.9, block=4, s_block=0.0,
                              generator=torch.Generator().manual_seed(0))
    out2 = relay.edm_sampler(D, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), steps=3)
    assert seen and all(seen)
    assert out.is_contiguous() and out2.is_contiguous()
