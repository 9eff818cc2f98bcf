"""``ode`` and ``sde``: the torchdiffeq / torchsde samplers, against the exact oracle and by hand."""

import re
from pathlib import Path

import pytest
import torch
import torchsde

import sdekit
from sdekit.errors import OptionError, SdekitError
from sdekit.metrics import sliced_wasserstein
from sdekit.oracle import GaussianMixture, named_mixture
from sdekit.samplers import GeneratorNoise
from sdekit.samplers.ode import ODEOptions, ode
from sdekit.samplers.sde import SDEOptions, reverse_sde
from sdekit.sde import VESDE, VPSDE
from sdekit.solvers import ODE_ADAPTIVE, ODE_FIXED, GridBrownian
from sdekit.utils import append_dims

from .conftest import MIXTURES

f64 = torch.float64
RING = named_mixture("ring8")
#: a hand-made non-uniform grid from T = 1 to t_min = 1e-3 (no schedule gives it)
GRID = torch.tensor([1.0, 0.93, 0.8, 0.71, 0.5, 0.46, 0.3, 0.12, 0.05, 0.011, 1e-3], dtype=f64)


def recording(score_fn):
    """score_fn that also records the times it is asked at (one per call)."""
    seen = []

    def score(x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype and bool((t == t[0]).all())
        seen.append(float(t[0]))
        return score_fn(x, t)

    return score, seen


# -- (a) quality against the exact oracle -------------------------------------------------

#: SW(sampler, exact) / noise floor must stay below this (measured maximum 1.41 at seed 5: docs/solvers.md)
FACTOR = 1.6
QUALITY = [("ode", {}), ("sde", {}), ("sde", {"method": "srk", "brownian": "interval", "steps": 250}),
           ("ancestral", {})]


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(MIXTURES), ids=["2d", "16d"])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("name,options", QUALITY, ids=["ode", "sde", "sde-srk-interval", "ancestral"])
def test_agrees_with_ancestral_at_the_noise_floor(name, options, sde, spec, registry, exact):
    gmm, ref, floor = exact(spec)
    result = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, name, seed=5, registry=registry, **options)
    ratio = sliced_wasserstein(result.samples, ref) / floor
    print(f"QUALITY {name} {options} {type(sde).__name__} {spec} nfe={result.nfe} ratio={ratio:.2f}")
    assert ratio < FACTOR


# -- (b) steps land exactly on the grid ---------------------------------------------------

@pytest.mark.parametrize("method", list(ODE_FIXED))
def test_fixed_step_ode_evaluates_exactly_on_the_grid(method, registry):
    r = sdekit.sample(RING.score_fn(VPSDE()), VPSDE(), (8, 2), "ode", steps=7, method=method, registry=registry)
    assert r.nfe == 7 * ODE_FIXED[method]
    score, seen = recording(RING.score_fn(VPSDE()))
    x = torch.randn(8, 2, dtype=f64, generator=torch.Generator().manual_seed(0))
    ode(VPSDE(), score, x, GRID, options=ODEOptions(method=method), noise=None)
    assert len(seen) == (len(GRID) - 1) * ODE_FIXED[method]
    # every step starts with an evaluation at its grid point (rk4's last stage is at the next one)
    assert seen[::ODE_FIXED[method]] == GRID[:-1].tolist()


@pytest.mark.parametrize("method,evals", [("euler", 1), ("srk", 2)])
def test_sde_steps_exactly_on_any_grid(method, evals, registry):
    r = sdekit.sample(RING.score_fn(VPSDE()), VPSDE(), (8, 2), "sde", steps=9, method=method, registry=registry)
    assert r.nfe == 9 * evals
    score, seen = recording(RING.score_fn(VESDE()))
    x = 50.0 * torch.randn(8, 2, dtype=f64, generator=torch.Generator().manual_seed(0))
    reverse_sde(VESDE(), score, x, GRID, options=SDEOptions(method=method), noise=GeneratorNoise(torch.Generator()))
    assert seen[::evals] == GRID[:-1].tolist()


class ReverseInS:
    """The reverse SDE in s = T - t as torchsde takes it, written independently of sdekit.solvers."""

    sde_type, noise_type = "ito", "additive"

    def __init__(self, sde, score_fn):
        self.reverse = sde.reverse(score_fn)

    def _t(self, s, y):
        return torch.full((y.shape[0],), 1.0 - float(s), dtype=y.dtype)

    def f(self, s, y):
        return -self.reverse.drift(y, self._t(s, y))

    def g_prod(self, s, y, v):
        return append_dims(self.reverse.diffusion(self._t(s, y)), v.ndim) * v


