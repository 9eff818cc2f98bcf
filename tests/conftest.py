"""Shared fixtures: one registry per session (built fresh, never global), exact sample sets."""

import pytest
import torch

from sdekit.metrics import sliced_wasserstein
from sdekit.oracle import named_mixture
from sdekit.registry import load_registry

#: mixtures of the quality tests and the sample sizes used with them
MIXTURES = {"ring8": 4000, "random:dim=16,components=8,seed=0": 2000}


@pytest.fixture(scope="session")
def registry():
    return load_registry(autoload=False, strict=True)


@pytest.fixture(scope="session")
def exact():
    """exact(spec) -> (mixture, exact reference samples, noise floor).

    The noise floor is the sliced Wasserstein distance between two independent
    exact sample sets of the reference's size, averaged over three pairs.
    """
    cache = {}

    def get(spec):
        if spec not in cache:
            gmm, n = named_mixture(spec), MIXTURES.get(spec, 2000)
            draw = lambda seed: gmm.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float32)  # noqa: E731
            floor = sum(sliced_wasserstein(draw(100 + 2 * i), draw(101 + 2 * i)) for i in range(3)) / 3
            cache[spec] = (gmm, draw(0), floor)
        return cache[spec]

    return get
