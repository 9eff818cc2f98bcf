"""Sample-quality metrics against exact samples."""

from __future__ import annotations

import torch


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size sample sets (B, ...).

    The mean over ``num_projections`` random unit directions (seeded, so the
    same sets always give the same number) of the 1-D W2 between projections,
    each computed exactly by sorting; returned as sqrt(mean W2^2). Items are
    flattened; computed in float64 on the CPU.
    """
    x = x.detach().reshape(len(x), -1).to("cpu", torch.float64)
    y = y.detach().reshape(len(y), -1).to("cpu", torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    px, _ = (x @ dirs).sort(dim=0)
    py, _ = (y @ dirs).sort(dim=0)
    return float((px - py).square().mean().sqrt())


def mode_weights(posterior: torch.Tensor) -> torch.Tensor:
    """Fraction of samples assigned to each component by hard argmax of p(k | x)."""
    k = posterior.argmax(dim=1)
    return torch.bincount(k, minlength=posterior.shape[1]).to(torch.float64) / len(k)
