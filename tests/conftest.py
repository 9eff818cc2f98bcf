"""Shared fixtures: one registry per session (built fresh, never global), exact sample sets,
plugin files and an entry-point plugin."""

import sys
import textwrap

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


# -- plugins (test_registry.py, test_cli.py) ------------------------------------------

#: a working plugin: the deterministic sampler 'plug_const', one score call per step,
#: every coordinate of the output equal to its option 'value'
GOOD_PLUGIN = '''
from dataclasses import dataclass

import torch

from sdekit.hookspecs import hookimpl
from sdekit.samplers import SamplerSpec, option

__version__ = "0.7"


@dataclass(frozen=True)
class ConstOptions:
    value: float = option(1.0, "the value of every coordinate", ge=0.0)


def const(sde, score_fn, x, grid, *, options, noise, callback=None):
    times = grid.tolist()
    for i, t in enumerate(times[:-1]):
        score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        if callback is not None:
            callback(i, times[i + 1], x)
    return torch.full_like(x, options.value)


@hookimpl
def sdekit_register_samplers(register):
    register(SamplerSpec(name="SAMPLER", fn=const, summary="a constant (test plugin)", options=ConstOptions,
                         stochastic=False, recommended_steps=4))
'''


@pytest.fixture
def clean_env(monkeypatch):
    """No SDEKIT_* plugin settings from the caller's environment."""
    for name in ("SDEKIT_PLUGINS", "SDEKIT_STRICT_PLUGINS", "SDEKIT_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def write_plugin(tmp_path):
    """write_plugin(stem, source=None, sampler="plug_const") -> path of a .py plugin in tmp_path.

    Without ``source``, the working plugin GOOD_PLUGIN registering ``sampler``.
    The modules the registry imports from these files are forgotten afterwards.
    """
    before = set(sys.modules)

    def write(stem, source=None, sampler="plug_const"):
        path = tmp_path / f"{stem}.py"
        path.write_text(textwrap.dedent(source) if source is not None else GOOD_PLUGIN.replace("SAMPLER", sampler))
        return path

    yield write
    for name in set(sys.modules) - before:
        if name.startswith("sdekit_file_plugin_"):
            del sys.modules[name]


@pytest.fixture
def entry_point_plugin(tmp_path, monkeypatch):
    """An installed distribution sdekit-demo 1.2.3 (on sys.path for this test only) whose
    entry point 'demo' (group sdekit) registers the sampler 'demo_const'. Returns 'demo'."""
    site = tmp_path / "site"
    (site / "sdekit_demo-1.2.3.dist-info").mkdir(parents=True)
    (site / "sdekit_demo.py").write_text(GOOD_PLUGIN.replace("SAMPLER", "demo_const"))
    (site / "sdekit_demo-1.2.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sdekit-demo\nVersion: 1.2.3\n")
    (site / "sdekit_demo-1.2.3.dist-info" / "entry_points.txt").write_text("[sdekit]\ndemo = sdekit_demo\n")
    monkeypatch.syspath_prepend(str(site))
    yield "demo"
    sys.modules.pop("sdekit_demo", None)
