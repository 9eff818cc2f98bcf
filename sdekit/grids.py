"""Time grids: named pure functions returning float64 grids.

A grid is a 1-D float64 CPU tensor of ``num_steps + 1`` times decreasing from
``t_max`` to ``t_min`` (both exactly); samplers take their steps
``(grid[i], grid[i + 1])`` from it, so any schedule works with any sampler.
Grids live on the CPU in float64: reading a step's times costs no device
synchronisation.

Each schedule is ``fn(sde, num_steps, t_min, t_max, **params)``. Schedules
that are uniform in a noise level rather than in t go through the SDE's
log-SNR and its inverse (:meth:`SDE.t_from_log_snr`), so they work for every
SDE. By name, parameters follow a colon: ``karras:rho=5``.

==============  =================================================================
``uniform``     uniform in t (DDPM, NCSN and score_sde's grids)
``logsnr``      uniform in log-SNR lambda = log(m^2 / s^2) (DPM-Solver's grid)
``karras``      Karras et al. 2022, eq. 5: uniform in sigma^(1/rho), sigma = s / m, rho = 7
``quadratic``   t = t_min + (t_max - t_min) u^2, u uniform (DDIM's quadratic grid)
``vp_quadratic`` DDIM's quadratic grid placed by noise level: quadratic in the time
                of a reference VP (DDPM's betas), carried to any SDE through the
                log-SNR; the recommended grid of the exponential integrators
==============  =================================================================
"""

from __future__ import annotations

import torch

from .errors import OptionError, UnknownNameError
from .sde import SDE


