"""The few-step samplers ``heun`` and ``dpm_solver`` against exact answers.

- ``dpm_solver`` with order 1 is ``ddim`` with eta 0, to float64 rounding, on any SDE and grid.
- ``heun`` without churn draws no noise after the prior; with churn it draws one
  normal per churned step, never asks for a time beyond T, changes the samples
  and still meets the quality bound.
- Both reach the quality bound on sub-VP too (tests/test_quality.py covers VP and VE).
- On every schedule of :data:`sdekit.grids.SCHEDULES`, on VP, sub-VP and VE, each
  converges to the exact probability-flow ODE solution (dopri5 at 1e-10) at its order.
- Evaluation counts, callbacks, ``lower_order_final`` and ``denoise="tweedie"`` do what they say.
- ``dpm_solver``'s recommended grid, ``vp_quadratic``, is closer to the exact law than ``logsnr`` at
  10 steps on every SDE (the unbiased MMD of :func:`sdekit.metrics.mixture_mmd`).
"""

import functools
import math

import pytest
import torch

import sdekit
from sdekit.errors import OptionError
from sdekit.grids import SCHEDULES, make_grid
from sdekit.metrics import mixture_mmd, sliced_wasserstein
from sdekit.oracle import named_mixture
from sdekit.registry import load_registry
from sdekit.score import denoise
from sdekit.sde import SubVPSDE, VESDE, VPSDE
from sdekit.solvers import odeint_reverse

from .conftest import MIXTURES
from .test_convergence import solve

REGISTRY = load_registry(autoload=False, strict=True)
GMM = named_mixture("ring8")
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
FACTOR = 1.6  # tests/test_quality.py's bound


def draw(name, sde, steps, n=64, dtype=torch.float64, seed=3, **options):
    return sdekit.sample(GMM.score_fn(sde), sde, (n, 2), name, steps=steps, seed=seed, dtype=dtype,
                         registry=REGISTRY, **options)


def forbidden(like):
    raise AssertionError("drew noise")


# -- dpm_solver order 1 is DDIM -----------------------------------------------------------

@pytest.mark.parametrize("schedule", ["uniform", "karras"])
@pytest.mark.parametrize("sde_id", list(SDES))
def test_dpm_solver_order_1_is_ddim_eta_0(sde_id, schedule):
    sde = SDES[sde_id]
    ours = draw("dpm_solver", sde, 25, schedule=schedule, order=1).samples
    ddim = draw("ddim", sde, 25, schedule=schedule, eta=0.0).samples
    torch.testing.assert_close(ours, ddim, rtol=0, atol=1e-10)
    assert not torch.equal(ours, draw("dpm_solver", sde, 25, schedule=schedule, order=2).samples)


# -- heun's churn --------------------------------------------------------------------------

