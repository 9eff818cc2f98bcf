"""A conformance kit for samplers: the checks every registered sampler must pass.

Plugin authors run it in their own test suites::

    from sdekit.testing import check_sampler

    def test_my_sampler_conforms():
        check_sampler("my_sampler")          # by name, from the default registry

:func:`check_sampler` runs every check below and raises :class:`AssertionError`
naming the sampler and what is wrong. Each check is a public function too, with
the same arguments: ``sampler`` is a registered name or a
:class:`~sdekit.samplers.SamplerSpec` (checked in a fresh registry of the
built-ins, so a spec can be checked before it is packaged), ``registry`` a
:class:`~sdekit.registry.Registry` (default: :func:`~sdekit.registry.load_registry`,
entry points included), ``sde`` the SDE to sample (default :class:`~sdekit.sde.VPSDE`).

==========================  =====================================================================
:func:`check_options`       every option has a default; the defaults pass validation; an unknown
                            option, an out-of-bounds value, a value not among the choices and a
                            value of the wrong type are rejected with sdekit errors naming it
:func:`check_seeds`         the same seed gives bitwise the same samples (whatever torch's global
                            RNG holds); another seed gives other samples; from the same prior
                            draw a deterministic spec ignores the step noise, and a stochastic one
                            that draws step noise depends on it
:func:`check_dtype_device`  float32 and float64 in, the same dtype and device out (CUDA too when
                            torch sees it), finite
:func:`check_shapes`        batch size 1 and item shapes (3,), (1, 2), (2, 3, 5): output shape =
                            input shape, finite
:func:`check_per_item`      when the resolved sampler is ``per_item``: item i of a batch of 8
                            equals item i of a batch of 3 with the same per-item seeds, bitwise
:func:`check_quality`       at its ``recommended_steps`` and ``recommended_schedule``, the sliced
                            Wasserstein distance to exact samples of the ``ring8`` mixture is at
                            most ``QUALITY_BOUND`` (1.6) times the noise floor
==========================  =====================================================================

A predictor or corrector is sampled as :func:`sdekit.sample` runs it when named
alone (inside ``pc`` with ``none`` for the other part), except in
:func:`check_quality`, where a corrector runs where it is meant to: inside
``pc`` after ``pc``'s default predictor.

With pytest, ``pytest_plugins = ["sdekit.testing"]`` (in a test module or the
root ``conftest.py``) also provides the fixtures ``sdekit_registry`` (the
default registry, strict: a broken plugin fails the test) and
``sdekit_conformance`` (:func:`check_sampler` bound to that registry).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from .api import ResolvedSampler, _bind, resolve_sampler, sample
from .errors import OptionError, PluginError, SdekitError, UnknownNameError
from .grids import make_grid
from .metrics import sliced_wasserstein
from .oracle import GaussianMixture, named_mixture
from .registry import Registry, load_registry
from .samplers.base import GeneratorNoise, SamplerSpec
from .sde import SDE, VPSDE

__all__ = ["QUALITY_BOUND", "STEPS", "check_dtype_device", "check_options", "check_per_item", "check_quality",
           "check_sampler", "check_seeds", "check_shapes", "noise_floor"]

#: the quality bound, in units of the noise floor (as tests/test_quality.py)
QUALITY_BOUND = 1.6
#: grid steps of the checks other than quality (> 20: VP's DDPM discretization needs beta dt < 1)
STEPS = 30
#: item shapes of :func:`check_shapes`, each with the batch sizes it is drawn in
SHAPES = (((3,), (1,)), ((1, 2), (1, 2)), ((2, 3, 5), (1, 3)))
_BAD_NAME = "conformance_no_such_option"


# -- helpers ---------------------------------------------------------------------------

def _target(sampler: str | SamplerSpec, registry: Registry | None) -> tuple[SamplerSpec, Registry]:
    """The spec under test and a registry that holds it."""
    if isinstance(sampler, SamplerSpec):
        _check_defaults(sampler)
        reg = load_registry(autoload=False, strict=True)
        try:
            reg.add(sampler, "sdekit.testing")
        except PluginError as err:
            raise AssertionError(f"sampler {sampler.name!r} cannot be registered: {err}") from None
        return sampler, reg
    reg = registry if registry is not None else load_registry()
    if sampler not in reg:
        raise AssertionError(f"no sampler named {sampler!r} in the registry (registered: {', '.join(reg.names())})")
    return reg.get(sampler), reg


def _resolve(spec: SamplerSpec, registry: Registry, **options) -> ResolvedSampler:
    try:
        return resolve_sampler(spec.name, options, registry)
    except SdekitError as err:
        raise AssertionError(f"sampler {spec.name!r} does not resolve with options {options}: {err}") from None


def _mixture(item_shape: tuple[int, ...], seed: int = 0) -> GaussianMixture:
    """A two-component mixture of items of any shape (exact score for the shape checks)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(2, math.prod(item_shape), generator=g, dtype=torch.float64)
    return GaussianMixture(torch.ones(2), means, torch.full((2,), 0.5), item_shape=item_shape)


