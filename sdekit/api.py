"""``sdekit.sample``: one call from a score function to samples and their provenance."""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from .errors import OptionError, SdekitError, ShapeError, UnknownNameError
from .grids import make_grid
from .registry import Registry, load_registry
from .samplers.base import GeneratorNoise, PerItemNoise, SamplerSpec, build_options
from .sde import SDE


@dataclass
class SampleResult:
    """Samples (B, ...) on the requested device, and what produced them."""

    samples: torch.Tensor
    nfe: int
    wall_time: float
    provenance: dict


@dataclass(frozen=True)
class ResolvedSampler:
    """A sampler with validated options, and the steps it composes (``pc``)."""

    spec: SamplerSpec
    options: Any
    components: Mapping[str, tuple[SamplerSpec, Any] | None]

    def describe(self) -> dict:
        out = {"sampler": self.spec.name, "options": dataclasses.asdict(self.options)}
        for role, part in self.components.items():
            out[role] = None if part is None else {"name": part[0].name, "options": dataclasses.asdict(part[1])}
        return out

    @property
    def stochastic(self) -> bool:
        parts = [p for p in self.components.values() if p is not None]
        return self.spec.stochastic or any(p[0].stochastic for p in parts)


def resolve_sampler(name: str, options: Mapping[str, Any], registry: Registry) -> ResolvedSampler:
    """Look ``name`` up and split ``options`` between it and the steps it composes.

    A predictor or corrector named alone runs inside ``pc`` with ``none`` for the
    other part. Options go to the sampler if it has them, else to the composed
    step that does; ``predictor.NAME`` / ``corrector.NAME`` keys are explicit.
    """
    spec = registry.get(name)
    options = dict(options)
    if spec.kind != "sampler":
        other = "corrector" if spec.kind == "predictor" else "predictor"
        options.setdefault(spec.kind, spec.name)
        options.setdefault(other, "none")
        spec = registry.get("pc")
    own = {f.name for f in spec.option_fields()}
    top = {k: v for k, v in options.items() if k in own}
    rest = {k: v for k, v in options.items() if k not in own}
    top_opts = build_options(spec, top)

    parts: dict[str, tuple[SamplerSpec, Any] | None] = {}
    for role, kind in spec.components.items():
        part_name = getattr(top_opts, role)
        parts[role] = None if part_name == "none" else (registry.get(part_name, kind), None)
    claimed: dict[str, dict] = {role: {} for role in parts}
    for key, value in rest.items():
        role, dot, opt = key.partition(".")
        if dot and role in parts and parts[role] is not None:
            claimed[role][opt] = value
            continue
        owners = [r for r, p in parts.items() if p is not None and opt_in(p[0], key)]
        if not owners:
            valid = own | {f"{r}.{f.name}" for r, p in parts.items() if p for f in p[0].option_fields()}
            valid |= {f.name for p in parts.values() if p for f in p[0].option_fields()}
            raise UnknownNameError(f"option for sampler {name!r}:", key, valid)
        if len(owners) > 1:
            raise OptionError(f"option {key!r} belongs to {' and '.join(owners)}; "
                              f"write {owners[0]}.{key}=... to choose")
        claimed[owners[0]][key] = value
    for role, part in parts.items():
        if part is not None:
            parts[role] = (part[0], build_options(part[0], claimed[role]))
    return ResolvedSampler(spec, top_opts, parts)


def opt_in(spec: SamplerSpec, key: str) -> bool:
    return any(f.name == key for f in spec.option_fields())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None) picks CUDA when available, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SdekitError("--device cuda was asked for, but torch sees no CUDA device (use auto or cpu)")
    return device


def versions() -> dict:
    from . import __version__

    return {"sdekit": __version__, "torch": torch.__version__, "python": platform.python_version()}


