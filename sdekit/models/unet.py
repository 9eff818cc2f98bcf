"""A compact NCSN++/DDPM++-style U-Net for images (B, C, H, W).

Song et al. 2021 (NCSN++/DDPM++, appendix H) and Ho et al. 2020, trimmed to
what small images need: ``len(channel_mult)`` levels, ``num_res_blocks``
residual blocks per level with GroupNorm, SiLU, dropout and the conditioning
embedding as a scale and shift; residual and attention outputs scaled by
``skip_scale`` (1/sqrt(2)); self-attention at the chosen feature-map heights;
stride-2 conv down, nearest-neighbour + conv up; encoder features reach the
decoder by concatenation; the output conv starts at zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from .layers import Conditioning, Downsample, ResBlock, Upsample, UpResBlock, num_groups


def encoder(config, in_channels: int, height: int, emb_dim: int):
    """The U-Net's input conv and encoder blocks (shared with the image classifier).

    Returns ``(conv_in, blocks, skip_channels, out_channels)``: every block's
    output is an encoder skip, as is ``conv_in``'s (the first of ``skip_channels``).
    """
    widths = [config.channels * m for m in config.channel_mult]
    block = dict(dropout=config.dropout, skip_scale=config.skip_scale, num_heads=config.num_heads)
    conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
    blocks, skips, ch = nn.ModuleList(), [widths[0]], widths[0]
    for level, width in enumerate(widths):
        res = height // 2**level
        for _ in range(config.num_res_blocks):
            blocks.append(ResBlock(ch, width, emb_dim, attention=res in config.attn_resolutions, **block))
            ch = width
            skips.append(ch)
        if level < len(widths) - 1:
            blocks.append(Downsample(ch))
            skips.append(ch)
    return conv_in, blocks, skips, ch


def check_image(x, channels: int, levels: int, who: str) -> None:
    """ShapeError unless x is (B, channels, H, W) with H and W divisible by 2^(levels - 1)."""
    f = 2 ** (levels - 1)
    if not (isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] == channels
            and x.shape[2] % f == 0 and x.shape[3] % f == 0):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"{who} expects x of shape (B, {channels}, H, W) with H and W divisible by {f} "
                         f"({levels} levels in channel_mult), got {got}")


class UNet(nn.Module):
    """Noise-conditional U-Net: ``forward(x, c_noise, y=None, context=None, cond_drop=None) -> (B, C, H, W)``.

    ``x`` (B, C, H, W) with C = ``item_shape[0]`` and H, W divisible by
    2^(levels - 1); ``c_noise`` (B,), see :func:`sdekit.models.noise_input`;
    ``y``, ``context``, ``cond_drop`` as in :class:`~sdekit.models.layers.Conditioning`.
    Attention sits at the levels whose feature-map height (for the build's
    ``item_shape``) is in ``config.attn_resolutions``, and in the middle.
    """

    def __init__(self, config, item_shape: tuple[int, int, int]):
        super().__init__()
        self.config, self.item_shape = config, tuple(item_shape)
        channels, height, _ = item_shape
        emb_dim = 4 * config.channels
        self.cond = Conditioning(config.channels, emb_dim, embedding=config.embedding,
                                 fourier_scale=config.fourier_scale, num_classes=config.num_classes,
                                 context_dim=config.context_dim, owner="UNet")
        self.conv_in, self.down, skips, ch = encoder(config, channels, height, emb_dim)
        block = dict(dropout=config.dropout, skip_scale=config.skip_scale, num_heads=config.num_heads)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, attention=True, **block),
                                  ResBlock(ch, ch, emb_dim, **block)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            width, res = config.channels * mult, height // 2**level
            for _ in range(config.num_res_blocks + 1):
                self.up.append(UpResBlock(ch + skips.pop(), width, emb_dim, attention=res in config.attn_resolutions,
                                          **block))
                ch = width
            if level > 0:
                self.up.append(Upsample(ch))
        self.norm_out = nn.GroupNorm(num_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, c_noise, y=None, context=None, cond_drop=None) -> torch.Tensor:
        check_image(x, self.item_shape[0], len(self.config.channel_mult), "UNet")
        emb = self.cond(c_noise, y, context, cond_drop, batch=x.shape[0])
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1) if block.takes_skip else h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