@pytest.mark.parametrize("method", ["euler", "srk"])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_sde_equals_one_torchsde_call_per_grid_interval(sde, method):
    # the step clock is exact: the same as integrating each interval [s_i, s_i+1] in s on its own
    x = sde.prior_sample(torch.randn(16, 2, dtype=f64, generator=torch.Generator().manual_seed(1)))
    out = reverse_sde(sde, RING.score_fn(sde), x, GRID, options=SDEOptions(method=method, denoise="none"),
                      noise=GeneratorNoise(torch.Generator().manual_seed(2)))
    s = (1.0 - GRID).tolist()
    bm = GridBrownian(s, x, GeneratorNoise(torch.Generator().manual_seed(2)), levy_area=method == "srk")
    y = x
    for a, b in zip(s[:-1], s[1:]):  # dt > b - a: one step that ends exactly at b
        y = torchsde.sdeint(ReverseInS(sde, RING.score_fn(sde)), y, torch.tensor([a, b], dtype=f64), bm=bm,
                            method=method, dt=2 * (b - a))[-1]
    torch.testing.assert_close(out, y, rtol=1e-10, atol=1e-10)


def test_grid_brownian_has_the_law_of_brownian_motion():
    # W ~ N(0, h); U = int_0^h W ds: Var U = h^3 / 3, Cov(W, U) = h^2 / 2 (what SRA1 relies on)
    n, h = 200_000, 0.3
    bm = GridBrownian([0.0, 0.1, 0.1 + h], torch.zeros(n, 1, dtype=f64),
                      GeneratorNoise(torch.Generator().manual_seed(0)), levy_area=True)
    bm(0.0, 0.1, return_U=True)
    w, u = bm(0.1, 0.1 + h, return_U=True)
    cov = torch.cov(torch.cat([w, u], dim=1).T)
    torch.testing.assert_close(cov, torch.tensor([[h, h**2 / 2], [h**2 / 2, h**3 / 3]], dtype=f64), rtol=0.02, atol=0)
    assert torch.equal(bm(0.1, 0.1 + h), w)  # asked again: the same increment


