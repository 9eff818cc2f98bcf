"""Denoising score-matching losses: draw t, perturb, call the score, weight.

Every loss here is one small callable (:class:`DenoisingLoss`) made of two
named parts, a *time sampler* and a *weighting*::

    t ~ times,  z ~ N(0, I),  x_t = m x0 + s z           (the SDE's kernel at t)
    loss = w(t) * reduce((s score(x_t, t) + z)^2)         w(t) = lambda(t) / s(t)^2

``s score + z`` is s (score + z / s): the residual of denoising score matching
(Vincent 2011; Song et al. 2021, eq. 7) with lambda = s^2 folded in, so no
division by s ever happens. With an eps-network adapted to the score contract
(:func:`sdekit.score.score_from`), -s score is the network's output, and the
residual is eps_theta - z.

Kinds (:class:`LossConfig`):

- ``dsm``: continuous t uniform on [t_eps, T]; weighting ``sigma2``
  (lambda = s^2, w = 1) or ``likelihood`` (lambda = g^2, w = g^2 / s^2: the
  weighting under which the loss bounds the negative log-likelihood, Song et al.
  2021b, "Maximum likelihood training of score-based diffusion models", Thm. 1).
  ``importance_sampling`` draws t with density proportional to g^2 / s^2. For a
  linear SDE that density is exactly -d log SNR / dt (the variance obeys
  d s^2/dt = 2 f s^2 + g^2 and the mean dm/dt = f m, so g^2/s^2 = d/dt log(s^2/m^2)),
  so the draw is: log SNR uniform on [log SNR(T), log SNR(t_eps)], mapped back by
  the SDE's own :meth:`~sdekit.sde.SDE.t_from_log_snr` (closed forms for VP,
  sub-VP and VE; bisection for any other SDE). The per-sample weight is then the
  constant Z / (T - t_eps), Z = log SNR(t_eps) - log SNR(T): same expectation,
  lower variance.
- ``ddpm``: Ho et al. (2020)'s L_simple, ||eps_theta - z||^2 over N discrete
  levels (k uniform). The levels are the SDE's own discretization chained from
  t = 0 on the uniform grid of N steps (:meth:`~sdekit.sde.SDE.discretize`;
  on VP: alpha-bar_k = prod_{j <= k} (1 - beta_j), beta_j = linspace(beta_min/N,
  beta_max/N, N)[j]), and x_t = sqrt(alpha-bar_k) x0 + sqrt(1 - alpha-bar_k) z
  exactly. It needs a variance-preserving discretization (a^2 + b^2 = 1).
- ``smld``: NCSN's loss (Song and Ermon 2019, eq. 5-6, lambda = sigma^2, without
  their 1/2) over the geometric levels sigma_i = exp(linspace(log sigma_min,
  log sigma_max, N))[i], i uniform. It needs a mean-preserving discretization (a = 1).

The score of a discrete level is evaluated at the continuous time whose SDE
marginal has the level's noise (same log-SNR): on VE that is the grid time
itself; on VP it is within O(1/N) of (k+1)/N, and the levels noisier than the
SDE at T (the last few, as alpha-bar_k < m(T)^2) are labelled T. So the exact
score of the SDE (the oracle) minimises every loss here.

All randomness comes from the given ``torch.Generator`` in a fixed order
(t, z, then the label-dropout mask), on ``x0``'s device and dtype.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple

import torch

from .config import ConfigError, option, value_problem
from .errors import OptionError
from .sde import SDE, SDES
from .utils import append_dims

ScoreFn = Callable[..., torch.Tensor]

KINDS = ("dsm", "ddpm", "smld")
REDUCES = ("mean", "sum")


@dataclass(frozen=True)
class LossConfig:
    """The ``[loss]`` section of a config. An invalid value raises :class:`~sdekit.config.ConfigError`
    naming its key (the config loader adds ``loss.`` and the source)."""

    kind: str = option("dsm", "'dsm' continuous-time denoising score matching, 'ddpm' Ho et al.'s discrete "
                       "eps loss (VP), 'smld' NCSN's discrete loss (VE)", choices=KINDS)
    weighting: str = option("sigma2", "lambda(t) of dsm: 'sigma2' (s(t)^2, the standard) or 'likelihood' "
                            "(g(t)^2, Song et al. 2021b)", choices=("sigma2", "likelihood"))
    importance_sampling: bool = option(False, "with weighting='likelihood': draw t with density "
                                       "proportional to g^2/s^2 (log-SNR uniform), a constant weight")
    reduce: str = option("mean", "how the squared residual is reduced over item dims", choices=REDUCES)
    p_uncond: float = option(0.0, "label-dropout probability for classifier-free guidance: the score "
                             "receives cond_drop=(B,) bool mask when > 0", ge=0.0, le=1.0)
    t_eps: float | None = option(None, "smallest t of dsm (default: the SDE's t_min)", gt=0.0, lt=1.0)
    num_scales: int = option(1000, "N, the number of discrete noise levels of ddpm and smld", ge=2)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # the loader checked these; a direct construction did not
            problem = None if getattr(self, f.name) is None else value_problem(getattr(self, f.name), f.metadata)
            if problem:
                raise ConfigError(problem, f.name)
        if self.kind != "dsm" and self.weighting != "sigma2":
            raise ConfigError(f"= {self.weighting!r} applies to kind 'dsm' only; kind {self.kind!r} has its "
                              f"paper's weighting (sigma2)", "weighting")
        if self.kind != "dsm" and self.t_eps is not None:
            raise ConfigError(f"applies to kind 'dsm' only; kind {self.kind!r} draws from num_scales discrete "
                              f"levels", "t_eps")
        if self.importance_sampling and (self.kind != "dsm" or self.weighting != "likelihood"):
            raise ConfigError("applies to kind 'dsm' with weighting 'likelihood' "
                              f"(got kind {self.kind!r}, weighting {self.weighting!r})", "importance_sampling")


# -- weightings: w(t) = lambda(t) / s(t)^2, the factor in front of ||s score + z||^2 ------------

@dataclass(frozen=True)
class Sigma2Weighting:
    """lambda(t) = s(t)^2 (Song et al. 2021, the standard): w = 1."""

    name = "sigma2"

    def __call__(self, sde: SDE, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)


@dataclass(frozen=True)
class LikelihoodWeighting:
    """lambda(t) = g(t)^2 (Song et al. 2021b): w = g^2 / s^2, the integrand of the NLL bound."""

    name = "likelihood"

    def __call__(self, sde: SDE, t: torch.Tensor) -> torch.Tensor:
        return (sde.diffusion(t) / sde.marginal(t)[1]).square()


WEIGHTINGS = {"sigma2": Sigma2Weighting(), "likelihood": LikelihoodWeighting()}


# -- time samplers: (B,) times, the kernel at them, and an importance weight ---------------

class Draw(NamedTuple):
    """Times ``t`` (B,) and the perturbation kernel ``x_t = mean x0 + std z`` at them;
    ``weight`` (B,) is the density of uniform times over the sampler's density (1 if uniform)."""

    t: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor | float


