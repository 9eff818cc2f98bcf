"""``dpm_solver_sde``: SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", sec. 5), on any SDE's marginal.

The stochastic sibling of ``dpm_solver``, derived the same way (see its
docstring: data prediction x0 = (x + s^2 score) / m, lambda = log(m / s),
h = lambda_n - lambda_c). For x0 held constant over a step, the reverse
SDE (eta = 1), the probability-flow ODE (eta = 0) and the family between them
with the same marginals have the exact step::

    x_n = (s_n / s_c) e^{-eta h} x + m_n (1 - e^{-(1 + eta) h}) x0 + s_n sqrt(1 - e^{-2 eta h}) z

At eta = 1 and order 1 this is DDIM with eta = 1, the DDPM posterior step
(``tests/test_dpm_solver_sde.py`` checks both to float64 rounding); at eta = 0
it is ``dpm_solver``'s step. Order 2 replaces x0 by the midpoint combination
D = x0_c + (x0_c - x0_prev) / (2 r), r = h_prev / h, as DPM-Solver++(2M) does
(k-diffusion's ``sample_dpmpp_2m_sde`` with ``solver_type="midpoint"`` is this
sampler written for the VE parametrization). One evaluation per step; the noise
comes from ``noise``, one draw per step, so the sampler keeps per-item seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..hookspecs import hookimpl
from ..utils import batch_times
from .base import SamplerSpec, option


@dataclass(frozen=True)
class DPMSolverSDEOptions:
    order: int = option(2, "1 (at eta = 1: DDIM with eta 1) or 2 (the midpoint 2M step)", ge=1, le=2)
    eta: float = option(1.0, "noise: 1 the reverse SDE, 0 the probability-flow ODE (then = dpm_solver)",
                        ge=0.0, le=1.0)


def dpm_solver_sde(sde, score_fn, x, grid, *, options, noise, callback=None):
    times = grid.tolist()
    ms, ss = (c.tolist() for c in sde.marginal(grid.to(torch.float64)))  # (m, s) at every grid time, float64
    lam = [math.log(m / s) for m, s in zip(ms, ss)]
    last = None  # (h, x0) of the previous step
    for i in range(len(times) - 1):
        h = lam[i + 1] - lam[i]
        x0 = (x + ss[i] ** 2 * score_fn(x, batch_times(times[i], x))) / ms[i]
        d = x0
        if options.order == 2 and last is not None:
            r = last[0] / h
            d = x0 + (x0 - last[1]) / (2.0 * r)
        eta_h = options.eta * h
        x = (ss[i + 1] / ss[i]) * math.exp(-eta_h) * x - ms[i + 1] * math.expm1(-h - eta_h) * d
        if eta_h > 0.0:
            x = x + ss[i + 1] * math.sqrt(-math.expm1(-2.0 * eta_h)) * noise(x)
        last = (h, x0)
        if callback is not None:
            callback(i, times[i + 1], x)
    return x


SPEC = SamplerSpec(
    name="dpm_solver_sde", fn=dpm_solver_sde, options=DPMSolverSDEOptions, kind="sampler", stochastic=True,
    evals_per_step=1, recommended_steps=20, recommended_schedule="vp_quadratic",
    summary="SDE-DPM-Solver++(2M): the reverse SDE's exponential-integrator step, 2nd order (Lu et al. 2022)",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
