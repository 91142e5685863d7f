"""
The denoiser network: the SR3 UNet (Saharia et al. 2021), as used by DREAM for 16->128 faces.

Architecture (the SR3 / DREAM configuration for `paper`):
  conv3x3 in -> for each level: num_res_blocks ResBlocks (+ self-attention at `attn_resolutions`),
  then a stride-2 conv downsample (not after the last level) -> middle: ResBlock+attn, ResBlock ->
  the mirror path with num_res_blocks+1 ResBlocks per level, each fed a skip connection, nearest
  x2 upsample + conv3x3 -> GroupNorm, Swish, conv3x3 out.
  ResBlock: GN-Swish-conv, + Linear(noise embedding), GN-Swish-dropout-conv, + skip (1x1 if needed).
  Noise embedding: sinusoidal features of the continuous noise level -> Linear-Swish-Linear.
`forward(x, noise_level)`: x (B, C, H, W), noise_level (B,) float: SR3's gamma = sqrt(alpha_bar)
for diffusion.py, EDM's c_noise = ln(sigma)/4 for relay.py. No project imports.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

PRESETS = {
    # DREAM / SR3 CelebA-HQ 16->128 (configs/sr_*_16_128.json): 97.8M parameters with 6 inputs.
    'paper': dict(channels=64, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=2, attn_resolutions=(16,), dropout=0.2),
    # small / tiny: GroupNorm with 8 groups (4 and 2 channels per group at the first level). gcd(32, 16) = 16 groups
    # of one channel each would be instance norm: every feature map loses its spatial mean, and with it the colour
    # of the condition (docs/quickstart.md).
    'small': dict(channels=32, channel_mults=(1, 2, 4, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                  groups=8),  # 8.5M
    'tiny': dict(channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                 groups=8),  # 0.6M
    # tiny_s2d (ours, tried for the CPU quick start): space-to-depth instead of tiny's 64x64 level. The input's 2x2
    # pixel blocks become channels (pixel_unshuffle), the UNet runs from H/2 down to H/8, and its output's channels are
    # put back into 2x2 blocks (pixel_shuffle). Most of a tiny step is spent in its 16-channel full-resolution convolutions
    # (slow per FLOP on a CPU); a quick-start step takes 0.68x tiny's. Measured on the quick start: it learns
    # far less per step (3000 of its steps score below 1500 of tiny's; README "CPU quick start"), so tiny stays.
    'tiny_s2d': dict(channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                     groups=8, unshuffle=2),  # 1.0M
}


def noise_embedding(noise_level, dim):
    """Sinusoidal features of a continuous noise level (SR3's PositionalEncoding): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=noise_level.device, dtype=torch.float32) / half)
    args = noise_level.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def norm_act(ch, groups, dropout=0.0):
    layers = [nn.GroupNorm(math.gcd(groups, ch), ch), nn.SiLU()]  # SiLU == Swish
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb_dim, groups, dropout):
        super().__init__()
        self.block1 = nn.Sequential(*norm_act(cin, groups), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb = nn.Linear(emb_dim, cout)  # SR3's FeatureWiseAffine without the affine scale
        self.block2 = nn.Sequential(*norm_act(cout, groups, dropout), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.block1(x) + self.emb(emb)[:, :, None, None].to(x.dtype)
        return self.block2(h) + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over all pixels of a feature map, fused kernel (SDPA)."""

    def __init__(self, ch, groups):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(groups, ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1, bias=False)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        # (B, 1, HW, C) each, contiguous: on a CPU, SDPA given the transposed views falls back to its unfused math
        # kernel, 4.4x slower at 4096 pixels (the 64x64 middle of `tiny` at 256x256; bench.py --attention)
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).contiguous().unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """A ResBlock optionally followed by attention (SR3's ResnetBlocWithAttn)."""

    def __init__(self, cin, cout, emb_dim, groups, dropout, attn):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, groups, dropout)
        self.attn = SelfAttention(cout, groups) if attn else None

    def forward(self, x, emb):
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


def upsampler(mode):
    """The decoder's x2 upsample before its conv: SR3's 'nearest', or 'bilinear' (our option, tried against the quick
    start's 4x4 texture because nearest copies each coarse feature into a 2x2 block; it did not remove it, README)."""
    if mode not in ('nearest', 'bilinear'):
        raise ValueError(f"UNet: upsample must be 'nearest' or 'bilinear', got {mode!r}")
    return nn.Upsample(scale_factor=2, mode=mode, **({'align_corners': False} if mode == 'bilinear' else {}))


class UNet(nn.Module):
    def __init__(self, in_channels=6, out_channels=3, channels=64, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=2,
                 attn_resolutions=(16,), dropout=0.0, image_size=128, groups=32, grad_checkpoint=False,
                 upsample='nearest', unshuffle=1):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        self.unshuffle = unshuffle  # > 1: the net runs on pixel_unshuffle(x), its output is pixel-shuffled back
        in_channels, out_channels = in_channels * unshuffle ** 2, out_channels * unshuffle ** 2
        image_size //= unshuffle
        emb_dim = channels
        self.noise_mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, channels))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.downs = nn.ModuleList()
        skips, ch, res = [channels], channels, image_size
        for i, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.downs.append(Level(ch, channels * mult, emb_dim, groups, dropout, res in attn_resolutions))
                ch = channels * mult
                skips.append(ch)
            if i != len(channel_mults) - 1:
                self.downs.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([Level(ch, ch, emb_dim, groups, dropout, True), Level(ch, ch, emb_dim, groups, dropout, False)])
        self.ups = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.ups.append(Level(ch + skips.pop(), channels * mult, emb_dim, groups, dropout, res in attn_resolutions))
                ch = channels * mult
            if i != 0:
                self.ups.append(nn.Sequential(upsampler(upsample), nn.Conv2d(ch, ch, 3, padding=1)))
                res *= 2
        self.conv_out = nn.Sequential(*norm_act(ch, groups), nn.Conv2d(ch, out_channels, 3, padding=1))
        self.min_size = 2 ** (len(channel_mults) - 1) * unshuffle

    def _run(self, layer, x, emb):
        if not isinstance(layer, Level):
            return layer(x)
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(layer, x, emb, use_reentrant=False)
        return layer(x, emb)

    def forward(self, x, noise_level):
        if x.shape[-1] % self.min_size or x.shape[-2] % self.min_size:
            raise ValueError(f'UNet: input size {tuple(x.shape[-2:])} must be divisible by {self.min_size}')
        emb = self.noise_mlp(noise_embedding(noise_level, self.conv_in.out_channels))
        h = self.conv_in(F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x)
        hs = [h]
        for layer in self.downs:
            h = self._run(layer, h, emb)
            hs.append(h)
        for layer in self.mid:
            h = self._run(layer, h, emb)
        for layer in self.ups:
            if isinstance(layer, Level):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layer, h, emb)
        h = self.conv_out(h)
        return F.pixel_shuffle(h, self.unshuffle) if self.unshuffle > 1 else h