@pytest.mark.parametrize("sde_id", list(SDES))
def test_heun_without_churn_draws_no_noise_after_the_prior(sde_id):
    sde = SDES[sde_id]
    x = sde.prior_sample(torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    out = solve("heun", sde, GMM.score_fn(sde), x, make_grid(sde, 10))  # noise=None: a draw would fail
    spec = REGISTRY.get("heun")
    again = spec.fn(sde, GMM.score_fn(sde), x, make_grid(sde, 10), options=spec.options(), noise=forbidden)
    assert torch.equal(out, again) and torch.isfinite(out).all()


def test_heun_churn_draws_once_per_churned_step_and_stays_below_T():
    sde, steps = VPSDE(), 16
    grid = make_grid(sde, steps)
    sigma = (-0.5 * sde.log_snr(grid[:-1])).exp().tolist()
    spec = REGISTRY.get("heun")
    calls, times = [], []

    def noise(like):
        calls.append(like.shape)
        return torch.randn(like.shape, generator=gen, dtype=like.dtype)

    def score_fn(x, t):
        times.append(float(t.max()))
        return GMM.score_fn(sde)(x, t)

    x = sde.prior_sample(torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    for s_tmin, s_tmax in ((0.0, float("inf")), (0.05, 1.0)):
        calls.clear()
        gen = torch.Generator().manual_seed(1)
        opts = spec.options(s_churn=1000.0, s_tmin=s_tmin, s_tmax=s_tmax)
        spec.fn(sde, score_fn, x, grid, options=opts, noise=noise)
        # the first step starts at sigma(T): sigma_hat is clamped there, so nothing is added
        expected = sum(1 for s in sigma[1:] if s_tmin <= s <= s_tmax)
        assert len(calls) == expected > 0
    assert max(times) <= sde.T


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_heun_churn_changes_samples_and_still_meets_quality(sde, exact):
    gmm, ref, floor = exact("ring8")
    steps = REGISTRY.get("heun").recommended_steps
    run = lambda **kw: sdekit.sample(gmm.score_fn(sde), sde, ref.shape, "heun", steps=steps, seed=7,  # noqa: E731
                                     registry=REGISTRY, **kw).samples
    plain, churned = run(), run(s_churn=3.0)
    assert (plain - churned).abs().max() > 0.1
    ratio = sliced_wasserstein(churned, ref) / floor
    print(f"QUALITY heun s_churn=3 {type(sde).__name__} ring8 steps={steps} ratio={ratio:.2f}")
    assert ratio < FACTOR


# -- sub-VP quality --------------------------------------------------------------------------

@pytest.mark.parametrize("spec", list(MIXTURES), ids=["2d", "16d"])
@pytest.mark.parametrize("name", ["heun", "dpm_solver"])
def test_sub_vp_reaches_the_noise_floor(name, spec, exact):
    gmm, ref, floor = exact(spec)
    sde = SubVPSDE()
    result = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, name, seed=7, registry=REGISTRY)
    ratio = sliced_wasserstein(result.samples, ref) / floor
    print(f"QUALITY {name} SubVPSDE {spec} steps={result.provenance['steps']} nfe={result.nfe} ratio={ratio:.2f}")
    assert ratio < FACTOR


# -- every schedule, against the exact ODE solution -------------------------------------------

@functools.lru_cache(maxsize=None)
def exact_solution(sde_id):
    sde = SDES[sde_id]
    x = sde.prior_sample(torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    ref = odeint_reverse(sde, GMM.score_fn(sde), x, make_grid(sde, 1), method="dopri5", rtol=1e-10, atol=1e-10)
    return x, ref


@pytest.mark.parametrize("case", [("heun", {}, 2), ("dpm_solver", {"order": 1}, 1),
                                  ("dpm_solver", {"order": 2}, 2), ("dpm_solver", {"order": 3}, 3)],
                         ids=["heun", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("sde_id", list(SDES))
def test_every_schedule_converges_to_the_exact_solution(sde_id, schedule, case):
    """From T to t_min: at 160 steps within 0.05 of the exact solution (largest coordinate error),
    and halving the steps multiplies the error by more than 2^(order - 1/2)."""
    name, options, order = case
    sde = SDES[sde_id]
    x, ref = exact_solution(sde_id)
    err = {n: float((solve(name, sde, GMM.score_fn(sde), x, make_grid(sde, n, schedule), **options) - ref)
                    .abs().max()) for n in (80, 160)}
    print(f"SCHEDULE {name} {options} {sde_id} {schedule} errors={err}")
    assert err[160] < 0.05
    assert err[80] / err[160] > 2 ** (order - 0.5)


# -- counts, callbacks, options ---------------------------------------------------------------

@pytest.mark.parametrize("name, options, nfe", [
    ("heun", {}, 2 * 20), ("heun", {"s_churn": 5.0}, 2 * 20), ("dpm_solver", {}, 20),
    ("dpm_solver", {"order": 3}, 20 + 1), ("dpm_solver", {"order": 3, "denoise": "tweedie"}, 20 + 2),
])
def test_evaluations_and_callbacks(name, options, nfe):
    sde = VPSDE()
    seen = []
    result = draw(name, sde, 20, callback=lambda i, t, x: seen.append((i, t, x.clone())), **options)
    assert result.nfe == nfe
    grid = make_grid(sde, 20, REGISTRY.get(name).recommended_schedule).tolist()
    assert [(i, t) for i, t, _ in seen] == list(enumerate(grid[1:]))
    if options.get("denoise", "none") == "none":
        assert torch.equal(seen[-1][2], result.samples)


def test_tweedie_denoise_is_the_data_prediction_at_t_min():
    sde = VESDE()
    x = draw("dpm_solver", sde, 20).samples
    t = torch.full((len(x),), sde.t_min, dtype=x.dtype)
    expected = denoise(GMM.score_fn(sde)(x, t), x, t, sde)
    torch.testing.assert_close(draw("dpm_solver", sde, 20, denoise="tweedie").samples, expected, rtol=0, atol=1e-12)


def test_lower_order_final_applies_below_15_steps_only():
    sde = VPSDE()
    for order in (2, 3):
        lower = draw("dpm_solver", sde, 10, order=order).samples
        assert not torch.equal(lower, draw("dpm_solver", sde, 10, order=order, lower_order_final=False).samples)
        full = draw("dpm_solver", sde, 15, order=order).samples
        assert torch.equal(full, draw("dpm_solver", sde, 15, order=order, lower_order_final=False).samples)
    # one step of any order is a DDIM step
    torch.testing.assert_close(draw("dpm_solver", sde, 1, order=3).samples, draw("ddim", sde, 1).samples,
                               rtol=0, atol=1e-12)


def test_options_are_validated():
    with pytest.raises(OptionError, match="option 'order' of sampler 'dpm_solver' must be >= 1 and <= 3"):
        draw("dpm_solver", VPSDE(), 5, order=4)
    with pytest.raises(OptionError, match="option 's_churn' of sampler 'heun' must be >= 0.0"):
        draw("heun", VPSDE(), 5, s_churn=-1)
    assert math.isinf(REGISTRY.get("heun").options().s_tmax)


@pytest.mark.slow  # ~5 s each: 4 x 4000 samples and their MMD
@pytest.mark.parametrize("sde_name", list(SDES))
def test_the_recommended_grid_beats_logsnr_at_ten_steps(sde_name):
    """Measured (2 seeds, n = 2000, 1000 x MMD^2): logsnr / vp_quadratic = 12.7 / 3.2 (VP),
    83.9 / 3.6 (sub-VP), 7.2 / 2.3 (VE); the SE of each mean here is about 0.4."""
    sde = SDES[sde_name]
    assert REGISTRY.get("dpm_solver").recommended_schedule == "vp_quadratic"

    def mmd(schedule):  # mean over two seeds of 4000, and its standard error
        res = [mixture_mmd(draw("dpm_solver", sde, 10, n=4000, seed=seed, schedule=schedule).samples, GMM)
               for seed in (0, 1)]
        return sum(r.mmd2 for r in res) / 2, math.hypot(*(r.se for r in res)) / 2

    (ours, se_ours), (logsnr, se_logsnr) = mmd("vp_quadratic"), mmd("logsnr")
    assert ours + 3 * math.hypot(se_ours, se_logsnr) < logsnr, (ours, se_ours, logsnr, se_logsnr)