@dataclass(frozen=True)
class UniformTimes:
    """t uniform on [t_min, t_max]; the kernel is the SDE's marginal."""

    sde: SDE
    t_min: float
    t_max: float

    def __call__(self, n: int, like: torch.Tensor, generator: torch.Generator | None) -> Draw:
        u = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
        t = self.t_min + (self.t_max - self.t_min) * u
        return Draw(t, *self.sde.marginal(t), 1.0)


@dataclass(frozen=True)
class LogSNRTimes:
    """t with density g^2/s^2 / Z = -(d log SNR / dt) / Z on [t_min, t_max]: log SNR uniform.

    ``weight`` = Z / ((t_max - t_min) g^2/s^2), so that with the likelihood
    weighting the per-sample factor is the constant Z / (t_max - t_min).
    """

    sde: SDE
    t_min: float
    t_max: float

    def __call__(self, n: int, like: torch.Tensor, generator: torch.Generator | None) -> Draw:
        hi, lo = float(self.sde.log_snr(self.t_min)), float(self.sde.log_snr(self.t_max))
        u = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
        # inverse CDF: F(t) = (log SNR(t_min) - log SNR(t)) / Z, solved in float64 by the SDE
        t = self.sde.t_from_log_snr(hi - (hi - lo) * u.to(torch.float64))
        t = t.to(like.dtype).clamp(self.t_min, self.t_max)
        mean, std = self.sde.marginal(t)
        density = (self.sde.diffusion(t) / std).square()  # g^2/s^2 = -d log SNR / dt
        return Draw(t, mean, std, (hi - lo) / (self.t_max - self.t_min) / density)


