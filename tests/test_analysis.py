"""Likelihood analysis: the report against the exact oracle, shards equal one process, the CLI's
outputs and errors, TensorBoard tags shared by ``sdekit likelihood`` and training."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sdekit.analysis import analyze, divergence_figure, write_tensorboard
from sdekit.cli import main
from sdekit.config import load_config
from sdekit.oracle import named_mixture
from sdekit.sde import VESDE, VPSDE
from sdekit.train import RunConfig, train

pytestmark = pytest.mark.usefixtures("clean_env")
CONFIGS = Path(__file__).parent.parent / "configs"
TINY_DIGITS = ["model.channels=4", "model.channel_mult=[1]", "model.attn_resolutions=[]", "train.batch_size=16",
               "train.sample_every=0", "train.eval_every=0", "train.device=cpu", "train.log_every=1"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def assert_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lik") / "run"
    train(load_config(CONFIGS / "digits_vp.toml", RunConfig, [*TINY_DIGITS, "train.steps=2"]), workdir,
          log=lambda _: None)
    return workdir


# -- the report --------------------------------------------------------------------------------

@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_report_matches_the_exact_density_and_batches_do_not_matter(sde):
    gmm = named_mixture("ring8")
    x = gmm.sample_t(96, sde.t_min, sde, torch.Generator().manual_seed(1))
    exact = gmm.log_prob(x, sde.t_min, sde).numpy()
    report = analyze(sde, gmm.score_fn(sde), x, batch_size=32, divergence="exact")
    assert len(report) == 96 and report.nfe.shape == (3,) and (report.nfe > 0).all()
    assert np.abs(report.log_likelihood - exact).mean() / 2 < 2e-3  # nats/dim; the prior mismatch dominates
    np.testing.assert_allclose(report.bpd, -report.log_likelihood / (2 * np.log(2)))
    # the trajectory ends at the total divergence and starts at 0
    times, delta = report.trajectory
    assert times[0] == pytest.approx(sde.t_min) and times[-1] == pytest.approx(sde.T)
    np.testing.assert_allclose(delta[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(delta[-1], report.delta_log_prob, rtol=1e-9, atol=1e-9)
    s = report.summary()
    assert s["bpd"] == pytest.approx(report.bpd.mean()) and s["bpd_se"] > 0


def test_shards_gather_into_the_single_process_report():
    sde, gmm = VPSDE(), named_mixture("ring8")
    x = gmm.sample(50, torch.Generator().manual_seed(2))
    kw = dict(batch_size=16, seed=3, rtol=1e-4, atol=1e-4)
    one = analyze(sde, gmm.score_fn(sde), x, **kw)
    parts = []
    assert analyze(sde, gmm.score_fn(sde), x, rank=1, world=2, gather=lambda rows: parts.append(rows), **kw) is None
    two = analyze(sde, gmm.score_fn(sde), x, rank=0, world=2, gather=lambda rows: [rows, parts[0]], **kw)
    for name in ("log_likelihood", "bpd", "prior_log_prob", "delta_log_prob", "nfe"):
        np.testing.assert_array_equal(getattr(two, name), getattr(one, name))
    # and the seed matters: other probes, other estimates
    assert not np.array_equal(analyze(sde, gmm.score_fn(sde), x, **{**kw, "seed": 4}).bpd, one.bpd)


def test_discrete_data_add_the_dequantization_offset_and_group_by_class():
    sde = VPSDE()
    gmm = named_mixture("random:dim=4,components=2,seed=0")
    x = (gmm.sample(40, torch.Generator().manual_seed(0)).clamp(-1, 1) * 8).round() / 8  # 17 levels
    labels = torch.arange(40) % 2
    report = analyze(sde, gmm.score_fn(sde), x, labels=labels, classes=("a", "b"), levels=17, batch_size=20,
                     rtol=1e-4, atol=1e-4)
    offset = 4 * np.log(2 / 17)
    np.testing.assert_allclose(report.bpd, -(report.log_likelihood + offset) / (4 * np.log(2)), rtol=1e-12)
    by_class = report.summary()["bpd_by_class"]
    assert set(by_class) == {"a", "b"}
    assert by_class["a"] == pytest.approx(report.bpd[::2].mean())
    fig = divergence_figure(report)
    assert len(fig.axes) == 1


def test_tensorboard_tags(tmp_path):
    sde, gmm = VPSDE(), named_mixture("ring8")
    x = gmm.sample(24, torch.Generator().manual_seed(0))
    report = analyze(sde, gmm.score_fn(sde), x, labels=torch.arange(24) % 3, batch_size=12, with_elbo=True,
                     elbo_times=4, rtol=1e-4, atol=1e-4)
    write_tensorboard(report, tmp_path, step=7)
    acc = tags(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    assert {"likelihood/bpd", "likelihood/bpd_se", "likelihood/nll", "likelihood/nfe", "likelihood/elbo_bpd",
            "likelihood/bpd_class/0", "likelihood/bpd_class/2"} <= scalars
    assert {"likelihood/bpd", "likelihood/nfe"} <= set(acc.Tags()["histograms"])
    assert "likelihood/divergence" in acc.Tags()["images"]
    event = acc.Scalars("likelihood/bpd")[0]
    assert event.step == 7 and event.value == pytest.approx(report.bpd.mean(), rel=1e-6)


# -- the command ----------------------------------------------------------------------------------

def test_cli_oracle_reports_the_exact_error(tmp_path):
    out = ok(run("likelihood", "--model", "gmm:ring8", "--sde", "ve", "--divergence", "exact", "-n", "64",
                 "--json")).stdout
    result = json.loads(out)
    assert result["n"] == 64 and result["abs_error_nats_per_dim"] < 2e-3
    assert result["nll"] == pytest.approx(result["exact_nll"], abs=0.05)


def test_cli_checkpoint_writes_results_and_tensorboard(digits_run, tmp_path):
    ok(run("likelihood", "--ckpt", digits_run, "-n", "20", "--batch-size", "10", "--elbo", "--out",
           tmp_path / "r.csv", "--logdir", tmp_path / "tb"))
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and {"index", "label", "bpd", "log_likelihood", "elbo_bpd"} <= set(rows[0])
    assert all(np.isfinite(float(r["bpd"])) for r in rows)
    acc = tags(tmp_path / "tb")
    assert acc.Scalars("likelihood/bpd")[0].step == 2  # the checkpoint's training step
    assert "likelihood/bpd_class/0" in acc.Tags()["scalars"]  # the digits' labels

    # the default: RUN/likelihood/results.npz, never overwritten silently
    ok(run("likelihood", "--ckpt", digits_run, "-n", "4", "--rtol", "1e-3", "--atol", "1e-3"))
    saved = np.load(digits_run / "likelihood" / "results.npz", allow_pickle=False)
    assert saved["bpd"].shape == (4,) and json.loads(saved["provenance"].item())["step"] == 2
    assert_error(run("likelihood", "--ckpt", digits_run, "-n", "4"), "results.npz", "--overwrite")


def test_cli_errors_name_the_problem(digits_run, tmp_path):
    np.save(tmp_path / "vectors.npy", np.zeros((5, 3), np.float32))
    assert_error(run("likelihood", "--ckpt", digits_run, "--data", tmp_path / "vectors.npy", "--out",
                     tmp_path / "a.npz"), "shape (3,)", "(1, 8, 8)")
    np.save(tmp_path / "wide.npy", np.full((5, 1, 8, 8), 1.5, np.float32))
    assert_error(run("likelihood", "--ckpt", digits_run, "--data", tmp_path / "wide.npy", "--split", "all",
                     "--out", tmp_path / "b.npz"), "[-1, 1]")
    assert_error(run("likelihood", "--ckpt", digits_run, "--conditional", "--out", tmp_path / "c.npz"),
                 "without class labels")
    assert_error(run("likelihood", "--ckpt", digits_run, "--method", "euler", "-n", "2", "--out",
                     tmp_path / "d.npz"), "euler", "dopri5")
    assert_error(run("likelihood", "--ckpt", digits_run, "--out", tmp_path / "e.txt"), ".npz or .csv")
    assert not any((tmp_path / name).exists() for name in ("a.npz", "b.npz", "c.npz", "d.npz"))


def test_torchrun_likelihood_equals_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun ships with torch"
    args = ["likelihood", "--model", "gmm:ring8", "-n", "40", "--batch-size", "8", "--rtol", "1e-4", "--atol",
            "1e-4"]
    done = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "sdekit.cli", *args, "--out",
                           str(tmp_path / "two.npz")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    ok(run(*args, "--out", tmp_path / "one.npz"))
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    np.testing.assert_array_equal(two["bpd"], one["bpd"])
    np.testing.assert_array_equal(two["nfe_per_batch"], one["nfe_per_batch"])
    assert json.loads(two["provenance"].item())["world_size"] == 2


# -- training ---------------------------------------------------------------------------------------

def test_training_writes_held_out_bpd_under_the_same_tags(tmp_path):
    train(load_config(CONFIGS / "digits_vp.toml", RunConfig,
                      [*TINY_DIGITS, "train.steps=2", "train.bpd_every=2", "train.bpd_items=8"]), tmp_path,
          log=lambda _: None)
    acc = tags(tmp_path / "tb")
    events = acc.Scalars("likelihood/bpd")
    assert [e.step for e in events] == [2]
    assert 0 < events[0].value < 30  # bits/dim of 17-level digits after 2 steps: finite and plausible
    assert "likelihood/divergence" in acc.Tags()["images"]
