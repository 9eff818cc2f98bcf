"""``ddim``: denoising diffusion implicit models (Song, Meng and Ermon 2021), any kernel.

With eps = -s score and x0 = (x - s eps) / m at t_cur (Tweedie), the step to t_next is::

    x_next = m_n x0 + sqrt(s_n^2 - sigma^2) eps + sigma z,
    sigma^2 = eta^2 s_n^2 (1 - SNR(t_cur) / SNR(t_next))

which is DDIM's eq. 12 and 16 written with the SDE's marginal (m, s), so it
runs on VP, sub-VP and VE alike. ``eta = 0`` is deterministic; ``eta = 1`` is
ancestral sampling with the posterior variance.

``clip_x0 = c > 0`` clamps every coordinate of x0 to [-c, c] before the step and
recomputes eps = (x - m x0) / s from it (DDPM's ``clip_denoised``; diffusers'
``clip_sample`` with ``use_clipped_model_output``), so that with eta = 0 the
step stays ``dpm_solver`` order 1 with the same clipping. Off by default: it is
for data known to lie in [-c, c], and guards the deterministic step against a
network whose eps is wrong where it was rarely trained (docs/samplers.md,
"Outliers of the deterministic samplers").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..hookspecs import hookimpl
from ..utils import batch_times
from .base import SamplerSpec, option


@dataclass(frozen=True)
class DDIMOptions:
    eta: float = option(0.0, "stochasticity: 0 deterministic DDIM, 1 ancestral", ge=0.0, le=1.0)
    clip_x0: float = option(0.0, "clamp each coordinate of the x0 prediction to [-clip_x0, clip_x0] "
                                 "(the data's range); 0: off", ge=0.0)


def ddim_step(sde, score_fn, x, t_cur, t_next, *, options, noise):
    # both times in one float64 call: the marginal's tensor ops are most of a step's overhead at small batch
    (m_c, m_n), (s_c, s_n) = (c.tolist() for c in sde.marginal(torch.tensor([t_cur, t_next], dtype=torch.float64)))
    eps = -s_c * score_fn(x, batch_times(t_cur, x))
    x0 = (x - s_c * eps) / m_c
    if options.clip_x0 > 0.0:
        x0 = x0.clamp(-options.clip_x0, options.clip_x0)
        eps = (x - m_c * x0) / s_c
    snr_ratio = (m_c * s_n / (m_n * s_c)) ** 2
    var = options.eta**2 * s_n**2 * max(1.0 - snr_ratio, 0.0)
    x_mean = m_n * x0 + math.sqrt(max(s_n**2 - var, 0.0)) * eps
    if var == 0.0:
        return x_mean, x_mean
    return x_mean + math.sqrt(var) * noise(x), x_mean


SPEC = SamplerSpec(
    name="ddim", fn=ddim_step, options=DDIMOptions, kind="predictor", stochastic=True,
    evals_per_step=1, recommended_steps=100,
    summary="DDIM with eta (0 = deterministic), on any SDE's marginal",
)


@hookimpl
def sdekit_register_samplers(register):
    register(SPEC)
