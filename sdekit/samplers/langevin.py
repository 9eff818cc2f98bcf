"""``langevin``: Langevin MCMC corrector with a signal-to-noise step rule (Song et al. 2021, Algorithm 4).

At time t, ``n_steps`` times::

    eps = 2 alpha snr^2 v,   x <- x + eps score + sqrt(2 eps) z

with alpha = a^2 of the step just taken (:meth:`SDE.discretize`: 1 - beta on VP,
1 on VE) and ``v`` the local variance per coordinate that the step is scaled
to. The paper's code takes ``v = (mean ||z|| / mean ||score||)^2`` over the
*batch* (``step_norm="batch"``): an item's step then depends on the other
items, so a sample changes with the batch it is drawn in.

The default ``step_norm="item"`` estimates ``v`` from the item alone,
``v = D / ||score||^2`` (D coordinates; ||z||^2 ~ D), capped at
``m(t)^2 + s(t)^2``, the noised marginal's variance per coordinate for data of
unit variance (the usual normalisation, e.g. images in [-1, 1]). The uncapped
rule fails in low dimension: an item near a mode has a tiny score norm and
takes a huge step (measured on ring8: 288x the noise floor on VP, 44x on VE,
against 1.1-1.4x capped; docs/samplers.md). For data of much larger variance the
cap only makes the corrector more cautious.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hookspecs import hookimpl
from ..utils import append_dims, batch_times
from .base import SamplerSpec, option


@dataclass(frozen=True)
class LangevinOptions:
    snr: float = option(0.16, "signal-to-noise ratio of each Langevin step", gt=0.0)
    n_steps: int = option(1, "Langevin steps per noise level", ge=1)
    step_norm: str = option("item", "step size from each item's own score norm (capped; an item depends only "
                            "on its seed) or from batch means as the paper's code", choices=("item", "batch"))


def langevin_step(sde, score_fn, x, t_cur, t_next, *, options, noise):
    t = batch_times(t_next, x)
    a, _ = (float(c) for c in sde.discretize(t_next, t_cur))
    mean, std = (float(c) for c in sde.marginal(t_next))
    dim = x[0].numel()
    x_mean = x
    for _ in range(options.n_steps):
        score = score_fn(x, t)
        z = noise(x)
        score_sq = score.reshape(len(x), -1).square().sum(dim=1)
        if options.step_norm == "batch":
            noise_norm = torch.linalg.vector_norm(z.reshape(len(x), -1), dim=1).mean()
            var = (noise_norm / score_sq.sqrt().mean()).square()
        else:
            var = dim / score_sq.clamp_min(dim / (mean**2 + std**2))
        step = append_dims(2.0 * a**2 * options.snr**2 * var.expand(len(x)), x.ndim)
        x_mean = x + step * score
        x = x_mean + (2.0 * step).sqrt() * z
    return x, x_mean


SPEC = SamplerSpec(
    name="langevin", fn=langevin_step, options=LangevinOptions, kind="corrector", stochastic=True,
    evals_per_step=1, requires=("discretize",), recommended_steps=500,
    summary="Langevin corrector with a signal-to-noise step rule",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
