"""benchmarks.run --quick (sdekit's samplers beside diffusers' and k-diffusion's, issue 7), and the
adapters that feed the peers the exact score: the right noise level for every timestep."""

import importlib.util
import json
import math
import sys

import pytest
import torch

from benchmarks import peers, run
from sdekit.oracle import named_mixture
from sdekit.sde import VPSDE

#: diffusers 0.42.1 on numpy 2: "__array__ implementation doesn't accept a copy keyword" (theirs, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    run.main(["--quick", "--out", str(out)])
    return out, json.loads((out / "quality.json").read_text())


@pytest.mark.slow  # the quick run: ~7 s of CPU, more on a busy machine
def test_quick_writes_tables_plots_and_machine_info(quick):
    out, result = quick
    assert {"quality.json", "quality.md", "quality_sw.png", "quality_tv.png", "quality_mmd.png", "timing.json"} <= {
        p.name for p in out.iterdir()}
    machine = result["machine"]
    assert machine["torch"] == torch.__version__ and machine["cpu_count"] and "peers" in machine
    timing = json.loads((out / "timing.json").read_text())
    assert timing["for_reporting"] is False  # a check of the timing parts, never a result
    for part in ("per_step_overhead", "likelihood", "training_step"):
        assert not isinstance(timing[part], str), timing[part]


@pytest.mark.slow  # the quick run: ~7 s of CPU, more on a busy machine
def test_quick_runs_every_sdekit_sampler_within_budget(quick):
    from sdekit.registry import load_registry

    _, result = quick
    rows = result["quality"]["rows"]
    # the default registry: built-ins and installed plugins (make test installs plugins/*)
    assert {r["sampler"] for r in rows if r["family"] == "sdekit"} == set(load_registry(strict=True).names())
    for r in rows:
        if not r["error"] and not r["adaptive"]:
            assert r["nfe"] <= r["budget"], r
    floor = result["quality"]["floors"]["ring8"]["sw"]
    assert sorted(result["quality"]["floors"]["ring8"]["sw_all"])[0] <= floor  # the median of the exact sets
    dpm = next(r for r in rows if (r["family"], r["sampler"], r["budget"]) == ("sdekit", "dpm_solver", 20))
    assert dpm["nfe"] == 20 and dpm["sw"] < 2.0 * floor  # 500 samples: floor ~0.19, dpm_solver ~0.24
    # the MMD to the exact law: dpm_solver at 20 is within noise of 0 (measured 0.2e-3 +- 0.3e-3 at
    # n = 2000), 20 Langevin steps are far from it (measured 150e-3)
    assert abs(dpm["mmd"]) < 4 * dpm["mmd_se"] + 2e-3, dpm
    langevin = next(r for r in rows if (r["family"], r["sampler"], r["budget"]) == ("sdekit", "langevin", 20))
    assert langevin["mmd"] > 5 * langevin["mmd_se"], langevin
    builtin = {r["sampler"]: r["builtin"] for r in rows if r["family"] == "sdekit"}
    assert builtin["dpm_solver"] and builtin["pc"] and not builtin.get("unipc", False)
    for w in result["quality"]["winners"]:
        assert w["winner_mmd"] and w["sdekit_vs_best_peer_mmd"] in {"better", "worse", "tie", None}
        assert w["best_builtin_mmd"]["sampler"] in builtin and builtin[w["best_builtin_mmd"]["sampler"]]
    table = (quick[0] / "quality.md").read_text()
    assert "Who wins by MMD to the exact law" in table and "1000 x mmd" in table


def test_mmd_verdict_is_a_tie_within_two_combined_standard_errors():
    from benchmarks.quality import mmd_verdict

    a = {"mmd": 1.0e-3, "mmd_se": 0.3e-3}
    assert mmd_verdict(a, {"mmd": 1.8e-3, "mmd_se": 0.3e-3}) == "tie"  # 0.8e-3 < 2 x 0.42e-3
    assert mmd_verdict(a, {"mmd": 2.0e-3, "mmd_se": 0.3e-3}) == "better"
    assert mmd_verdict({"mmd": 2.0e-3, "mmd_se": 0.3e-3}, a) == "worse"


@pytest.mark.slow  # the quick run: ~7 s of CPU, more on a busy machine
def test_quick_includes_installed_peers(quick):
    _, result = quick
    families = {r["family"] for r in result["quality"]["rows"]}
    status = result["machine"]["peers"]
    if importlib.util.find_spec("diffusers") is not None:
        assert not status["diffusers"].startswith("unavailable") and "diffusers" in families
    if not status["k-diffusion"].startswith("unavailable"):
        assert "k-diffusion" in families
    for peer, state in status.items():
        assert (peer in families) != state.startswith("unavailable")


