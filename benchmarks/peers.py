"""sdekit's samplers and two peers' samplers, driven through their own public APIs on one exact score.

Every sampler here becomes an :class:`Entry`: a name, a family (``sdekit``,
``diffusers``, ``k-diffusion``) and ``draw(mixture, budget, n, seed) -> Draw``
(``mixture``: anything with ``score_fn(sde)`` and ``item_shape``), which returns ``n`` samples of the mixture's item shape drawn with at most
``budget`` score evaluations (counted, not assumed), or, for an adaptive
sampler, with the ``budget``-th tolerance of :data:`TOLERANCES` (its
evaluations are whatever it spent). All three families see the same function:
the exact score of a :class:`sdekit.oracle.GaussianMixture` under
:class:`sdekit.sde.VPSDE`, in the parametrization each peer expects.

- **diffusers** schedulers get an eps-prediction model ``model(x, timestep)``.
  sdekit's VP with ``beta_min = 0.1``, ``beta_max = 20`` reduces to DDPM's
  linear betas ``linspace(1e-4, 0.02, 1000)`` (:meth:`VPSDE.discretize`), so
  every scheduler is built on those. A timestep ``tau`` (an integer, or a float
  for Euler/Heun's ``linspace`` spacing) means the noise level
  ``sigma(tau) = interp(tau, 0..999, sqrt((1 - abar) / abar))`` (diffusers'
  own interpolation; exact ``abar_tau`` at integers), and the model evaluates
  the exact score at the continuous time whose marginal has that noise level,
  ``t = VPSDE.t_from_log_snr(-2 log sigma)``, then ``eps = -s(t) score``. (The
  time ``(tau + 1) / 1000`` of DDPM's discretization differs from it by up to
  :func:`discrete_time_offset`, 3.4e-3 near T: prod(1 - beta_j) is not
  exp(-sum beta_j), and the gap accumulates towards T.) The last four levels (996-999)
  are noisier than the SDE at T (prod(1 - beta) < m(T)^2) and are labelled T,
  as :mod:`sdekit.losses` does. ``clip_sample`` is turned off (DDIM
  and DDPM clip x0 to [-1, 1] by default: an image-range assumption, wrong for
  these mixtures); every other option is the scheduler's default, including its
  timestep spacing.
- **k-diffusion** samplers get a denoiser ``D(x, sigma)`` in the
  variance-exploding parametrization of the same VP process, ``x = x_vp / m``,
  ``sigma = s / m``: ``D = x + sigma^2 m score(m x, t(sigma))`` (Tweedie), on
  ``get_sigmas_karras(n, sigma(t_min), sigma(T), rho=7)`` from
  ``x = randn * sigma_max`` (its recommended grid and start). Only
  ``k_diffusion/sampling.py`` is loaded (:func:`load_k_diffusion_sampling`):
  the package's ``__init__`` imports torchvision, which does not load beside
  torch 2.13.
- **sdekit**: every registered sampler, predictor and corrector through
  :func:`sdekit.sample` with its recommended schedule; steps per budget follow
  from the evaluations it spends on grids of 64 and 65 steps (measured, so a
  plugin sampler needs no table).

A peer that cannot be imported yields no entries; :func:`peer_status` says why.
"""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import inspect
import math
import os
import sys
import tarfile
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sdekit.api import sample as sdekit_sample
from sdekit.oracle import GaussianMixture
from sdekit.registry import Registry, load_registry
from sdekit.sde import VPSDE

#: rtol = atol of the adaptive samplers, one per "budget" index (loose to tight)
TOLERANCES = (3e-1, 1e-1, 3e-2, 1e-2, 1e-3, 1e-4, 1e-5)
#: where :func:`load_k_diffusion_sampling` looks for a downloaded k-diffusion wheel or sdist
KDIFFUSION_VENDOR = Path(__file__).resolve().parent / "out" / "vendor"
#: environment variable naming a k-diffusion wheel, sdist, source directory or sampling.py
KDIFFUSION_ENV = "SDEKIT_BENCH_KDIFFUSION"
DTYPE = torch.float32


class StandardNormal:
    """N(0, I) in ``dim`` dimensions, whose exact score under VP is ``-x`` at every t: a free score
    for timing what a sampler costs around its evaluations (duck-types the mixture's
    ``score_fn`` and ``item_shape``)."""

    def __init__(self, dim: int):
        self.item_shape = (dim,)

    def score_fn(self, sde):
        return lambda x, t, **cond: -x