def _draw(spec: SamplerSpec, registry: Registry, sde: SDE, gmm: GaussianMixture, shape, **kw) -> torch.Tensor:
    try:
        return sample(gmm.score_fn(sde), sde, shape, spec.name, registry=registry,
                      **{"steps": STEPS, **kw}).samples
    except AssertionError:
        raise
    except Exception as err:
        raise AssertionError(f"sampler {spec.name!r} failed to sample shape {tuple(shape)} "
                             f"({', '.join(f'{k}={v}' for k, v in kw.items())}): "
                             f"{type(err).__name__}: {err}") from err


def _run_from(resolved: ResolvedSampler, sde: SDE, score_fn: Callable, x: torch.Tensor, grid: torch.Tensor,
              noise: Callable) -> torch.Tensor:
    """Run the resolved sampler from the state ``x`` as :func:`sdekit.sample` does, with a given noise source."""
    parts = {role: None if p is None else _bind(p) for role, p in resolved.components.items()}
    with torch.no_grad():
        return resolved.spec.fn(sde, score_fn, x, grid, options=resolved.options, noise=noise, callback=None,
                                **parts)


class _CountingNoise:
    """A seeded noise source that counts its draws."""

    def __init__(self, seed: int, device: torch.device):
        self._noise = GeneratorNoise(torch.Generator(device=device).manual_seed(seed))
        self.calls = 0

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self._noise(like)


def _check_defaults(spec: SamplerSpec) -> None:
    if not dataclasses.is_dataclass(spec.options):
        raise AssertionError(f"sampler {spec.name!r}: options must be a frozen dataclass, got {spec.options!r}")
    for f in dataclasses.fields(spec.options):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise AssertionError(f"sampler {spec.name!r}: option {f.name!r} has no default "
                                 f"(declare it with option(default, help, ...))")


def _expect_rejected(spec: SamplerSpec, registry: Registry, key: str, value, error: type, what: str) -> None:
    option_name = key.rpartition(".")[2]
    try:
        resolve_sampler(spec.name, {key: value}, registry)
    except error as err:
        if option_name not in str(err):
            raise AssertionError(f"sampler {spec.name!r}: {what} ({option_name}={value!r}) was rejected, but the "
                                 f"message does not name the option: {err}") from None
        return
    except Exception as err:
        raise AssertionError(f"sampler {spec.name!r}: {what} ({option_name}={value!r}) raised "
                             f"{type(err).__name__}, not {error.__name__}: {err}") from None
    raise AssertionError(f"sampler {spec.name!r}: {what} ({option_name}={value!r}) was accepted")


