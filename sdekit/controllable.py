"""Controllable generation by known-part replacement (Song et al. 2021, appendix I).

To generate the unknown part of x_0 given its known part y, the PC loop runs
the reverse SDE on the whole state and, after every predictor and corrector
step reaching time t, overwrites the known part with y diffused to t::

    x_t[known] = m(t) y + s(t) z,       z ~ N(0, I)

(the step's noise-free mean gets m(t) y), and sets x[known] = y at the end.
Pass a constraint to :func:`sdekit.sample` (``constraint=``; it needs ``pc`` or
a predictor or corrector). This is the paper's replacement method: a good
approximation of the conditional p(x_unknown | y), not an exact sampler of it
(docs/controllable.md has the measured error against the exact conditional).

- :class:`Inpaint`: the known part is chosen by a mask (inpainting).
- :class:`Colorize`: the known part is the gray image, the channel mean. In the
  orthogonal channel basis of :func:`channel_basis`, whose first channel is
  sqrt(C) x the channel mean, colorization is inpainting of that one channel
  (appendix I.3: the decoupling keeps the SDE's noise independent per channel).

Both implement :class:`sdekit.api.Constraint`; their repr (shapes and a digest
of the data) goes into the samples' provenance.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import torch

from .errors import OptionError, ShapeError
from .sde import SDE


def _digest(*tensors: torch.Tensor) -> str:
    """A short content hash of tensors (for reprs in provenance)."""
    h = hashlib.sha256()
    for v in tensors:
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _coefficients(sde: SDE, t: float) -> tuple[float, float]:
    """m(t), s(t) as Python floats (computed in float64 on the CPU: no device sync)."""
    mean, std = sde.marginal(torch.tensor(float(t), dtype=torch.float64))
    return float(mean), float(std)


def replace_known(sde: SDE, x: torch.Tensor, t: float, noise: Callable | None,
                  known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, ...) with its masked part set to ``m(t) known + s(t) z``, ``z = noise(x)``.

    With ``noise=None`` the masked part is the mean ``m(t) known``. ``known``
    and the bool ``mask`` broadcast against ``x`` (item-shaped is usual) and
    are on its device with its dtype. ``noise(x)`` is called once per call, for
    the whole state, so a per-item noise source keeps items independent of the
    batch.
    """
    mean, std = _coefficients(sde, t)
    target = mean * known
    if noise is not None:
        target = target + std * noise(x)
    return torch.where(mask, target, x)


