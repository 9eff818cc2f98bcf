"""Timing parts of the peer comparison (issue 7): entry points for a quiet machine.

    .venv/bin/python -m benchmarks.run --timing [--out DIR]

Nothing here is a result on a shared machine: ``benchmarks.run --quick`` runs
each part once at toy sizes to check that it works, and marks its numbers
``"for_reporting": false``. Each part returns a JSON-ready dict.

- :func:`per_step_overhead`: seconds per score evaluation of a sampler at batch
  1, 64 and 10000 on N(0, I) in 2-D, whose exact VP score ``-x`` costs almost
  nothing, so what remains is the sampler's own work; beside it the bare cost
  of the same number of score calls.
- :func:`likelihood`: :func:`sdekit.likelihood.log_likelihood` against
  k-diffusion's ``log_likelihood`` (both dopri5, one Rademacher probe), wall
  time and evaluations, with the mean error against the exact log-density.
- :func:`training_step`: one optimizer step of sdekit's DSM loss on its MLP
  score network against a hand-written DSM step on the same network.
"""

from __future__ import annotations

import statistics
import time

import torch

from sdekit.sde import VPSDE

from .peers import Counted, Denoiser, StandardNormal, all_entries, load_k_diffusion_sampling, sigma_range

#: (family, sampler) timed per step: the 1st and 2nd order workhorses of each family
STEP_SAMPLERS = [
    ("sdekit", "ddim"), ("sdekit", "dpm_solver"), ("sdekit", "heun"),
    ("diffusers", "DDIMScheduler"), ("diffusers", "DPMSolverMultistepScheduler"),
    ("diffusers", "EulerDiscreteScheduler"), ("diffusers", "HeunDiscreteScheduler"),
    ("k-diffusion", "sample_euler"), ("k-diffusion", "sample_dpmpp_2m"), ("k-diffusion", "sample_heun"),
]


def _clock(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_step_overhead(batches=(1, 64, 10000), evals: int = 50, repeats: int = 5) -> list[dict]:
    """Per-evaluation wall time of each sampler of :data:`STEP_SAMPLERS` that loads, per batch size."""
    sde = VPSDE()
    entries = {(e.family, e.name): e for e in all_entries(sde)[0]}
    problem = StandardNormal(2)
    score = problem.score_fn(sde)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 2)
        t = torch.full((batch,), 0.5)
        bare = _clock(lambda: [score(x, t) for _ in range(evals)], repeats) / evals
        for key in STEP_SAMPLERS:
            if key not in entries:
                continue
            nfe = []
            wall = _clock(lambda: nfe.append(entries[key].draw(problem, evals, batch, 0).nfe), repeats)
            rows.append({"family": key[0], "sampler": key[1], "batch": batch, "nfe": nfe[-1],
                         "seconds_per_eval": wall / nfe[-1], "bare_score_seconds": bare})
    return rows


def likelihood(n: int = 256, tol: float = 1e-5, spec: str = "ring8") -> dict:
    """Wall time, evaluations and mean |error| (nats) of both likelihoods on exact draws of ``spec``."""
    from sdekit.likelihood import log_likelihood
    from sdekit.oracle import named_mixture

    sde = VPSDE()
    gmm = named_mixture(spec)
    x = gmm.sample_t(n, sde.t_min, sde, torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gmm.log_prob(x, torch.full((n,), sde.t_min, dtype=torch.float64), sde)
    out = {"n": n, "rtol": tol, "atol": tol, "mixture": spec}
    score = Counted(gmm.score_fn(sde))
    start = time.perf_counter()
    res = log_likelihood(sde, score, x, rtol=tol, atol=tol, generator=torch.Generator().manual_seed(1))
    out["sdekit"] = {"seconds": time.perf_counter() - start, "nfe": score.calls,
                     "mean_abs_error": float((res.log_likelihood - exact).abs().mean())}
    try:
        kd = load_k_diffusion_sampling()
    except ImportError as err:
        out["k-diffusion"] = f"unavailable: {err}"
        return out
    sig_min, sig_max = sigma_range(sde)
    m = float(sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64))[0])
    model = Denoiser(gmm.score_fn(sde), sde)
    torch.manual_seed(1)
    start = time.perf_counter()
    ll, info = kd.log_likelihood(model, x / m, sig_min, sig_max, atol=tol, rtol=tol)
    # density of x_vp = m x_k at t_min: log p_vp(x) = log p_k(x / m) - D log m
    ll = ll - x[0].numel() * torch.log(torch.tensor(m, dtype=torch.float64))
    out["k-diffusion"] = {"seconds": time.perf_counter() - start, "nfe": model.calls,
                          "fevals_reported": info.get("fevals"),
                          "mean_abs_error": float((ll - exact).abs().mean())}
    return out


def training_step(batch: int = 256, steps: int = 50, repeats: int = 3) -> dict:
    """Seconds per optimizer step: sdekit's loss through its score contract against a bare DSM step."""
    from sdekit.losses import LossConfig, make_loss
    from sdekit.models import ModelConfig, build_model, network_score_fn, noise_input
    from sdekit.oracle import named_mixture

    sde = VPSDE()
    config = ModelConfig(arch="mlp")
    data = named_mixture("ring8").sample(batch, torch.Generator().manual_seed(0), dtype=torch.float32)
    loss = make_loss(LossConfig(), sde)

    def run(step_fn):
        torch.manual_seed(0)
        net = build_model(config, (2,))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, foreach=True)
        gen = torch.Generator().manual_seed(0)
        return lambda: [step_fn(net, opt, gen) for _ in range(steps)]

    def sdekit_step(net, opt, gen):
        opt.zero_grad(set_to_none=True)
        loss(network_score_fn(net, sde), data, gen).mean().backward()
        opt.step()

    def bare_step(net, opt, gen):  # DSM with lambda = s^2: ||s score + z||^2, t uniform on [1e-5, 1]
        opt.zero_grad(set_to_none=True)
        t = torch.rand(batch, generator=gen) * (1 - 1e-5) + 1e-5
        z = torch.randn(data.shape, generator=gen)
        m, s = sde.marginal(t)
        xt = m[:, None] * data + s[:, None] * z
        out = net(xt, noise_input(sde, t, config.noise_input))
        eps = out if config.parametrization == "eps" else -s[:, None] * out
        ((eps - z) ** 2).sum(1).mean().backward()
        opt.step()

    return {"batch": batch, "steps": steps, "parametrization": config.parametrization,
            "sdekit_seconds_per_step": _clock(run(sdekit_step), repeats) / steps,
            "bare_seconds_per_step": _clock(run(bare_step), repeats) / steps}


def run_all(quick: bool) -> dict:
    """Every timing part; ``quick``: toy sizes, one repeat, numbers not for reporting."""
    if quick:
        parts = {"per_step_overhead": lambda: per_step_overhead((1, 64), evals=10, repeats=1),
                 "likelihood": lambda: likelihood(n=16, tol=1e-3),
                 "training_step": lambda: training_step(batch=32, steps=3, repeats=1)}
    else:
        parts = {"per_step_overhead": per_step_overhead, "likelihood": likelihood, "training_step": training_step}
    out = {"for_reporting": not quick, "threads": torch.get_num_threads()}
    for name, part in parts.items():
        try:
            out[name] = part()
        except Exception as err:  # noqa: BLE001 (report the broken part, keep the others)
            out[name] = f"failed: {type(err).__name__}: {err}"
    return out
