"""What a sampler is: a spec, a frozen options dataclass, and a function.

Three kinds of functions share the registry:

``kind="sampler"`` — a whole sampler::

    fn(sde, score_fn, x, grid, *, options, noise, callback=None, **components) -> x

``kind="predictor"`` and ``kind="corrector"`` — one step, composed by ``pc``::

    fn(sde, score_fn, x, t_cur, t_next, *, options, noise) -> (x, x_mean)

``x`` is the initial state (B, ...) (a prior draw), ``grid`` a float64 CPU tensor
of times decreasing from T to t_min (N + 1 points, N steps), ``t_cur > t_next``
two neighbours of it as Python floats, ``noise(like)`` the only source of
randomness (standard normal shaped like ``like``), ``callback(i, t, x)`` called
after step i reached time t. A predictor moves x from t_cur to t_next; a
corrector then improves x at t_next, knowing the step came from t_cur (the
order of Song et al. 2021, Algorithm 1). Both return the new state and its
noise-free mean, so the last step's mean is a free denoised output.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch

from ..config import _check_bounds, bounds_text, option  # noqa: F401 (option: re-exported for plugins)
from ..errors import OptionError, UnknownNameError
from ..score import denoise as tweedie
from ..utils import batch_times

API_VERSION = 1
KINDS = ("sampler", "predictor", "corrector")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class NoOptions:
    """A sampler without options."""


DENOISE_CHOICES = ("none", "mean", "tweedie")
DENOISE_HELP = ("final output: 'none' keeps the last step's noise, 'mean' returns the last step's "
                "noise-free mean (free), 'tweedie' adds one evaluation for E[x0 | x_t_min]")


@dataclass(frozen=True)
class SamplerSpec:
    """What a plugin registers. Everything the CLI, docs and tests know about a sampler."""

    name: str
    fn: Callable
    summary: str
    kind: Literal["sampler", "predictor", "corrector"] = "sampler"
    options: type = NoOptions
    stochastic: bool = True
    #: score evaluations per grid step; None when it depends on the options or the solver
    evals_per_step: int | None = 1
    #: chooses its own steps between the grid's ends (an adaptive ODE solver): progress
    #: is then counted in accepted steps, with no known total
    adaptive: bool = False
    #: with per-item seeds, an item's output depends on its seed only, not on the batch
    #: it is drawn in (bitwise on the CPU), with the default options
    per_item: bool = True
    #: SDE methods the sampler needs beyond drift/diffusion/marginal/prior
    requires: tuple[str, ...] = ()
    #: grid steps at which the docs and conformance tests hold the sampler to its quality bound
    recommended_steps: int = 1000
    #: the time grid (:mod:`sdekit.grids`) used when the caller names none
    recommended_schedule: str = "uniform"
    #: option name -> kind of registered step it names (``pc``: predictor, corrector)
    components: Mapping[str, str] = field(default_factory=dict)
    api_version: int = API_VERSION

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options))

    def describe(self) -> dict:
        """A JSON-ready description (``sdekit samplers show``)."""
        return {
            "name": self.name, "summary": self.summary, "kind": self.kind,
            "stochastic": self.stochastic, "evals_per_step": self.evals_per_step,
            "adaptive": self.adaptive, "per_item": self.per_item,
            "requires": list(self.requires), "recommended_steps": self.recommended_steps,
            "recommended_schedule": self.recommended_schedule,
            "api_version": self.api_version,
            "options": [describe_option(f) for f in self.option_fields()],
        }


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _field_type(f: dataclasses.Field, owner: type):
    hints = typing.get_type_hints(owner)
    return hints.get(f.name, type(f.default))


def describe_option(f: dataclasses.Field) -> dict:
    meta = f.metadata
    return {
        "name": f.name, "type": _type_name(type(f.default)), "default": f.default,
        "help": meta.get("help", ""), "bounds": bounds_text(meta),
        "choices": list(meta["choices"]) if meta.get("choices") else None,
    }


def _convert(value: Any, tp: type, where: str):
    """Convert a CLI string (or a Python value) to the option's type."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise OptionError(f"{where} must be a bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise OptionError(f"{where} must be an int, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise OptionError(f"{where} must be an int, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise OptionError(f"{where} must be a float, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise OptionError(f"{where} must be a float, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise OptionError(f"{where} must be a string, got {value!r}")
        return value
    return value


def build_options(spec: SamplerSpec, raw: Mapping[str, Any]):
    """Validate ``raw`` (strings from the CLI or Python values) into ``spec.options``.

    Unknown keys raise :class:`UnknownNameError` listing the valid options.
    """
    fields = {f.name: f for f in spec.option_fields()}
    for key in raw:
        if key not in fields:
            raise UnknownNameError(f"option for sampler {spec.name!r}:", key, fields)
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        where = f"option {name!r} of sampler {spec.name!r}"
        value = _convert(raw[name], _field_type(f, spec.options), where)
        _check_bounds(value, f.metadata, where)
        values[name] = value
    return spec.options(**values)


# -- noise sources --------------------------------------------------------------------

class GeneratorNoise:
    """Standard normal noise for the whole batch from one generator (fast)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)


class PerItemNoise:
    """One generator per item: item i's noise depends on its seed only, not on the batch."""

    def __init__(self, seeds, device: torch.device | str = "cpu"):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"noise for {like.shape[0]} items requested from {len(self.generators)} seeds")
        return torch.stack([torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype)
                            for g in self.generators])


# -- small numerics shared by samplers -------------------------------------------------

def finish(sde, score_fn, x: torch.Tensor, x_mean: torch.Tensor, t_last: float, denoise: str) -> torch.Tensor:
    """Apply the ``denoise`` option at the end of a grid (see DENOISE_HELP)."""
    if denoise == "mean":
        return x_mean
    if denoise == "tweedie":
        t = batch_times(t_last, x)
        return tweedie(score_fn(x, t), x, t, sde)
    return x
