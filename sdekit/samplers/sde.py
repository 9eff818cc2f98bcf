"""``sde``: the reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6) through torchsde.

    dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dw-bar,   from T down to t_min

torchsde integrates forwards, in ``s = T - t``. One solver step per grid step,
landing exactly on the grid's points for any schedule, in a single ``sdeint``
call: torchsde runs on a step clock mapped affinely to ``s`` on each step
(:mod:`sdekit.solvers` explains why, with the per-call overhead that rules out
one call per step). ``method``: ``euler`` (Euler-Maruyama, 1 evaluation per
step) or ``srk`` (the SRA1 stochastic Runge-Kutta scheme for additive noise,
strong order 1.5, 2 evaluations per step, needs the space-time Levy area that
both Brownian motions provide). ``brownian``: ``grid`` draws each step's
increment from the noise source (cheap; per-item seeds carry over);
``interval`` is torchsde's ``BrownianInterval``, seeded from the noise source
(its path depends on the whole batch). ``denoise="mean"`` takes the last step
on the zero Brownian path: free.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError
from ..hookspecs import hookimpl
from ..solvers import SDE_METHODS, sdeint_reverse
from .base import DENOISE_CHOICES, DENOISE_HELP, SamplerSpec, finish, option


@dataclass(frozen=True)
class SDEOptions:
    method: str = option("euler", "torchsde method: 'euler' (Euler-Maruyama) or 'srk' (SRA1, strong order "
                         "1.5, 2 evaluations per step)", choices=tuple(SDE_METHODS))
    brownian: str = option("grid", "Brownian motion: 'grid' draws each step's increment from the noise "
                           "(per-item seeds hold), 'interval' is torchsde's BrownianInterval",
                           choices=("grid", "interval"))
    tol: float = option(0.0, "BrownianInterval's query resolution in s (brownian='interval'; 0 = float "
                        "resolution)", ge=0.0)
    denoise: str = option("mean", DENOISE_HELP, choices=DENOISE_CHOICES)


def reverse_sde(sde, score_fn, x, grid, *, options, noise, callback=None):
    if options.tol > 0:
        smallest = float((grid[:-1] - grid[1:]).min())
        if options.brownian != "interval":
            raise OptionError("option 'tol' of sampler 'sde' applies to brownian='interval' only")
        if options.tol > 0.1 * smallest:
            raise OptionError(f"option 'tol' of sampler 'sde' must be at most a tenth of the smallest grid "
                              f"step ({smallest:.3g}), got {options.tol!r}")
    out = sdeint_reverse(sde, score_fn, x, grid, method=options.method, noise=noise, brownian=options.brownian,
                         tol=options.tol, last_noise=options.denoise != "mean", callback=callback)
    return finish(sde, score_fn, out, out, float(grid[-1]), options.denoise)


SPEC = SamplerSpec(
    name="sde", fn=reverse_sde, options=SDEOptions, kind="sampler", stochastic=True, evals_per_step=None,
    recommended_steps=1000,
    summary="reverse-time SDE through torchsde (Euler-Maruyama or SRA1), exactly on the grid",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
