"""``ancestral``: DDPM ancestral sampling on VP, SMLD ancestral sampling on VE.

Reverses the SDE's own discretization x_hi = a x_lo + b z (:meth:`SDE.discretize`)::

    x_lo = (x_hi + b^2 score(x_hi, t_hi)) / a + sigma z

The mean is exact: E[x_lo | x_hi] for any linear-Gaussian step (Tweedie). On VP
with a uniform grid it is DDPM's update (Ho et al. 2020, Algorithm 2); on VE,
SMLD's (Song et al. 2021, eq. 47). ``variance`` picks sigma^2: ``posterior``,
b^2 s_lo^2 / (a^2 s_lo^2 + b^2), is DDPM's beta-tilde and SMLD's choice;
``step``, b^2, is DDPM's sigma_t^2 = beta_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..hookspecs import hookimpl
from ..utils import batch_times
from .base import SamplerSpec, option


@dataclass(frozen=True)
class AncestralOptions:
    variance: str = option("posterior", "reverse-step variance: 'posterior' (beta-tilde) or 'step' (beta)",
                           choices=("posterior", "step"))


def ancestral_step(sde, score_fn, x, t_cur, t_next, *, options, noise):
    a, b = (float(c) for c in sde.discretize(t_next, t_cur))
    x_mean = (x + b**2 * score_fn(x, batch_times(t_cur, x))) / a
    if options.variance == "step":
        var = b**2
    else:
        s_lo = float(sde.marginal(t_next)[1])
        var = b**2 * s_lo**2 / (a**2 * s_lo**2 + b**2)
    return x_mean + math.sqrt(var) * noise(x), x_mean


SPEC = SamplerSpec(
    name="ancestral", fn=ancestral_step, options=AncestralOptions, kind="predictor", stochastic=True,
    evals_per_step=1, requires=("discretize",), recommended_steps=1000,
    summary="DDPM ancestral sampling on VP, SMLD ancestral sampling on VE",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