def _out_of_bounds(meta) -> list[tuple[object, str]]:
    """Values that break each declared bound, with what they break."""
    bad = []
    for key, shift in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
        bound = meta.get(key)
        if bound is not None:
            bad.append((bound + shift, f"a value breaking the bound {key} {bound}"))
    return bad


# -- the checks -----------------------------------------------------------------------

def check_options(sampler: str | SamplerSpec, registry: Registry | None = None) -> None:
    """The sampler respects its declared options.

    Every option field has a default; ``resolve_sampler`` accepts no options
    and every default given explicitly; it rejects an unknown option
    (:class:`~sdekit.errors.UnknownNameError`), and, for each option, a value
    out of each declared bound, a value not among its choices and a value of
    the wrong type (:class:`~sdekit.errors.OptionError`), each message naming
    the option. Options of a predictor or corrector are passed as
    ``predictor.NAME`` / ``corrector.NAME``, as ``pc`` runs them.
    """
    spec, reg = _target(sampler, registry)
    _check_defaults(spec)
    prefix = f"{spec.kind}." if spec.kind in ("predictor", "corrector") else ""
    _resolve(spec, reg)
    defaults = {f"{prefix}{f.name}": getattr(spec.options(), f.name) for f in spec.option_fields()}
    _resolve(spec, reg, **defaults)
    _expect_rejected(spec, reg, _BAD_NAME, 1, UnknownNameError, "an unknown option")
    for f in spec.option_fields():
        key, default = f"{prefix}{f.name}", getattr(spec.options(), f.name)
        for value, what in _out_of_bounds(f.metadata):
            _expect_rejected(spec, reg, key, value, OptionError, what)
        if f.metadata.get("choices"):
            _expect_rejected(spec, reg, key, "conformance-not-a-choice", OptionError, "a value not among the choices")
        if isinstance(default, (bool, int, float)):
            _expect_rejected(spec, reg, key, "conformance-not-a-number", OptionError, "a value of the wrong type")


