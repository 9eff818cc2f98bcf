"""The one bridge between sdekit and the torchdiffeq / torchsde solvers.

sdekit's contract is ``score_fn(x, t)`` and ``ReverseSDE.drift(x, t)``, with
time running down a float64 grid from T to t_min. The solver libraries want
``f(t, y)`` (and torchsde ``g``), and torchsde also wants a 2-D state (B, D)
and strictly increasing time. This module is the only place where the
argument order, the time direction and the state's shape change; both
samplers (``ode``, ``sde``) build on :meth:`SDE.reverse` and never ask which
SDE they hold. States stay on ``x``'s device and in its dtype throughout.

- **torchdiffeq** integrates backwards in time by itself, so the probability-flow
  ODE is integrated in t directly, states of any shape.
- **torchsde** integrates forwards only: the reverse SDE is integrated in
  ``s = T - t`` (``T = grid[0]``), where it reads ``dx = -mu(x, T - s) ds + g(T - s) dW_s``.
  torchsde's fixed-step loop advances ``s += dt`` with one constant ``dt`` and
  interpolates at output times, so it cannot land on a non-uniform grid. We
  therefore run it on the *step clock* ``u``: step ``i`` of the grid is
  ``u in [i, i + 1]``, mapped affinely to ``s in [s_i, s_i+1]`` (``ds/du = h_i``),
  with ``dt = 1``; integers are exact in floating point, so every step lands
  exactly on a grid point, for any grid, in one ``sdeint`` call. The drift is
  scaled by ``h_i``; the Brownian motion lives in ``s`` and the clock change is
  applied to it (:class:`_OnStepClock`), so the diffusion is plain ``g(t)``.
  One ``sdeint`` call per grid interval would instead add, at every step,
  torchsde's per-call work (argument checks, module and solver construction:
  about 130 us on 2 CPU cores at batch 1000 in 2-D, 0.35 of a whole
  Euler-Maruyama step with the exact ring8 score; ``benchmarks/brownian.py``)
  and one more drift evaluation (the checks call ``f``); the step clock adds
  nothing per step.

  This is exact because the reverse SDE's noise is additive (``g`` depends on
  t only), so torchsde's additive-noise schemes apply (Euler-Maruyama; SRA1 for
  ``srk``), and they evaluate the drift only at stage times in ``[u, u + 1)`` of a
  step, where the slope ``h_i`` is unambiguous. The diffusion may be evaluated
  at ``u + 1``; ``t(u)`` is continuous there. (Milstein is Euler-Maruyama for
  additive noise, so it is not offered.)
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torchdiffeq
import torchsde

from .sde import SDE, ScoreFn
from .utils import append_dims

#: torchdiffeq methods with error control: they choose their own steps between grid[0] and grid[-1]
ODE_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: torchdiffeq fixed-step methods, stepping exactly on the grid, and their drift evaluations per step
#: (the Adams methods are left out: their coefficients assume a uniform step)
ODE_FIXED = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
#: torchsde methods for the reverse SDE (Ito, additive noise), and their drift evaluations per step
SDE_METHODS = {"euler": 1, "srk": 2}

Callback = Callable[[int, float, torch.Tensor], None]


# -- the probability-flow ODE through torchdiffeq ---------------------------------------

class _ODEField:
    """dx/dt of the probability-flow ODE in torchdiffeq's ``f(t, y)`` order.

    torchdiffeq calls ``callback_step(t0, y0, dt)`` before every step and, for
    adaptive methods, ``callback_accept_step`` after each accepted one. Both get
    the state at the step's start, i.e. where the previous step ended:
    :meth:`report` passes that on as ``callback(k - 1, t, x)``.
    """

    def __init__(self, reverse, batch: int, callback: Callback | None, times: Sequence[float] | None):
        self.drift, self.batch = reverse.drift, batch
        self.callback, self.times = callback, times  # times: the grid (fixed steps) or None (adaptive)
        self.started = 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.drift(y, t.to(y.dtype).reshape(1).repeat(self.batch))  # (B,) times on y's device

    def report(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        k, self.started = self.started, self.started + 1
        if k > 0:
            self.callback(k - 1, self.times[k] if self.times is not None else float(t0), y0)


def odeint_reverse(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, grid: torch.Tensor, *, method: str,
                   rtol: float, atol: float, callback: Callback | None = None) -> torch.Tensor:
    """Integrate the probability-flow ODE from ``grid[0]`` down to ``grid[-1]``.

    Args:
        x: state (B, ...) at ``grid[0]``, any rank, dtype and device.
        grid: float64 CPU times, decreasing. Fixed-step methods (:data:`ODE_FIXED`)
            step exactly on its points; adaptive ones (:data:`ODE_ADAPTIVE`) use
            only its endpoints and choose their own steps, the whole batch
            sharing one step size (the error norm is over all of it), ending
            exactly at ``grid[-1]``.
        callback: ``callback(i, t, x)`` once per grid step (fixed) or per
            accepted step (adaptive), with the time reached and the state there.

    Returns the state at ``grid[-1]``, shaped, typed and placed like ``x``.
    """
    reverse = sde.reverse(score_fn, probability_flow=True)
    times = grid.to(x.device)  # torchdiffeq wants its times on the state's device
    if method in ODE_FIXED:
        field = _ODEField(reverse, x.shape[0], callback, grid.tolist())
        options = {"grid_constructor": lambda func, y0, t: times}
        if callback is not None:
            field.callback_step = field.report
    elif method in ODE_ADAPTIVE:
        field = _ODEField(reverse, x.shape[0], callback, None)
        options = {"step_t": times[-1:]}  # the last step ends on t_min: no score is asked below it
        if callback is not None:
            field.callback_accept_step = field.report
    else:
        raise ValueError(f"unknown ODE method {method!r} (valid: {', '.join(ODE_ADAPTIVE + tuple(ODE_FIXED))})")
    out = torchdiffeq.odeint(field, x, times[[0, -1]], rtol=rtol, atol=atol, method=method, options=options)[-1]
    if callback is not None:
        callback(field.started - 1, float(grid[-1]), out)
    return out


# -- the reverse SDE through torchsde ----------------------------------------------------

class _StepClock:
    """The grid on torchsde's clock ``u``: step ``i`` is ``u in [i, i + 1]``.

    ``times`` are the grid's t (decreasing), ``s = times[0] - t`` its
    increasing integration time, ``h[i] = s[i+1] - s[i] = ds/du`` on step ``i``.
    """

    def __init__(self, times: Sequence[float]):
        self.times = list(times)
        self.s = [self.times[0] - t for t in self.times]
        self.h = [b - a for a, b in zip(self.s[:-1], self.s[1:])]
        self.num_steps = len(self.h)

    def locate(self, u: float) -> tuple[int, float]:
        """Step index ``i`` and fraction ``r in [0, 1]`` of ``u``; a step's end belongs to it
        only at ``u = N`` (elsewhere it is the next step's start, where ``t`` is the same)."""
        i = min(int(u), self.num_steps - 1)
        return i, u - i

    def t(self, u: float) -> float:
        i, r = self.locate(u)
        return self.times[i] if r == 0 else self.times[i + 1] if r == 1 else self.times[i] - r * self.h[i]

    def s_of(self, u: float) -> float:
        i, r = self.locate(u)
        return self.s[i] if r == 0 else self.s[i + 1] if r == 1 else self.s[i] + r * self.h[i]


class _ReverseOnStepClock:
    """The reverse SDE as torchsde sees it: Ito, additive noise, 2-D state, clock ``u``.

    ``f(u, y) = -h_i mu(x, t(u))`` and ``g_prod(u, y, v) = g(t(u)) v``, with ``mu``, ``g``
    from :meth:`SDE.reverse` and the Brownian motion already on the clock
    (:class:`_OnStepClock`). A one-entry memo returns the drift again for the
    same ``(u, y)``: torchsde's argument check evaluates it at the start, and
    SRA1 re-evaluates its first stage; neither costs a score evaluation. The
    step callback fires when a step starts from a grid point (torchsde has no
    callbacks; every step begins with a drift evaluation at its start).
    """

    sde_type = "ito"
    noise_type = "additive"

    def __init__(self, reverse, clock: _StepClock, shape: torch.Size, callback: Callback | None):
        self.reverse, self.clock, self.shape, self.callback = reverse, clock, shape, callback
        self._memo: tuple | None = None
        self._reported = 0

    def _times(self, u, y: torch.Tensor) -> torch.Tensor:
        return torch.full((y.shape[0],), self.clock.t(float(u)), dtype=y.dtype, device=y.device)

    def f(self, u, y: torch.Tensor) -> torch.Tensor:
        u = float(u)  # torchsde's clock lives on the CPU: no device sync
        if self._memo is not None and self._memo[0] == u and self._memo[1] is y:
            return self._memo[2]
        i, r = self.clock.locate(u)
        x = y.reshape(self.shape)
        if self.callback is not None and r == 0 and i > self._reported:
            self._reported = i
            self.callback(i - 1, self.clock.times[i], x)
        out = (-self.clock.h[i] * self.reverse.drift(x, self._times(u, y))).reshape(y.shape)
        self._memo = (u, y, out)
        return out

    def g_prod(self, u, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return append_dims(self.reverse.diffusion(self._times(u, y)), v.ndim) * v


class GridBrownian(torchsde.BaseBrownian):
    """Brownian motion W(s) sampled only at a grid's points, from sdekit's noise source.

    Answers ``(s_i, s_i+1)`` queries for neighbouring grid points exactly:
    ``W = sqrt(h) z`` and, with ``levy_area``, the space-time Levy area's
    ``U = int (W_s - W_si) ds = h (W / 2 + H)``, ``H = sqrt(h / 12) z'`` (independent
    of W), as :class:`torchsde.BrownianInterval` defines them. ``z``, ``z'`` come
    from ``noise(like)`` (``like`` shaped as the sampler's state, flattened to
    (B, D) here), drawn when a step is first asked for, so item ``i``'s path
    depends only on its own generator when the noise is per item. Steps must
    be asked for in order (each any number of times). ``noise=None`` is the
    zero path: a noise-free step (``denoise="mean"``).
    """

    __slots__ = ("_s", "_index", "_like", "_noise", "_levy", "_last")

    def __init__(self, s: Sequence[float], like: torch.Tensor, noise: Callable | None, levy_area: bool = False):
        self._s = list(s)
        self._index = {v: i for i, v in enumerate(self._s[:-1])}
        self._like, self._noise, self._levy = like, noise, levy_area
        self._last: tuple | None = None  # (step, W, U)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_A:
            raise ValueError("GridBrownian has no Levy area A; use brownian='interval'")
        i = self._index.get(float(ta))
        if tb is None or i is None or float(tb) != self._s[i + 1]:
            raise ValueError(f"GridBrownian answers queries between neighbouring grid points only, "
                             f"got ({float(ta)}, {None if tb is None else float(tb)})")
        if self._last is None or self._last[0] != i:
            if self._last is not None and i < self._last[0]:
                raise ValueError(f"GridBrownian: step {i} asked for after step {self._last[0]}")
            self._last = (i, *self._draw(self._s[i + 1] - self._s[i]))
        _, w, u = self._last
        if return_U:
            if u is None:
                raise ValueError("GridBrownian built without levy_area cannot return U")
            return w, u
        return w

    def _draw(self, h: float):
        flat = (self._like.shape[0], -1)
        if self._noise is None:
            zero = torch.zeros(flat[0], self._like[0].numel(), dtype=self._like.dtype, device=self._like.device)
            return zero, zero if self._levy else None
        w = math.sqrt(h) * self._noise(self._like).reshape(flat)
        u = h * (0.5 * w + math.sqrt(h / 12) * self._noise(self._like).reshape(flat)) if self._levy else None
        return w, u

    def __repr__(self):
        return f"GridBrownian(steps={len(self._s) - 1}, levy_area={self._levy})"

    dtype = property(lambda self: self._like.dtype)
    device = property(lambda self: self._like.device)
    shape = property(lambda self: torch.Size((self._like.shape[0], self._like[0].numel())))
    levy_area_approximation = property(lambda self: "space-time" if self._levy else "none")


class _OnStepClock(torchsde.BaseBrownian):
    """A Brownian motion in ``s`` seen on the step clock: ``W~(u) = W(s(u))``.

    Within step ``i`` (``s = s_i + h_i (u - i)``) the increments are the same and the
    space-time area ``U = int W du`` is ``U_s / h_i``.
    """

    __slots__ = ("bm", "clock")

    def __init__(self, bm: torchsde.BaseBrownian, clock: _StepClock):
        self.bm, self.clock = bm, clock

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_A:
            raise ValueError("the step clock answers interval queries without Levy area A only")
        ta, tb = float(ta), float(tb)
        out = self.bm(self.clock.s_of(ta), self.clock.s_of(tb), return_U=return_U)
        if return_U:
            w, u = out
            return w, u / self.clock.h[self.clock.locate(ta)[0]]
        return out

    def __repr__(self):
        return f"_OnStepClock({self.bm!r})"

    dtype = property(lambda self: self.bm.dtype)
    device = property(lambda self: self.bm.device)
    shape = property(lambda self: self.bm.shape)
    levy_area_approximation = property(lambda self: self.bm.levy_area_approximation)


def brownian_entropy(noise: Callable, like: torch.Tensor) -> int:
    """A seed for :class:`torchsde.BrownianInterval`, drawn from the noise source (one (B, 1) draw)."""
    z = noise(like.new_empty(like.shape[0], 1)).to("cpu", torch.float64)
    return int((z * 2**20).round().abs().sum()) % (2**31 - 1)


def sdeint_reverse(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, grid: torch.Tensor, *, method: str,
                   noise: Callable, brownian: str = "grid", tol: float = 0.0, last_noise: bool = True,
                   callback: Callback | None = None) -> torch.Tensor:
    """Integrate the reverse-time SDE from ``grid[0]`` down to ``grid[-1]``, one solver step per grid step.

    Args:
        x: state (B, ...) at ``grid[0]``, any rank, dtype and device (flattened to (B, D) for torchsde).
        grid: float64 CPU times, decreasing; any spacing.
        method: a key of :data:`SDE_METHODS`.
        noise: sdekit's noise source, the only randomness. ``brownian="grid"``
            draws each step's increment from it (:class:`GridBrownian`);
            ``"interval"`` is :class:`torchsde.BrownianInterval` over ``s`` with
            entropy drawn from it (:func:`brownian_entropy`) and query resolution ``tol``.
        last_noise: ``False`` takes the last step without its noise (its mean).
        callback: ``callback(i, t, x)`` once per grid step, with the time reached and the state there.

    Returns the state at ``grid[-1]``, shaped, typed and placed like ``x``. (torchsde's
    argument check draws one (B, D) normal from torch's global generator per call;
    sdekit's noise source is untouched by it.)
    """
    if method not in SDE_METHODS:
        raise ValueError(f"unknown SDE method {method!r} (valid: {', '.join(SDE_METHODS)})")
    clock = _StepClock(grid.tolist())
    levy = method == "srk"
    flat = x.reshape(x.shape[0], -1)
    if brownian == "grid":
        bm = GridBrownian(clock.s, x, noise, levy_area=levy)
    elif brownian == "interval":
        bm = torchsde.BrownianInterval(
            t0=clock.s[0], t1=clock.s[-1], size=tuple(flat.shape), dtype=x.dtype, device=x.device,
            entropy=brownian_entropy(noise, x), dt=clock.s[-1] / clock.num_steps, tol=tol,
            levy_area_approximation="space-time" if levy else "none")
    else:
        raise ValueError(f"unknown Brownian motion {brownian!r} (valid: grid, interval)")
    field = _ReverseOnStepClock(sde.reverse(score_fn), clock, x.shape, callback)
    n = clock.num_steps
    segments = [(0, n, bm)]
    if not last_noise:  # the last step on the zero path: its noise-free mean
        segments = [(0, n - 1, bm), (n - 1, n, GridBrownian(clock.s, x, None, levy_area=levy))]
    for start, stop, path in segments:
        if stop > start:  # the clock stays on the CPU: reading it costs no device sync
            ts = torch.tensor([float(start), float(stop)], dtype=torch.float64)
            flat = torchsde.sdeint(field, flat, ts, bm=_OnStepClock(path, clock), method=method, dt=1.0)[-1]
    out = flat.reshape(x.shape)
    if callback is not None:
        callback(n - 1, clock.times[-1], out)
    return out