@dataclass(frozen=True, eq=False)
class LevelTimes:
    """One of N discrete levels, uniformly: float64 tables ``t``, ``mean``, ``std`` (N,)
    (see :func:`discrete_levels`), cast once per device and dtype."""

    t: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    _cast: dict = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, n: int, like: torch.Tensor, generator: torch.Generator | None) -> Draw:
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = tuple(v.to(device=like.device, dtype=like.dtype) for v in (self.t, self.mean, self.std))
        t, mean, std = self._cast[key]
        k = torch.randint(len(self.t), (n,), generator=generator, device=like.device)
        return Draw(t[k], mean[k], std[k], 1.0)


def _valid_sdes(test: Callable[[SDE], bool]) -> str:
    return ", ".join(name for name, cls in SDES.items() if test(cls())) or "(none)"


def _chain(sde: SDE, num_scales: int, kind: str):
    """The kernel (log m, s^2 / m^2) at every level of the SDE's discretization chained over its grid."""
    T = sde.T
    if kind == "ddpm":  # N steps from t = 0, where x_t = x0; level k is after step k
        grid = torch.linspace(0.0, T, num_scales + 1, dtype=torch.float64)
        log_m0, inv_snr0 = 0.0, 0.0
    else:  # smld: N levels on linspace(0, T, N), starting from the SDE's kernel at t = 0
        grid = torch.linspace(0.0, T, num_scales, dtype=torch.float64)
        m0, s0 = (float(c) for c in sde.marginal(0.0))
        log_m0, inv_snr0 = math.log(m0), (s0 / m0) ** 2
    a, b = sde.discretize(grid[:-1], grid[1:])
    log_m = log_m0 + torch.cumsum(a.log(), 0)
    # s_{k+1}^2 = a^2 s_k^2 + b^2, divided by m_{k+1}^2 = a^2 m_k^2: the inverse SNR adds b^2 / m_{k+1}^2
    inv_snr = inv_snr0 + torch.cumsum(b.square() * (-2.0 * log_m).exp(), 0)
    if kind == "smld":
        log_m = torch.cat([torch.tensor([log_m0], dtype=torch.float64), log_m])
        inv_snr = torch.cat([torch.tensor([inv_snr0], dtype=torch.float64), inv_snr])
    return log_m, inv_snr


def _probe(sde: SDE):
    """(a, b) of two small float64 steps of the SDE's discretization."""
    s = torch.tensor([0.0, 0.5], dtype=torch.float64)
    return sde.discretize(s, s + 0.001)


def _variance_preserving(sde: SDE) -> bool:
    a, b = _probe(sde)
    return bool(((a.square() + b.square() - 1.0).abs() < 1e-12).all())


def _mean_preserving(sde: SDE) -> bool:
    a, _ = _probe(sde)
    return bool((a == 1.0).all())


