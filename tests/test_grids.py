"""Time grids: exact ends, strict decrease, and each schedule is uniform in its own variable."""

import math

import pytest
import torch

from sdekit.errors import OptionError, UnknownNameError
from sdekit.grids import SCHEDULES, make_grid, parse_schedule
from sdekit.sde import SDE, SubVPSDE, VESDE, VPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(), VPSDE(beta_min=0.5, beta_max=0.5), VESDE(sigma_min=0.002, sigma_max=80)]
IDS = ["vp", "subvp", "ve", "vp-const-beta", "ve-edm"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_t_from_log_snr_inverts_log_snr(sde):
    t = torch.linspace(sde.t_min, sde.T, 2001, dtype=torch.float64)
    lam = sde.log_snr(t)
    assert torch.allclose(sde.t_from_log_snr(lam), t, rtol=0, atol=1e-12)
    # the closed forms agree with the generic bisection of the base class
    assert torch.allclose(SDE.t_from_log_snr(sde, lam), t, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_is_a_valid_grid(name, sde):
    grid = make_grid(sde, 17, name, t_min=2e-3, t_max=0.9)
    assert grid.dtype == torch.float64 and grid.device.type == "cpu" and grid.shape == (18,)
    assert grid[0].item() == 0.9 and grid[-1].item() == 2e-3  # the ends exactly
    assert bool((grid[1:] < grid[:-1]).all())


@pytest.mark.parametrize("sde", SDES[:3], ids=IDS[:3])
def test_each_schedule_is_uniform_in_its_own_variable(sde):
    n, t_min, t_max = 12, 1e-3, 1.0
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)

    def uniform_in(values):
        steps = values[1:] - values[:-1]
        return torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-9, atol=1e-12)

    assert uniform_in(make_grid(sde, n, "uniform", t_min, t_max))
    assert uniform_in(sde.log_snr(make_grid(sde, n, "logsnr", t_min, t_max)))
    sigma = (-0.5 * sde.log_snr(make_grid(sde, n, "karras", t_min, t_max))).exp()
    assert uniform_in(sigma ** (1 / 7))
    assert uniform_in(sigma ** (1 / 3)) is False
    assert uniform_in((-0.5 * sde.log_snr(make_grid(sde, n, "karras:rho=3", t_min, t_max))).exp() ** (1 / 3))
    quad = make_grid(sde, n, "quadratic", t_min, t_max)
    assert uniform_in(((quad - t_min) / (t_max - t_min)).sqrt())
    assert not uniform_in(quad)


def test_karras_matches_edm_sigmas_on_ve():
    """On VE with EDM's sigma range, sigma(t) of the grid is EDM's rho schedule (Karras et al. 2022, eq. 5)."""
    sde = VESDE(sigma_min=0.002, sigma_max=80.0)
    n, rho = 18, 7.0
    grid = make_grid(sde, n, "karras", t_min=sde.t_min, t_max=1.0)
    lo, hi = float(sde.sigma(sde.t_min)), 80.0
    i = torch.arange(n + 1, dtype=torch.float64)
    edm = (hi ** (1 / rho) + i / n * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    assert torch.allclose(sde.sigma(grid), edm, rtol=1e-12, atol=0)


def test_logsnr_grid_is_dpm_solvers_on_vp():
    """DPM-Solver's logSNR skip: lambda = log(alpha / sigma) uniform between its ends."""
    sde = VPSDE()
    grid = make_grid(sde, 10, "logsnr", t_min=1e-3)
    mean, std = sde.marginal(grid)
    half = (mean / std).log()
    expected = torch.linspace(float(half[0]), float(half[-1]), 11, dtype=torch.float64)
    assert torch.allclose(half, expected, rtol=0, atol=1e-10)


def test_schedule_names_and_parameters_are_checked():
    assert parse_schedule("karras:rho=5") == ("karras", {"rho": 5.0})
    with pytest.raises(UnknownNameError, match="did you mean 'karras'"):
        make_grid(VPSDE(), 10, "karas")
    with pytest.raises(OptionError, match="bad parameters for schedule 'uniform'"):
        make_grid(VPSDE(), 10, "uniform:rho=2")
    with pytest.raises(OptionError, match="rho > 0"):
        make_grid(VPSDE(), 10, "karras:rho=-1")
    with pytest.raises(OptionError, match="must be a number"):
        make_grid(VPSDE(), 10, "karras:rho=seven")
    with pytest.raises(OptionError, match="needs t_min > 0"):
        make_grid(VPSDE(), 10, "logsnr", t_min=0.0)
    assert make_grid(VPSDE(), 10, "quadratic", t_min=0.0)[-1].item() == 0.0
    assert math.isclose(make_grid(VPSDE(), 10, "quadratic", t_max=0.8)[0].item(), 0.8)


def test_vp_quadratic_is_quadratic_on_the_reference_vp_and_places_grids_by_noise_level():
    vp = VPSDE()
    assert torch.allclose(make_grid(vp, 12, "vp_quadratic"), make_grid(vp, 12, "quadratic"), rtol=0, atol=1e-12)
    # a VE (or a VP with other betas) with the same end noise levels gets the same noise levels throughout
    lo, hi = (float(s) for s in (-0.5 * vp.log_snr(torch.tensor([vp.t_min, vp.T], dtype=torch.float64))).exp())
    for sde in (VESDE(sigma_min=lo / 2, sigma_max=hi), VPSDE(beta_min=0.05, beta_max=40.0)):
        t_min = float(sde.t_from_log_snr(vp.log_snr(torch.tensor([vp.t_min], dtype=torch.float64)))[0])
        t_max = float(sde.t_from_log_snr(vp.log_snr(torch.tensor([vp.T], dtype=torch.float64)))[0])
        ours = sde.log_snr(make_grid(sde, 12, "vp_quadratic", t_min=t_min, t_max=t_max))
        assert torch.allclose(ours, vp.log_snr(make_grid(vp, 12, "quadratic")), rtol=0, atol=1e-8)
    # unlike the SDE's own quadratic grid: on VE that one crowds the low noise levels
    ve = VESDE()
    sigma = lambda g: (-0.5 * ve.log_snr(g)).exp()  # noqa: E731
    assert sigma(make_grid(ve, 10, "vp_quadratic"))[5] > 5 * sigma(make_grid(ve, 10, "quadratic"))[5]
    assert parse_schedule("vp_quadratic:beta_max=30") == ("vp_quadratic", {"beta_max": 30.0})
    with pytest.raises(OptionError, match="beta_min <= beta_max"):
        make_grid(ve, 10, "vp_quadratic:beta_max=0")
    # noise beyond the reference VP's sigma(T) = 152 (score_sde's VE for 256^2 images: sigma_max = 348)
    big = VESDE(sigma_max=348.0)
    grid = make_grid(big, 10, "vp_quadratic")
    assert grid[0].item() == 1.0 and bool((grid[1:] < grid[:-1]).all())
    assert torch.allclose((-0.5 * big.log_snr(grid[:1])).exp(), torch.tensor([348.0], dtype=torch.float64))
