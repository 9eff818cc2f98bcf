"""sdekit-unipc: the conformance kit, the measured order of convergence, and its error at few evaluations.

Orders are measured as sdekit's tests/test_convergence.py does: the exact score
of ``ring8``, float64, 32 exact draws of p_{0.5} solved down to t_min on
``logsnr`` grids of 32-256 steps; the error is the largest coordinate error
against torchdiffeq's dopri5 at rtol = atol = 1e-10; the order is minus the
least-squares slope of log(error) on log(steps), held within 0.3 of theory.
UniP-p alone has order p, the corrector UniC raises it to p + 1 (UniPC-3's
order-2 warm-up step caps it at 3 where the start-up error shows, so it is
held to at least 2.7).
"""

import functools
import math

import pytest
import torch

import sdekit
from sdekit.api import run_on_grid
from sdekit.grids import make_grid
from sdekit.oracle import named_mixture
from sdekit.solvers import odeint_reverse
from sdekit.testing import check_quality, check_sampler

GMM = named_mixture("ring8")
SDES = {"vp": sdekit.VPSDE(), "ve": sdekit.VESDE()}
STEPS = (32, 64, 128, 256)
T_MAX = 0.5

#: (id, options, theoretical order)
CASES = [
    ("unip1", {"order": 1, "corrector": False}, 1),
    ("unipc1", {"order": 1}, 2),
    ("unip2", {"order": 2, "corrector": False}, 2),
    ("unipc2", {"order": 2}, 3),
    ("unipc2_bh1", {"order": 2, "variant": "bh1"}, 3),
]


@pytest.fixture(scope="module")
def registry():
    return sdekit.load_registry(strict=True)


def test_conforms(registry):
    check_sampler("unipc", registry, quality=False)


@pytest.mark.parametrize("sde_id", list(SDES))
def test_reaches_the_quality_bound_at_ten_evaluations(registry, sde_id):
    assert registry.get("unipc").recommended_steps == 10
    check_quality("unipc", registry, sde=SDES[sde_id])


def fitted_order(steps, errors):
    u, v = [math.log(n) for n in steps], [math.log(e) for e in errors]
    u_bar, v_bar = sum(u) / len(u), sum(v) / len(v)
    return -sum((a - u_bar) * (b - v_bar) for a, b in zip(u, v)) / sum((a - u_bar) ** 2 for a in u)


@functools.lru_cache(maxsize=None)
def problem(sde_id):
    sde = SDES[sde_id]
    x = GMM.sample_t(32, T_MAX, sde, torch.Generator().manual_seed(0))
    ref = odeint_reverse(sde, GMM.score_fn(sde), x, make_grid(sde, 1, "uniform", t_max=T_MAX), method="dopri5",
                         rtol=1e-10, atol=1e-10)
    return sde, x, ref


def measured_order(registry, sde_id, options):
    sde, x, ref = problem(sde_id)
    errors = [float((run_on_grid("unipc", sde, GMM.score_fn(sde), x, make_grid(sde, n, "logsnr", t_max=T_MAX),
                                 registry=registry, **options) - ref).abs().max()) for n in STEPS]
    return fitted_order(STEPS, errors), errors


@pytest.mark.parametrize("sde_id", list(SDES))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_measured_order_matches_theory(registry, case, sde_id):
    label, options, order = case
    measured, errors = measured_order(registry, sde_id, options)
    print(f"ORDER {label} {sde_id} errors={['%.2e' % e for e in errors]} order={measured:.2f} (theory {order})")
    assert abs(measured - order) < 0.3, (label, sde_id, errors, measured)


@pytest.mark.parametrize("sde_id", list(SDES))
def test_order_three_with_corrector_is_at_least_three(registry, sde_id):
    measured, errors = measured_order(registry, sde_id, {"order": 3})
    print(f"ORDER unipc3 {sde_id} errors={['%.2e' % e for e in errors]} order={measured:.2f}")
    assert measured > 2.7


@pytest.mark.parametrize("sde_id", list(SDES))
@pytest.mark.parametrize("steps", [10, 15])
def test_beats_dpm_solver_2m_at_the_same_evaluations(registry, sde_id, steps):
    """Mean error to the exact probability-flow ODE solution from 256 prior draws, both at `steps`
    evaluations on the logsnr grid: UniPC-2 (order 3) under 0.8 x DPM-Solver++(2M)'s."""
    sde = SDES[sde_id]
    x = sde.prior_sample(torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    exact = odeint_reverse(sde, GMM.score_fn(sde), x, make_grid(sde, 1, "uniform"), method="dopri5",
                           rtol=1e-10, atol=1e-10)
    grid = make_grid(sde, steps, "logsnr")
    err = {name: float((run_on_grid(name, sde, GMM.score_fn(sde), x, grid, registry=registry) - exact).abs().mean())
           for name in ("unipc", "dpm_solver")}
    nfe = sdekit.sample(GMM.score_fn(sde), sde, (4, 2), "unipc", steps=steps, registry=registry).nfe
    print(f"FEW {sde_id} steps={steps} nfe={nfe} unipc={err['unipc']:.2e} dpm_solver={err['dpm_solver']:.2e}")
    assert nfe == steps
    assert err["unipc"] < 0.8 * err["dpm_solver"]
