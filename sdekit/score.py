"""The one score contract, and adapters from other network parametrizations.

Everywhere in sdekit a score function is::

    score_fn(x, t, **cond) -> grad_x log p_t(x)

with ``x`` of shape (B, ...), ``t`` a (B,) batch of continuous times on ``x``'s
device and dtype, and ``cond`` optional conditioning (``y=labels``, ``context=...``).
Networks trained to predict the noise (eps), the clean data (x0), the velocity
(v) or the score itself are turned into that contract here, through the SDE's
perturbation kernel x_t = m x0 + s eps, and nowhere else.
"""

from __future__ import annotations

from typing import Callable

import torch

from .sde import SDE
from .utils import append_dims

ScoreFn = Callable[..., torch.Tensor]
Network = Callable[..., torch.Tensor]

PARAMETRIZATIONS = ("score", "eps", "x0", "v")


def score_from(net: Network, sde: SDE, parametrization: str = "eps") -> ScoreFn:
    """Wrap ``net(x, t, **cond)`` predicting ``parametrization`` into a score function.

    - ``eps``:   score = -eps / s
    - ``x0``:    score = -(x - m x0) / s^2
    - ``v``:     v = m eps - s x0 (Salimans and Ho 2022, written for any kernel);
      with x = m x0 + s eps this gives eps = (s x + m v) / (m^2 + s^2)
    - ``score``: returned as is.
    """
    if parametrization not in PARAMETRIZATIONS:
        from .errors import UnknownNameError

        raise UnknownNameError("parametrization", parametrization, PARAMETRIZATIONS)
    if parametrization == "score":
        return net

    def score_fn(x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        out = net(x, t, **cond)
        mean, std = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal(t))
        if parametrization == "eps":
            return -out / std
        if parametrization == "x0":
            return -(x - mean * out) / std**2
        # v = m eps - s x0 and x = m x0 + s eps give eps = (s x + m v) / (m^2 + s^2).
        eps = (std * x + mean * out) / (mean**2 + std**2)
        return -eps / std

    return score_fn


def denoise(score: torch.Tensor, x: torch.Tensor, t: torch.Tensor, sde: SDE) -> torch.Tensor:
    """Tweedie's formula: E[x0 | x_t] = (x_t + s^2 score) / m."""
    mean, std = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal(t))
    return (x + std**2 * score) / mean