def test_callbacks_report_every_grid_point_and_mean_skips_the_last_noise(registry):
    for name, kw in [("ode", {"method": "heun2"}), ("sde", {}), ("sde", {"denoise": "none", "method": "srk"})]:
        seen = []
        r = sdekit.sample(RING.score_fn(VPSDE()), VPSDE(), (4, 2), name, steps=6, registry=registry,
                          callback=lambda i, t, x: seen.append((i, t, x.clone())), **kw)
        assert [(i, t) for i, t, _ in seen] == list(enumerate(sdekit.grids.make_grid(VPSDE(), 6)[1:].tolist()))
        assert torch.equal(seen[-1][2], r.samples)
    # adaptive: once per accepted step, consecutive, ending at t_min
    seen = []
    sdekit.sample(RING.score_fn(VPSDE()), VPSDE(), (4, 2), "ode", registry=registry,
                  callback=lambda i, t, x: seen.append((i, t)))
    assert [i for i, _ in seen] == list(range(len(seen))) and len(seen) > 3 and seen[-1][1] == VPSDE.t_min
    # denoise="mean": the last step on the zero path, i.e. the noisy output minus the last step's noise
    grid = GRID[-3:]
    x = torch.randn(4, 2, dtype=f64)
    noisy = reverse_sde(VPSDE(), RING.score_fn(VPSDE()), x, grid, options=SDEOptions(denoise="none"),
                        noise=GeneratorNoise(torch.Generator().manual_seed(3)))
    mean = reverse_sde(VPSDE(), RING.score_fn(VPSDE()), x, grid, options=SDEOptions(denoise="mean"),
                       noise=GeneratorNoise(torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(3)
    torch.randn(4, 2, generator=g, dtype=f64)  # the first step's increment
    last = torch.randn(4, 2, generator=g, dtype=f64) * float(grid[1] - grid[2]) ** 0.5
    torch.testing.assert_close(noisy - mean, float(VPSDE().diffusion(grid[1])) * last)


# -- (c) the adaptive ODE is accurate ------------------------------------------------------

def test_dopri5_maps_the_prior_like_a_fine_rk4_solve(registry):
    sde, kw = VPSDE(), dict(seed=3, dtype=f64, registry=registry)
    fine = sdekit.sample(RING.score_fn(sde), sde, (32, 2), "ode", method="rk4", steps=500, **kw).samples
    errors = [float((sdekit.sample(RING.score_fn(sde), sde, (32, 2), "ode", rtol=tol, atol=tol, **kw).samples
                     - fine).abs().max()) for tol in (1e-3, 1e-5, 1e-7)]
    # measured: 1e-2, 8e-4, 9e-6 (rk4 with 500 steps is within 2e-7 of 1000 steps)
    assert errors[1] < 2e-3 and errors[2] < errors[1] / 20 < errors[0] / 200


# -- (d, e) randomness: seeds, per-item seeds ---------------------------------------------

@pytest.mark.parametrize("brownian", ["grid", "interval"])
def test_sde_same_seed_same_samples_other_seed_other_samples(brownian, registry):
    def run(seed):
        return sdekit.sample(RING.score_fn(VPSDE()), VPSDE(), (8, 2), "sde", steps=20, seed=seed,
                             brownian=brownian, method="srk", registry=registry).samples

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", ["euler", "srk"])
def test_sde_grid_per_item_seeds_do_not_depend_on_the_batch(method, registry):
    def run(n):
        return sdekit.sample(RING.score_fn(VPSDE()), VPSDE(), (n, 2), "sde", steps=20, seeds=range(n),
                             method=method, registry=registry).samples

    small, big = run(4), run(8)
    assert torch.equal(small, big[:4])


def test_ode_is_deterministic_given_the_prior():
    x = torch.randn(8, 2, dtype=f64)

    def no_noise(like):
        raise AssertionError("the ODE drew noise")

    a = ode(VPSDE(), RING.score_fn(VPSDE()), x, GRID, options=ODEOptions(), noise=no_noise)
    b = ode(VPSDE(), RING.score_fn(VPSDE()), x.clone(), GRID, options=ODEOptions(), noise=no_noise)
    assert torch.equal(a, b)


# -- (f) dtype, device and shape are kept --------------------------------------------------

@pytest.mark.parametrize("name,kw", [("ode", {}), ("ode", {"method": "rk4", "denoise": "tweedie"}),
                                     ("sde", {}), ("sde", {"method": "srk", "brownian": "interval"})])
def test_dtype_device_and_item_shape_are_kept(name, kw, registry):
    base = named_mixture("random:dim=8,components=4,seed=1")
    gmm = GaussianMixture(base.weights, base.means, base.stds, item_shape=(2, 4))
    for dtype in (torch.float32, f64):
        out = sdekit.sample(gmm.score_fn(VESDE()), VESDE(), (5, 2, 4), name, steps=10, dtype=dtype,
                            registry=registry, **kw).samples
        assert out.dtype == dtype and out.shape == (5, 2, 4) and out.device.type == "cpu"
        assert bool(out.isfinite().all())


# -- (g) invalid options are clear errors --------------------------------------------------

def test_invalid_options_name_what_is_valid(registry):
    def run(name, **kw):
        return sdekit.sample(RING.score_fn(VPSDE()), VPSDE(), (4, 2), name, steps=5, registry=registry, **kw)

    def lists_the_valid(name, option, bad, valid):
        with pytest.raises(SdekitError) as err:
            run(name, **{option: bad})
        message = str(err.value)
        assert f"{option!r}" in message and repr(bad) in message and all(v in message for v in valid), message
        return message

    assert "did you mean 'dopri5'" in lists_the_valid("ode", "method", "dopri55", ODE_ADAPTIVE + tuple(ODE_FIXED))
    lists_the_valid("sde", "method", "milstein", ["euler", "srk"])
    lists_the_valid("ode", "denoise", "mean", ["none", "tweedie"])
    lists_the_valid("sde", "brownian", "tree", ["grid", "interval"])
    with pytest.raises(OptionError, match="rtol.*must be > 0"):
        run("ode", rtol=0)
    with pytest.raises(OptionError, match="applies to brownian='interval' only"):
        run("sde", tol=1e-4)
    with pytest.raises(OptionError, match="at most a tenth of the smallest grid step"):
        run("sde", tol=0.1, brownian="interval")
    with pytest.raises(ValueError, match="neighbouring grid points only"):
        GridBrownian([0.0, 0.5, 1.0], torch.zeros(2, 2), None)(0.0, 1.0)


def test_docs_option_tables_match_the_specs(registry):
    text = (Path(__file__).resolve().parents[1] / "docs" / "solvers.md").read_text()
    for name in ("ode", "sde"):
        section = text.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]
        rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| ([^|]*) \|", section, flags=re.M)
        want = [(o["name"], str(o["default"]), o["choices"]) for o in registry.get(name).describe()["options"]]
        assert [(n, d) for n, d, _ in rows] == [(n, d) for n, d, _ in want]
        for (_, _, values), (_, _, choices) in zip(rows, want):
            assert choices is None or sorted(re.split(r"[,;] ", values.strip())) == sorted(choices)
