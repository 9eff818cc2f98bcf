"""Forward SDEs of score-based generative modelling (Song et al. 2021).

Every SDE here is linear with a Gaussian perturbation kernel::

    dx = f(t) x dt + g(t) dw,        x_t | x_0 ~ N(m(t) x_0, s(t)^2 I)

and knows its own math: drift and diffusion, the kernel's mean coefficient
``m(t)`` and std ``s(t)``, the prior, and a one-step discretization
``x_t = a x_s + b z`` between any two times ``s < t``. The reverse-time SDE and
the probability-flow ODE are derived from those by composition
(:meth:`SDE.reverse`), so samplers, losses and likelihoods never ask which SDE
they hold. A new SDE is a subclass defining ``drift_coef``, ``diffusion``,
``marginal`` and ``prior_std`` (and ``discretize`` when Euler-Maruyama is not
the discretization it should reduce to).

Times are continuous in ``[0, T]`` with ``T = 1``. Methods accept times as
tensors of any shape (or Python floats) and return coefficients of the same
shape, dtype and device; states have shape ``(B, *item_shape)`` of any rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import OptionError
from .utils import append_dims, flat_sum

ScoreFn = Callable[..., torch.Tensor]


def _t(t: float | torch.Tensor) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)


@dataclass(frozen=True)
class SDE:
    """Base class of linear forward SDEs (see the module docstring)."""

    T = 1.0
    #: Default time at which samplers stop and likelihoods start.
    t_min = 1e-3

    # -- what a subclass defines -------------------------------------------------
    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """f(t) such that the drift is f(t) x."""
        raise NotImplementedError

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t)."""
        raise NotImplementedError

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean coefficient m(t) and std s(t) of the perturbation kernel p_{0t}."""
        raise NotImplementedError

    def prior_std(self) -> float:
        """Std of the isotropic zero-mean Gaussian prior p_T."""
        raise NotImplementedError

    # -- derived -----------------------------------------------------------------
    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x, t) = f(t) x for a state ``x`` of shape (B, ...) and times ``t`` (B,)."""
        return append_dims(self.drift_coef(t), x.ndim) * x

    def discretize(self, s: float | torch.Tensor, t: float | torch.Tensor):
        """One forward step from time ``s`` to a later time ``t``: ``x_t = a x_s + b z``.

        Returns ``(a, b)`` shaped like the times. The default is Euler-Maruyama
        with coefficients at ``s``; VP and VE override it with the DDPM and
        SMLD discretizations they reduce to.
        """
        s, t = _t(s), _t(t)
        dt = t - s
        return 1.0 + self.drift_coef(s) * dt, self.diffusion(s) * dt.sqrt()

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A draw of x_t given x_0, with standard normal ``z``: m(t) x0 + s(t) z."""
        mean, std = self.marginal(t)
        return append_dims(mean, x0.ndim) * x0 + append_dims(std, x0.ndim) * z

    def log_snr(self, t: float | torch.Tensor) -> torch.Tensor:
        """log(m(t)^2 / s(t)^2), decreasing in t."""
        mean, std = self.marginal(_t(t))
        return 2.0 * (mean.log() - std.log())

    def t_from_log_snr(self, log_snr: float | torch.Tensor) -> torch.Tensor:
        """The time at which :meth:`log_snr` equals ``log_snr`` (its inverse), float64.

        The default bisects on [0, T] (log-SNR decreases in t) to float64
        resolution; VP, sub-VP and VE override it with closed forms. Values
        outside [log_snr(T), log_snr(0)] clamp to the ends.
        """
        lam = _t(log_snr).to(torch.float64)
        lo, hi = torch.zeros_like(lam), torch.full_like(lam, self.T)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # still too early: the answer is later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def prior_sample(self, z: torch.Tensor) -> torch.Tensor:
        """Map standard normal noise ``z`` to a draw from the prior p_T.

        Taking the noise as input keeps all randomness with the caller (per-item
        seeds, injected noise).
        """
        return z * self.prior_std()

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_T(x) summed over item dims: (B, ...) -> (B,)."""
        sigma = self.prior_std()
        d = x[0].numel()
        return -0.5 * flat_sum(x.square()) / sigma**2 - d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or, with ``probability_flow``, the ODE) for ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)


