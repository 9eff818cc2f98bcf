"""The conformance kit (sdekit.testing) passes every registered sampler and fails broken ones.

Every name in the default registry (built-ins and installed plugins, such as
plugins/sdekit-teaching and plugins/sdekit-unipc) passes :func:`check_sampler`.
Then each check is shown to fail: small deliberately broken samplers, each a
copy of one correct sampler (``KIT_GOOD``, DDIM with eta = 1, which passes
everything) with one thing wrong, fail exactly the check that should catch it,
with a message that says what is wrong.
"""

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from sdekit.registry import load_registry
from sdekit.samplers import SamplerSpec, option
from sdekit.samplers.ddim import DDIMOptions, ddim_step
from sdekit.testing import (QUALITY_BOUND, check_dtype_device, check_options, check_per_item, check_quality,
                            check_sampler, check_seeds, check_shapes)

REGISTRY = load_registry(strict=True)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_registered_sampler_conforms(name):
    check_sampler(name, REGISTRY, quality=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_registered_sampler_reaches_its_quality_bound(name):
    ratio = check_quality(name, REGISTRY)
    print(f"CONFORMANCE {name} ratio={ratio:.2f}")


def test_the_example_plugins_are_installed_and_checked():
    """make test installs plugins/*; their samplers are then part of the registry checked above."""
    assert REGISTRY.owner("teaching_euler") == "teaching" and REGISTRY.owner("unipc") == "unipc"


# -- a correct sampler, and broken copies of it -------------------------------------------

@dataclass(frozen=True)
class EtaOptions:
    eta: float = option(1.0, "DDIM's eta", ge=0.0, le=1.0)


def good(sde, score_fn, x, grid, *, options, noise, callback=None):
    times = grid.tolist()
    for t_cur, t_next in zip(times[:-1], times[1:]):
        x, _ = ddim_step(sde, score_fn, x, t_cur, t_next, options=DDIMOptions(options.eta), noise=noise)
    return x


KIT_GOOD = SamplerSpec(name="kit_good", fn=good, options=EtaOptions, summary="DDIM, eta = 1 (test)",
                       stochastic=True, recommended_steps=100)


def broken(name, fn=None, **changes):
    return dataclasses.replace(KIT_GOOD, name=name, fn=fn or KIT_GOOD.fn, **changes)


def global_rng_noise(sde, score_fn, x, grid, *, options, noise, callback=None):
    return good(sde, score_fn, x, grid, options=options, noise=torch.randn_like)


def drawn_then_ignored(sde, score_fn, x, grid, *, options, noise, callback=None):
    noise(x)
    return good(sde, score_fn, x, grid, options=EtaOptions(0.0), noise=noise)


def to_float32(sde, score_fn, x, grid, **kw):
    return good(sde, score_fn, x, grid, **kw).float()


def flattened(sde, score_fn, x, grid, **kw):
    return good(sde, score_fn, x, grid, **kw).reshape(len(x), -1)


def biased(sde, score_fn, x, grid, **kw):
    return good(sde, score_fn, x, grid, **kw) + 0.3


def batch_coupled(sde, score_fn, x, grid, **kw):
    out = good(sde, score_fn, x, grid, **kw)
    return out - 1e-3 * out.mean(dim=0, keepdim=True)


@dataclass(frozen=True)
class NoDefault:
    eta: float


@dataclass(frozen=True)
class BadDefault:
    eta: float = option(-1.0, "a default outside its own bounds", ge=0.0, le=1.0)


def test_the_correct_sampler_passes_every_check():
    check_sampler(KIT_GOOD)
    assert check_per_item(KIT_GOOD) is True


@pytest.mark.parametrize("check, spec, message", [
    (check_seeds, broken("kit_global_rng", global_rng_noise), "the same seed gave different samples"),
    (check_seeds, broken("kit_says_deterministic", stochastic=False), "says stochastic=False"),
    (check_seeds, broken("kit_ignores_its_noise", drawn_then_ignored), "does not depend on it"),
    (check_dtype_device, broken("kit_float32", to_float32), "with float64 in returned float32"),
    (check_shapes, broken("kit_flattens", flattened), r"returned shape \(1, 2\) for input shape \(1, 1, 2\)"),
    (check_per_item, broken("kit_coupled", batch_coupled), "says per_item=True"),
    (check_quality, broken("kit_biased", biased), "x the noise floor"),
    (check_options, broken("kit_no_default", options=NoDefault), "option 'eta' has no default"),
    (check_options, broken("kit_bad_default", options=BadDefault), "must be >= 0.0 and <= 1.0, got -1.0"),
], ids=lambda v: v.name if isinstance(v, SamplerSpec) else getattr(v, "__name__", ""))
def test_each_check_fails_a_sampler_broken_its_way(check, spec, message):
    with pytest.raises(AssertionError, match=message) as info:
        check(spec)
    assert repr(spec.name) in str(info.value)
    with pytest.raises(AssertionError, match=message):  # and check_sampler runs that check
        check_sampler(spec, quality=check is check_quality)


def test_the_quality_bound_is_tests_test_quality_bound():
    from . import test_quality

    assert QUALITY_BOUND == test_quality.FACTOR


def test_an_unknown_sampler_is_an_assertion_listing_the_registered_ones():
    with pytest.raises(AssertionError, match="no sampler named 'no_such' .*ddim"):
        check_sampler("no_such", REGISTRY)


def test_options_that_break_bounds_are_named_in_the_error():
    """check_options drives resolve_sampler: a sampler whose option escaped validation would fail."""
    check_options("heun", REGISTRY)  # s_tmax's default is inf, bounded below only
    check_options("ddim", REGISTRY)  # a predictor: options go in as predictor.eta


def test_the_fixtures(sdekit_registry, sdekit_conformance):
    assert "unipc" in sdekit_registry
    sdekit_conformance("ddim", quality=False)


# -- the docs' conformance-kit section runs as written -------------------------------------

def conformance_blocks():
    text = DOCS.read_text()
    section = text[text.index("## Checking your sampler: the conformance kit"):]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_docs_conformance_section_runs_as_written():
    blocks = conformance_blocks()
    assert blocks
    for i, src in enumerate(blocks):
        namespace = {}
        exec(compile(src, f"docs/plugins.md (conformance block {i})", "exec"), namespace)
        for name, fn in namespace.items():
            if name.startswith("test_") and callable(fn):
                fn()
