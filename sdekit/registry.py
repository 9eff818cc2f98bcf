"""The plugin manager and the sampler registry it fills.

Nothing happens at import. :func:`load_registry` builds a fresh pluggy manager:
hook specs, then the built-in samplers, then entry points (group ``sdekit``),
then plugins named explicitly (``--plugin``, ``$SDEKIT_PLUGINS``): modules or
``.py`` files. Each plugin is loaded and asked for its samplers in its own
``try``; a broken plugin is recorded by name with its error and everything
else keeps working, unless ``strict`` (or ``$SDEKIT_STRICT_PLUGINS=1``)
re-raises, as CI should.

Environment:
    SDEKIT_PLUGINS                  extra plugins, comma-separated modules or .py paths
    SDEKIT_DISABLE_PLUGIN_AUTOLOAD  1: skip entry points
    SDEKIT_STRICT_PLUGINS           1: a broken plugin is an error
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError
from .samplers.base import API_VERSION, KINDS, NAME_RE, SamplerSpec

ENTRY_POINT_GROUP = "sdekit"


@dataclass
class PluginInfo:
    """One plugin as ``sdekit plugins`` shows it."""

    name: str
    origin: str  # builtin | entry point | file | module
    version: str = ""
    status: str = "ok"  # ok | broken | disabled
    error: str = ""
    samplers: list[str] = field(default_factory=list)


class Registry:
    """Sampler specs by name, and the plugins that provided them."""

    def __init__(self):
        self._specs: dict[str, SamplerSpec] = {}
        self._owner: dict[str, str] = {}
        self.plugins: list[PluginInfo] = []

    def names(self, kind: str | None = None) -> list[str]:
        return [n for n, s in self._specs.items() if kind is None or s.kind == kind]

    def __iter__(self):
        return iter(self._specs.values())

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def get(self, name: str, kind: str | None = None) -> SamplerSpec:
        spec = self._specs.get(name)
        if spec is None or (kind is not None and spec.kind != kind):
            raise UnknownNameError(kind or "sampler", name, self.names(kind))
        return spec

    def owner(self, name: str) -> str:
        return self._owner[name]

    def validate(self, spec: SamplerSpec, plugin: str) -> None:
        """Raise PluginError naming ``plugin`` when ``spec`` cannot be registered."""
        if not isinstance(spec, SamplerSpec):
            raise PluginError(f"plugin {plugin!r} registered {spec!r}, which is not a SamplerSpec")
        if not NAME_RE.match(spec.name):
            raise PluginError(f"plugin {plugin!r}: sampler name {spec.name!r} must be lower snake_case")
        if spec.kind not in KINDS:
            raise PluginError(f"plugin {plugin!r}: sampler {spec.name!r} has kind {spec.kind!r} "
                              f"(valid: {', '.join(KINDS)})")
        if spec.api_version > API_VERSION:
            raise PluginError(f"plugin {plugin!r}: sampler {spec.name!r} needs API version "
                              f"{spec.api_version}; this sdekit has {API_VERSION}")
        if spec.name in self._specs:
            raise PluginError(f"plugin {plugin!r}: sampler {spec.name!r} is already registered by "
                              f"{self._owner[spec.name]!r}")
        try:
            spec.options()
        except Exception as err:
            raise PluginError(f"plugin {plugin!r}: options of sampler {spec.name!r} must be a dataclass "
                              f"whose fields all have defaults ({err})") from None

    def add(self, spec: SamplerSpec, plugin: str) -> None:
        self.validate(spec, plugin)
        self._specs[spec.name] = spec
        self._owner[spec.name] = plugin


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _import_plugin(ref: str):
    """A module from a dotted name or a path to a .py file."""
    if ref.endswith(".py") or os.sep in ref:
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no plugin file at {path}")
        # the path's hash keeps two plugin.py files in different folders apart in sys.modules
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        mod_name = f"sdekit_file_plugin_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]
            raise
        return module, "file"
    return importlib.import_module(ref), "module"


def _short_error(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def load_registry(plugins: Iterable[str] = (), *, autoload: bool | None = None,
                  only: Iterable[str] | None = None, disable: Iterable[str] = (),
                  strict: bool | None = None, trace: bool = False) -> Registry:
    """Build a plugin manager and return the filled registry.

    Args:
        plugins: extra plugins (modules or .py files), after ``$SDEKIT_PLUGINS``.
        autoload: load entry points (default: unless ``$SDEKIT_DISABLE_PLUGIN_AUTOLOAD``).
        only: load only these entry-point plugins (built-ins always load).
        disable: plugin names not to load (a built-in module name disables that sampler).
        strict: re-raise the first broken plugin (default: ``$SDEKIT_STRICT_PLUGINS``).
        trace: print every hook call to stderr.
    """
    from . import __version__
    from .samplers import BUILTIN_MODULES

    autoload = not _env_flag("SDEKIT_DISABLE_PLUGIN_AUTOLOAD") if autoload is None else autoload
    strict = _env_flag("SDEKIT_STRICT_PLUGINS") if strict is None else strict
    disable = set(disable)
    only = set(only) if only is not None else None
    env_plugins = [p.strip() for p in os.environ.get("SDEKIT_PLUGINS", "").split(",") if p.strip()]

    pm = pluggy.PluginManager("sdekit")
    pm.add_hookspecs(hookspecs)
    if trace:
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    registry = Registry()

    def broken(info: PluginInfo, err: BaseException) -> None:
        info.status, info.error = "broken", _short_error(err)
        if strict:
            raise PluginError(f"plugin {info.name!r} ({info.origin}) is broken: {info.error}") from err

    def add_plugin(name: str, origin: str, load, version: str = "") -> None:
        info = PluginInfo(name, origin, version)
        registry.plugins.append(info)
        if name in disable:
            info.status = "disabled"
            return
        try:
            module = load()
            if pm.get_plugin(name) is not None or pm.is_registered(module):
                raise PluginError(f"a plugin named {name!r} (or the same module) is already loaded")
            pm.register(module, name=name)
        except Exception as err:
            broken(info, err)

    for mod in BUILTIN_MODULES:
        add_plugin(mod, "builtin", lambda mod=mod: importlib.import_module(mod), __version__)
    if autoload:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if only is not None and ep.name not in only:
                continue
            version = ep.dist.version if ep.dist is not None else ""
            add_plugin(ep.name, "entry point", ep.load, version)
    for ref in [*env_plugins, *plugins]:
        origin = "file" if ref.endswith(".py") or os.sep in ref else "module"
        add_plugin(ref, origin, lambda ref=ref: _import_plugin(ref)[0])

    for info in registry.plugins:
        if info.status != "ok":
            continue
        module = pm.get_plugin(info.name)
        if not info.version:
            info.version = str(getattr(module, "__version__", ""))
        try:
            _check_hooks(pm, info.name, module)
            gathered: list[SamplerSpec] = []
            others = [p for p in pm.get_plugins() if p is not module]
            caller = pm.subset_hook_caller("sdekit_register_samplers", remove_plugins=others)
            caller(register=gathered.append)
            for spec in gathered:  # all or nothing per plugin
                registry.validate(spec, info.name)
            if len({s.name for s in gathered}) != len(gathered):
                raise PluginError(f"plugin {info.name!r} registered the same sampler name twice")
            for spec in gathered:
                registry.add(spec, info.name)
            info.samplers = [s.name for s in gathered]
        except Exception as err:
            broken(info, err)
    return registry


def _check_hooks(pm: pluggy.PluginManager, plugin_name: str, module) -> None:
    """A hook implementation without a spec is a misspelled hook, and a function
    named like a hook but not marked ``@hookimpl`` would be silently ignored: say which."""
    known = [n for n in dir(hookspecs) if n.startswith("sdekit_")]
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name)
        if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
            continue
        if any(impl.plugin_name == plugin_name for impl in caller.get_hookimpls()):
            raise UnknownNameError("hook", name, known)
    for name in dir(module):
        fn = getattr(module, name, None)
        if (name.startswith("sdekit_") and inspect.isfunction(fn)
                and getattr(fn, "__module__", None) == getattr(module, "__name__", None)
                and pm.parse_hookimpl_opts(module, name) is None):
            raise PluginError(f"plugin {plugin_name!r}: function {name!r} is named like a hook but not marked "
                              f"as one; decorate it with @hookimpl (from sdekit.hookspecs import hookimpl)")
