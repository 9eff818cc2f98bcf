"""sdekit.sample: reproducible, validated, provenance recorded."""

import dataclasses

import pytest
import torch

import sdekit
from sdekit.errors import OptionError, SdekitError, ShapeError, UnknownNameError
from sdekit.oracle import named_mixture
from sdekit.registry import Registry
from sdekit.samplers import SamplerSpec, option
from sdekit.sde import VESDE, VPSDE

GMM, SDE = named_mixture("ring8"), VPSDE()


def run(registry, sampler="pc", **kw):
    kw.setdefault("steps", 30)
    return sdekit.sample(GMM.score_fn(SDE), SDE, (16, 2), sampler, registry=registry, **kw)


def test_same_seed_same_samples_other_seed_other_samples(registry):
    a, b, c = run(registry, seed=1), run(registry, seed=1), run(registry, seed=2)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)


def test_provenance_and_counts(registry):
    r = run(registry, "pc", snr=0.2)
    p = r.provenance
    assert p["sampler"] == "pc" and p["predictor"]["name"] == "reverse_diffusion"
    assert p["corrector"] == {"name": "langevin", "options": {"snr": 0.2, "n_steps": 1}}
    assert p["steps"] == 30 and r.nfe == p["nfe"] == 60 and p["seed"] == 0
    assert set(p["versions"]) == {"sdekit", "torch", "python"} and r.wall_time > 0


def test_default_steps_are_the_named_samplers(registry):
    assert run(registry, "ddim", steps=None).provenance["steps"] == registry.get("ddim").recommended_steps


@pytest.mark.parametrize("name", ["ancestral", "ddim", "ald"])
def test_per_item_seeds_do_not_depend_on_the_batch(registry, name):
    small = sdekit.sample(GMM.score_fn(SDE), SDE, (4, 2), name, steps=20, seeds=range(4), registry=registry)
    big = sdekit.sample(GMM.score_fn(SDE), SDE, (8, 2), name, steps=20, seeds=range(8), registry=registry)
    assert torch.equal(small.samples, big.samples[:4])


def test_unknown_sampler_and_options_name_what_is_valid(registry):
    with pytest.raises(UnknownNameError, match=r"unknown sampler 'ancestrl'; did you mean 'ancestral'\?"):
        run(registry, "ancestrl")
    with pytest.raises(UnknownNameError, match=r"did you mean 'snr'.*valid: .*n_steps"):
        run(registry, "pc", snrr=0.1)
    with pytest.raises(OptionError, match=r"option 'eta' of sampler 'ddim' must be >= 0.0 and <= 1.0, got 2.0"):
        run(registry, "ddim", eta=2.0)
    with pytest.raises(OptionError, match="must be a float, got 'abc'"):
        run(registry, "ddim", eta="abc")
    with pytest.raises(OptionError, match="must be an int"):
        run(registry, "pc", n_steps=1.5)
    with pytest.raises(OptionError, match="must be one of posterior, step, got 'posteror'; did you mean 'posterior'"):
        run(registry, "ancestral", variance="posteror")
    with pytest.raises(UnknownNameError, match="unknown predictor 'langevin'"):
        run(registry, "pc", predictor="langevin")
    with pytest.raises(UnknownNameError, match="unknown schedule"):
        run(registry, schedule="cosine")
    with pytest.raises(OptionError, match="steps must be a positive integer"):
        run(registry, steps=0)


def test_cli_strings_are_converted(registry):
    r = run(registry, "ddim", eta="0.5")
    assert r.provenance["predictor"]["options"]["eta"] == 0.5
    assert run(registry, "pc", n_steps="2").provenance["corrector"]["options"]["n_steps"] == 2


def test_bad_shapes_and_seeds(registry):
    with pytest.raises(ShapeError, match=r"shape must be \(batch, \*item_shape\)"):
        sdekit.sample(GMM.score_fn(SDE), SDE, (16,), registry=registry)
    with pytest.raises(ShapeError, match="got 3 seeds for a batch of 16"):
        run(registry, seeds=[0, 1, 2])
    with pytest.raises(ShapeError, match=r"expected items of shape \(2,\)"):
        sdekit.sample(GMM.score_fn(SDE), SDE, (4, 3), "ddim", steps=2, registry=registry)


def test_ambiguous_option_and_missing_sde_ability():
    @dataclasses.dataclass(frozen=True)
    class Opts:
        gain: float = option(1.0, "a gain")

    def step(sde, score_fn, x, t_cur, t_next, *, options, noise):
        return x, x

    reg = Registry()
    for spec in (SamplerSpec("p", step, "p", kind="predictor", options=Opts),
                 SamplerSpec("c", step, "c", kind="corrector", options=Opts),
                 SamplerSpec("q", step, "q", kind="predictor", requires=("warp",))):
        reg.add(spec, "test")
    from sdekit.samplers.pc import SPEC as PC

    reg.add(PC, "test")
    kw = dict(steps=2, registry=reg, predictor="p", corrector="c")
    with pytest.raises(OptionError, match=r"'gain' belongs to predictor and corrector; write predictor.gain"):
        sdekit.sample(GMM.score_fn(SDE), SDE, (2, 2), "pc", gain=2.0, **kw)
    r = sdekit.sample(GMM.score_fn(SDE), SDE, (2, 2), "pc", **{"corrector.gain": 2.0}, **kw)
    assert r.provenance["corrector"]["options"]["gain"] == 2.0
    with pytest.raises(SdekitError, match="sampler 'q' needs the SDE method 'warp', which VPSDE does not have"):
        sdekit.sample(GMM.score_fn(SDE), SDE, (2, 2), "q", steps=2, registry=reg)


def test_float64_and_conditioning_pass_through(registry):
    seen = {}

    def score(x, t, y=None):
        seen["y"], seen["dtype"] = y, (x.dtype, t.dtype)
        return GMM.score(x, t, VESDE(), y=y)

    y = torch.zeros(16, dtype=torch.long)
    r = sdekit.sample(score, VESDE(), (16, 2), "ddim", steps=5, dtype=torch.float64, cond={"y": y},
                      registry=registry)
    assert r.samples.dtype == torch.float64 and seen["dtype"] == (torch.float64, torch.float64)
    assert seen["y"] is y


def test_coarse_ddpm_discretization_is_a_clear_error(registry):
    with pytest.raises(OptionError, match=r"needs beta\(t\) dt < 1.*use more steps.*more than 20"):
        run(registry, "ancestral", steps=10)
    assert torch.isfinite(run(registry, "ddim", steps=5).samples).all()


def test_cuda_request_without_cuda_is_a_clear_error(registry):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SdekitError, match="torch sees no CUDA device"):
        run(registry, device="cuda")
    assert run(registry, device="auto").samples.device.type == "cpu"