def discrete_levels(sde: SDE, kind: str, num_scales: int = 1000):
    """The N noise levels of ``ddpm`` or ``smld`` on ``sde``: float64 ``(t, mean, std)``, each (N,).

    ``mean`` and ``std`` are the kernel x_t = mean x0 + std z of the SDE's
    discretization chained over the uniform grid (see the module docstring);
    ``t`` is the continuous time at which the SDE's marginal has the same
    log-SNR (clamped to [0, T]), where the score is evaluated.

    Raises :class:`OptionError` when the SDE's discretization is not DDPM-like
    (variance preserving, for ``ddpm``) or SMLD-like (mean preserving, for ``smld``).
    """
    name = type(sde).__name__
    if kind not in ("ddpm", "smld"):
        raise OptionError(f"discrete levels exist for kinds 'ddpm' and 'smld', not {kind!r}")
    if kind == "ddpm" and not _variance_preserving(sde):
        raise OptionError(f"loss kind 'ddpm' needs a variance-preserving discretization "
                          f"(x_t = a x_s + b z with a^2 + b^2 = 1, DDPM's); {name} has none. Valid SDEs: "
                          f"{_valid_sdes(_variance_preserving)}; on {name} use kind 'dsm'"
                          + (" or 'smld'" if _mean_preserving(sde) else ""))
    if kind == "smld" and not _mean_preserving(sde):
        raise OptionError(f"loss kind 'smld' needs a mean-preserving discretization "
                          f"(x_t = x_s + b z, NCSN's); {name} has none. Valid SDEs: "
                          f"{_valid_sdes(_mean_preserving)}; on {name} use kind 'dsm'"
                          + (" or 'ddpm'" if _variance_preserving(sde) else ""))
    try:
        log_m, inv_snr = _chain(sde, num_scales, kind)
    except OptionError as err:  # VP: DDPM's steps need beta_k < 1
        raise OptionError(f"loss.num_scales={num_scales} is too coarse for kind {kind!r} on {name}: {err}") from None
    mean = log_m.exp()
    std = mean * inv_snr.sqrt()
    t = sde.t_from_log_snr(-inv_snr.log()).to(torch.float64)
    return t, mean, std


# -- the loss --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DenoisingLoss:
    """``loss(score_fn, x0, generator=None, cond=None) -> (B,)`` per-example losses.

    ``score_fn(x, t, **cond)`` is sdekit's score contract; ``x0`` (B, ...) a data
    batch; ``cond`` keyword arguments passed to the score (``{"y": labels}``).
    With ``p_uncond > 0`` the score also receives ``cond_drop``, a (B,) bool
    mask, True where the conditioning is to be dropped. The caller takes the mean.
    """

    sde: SDE
    times: Callable[[int, torch.Tensor, torch.Generator | None], Draw]
    weighting: Callable[[SDE, torch.Tensor], torch.Tensor]
    reduce: str = "mean"
    p_uncond: float = 0.0

    def __call__(self, score_fn: ScoreFn, x0: torch.Tensor, generator: torch.Generator | None = None,
                 cond: Mapping | None = None) -> torch.Tensor:
        n, like = x0.shape[0], x0
        t, mean, std, weight = self.times(n, like, generator)                       # draw t
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = append_dims(mean, x0.ndim) * x0 + append_dims(std, x0.ndim) * z      # perturb
        cond = dict(cond or {})
        if self.p_uncond > 0:
            if not cond:
                raise OptionError("loss.p_uncond > 0 drops the conditioning, but the loss got none (cond=None): "
                                  "pass cond={'y': labels}, or set p_uncond = 0")
            cond["cond_drop"] = torch.rand(n, generator=generator, device=x0.device) < self.p_uncond
        score = score_fn(x_t, t, **cond)                                           # call the score
        # s (score + z / s) with the score's own std at t (= std, but for ddpm levels labelled T)
        s_t = append_dims(self.sde.marginal(t)[1], x0.ndim)
        residual = (s_t * score + z).square().reshape(n, -1)
        per_item = residual.mean(1) if self.reduce == "mean" else residual.sum(1)
        return self.weighting(self.sde, t) * weight * per_item                     # weight


def make_loss(config: LossConfig, sde: SDE) -> DenoisingLoss:
    """The loss ``config`` describes on ``sde`` (see :class:`DenoisingLoss` for the call).

    Raises :class:`OptionError` for a combination that makes no sense (``ddpm``
    on a non-variance-preserving SDE, ``smld`` on a non-mean-preserving one, a
    ``t_eps`` outside (0, T)).
    """
    if config.kind == "dsm":
        t_eps = sde.t_min if config.t_eps is None else config.t_eps
        if not 0.0 < t_eps < sde.T:
            raise OptionError(f"loss.t_eps must be in (0, {sde.T:g}), got {t_eps!r}")
        sampler = LogSNRTimes if config.importance_sampling else UniformTimes
        times = sampler(sde, float(t_eps), float(sde.T))
    else:
        times = LevelTimes(*discrete_levels(sde, config.kind, config.num_scales))
    return DenoisingLoss(sde, times, WEIGHTINGS[config.weighting], config.reduce, config.p_uncond)
