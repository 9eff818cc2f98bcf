"""``ald``: annealed Langevin dynamics corrector (NCSN, Song and Ermon 2019, Algorithm 1).

At time t with kernel std s(t), ``n_steps`` times::

    eps_step = 2 alpha (snr s(t))^2,   x <- x + eps_step score + sqrt(2 eps_step) z

NCSN's step eps sigma_i^2 / sigma_L^2 is this with snr = sqrt(eps / 2) / sigma_L.
alpha = a^2 of the step just taken (1 on VE). The step size uses no norms, so
items never depend on each other. Used alone (``--sampler ald``) it is NCSN's sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..hookspecs import hookimpl
from ..utils import batch_times
from .base import SamplerSpec, option


@dataclass(frozen=True)
class ALDOptions:
    snr: float = option(0.4, "step size relative to the noise level: eps = 2 alpha (snr s(t))^2", gt=0.0)
    n_steps: int = option(1, "Langevin steps per noise level", ge=1)


def ald_step(sde, score_fn, x, t_cur, t_next, *, options, noise):
    t = batch_times(t_next, x)
    a, _ = (float(c) for c in sde.discretize(t_next, t_cur))
    std = float(sde.marginal(t_next)[1])
    step = 2.0 * a**2 * (options.snr * std) ** 2
    x_mean = x
    for _ in range(options.n_steps):
        x_mean = x + step * score_fn(x, t)
        x = x_mean + math.sqrt(2.0 * step) * noise(x)
    return x, x_mean


SPEC = SamplerSpec(
    name="ald", fn=ald_step, options=ALDOptions, kind="corrector", stochastic=True,
    evals_per_step=1, requires=("discretize",), recommended_steps=1000,
    summary="annealed Langevin dynamics (NCSN); alone, NCSN's sampler",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
