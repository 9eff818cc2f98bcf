"""Error against steps of the deterministic samplers on the probability-flow ODE, with fitted orders.

    .venv/bin/python -m benchmarks.convergence [--out docs/img/convergence.png]

The problem of tests/test_convergence.py, over a wider range of steps: the
exact score of ``ring8``, float64, 32 exact draws of p_{0.5} solved down to
the SDE's t_min on ``logsnr`` grids of 8 to 256 steps, on VP and VE. The error
is the largest coordinate error against torchdiffeq's dopri5 at
rtol = atol = 1e-10. Prints a table of errors and the orders fitted over 32-256
steps (the asymptotic regime; the test's range), and writes a log-log plot of
error against score evaluations, one line per sampler, with reference slopes.
Results are recorded in docs/samplers.md.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from sdekit.grids import make_grid
from sdekit.oracle import named_mixture
from sdekit.registry import load_registry
from sdekit.api import run_on_grid
from sdekit.sde import VESDE, VPSDE
from sdekit.solvers import odeint_reverse

T_MAX = 0.5
STEPS = (8, 16, 32, 64, 128, 256)
FIT_FROM = 32
#: (label, sampler, options, theoretical order, extra evaluations besides evals_per_step * steps)
CASES = [
    ("ode (euler)", "ode", {"method": "euler"}, 1, 0),
    ("ddim (eta 0)", "ddim", {"eta": 0.0}, 1, 0),
    ("dpm_solver order 1", "dpm_solver", {"order": 1}, 1, 0),
    ("heun", "heun", {}, 2, 0),
    ("dpm_solver order 2", "dpm_solver", {"order": 2}, 2, 0),
    ("dpm_solver order 3", "dpm_solver", {"order": 3}, 3, 1),
]
EVALS_PER_STEP = {"ode": 1, "ddim": 1, "heun": 2, "dpm_solver": 1}


def run(registry, name, sde, score_fn, x, grid, options):
    """A registered sampler (or a predictor, step by step) from ``x`` on ``grid``, drawing no noise."""
    return run_on_grid(name, sde, score_fn, x, grid, registry=registry, **options)


def fitted_order(steps, errors) -> float:
    """Minus the least-squares slope of log(error) against log(steps)."""
    u, v = [math.log(n) for n in steps], [math.log(e) for e in errors]
    u_bar, v_bar = sum(u) / len(u), sum(v) / len(v)
    return -sum((a - u_bar) * (b - v_bar) for a, b in zip(u, v)) / sum((a - u_bar) ** 2 for a in u)


def measure(registry, sde) -> dict:
    """label -> (steps, nfe, errors) for every case, on one SDE."""
    gmm = named_mixture("ring8")
    score_fn = gmm.score_fn(sde)
    x = gmm.sample_t(32, T_MAX, sde, torch.Generator().manual_seed(0))
    ref = odeint_reverse(sde, score_fn, x, make_grid(sde, 1, t_max=T_MAX), method="dopri5", rtol=1e-10, atol=1e-10)
    out = {}
    for label, name, options, _, extra in CASES:
        errors = [float((run(registry, name, sde, score_fn, x, make_grid(sde, n, "logsnr", t_max=T_MAX), options)
                         - ref).abs().max()) for n in STEPS]
        out[label] = (list(STEPS), [EVALS_PER_STEP[name] * n + extra for n in STEPS], errors)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.4), sharey=True)
    styles = {"ode (euler)": ("tab:gray", "s"), "ddim (eta 0)": ("tab:blue", "o"),
              "dpm_solver order 1": ("tab:cyan", "x"), "heun": ("tab:red", "^"),
              "dpm_solver order 2": ("tab:green", "D"), "dpm_solver order 3": ("tab:purple", "v")}
    for ax, (sde_name, rows) in zip(axes, results.items()):
        for label, (_, nfe, errors) in rows.items():
            color, marker = styles[label]
            ax.loglog(nfe, errors, marker=marker, color=color, label=label, linewidth=1.4, markersize=5)
        for order in (1, 2, 3):  # reference slopes, just below the first sampler of that order
            label = next(c[0] for c in CASES if c[3] == order)
            _, nfe, errors = rows[label]
            x0, y0 = nfe[2], 0.4 * errors[2]
            xs = [x0 / 2, nfe[-1] * 2]
            ax.loglog(xs, [y0 * (x0 / v) ** order for v in xs], "--", color="0.6", linewidth=0.9)
            ax.annotate(f"slope -{order}", (xs[-1], y0 * (x0 / xs[-1]) ** order), fontsize=8, color="0.4",
                        ha="right", va="top")
        ax.set_title(f"{sde_name}: ring8 from t = {T_MAX} to t_min, logsnr grid")
        ax.set_xlabel("score evaluations")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("largest coordinate error (vs dopri5, tol 1e-10)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/convergence.png"), help="plot path (PNG)")
    args = parser.parse_args(argv)
    registry = load_registry(autoload=False, strict=True)
    results = {}
    for sde in (VPSDE(), VESDE()):
        results[type(sde).__name__] = rows = measure(registry, sde)
        print(f"\n{type(sde).__name__} (ring8, t_max={T_MAX}, t_min={sde.t_min:g}, logsnr grid)")
        print(f"{'sampler':20s} {'theory':>6s} {'fitted':>6s}  " + "  ".join(f"{n:>8d}" for n in STEPS))
        for label, _, _, order, _ in CASES:
            steps, _, errors = rows[label]
            fit = fitted_order([n for n in steps if n >= FIT_FROM], [e for n, e in zip(steps, errors) if n >= FIT_FROM])
            print(f"{label:20s} {order:6d} {fit:6.2f}  " + "  ".join(f"{e:8.1e}" for e in errors))
    print(f"\nerrors by grid steps; orders fitted over {FIT_FROM}-{STEPS[-1]} steps")
    plot(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