INITS = ('default', 'orthogonal', 'zero')


def init_weights(net, scheme):
    """Re-initialise a UNet in place. 'default': PyTorch's (kaiming-uniform, what every run before `--init` used);
    'orthogonal': SR3's choice (its official code initialises every conv and linear weight orthogonally, gain 1,
    biases 0); 'zero': the default, then the last conv of every residual branch, of every attention block and of the
    output set to 0 (the ADM / "Improved DDPM" practice): each block starts as the identity and the net predicts 0."""
    if scheme not in INITS:
        raise ValueError(f"UNet: init must be one of {', '.join(INITS)}, got {scheme!r}")
    if scheme == 'orthogonal':
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    elif scheme == 'zero':
        last = [m.block2[-1] for m in net.modules() if isinstance(m, ResBlock)]
        last += [m.out for m in net.modules() if isinstance(m, SelfAttention)] + [net.conv_out[-1]]
        for conv in last:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
    return net


def build_unet(preset, in_channels, out_channels, image_size, init='default', **overrides):
    """A UNet from a preset name ('paper', 'small', 'tiny', 'tiny_s2d'); `overrides` replace preset values; `init`
    one of INITS (init_weights)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}' (choose from {', '.join(PRESETS)})")
    cfg = {**PRESETS[preset], **overrides}
    return init_weights(UNet(in_channels, out_channels, image_size=image_size, **cfg), init)
