"""The plugin manager: built-ins load through the hook, plugins from files, modules and entry
points work, broken ones are isolated and named, and the controls (strict, disable, autoload,
trace, environment) do what they say. Every test builds its own registry."""

import re
import sys

import pytest
import torch

import sdekit
from sdekit.errors import PluginError, UnknownNameError
from sdekit.oracle import named_mixture
from sdekit.registry import load_registry
from sdekit.samplers import BUILTIN_MODULES
from sdekit.samplers.base import NAME_RE

from .conftest import GOOD_PLUGIN

pytestmark = pytest.mark.usefixtures("clean_env")

#: the classic samplers and their kinds (more built-ins may exist)
CLASSIC = {"ancestral": "predictor", "ddim": "predictor", "euler_maruyama": "predictor",
           "reverse_diffusion": "predictor", "langevin": "corrector", "ald": "corrector", "pc": "sampler"}


def plugin(reg, name):
    (info,) = [i for i in reg.plugins if i.name == str(name)]
    return info


def draw(reg, sampler="plug_const", **options):
    gmm, sde = named_mixture("ring8"), sdekit.VPSDE()
    return sdekit.sample(gmm.score_fn(sde), sde, (6, 2), sampler, steps=3, registry=reg, **options)


def test_builtins_all_load_through_the_hook_with_their_names_and_kinds():
    reg = load_registry(autoload=False, strict=True)
    builtins = [i for i in reg.plugins if i.origin == "builtin"]
    assert [i.name for i in builtins] == list(BUILTIN_MODULES)
    assert all(i.status == "ok" and i.error == "" and i.version == sdekit.__version__ for i in builtins)
    for name, kind in CLASSIC.items():
        assert reg.get(name).kind == kind
        assert reg.owner(name) == f"sdekit.samplers.{name}"
        assert name in plugin(reg, f"sdekit.samplers.{name}").samplers
    assert all(NAME_RE.match(n) and reg.owner(n) in BUILTIN_MODULES for n in reg.names())
    assert set(reg.names("corrector")) >= {"langevin", "ald"}
    with pytest.raises(UnknownNameError, match=r"unknown predictor 'pc'"):
        reg.get("pc", kind="predictor")
    with pytest.raises(UnknownNameError, match=r"did you mean 'ancestral'\?"):
        reg.get("ancestrl")


def test_a_file_plugin_gives_a_sampler_that_sdekit_sample_uses(write_plugin):
    path = write_plugin("good_plugin")
    reg = load_registry([str(path)], autoload=False, strict=True)
    info = plugin(reg, path)
    assert (info.origin, info.status, info.version, info.samplers) == ("file", "ok", "0.7", ["plug_const"])
    assert reg.owner("plug_const") == str(path)
    result = draw(reg, value="2.5")  # a string, as from the command line
    assert torch.all(result.samples == 2.5)
    assert result.nfe == 3  # one score call per step: the plugin's function ran
    assert result.provenance["sampler"] == "plug_const" and result.provenance["options"] == {"value": 2.5}
    with pytest.raises(sdekit.OptionError, match="must be >= 0.0"):
        draw(reg, value=-1)
    # registries are independent: a fresh one without the plugin does not know it
    assert "plug_const" not in load_registry(autoload=False)


def test_a_module_plugin_on_sys_path_is_loaded_by_name(write_plugin, monkeypatch):
    path = write_plugin("sdekit_mod_plugin", sampler="mod_const")
    monkeypatch.syspath_prepend(str(path.parent))
    try:
        reg = load_registry(["sdekit_mod_plugin"], autoload=False, strict=True)
    finally:
        sys.modules.pop("sdekit_mod_plugin", None)
    assert plugin(reg, "sdekit_mod_plugin").origin == "module"
    assert reg.owner("mod_const") == "sdekit_mod_plugin"


def test_plugin_files_of_the_same_name_in_two_folders_stay_apart(tmp_path, write_plugin):
    paths = []
    for folder, alias, sampler in (("one", "Number = float", "one_const"), ("two", "Amount = float", "two_const")):
        (tmp_path / folder).mkdir()
        type_name = alias.split()[0]
        source = ("from __future__ import annotations\n" + alias + "\n"
                  + GOOD_PLUGIN.replace("SAMPLER", sampler).replace("value: float", f"value: {type_name}"))
        paths.append(write_plugin(f"{folder}/plugin", source))
    reg = load_registry([str(p) for p in paths], autoload=False, strict=True)
    assert torch.all(draw(reg, "one_const", value="2").samples == 2)  # type hints resolve in their own module
    assert torch.all(draw(reg, "two_const", value="3").samples == 3)


def spec_plugin(*registrations):
    body = "\n".join(f"    register({r})" for r in registrations)
    return f"""
from sdekit.hookspecs import hookimpl
from sdekit.samplers import SamplerSpec

def fn(*args, **kwargs):
    raise AssertionError("never called")

@hookimpl
def sdekit_register_samplers(register):
{body}
"""