@dataclass
class Draw:
    """Samples (n, *item_shape) in float64 on the CPU, and the score evaluations spent."""

    x: torch.Tensor
    nfe: int
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One sampler of one family: ``draw(mixture, budget, n, seed) -> Draw``."""

    family: str
    name: str
    evals: str  # evaluations per step, in words
    draw: Callable[[GaussianMixture, int, int, int], Draw]
    adaptive: bool = False
    stochastic: bool = False
    #: sdekit: registered by sdekit itself (not by an installed plugin such as plugins/sdekit-unipc)
    builtin: bool = False

    @property
    def label(self) -> str:
        return f"{self.family}:{self.name}"


class Counted:
    """A function that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _noise(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


# -- sdekit ---------------------------------------------------------------------------

def sdekit_entries(registry: Registry | None = None, sde: VPSDE | None = None) -> list[Entry]:
    """Every registered sampler, predictor and corrector (built in, or from an installed plugin such as
    plugins/sdekit-unipc), each with its defaults."""
    registry = registry if registry is not None else load_registry(strict=True)  # built-ins and installed plugins
    sde = sde if sde is not None else VPSDE()
    builtins = set(load_registry(autoload=False).names())
    out = []
    for spec in registry:
        builtin = spec.name in builtins
        if spec.adaptive:
            out.append(Entry("sdekit", spec.name, "adaptive", _sdekit_adaptive(registry, sde, spec.name),
                             adaptive=True, stochastic=spec.stochastic, builtin=builtin))
            continue
        per_step, extra = _sdekit_cost(registry, sde, spec.name)
        evals = f"{per_step}/step" + (f" + {extra}" if extra else "")
        out.append(Entry("sdekit", spec.name, evals, _sdekit_fixed(registry, sde, spec.name, per_step, extra),
                         stochastic=spec.stochastic, builtin=builtin))
    return out


def _sdekit_cost(registry, sde, name) -> tuple[int, int]:
    """(evaluations per grid step, fixed extra) measured on 64- and 65-step grids."""
    probe = GaussianMixture([1.0], [[0.0]], [1.0])
    nfe = [sdekit_sample(probe.score_fn(sde), sde, (2, 1), name, steps=s, registry=registry).nfe for s in (64, 65)]
    return nfe[1] - nfe[0], nfe[0] - 64 * (nfe[1] - nfe[0])


def _sdekit_fixed(registry, sde, name, per_step, extra):
    def draw(gmm, budget, n, seed):
        steps = (budget - extra) // per_step
        if steps < 1:
            raise ValueError(f"{per_step} evaluations per step (+{extra}) do not fit in {budget}")
        res = sdekit_sample(gmm.score_fn(sde), sde, (n, *gmm.item_shape), name, steps=steps, seed=seed,
                            dtype=DTYPE, registry=registry)
        return Draw(res.samples.double(), res.nfe, {"steps": steps, "schedule": res.provenance["schedule"]})

    return draw


def _sdekit_adaptive(registry, sde, name):
    def draw(gmm, level, n, seed):
        tol = TOLERANCES[level]
        res = sdekit_sample(gmm.score_fn(sde), sde, (n, *gmm.item_shape), name, seed=seed, dtype=DTYPE,
                            registry=registry, rtol=tol, atol=tol)
        return Draw(res.samples.double(), res.nfe, {"rtol": tol, "atol": tol})

    return draw


# -- diffusers ------------------------------------------------------------------------

#: scheduler class -> options besides the VP's betas (clip_sample off: see the module docstring)
DIFFUSERS = {
    "DDIMScheduler": {"clip_sample": False},
    "DPMSolverMultistepScheduler": {},  # defaults: dpmsolver++, order 2 (2M), lower_order_final
    "UniPCMultistepScheduler": {},
    "EulerDiscreteScheduler": {},
    "HeunDiscreteScheduler": {},
    "EulerAncestralDiscreteScheduler": {},
    "DDPMScheduler": {"clip_sample": False},
}
#: schedulers whose step draws noise
DIFFUSERS_STOCHASTIC = {"EulerAncestralDiscreteScheduler", "DDPMScheduler"}


def vp_betas(sde: VPSDE, num_train_timesteps: int = 1000) -> dict:
    """diffusers' config of the discrete DDPM that ``sde`` reduces to (:meth:`VPSDE.discretize`)."""
    return {"num_train_timesteps": num_train_timesteps, "beta_schedule": "linear",
            "beta_start": sde.beta_min / num_train_timesteps, "beta_end": sde.beta_max / num_train_timesteps,
            "prediction_type": "epsilon"}


class EpsModel:
    """The exact score as diffusers' eps-prediction: ``model(x, timestep) -> eps``.

    ``x`` is the scheduler's model input (``scale_model_input``), a VP-scaled
    state; ``timestep`` a discrete (possibly fractional) DDPM timestep.
    """

    def __init__(self, score_fn: Callable, sde: VPSDE, alphas_cumprod: torch.Tensor):
        abar = alphas_cumprod.double().numpy()
        self.sigmas = np.sqrt((1.0 - abar) / abar)  # diffusers' sigma table, float64
        self.score, self.sde, self.calls = score_fn, sde, 0

    def time(self, timestep) -> float:
        """The continuous time whose noise level is the scheduler's sigma(timestep)."""
        sigma = float(np.interp(float(timestep), np.arange(len(self.sigmas)), self.sigmas))
        return float(self.sde.t_from_log_snr(torch.tensor(-2.0 * math.log(sigma), dtype=torch.float64)))

    def __call__(self, x: torch.Tensor, timestep) -> torch.Tensor:
        self.calls += 1
        t = self.time(timestep)
        s = float(self.sde.marginal(torch.tensor(t, dtype=torch.float64))[1])
        return -s * self.score(x, torch.full((len(x),), t, dtype=x.dtype))


def discrete_time_offset(sde: VPSDE | None = None) -> float:
    """max_k |t_k - (k + 1) / 1000|: the abar-matched time against DDPM's discretization time."""
    import diffusers

    sde = sde if sde is not None else VPSDE()
    model = EpsModel(None, sde,
                     diffusers.DDPMScheduler(**vp_betas(sde)).alphas_cumprod)
    return max(abs(model.time(k) - (k + 1) / 1000) for k in range(1000))


def diffusers_entries(sde: VPSDE | None = None) -> list[Entry]:
    import diffusers

    sde = sde if sde is not None else VPSDE()
    out = []
    for cls_name, extra in DIFFUSERS.items():
        cls = getattr(diffusers, cls_name)
        evals = "2/step - 1" if cls_name.startswith("Heun") else "1/step"
        out.append(Entry("diffusers", cls_name, evals, _diffusers_draw(cls, {**vp_betas(sde), **extra}, sde),
                         stochastic=cls_name in DIFFUSERS_STOCHASTIC))
    return out


def _diffusers_steps(cls, config: dict, budget: int) -> int:
    """The most inference steps whose timesteps (one model call each) fit in ``budget``."""
    steps = budget
    while steps >= 1:
        scheduler = cls(**config)
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= budget:
            return steps
        steps -= 1
    raise ValueError(f"{cls.__name__} cannot run within {budget} evaluations")


def _diffusers_draw(cls, config: dict, sde: VPSDE):
    def draw(gmm, budget, n, seed):
        steps = _diffusers_steps(cls, config, budget)
        scheduler = cls(**config)
        scheduler.set_timesteps(steps)
        model = EpsModel(gmm.score_fn(sde), sde, scheduler.alphas_cumprod)
        gen = torch.Generator().manual_seed(seed + 1)
        takes_gen = "generator" in inspect.signature(scheduler.step).parameters
        x = _noise((n, *gmm.item_shape), seed) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = model(scheduler.scale_model_input(x, t), t)
            kw = {"generator": gen} if takes_gen else {}
            x = scheduler.step(eps, t, x, **kw).prev_sample
        return Draw(x.double(), model.calls, {"steps": steps, "timestep_spacing": scheduler.config.timestep_spacing})

    return draw


# -- k-diffusion ----------------------------------------------------------------------

def _kdiffusion_sources() -> tuple[str, str, str]:
    """(sampling.py source, utils.py source, where from), from the first place that has them."""
    named = os.environ.get(KDIFFUSION_ENV)
    if named and not (Path(named).is_dir() or Path(named).is_file()):
        raise ImportError(f"{KDIFFUSION_ENV}={named!r} is neither a file nor a directory")
    places = [named] if named else sorted(glob.glob(str(KDIFFUSION_VENDOR / "k_diffusion-*")), reverse=True)
    for place in places:
        path = Path(place)
        if path.name == "sampling.py":
            return path.read_text(), (path.parent / "utils.py").read_text(), str(path)
        if path.is_dir():
            return ((path / "k_diffusion" / "sampling.py").read_text(),
                    (path / "k_diffusion" / "utils.py").read_text(), str(path))
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as z:
                return (z.read("k_diffusion/sampling.py").decode(), z.read("k_diffusion/utils.py").decode(),
                        str(path))
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                names = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in tar.getmembers()
                         if len(Path(m.name).parts) > 1}
                read = lambda rel: tar.extractfile(names[rel]).read().decode()  # noqa: E731
                return read("k_diffusion/sampling.py"), read("k_diffusion/utils.py"), str(path)
        if named:
            raise ImportError(f"{KDIFFUSION_ENV}={named!r}: expected a k-diffusion wheel, sdist, source "
                              f"directory or its sampling.py")
    try:  # installed with pip install --no-deps: read the files without importing the package
        dist = importlib.metadata.distribution("k-diffusion")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"k-diffusion not found: set {KDIFFUSION_ENV} to its wheel, or run "
                          f"pip download k-diffusion --no-deps -d {KDIFFUSION_VENDOR}") from None
    files = [Path(dist.locate_file(f)) for f in ("k_diffusion/sampling.py", "k_diffusion/utils.py")]
    return files[0].read_text(), files[1].read_text(), str(files[0])


