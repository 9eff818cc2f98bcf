"""``heun``: Karras et al. 2022 (EDM), Algorithm 2, on any SDE's probability-flow ODE.

EDM writes the probability-flow ODE in scaled variables, which every linear
SDE has: with the kernel's m(t), s(t) (:meth:`SDE.marginal`)::

    x~ = x / m,   sigma = s / m = exp(-log_snr / 2),   D = (x + s^2 score(x, t)) / m   (Tweedie)
    dx~ / dsigma = (x~ - D) / sigma

Each grid step (t_cur, t_next) is one Heun step in sigma: an Euler step to
sigma_next, then the 2nd-order correction with the slope there (2 evaluations
per step; the grid ends at t_min > 0, so every step has its correction).
Optional churn (Algorithm 2's gamma) first raises sigma to
sigma_hat = sigma (1 + gamma), gamma = min(s_churn / N, sqrt(2) - 1) while
s_tmin <= sigma <= s_tmax, by adding fresh noise of std
s_noise sqrt(sigma_hat^2 - sigma^2) to x~; sigma_hat is clamped to sigma(T)
and taken back to a time by :meth:`SDE.t_from_log_snr`. ``s_tmin`` and
``s_tmax`` are in units of sigma, as in EDM.

The spec says ``stochastic=True`` because the sampler *may* draw noise (with
``s_churn > 0``), as ``ddim`` does with ``eta > 0``; with the default
``s_churn = 0`` it is deterministic and draws nothing after the prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..hookspecs import hookimpl
from ..utils import batch_times
from .base import SamplerSpec, option


@dataclass(frozen=True)
class HeunOptions:
    s_churn: float = option(0.0, "stochastic churn: each step raises sigma by gamma = min(s_churn / steps, "
                            "sqrt(2) - 1) (EDM's S_churn; 0 = deterministic)", ge=0.0)
    s_tmin: float = option(0.0, "churn only where sigma = s/m >= s_tmin (EDM's S_tmin)", ge=0.0)
    s_tmax: float = option(float("inf"), "churn only where sigma = s/m <= s_tmax (EDM's S_tmax)", ge=0.0)
    s_noise: float = option(1.0, "scale of the churn noise's std (EDM's S_noise)", ge=0.0)


def heun(sde, score_fn, x, grid, *, options, noise, callback=None):
    times = grid.tolist()
    num_steps = len(times) - 1
    # (m, s) of every grid time from one float64 call: per-step marginal calls would be most of a step's cost
    # at small batch; times off the grid (churn) are computed when met
    on_grid = dict(zip(times, zip(*(c.tolist() for c in sde.marginal(grid.to(torch.float64))))))

    def marginal(t):
        return on_grid[t] if t in on_grid else tuple(float(c) for c in sde.marginal(t))

    def slope(xs, t):  # dx~/dsigma = (x~ - D) / sigma at time t: one score evaluation
        m, s = marginal(t)
        return -s * score_fn(m * xs, batch_times(t, xs))  # D = x~ + s^2 score / m, so (x~ - D) / sigma = -s score

    m_max, s_max = marginal(sde.T)
    sigma_max = s_max / m_max  # churn never raises sigma above sigma(T)
    gamma = min(options.s_churn / num_steps, math.sqrt(2.0) - 1.0)
    xs = x / marginal(times[0])[0]  # x~ = x / m
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        m, s = marginal(t_cur)
        sig_cur = s / m
        m_next, s_next = marginal(t_next)
        sig_next = s_next / m_next
        # Churn: raise sigma to sigma_hat by adding noise (Algorithm 2, lines 4-6).
        t_hat, sig_hat = t_cur, sig_cur
        if gamma > 0 and options.s_tmin <= sig_cur <= options.s_tmax:
            sig_hat = min(sig_cur * (1.0 + gamma), sigma_max)
            if sig_hat > sig_cur:
                t_hat = float(sde.t_from_log_snr(-2.0 * math.log(sig_hat)))
                m_hat, s_hat = marginal(t_hat)
                sig_hat = s_hat / m_hat  # the sigma the score will see at t_hat
                xs = xs + options.s_noise * math.sqrt(max(sig_hat**2 - sig_cur**2, 0.0)) * noise(xs)
        # Euler step from sigma_hat to sigma_next (line 8).
        d = slope(xs, t_hat)
        x_euler = xs + (sig_next - sig_hat) * d
        # 2nd order correction (lines 9-11): the average of the slopes at both ends.
        xs = xs + (sig_next - sig_hat) * 0.5 * (d + slope(x_euler, t_next))
        if callback is not None:
            callback(i, t_next, m_next * xs)
    return m_next * xs


SPEC = SamplerSpec(
    name="heun", fn=heun, options=HeunOptions, kind="sampler", stochastic=True, evals_per_step=2,
    recommended_steps=16,
    summary="EDM's 2nd-order Heun sampler on the probability-flow ODE, optional churn (Karras et al. 2022)",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