def check_seeds(sampler: str | SamplerSpec, registry: Registry | None = None, *, sde: SDE | None = None) -> None:
    """The sampler reproduces under a seed.

    Through :func:`sdekit.sample`: seed 0 twice gives bitwise the same samples,
    even with torch's global RNG seeded differently between the runs (all
    randomness must come from the noise source); seed 1 gives other samples.
    From one prior draw with two different step-noise sources: a spec with
    ``stochastic=False`` gives bitwise the same output; a stochastic one gives
    a different output if it drew step noise, the same if it drew none (as
    ``ddim`` with ``eta=0``).
    """
    spec, reg = _target(sampler, registry)
    sde = sde if sde is not None else VPSDE()
    gmm = named_mixture("ring8")
    runs = []
    for global_seed in (1234, 5678):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(global_seed)
            runs.append(_draw(spec, reg, sde, gmm, (16, 2), seed=0))
    if not torch.equal(runs[0], runs[1]):
        raise AssertionError(f"sampler {spec.name!r}: the same seed gave different samples; draw all randomness "
                             f"from the noise source `noise(like)` (not torch.randn / the global RNG)")
    if torch.equal(runs[0], _draw(spec, reg, sde, gmm, (16, 2), seed=1)):
        raise AssertionError(f"sampler {spec.name!r}: seeds 0 and 1 gave identical samples; the output ignores "
                             f"the prior draw and the noise")

    resolved = _resolve(spec, reg)
    grid = make_grid(sde, STEPS, spec.recommended_schedule)
    x = sde.prior_sample(torch.randn(16, 2, generator=torch.Generator().manual_seed(3)))
    score_fn = gmm.score_fn(sde)
    outs, noises = [], []
    for seed, global_seed in ((1, 1234), (2, 5678)):
        noise = _CountingNoise(seed, x.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(global_seed)
            outs.append(_run_from(resolved, sde, score_fn, x.clone(), grid, noise))
        noises.append(noise)
    same = torch.equal(outs[0], outs[1])
    if not resolved.stochastic and not same:
        raise AssertionError(f"sampler {spec.name!r} says stochastic=False, but from the same prior draw two "
                             f"different step-noise sources gave different outputs")
    if resolved.stochastic and noises[0].calls > 0 and same:
        raise AssertionError(f"sampler {spec.name!r} drew step noise {noises[0].calls} times, but its output "
                             f"does not depend on it")
    if resolved.stochastic and noises[0].calls == 0 and not same:
        raise AssertionError(f"sampler {spec.name!r} drew no step noise, yet from the same prior draw its "
                             f"output changed between runs")


def check_dtype_device(sampler: str | SamplerSpec, registry: Registry | None = None, *, sde: SDE | None = None,
                       devices: tuple[str, ...] | None = None) -> None:
    """float32 and float64 in give the same dtype out, on the same device, finite.

    ``devices``: default the CPU, and CUDA when torch sees it.
    """
    spec, reg = _target(sampler, registry)
    sde = sde if sde is not None else VPSDE()
    devices = devices if devices is not None else ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    gmm = named_mixture("ring8")
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            out = _draw(spec, reg, sde, gmm, (4, 2), seed=0, device=device, dtype=dtype)
            where = f"sampler {spec.name!r} on {device} with {str(dtype).replace('torch.', '')} in"
            if out.dtype != dtype:
                raise AssertionError(f"{where} returned {str(out.dtype).replace('torch.', '')}")
            if out.device.type != torch.device(device).type:
                raise AssertionError(f"{where} returned a tensor on {out.device}")
            if not bool(torch.isfinite(out).all()):
                raise AssertionError(f"{where} returned non-finite values")


def check_shapes(sampler: str | SamplerSpec, registry: Registry | None = None, *, sde: SDE | None = None) -> None:
    """Batch size 1 and odd item shapes ((3,), (1, 2), (2, 3, 5)): output shape = input shape, finite."""
    spec, reg = _target(sampler, registry)
    sde = sde if sde is not None else VPSDE()
    for item_shape, batches in SHAPES:
        gmm = _mixture(item_shape)
        for batch in batches:
            shape = (batch, *item_shape)
            out = _draw(spec, reg, sde, gmm, shape, seed=0)
            if tuple(out.shape) != shape:
                raise AssertionError(f"sampler {spec.name!r} returned shape {tuple(out.shape)} for input shape {shape}")
            if not bool(torch.isfinite(out).all()):
                raise AssertionError(f"sampler {spec.name!r} returned non-finite values for shape {shape}")


def check_per_item(sampler: str | SamplerSpec, registry: Registry | None = None, *,
                   sde: SDE | None = None) -> bool:
    """With per-item seeds, an item depends on its seed only, not on the batch (bitwise, CPU).

    Checked when the resolved sampler (with its composed parts) says
    ``per_item``: items 0-2 of a batch of 8 equal a batch of 3 with the same
    seeds. Returns whether it was checked.
    """
    spec, reg = _target(sampler, registry)
    if not _resolve(spec, reg).per_item:
        return False
    sde = sde if sde is not None else VPSDE()
    gmm = named_mixture("random:dim=16,components=8,seed=0")
    seeds = [11, 12, 13, 14, 15, 16, 17, 18]
    large = _draw(spec, reg, sde, gmm, (8, gmm.dim), seeds=seeds)
    small = _draw(spec, reg, sde, gmm, (3, gmm.dim), seeds=seeds[:3])
    if not torch.equal(small, large[:3]):
        worst = float((small - large[:3]).abs().max())
        raise AssertionError(f"sampler {spec.name!r} says per_item=True, but items 0-2 drawn in a batch of 8 "
                             f"differ from the same seeds drawn in a batch of 3 (max difference {worst:.3g}); "
                             f"draw all noise from `noise(like)` and do not couple items (or declare "
                             f"per_item=False)")
    return True


def noise_floor(gmm: GaussianMixture, n: int, pairs: int = 20) -> float:
    """Sliced Wasserstein distance between two independent exact sample sets of size ``n``,
    averaged over ``pairs`` pairs: what a perfect sampler scores. (tests/conftest.py averages 3
    pairs at n = 4000; at n = 2000 a 3-pair average strays by 30%, a 20-pair one is steady.)"""
    draw = lambda seed: gmm.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float32)  # noqa: E731
    return sum(sliced_wasserstein(draw(100 + 2 * i), draw(101 + 2 * i)) for i in range(pairs)) / pairs


