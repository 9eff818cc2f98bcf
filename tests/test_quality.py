"""Every registered sampler reaches its quality bound against the exact oracle.

At its recommended step count, with the exact score of a 2-D and a 16-D
Gaussian mixture, on VP and VE, a sampler's samples must lie within
``FACTOR`` times the noise floor (sliced Wasserstein distance between two
independent exact sample sets of the same size) of exact samples. Predictors
and ``ald`` (NCSN) run alone; a corrector is checked where it is meant to
run, inside ``pc`` after the default predictor. The measured ratios are in
docs/samplers.md.
"""

import pytest

import sdekit
from sdekit.metrics import sliced_wasserstein
from sdekit.registry import load_registry
from sdekit.sde import VESDE, VPSDE

from .conftest import MIXTURES

FACTOR = 1.6
NAMES = load_registry(autoload=False, strict=True).names()


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(MIXTURES), ids=["2d", "16d"])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("name", NAMES)
def test_sampler_reaches_the_noise_floor(name, sde, spec, registry, exact):
    gmm, ref, floor = exact(spec)
    spec_ = registry.get(name)
    if spec_.kind == "corrector" and name != "ald":
        result = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, "pc", corrector=name,
                               steps=spec_.recommended_steps, seed=7, registry=registry)
    else:
        result = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, name, seed=7, registry=registry)
    ratio = sliced_wasserstein(result.samples, ref) / floor
    print(f"QUALITY {name} {type(sde).__name__} {spec} steps={result.provenance['steps']} "
          f"nfe={result.nfe} ratio={ratio:.2f}")
    assert ratio < FACTOR