@dataclass(frozen=True)
class ReverseSDE:
    """dx = [f(x, t) - c g(t)^2 score(x, t)] dt + [c < 1 ? 0 : g(t)] dw-bar, run from T to 0.

    ``c`` is 1 for the reverse SDE (Anderson 1982) and 1/2 for the
    probability-flow ODE (Song et al. 2021, eq. 13).
    """

    sde: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    def drift(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
        """Reverse drift at (x, t); pass ``score`` when it is already known."""
        if score is None:
            score = self.score_fn(x, t)
        g2 = append_dims(self.sde.diffusion(t) ** 2, x.ndim)
        c = 0.5 if self.probability_flow else 1.0
        return self.sde.drift(x, t) - c * g2 * score

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        g = self.sde.diffusion(t)
        return torch.zeros_like(g) if self.probability_flow else g


@dataclass(frozen=True)
class VPSDE(SDE):
    """Variance-preserving SDE: dx = -beta(t)/2 x dt + sqrt(beta(t)) dw, beta linear in t.

    The continuous limit of DDPM (Ho et al. 2020): see :meth:`discretize`.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_mean(self, t):
        # log m(t) = -1/2 * integral_0^t beta = -t^2 (b1 - b0)/4 - t b0/2
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coef(self, t):
        return -0.5 * self.beta(_t(t))

    def diffusion(self, t):
        return self.beta(_t(t)).sqrt()

    def marginal(self, t):
        log_mean = self._log_mean(_t(t))
        return log_mean.exp(), (-torch.expm1(2.0 * log_mean)).sqrt()

    def prior_std(self):
        return 1.0

    def _t_from_log_mean(self, log_mean: torch.Tensor) -> torch.Tensor:
        # invert log m(t) = -t^2 (b1 - b0)/4 - t b0/2 (the root written without cancellation)
        b0, db = self.beta_min, self.beta_max - self.beta_min
        return -2.0 * log_mean / (0.5 * b0 + (0.25 * b0**2 - db * log_mean).sqrt())

    def t_from_log_snr(self, log_snr):
        # VP: m^2 = sigmoid(log_snr), so log m = -softplus(-log_snr) / 2
        lam = _t(log_snr).to(torch.float64)
        return self._t_from_log_mean(-0.5 * torch.nn.functional.softplus(-lam)).clamp(0.0, self.T)

    def discretize(self, s, t):
        """DDPM's step: ``a = sqrt(1 - beta_k)``, ``b = sqrt(beta_k)``, ``beta_k = beta(tau) (t - s)``.

        DDPM's linear schedule samples beta at both ends of [0, T]:
        beta_k = linspace(beta_min/N, beta_max/N, N)[k]. Evaluating beta at
        ``tau = s T / (T - (t - s))`` reproduces that exactly on a uniform grid
        of N steps (the k-th step from the bottom has s = k/N, tau = k/(N-1));
        on any grid it is the same first-order rule as tau -> s. DDPM's step
        needs beta_k < 1: a coarser step raises OptionError (samplers that do not
        discretize, such as ``ddim`` and ``ode``, take any grid).
        """
        s, t = _t(s), _t(t)
        dt = t - s
        tau = torch.where(dt < self.T, s * self.T / (self.T - dt).clamp_min(1e-12), torch.zeros_like(s))
        beta_k = self.beta(tau) * dt
        if bool((beta_k >= 1.0).any()):  # times come from the CPU grid: no device sync
            raise OptionError(
                f"{type(self).__name__}: DDPM's discretization needs beta(t) dt < 1, but the step from "
                f"t={float(s.max()):.4g} to t={float(t.max()):.4g} has beta dt = {float(beta_k.max()):.3g}; "
                f"use more steps (a uniform grid needs more than {self.beta_max * self.T:g}) or a sampler "
                f"that does not discretize the SDE (ddim, euler_maruyama, ode)")
        return (1.0 - beta_k).sqrt(), beta_k.sqrt()


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021, eq. 11): VP's drift, diffusion shrunk so that
    the kernel's variance (1 - m^2)^2 stays below VP's; it discretizes by
    Euler-Maruyama."""

    def diffusion(self, t):
        t = _t(t)
        return (self.beta(t) * -torch.expm1(4.0 * self._log_mean(t))).sqrt()

    def marginal(self, t):
        log_mean = self._log_mean(_t(t))
        return log_mean.exp(), -torch.expm1(2.0 * log_mean)

    def t_from_log_snr(self, log_snr):
        # sub-VP: exp(log_snr / 2) = c = m / (1 - m^2), so m = 2c / (1 + sqrt(1 + 4c^2))
        c = (0.5 * _t(log_snr).to(torch.float64)).exp()
        mean = 2.0 * c / (1.0 + (1.0 + 4.0 * c**2).sqrt())
        return self._t_from_log_mean(mean.log()).clamp(0.0, self.T)

    discretize = SDE.discretize


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE: dx = sqrt(d sigma^2/dt) dw, sigma(t) geometric from
    ``sigma_min`` to ``sigma_max``. The continuous limit of NCSN / SMLD
    (Song and Ermon 2019): see :meth:`discretize`."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min = 1e-5

    def sigma(self, t):
        # exp, not pow: torch's CPU pow rounds differently for short and long tensors, which
        # would make an item's sample depend on the batch size (tests/test_seeds.py)
        return self.sigma_min * (_t(t) * math.log(self.sigma_max / self.sigma_min)).exp()

    def drift_coef(self, t):
        return torch.zeros_like(_t(t))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def marginal(self, t):
        sigma = self.sigma(t)
        return torch.ones_like(sigma), sigma

    def prior_std(self):
        return self.sigma_max

    def t_from_log_snr(self, log_snr):
        # VE: log_snr = -2 log sigma(t), sigma geometric in t
        log_sigma = -0.5 * _t(log_snr).to(torch.float64)
        t = (log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
        return t.clamp(0.0, self.T)

    def discretize(self, s, t):
        """SMLD's step: ``a = 1``, ``b = sqrt(sigma(t)^2 - sigma(s)^2)``.

        NCSN's noise levels are geometric, exp(linspace(log sigma_min,
        log sigma_max, N)): exactly sigma(t) on the grid linspace(0, T, N).
        """
        sig_s, sig_t = self.sigma(s), self.sigma(t)
        return torch.ones_like(sig_t), (sig_t**2 - sig_s**2).sqrt()


SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