def check_quality(sampler: str | SamplerSpec, registry: Registry | None = None, *, sde: SDE | None = None,
                  mixture: str = "ring8", n: int = 2000, bound: float = QUALITY_BOUND, seed: int = 7) -> float:
    """The sampler reaches its quality bound against the exact oracle; returns the measured ratio.

    ``n`` samples at the spec's ``recommended_steps`` on its
    ``recommended_schedule`` (a corrector inside ``pc`` after the default
    predictor), with the exact score of ``mixture``: the sliced Wasserstein
    distance to ``n`` exact samples, divided by the noise floor
    (:func:`noise_floor`), must be below ``bound``.
    """
    spec, reg = _target(sampler, registry)
    sde = sde if sde is not None else VPSDE()
    gmm = named_mixture(mixture)
    ref = gmm.sample(n, torch.Generator().manual_seed(0), dtype=torch.float32)
    kw = {"steps": spec.recommended_steps, "schedule": spec.recommended_schedule}
    if spec.kind == "corrector":
        kw.update(sampler="pc", corrector=spec.name)
    try:
        out = sample(gmm.score_fn(sde), sde, ref.shape, **{"sampler": spec.name, **kw}, seed=seed,
                     registry=reg).samples
    except Exception as err:
        raise AssertionError(f"sampler {spec.name!r} failed to sample for the quality check: "
                             f"{type(err).__name__}: {err}") from err
    ratio = sliced_wasserstein(out, ref) / noise_floor(gmm, n)
    if not ratio < bound:
        raise AssertionError(f"sampler {spec.name!r} at its recommended {spec.recommended_steps} steps "
                             f"({spec.recommended_schedule} grid) on {type(sde).__name__} and {mixture}: sliced "
                             f"Wasserstein distance to exact samples is {ratio:.2f} x the noise floor "
                             f"(bound {bound}); raise recommended_steps or fix the sampler")
    return ratio


def check_sampler(sampler: str | SamplerSpec, registry: Registry | None = None, *, quality: bool = True,
                  sde: SDE | None = None) -> None:
    """Run every check on one sampler; raise AssertionError naming the sampler and the problem.

    ``quality=False`` skips :func:`check_quality` (the only check that takes
    more than a fraction of a second).
    """
    spec, reg = _target(sampler, registry)
    check_options(spec.name, reg)
    check_seeds(spec.name, reg, sde=sde)
    check_dtype_device(spec.name, reg, sde=sde)
    check_shapes(spec.name, reg, sde=sde)
    check_per_item(spec.name, reg, sde=sde)
    if quality:
        check_quality(spec.name, reg, sde=sde)


# -- pytest plugin: pytest_plugins = ["sdekit.testing"] ----------------------------------

try:
    import pytest
except ImportError:  # the kit's functions work without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def sdekit_registry() -> Registry:
        """The default registry (entry points included), strict: a broken plugin fails the test."""
        return load_registry(strict=True)

    @pytest.fixture
    def sdekit_conformance(sdekit_registry) -> Callable[..., None]:
        """``sdekit_conformance(name, quality=True)``: :func:`check_sampler` on ``sdekit_registry``."""

        def run(sampler: str | SamplerSpec, **kwargs) -> None:
            check_sampler(sampler, sdekit_registry, **kwargs)

        return run
