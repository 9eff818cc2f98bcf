"""``unipc``: UniPC, the unified predictor-corrector (Zhao et al. 2023), on any SDE's marginal.

The probability-flow ODE in the data prediction x0 = (x + s^2 score) / m and
the half log-SNR lambda = log(m / s) reads d(x / s) = e^lambda x0 dlambda
(see ``sdekit.samplers.dpm_solver``), so from (t_c, x) to t_n, h = lambda_n - lambda_c::

    x_n = (s_n / s_c) x + m_n (1 - e^{-h}) x0_c  -  m_n B(h) sum_k a_k D_k      (paper eq. 6, 7)

The first two terms are the exact step for x0 held constant (DDIM); the sum
corrects it with differences of earlier data predictions, D_k = (x0_k - x0_c) / r_k,
r_k = (lambda_k - lambda_c) / h. The weights a solve R a = b with
R[i, k] = r_k^i and b_i = (i + 1)! h phi_{i+2}(h) / B(h) (Theorem 3.1, written
for the data prediction: phi in -h), B(h) = e^{-h} - 1 for ``bh2`` or -h for
``bh1`` (the reference code's sign convention).

Each grid step is UniP-p, the predictor (p - 1 earlier points, order p), then
UniC, the corrector: it evaluates x0 at the predicted point, adds it as the
newest difference (r = 1) and redoes the step with p weights, raising the order
to p + 1. The corrector's evaluation is the next step's x0_c, so UniPC costs
one evaluation per step, like DPM-Solver++; the last step skips the corrector
(nothing would reuse it). The first p - 1 steps warm up with the orders they
have points for; ``lower_order_final`` lowers the order in the last steps of
grids shorter than 15 steps (as ``dpm_solver`` does, and the reference code).
For p = 1 the corrector weight is 1/2, for p = 2 the predictor weight 1/2, as
in the reference implementation (wl-zhao/UniPC).

Only m and s enter: VP, sub-VP and VE run the same code. Memory of past data
predictions lives in local variables; coefficients are float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdekit.hookspecs import hookimpl
from sdekit.samplers import SamplerSpec, option
from sdekit.utils import batch_times

__version__ = "0.1.0"


@dataclass(frozen=True)
class UniPCOptions:
    order: int = option(2, "predictor order p (1-3); the corrector raises the order to p + 1", ge=1, le=3)
    variant: str = option("bh2", "B(h) of the update: 'bh1' (h) or 'bh2' (e^h - 1)", choices=("bh1", "bh2"))
    corrector: bool = option(True, "run the corrector UniC after each step but the last (false: UniP only, "
                             "order p)")
    lower_order_final: bool = option(True, "lower the order in the last steps when the grid has < 15 steps")


def big_b(h: float, variant: str) -> float:
    """B(h) in the data prediction (the paper's h is -h here): -h (``bh1``) or e^{-h} - 1 (``bh2``)."""
    return -h if variant == "bh1" else math.expm1(-h)


def weights(rks: list[float], h: float, variant: str) -> list[float]:
    """UniPC's weights a, solving R a = b with R[i, k] = r_k^i, for the ratios ``rks`` and step ``h``.

    In the data prediction the paper's h is hh = -h; with the exponential
    integrator's phi_1(z) = (e^z - 1) / z, phi_{k+1}(z) = (phi_k(z) - 1 / k!) / z,
    b_i = i! hh phi_{i+1}(hh) / B(h), i = 1..p (Theorem 3.1).
    """
    hh, p = -h, len(rks)
    b, h_phi, fact = [], math.expm1(hh) / hh - 1.0, 1.0  # h_phi = hh phi_2(hh)
    for i in range(1, p + 1):
        b.append(h_phi * fact / big_b(h, variant))
        fact *= i + 1
        h_phi = h_phi / hh - 1.0 / fact  # hh phi_{i+2}(hh)
    r = torch.tensor(rks, dtype=torch.float64)
    mat = torch.stack([r**i for i in range(p)])
    return torch.linalg.solve(mat, torch.tensor(b, dtype=torch.float64)).tolist()


def unipc(sde, score_fn, x, grid, *, options, noise, callback=None):
    times = grid.tolist()
    num_steps = len(times) - 1
    coef = [tuple(float(c) for c in sde.marginal(t)) for t in times]  # (m, s) at each grid time, float64
    lam = [math.log(m / s) for m, s in coef]

    def data_pred(x, i):  # x0 = (x + s^2 score) / m at grid time i (Tweedie)
        m, s = coef[i]
        return (x + s**2 * score_fn(x, batch_times(times[i], x))) / m

    past = [(lam[0], data_pred(x, 0))]  # (lambda, x0) at the last `order` grid points, newest last
    for i in range(num_steps):
        (m_c, s_c), (m_n, s_n) = coef[i], coef[i + 1]
        h = lam[i + 1] - lam[i]
        p = min(options.order, len(past))  # warm-up: as many points as there are
        if options.lower_order_final and num_steps < 15:
            p = min(p, num_steps - i)
        lam_c, x0_c = past[-1]
        diffs, rks = [], []
        for lam_k, x0_k in reversed(past[-p:-1]):  # D_k = (x0_k - x0_c) / r_k, newest earlier point first
            r = (lam_k - lam_c) / h
            rks.append(r)
            diffs.append((x0_k - x0_c) / r)
        # The exact step with x0 held constant (DDIM / DPM-Solver++ order 1).
        x_base = (s_n / s_c) * x + m_n * (-math.expm1(-h)) * x0_c
        b_h = big_b(h, options.variant)
        # Predictor UniP-p: p - 1 differences; for p = 2 the weight is 1/2 (reference code).
        x_pred = x_base
        if diffs:
            a_p = [0.5] if p == 2 else weights(rks, h, options.variant)
            x_pred = x_base - m_n * b_h * sum(a * d for a, d in zip(a_p, diffs))
        if i == num_steps - 1:  # the last step: nothing would reuse the corrector's evaluation
            x = x_pred
        else:
            x0_n = data_pred(x_pred, i + 1)  # the one evaluation of this step
            x = x_pred
            if options.corrector:
                # Corrector UniC-p: the new point's difference (r = 1) joins; for p = 1 its weight is 1/2.
                a_c = [0.5] if p == 1 else weights(rks + [1.0], h, options.variant)
                x = x_base - m_n * b_h * sum(a * d for a, d in zip(a_c, diffs + [x0_n - x0_c]))
            past = (past + [(lam[i + 1], x0_n)])[-options.order:]
        if callback is not None:
            callback(i, times[i + 1], x)
    return x


SPEC = SamplerSpec(
    name="unipc", fn=unipc, options=UniPCOptions, kind="sampler", stochastic=False, evals_per_step=1,
    recommended_steps=10, recommended_schedule="vp_quadratic",
    summary="UniPC multistep predictor-corrector, order p + 1 for one evaluation per step (Zhao et al. 2023)",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
