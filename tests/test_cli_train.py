"""``sdekit train`` and ``sdekit sample --ckpt``: runs are never overwritten, resume continues,
checkpoints sample like the library does, guidance reaches the network, and torchrun shards
give the single-process output."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sdekit import sample as draw
from sdekit.cli import main
from sdekit.io import load_samples
from sdekit.train import load_run

pytestmark = pytest.mark.usefixtures("clean_env")

#: a tiny 2-D run: an MLP on ring8, quiet, a checkpoint at the end
TOY = ["--set", "model.arch=mlp", "--set", "model.hidden=32", "--set", "model.depth=1",
       "--set", "data.name=gmm:ring8", "--set", "data.size=256", "--set", "train.batch_size=32",
       "--set", "train.sample_every=0", "--set", "train.eval_every=0", "--set", "train.device=cpu",
       "--set", "train.log_every=1", "--set", "optim.warmup=1"]
#: a tiny digits U-Net (class-conditional when asked)
DIGITS = ["--set", "model.channels=4", "--set", "model.channel_mult=[1]", "--set", "model.attn_resolutions=[]",
          "--set", "train.batch_size=16", "--set", "train.sample_every=0", "--set", "train.eval_every=0",
          "--set", "train.device=cpu", "--set", "train.log_every=1"]
CONFIGS = Path(__file__).parent.parent / "configs"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def assert_error(result, *fragments, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stderr.rstrip().splitlines()[-1].startswith("Error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def train_toy(workdir, steps=3, *extra):
    return run("train", "--config", CONFIGS / "toy_vp.toml", "--workdir", workdir, *TOY,
               "--set", f"train.steps={steps}", *extra)


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """An unconditional and a class-conditional tiny digits run, and a noise-aware classifier."""
    root = tmp_path_factory.mktemp("digits")
    ok(run("train", "--config", CONFIGS / "digits_vp.toml", "--workdir", root / "vp", *DIGITS,
           "--set", "train.steps=2"))
    ok(run("train", "--config", CONFIGS / "digits_cond.toml", "--workdir", root / "cond", *DIGITS,
           "--set", "train.steps=2"))
    ok(run("train", "--config", CONFIGS / "digits_classifier.toml", "--workdir", root / "clf",
           "--set", "model.channels=4", "--set", "model.channel_mult=[1]", "--set", "train.steps=2",
           "--set", "train.batch_size=16", "--set", "train.eval_every=0", "--set", "train.device=cpu"))
    return root


# -- train ----------------------------------------------------------------------------------

def test_train_writes_a_run_and_never_overwrites_it(tmp_path):
    result = ok(train_toy(tmp_path / "r"))
    assert "checkpoint" in result.stdout and "tensorboard --logdir" in result.stdout
    assert "step 3/3" in result.stderr  # the log goes to stderr, the summary to stdout
    files = {p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert "config.toml" in files and "checkpoints/ckpt_00000003.pt" in files
    assert any(f.startswith("tb/events.out.tfevents") for f in files)
    before = (tmp_path / "r" / "checkpoints" / "ckpt_00000003.pt").read_bytes()

    assert_error(train_toy(tmp_path / "r"), "already holds a training run", "--resume")
    assert (tmp_path / "r" / "checkpoints" / "ckpt_00000003.pt").read_bytes() == before


def test_resume_equals_an_uninterrupted_run(tmp_path):
    ok(train_toy(tmp_path / "split", 2))
    # --resume without --config reads the workdir's resolved config; --set still applies
    ok(run("train", "--workdir", tmp_path / "split", "--resume", "--set", "train.steps=4"))
    ok(train_toy(tmp_path / "whole", 4))
    a, b = load_run(tmp_path / "split"), load_run(tmp_path / "whole")
    assert a.step == b.step == 4
    for (name, p), q in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(p, q), name


def test_train_json_and_print_config(tmp_path):
    import json

    text = ok(run("train", "--config", CONFIGS / "toy_vp.toml", "--workdir", tmp_path / "r", "--print-config",
                  "--set", "model.hidden=48")).stdout
    assert "[model]" in text and "hidden = 48" in text
    assert not (tmp_path / "r").exists()  # printing trains nothing
    summary = json.loads(ok(train_toy(tmp_path / "j", 2, "--json")).stdout)
    assert summary["step"] == 2 and len(summary["history"]) == 2 and np.isfinite(summary["final_loss"])


@pytest.mark.parametrize("args, fragments", [
    (["--set", "model.chanels=3"], ["model.chanels", "channels"]),
    (["--set", "train.steps=0"], ["train.steps", ">= 1"]),
    (["--set", "data.name=mnist"], ["data.name", "digits"]),
    (["--set", "sample.sampler=nope"], ["sample.sampler", "pc"]),
])
def test_train_config_errors_name_the_key(tmp_path, args, fragments):
    assert_error(run("train", "--config", CONFIGS / "digits_vp.toml", "--workdir", tmp_path / "r", *args),
                 *fragments)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_train_without_a_config_says_how(tmp_path):
    result = run("train", "--workdir", tmp_path / "r")
    assert result.exit_code == 2 and "--config FILE" in result.output
    assert_error(run("train", "--workdir", tmp_path / "r", "--resume"), "config.toml", "--config")


# -- sample --ckpt ----------------------------------------------------------------------------

def test_sample_from_a_checkpoint_is_the_library_sample(tmp_path):
    ok(train_toy(tmp_path / "r", 3))
    out = tmp_path / "s.png"
    ok(run("sample", "--ckpt", tmp_path / "r", "--sampler", "ddim", "--steps", "10", "--seeds", "0-49",
           "--out", out))
    samples, prov = load_samples(tmp_path / "s.npz")
    assert out.is_file() and samples.shape == (50, 2)
    assert prov["model"].startswith("ckpt:") and prov["sampler"] == "pc" and prov["predictor"]["name"] == "ddim"
    loaded = load_run(tmp_path / "r")
    ref = draw(loaded.score_fn, loaded.sde, (50, 2), "ddim", steps=10, seeds=range(50)).samples
    np.testing.assert_array_equal(samples, ref.numpy())


def test_sample_defaults_to_the_runs_sample_section(tmp_path):
    ok(train_toy(tmp_path / "r", 2, "--set", "sample.sampler=dpm_solver", "--set", "sample.steps=7",
                 "--set", "sample.options.order=2"))
    ok(run("sample", "--ckpt", tmp_path / "r", "-n", "8", "--out", tmp_path / "s"))
    _, prov = load_samples(tmp_path / "s" / "samples.npz")
    assert prov["sampler"] == "dpm_solver" and prov["steps"] == 7 and prov["options"]["order"] == 2


def test_image_checkpoint_writes_an_image_grid(digits_runs, tmp_path):
    from PIL import Image

    ok(run("sample", "--ckpt", digits_runs / "vp", "--sampler", "ddim", "--steps", "3", "-n", "9",
           "--out", tmp_path / "g.png"))
    samples, prov = load_samples(tmp_path / "g.npz")
    assert samples.shape == (9, 1, 8, 8) and prov["classes"] == [str(k) for k in range(10)]
    with Image.open(tmp_path / "g.png") as img:
        assert img.mode == "L"
        width, height = img.size
    # 3 x 3 tiles of 8 pixels and 1 pixel of padding around each, scaled by the same integer
    assert width == height and width % (3 * 9 + 1) == 0 and width >= 256


def test_guidance_reaches_the_network(digits_runs, tmp_path):
    """CFG at s=1 is the conditional model, bitwise; classifier guidance on the unconditional run at
    scale 0 is the unconditional model, bitwise; and the class changes the samples."""
    def cond(*args, out):
        ok(run("sample", "--ckpt", digits_runs / "cond", "--sampler", "ddim", "--steps", "3", "--seeds", "0-7",
               "--out", tmp_path / out, *args))
        return load_samples(tmp_path / out / "samples.npz")[0]

    plain = cond("--class", "3", out="a")
    np.testing.assert_array_equal(cond("--class", "3", "--guidance", "cfg", "--scale", "1",
                                       "--guidance-convention", "s", out="b"), plain)
    assert not np.array_equal(cond("--class", "5", out="c"), plain)
    assert not np.array_equal(cond("--class", "3", "--guidance", "cfg", "--scale", "3",
                                   "--guidance-convention", "s", out="d"), plain)

    def uncond(*args, out):
        ok(run("sample", "--ckpt", digits_runs / "vp", "--sampler", "ddim", "--steps", "3", "--seeds", "0-7",
               "--out", tmp_path / out, *args))
        return load_samples(tmp_path / out / "samples.npz")[0]

    base = uncond(out="e")
    guided = ["--classifier", digits_runs / "clf", "--class", "2", "--guidance", "classifier"]
    np.testing.assert_array_equal(uncond(*guided, "--scale", "0", out="f"), base)
    assert not np.array_equal(uncond(*guided, "--scale", "2", out="g"), base)


@pytest.mark.parametrize("args, fragments", [
    (["--class", "3"], ["not conditional on a class", "--classifier RUN"]),
    (["--class", "3", "--guidance", "cfg", "--guidance-convention", "s"], ["not conditional on a class"]),
    (["--sde", "ve"], ["--sde ve", "VPSDE"]),
    (["--sampler", "nope"], ["nope", "ddim"]),
    (["--model", "gmm:ring8"], ["not both"]),
])
def test_checkpoint_sampling_errors(digits_runs, tmp_path, args, fragments):
    assert_error(run("sample", "--ckpt", digits_runs / "vp", "-n", "4", "--out", tmp_path / "x", *args), *fragments)
    assert not (tmp_path / "x").exists()


def test_a_classifier_run_is_not_a_score_model(digits_runs, tmp_path):
    assert_error(run("sample", "--ckpt", digits_runs / "clf", "-n", "4", "--out", tmp_path / "x"),
                 "noise-aware classifier", "--classifier")
    assert_error(run("sample", "--ckpt", digits_runs / "vp", "--classifier", digits_runs / "cond", "--class", "1",
                     "--guidance", "classifier", "-n", "4", "--out", tmp_path / "x"), "is a score model")


def test_an_empty_or_corrupt_run_is_one_message(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_error(run("sample", "--ckpt", tmp_path / "empty", "--out", tmp_path / "x"), "no checkpoint")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_error(run("sample", "--ckpt", bad, "--out", tmp_path / "x"), str(bad))


# -- torchrun ------------------------------------------------------------------------------------

def test_torchrun_shards_give_the_single_process_output(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.fail("torchrun is not installed beside this Python (it ships with torch)")
    args = ["sample", "--model", "gmm:ring8", "--sampler", "ddim", "--steps", "10", "-n", "11"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "sdekit.cli", *args,
                           "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    ok(run(*args[:-2], "--seeds", "0-10", "--out", tmp_path / "one"))
    two, prov = load_samples(tmp_path / "two" / "samples.npz")
    one, _ = load_samples(tmp_path / "one" / "samples.npz")
    np.testing.assert_array_equal(two, one)
    assert prov["world_size"] == 2 and prov["seeds"] == list(range(11)) and prov["shape"] == [11, 2]


# -- eval ----------------------------------------------------------------------------------------

def test_eval_scores_real_digits_like_the_yardstick_and_noise_far_worse(tmp_path):
    import json

    from sdekit.evaluate import digits_split
    from sdekit.io import save_samples

    _, held_out = digits_split()
    save_samples(tmp_path / "real.npz", held_out.x[:200].numpy(), {"model": "real"})
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    (tmp_path / "noise").mkdir()
    save_samples(tmp_path / "noise" / "samples.npz", noise.numpy(), {"model": "noise"})

    real = json.loads(ok(run("eval", tmp_path / "real.npz", "--json")).stdout)
    fake = json.loads(ok(run("eval", tmp_path / "noise", "--json")).stdout)  # a directory is read as DIR/samples.npz
    assert real["n"] == real["real_digits"]["n"] == 200
    assert real["confident_fraction"] > 0.9 and real["histogram_tv"] < 0.15
    assert real["frechet"] < 2 * real["real_digits"]["frechet"]
    assert fake["frechet"] > 10 * real["frechet"] and fake["confident_fraction"] < 0.6
    text = ok(run("eval", tmp_path / "real.npz")).stdout
    assert "Frechet distance" in text and "REAL DIGITS (n=200)" in text and "held-out accuracy" in text


def test_eval_refuses_what_is_not_digits_and_warns_of_a_leak(digits_runs, tmp_path):
    ok(run("sample", "--model", "gmm:ring8", "--sampler", "ddim", "-n", "10", "--steps", "5", "--out", tmp_path / "ring"))
    assert_error(run("eval", tmp_path / "ring"), "(10, 2)", "(N, 1, 8, 8)")
    ok(run("train", "--config", CONFIGS / "digits_vp.toml", "--workdir", tmp_path / "leak", *DIGITS,
           "--set", "train.steps=1", "--set", "data.holdout=0.0"))
    ok(run("sample", "--ckpt", tmp_path / "leak", "--sampler", "ddim", "--steps", "2", "-n", "8",
           "--out", tmp_path / "s"))
    assert "warning: the model was trained with data.holdout = 0.0" in ok(run("eval", tmp_path / "s")).stderr
    ok(run("sample", "--ckpt", digits_runs / "vp", "--sampler", "ddim", "--steps", "2", "-n", "8",
           "--out", tmp_path / "t"))
    assert "warning" not in ok(run("eval", tmp_path / "t")).stderr


def test_torchrun_train_is_one_global_batch(tmp_path):
    """sdekit train under torchrun (gloo, 2 processes) trains the single-process model; only rank 0 writes."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun ships with torch"
    args = ["train", "--config", str(CONFIGS / "toy_vp.toml"), *TOY, "--set", "train.steps=3"]
    done = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "sdekit.cli", *args,
                           "--workdir", str(tmp_path / "two")], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("checkpoint ") == 1  # one summary: rank 0's
    ok(run(*args, "--workdir", tmp_path / "one"))
    two, one = load_run(tmp_path / "two", ema=False), load_run(tmp_path / "one", ema=False)
    for p, q in zip(two.net.state_dict().values(), one.net.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
