"""``langevin``: Langevin MCMC corrector with a signal-to-noise step rule (Song et al. 2021, Algorithm 4).

At time t, ``n_steps`` times::

    eps_step = 2 alpha (snr ||z|| / ||score||)^2,   x <- x + eps_step score + sqrt(2 eps_step) z

with alpha = a^2 of the step just taken (:meth:`SDE.discretize`: 1 - beta on VP,
1 on VE). ``step_norm="batch"`` takes both norms as batch means, as the paper's
code does (the step size then depends on the batch); ``"item"`` uses each
item's score norm and the expected noise norm sqrt(D), so an item depends on
its own seed only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..hookspecs import hookimpl
from ..utils import append_dims, batch_times
from .base import SamplerSpec, option


@dataclass(frozen=True)
class LangevinOptions:
    snr: float = option(0.16, "signal-to-noise ratio of each Langevin step", gt=0.0)
    n_steps: int = option(1, "Langevin steps per noise level", ge=1)
    step_norm: str = option("batch", "norms for the step size: batch means or per item",
                            choices=("batch", "item"))


def langevin_step(sde, score_fn, x, t_cur, t_next, *, options, noise):
    t = batch_times(t_next, x)
    a, _ = (float(c) for c in sde.discretize(t_next, t_cur))
    x_mean = x
    for _ in range(options.n_steps):
        score = score_fn(x, t)
        z = noise(x)
        score_norm = torch.linalg.vector_norm(score.reshape(len(x), -1), dim=1)
        if options.step_norm == "batch":
            noise_norm = torch.linalg.vector_norm(z.reshape(len(x), -1), dim=1).mean()
            score_norm = score_norm.mean()
        else:
            noise_norm = math.sqrt(x[0].numel())
        step = append_dims(2.0 * a**2 * (options.snr * noise_norm / score_norm) ** 2, x.ndim)
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
