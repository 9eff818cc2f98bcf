"""``dpm_solver``: DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++"), on any SDE's marginal.

Derivation, for any linear SDE whose kernel N(m x0, s^2 I) is consistent with
its drift and diffusion (f = (log m)', g^2 = (s^2)' - 2 f s^2: VP, sub-VP and
VE alike). With the data prediction x0 = (x + s^2 score) / m (Tweedie) the
probability-flow ODE dx/dt = f x - g^2 score / 2 becomes::

    dx/dt = (log s)' x + m lambda' x0,     lambda = log(m / s)  (half the log-SNR)

so d(x / s) = e^lambda x0 dlambda, and from (t_cur, x) to t_next, h = lambda_n - lambda_c::

    x_next = (s_n / s_c) x + s_n int_{lambda_c}^{lambda_n} e^lambda x0 dlambda
           = (s_n / s_c) x - m_n (e^{-h} - 1) x0          when x0 is held constant

The last line is the order-1 step (DDIM with eta = 0). Only m and s enter, so
on VE (m = 1) it is the same code (the reference implementation,
LuChengTHU/dpm-solver, is written for VP noise schedules only).

``order`` 2 is the paper's Algorithm 2 (DPM-Solver++(2M)): x0 is replaced by
D = (1 + 1/(2r)) x0_c - 1/(2r) x0_prev, r = h_prev / h. ``order`` 3 integrates
the quadratic through the last three data predictions (in lambda) exactly
against the kernel: with tau = lambda - lambda_c, P(tau) = x0_c + a1 tau + a2 tau^2
(Newton's divided differences, a1 = f[c, p] + h_p a2, a2 = f[c, p, pp]), and
I_j = int_0^h e^{-(h - tau)} tau^j / j! dtau (I_0 = 1 - e^{-h}, I_1 = h - I_0,
I_2 = h^2 / 2 - I_1)::

    x_next = (s_n / s_c) x + m_n (I_0 x0_c + I_1 a1 + 2 I_2 a2)

(The reference implementation's 3M update has I_2 a2 for the last term, half
the integral of the quadratic; written that way the measured order is 2.3,
not 3: docs/samplers.md.)

A multistep method is only as accurate as its start: a first-order first step
(local error O(h^2)) caps the global order at 2 (measured from t = 0.5: 2.6 on
VP, 2.1 on VE, against 3.0 with the warm-up). So with ``order`` 3 the first
step is DPM-Solver++(2S) (the paper's Algorithm 1) with its intermediate point
at t_next (r = 1): a DDIM step there, one more evaluation, then x0 averaged;
the second step is 2M. The whole grid then has global order 3, for one extra
evaluation. ``lower_order_final`` lowers the order in the last steps when the
grid has fewer than 15 steps (as the reference implementation does; it
steadies very few steps at the cost of the asymptotic order).

``clip_x0 = c > 0`` clamps every coordinate of each data prediction x0 to
[-c, c] (Imagen's static thresholding, Saharia et al. 2022, which the data
prediction makes possible; diffusers' ``thresholding`` is the dynamic,
per-sample variant for images). With order 1 each step is then a convex
combination in x / m of the state and the clamped x0, so the output stays
within [-c, c] up to s(t_min) |x_T| / s(T). Off by default (docs/samplers.md, "Outliers of the deterministic samplers").

Memory of past data predictions lives in local variables only. Evaluations:
one per step, plus one for ``order`` 3 and one for ``denoise="tweedie"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..hookspecs import hookimpl
from ..utils import batch_times
from .base import SamplerSpec, option


@dataclass(frozen=True)
class DPMSolverOptions:
    order: int = option(2, "multistep order: 1 (= DDIM, eta 0), 2 (DPM-Solver++(2M)) or 3 (one extra "
                        "evaluation in the first step)", ge=1, le=3)
    lower_order_final: bool = option(True, "lower the order in the last steps when the grid has < 15 steps")
    denoise: str = option("none", "final output: 'none' the ODE's state at t_min, 'tweedie' adds one "
                          "evaluation for E[x0 | x_t_min]", choices=("none", "tweedie"))
    clip_x0: float = option(0.0, "clamp each coordinate of every x0 prediction to [-clip_x0, clip_x0] "
                                 "(the data's range); 0: off", ge=0.0)


def dpm_solver(sde, score_fn, x, grid, *, options, noise, callback=None):
    times = grid.tolist()
    num_steps = len(times) - 1
    # (m, s) at each grid time, float64, from one call (one call per time would cost more than the steps)
    coef = list(zip(*(c.tolist() for c in sde.marginal(grid.to(torch.float64)))))
    lam = [math.log(m / s) for m, s in coef]

    def data_pred(x, i):  # x0 = (x + s^2 score) / m at grid time i
        m, s = coef[i]
        x0 = (x + s**2 * score_fn(x, batch_times(times[i], x))) / m
        return x0.clamp(-options.clip_x0, options.clip_x0) if options.clip_x0 > 0.0 else x0

    past = []  # (lambda, x0) at the last `order` grid points, newest last
    for i in range(num_steps):
        (m_c, s_c), (m_n, s_n) = coef[i], coef[i + 1]
        h = lam[i + 1] - lam[i]
        past = (past + [(lam[i], data_pred(x, i))])[-options.order:]
        order = options.order
        if options.lower_order_final and num_steps < 15:
            order = min(order, num_steps - i)
        x0, i0 = past[-1][1], -math.expm1(-h)  # I_0 = 1 - e^{-h}
        if order == 3 and len(past) == 3:
            # Third order: the quadratic through the last three data predictions, integrated exactly.
            (l2, d2), (l1, d1), (l0, _) = past
            f1, f1_prev = (x0 - d1) / (l0 - l1), (d1 - d2) / (l1 - l2)
            a2 = (f1 - f1_prev) / (l0 - l2)
            a1 = f1 + (l0 - l1) * a2
            i1 = h - i0
            i2 = 0.5 * h**2 - i1
            x = (s_n / s_c) * x + m_n * (i0 * x0 + i1 * a1 + 2.0 * i2 * a2)
        else:
            if order >= 2 and len(past) >= 2:
                # DPM-Solver++(2M), Algorithm 2: D = (1 + 1/(2r)) x0_c - 1/(2r) x0_prev, r = h_prev / h.
                r = (past[-1][0] - past[-2][0]) / h
                x0 = x0 + (x0 - past[-2][1]) / (2.0 * r)
            elif order >= 2 and options.order == 3:
                # Warm-up of order 3: DPM-Solver++(2S), Algorithm 1 with r = 1 (intermediate point t_next).
                u = (s_n / s_c) * x + m_n * i0 * x0
                x0 = 0.5 * (x0 + data_pred(u, i + 1))
            x = (s_n / s_c) * x + m_n * i0 * x0  # the exact step for x0 held constant (order 1: DDIM)
        if callback is not None:
            callback(i, times[i + 1], x)
    if options.denoise == "tweedie":
        return data_pred(x, num_steps)
    return x


SPEC = SamplerSpec(
    name="dpm_solver", fn=dpm_solver, options=DPMSolverOptions, kind="sampler", stochastic=False,
    evals_per_step=1, recommended_steps=20, recommended_schedule="vp_quadratic",
    summary="DPM-Solver++ multistep, order 1-3, in half log-SNR on any SDE's marginal (Lu et al. 2022)",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