@pytest.mark.slow  # the quick run: ~7 s of CPU, more on a busy machine
def test_missing_peers_are_reported_not_fatal(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    for name in ("_kd_bench", "_kd_bench.utils", "_kd_bench.sampling"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setenv(peers.KDIFFUSION_ENV, str(tmp_path / "no-such-wheel.whl"))
    result = run.main(["--quick", "--budgets", "10", "--skip-quality", "--out", str(tmp_path)])
    status = result["machine"]["peers"]
    assert status["diffusers"].startswith("unavailable") and status["k-diffusion"].startswith("unavailable")
    assert "no-such-wheel" in status["k-diffusion"]
    printed = capsys.readouterr().out
    assert "diffusers: unavailable" in printed and "k-diffusion: unavailable" in printed
    for name in ("_kd_bench", "_kd_bench.utils", "_kd_bench.sampling"):
        sys.modules.pop(name, None)  # loaded by nothing here; keep later loads honest


def test_diffusers_betas_are_the_vp_discretization():
    diffusers = pytest.importorskip("diffusers")
    sde = VPSDE()
    scheduler = diffusers.DDPMScheduler(**peers.vp_betas(sde))
    grid = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    a, _ = sde.discretize(grid[:-1], grid[1:])
    assert torch.allclose(scheduler.betas.double(), 1.0 - a**2, rtol=1e-6, atol=1e-9)


def test_eps_model_evaluates_the_score_at_the_schedulers_noise_level():
    diffusers = pytest.importorskip("diffusers")
    sde = VPSDE()
    abar = diffusers.DDPMScheduler(**peers.vp_betas(sde)).alphas_cumprod.double()
    model = peers.EpsModel(lambda x, t: -x, sde, abar)
    for k in (0, 1, 250, 500, 995):
        m = sde.marginal(torch.tensor(model.time(k), dtype=torch.float64))[0]
        assert math.isclose(float(m**2), float(abar[k]), rel_tol=1e-6)
    assert model.time(996) == model.time(999) == sde.T  # the 4 levels noisier than the SDE at T: labelled T
    # eps = -s score: for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with x0 = 0, the exact score gives eps back
    gmm = named_mixture("random:dim=4,components=1,seed=0")
    gmm.stds.fill_(0.0)
    model = peers.EpsModel(gmm.score_fn(sde), sde, abar)
    eps = torch.randn(8, 4, dtype=torch.float64)
    x = abar[300].sqrt() * gmm.means[0] + (1 - abar[300]).sqrt() * eps
    assert torch.allclose(model(x, torch.tensor(300)), eps, atol=1e-6)


def test_denoiser_is_tweedie_in_k_diffusion_units():
    sde = VPSDE()
    gmm = named_mixture("random:dim=3,components=1,seed=0")
    gmm.stds.fill_(0.0)  # a point mass: D(x, sigma) is the point, at every sigma
    den = peers.Denoiser(gmm.score_fn(sde), sde)
    for sigma in (0.05, 1.0, 30.0):
        x = gmm.means[0] + sigma * torch.randn(5, 3, dtype=torch.float64)
        assert torch.allclose(den(x, torch.full((5,), sigma, dtype=torch.float64)), gmm.means[0].expand(5, 3),
                              atol=1e-6 * max(sigma, 1.0))


def test_schedules_benchmark_runs_and_marks_the_best_grid(tmp_path):
    from benchmarks import schedules

    result = schedules.main(["--sdes", "vp", "--mixtures", "ring8", "--samplers", "dpm_solver,no_such_sampler",
                             "--steps", "5", "--seeds", "0", "-n", "300", "--out", str(tmp_path)])
    rows = {r["schedule"]: r for r in result["rows"]}
    assert set(rows) == {"logsnr", "quadratic", "vp_quadratic"} and result["plan"]["samplers"] == ["dpm_solver"]
    # on VP the two quadratic grids are one grid; at 5 steps it beats logsnr (measured 15 against 62)
    assert rows["quadratic"]["mmd"] == pytest.approx(rows["vp_quadratic"]["mmd"], abs=1e-9)
    assert rows["vp_quadratic"]["mmd"] + 3 * rows["vp_quadratic"]["mmd_se"] < rows["logsnr"]["mmd"]
    table = (tmp_path / "schedules.md").read_text()
    assert "| vp | ring8 | dpm_solver | 5 |" in table and "**" in table
