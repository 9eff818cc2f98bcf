"""sdekit-teaching passes sdekit's conformance kit, through the installed entry point.

``pytest_plugins`` brings the kit's fixtures: ``sdekit_registry`` (the default
registry, entry points included, strict) and ``sdekit_conformance``.
"""

import torch

import sdekit
from sdekit.oracle import named_mixture
from sdekit.testing import check_quality, check_sampler

pytest_plugins = ["sdekit.testing"]


def test_registered_through_its_entry_point(sdekit_registry):
    assert sdekit_registry.owner("teaching_euler") == "teaching"
    assert not sdekit_registry.get("teaching_euler").stochastic


def test_conforms(sdekit_conformance):
    sdekit_conformance("teaching_euler", quality=False)


def test_reaches_the_quality_bound_on_vp_and_ve(sdekit_registry):
    for sde in (sdekit.VPSDE(), sdekit.VESDE()):
        check_quality("teaching_euler", sdekit_registry, sde=sde)


def test_one_evaluation_per_step(sdekit_registry):
    gmm, sde = named_mixture("ring8"), sdekit.VPSDE()
    result = sdekit.sample(gmm.score_fn(sde), sde, (8, 2), "teaching_euler", steps=17, registry=sdekit_registry)
    assert result.nfe == 17 and torch.isfinite(result.samples).all()


def test_plain_functions_work_without_the_fixtures():
    check_sampler("teaching_euler", quality=False)
