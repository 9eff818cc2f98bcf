"""Per-step cost of the ``sde`` sampler's Brownian motions against a plain Euler-Maruyama step.

    .venv/bin/python -m benchmarks.brownian [--batch 1000] [--steps 200] [--repeats 7]

Samples the 2-D ``ring8`` mixture with its exact score on VP at batch 1000 and
times, in one run, with the median of ``--repeats`` runs each:

- ``euler_maruyama``: sdekit's own predictor loop (``pc``, no corrector), the baseline;
- ``sde`` with ``brownian=grid`` and ``brownian=interval`` (default ``tol``), ``euler`` and ``srk``;
- the Brownian motions alone: one query per step of :class:`sdekit.solvers.GridBrownian`
  and of ``torchsde.BrownianInterval`` with the ``dt`` hint the sampler gives it and
  without (``sdeint``'s own default);
- the fixed cost of one ``torchsde.sdeint`` call (a one-step call on a drift-free
  SDE), which is what one call per grid step would add to every step.

Ratios are to the Euler-Maruyama step. Results are recorded in docs/solvers.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchsde

import sdekit
from sdekit.oracle import named_mixture
from sdekit.registry import load_registry
from sdekit.samplers import GeneratorNoise
from sdekit.sde import VPSDE
from sdekit.solvers import GridBrownian

CASES = [
    ("euler_maruyama", "euler_maruyama", {"denoise": "none"}),
    ("sde euler, grid", "sde", {"brownian": "grid", "denoise": "none"}),
    ("sde euler, interval", "sde", {"brownian": "interval", "denoise": "none"}),
    ("sde srk, grid", "sde", {"method": "srk", "brownian": "grid", "denoise": "none"}),
    ("sde srk, interval", "sde", {"method": "srk", "brownian": "interval", "denoise": "none"}),
]


class _Still:
    """dx = 0 dt + 1 dW: an SDE costing nothing, to time sdeint's own work."""

    sde_type, noise_type = "ito", "additive"

    def f(self, t, y):
        return torch.zeros_like(y)

    def g_prod(self, t, y, v):
        return v


class _Zero(torchsde.BaseBrownian):
    __slots__ = ("_like",)

    def __init__(self, like):
        self._like = like

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        return torch.zeros_like(self._like)

    def __repr__(self):
        return "_Zero()"

    dtype = property(lambda self: self._like.dtype)
    device = property(lambda self: self._like.device)
    shape = property(lambda self: self._like.shape)
    levy_area_approximation = "none"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def sdeint_call_overhead(batch: int, dim: int, repeats: int, calls: int = 200) -> float:
    """Seconds of one one-step ``sdeint`` call on a drift-free SDE, minus the step's own arithmetic."""
    y = torch.randn(batch, dim)
    sde, bm, ts = _Still(), _Zero(y), torch.tensor([0.0, 0.01], dtype=torch.float64)

    def calls_():
        for _ in range(calls):
            torchsde.sdeint(sde, y, ts, bm=bm, method="euler", dt=0.02)

    def steps_():
        for _ in range(calls):
            y + sde.f(0.0, y) * 0.01 + sde.g_prod(0.0, y, bm(0.0, 0.01))

    return (median_seconds(calls_, repeats) - median_seconds(steps_, repeats)) / calls


def brownian_queries(batch: int, dim: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds per step of querying each Brownian motion once per step of a uniform grid in s."""
    like = torch.zeros(batch, dim)
    s = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    makers = {
        "GridBrownian": lambda: GridBrownian(s, like, GeneratorNoise(torch.Generator().manual_seed(0))),
        "BrownianInterval, dt hint": lambda: torchsde.BrownianInterval(
            t0=0.0, t1=1.0, size=(batch, dim), entropy=0, dt=1.0 / steps),
        "BrownianInterval, no hint": lambda: torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(batch, dim), entropy=0),
    }

    def walk(make):
        bm = make()
        for a, b in zip(s[:-1], s[1:]):
            bm(a, b)

    return {label: median_seconds(lambda make=make: walk(make), repeats) / steps for label, make in makers.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    registry = load_registry(autoload=False)
    gmm, sde = named_mixture("ring8"), VPSDE()
    score = gmm.score_fn(sde)
    shape = (args.batch, gmm.dim)
    per_step = {}
    for label, name, options in CASES:
        run = lambda: sdekit.sample(score, sde, shape, name, steps=args.steps, seed=0,  # noqa: E731
                                    registry=registry, **options)
        per_step[label] = median_seconds(run, args.repeats) / args.steps
    overhead = sdeint_call_overhead(args.batch, gmm.dim, args.repeats)
    queries = brownian_queries(args.batch, gmm.dim, args.steps, args.repeats)

    base = per_step["euler_maruyama"]
    print(f"ring8 (2-D), exact score, VP, batch {args.batch}, {args.steps} steps, "
          f"median of {args.repeats}, {torch.get_num_threads()} threads")
    print(f"{'':28} {'us/step':>9} {'ratio':>7}")
    for label, seconds in per_step.items():
        print(f"{label:28} {seconds * 1e6:9.0f} {seconds / base:7.2f}")
    print("Brownian motion alone, one query per step:")
    for label, seconds in queries.items():
        print(f"  {label:26} {seconds * 1e6:9.0f} {seconds / base:7.2f}")
    print(f"{'sdeint per-call overhead':28} {overhead * 1e6:9.0f} {overhead / base:7.2f}")


if __name__ == "__main__":
    main()
