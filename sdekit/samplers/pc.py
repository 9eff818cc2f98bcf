"""``pc``: predictor-corrector sampling (Song et al. 2021, Algorithm 1).

Any registered predictor composed with any registered corrector, by name, with
``none`` for either. Each grid step (t_cur, t_next) runs the predictor from
t_cur to t_next, then the corrector at t_next. Naming a predictor or a
corrector as the sampler runs it here with ``none`` for the other part.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hookspecs import hookimpl
from .base import DENOISE_CHOICES, DENOISE_HELP, SamplerSpec, finish, option


@dataclass(frozen=True)
class PCOptions:
    predictor: str = option("reverse_diffusion", "registered predictor, or 'none'")
    corrector: str = option("langevin", "registered corrector, or 'none'")
    denoise: str = option("mean", DENOISE_HELP, choices=DENOISE_CHOICES)


def pc(sde, score_fn, x, grid, *, options, noise, callback=None, predictor=None, corrector=None):
    times = grid.tolist()
    x_mean = x
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        if predictor is not None:
            x, x_mean = predictor(sde, score_fn, x, t_cur, t_next, noise=noise)
        if corrector is not None:
            x, x_mean = corrector(sde, score_fn, x, t_cur, t_next, noise=noise)
        if callback is not None:
            callback(i, t_next, x)
    return finish(sde, score_fn, x, x_mean, times[-1], options.denoise)


SPEC = SamplerSpec(
    name="pc", fn=pc, options=PCOptions, kind="sampler", stochastic=True, evals_per_step=2,
    summary="predictor-corrector: any predictor composed with any corrector (Song et al. 2021)",
    recommended_steps=500, components={"predictor": "predictor", "corrector": "corrector"},
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
