"""Versioned hooks: plugins written against API version 1 keep working as the host grows.

pluggy calls a hook implementation with only the arguments it names, so a
hookspec may gain arguments in a later API version without breaking plugins
written before: simulated here with a v2 spec in a fresh PluginManager (never
sdekit's own). The other direction is refused clearly: a spec asking for a
higher ``api_version`` than this sdekit's is rejected naming the plugin and
both versions, and a hook implementation naming an argument this sdekit's
hookspec lacks is reported as a broken plugin.
"""

import types

import pluggy
import pytest

from sdekit import hookspecs
from sdekit.errors import PluginError
from sdekit.hookspecs import hookimpl
from sdekit.registry import Registry, load_registry
from sdekit.samplers import API_VERSION, SamplerSpec

hookspec = pluggy.HookspecMarker("sdekit")


class HookspecsV2:
    """A later host: the same hook with an argument that version 1 did not have."""

    @hookspec
    def sdekit_register_samplers(self, register, api_version):
        """Register samplers; ``api_version`` is the host's (added in the simulated API version 2)."""


def v1_plugin():
    """A plugin written against API version 1: its hook names ``register`` only."""
    module = types.ModuleType("sdekit_v1_plugin")

    def const(sde, score_fn, x, grid, *, options, noise, callback=None):
        return x

    @hookimpl
    def sdekit_register_samplers(register):
        register(SamplerSpec(name="v1_const", fn=const, summary="a v1 plugin", stochastic=False))

    module.sdekit_register_samplers = sdekit_register_samplers
    return module


def v2_manager(*plugins):
    pm = pluggy.PluginManager("sdekit")
    pm.add_hookspecs(HookspecsV2)
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"plugin{i}")
    return pm


def test_a_v1_plugin_loads_when_the_hookspec_gains_an_argument():
    pm = v2_manager(v1_plugin())
    gathered = []
    pm.hook.sdekit_register_samplers(register=gathered.append, api_version=2)
    assert [s.name for s in gathered] == ["v1_const"]
    registry = Registry()  # and the host's validation accepts what it registered
    registry.add(gathered[0], "plugin0")
    assert registry.owner("v1_const") == "plugin0"


def test_the_built_in_samplers_are_v1_plugins_too():
    """Every built-in registers through the v1 hook, so a v2 host still loads all of them."""
    import importlib

    from sdekit.samplers import BUILTIN_MODULES

    pm = v2_manager(*(importlib.import_module(m) for m in BUILTIN_MODULES))
    gathered = []
    pm.hook.sdekit_register_samplers(register=gathered.append, api_version=2)
    assert sorted(s.name for s in gathered) == sorted(load_registry(autoload=False, strict=True).names())


def test_a_v2_plugin_sees_the_new_argument_in_a_v2_host():
    seen = []

    class V2Plugin:
        @hookimpl
        def sdekit_register_samplers(self, register, api_version):
            seen.append(api_version)

    v2_manager(V2Plugin(), v1_plugin()).hook.sdekit_register_samplers(register=lambda s: None, api_version=2)
    assert seen == [2]


def test_a_plugin_naming_an_argument_this_host_lacks_is_reported_broken(write_plugin, clean_env):
    path = write_plugin("needs_v2", """
        from sdekit.hookspecs import hookimpl

        @hookimpl
        def sdekit_register_samplers(register, api_version):
            pass
    """)
    reg = load_registry(plugins=[str(path)], autoload=False)
    info = next(p for p in reg.plugins if p.name == str(path))
    assert info.status == "broken" and "api_version" in info.error
    assert "ddim" in reg  # everything else keeps working


def test_a_spec_needing_a_newer_api_version_is_rejected_clearly():
    spec = SamplerSpec(name="from_the_future", fn=lambda *a, **k: None, summary="needs v2",
                       api_version=API_VERSION + 1)
    with pytest.raises(PluginError, match=rf"plugin 'future_plugin': sampler 'from_the_future' needs API version "
                                          rf"{API_VERSION + 1}; this sdekit has {API_VERSION}"):
        Registry().add(spec, "future_plugin")


def test_a_newer_api_version_through_a_plugin_is_broken_by_name_or_strict_error(write_plugin, clean_env):
    path = write_plugin("future", f"""
        from sdekit.hookspecs import hookimpl
        from sdekit.samplers import SamplerSpec

        @hookimpl
        def sdekit_register_samplers(register):
            register(SamplerSpec(name="future_const", fn=lambda *a, **k: None, summary="v2",
                                 api_version={API_VERSION + 1}))
    """)
    reg = load_registry(plugins=[str(path)], autoload=False)
    info = next(p for p in reg.plugins if p.name == str(path))
    assert info.status == "broken" and f"needs API version {API_VERSION + 1}" in info.error
    assert "future_const" not in reg
    with pytest.raises(PluginError, match=f"needs API version {API_VERSION + 1}; this sdekit has {API_VERSION}"):
        load_registry(plugins=[str(path)], autoload=False, strict=True)


def test_the_hookspec_documents_its_version():
    assert "Added in API version 1" in hookspecs.sdekit_register_samplers.__doc__