def _from_log_snr(sde: SDE, log_snr: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    grid = sde.t_from_log_snr(log_snr).to(torch.float64)
    grid[0], grid[-1] = t_max, t_min  # the ends exactly, not up to the inverse's rounding
    return grid


def uniform(sde: SDE, num_steps: int, t_min: float, t_max: float) -> torch.Tensor:
    """Uniform in t (DDPM, NCSN and score_sde's grids)."""
    return torch.linspace(t_max, t_min, num_steps + 1, dtype=torch.float64)


def logsnr(sde: SDE, num_steps: int, t_min: float, t_max: float) -> torch.Tensor:
    """Uniform in log-SNR (Lu et al. 2022's ``logSNR`` skip type)."""
    ends = sde.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    return _from_log_snr(sde, torch.linspace(float(ends[0]), float(ends[1]), num_steps + 1,
                                             dtype=torch.float64), t_min, t_max)


def karras(sde: SDE, num_steps: int, t_min: float, t_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i^(1/rho) uniform, with EDM's sigma = s(t) / m(t).

    ``sigma = exp(-log_snr / 2)``, so this is defined for any SDE; ``rho = 1`` is
    uniform in sigma, larger ``rho`` concentrates steps at low noise.
    """
    if not rho > 0:
        raise OptionError(f"schedule 'karras' needs rho > 0, got {rho!r}")
    sig_max, sig_min = (-0.5 * sde.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))).exp().tolist()
    ramp = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    sigma = (sig_max ** (1 / rho) + ramp * (sig_min ** (1 / rho) - sig_max ** (1 / rho))) ** rho
    return _from_log_snr(sde, -2.0 * sigma.log(), t_min, t_max)


def quadratic(sde: SDE, num_steps: int, t_min: float, t_max: float) -> torch.Tensor:
    """Quadratic in t, dense near t_min (Song, Meng and Ermon 2021, DDIM's CIFAR-10 grid).

    DDIM's code takes ``(linspace(0, sqrt(0.8 N), S))^2`` of N = 1000 discrete
    steps; ``t_max=0.8`` reproduces its range.
    """
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    grid = t_min + (t_max - t_min) * u.square()
    grid[0], grid[-1] = t_max, t_min
    return grid


def vp_quadratic(sde: SDE, num_steps: int, t_min: float, t_max: float, beta_min: float = 0.1,
                 beta_max: float = 20.0) -> torch.Tensor:
    """DDIM's quadratic grid, placed by noise level rather than by this SDE's own clock.

    The ends' log-SNRs are mapped to times tau of a reference VP (``beta_min``,
    ``beta_max``: DDPM's linear betas; in closed form, and past its T = 1 when
    an SDE's noise reaches beyond the reference's sigma of 152), the grid is
    quadratic in tau between them, and each tau's log-SNR is mapped back to
    this SDE's time. So every SDE gets the same noise levels sigma = s / m for
    the same ends; on a VP with these betas it is :func:`quadratic`.

    Why a reference clock: an exponential integrator (DPM-Solver, UniPC) sees
    only the log-SNR of its steps, and "quadratic in t" means very different
    noise levels on a VE, whose t is log sigma, or on a sub-VP, whose t_min
    sits 100x lower in sigma than VP's. In log-SNR the grid is coarse at both ends and fine in between
    (sigma ~ 0.1-5 for data of unit scale). Measured in docs/samplers.md: at 5
    and 10 steps it beats ``logsnr`` and ``quadratic`` for ``dpm_solver`` on VP,
    sub-VP and VE alike.
    """
    if not (0 <= beta_min <= beta_max and beta_max > 0):
        raise OptionError(f"schedule 'vp_quadratic' needs 0 <= beta_min <= beta_max and beta_max > 0, "
                          f"got beta_min={beta_min}, beta_max={beta_max}")
    slope = beta_max - beta_min

    def tau_of(log_snr):  # the reference VP's time at this log-SNR, beyond its T = 1 too (not clamped)
        big_b = torch.nn.functional.softplus(-log_snr)  # int_0^tau beta = log(1 + exp(-log_snr))
        return 2.0 * big_b / (beta_min + (beta_min**2 + 2.0 * slope * big_b).sqrt())

    tau_hi, tau_lo = tau_of(sde.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))).tolist()
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    tau = tau_lo + (tau_hi - tau_lo) * u.square()
    log_snr = -torch.log(torch.expm1(beta_min * tau + 0.5 * slope * tau.square()))
    return _from_log_snr(sde, log_snr, t_min, t_max)


SCHEDULES = {"uniform": uniform, "logsnr": logsnr, "karras": karras, "quadratic": quadratic,
             "vp_quadratic": vp_quadratic}


def parse_schedule(spec: str) -> tuple[str, dict]:
    """``"karras:rho=5"`` -> ``("karras", {"rho": 5.0})``; names are checked."""
    name, _, args = str(spec).partition(":")
    if name not in SCHEDULES:
        raise UnknownNameError("schedule", name, SCHEDULES)
    params = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise OptionError(f"schedule parameter {item!r} must look like key=value")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise OptionError(f"schedule parameter {key.strip()!r} must be a number, got {value!r}") from None
    return name, params


def make_grid(sde: SDE, num_steps: int, schedule: str = "uniform", t_min: float | None = None,
              t_max: float | None = None) -> torch.Tensor:
    """The named schedule's grid, with the SDE's default ``t_min`` and ``T``."""
    name, params = parse_schedule(schedule)
    t_min = sde.t_min if t_min is None else float(t_min)
    t_max = sde.T if t_max is None else float(t_max)
    if int(num_steps) < 1 or int(num_steps) != num_steps:
        raise OptionError(f"steps must be a positive integer, got {num_steps!r}")
    if not 0.0 <= t_min < t_max <= sde.T:
        raise OptionError(f"need 0 <= t_min < t_max <= T = {sde.T}, got t_min={t_min}, t_max={t_max}")
    if name in ("logsnr", "karras", "vp_quadratic") and t_min == 0.0:
        raise OptionError(f"schedule {name!r} needs t_min > 0 (the log-SNR is infinite at t = 0)")
    try:
        grid = SCHEDULES[name](sde, int(num_steps), t_min, t_max, **params)
    except TypeError as err:
        raise OptionError(f"bad parameters for schedule {name!r}: {err}") from None
    if not bool((grid[1:] < grid[:-1]).all()):
        raise OptionError(f"schedule {schedule!r} gave a grid that does not strictly decrease "
                          f"(too many steps for float64 between t_min={t_min} and t_max={t_max}?)")
    return grid
