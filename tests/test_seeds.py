"""A sample depends only on its seed, not on the batch it is drawn in.

With per-item seeds, samples 0-7 drawn in a batch of 8 equal samples 0-7 drawn
in a batch of 64, bitwise on the CPU, for every registered sampler whose spec
says ``per_item`` (initial noise, step noise and, for ``sde``, the Brownian
motion all come from the item's own generator). The exact oracle's score is
computed item by item (no batch-size-dependent kernels), so any difference is
the sampler's.
"""

import pytest
import torch

import sdekit
from sdekit.oracle import named_mixture
from sdekit.registry import load_registry
from sdekit.sde import SubVPSDE, VESDE, VPSDE

GMM = named_mixture("random:dim=16,components=8,seed=0")
REGISTRY = load_registry(autoload=False, strict=True)
STEPS = 30  # > 20: VP's DDPM discretization needs beta dt < 1


def draw(name, sde, seeds, **kw):
    spec = REGISTRY.get(name)
    extra = {"corrector": name} if spec.kind == "corrector" and name != "ald" else {}
    sampler = "pc" if extra else name
    return sdekit.sample(GMM.score_fn(sde), sde, (len(seeds), GMM.dim), sampler, steps=STEPS, seeds=seeds,
                         registry=REGISTRY, **extra, **kw).samples


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("name", REGISTRY.names())
def test_a_sample_depends_on_its_seed_not_on_the_batch(name, sde):
    spec = REGISTRY.get(name)
    # a corrector that couples items is checked here in pc with a per-item corrector instead
    kw = {"corrector": "ald"} if name == "pc" else {}
    small = draw(name, sde, list(range(8)), **kw)
    large = draw(name, sde, list(range(64)), **kw)
    assert torch.isfinite(large).all()
    if spec.per_item:
        assert torch.equal(small, large[:8])
    elif spec.adaptive:  # the batch shares one step-size sequence, so only the tolerance holds
        assert not torch.equal(small, large[:8])
        torch.testing.assert_close(small, large[:8], rtol=0, atol=5e-3)
    else:  # declared coupled (langevin's batch-mean step size): it is
        assert not torch.equal(small, large[:8])
    # and the seeds do matter: a different seed gives a different sample
    assert not torch.equal(draw(name, sde, [8] + list(range(1, 8)), **kw)[0], small[0])


def test_per_item_is_declared_and_recorded():
    """A composed sampler is per-item only if every part is; provenance says which."""
    assert not REGISTRY.get("langevin").per_item and not REGISTRY.get("ode").per_item
    score = GMM.score_fn(VESDE())
    run = lambda **kw: sdekit.sample(score, VESDE(), (2, GMM.dim), "pc", steps=3, seeds=[0, 1],  # noqa: E731
                                     registry=REGISTRY, **kw).provenance["per_item"]
    assert run() is False and run(corrector="ald") is True and run(corrector="none") is True


def test_chunked_drawing_equals_one_batch():
    seeds = list(range(20))
    whole = draw("pc", SubVPSDE(), seeds, corrector="ald")
    chunked = sdekit.sample(GMM.score_fn(SubVPSDE()), SubVPSDE(), (20, GMM.dim), "pc", steps=STEPS, seeds=seeds,
                            batch_size=6, registry=REGISTRY, corrector="ald")
    assert torch.equal(whole, chunked.samples)
    assert chunked.provenance["batch_size"] == 6 and chunked.nfe == 4 * 2 * STEPS


def test_chunked_conditioning_is_split_with_the_batch():
    """Per-item labels follow their items into the chunks."""
    labels = torch.arange(12) % GMM.num_components
    kw = dict(steps=STEPS, seeds=list(range(12)), registry=REGISTRY, cond={"y": labels})
    whole = sdekit.sample(GMM.score_fn(VESDE()), VESDE(), (12, GMM.dim), "ddim", **kw).samples
    chunked = sdekit.sample(GMM.score_fn(VESDE()), VESDE(), (12, GMM.dim), "ddim", batch_size=5, **kw).samples
    assert torch.equal(whole, chunked)


def test_bad_batch_size_is_a_clear_error():
    with pytest.raises(sdekit.errors.OptionError, match="batch_size must be a positive integer"):
        draw("ddim", VESDE(), [0, 1], batch_size=0)