def sample(score_fn: Callable, sde: SDE, shape: Sequence[int], sampler: str = "pc", *,
           steps: int | None = None, schedule: str = "uniform", t_min: float | None = None,
           seed: int = 0, seeds: Sequence[int] | None = None, device: str | torch.device | None = "cpu",
           dtype: torch.dtype = torch.float32, cond: Mapping[str, Any] | None = None,
           registry: Registry | None = None, progress: bool = False,
           callback: Callable | None = None, options: Mapping[str, Any] | None = None,
           **kw_options) -> SampleResult:
    """Draw ``shape[0]`` samples of item shape ``shape[1:]`` from the reverse of ``sde``.

    Args:
        score_fn: ``score_fn(x, t, **cond)`` (see :mod:`sdekit.score`).
        sampler: a registered sampler, predictor or corrector name.
        steps: grid steps (default: the sampler's ``recommended_steps``).
        schedule: a time-grid name from :mod:`sdekit.grids`.
        seed: seeds one generator for the whole batch; ``seeds`` instead gives
            each item its own generator, so an item depends only on its seed.
        device: ``cpu``, ``cuda``, or ``auto``.
        cond: keyword arguments passed to every ``score_fn`` call (labels, context).
        options, **kw_options: sampler options (validated; unknown ones are an
            error). The mapping takes any option name, also one that shadows an
            argument of this function.

    The same arguments give the same samples.
    """
    registry = registry if registry is not None else load_registry()
    resolved = resolve_sampler(sampler, {**(options or {}), **kw_options}, registry)
    for spec in (resolved.spec, *(p[0] for p in resolved.components.values() if p is not None)):
        for need in spec.requires:
            if not callable(getattr(sde, need, None)):
                raise SdekitError(f"sampler {spec.name!r} needs the SDE method {need!r}, "
                                  f"which {type(sde).__name__} does not have")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ShapeError(f"shape must be (batch, *item_shape) with positive sizes, got {shape}")
    device = resolve_device(device)
    steps = registry.get(sampler).recommended_steps if steps is None else steps
    grid = make_grid(sde, steps, schedule, t_min)
    if seeds is not None:
        if len(seeds) != shape[0]:
            raise ShapeError(f"got {len(seeds)} seeds for a batch of {shape[0]}")
        noise = PerItemNoise(seeds, device)
    else:
        noise = GeneratorNoise(torch.Generator(device=device).manual_seed(int(seed)))

    nfe = 0
    cond = dict(cond or {})

    def counted(x, t):
        nonlocal nfe
        nfe += 1
        return score_fn(x, t, **cond)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        # an adaptive sampler (evals_per_step None) reports accepted steps, not grid steps
        total = None if resolved.spec.evals_per_step is None else len(grid) - 1
        bar = tqdm(total=total, desc=f"sampling ({resolved.spec.name})", unit="step", leave=False)

    def on_step(i, t, x):
        if bar is not None:
            bar.update(max(i + 1 - bar.n, 0))
        if callback is not None:
            callback(i, t, x)

    start = time.perf_counter()
    with torch.no_grad():
        x = sde.prior_sample(noise(torch.empty(shape, device=device, dtype=dtype)))
        parts = {role: None if p is None else _bind(p) for role, p in resolved.components.items()}
        x = resolved.spec.fn(sde, counted, x, grid, options=resolved.options, noise=noise,
                             callback=on_step, **parts)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    if bar is not None:
        bar.close()
    provenance = {
        **resolved.describe(), "steps": int(steps), "schedule": schedule, "t_min": float(grid[-1]),
        "sde": repr(sde), "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
        "device": str(device), "seed": None if seeds is not None else int(seed),
        "seeds": None if seeds is None else [int(s) for s in seeds], "nfe": nfe,
        "wall_time_s": wall, "versions": versions(),
    }
    return SampleResult(x, nfe, wall, provenance)


def _bind(part: tuple[SamplerSpec, Any]):
    spec, opts = part

    def step(sde, score_fn, x, t_cur, t_next, *, noise):
        return spec.fn(sde, score_fn, x, t_cur, t_next, options=opts, noise=noise)

    step.spec = spec
    return step
