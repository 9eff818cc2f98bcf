"""``euler_maruyama``: one Euler-Maruyama step of the reverse-time SDE.

x_next = x + [f(x, t) - g(t)^2 score(x, t)] dt + g(t) sqrt(-dt) z, with dt = t_next - t_cur < 0.
"""

from __future__ import annotations

import math

from ..hookspecs import hookimpl
from ..utils import batch_times
from .base import NoOptions, SamplerSpec


def euler_maruyama_step(sde, score_fn, x, t_cur, t_next, *, options, noise):
    t = batch_times(t_cur, x)
    dt = t_next - t_cur
    x_mean = x + sde.reverse(score_fn).drift(x, t) * dt
    g = float(sde.diffusion(t_cur))
    return x_mean + g * math.sqrt(-dt) * noise(x), x_mean


SPEC = SamplerSpec(
    name="euler_maruyama", fn=euler_maruyama_step, options=NoOptions, kind="predictor", stochastic=True,
    evals_per_step=1, recommended_steps=1000,
    summary="Euler-Maruyama step of the reverse-time SDE",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