def load_k_diffusion_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module alone, as ``_kd_bench.sampling``.

    Its only package import is ``from . import utils``, and it uses nothing of
    ``utils`` but ``utils.NAME`` functions; the real ``utils`` imports
    torchvision. So a stub package ``_kd_bench`` gets a ``utils`` module holding
    exactly the functions ``sampling.py`` names, their source copied from the
    real ``utils.py`` (``append_dims`` in 0.1.1.post1), and ``sampling.py`` is
    executed as its submodule. Its own third-party imports (scipy, torch,
    torchdiffeq, torchsde, tqdm) are sdekit's dependencies.
    """
    if "_kd_bench.sampling" in sys.modules:
        return sys.modules["_kd_bench.sampling"]
    sampling_src, utils_src, origin = _kdiffusion_sources()
    used = {node.attr for node in ast.walk(ast.parse(sampling_src)) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "utils"}
    defs = {node.name: node for node in ast.parse(utils_src).body if isinstance(node, ast.FunctionDef)}
    if used - set(defs):
        raise ImportError(f"k-diffusion's sampling.py uses utils.{sorted(used - set(defs))}, not plain functions")
    package = types.ModuleType("_kd_bench")
    package.__path__ = []
    utils = types.ModuleType("_kd_bench.utils")
    utils.__dict__["torch"] = torch
    exec(compile(ast.Module([defs[name] for name in sorted(used)], []), f"{origin}:utils.py", "exec"), utils.__dict__)
    sampling = types.ModuleType("_kd_bench.sampling")
    sampling.__package__, sampling.__file__ = "_kd_bench", f"{origin}:sampling.py"
    package.utils, package.sampling = utils, sampling
    sys.modules.update({"_kd_bench": package, "_kd_bench.utils": utils, "_kd_bench.sampling": sampling})
    try:
        exec(compile(sampling_src, sampling.__file__, "exec"), sampling.__dict__)
    except BaseException:
        for name in ("_kd_bench", "_kd_bench.utils", "_kd_bench.sampling"):
            sys.modules.pop(name, None)
        raise
    sampling.origin = origin
    return sampling


def k_diffusion_version() -> str:
    """The version in the loaded wheel/sdist/directory name, or of the installed distribution."""
    origin = load_k_diffusion_sampling().origin
    name = Path(origin.split(":")[0]).name
    if name.startswith("k_diffusion-"):
        return name[len("k_diffusion-"):].split("-py")[0].removesuffix(".tar.gz")
    return importlib.metadata.version("k-diffusion")


class Denoiser:
    """The exact score as k-diffusion's denoiser ``D(x, sigma)``, x = x_vp / m, sigma = s / m (B,)."""

    def __init__(self, score_fn: Callable, sde: VPSDE):
        self.sde, self.score, self.calls = sde, score_fn, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sigma = sigma.to(torch.float64).reshape(-1).expand(len(x))
        t = self.sde.t_from_log_snr(-2.0 * sigma.log())
        m = self.sde.marginal(t)[0]
        shape = (-1,) + (1,) * (x.ndim - 1)
        score = self.score((m.reshape(shape) * x).to(x.dtype), t.to(x.dtype))
        return x + ((sigma**2 * m).reshape(shape) * score).to(x.dtype)


