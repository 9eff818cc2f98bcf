"""The command line: every user error is one message and exit status 2, outputs load back
with their provenance, seeds reproduce, and the console script is installed."""

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sdekit
from sdekit.cli import EXACT_SEEDS, main, parse_seeds
from sdekit.errors import SdekitError
from sdekit.io import atomic_write, load_samples, save_samples
from sdekit.metrics import mixture_mmd, sliced_wasserstein
from sdekit.oracle import named_mixture

pytestmark = pytest.mark.usefixtures("clean_env")

SMALL = ["-n", "200", "--steps", "20"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def assert_error(result, *fragments, code=2):
    """One clear message on stderr, the given exit status, no traceback, nothing on stdout."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.rstrip().splitlines()[-1].startswith("Error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def sample(out, *args):
    return run("sample", "--model", "gmm:ring8", *SMALL, "--out", out, *args)


# -- samplers and plugins ---------------------------------------------------------------

def test_samplers_list_text_and_json():
    text = ok(run("samplers", "list")).stdout
    assert text.splitlines()[0].split() == ["NAME", "KIND", "STOCHASTIC", "EVALS/STEP", "STEPS", "PLUGIN", "SUMMARY"]
    pc_row = next(line for line in text.splitlines() if line.startswith("pc "))
    assert pc_row.split()[:6] == ["pc", "sampler", "yes", "2", "500", "sdekit.samplers.pc"]
    rows = json.loads(ok(run("samplers", "list", "--json")).stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["ancestral"] == {**by_name["ancestral"], "kind": "predictor", "plugin": "sdekit.samplers.ancestral",
                                    "stochastic": True, "evals_per_step": 1}
    assert {"recommended_steps", "summary"} <= set(by_name["pc"])
    correctors = json.loads(ok(run("samplers", "list", "--kind", "corrector", "--json")).stdout)
    assert {r["kind"] for r in correctors} == {"corrector"} and "langevin" in {r["name"] for r in correctors}


def test_samplers_show_options_with_types_defaults_bounds_choices_and_help():
    desc = json.loads(ok(run("samplers", "show", "langevin", "--json")).stdout)
    snr = next(o for o in desc["options"] if o["name"] == "snr")
    assert snr["type"] == "float" and snr["bounds"] and snr["help"] and isinstance(snr["default"], float)
    assert desc["plugin"] == "sdekit.samplers.langevin" and desc["kind"] == "corrector"
    pc = json.loads(ok(run("samplers", "show", "pc", "--json")).stdout)
    denoise = next(o for o in pc["options"] if o["name"] == "denoise")
    assert denoise["choices"] == ["none", "mean", "tweedie"] and denoise["default"] == "mean"
    assert "langevin" in pc["components"]["corrector"]["choices"]
    text = ok(run("samplers", "show", "pc")).stdout
    assert "denoise: str = 'mean'" in text and "one of: none, mean, tweedie" in text
    assert "registered corrector, or 'none'" in text


def test_unknown_sampler_says_did_you_mean(tmp_path):
    assert_error(run("samplers", "show", "pcc"), "unknown sampler 'pcc'; did you mean 'pc'?", "valid: ")
    result = sample(tmp_path / "out", "--sampler", "ancestrl")
    assert_error(result, "did you mean 'ancestral'?")
    assert not (tmp_path / "out").exists()


def test_plugins_lists_a_broken_plugin_beside_the_working_ones(write_plugin, tmp_path):
    bad = write_plugin("cli_broken", "raise RuntimeError('boom at import')\n")
    good = write_plugin("cli_good")
    args = ["--plugin", bad, "--plugin", good]
    text = ok(run(*args, "plugins")).stdout
    lines = text.splitlines()
    bad_at = next(i for i, line in enumerate(lines) if line.startswith(str(bad)))
    assert lines[bad_at].split()[1:] == ["-", "file", "broken", "-"]
    assert lines[bad_at + 1].strip() == "error: RuntimeError: boom at import"
    assert next(line for line in lines if line.startswith(str(good))).split()[1:] == ["0.7", "file", "ok", "plug_const"]
    assert next(line for line in lines if line.startswith("sdekit.samplers.pc ")).split()[2:4] == ["builtin", "ok"]
    infos = {i["name"]: i for i in json.loads(ok(run(*args, "plugins", "--json")).stdout)}
    assert infos[str(bad)]["status"] == "broken" and "boom at import" in infos[str(bad)]["error"]
    assert infos[str(good)]["samplers"] == ["plug_const"] and infos["sdekit.samplers.pc"]["status"] == "ok"
    # the other commands keep working, with a warning that names the broken plugin
    listing = ok(run(*args, "samplers", "list"))
    assert "plug_const" in listing.stdout and "\npc " in listing.stdout
    assert f"warning: plugin {str(bad)!r} is broken" in listing.stderr
    ok(run(*args, "sample", "--model", "gmm:ring8", "-n", 10, "--sampler", "plug_const", "--out", tmp_path / "o"))


def test_strict_plugins_exits_2_naming_the_plugin(write_plugin):
    bad = write_plugin("cli_strict", "raise RuntimeError('boom at import')\n")
    assert_error(run("--strict-plugins", "--plugin", bad, "samplers", "list"),
                 f"plugin {str(bad)!r} (file) is broken: RuntimeError: boom at import")
    ok(run("--plugin", bad, "samplers", "list"))  # without --strict-plugins: a warning


def test_entry_point_plugins_and_the_plugin_controls(entry_point_plugin):
    infos = {i["name"]: i for i in json.loads(ok(run("plugins", "--json")).stdout)}
    assert infos[entry_point_plugin]["origin"] == "entry point" and infos[entry_point_plugin]["version"] == "1.2.3"
    names = [r["name"] for r in json.loads(ok(run("--no-plugin-autoload", "samplers", "list", "--json")).stdout)]
    assert "demo_const" not in names and "pc" in names
    disabled = json.loads(ok(run("--disable-plugin", entry_point_plugin, "--disable-plugin", "sdekit.samplers.ald",
                                 "samplers", "list", "--json")).stdout)
    assert not {"demo_const", "ald"} & {r["name"] for r in disabled}
    traced = ok(run("--trace-plugins", "samplers", "list"))
    assert "sdekit_register_samplers" in traced.stderr and "sdekit_register_samplers" not in traced.stdout


def test_debug_shows_the_traceback():
    result = run("--debug", "samplers", "show", "pcc")
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr and "UnknownNameError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("Error: unknown sampler 'pcc'")


def test_an_unexpected_exception_is_a_message_with_status_1(write_plugin, tmp_path):
    path = write_plugin("cli_crash", sampler="plug_crash")
    path.write_text(path.read_text().replace("return torch.full_like", "return 1 / 0 + torch.full_like"))
    result = run("--plugin", path, "sample", "--model", "gmm:ring8", "--sampler", "plug_crash", "-n", 5,
                 "--out", tmp_path / "o")
    assert_error(result, "unexpected ZeroDivisionError: division by zero", "--debug", code=1)
    assert "Traceback" in run("--debug", "--plugin", path, "sample", "--model", "gmm:ring8", "--sampler",
                              "plug_crash", "-n", 5, "--out", tmp_path / "o").stderr


# -- sample: errors -----------------------------------------------------------------------

ERRORS = {
    "unknown option": (["-o", "snrr=0.1"], ["unknown option for sampler 'pc'", "did you mean 'snr'?",
                                             "valid: ", "corrector.snr"]),
    "wrong type": (["-o", "snr=abc"], ["option 'snr' of sampler 'langevin' must be a float, got 'abc'"]),
    "out of range": (["-o", "snr=-1"], ["option 'snr' of sampler 'langevin' must be > "]),
    "bad choice": (["-o", "denoise=foo"], ["option 'denoise' of sampler 'pc' must be one of none, mean, tweedie, "
                                          "got 'foo'"]),
    "not key=value": (["-o", "snr"], ["expected KEY=VALUE, got 'snr'"]),
    "repeated option": (["-o", "snr=0.1", "-o", "snr=0.2"], ["given twice"]),
    "command argument as option": (["-o", "steps=3"], ["unknown option for sampler 'pc': 'steps'"]),
    "unknown model kind": (["--model", "foo:bar"], ["unknown model kind 'foo'", "valid kinds: gmm", "KIND:SPEC"]),
    "model without kind": (["--model", "ring8"], ["did you mean 'gmm:ring8'?"]),
    "model without spec": (["--model", "gmm:"], ["needs a spec after 'gmm:'"]),
    "unknown mixture": (["--model", "gmm:ringg"], ["unknown mixture 'ringg'; did you mean 'ring8'?"]),
    "bad mixture argument": (["--model", "gmm:random:dim=x"], ["mixture argument 'dim' must be a number, got 'x'"]),
    "backwards seeds": (["--seeds", "3-1"], ["Invalid value for '--seeds'", "runs backwards"]),
    "seeds not numbers": (["--seeds", "a-b"], ["'a-b' is not a seed or a range"]),
    "repeated seed": (["--seeds", "0-3,2"], ["seed 2 appears twice"]),
    "seed and seeds": (["--seeds", "0-3", "--seed", "1"], ["--seed or --seeds, not both"]),
    "seeds and n": (["--seeds", "0-3", "-n", "5"], ["-n 5 does not match the 4 seeds"]),
    "unknown schedule": (["--schedule", "unifrom"], ["unknown schedule 'unifrom'; did you mean 'uniform'?"]),
    "bad sde": (["--sde", "vpp"], ["Invalid value for '--sde'"]),
    "bad t-min": (["--t-min", "2"], ["t_min"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_sample_errors_are_one_clear_message(case, tmp_path):
    extra, fragments = ERRORS[case]
    model = [] if "--model" in extra else ["--model", "gmm:ring8"]
    assert_error(run("sample", *model, *SMALL, "--out", tmp_path / "out", *extra), *fragments)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_sample_without_a_model_says_how_to_name_one(tmp_path):
    assert_error(run("sample", *SMALL, "--out", tmp_path / "out"), "--model KIND:SPEC (e.g. --model gmm:ring8)", "--ckpt RUN")


def test_parse_seeds_ranges_and_lists():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,5,7") == [0, 5, 7]
    assert parse_seeds(" 2 , 10-11") == [2, 10, 11]
    for bad in ("", "1,", "-1", "1-2-3", "x"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


# -- sample: outputs ----------------------------------------------------------------------

def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_sample_writes_npz_with_provenance_and_a_png(tmp_path):
    out = tmp_path / "run"
    args = ["sample", "--model", "gmm:ring8", *SMALL, "--out", out, "--seed", "3", "-o", "snr=0.2"]
    result = ok(run(*args))
    assert sorted(p.name for p in out.iterdir()) == ["samples.npz", "samples.png"]  # no temp files left
    for text in (str(out / "samples.npz"), str(out / "samples.png"), "nfe        40", "wall time", "sliced W2",
                 "noise floor", "MMD^2", "to the exact law"):
        assert text in result.stdout
    samples, prov = load_samples(out / "samples.npz")
    assert samples.shape == (200, 2) and samples.dtype == np.float32 and np.isfinite(samples).all()
    assert prov["sampler"] == "pc" and prov["options"]["predictor"] == "reverse_diffusion"
    assert prov["corrector"]["name"] == "langevin" and prov["corrector"]["options"]["snr"] == 0.2
    assert prov["seed"] == 3 and prov["seeds"] is None and prov["steps"] == 20 and prov["nfe"] == 40
    assert prov["versions"]["sdekit"] == sdekit.__version__ and prov["versions"]["torch"] == torch.__version__
    assert prov["model"] == "gmm:ring8"
    assert prov["command"] == shlex.join(["sdekit", *map(str, args)])
    with np.load(out / "samples.npz", allow_pickle=False) as data:  # no pickle needed
        assert data["provenance"].shape == () and json.loads(data["provenance"].item()) == prov
    width, height = png_size(out / "samples.png")
    assert width > 400 and height > 200


def test_sample_never_silently_overwrites(tmp_path):
    out = tmp_path / "run"
    ok(sample(out, "--seed", "1"))
    before, first = (out / "samples.npz").read_bytes(), load_samples(out / "samples.npz")[0]
    assert_error(sample(out, "--seed", "2"), "already holds samples.npz and samples.png", "--overwrite")
    assert (out / "samples.npz").read_bytes() == before
    assert_error(sample(out, "-o", "snr=-1"), "must be > ")  # a bad option is named first
    (out / "samples.png").unlink()  # one file of an earlier run is enough to refuse
    assert_error(sample(out, "--seed", "2"), "already holds samples.npz from an earlier run")
    ok(sample(out, "--seed", "2", "--overwrite"))
    samples, prov = load_samples(out / "samples.npz")
    assert prov["seed"] == 2 and "--overwrite" in prov["command"]
    assert not np.allclose(samples, first) and (out / "samples.png").is_file()


def test_same_seed_same_samples_other_seed_other_samples(tmp_path):
    def draw(name, seed):
        ok(sample(tmp_path / name, "--seed", seed))
        return load_samples(tmp_path / name / "samples.npz")[0]

    a, b, c = draw("a", 7), draw("b", 7), draw("c", 8)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_seeds_make_each_item_depend_on_its_seed_only(tmp_path):
    def draw(seeds, *extra):
        out = tmp_path / f"{seeds}{''.join(extra)}"
        ok(run("sample", "--model", "gmm:ring8", "--steps", 30, "--seeds", seeds, "--out", out,
               "-o", "corrector=ald", *extra))
        samples, prov = load_samples(out / "samples.npz")
        assert prov["seeds"] == parse_seeds(seeds) and prov["seed"] is None and prov["sampler"] == "pc"
        return samples

    eight, first, last = draw("0-7"), draw("0-3"), draw("4,5,6,7")
    assert eight.shape == (8, 2) and len(np.unique(eight[:, 0])) == 8
    assert np.array_equal(first, eight[:4]) and np.array_equal(last, eight[4:])  # bitwise
    assert np.array_equal(draw("0-7", "--batch-size", "3"), eight)


def test_sample_json_reports_the_distance_to_exact_samples(tmp_path):
    report = json.loads(ok(sample(tmp_path / "j", "--json", "--sampler", "ddim")).stdout)
    assert report["samples"] == str(tmp_path / "j" / "samples.npz") and Path(report["plot"]).is_file()
    assert report["nfe"] == 20 and report["provenance"]["sampler"] == "pc" and report["wall_time_s"] > 0
    samples, _ = load_samples(report["samples"])
    gmm = named_mixture("ring8")
    exact, other = (gmm.sample(200, torch.Generator().manual_seed(s)) for s in EXACT_SEEDS)
    assert report["sliced_wasserstein"] == pytest.approx(sliced_wasserstein(torch.from_numpy(samples), exact))
    assert report["noise_floor"] == pytest.approx(sliced_wasserstein(other, exact))
    assert 0 < report["noise_floor"] < 0.5 and report["sliced_wasserstein"] < 1.0
    assert report["provenance"]["metrics"]["sliced_wasserstein"] == report["sliced_wasserstein"]
    mmd = mixture_mmd(torch.from_numpy(samples), gmm)
    assert (report["mmd2"], report["mmd2_se"]) == pytest.approx((mmd.mmd2, mmd.se))


def test_items_of_more_than_two_dimensions_and_float64(tmp_path):
    out = tmp_path / "d3"
    ok(run("sample", "--model", "gmm:random:dim=3,components=2", "-n", 50, "--steps", 10, "--sampler", "ddim",
           "--dtype", "float64", "--sde", "ve", "--out", out))
    samples, prov = load_samples(out / "samples.npz")
    assert samples.shape == (50, 3) and samples.dtype == np.float64 and prov["dtype"] == "float64"
    assert prov["sde"].startswith("VESDE") and png_size(out / "samples.png")[0] > 0


def test_progress_bar_on_request_only(tmp_path):
    shown = ok(sample(tmp_path / "p", "--progress"))
    assert "sampling (pc)" in shown.stderr
    hidden = ok(sample(tmp_path / "q"))  # stderr is not a terminal here
    assert "sampling" not in hidden.stderr


def test_writes_are_atomic_and_loading_needs_no_pickle(tmp_path):
    path = tmp_path / "samples.npz"
    save_samples(path, np.zeros((3, 2), np.float32), {"sampler": "pc", "seeds": [0, 1, 2]})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_write(path) as f:
            f.write(b"half a file")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["samples.npz"]
    samples, prov = load_samples(path)
    assert samples.shape == (3, 2) and prov == {"sampler": "pc", "seeds": [0, 1, 2]}
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(SdekitError, match="not an sdekit samples file"):
        load_samples(tmp_path / "other.npz")


# -- the installed console script ---------------------------------------------------------

def test_the_console_script_is_installed_and_exits_cleanly(tmp_path):
    script = shutil.which("sdekit", path=str(Path(sys.executable).parent)) or shutil.which("sdekit")
    assert script, "the sdekit console script is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDEKIT_")}
    listed = subprocess.run([script, "samplers", "list", "--json"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "pc" in {r["name"] for r in json.loads(listed.stdout)}
    failed = subprocess.run([script, "samplers", "show", "pcc"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.strip().splitlines() == [
        "Error: unknown sampler 'pcc'; did you mean 'pc'? (valid: " + ", ".join(
            sorted(r["name"] for r in json.loads(listed.stdout))) + ")"]


# -- guidance and controllable generation ------------------------------------------------

def test_class_conditional_sampling_matches_the_exact_class(tmp_path):
    report = json.loads(ok(sample(tmp_path / "c", "--json", "--sampler", "ddim", "--class", "3", "-n", "2000",
                                  "--steps", "300")).stdout)
    assert report["exact_class"] == 3 and report["provenance"]["guidance"]["class"] == 3
    assert report["sliced_wasserstein"] < 1.6 * report["noise_floor"]
    # against component 3 alone: within 4 SE of 0 (against the whole ring: ~200 SE off)
    assert abs(report["mmd2"]) < 4 * report["mmd2_se"]
    samples, _ = load_samples(report["samples"])
    angle = np.degrees(np.arctan2(samples[:, 1], samples[:, 0])) % 360
    assert np.mean(np.abs(angle - 135) < 22.5) > 0.99  # ring8's component 3 sits at 135 degrees


def test_classifier_guidance_at_scale_one_is_the_conditional(tmp_path):
    args = ("--json", "--sampler", "ddim", "--class", "3", "-n", "500", "--seeds", "0-499")
    plain = load_samples(json.loads(ok(sample(tmp_path / "p", *args)).stdout)["samples"])[0]
    guided = json.loads(ok(sample(tmp_path / "g", *args, "--guidance", "classifier")).stdout)
    assert guided["provenance"]["guidance"]["kind"] == "classifier"
    np.testing.assert_allclose(load_samples(guided["samples"])[0], plain, atol=1e-4)


GUIDANCE_ERRORS = {
    "cfg without convention": (["--class", "1", "--guidance", "cfg"], ["needs --guidance-convention: s"]),
    "guidance without class": (["--guidance", "classifier"], ["give it with --class K"]),
    "scale without guidance": (["--class", "1", "--guidance-scale", "2"], ["needs --guidance cfg or classifier"]),
    "class out of range": (["--class", "8"], ["--class 8 is out of range", "classes 0-7"]),
    "colorize a vector": (["--colorize", "IMG"], ["--colorize needs image items (C, H, W)"]),
    "half an inpainting": (["--image", "IMG"], ["needs both --image IMG and --inpaint MASK"]),
}


@pytest.mark.parametrize("case", list(GUIDANCE_ERRORS))
def test_guidance_and_constraint_errors_are_one_clear_message(case, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "img.png")
    args, fragments = GUIDANCE_ERRORS[case]
    args = [str(tmp_path / "img.png") if a == "IMG" else a for a in args]
    assert_error(sample(tmp_path / "out", *args), *fragments)
    assert not (tmp_path / "out").exists()


def _image_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[:, :2] = 255  # the left half is known
    Image.fromarray(image).save(tmp_path / "x.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(image.mean(-1).astype(np.uint8)).save(tmp_path / "gray.png")
    return image.transpose(2, 0, 1) / 127.5 - 1.0


def test_inpaint_and_colorize_from_png_files(tmp_path):
    image = _image_files(tmp_path)
    model = ("--model", "gmm:image:channels=3,size=4,components=8,seed=0", "--steps", "50", "-n", "16")
    out = ok(run("sample", *model, "--image", tmp_path / "x.png", "--inpaint", tmp_path / "mask.png",
                 "--out", tmp_path / "inp", "--json"))
    samples, prov = load_samples(json.loads(out.stdout)["samples"])
    assert samples.shape == (16, 3, 4, 4) and prov["constraint"].startswith("Inpaint(")
    np.testing.assert_allclose(samples[:, :, :, :2], np.broadcast_to(image[:, :, :2], (16, 3, 4, 2)), atol=1e-6)
    assert samples[:, :, :, 2:].std(0).mean() > 0.05  # the unknown half is generated, not copied
    out = ok(run("sample", *model, "--colorize", tmp_path / "gray.png", "--out", tmp_path / "col", "--json"))
    samples, _ = load_samples(json.loads(out.stdout)["samples"])
    gray = np.floor(((image + 1) * 127.5).mean(0)) / 127.5 - 1  # as PIL stored the gray PNG
    np.testing.assert_allclose(samples.mean(1), np.broadcast_to(gray, (16, 4, 4)), atol=1e-5)


def test_a_whole_sampler_cannot_take_a_constraint(tmp_path):
    _image_files(tmp_path)
    result = run("sample", "--model", "gmm:image:channels=3,size=4,components=8,seed=0", "--sampler", "ode",
                 "--image", tmp_path / "x.png", "--inpaint", tmp_path / "mask.png", "--out", tmp_path / "o")
    assert_error(result, "need 'pc' or a predictor or corrector", "'ode' is a whole sampler")
