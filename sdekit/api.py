"""``sdekit.sample``: one call from a score function to samples and their provenance."""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

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
    def adaptive(self) -> bool:
        """Whether the sampler chooses its own steps (then grid steps do not count its progress)."""
        return self.spec.adaptive

    @property
    def per_item(self) -> bool:
        """Whether, with per-item seeds, an item depends on its seed only (every composed part agrees)."""
        parts = [p for p in self.components.values() if p is not None]
        return self.spec.per_item and all(p[0].per_item for p in parts)

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


class Constraint(Protocol):
    """Known-part replacement inside the PC loop (inpainting, colorization; :mod:`sdekit.controllable`).

    ``project(sde, x, t, noise)`` returns ``x`` with its known part replaced by
    the known data diffused to time ``t`` (``m(t) y + s(t) z``, ``z = noise(x)``),
    or by its mean ``m(t) y`` when ``noise`` is None; ``finish(x)`` sets the
    known part to the data exactly. Both keep ``x``'s shape, device and dtype.
    """

    def project(self, sde: SDE, x: torch.Tensor, t: float, noise: Callable | None) -> torch.Tensor: ...

    def finish(self, x: torch.Tensor) -> torch.Tensor: ...


def sample(score_fn: Callable, sde: SDE, shape: Sequence[int], sampler: str = "pc", *,
           steps: int | None = None, schedule: str | None = None, t_min: float | None = None,
           seed: int = 0, seeds: Sequence[int] | None = None, batch_size: int | None = None,
           device: str | torch.device | None = "cpu", dtype: torch.dtype = torch.float32,
           cond: Mapping[str, Any] | None = None, constraint: Constraint | None = None,
           registry: Registry | None = None, progress: bool = False,
           callback: Callable | None = None, options: Mapping[str, Any] | None = None,
           **kw_options) -> SampleResult:
    """Draw ``shape[0]`` samples of item shape ``shape[1:]`` from the reverse of ``sde``.

    Args:
        score_fn: ``score_fn(x, t, **cond)`` (see :mod:`sdekit.score`).
        sampler: a registered sampler, predictor or corrector name.
        steps: grid steps (default: the sampler's ``recommended_steps``).
        schedule: a time-grid name from :mod:`sdekit.grids` (``karras:rho=5`` takes parameters;
            default: the sampler's ``recommended_schedule``).
        seed: seeds one generator for the whole batch; ``seeds`` instead gives
            each item its own generator, so an item depends only on its seed,
            whatever the batch, for samplers whose spec says ``per_item``
            (``provenance["per_item"]`` tells; not ``langevin``, whose step
            size is a batch mean, nor the adaptive ``ode``).
        batch_size: draw in chunks of at most this many items (memory). With
            ``seeds`` the samples equal one big batch's; with ``seed`` the chunks
            share one generator, so the samples depend on ``batch_size``.
        device: ``cpu``, ``cuda``, or ``auto``.
        cond: keyword arguments passed to every ``score_fn`` call (labels, context);
            tensors of length ``shape[0]`` are split with the batch.
        constraint: known-part replacement after every predictor and corrector
            step (:class:`Constraint`; needs ``pc`` or a predictor/corrector).
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
    if constraint is not None and not resolved.components:
        raise SdekitError(f"inpainting and colorization replace the known part after every predictor and "
                          f"corrector step, so they need 'pc' or a predictor or corrector; {sampler!r} is a "
                          f"whole sampler (predictors: {', '.join(registry.names('predictor'))})")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ShapeError(f"shape must be (batch, *item_shape) with positive sizes, got {shape}")
    n = shape[0]
    if batch_size is not None and int(batch_size) < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = n if batch_size is None else min(int(batch_size), n)
    device = resolve_device(device)
    steps = registry.get(sampler).recommended_steps if steps is None else steps
    schedule = registry.get(sampler).recommended_schedule if schedule is None else schedule
    grid = make_grid(sde, steps, schedule, t_min)
    if seeds is not None:
        if len(seeds) != n:
            raise ShapeError(f"got {len(seeds)} seeds for a batch of {n}")
        seeds = [int(s) for s in seeds]
    shared = None if seeds is not None else GeneratorNoise(torch.Generator(device=device).manual_seed(int(seed)))
    cond = dict(cond or {})

    nfe = 0
    chunks = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # an adaptive sampler reports accepted steps, not grid steps: no total
        total = None if resolved.adaptive else (len(grid) - 1) * len(chunks)
        bar = tqdm(total=total, desc=f"sampling ({resolved.spec.name})", unit="step", leave=False)

    parts = {role: None if p is None else _bind(p, constraint) for role, p in resolved.components.items()}
    outputs = []
    start = time.perf_counter()
    for lo, hi in chunks:
        noise = shared if seeds is None else PerItemNoise(seeds[lo:hi], device)
        chunk_cond = {k: _slice(v, lo, hi, n) for k, v in cond.items()}
        done = bar.n if bar is not None else 0

        def counted(x, t):
            nonlocal nfe
            nfe += 1
            return score_fn(x, t, **chunk_cond)

        def on_step(i, t, x):
            if bar is not None:
                bar.update(max(done + i + 1 - bar.n, 0))
            if callback is not None:
                callback(i, t, x)

        with torch.no_grad():
            x = sde.prior_sample(noise(torch.empty((hi - lo, *shape[1:]), device=device, dtype=dtype)))
            if constraint is not None:
                x = constraint.project(sde, x, float(grid[0]), noise)
            x = resolved.spec.fn(sde, counted, x, grid, options=resolved.options, noise=noise,
                                 callback=on_step, **parts)
            if constraint is not None:
                x = constraint.finish(x)
        outputs.append(x)
    x = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    if bar is not None:
        bar.close()
    provenance = {
        **resolved.describe(), "steps": int(steps), "schedule": schedule, "t_min": float(grid[-1]),
        "sde": repr(sde), "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
        "device": str(device), "seed": None if seeds is not None else int(seed),
        "seeds": seeds, "per_item": resolved.per_item, "batch_size": batch_size, "cond": sorted(cond),
        "constraint": None if constraint is None else repr(constraint), "nfe": nfe,
        "wall_time_s": wall, "versions": versions(),
    }
    return SampleResult(x, nfe, wall, provenance)


def run_on_grid(name: str, sde: SDE, score_fn: Callable, x: torch.Tensor, grid: torch.Tensor, *,
                registry: Registry | None = None, noise: Callable | None = None, **options) -> torch.Tensor:
    """Run one registered sampler, predictor or corrector from the state ``x`` on ``grid``.

    The low-level counterpart of :func:`sample`: no prior draw, no composition,
    no bookkeeping; a step function runs step by step over the grid. ``noise``
    is the noise source (``None`` for deterministic settings, which then never
    draw). Convergence studies start here from a given state on a given grid.
    """
    registry = registry if registry is not None else load_registry()
    spec = registry.get(name)
    opts = build_options(spec, options)
    if spec.kind == "sampler":
        return spec.fn(sde, score_fn, x, grid, options=opts, noise=noise)
    times = grid.tolist()
    for t_cur, t_next in zip(times[:-1], times[1:]):
        x, _ = spec.fn(sde, score_fn, x, t_cur, t_next, options=opts, noise=noise)
    return x


def _slice(value, lo: int, hi: int, n: int):
    """A chunk's share of a conditioning value: per-item tensors are split, others passed whole."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n and hi - lo < n:
        return value[lo:hi]
    return value


def _bind(part: tuple[SamplerSpec, Any], constraint: Constraint | None = None):
    spec, opts = part

    def step(sde, score_fn, x, t_cur, t_next, *, noise):
        x, x_mean = spec.fn(sde, score_fn, x, t_cur, t_next, options=opts, noise=noise)
        if constraint is not None:  # Song et al. 2021, appendix I: replace after every step
            x, x_mean = constraint.project(sde, x, t_next, noise), constraint.project(sde, x_mean, t_next, None)
        return x, x_mean

    step.spec = spec
    return step
