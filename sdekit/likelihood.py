"""Likelihoods of score-based models: the probability-flow ODE, bits/dim and the ELBO.

**Exact likelihood of the ODE model** (Song et al. 2021, sec. 4.3 and app. D).
The probability-flow ODE ``dx/dt = v(x, t) = f(x, t) - g(t)^2 score(x, t) / 2``
(:meth:`SDE.reverse` with ``probability_flow=True``) carries p_t along its paths,
and the instantaneous change of variables (Chen et al. 2018) gives::

    log p_{t_min}(x) = log p_T(x_T) + integral_{t_min}^{T} div v(x_t, t) dt

for the path from ``x_{t_min} = x`` forwards to ``x_T``. :func:`log_likelihood`
integrates the augmented state ``(x, delta)``, ``d delta / dt = div v``, with an
adaptive torchdiffeq solver. The divergence is exact (``D`` backward passes
per evaluation, for small D and as a check) or the Hutchinson-Skilling
estimate ``eps^T (dv/dx) eps`` (one vector-Jacobian product per probe), with
probes drawn once per item and kept fixed along the path, which makes the
estimate of log p(x) unbiased up to the solver's error.

**Bits per dimension** of 8-bit (or ``levels``-level) images,
:func:`bits_per_dim`, follows Song et al. 2021's convention: uniform
dequantization ``y = k + u`` of the integer levels, model space
``x = 2 y / levels - 1``, ``log p(y) = log p(x) + D log(2 / levels)``.

**The ELBO** (Song, Durkan, Murray and Ermon 2021, "Maximum likelihood
training of score-based diffusion models": the per-datapoint bound behind their
Thm. 1, in the denoising score matching form), :func:`elbo`: a lower bound on
log p_{t_min}(x) of the *SDE* model (the reverse SDE from the prior with the
given score), not of the ODE model, estimated by Monte Carlo over t and the
noise; see its docstring for the derivation.

Everything stays on ``x``'s device, in ``x``'s dtype for the score calls; the
returned log-densities are float64. The score contract is sdekit's
``score_fn(x, t, **cond)``; results carry no autograd graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torchdiffeq

from .errors import OptionError, ShapeError, UnknownNameError
from .losses import LogSNRTimes, UniformTimes
from .sde import SDE
from .solvers import ODE_ADAPTIVE
from .utils import append_dims, flat_sum

ScoreFn = Callable[..., torch.Tensor]

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")
#: largest item size ``divergence="exact"`` accepts (it costs D backward passes per evaluation)
MAX_EXACT_DIM = 1024


@dataclass(frozen=True)
class LikelihoodResult:
    """What :func:`log_likelihood` and :func:`bits_per_dim` return; tensors on the input's device.

    Attributes:
        log_likelihood: (B,) float64 nats, log p_{t_min}(x) of the continuous
            ``x`` the ODE started from (for :func:`bits_per_dim`: of the
            dequantized points in model space, averaged over the draws).
        prior_log_prob: (B,) float64, log p_T(x_T) at the ODE's end.
        delta_log_prob: (B,) float64, integral of div v from t_min to T;
            ``log_likelihood = prior_log_prob + delta_log_prob``.
        bits_per_dim: (B,) float64, ``-log_likelihood / (D ln 2)``; for
            :func:`bits_per_dim` also ``- log2(2 / levels)``, the change to the
            density of the dequantized levels.
        nfe: evaluations of the augmented ODE field (each one score call, and
            with Hutchinson one vector-Jacobian product per probe; with exact
            divergence D backward passes), summed over dequantization draws.
        trajectory: ``(times (K,), cumulative delta (K, B))``, both float64: the
            divergence integrated from t_min to each time, at the solver's
            accepted steps (the start of each, then T) or at ``record_times``;
            None for :func:`bits_per_dim` with several draws and no ``record_times``.
    """

    log_likelihood: torch.Tensor
    prior_log_prob: torch.Tensor
    delta_log_prob: torch.Tensor
    bits_per_dim: torch.Tensor
    nfe: int
    trajectory: tuple | None = None


# -- checks -------------------------------------------------------------------------------

def _check_choice(what: str, value, valid: Sequence[str]) -> None:
    if value not in valid:
        raise UnknownNameError(what, value, valid)


def _check_items(x: torch.Tensor, item_shape: Sequence[int] | None, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"{what} must be a batch of shape (B, *item_shape), got {shape}")
    if item_shape is not None and tuple(x.shape[1:]) != tuple(item_shape):
        raise ShapeError(f"{what} has items of shape {tuple(x.shape[1:])}, but the score expects {tuple(item_shape)}")


def _check_t_min(sde: SDE, t_min: float | None) -> float:
    t_min = sde.t_min if t_min is None else float(t_min)
    if not 0.0 < t_min < sde.T:
        raise OptionError(f"t_min must be in (0, {sde.T:g}), got {t_min!r}")
    return t_min


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be an integer >= 1, got {value!r}")
    return value


# -- the augmented probability-flow ODE -----------------------------------------------------

def draw_probes(like: torch.Tensor, num_probes: int, probe: str,
                generator: torch.Generator | None) -> torch.Tensor:
    """Hutchinson probes (num_probes, *like.shape) with E[eps eps^T] = I, on ``like``'s device and dtype.

    ``rademacher``: entries +-1; ``gaussian``: standard normal. Drawn on the
    generator's device (then moved), so a CPU generator serves CUDA data.
    """
    device = like.device if generator is None else generator.device
    shape = (num_probes, *like.shape)
    if probe == "rademacher":
        eps = torch.randint(0, 2, shape, generator=generator, device=device).mul_(2).sub_(1)
    else:
        eps = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return eps.to(device=like.device, dtype=like.dtype)


def _exact_divergence(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i dv_i/dx_i per item, by D backward passes (items must not interact across the batch)."""
    vf = v.reshape(v.shape[0], -1)
    div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for i in range(vf.shape[1]):
        (grad,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True)
        div += grad.reshape(v.shape[0], -1)[:, i]
    return div


