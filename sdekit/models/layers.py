"""Building blocks shared by the score networks and the classifier.

Shapes: images are (B, C, H, W), vectors (B, D), the noise input ``c_noise``
(B,) (or a 0-d tensor, broadcast over the batch), the conditioning embedding
``emb`` (B, E). Blocks take ``(h, emb)`` so that one loop can run them all.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError, ShapeError

#: the label-range check reads tensor values (a device sync off the CPU): it is skipped while
#: torch.compile traces (torch >= 2.3), where an out-of-range label is the embedding's own error
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def num_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups: min(32, channels // 4), lowered until it divides ``channels``."""
    g = max(1, min(max_groups, channels // 4))
    while channels % g:
        g -= 1
    return g


def _features_dtype(c: torch.Tensor) -> torch.dtype:
    # sin(999 t) needs at least float32: never compute time features in half precision
    return torch.promote_types(c.dtype, torch.float32)


class PositionalEmbedding(nn.Module):
    """Sinusoidal features of the noise input (Vaswani et al. 2017; DDPM's timestep embedding).

    (B,) -> (B, dim): [cos(c w_k), sin(c w_k)], w_k = max_positions^(-k / (dim/2)).
    """

    def __init__(self, dim: int, max_positions: int = 10_000):
        super().__init__()
        self.dim, self.max_positions = dim, max_positions

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        dtype = _features_dtype(c)
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.max_positions) / half * torch.arange(half, device=c.device, dtype=dtype))
        arg = c.to(dtype)[:, None] * freqs
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features (Tancik et al. 2020; NCSN++'s embedding of log sigma).

    (B,) -> (B, dim): [cos(2 pi c w_k), sin(2 pi c w_k)], w_k ~ N(0, scale^2) fixed.
    The frequencies are a buffer drawn from their own generator (``seed``): they
    do not depend on, nor consume, the global random state.
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        w = torch.randn(dim // 2, generator=torch.Generator().manual_seed(seed)) * scale
        self.register_buffer("freqs", w)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        dtype = _features_dtype(c)
        arg = (2 * math.pi) * c.to(dtype)[:, None] * self.freqs.to(dtype)
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class Conditioning(nn.Module):
    """Noise level, class label and context vector -> one embedding (B, emb_dim).

    ``emb = MLP(features(c_noise)) + E_class[y] + E_context(context)``. The null
    class is the extra row ``num_classes`` of ``E_class``; the null context a
    learned vector in embedding space. ``y=None`` (``context=None``) means the
    null class (context) for every row; ``cond_drop`` (B,) bool replaces both
    by the null ones in the rows where it is true (label dropout for
    classifier-free guidance). A label equal to ``num_classes`` is the null
    class too, so ``sdekit.guidance.classifier_free_guidance(..., null=num_classes)``
    works in one batched call.
    """

    def __init__(self, feature_dim: int, emb_dim: int, *, embedding: str = "positional",
                 fourier_scale: float = 16.0, num_classes: int = 0, context_dim: int = 0, owner: str = "model"):
        super().__init__()
        self.num_classes, self.context_dim, self.owner = num_classes, context_dim, owner
        self.features = (FourierEmbedding(feature_dim, fourier_scale) if embedding == "fourier"
                         else PositionalEmbedding(feature_dim))
        self.time = nn.Sequential(nn.Linear(feature_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.context = nn.Linear(context_dim, emb_dim) if context_dim else None
        self.null_context = nn.Parameter(torch.randn(emb_dim) * 0.02) if context_dim else None

    @property
    def conditional(self) -> bool:
        return bool(self.num_classes or self.context_dim)

    def forward(self, c_noise: torch.Tensor, y=None, context=None, cond_drop=None, *, batch: int) -> torch.Tensor:
        self.check(c_noise, y, context, cond_drop, batch)
        weight = self.time[0].weight
        c = c_noise.expand(batch) if c_noise.ndim == 0 else c_noise
        emb = self.time(self.features(c).to(weight.dtype))
        if self.label is not None:
            if y is None:
                emb = emb + self.label.weight[self.num_classes].expand(batch, -1)
            else:
                if cond_drop is not None:
                    y = torch.where(cond_drop, torch.full_like(y, self.num_classes), y)
                emb = emb + self.label(y)
        if self.context is not None:
            null = self.null_context.expand(batch, -1)
            if context is None:
                emb = emb + null
            else:
                ctx = self.context(context.to(self.context.weight.dtype))
                emb = emb + (ctx if cond_drop is None else torch.where(cond_drop[:, None], null.to(ctx.dtype), ctx))
        return emb

    def check(self, c_noise, y, context, cond_drop, batch: int) -> None:
        """One clear error per wrong input; shape checks are static (compile-friendly)."""
        who = self.owner
        if not isinstance(c_noise, torch.Tensor) or c_noise.shape not in ((), (batch,)):
            got = tuple(c_noise.shape) if isinstance(c_noise, torch.Tensor) else type(c_noise).__name__
            raise ShapeError(f"{who}: c_noise must be a ({batch},) float tensor (one noise input per item, "
                             f"see sdekit.models.noise_input), got {got}")
        if y is not None:
            if not self.num_classes:
                raise OptionError(f"{who} has no class conditioning (num_classes=0) but was given y; "
                                  f"build it with num_classes > 0, or leave y out")
            if not isinstance(y, torch.Tensor) or y.shape != (batch,) or y.dtype.is_floating_point or y.is_complex():
                got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
                raise ShapeError(f"{who}: y must be ({batch},) integer class labels, got {got}")
            if not _compiling() and bool(((y < 0) | (y > self.num_classes)).any()):
                raise OptionError(f"{who}: class labels must lie in [0, {self.num_classes - 1}] (or be "
                                  f"{self.num_classes}, the null class); got values in "
                                  f"[{int(y.min())}, {int(y.max())}]")
        if context is not None:
            if not self.context_dim:
                raise OptionError(f"{who} has no context conditioning (context_dim=0) but was given context; "
                                  f"build it with context_dim > 0, or leave context out")
            if not isinstance(context, torch.Tensor) or context.shape != (batch, self.context_dim):
                got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
                raise ShapeError(f"{who}: context must be ({batch}, {self.context_dim}) (context_dim="
                                 f"{self.context_dim}), got {got}")
        if cond_drop is not None:
            if not self.conditional:
                raise OptionError(f"{who} is unconditional (num_classes=0, context_dim=0): there is no "
                                  f"condition for cond_drop to drop")
            if not isinstance(cond_drop, torch.Tensor) or cond_drop.shape != (batch,) or cond_drop.dtype != torch.bool:
                got = f"{tuple(cond_drop.shape)} {cond_drop.dtype}" if isinstance(cond_drop, torch.Tensor) else \
                    type(cond_drop).__name__
                raise ShapeError(f"{who}: cond_drop must be a ({batch},) bool tensor, got {got}")


def check_input(x, expected: tuple, who: str, extra: str = "") -> None:
    """ShapeError unless ``x`` is a tensor shaped (B, *expected); ``None`` in ``expected`` matches any size."""
    ok = isinstance(x, torch.Tensor) and x.ndim == len(expected) + 1 and all(
        e is None or e == s for e, s in zip(expected, x.shape[1:]))
    if not ok:
        want = ", ".join("*" if e is None else str(e) for e in expected)
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"{who} expects x of shape (B, {want}){extra}, got {got}")


# -- image blocks ------------------------------------------------------------------------

class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding as a scale and shift of the second norm
    (adaptive GroupNorm, as in improved DDPM and EDM), dropout before the second conv;
    ``(skip(x) + h) * skip_scale`` (NCSN++/DDPM++); then optional self-attention."""

    takes_skip = False

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, dropout: float = 0.0,
                 skip_scale: float = 1 / math.sqrt(2), attention: bool = False, num_heads: int = 1):
        super().__init__()
        self.skip_scale = skip_scale
        self.norm0 = nn.GroupNorm(num_groups(in_ch), in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * out_ch)
        self.norm1 = nn.GroupNorm(num_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = SelfAttention(out_ch, num_heads=num_heads, skip_scale=skip_scale) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(h) * (1 + scale) + shift)
        h = self.conv1(self.dropout(h))
        h = (self.skip(x) + h) * self.skip_scale
        return h if self.attn is None else self.attn(h)


class UpResBlock(ResBlock):
    """A decoder ResBlock: its input is the concatenation of h and an encoder skip."""

    takes_skip = True


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions; output projection zero-initialised,
    ``(x + attn(x)) * skip_scale``."""

    def __init__(self, channels: int, num_heads: int = 1, skip_scale: float = 1 / math.sqrt(2)):
        super().__init__()
        self.num_heads, self.skip_scale = num_heads, skip_scale
        self.norm = nn.GroupNorm(num_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return (x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))) * self.skip_scale


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (DDPM)."""

    takes_skip = False

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest neighbour, then a 3x3 conv (DDPM)."""

    takes_skip = False

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# -- vector blocks -----------------------------------------------------------------------

class MLPBlock(nn.Module):
    """LayerNorm-SiLU-Linear, the embedding as scale and shift, SiLU-dropout-Linear;
    ``(x + h) * skip_scale``."""

    def __init__(self, width: int, emb_dim: int, *, dropout: float = 0.0, skip_scale: float = 1 / math.sqrt(2)):
        super().__init__()
        self.skip_scale = skip_scale
        self.norm = nn.LayerNorm(width)
        self.lin0 = nn.Linear(width, width)
        self.affine = nn.Linear(emb_dim, 2 * width)
        self.dropout = nn.Dropout(dropout)
        self.lin1 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine(F.silu(emb)).chunk(2, dim=1)
        h = self.lin0(F.silu(self.norm(x))) * (1 + scale) + shift
        h = self.lin1(self.dropout(F.silu(h)))
        return (x + h) * self.skip_scale
