"""``ode``: the probability-flow ODE (Song et al. 2021, eq. 13) through torchdiffeq.

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t),   integrated from T down to t_min

It is deterministic: the prior draw is the only randomness. Adaptive methods
(``dopri5``, the default, and the other error-controlled ones) use only the
grid's endpoints and choose their own steps, so ``steps`` does not matter to
them and ``nfe`` is what the solver spent; ``callback`` is called once per
accepted step. Fixed-step methods step exactly on the grid's points (any
schedule) with ``{euler: 1, midpoint: 2, heun2: 2, heun3: 3, rk4: 4}``
evaluations per step, and ``callback`` is called once per grid step. The
torchdiffeq bridge is :func:`sdekit.solvers.odeint_reverse`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hookspecs import hookimpl
from ..solvers import ODE_ADAPTIVE, ODE_FIXED, odeint_reverse
from .base import SamplerSpec, finish, option


@dataclass(frozen=True)
class ODEOptions:
    method: str = option("dopri5", "torchdiffeq method: adaptive (dopri5, dopri8, bosh3, fehlberg2, "
                         "adaptive_heun; steps ignored) or fixed-step on the grid (euler, midpoint, heun2, "
                         "heun3, rk4)", choices=ODE_ADAPTIVE + tuple(ODE_FIXED))
    rtol: float = option(1e-5, "relative tolerance of adaptive methods", gt=0.0)
    atol: float = option(1e-5, "absolute tolerance of adaptive methods", gt=0.0)
    denoise: str = option("none", "final output: 'none' the ODE's state at t_min, 'tweedie' adds one "
                          "evaluation for E[x0 | x_t_min]", choices=("none", "tweedie"))


def ode(sde, score_fn, x, grid, *, options, noise, callback=None):
    x = odeint_reverse(sde, score_fn, x, grid, method=options.method, rtol=options.rtol, atol=options.atol,
                       callback=callback)
    return finish(sde, score_fn, x, x, float(grid[-1]), options.denoise)


SPEC = SamplerSpec(
    name="ode", fn=ode, options=ODEOptions, kind="sampler", stochastic=False, evals_per_step=None,
    adaptive=True, per_item=False, recommended_steps=100,
    summary="probability-flow ODE through torchdiffeq (adaptive dopri5 by default, or fixed steps on the grid)",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