def sigma_range(sde: VPSDE) -> tuple[float, float]:
    """(sigma(t_min), sigma(T)) of the VP process in k-diffusion's units, s / m."""
    m, s = sde.marginal(torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
    return tuple((s / m).tolist())


#: sampler -> (evaluations in words, evaluations for n sigmas before the final 0, stochastic)
KDIFFUSION = {
    "sample_euler": ("1/step", lambda n: n, False),
    "sample_heun": ("2/step - 1", lambda n: 2 * n - 1, False),
    "sample_dpm_2": ("2/step - 1", lambda n: 2 * n - 1, False),
    "sample_lms": ("1/step", lambda n: n, False),
    "sample_dpmpp_2m": ("1/step", lambda n: n, False),
    "sample_dpmpp_sde": ("2/step - 1", lambda n: 2 * n - 1, True),
}


def k_diffusion_entries(sde: VPSDE | None = None) -> list[Entry]:
    kd = load_k_diffusion_sampling()
    sde = sde if sde is not None else VPSDE()
    out = [Entry("k-diffusion", name, evals, _kd_draw(kd, sde, name, cost), stochastic=stochastic)
           for name, (evals, cost, stochastic) in KDIFFUSION.items()]
    out.append(Entry("k-diffusion", "sample_dpm_adaptive", "adaptive", _kd_adaptive(kd, sde), adaptive=True))
    return out


def _kd_draw(kd, sde, name, cost):
    sig_min, sig_max = sigma_range(sde)

    def draw(gmm, budget, n, seed):
        steps = max((s for s in range(1, budget + 1) if cost(s) <= budget), default=None)
        if steps is None:
            raise ValueError(f"{name} cannot run within {budget} evaluations")
        sigmas = kd.get_sigmas_karras(steps, sig_min, sig_max, rho=7.0)
        model = Denoiser(gmm.score_fn(sde), sde)
        x = _noise((n, *gmm.item_shape), seed) * sigmas[0]
        torch.manual_seed(seed + 1)  # the ancestral and SDE samplers draw from the global generator
        x = getattr(kd, name)(model, x, sigmas, disable=True)
        return Draw(x.double(), model.calls, {"steps": steps, "schedule": "karras rho=7"})

    return draw


def _kd_adaptive(kd, sde):
    sig_min, sig_max = sigma_range(sde)

    def draw(gmm, level, n, seed):
        tol = TOLERANCES[level]
        model = Denoiser(gmm.score_fn(sde), sde)
        x = _noise((n, *gmm.item_shape), seed) * sig_max
        torch.manual_seed(seed + 1)
        x = kd.sample_dpm_adaptive(model, x, sig_min, sig_max, rtol=tol, atol=tol, disable=True)
        return Draw(x.double(), model.calls, {"rtol": tol, "atol": tol})

    return draw


# -- all of them ----------------------------------------------------------------------

def peer_status() -> dict:
    """family -> version string, or "unavailable: <why>" for a peer that does not load."""
    status = {}
    try:
        import diffusers

        status["diffusers"] = diffusers.__version__
    except Exception as err:  # noqa: BLE001 (any import failure means: no peer)
        status["diffusers"] = f"unavailable: {type(err).__name__}: {err}"
    try:
        status["k-diffusion"] = k_diffusion_version()
    except Exception as err:  # noqa: BLE001
        status["k-diffusion"] = f"unavailable: {type(err).__name__}: {err}"
    return status


def all_entries(sde: VPSDE | None = None, registry: Registry | None = None) -> tuple[list[Entry], dict]:
    """Every entry of every family that loads, and :func:`peer_status`."""
    status = peer_status()
    entries = sdekit_entries(registry, sde)
    if not status["diffusers"].startswith("unavailable"):
        entries += diffusers_entries(sde)
    if not status["k-diffusion"].startswith("unavailable"):
        entries += k_diffusion_entries(sde)
    return entries, status