class Inpaint:
    """Generate the coordinates where ``mask`` is False, keep ``known`` where it is True.

    Args:
        known: (*item_shape) the known data (e.g. an image (C, H, W) in [-1, 1]);
            values where the mask is False are ignored (they may be NaN).
        mask: bool or 0/1 values of a shape that broadcasts to ``known``'s, such
            as (1, H, W) for (C, H, W) items: True / 1 = known, False / 0 = generate.

    Both apply to every item of the batch. Raises :class:`ShapeError` when the
    mask does not broadcast, :class:`OptionError` when it is not binary or a
    known value is not finite.
    """

    def __init__(self, known, mask):
        known = torch.as_tensor(known).detach().to("cpu", torch.float64)
        mask = torch.as_tensor(mask).detach().to("cpu")
        try:
            broadcast = torch.broadcast_shapes(mask.shape, known.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != known.shape:
            raise ShapeError(f"Inpaint: the mask's shape {tuple(mask.shape)} does not broadcast to the "
                             f"known data's shape {tuple(known.shape)}")
        if mask.dtype != torch.bool:
            if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
                raise OptionError("Inpaint: the mask must be binary (bool, or 0 = generate and 1 = known)")
            mask = mask != 0
        mask = mask.expand(known.shape)
        if not bool(torch.isfinite(known[mask]).all()):
            raise OptionError("Inpaint: the known data must be finite where the mask is 1 (known)")
        self.known = torch.where(mask, known, known.new_zeros(()))  # float64, zero where unknown
        self.mask = mask.contiguous()
        self._cast: dict = {}

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.known.shape)

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(x.shape[1:]) != self.item_shape:
            raise ShapeError(f"{type(self).__name__}: the known data has item shape {self.item_shape}, but the "
                             f"samples have items of shape {tuple(x.shape[1:])} (batch shape {tuple(x.shape)})")
        key = (x.device, x.dtype)
        if key not in self._cast:  # cached per device/dtype: no transfer per call
            self._cast[key] = (self.known.to(device=x.device, dtype=x.dtype), self.mask.to(x.device))
        return self._cast[key]

    def project(self, sde: SDE, x: torch.Tensor, t: float, noise: Callable | None) -> torch.Tensor:
        """Known part of ``x`` (B, *item_shape) <- m(t) y + s(t) noise(x) (or m(t) y when noise is None)."""
        known, mask = self._params(x)
        return replace_known(sde, x, t, noise, known, mask)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Known part of ``x`` <- y exactly (in ``x``'s dtype)."""
        known, mask = self._params(x)
        return torch.where(mask, known, x)

    def __repr__(self) -> str:
        return (f"Inpaint(item_shape={self.item_shape}, known={int(self.mask.sum())}/{self.mask.numel()}, "
                f"sha256={_digest(self.known, self.mask)})")


def channel_basis(channels: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An orthogonal (C, C) matrix Q whose first row is (1, ..., 1) / sqrt(C).

    The Householder reflection that swaps u = (1, ..., 1)/sqrt(C) and e_1:
    Q = I - 2 v v^T / |v|^2 with v = e_1 - u. Symmetric and its own inverse;
    Q x puts sqrt(C) x the channel mean of x in channel 0 (Song et al. 2021,
    appendix I.3, use such a matrix to decouple the channels). Deterministic.
    """
    if int(channels) != channels or channels < 1:
        raise OptionError(f"channel_basis needs a positive number of channels, got {channels!r}")
    c = int(channels)
    u = torch.full((c,), 1.0 / math.sqrt(c), dtype=torch.float64)
    v = -u
    v[0] += 1.0
    q = torch.eye(c, dtype=torch.float64)
    if float(v @ v) > 0.0:  # C = 1: u = e_1 and Q = I
        q -= 2.0 * torch.outer(v, v) / (v @ v)
    return q.to(dtype)


def _along_channels(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """q (C, C) applied to dim 1 of x (B, C, ...): sum_j q[i, j] x[:, j].

    An elementwise broadcast and a sum over j, not a matmul: each item's result
    does not depend on the batch size (per-item seeds stay bitwise).
    """
    q = q.reshape(1, *q.shape, *([1] * (x.ndim - 2)))
    return (q * x.unsqueeze(1)).sum(dim=2)


class Colorize:
    """Generate colors (C channels) whose channel mean is the gray image ``gray``.

    Args:
        gray: (1, *spatial) or (*spatial), e.g. (1, H, W) or (H, W): the channel
            mean of the wanted samples, on the samples' scale (e.g. [-1, 1]).
        channels: C, the number of channels of the samples (3 for RGB).

    In the basis of :func:`channel_basis` (applied along dim 1 of x (B, C, ...)),
    channel 0 is sqrt(C) * gray, known, and channels 1..C-1 are generated:
    ``project`` rotates x into that basis, replaces channel 0 as :class:`Inpaint`
    does, and rotates back with Q^T.
    """

    def __init__(self, gray, channels: int = 3):
        gray = torch.as_tensor(gray).detach().to("cpu", torch.float64)
        if gray.ndim >= 2 and gray.shape[0] == 1:
            gray = gray[0]
        if gray.ndim < 1:
            raise ShapeError(f"Colorize: gray must have shape (1, *spatial) or (*spatial), got {tuple(gray.shape)}")
        q = channel_basis(channels)
        c = q.shape[0]
        known = torch.zeros(c, *gray.shape, dtype=torch.float64)
        known[0] = math.sqrt(c) * gray
        mask = torch.zeros(c, *([1] * gray.ndim), dtype=torch.bool)
        mask[0] = True
        self.gray = gray
        self.basis = q
        self._inpaint = Inpaint(known, mask)  # colorization = inpainting in Q-coordinates
        self._cast: dict = {}

    @property
    def item_shape(self) -> tuple[int, ...]:
        return self._inpaint.item_shape

    def _q(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.item_shape:
            raise ShapeError(f"Colorize: a gray image of shape {tuple(self.gray.shape)} with {self.item_shape[0]} "
                             f"channels makes items of shape {self.item_shape}, but the samples have items of "
                             f"shape {tuple(x.shape[1:])} (batch shape {tuple(x.shape)})")
        key = (x.device, x.dtype)
        if key not in self._cast:  # cached per device/dtype: no transfer per call
            self._cast[key] = self.basis.to(device=x.device, dtype=x.dtype)
        return self._cast[key]

    def project(self, sde: SDE, x: torch.Tensor, t: float, noise: Callable | None) -> torch.Tensor:
        """Channel-0 part of Q x <- sqrt(C) (m(t) gray) + s(t) z, then back with Q^T."""
        q = self._q(x)
        xq = self._inpaint.project(sde, _along_channels(q, x), t, noise)
        return _along_channels(q.T, xq)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Channel mean of ``x`` <- gray (exactly, up to float rounding of the rotation)."""
        q = self._q(x)
        return _along_channels(q.T, self._inpaint.finish(_along_channels(q, x)))

    def __repr__(self) -> str:
        return f"Colorize(item_shape={self.item_shape}, sha256={_digest(self.gray)})"