BROKEN = {
    "raises_at_import": ("import sdekit\nraise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
    "syntax_error": ("def oops(:\n", "SyntaxError"),
    "hook_raises": ("""
        from sdekit.hookspecs import hookimpl

        @hookimpl
        def sdekit_register_samplers(register):
            raise ValueError("the hook exploded")
        """, "ValueError: the hook exploded"),
    "bad_name": (spec_plugin("SamplerSpec(name='Bad-Name', fn=fn, summary='x')"),
                 "sampler name 'Bad-Name' must be lower snake_case"),
    "duplicate_of_builtin": (spec_plugin("SamplerSpec(name='pc', fn=fn, summary='x')"),
                             "sampler 'pc' is already registered by 'sdekit.samplers.pc'"),
    "bad_kind": (spec_plugin("SamplerSpec(name='fine_name', fn=fn, summary='x', kind='stepper')"),
                 "has kind 'stepper'"),
    "not_a_spec": (spec_plugin("'pc'"), "which is not a SamplerSpec"),
    # all or nothing: the valid spec before the invalid one is not kept either
    "half_valid": (spec_plugin("SamplerSpec(name='half_ok', fn=fn, summary='x')",
                               "SamplerSpec(name='half_ok', fn=fn, summary='y')"), "the same sampler name twice"),
    "misspelled_hook": ("""
        from sdekit.hookspecs import hookimpl

        @hookimpl
        def sdekit_register_sampler(register):
            pass
        """, "unknown hook 'sdekit_register_sampler'; did you mean 'sdekit_register_samplers'?"),
    "unmarked_hook": ("""
        def sdekit_register_samplers(register):
            pass
        """, "'sdekit_register_samplers' is named like a hook but not marked as one"),
    "wrong_hook_argument": ("""
        from sdekit.hookspecs import hookimpl

        @hookimpl
        def sdekit_register_samplers(registr):
            pass
        """, "registr"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plugin_is_reported_by_name_and_everything_else_works(case, write_plugin):
    source, message = BROKEN[case]
    bad, good = write_plugin(f"broken_{case}", source), write_plugin("good_neighbour")
    reg = load_registry([str(bad), str(good)], autoload=False)
    info = plugin(reg, bad)
    assert info.status == "broken" and info.samplers == []
    assert message in info.error
    assert "half_ok" not in reg and "fine_name" not in reg
    # the others are untouched: every built-in, the working plugin after the broken one
    assert all(i.status == "ok" for i in reg.plugins if i.name != str(bad))
    assert reg.owner("pc") == "sdekit.samplers.pc"
    assert torch.all(draw(reg, value=3).samples == 3)
    assert draw(reg, "ddim").samples.shape == (6, 2)
    # strict mode makes it an error that names the plugin
    with pytest.raises(PluginError, match=re.escape(f"plugin {str(bad)!r} (file) is broken")) as err:
        load_registry([str(good), str(bad)], autoload=False, strict=True)
    assert message in str(err.value)


def test_missing_plugins_are_broken_not_fatal(tmp_path):
    missing = tmp_path / "nowhere.py"
    reg = load_registry([str(missing), "sdekit_no_such_module"], autoload=False)
    assert "no plugin file at" in plugin(reg, missing).error
    assert "ModuleNotFoundError" in plugin(reg, "sdekit_no_such_module").error
    assert "pc" in reg


def test_the_same_plugin_twice_is_loaded_once(write_plugin):
    path = write_plugin("twice")
    reg = load_registry([str(path), str(path)], autoload=False)
    first, second = [i for i in reg.plugins if i.name == str(path)]
    assert first.status == "ok" and second.status == "broken" and "already loaded" in second.error
    assert reg.owner("plug_const") == str(path)


def test_strict_from_the_environment(write_plugin, monkeypatch):
    bad = write_plugin("strict_env", "raise RuntimeError('nope')\n")
    assert plugin(load_registry([str(bad)], autoload=False), bad).status == "broken"
    monkeypatch.setenv("SDEKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="strict_env.py"):
        load_registry([str(bad)], autoload=False)
    assert "pc" in load_registry([], autoload=False)  # strict with nothing broken is fine


def test_disable_skips_a_plugin_or_a_builtin(write_plugin):
    path = write_plugin("to_disable")
    reg = load_registry([str(path)], autoload=False, disable=[str(path), "sdekit.samplers.ald"])
    assert plugin(reg, path).status == "disabled" and "plug_const" not in reg
    assert plugin(reg, "sdekit.samplers.ald").status == "disabled" and "ald" not in reg
    assert "langevin" in reg and "pc" in reg


def test_plugins_from_the_environment_come_before_the_argument(write_plugin, monkeypatch):
    env_a, env_b = write_plugin("env_a", sampler="env_a_const"), write_plugin("env_b", sampler="env_b_const")
    arg = write_plugin("arg_c", sampler="arg_c_const")
    monkeypatch.setenv("SDEKIT_PLUGINS", f"{env_a}, {env_b},")
    reg = load_registry([str(arg)], autoload=False, strict=True)
    extra = [i.name for i in reg.plugins if i.origin == "file"]
    assert extra == [str(env_a), str(env_b), str(arg)]
    assert {"env_a_const", "env_b_const", "arg_c_const"} <= set(reg.names())


def test_entry_points_autoload_unless_disabled(entry_point_plugin, monkeypatch):
    reg = load_registry()
    info = plugin(reg, entry_point_plugin)
    assert (info.origin, info.version, info.status, info.samplers) == ("entry point", "1.2.3", "ok", ["demo_const"])
    assert torch.all(draw(reg, "demo_const", value=1.5).samples == 1.5)
    assert "demo_const" not in load_registry(autoload=False)
    assert "demo_const" not in load_registry(only=["something_else"])
    assert "demo_const" in load_registry(only=[entry_point_plugin])
    assert plugin(load_registry(disable=[entry_point_plugin]), entry_point_plugin).status == "disabled"
    monkeypatch.setenv("SDEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = load_registry()
    assert "demo_const" not in reg and entry_point_plugin not in [i.name for i in reg.plugins]
    assert "demo_const" in load_registry(autoload=True)  # the argument wins over the environment


def test_trace_prints_the_hook_calls(capsys):
    load_registry(autoload=False, trace=True)
    assert "sdekit_register_samplers" in capsys.readouterr().err
    load_registry(autoload=False)
    assert capsys.readouterr().err == ""
