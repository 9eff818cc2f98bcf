"""Time grids: named pure functions returning float64 grids.

A grid is a 1-D float64 CPU tensor of ``num_steps + 1`` times decreasing from
``t_max`` to ``t_min``; samplers take their steps ``(grid[i], grid[i + 1])``
from it, so any schedule works with any sampler. Grids live on the CPU in
float64: reading a step's times costs no device synchronisation.
"""

from __future__ import annotations

import torch

from .errors import OptionError, UnknownNameError
from .sde import SDE


def uniform(sde: SDE, num_steps: int, t_min: float, t_max: float) -> torch.Tensor:
    """Uniform in t (DDPM, NCSN and score_sde's grids)."""
    return torch.linspace(t_max, t_min, num_steps + 1, dtype=torch.float64)


SCHEDULES = {"uniform": uniform}


def make_grid(sde: SDE, num_steps: int, schedule: str = "uniform", t_min: float | None = None,
              t_max: float | None = None) -> torch.Tensor:
    """The named schedule's grid, with the SDE's default ``t_min`` and ``T``."""
    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, SCHEDULES)
    t_min = sde.t_min if t_min is None else float(t_min)
    t_max = sde.T if t_max is None else float(t_max)
    if int(num_steps) < 1 or int(num_steps) != num_steps:
        raise OptionError(f"steps must be a positive integer, got {num_steps!r}")
    if not 0.0 <= t_min < t_max <= sde.T:
        raise OptionError(f"need 0 <= t_min < t_max <= T = {sde.T}, got t_min={t_min}, t_max={t_max}")
    return SCHEDULES[schedule](sde, int(num_steps), t_min, t_max)
