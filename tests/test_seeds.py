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
    small = draw(name, sde, list(range(8)))
    large = draw(name, sde, list(range(64)))
    assert torch.isfinite(large).all()
    if REGISTRY.get(name).per_item:
        assert torch.equal(small, large[:8])
    else:  # adaptive ODE: the batch shares one step-size sequence, so only the tolerance holds
        assert not torch.equal(small, large[:8])
        torch.testing.assert_close(small, large[:8], rtol=0, atol=5e-3)
    # and the seeds do matter: a different seed gives a different sample
    assert not torch.equal(draw(name, sde, [8] + list(range(1, 8)))[0], small[0])


def test_chunked_drawing_equals_one_batch():
    seeds = list(range(20))
    whole = draw("pc", SubVPSDE(), seeds)
    chunked = sdekit.sample(GMM.score_fn(SubVPSDE()), SubVPSDE(), (20, GMM.dim), "pc", steps=STEPS, seeds=seeds,
                            batch_size=6, registry=REGISTRY)
    assert torch.equal(whole, chunked.samples)
    assert chunked.provenance["batch_size"] == 6 and chunked.nfe == 4 * 2 * STEPS


def test_chunked_conditioning_is_split_with_the_batch():
    """Per-item labels follow their items into the chunks."""
    labels = torch.arange(12) % GMM.num_components
    kw = dict(steps=STEPS, seeds=list(range(12)), registry=REGISTRY, cond={"y": labels})
    whole = sdekit.sample(GMM.score_fn(VESDE()), VESDE(), (12, GMM.dim), "ddim", **kw).samples
    chunked = sdekit.sample(GMM.score_fn(VESDE()), VESDE(), (12, GMM.dim), "ddim", batch_size=5, **kw).samples
    assert torch.equal(whole, chunked)


def test_langevin_batch_norm_couples_items():
    """The paper's batch-mean step size makes an item depend on the batch; the default does not."""
    small = draw("langevin", VESDE(), list(range(8)), step_norm="batch")
    large = draw("langevin", VESDE(), list(range(64)), step_norm="batch")
    assert not torch.equal(small, large[:8])


def test_bad_batch_size_is_a_clear_error():
    with pytest.raises(sdekit.errors.OptionError, match="batch_size must be a positive integer"):
        draw("ddim", VESDE(), [0, 1], batch_size=0)
