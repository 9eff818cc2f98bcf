"""Tiny pure helpers shared by every module."""

from __future__ import annotations

import torch


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to ``v`` until it has ``ndim`` dims.

    A per-item coefficient of shape ``(B,)`` then broadcasts against a state of
    shape ``(B, *item_shape)`` of any rank (vectors, images, video ...).
    """
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(f"cannot broadcast a {v.ndim}-d tensor to {ndim} dims")
    return v.reshape(*v.shape, *([1] * missing))


def batch_times(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A batch of times ``(B,)`` on ``x``'s device and dtype, from a scalar or a tensor."""
    if isinstance(t, torch.Tensor) and t.ndim == 1 and t.shape[0] == x.shape[0]:
        return t.to(device=x.device, dtype=x.dtype)
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def flat_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but the batch dim: ``(B, ...) -> (B,)``."""
    return v.reshape(v.shape[0], -1).sum(dim=1)