def _hutchinson_divergence(v: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """mean over probes of eps^T (dv/dx) eps, one vector-Jacobian product per probe."""
    div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for p, eps in enumerate(probes):
        (vjp,) = torch.autograd.grad(v, x, grad_outputs=eps, retain_graph=p < len(probes) - 1)
        div += flat_sum(vjp * eps)
    return div / len(probes)


class _AugmentedField:
    """d/dt (x, delta) = (v(x, t), div v(x, t)) in torchdiffeq's ``f(t, y)`` order.

    ``v`` is the probability-flow drift of :meth:`SDE.reverse`; ``probes`` None
    means the exact divergence. Counts its evaluations (``nfe``) and, as
    torchdiffeq's ``callback_accept_step``, records ``(t0, delta(t0))`` at the
    start of every accepted step.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, cond: Mapping, probes: torch.Tensor | None):
        self.reverse = sde.reverse(score_fn, probability_flow=True)
        self.score_fn, self.cond, self.probes = score_fn, cond, probes
        self.nfe = 0
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        x = state[0]
        times = t.to(x.dtype).reshape(1).repeat(x.shape[0])  # (B,) on x's device
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            score = self.score_fn(x, times, **self.cond)
            if score.shape != x.shape:
                raise ShapeError(f"score_fn returned shape {tuple(score.shape)} for x of shape {tuple(x.shape)}; "
                                 f"a score has the shape of its input")
            v = self.reverse.drift(x, times, score=score)
            div = _exact_divergence(v, x) if self.probes is None else _hutchinson_divergence(v, x, self.probes)
        self.nfe += 1
        return v.detach(), div.detach()

    def callback_accept_step(self, t0: torch.Tensor, y0: tuple, dt: torch.Tensor) -> None:
        self.steps.append((t0.detach().to(torch.float64).reshape(()), y0[1].detach().clone()))


def _check_record_times(record_times, t_min: float, T: float) -> list[float]:
    times = [float(t) for t in torch.as_tensor(record_times, dtype=torch.float64).reshape(-1)]
    if not times or any(b <= a for a, b in zip(times, times[1:])) or times[0] < t_min or times[-1] > T:
        raise OptionError(f"record_times must be strictly increasing times in [t_min, T] = [{t_min:g}, {T:g}], "
                          f"got {times}")
    return times


def log_likelihood(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, *, t_min: float | None = None,
                   rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                   divergence: str = "hutchinson", probe: str = "rademacher", num_probes: int = 1,
                   generator: torch.Generator | None = None, cond: Mapping | None = None,
                   record_times: Sequence[float] | torch.Tensor | None = None,
                   item_shape: Sequence[int] | None = None) -> LikelihoodResult:
    """log p_{t_min}(x) of the probability-flow ODE model, by the instantaneous change of variables.

    Integrates ``(x, delta)`` from ``t_min`` forwards to ``T`` (module docstring)
    and adds the prior: ``log p(x) = sde.prior_log_prob(x_T) + delta(T)``.

    Args:
        x: (B, *item_shape) floating, any rank and device; the score is called
            in its dtype, the time grid is float64.
        t_min: where the ODE starts (default ``sde.t_min``): the result is the
            density of the model's marginal at that time.
        rtol, atol: tolerances of the adaptive solver; the error norm is the
            larger of the RMS errors of x and of delta, over the whole batch
            (one step size for all items).
        method: an adaptive torchdiffeq method (:data:`sdekit.solvers.ODE_ADAPTIVE`);
            its last step ends exactly on T, so no score is asked beyond it.
        divergence: ``"exact"`` (D backward passes per evaluation; D <= 1024) or
            ``"hutchinson"`` (one VJP per probe: unbiased, with variance).
            Both assume the score treats the items of a batch independently.
        probe, num_probes: Hutchinson's probes, ``"rademacher"`` (lower variance)
            or ``"gaussian"``, averaged over ``num_probes`` per item, drawn once
            from ``generator`` (or torch's global one) before the solve.
        cond: keyword arguments for ``score_fn(x, t, **cond)``.
        record_times: increasing times in [t_min, T] at which to report the
            cumulative divergence (dense output, no extra evaluations); default:
            the solver's accepted steps.
        item_shape: the item shape the score expects; checked against x.

    Raises :class:`~sdekit.errors.ShapeError` for a wrong ``x`` or score shape,
    :class:`~sdekit.errors.UnknownNameError` / :class:`~sdekit.errors.OptionError`
    for invalid options (naming the valid ones).
    """
    _check_items(x, item_shape)
    if not x.is_floating_point():
        raise OptionError(f"x must be a floating tensor, got {x.dtype} (for pixels use bits_per_dim)")
    _check_choice("adaptive ODE method", method, ODE_ADAPTIVE)
    _check_choice("divergence", divergence, DIVERGENCES)
    _check_choice("Hutchinson probe", probe, PROBES)
    _check_count("num_probes", num_probes)
    if not (rtol > 0 and atol > 0):
        raise OptionError(f"rtol and atol must be positive, got rtol={rtol!r}, atol={atol!r}")
    t_min, T = _check_t_min(sde, t_min), float(sde.T)
    batch, dim = x.shape[0], x[0].numel()
    if divergence == "exact" and dim > MAX_EXACT_DIM:
        raise OptionError(f"divergence='exact' takes D backward passes per evaluation and is limited to "
                          f"D <= {MAX_EXACT_DIM}; these items have D = {dim}: use divergence='hutchinson' "
                          f"(more num_probes for less variance)")
    record = None if record_times is None else _check_record_times(record_times, t_min, T)

    probes = None if divergence == "exact" else draw_probes(x, num_probes, probe, generator)
    field = _AugmentedField(sde, score_fn, dict(cond or {}), probes)
    grid = [t_min] + [t for t in (record or []) if t_min < t < T] + [T]
    times = torch.tensor(grid, dtype=torch.float64, device=x.device)
    state = (x.detach(), torch.zeros(batch, dtype=x.dtype, device=x.device))
    # the last step ends on T: no score is asked beyond it (as in solvers.odeint_reverse)
    xs, deltas = torchdiffeq.odeint(field, state, times, rtol=rtol, atol=atol, method=method,
                                    options={"step_t": times[-1:]})
    delta = deltas[-1].to(torch.float64)
    prior = sde.prior_log_prob(xs[-1].to(torch.float64))
    if record is None:
        traj_t = torch.stack([t for t, _ in field.steps] + [times[-1]])
        traj_delta = torch.stack([d for _, d in field.steps] + [deltas[-1]]).to(torch.float64)
    else:
        index = [grid.index(t) for t in record]  # t_min and T were kept in the grid
        traj_t, traj_delta = times[index], deltas[index].to(torch.float64)
    total = prior + delta
    return LikelihoodResult(log_likelihood=total, prior_log_prob=prior, delta_log_prob=delta,
                            bits_per_dim=-total / (dim * math.log(2.0)), nfe=field.nfe,
                            trajectory=(traj_t, traj_delta))


# -- bits per dimension of discrete images -------------------------------------------------

def _to_levels(data: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels k in 0..levels-1 (as float64) from integer pixels or floats in [-1, 1]."""
    if data.dtype == torch.bool or data.is_complex():
        raise OptionError(f"bits_per_dim needs integer pixels or floats in [-1, 1], got {data.dtype}")
    if data.is_floating_point():
        lo, hi = float(data.min()), float(data.max())
        if not (-1.0 <= lo and hi <= 1.0):  # also refuses NaN
            raise OptionError(f"float data must lie in [-1, 1] (x = 2 k / (levels - 1) - 1); got values in "
                              f"[{lo:g}, {hi:g}]")
        return ((data.to(torch.float64) + 1.0) * (0.5 * (levels - 1))).round()
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or hi > levels - 1:
        raise OptionError(f"pixels must be integers in 0..{levels - 1} (levels={levels}); got values in {lo}..{hi}")
    return data.to(torch.float64)


def bits_per_dim(sde: SDE, score_fn: ScoreFn, pixels_or_x: torch.Tensor, *, levels: int = 256,
                 dequantize: int = 1, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, **ode_kwargs) -> LikelihoodResult:
    """Bits per dimension of discrete images under the ODE model, Song et al. 2021's convention.

    The levels ``k in 0..levels-1`` come from integer pixels (uint8 or any
    integer dtype) or from floats ``x in [-1, 1]`` by ``k = round((x + 1) (levels - 1) / 2)``
    (the inverse of :func:`sdekit.data.from_images` for 8 bits). Each draw
    dequantizes ``y = k + u``, ``u ~ U[0, 1)^D`` (from ``generator``, before that
    draw's probes), maps it to model space ``x = 2 y / levels - 1`` and runs
    :func:`log_likelihood` there. The density of y is
    ``log p(y) = log p(x) + D log(2 / levels)``, and ``-log p(y) / (D ln 2)`` is
    an upper bound, in expectation over u, on the discrete model's
    ``-log2 P(k) / D`` (variational dequantization with a uniform q; nearly
    tight for a density that is smooth at the scale of one level).

    With ``dequantize = n`` draws the result is the arithmetic mean over the
    draws, per item, of every field (log_likelihood, prior, delta, bpd): the
    Monte Carlo estimate of that bound, not the tighter importance-weighted
    log-mean-exp. ``log_likelihood`` stays the model-space log p(x); only
    ``bits_per_dim`` includes the offset, so
    ``bits_per_dim = -(log_likelihood + D log(2 / levels)) / (D ln 2)``.

    Args:
        dtype: model-space dtype for integer pixels (default: torch's default
            dtype); float input keeps its own.
        ode_kwargs: passed to :func:`log_likelihood` (``t_min``, ``rtol``,
            ``atol``, ``method``, ``divergence``, ``probe``, ``num_probes``,
            ``cond``, ``record_times``, ``item_shape``).

    Raises :class:`~sdekit.errors.OptionError` for values outside the data range
    (0..levels-1, or [-1, 1] for floats).
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise OptionError(f"levels must be an integer >= 2, got {levels!r}")
    _check_count("dequantize", dequantize)
    _check_items(pixels_or_x, ode_kwargs.get("item_shape"), "pixels_or_x")
    model_dtype = pixels_or_x.dtype if pixels_or_x.is_floating_point() else dtype or torch.get_default_dtype()
    k = _to_levels(pixels_or_x, levels)
    dim = k[0].numel()
    device = k.device if generator is None else generator.device
    runs = []
    for _ in range(dequantize):
        u = torch.rand(k.shape, generator=generator, device=device, dtype=torch.float64).to(k.device)
        x = (2.0 * (k + u) / levels - 1.0).to(model_dtype)
        runs.append(log_likelihood(sde, score_fn, x, generator=generator, **ode_kwargs))
    mean = lambda name: torch.stack([getattr(r, name) for r in runs]).mean(0)  # noqa: E731
    ll = mean("log_likelihood")
    trajectory = runs[0].trajectory
    if dequantize > 1:  # the draws share the times only when they were requested
        trajectory = None if ode_kwargs.get("record_times") is None else (
            runs[0].trajectory[0], torch.stack([r.trajectory[1] for r in runs]).mean(0))
    offset = dim * math.log(2.0 / levels)  # log |dx/dy| summed over dims, once
    return LikelihoodResult(log_likelihood=ll, prior_log_prob=mean("prior_log_prob"),
                            delta_log_prob=mean("delta_log_prob"),
                            bits_per_dim=-(ll + offset) / (dim * math.log(2.0)),
                            nfe=sum(r.nfe for r in runs), trajectory=trajectory)


# -- the ELBO -------------------------------------------------------------------------------

def _kernel_from(sde: SDE, t_min: float, t: torch.Tensor):
    """The transition kernel x_t = alpha x_{t_min} + sigma z of a linear SDE, float64.

    alpha = m(t) / m(t_min); sigma^2 = s(t)^2 - alpha^2 s(t_min)^2, written as
    s(t)^2 (1 - SNR(t) / SNR(t_min)) to avoid cancellation near t_min.
    """
    a = torch.full_like(t, t_min)
    (m_t, s_t), (m_a, _) = sde.marginal(t), sde.marginal(a)
    var = s_t.square() * -torch.expm1(sde.log_snr(t) - sde.log_snr(a))
    return m_t / m_a, var.clamp_min(torch.finfo(torch.float64).tiny).sqrt()


def elbo(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, *, t_min: float | None = None, num_times: int = 32,
         importance_sampling: bool = True, generator: torch.Generator | None = None,
         cond: Mapping | None = None, item_shape: Sequence[int] | None = None) -> torch.Tensor:
    """A Monte Carlo estimate of the continuous-time ELBO on log p_{t_min}(x), (B,) float64 nats.

    The bound (Song, Durkan, Murray and Ermon 2021, per datapoint, in the
    denoising score matching form; the div f sign below is derived here and
    checked against closed forms in tests/test_likelihood.py). Start the forward SDE at ``a = t_min``
    from ``x``: ``x_t = alpha x + sigma z`` (:func:`_kernel_from`), whose
    conditional score is ``c = -z / sigma``. For the model p^SDE (the reverse
    SDE from the prior pi with score s = score_fn)::

        log p^SDE_a(x) >= E log pi(x_T)
                          + int_a^T E[ -g^2 |s - c|^2 / 2 + g^2 |c|^2 / 2 + div f ] dt
                        = E log pi(x_T) + int_a^T E[ -g^2 |s|^2 / 2 - g^2 s.z / sigma + D f(t) ] dt

    (expectations over z; div f = D f(t) for the linear drift f(t) x). The sign
    of the div f term follows from Ito's formula for log p_t(x_t) along the
    forward SDE: with the true score of the SDE's marginals and pi = p_T the
    right-hand side *equals* log p_a(x) for every x (the gap is the KL between
    the forward process given x and the model's posterior over paths, zero for
    the true reverse process), so with an exact score the bound is tight up to
    the prior mismatch E log pi(x_T) - E log p_T(x_T).

    Estimator, per item: ``E log pi(x_T)`` in closed form (the prior is
    N(0, prior_std^2 I) and x_T | x is Gaussian), plus the mean over
    ``num_times`` draws of ``w(t) h(t, z)``, where ``h`` averages the integrand
    at ``z`` and ``-z`` (two score calls per draw: antithetic noise). Without
    that pairing the cross term ``g^2 s.z / sigma`` has conditional variance
    about ``g^2 |s|^2 / (t - a)``, whose integral over t diverges: the plain
    estimator has infinite variance; with it the leading term cancels and the
    remainder is bounded like ``g^2 z^T (ds/dx) z``. Times are uniform on
    [a, T] (``w = T - a``) or, with ``importance_sampling``, log-SNR uniform,
    density g^2 / s(t)^2 of the SDE's marginal (:class:`sdekit.losses.LogSNRTimes`,
    ``w = Z s(t)^2 / g^2``). The estimate is unbiased; its standard error falls
    as 1 / sqrt(num_times) (estimate it by repeating items in the batch). What
    remains is mostly the fluctuation of ``g^2 |z|^2 / v`` (v the marginal
    variance): with the exact score, one estimate at ``num_times=16`` has a
    standard deviation of about 4 nats on ring8 and 10 on a 16-D mixture.

    Randomness from ``generator``, per time draw: t (float64), then z, on x's
    device. The score is called as ``score_fn(x_t, t, **cond)`` in x's dtype;
    the sum is float64.
    """
    _check_items(x, item_shape)
    if not x.is_floating_point():
        raise OptionError(f"x must be a floating tensor, got {x.dtype}")
    _check_count("num_times", num_times)
    a, T = _check_t_min(sde, t_min), float(sde.T)
    cond = dict(cond or {})
    batch, dim = x.shape[0], x[0].numel()
    x64 = x.detach().to(torch.float64)

    # E log pi(x_T | x): x_T ~ N(alpha_T x, sigma_T^2 I), pi = N(0, prior_std^2 I)
    alpha_T, sigma_T = _kernel_from(sde, a, torch.full((batch,), T, dtype=torch.float64, device=x.device))
    var_pi = sde.prior_std() ** 2
    total = (-0.5 * (alpha_T.square() * flat_sum(x64.square()) + dim * sigma_T.square()) / var_pi
             - 0.5 * dim * math.log(2 * math.pi * var_pi))

    times = (LogSNRTimes if importance_sampling else UniformTimes)(sde, a, T)
    like = torch.empty(batch, dtype=torch.float64, device=x.device)
    for _ in range(num_times):
        t, _, _, weight = times(batch, like, generator)                      # t (B,) float64, w = weight (T - a)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).to(torch.float64)
        alpha, sigma = (append_dims(c, x.ndim) for c in _kernel_from(sde, a, t))
        t_x = t.to(x.dtype)
        s_plus = score_fn((alpha * x64 + sigma * z).to(x.dtype), t_x, **cond).detach().to(torch.float64)
        s_minus = score_fn((alpha * x64 - sigma * z).to(x.dtype), t_x, **cond).detach().to(torch.float64)
        if s_plus.shape != x.shape:
            raise ShapeError(f"score_fn returned shape {tuple(s_plus.shape)} for x of shape {tuple(x.shape)}")
        g2 = sde.diffusion(t).square()
        # (h(z) + h(-z)) / 2 with h(z) = -g^2 |s|^2 / 2 - g^2 s.z / sigma + D f(t)
        h = (-0.25 * g2 * (flat_sum(s_plus.square()) + flat_sum(s_minus.square()))
             - 0.5 * g2 * flat_sum((s_plus - s_minus) * z / sigma)
             + dim * sde.drift_coef(t))
        total = total + (T - a) * weight * h / num_times
    return total
