"""``reverse_diffusion``: the reverse of the SDE's own discretization (Song et al. 2021, eq. 46).

With the forward step x_hi = a x_lo + b z from :meth:`SDE.discretize`, i.e.
f = (a - 1) x and G = b::

    x_lo = x_hi - f + G^2 score(x_hi, t_hi) + G z
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..utils import batch_times
from .base import NoOptions, SamplerSpec


def reverse_diffusion_step(sde, score_fn, x, t_cur, t_next, *, options, noise):
    a, b = (float(c) for c in sde.discretize(t_next, t_cur))
    x_mean = (2.0 - a) * x + b**2 * score_fn(x, batch_times(t_cur, x))
    return x_mean + b * noise(x), x_mean


SPEC = SamplerSpec(
    name="reverse_diffusion", fn=reverse_diffusion_step, options=NoOptions, kind="predictor",
    stochastic=True, evals_per_step=1, requires=("discretize",), recommended_steps=1000,
    summary="reverse of the SDE's discretization (DDPM/SMLD-like step)",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
