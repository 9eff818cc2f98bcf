"""Which time grid for the few-step samplers: the unbiased MMD to the exact law per SDE, grid and step count.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.schedules [--out DIR] [--samplers dpm_solver,unipc]

Every (SDE, mixture, sampler, steps, schedule) draws ``-n`` samples per seed
with the exact score of one of :data:`benchmarks.quality.MIXTURES` and scores
them with :func:`sdekit.metrics.mixture_mmd` (0 in expectation for exact
samples). Cells: 1000 x the mean over the seeds; the JSON has the standard
errors. Writes ``schedules.json`` and ``schedules.md`` into ``--out`` (default
``benchmarks/out/schedules``). The results behind ``vp_quadratic`` being the
recommended grid of ``dpm_solver``, ``dpm_solver_sde`` and ``unipc`` are in
docs/samplers.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import sdekit
from sdekit.metrics import mixture_mmd
from sdekit.registry import load_registry
from sdekit.sde import SubVPSDE, VESDE, VPSDE

from .quality import MIXTURES, make_mixture
from .run import machine_info

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
DEFAULTS = {"samplers": "dpm_solver,dpm_solver_sde,unipc", "schedules": "logsnr,quadratic,vp_quadratic",
            "steps": "5,10,20", "sdes": "vp,subvp,ve", "mixtures": ",".join(MIXTURES), "seeds": "0,1"}


def measure(sde_name, mixture, sampler, steps, schedule, n, seeds, registry) -> dict:
    sde, gmm = SDES[sde_name](), make_mixture(MIXTURES[mixture])
    values, ses = [], []
    for seed in seeds:
        x = sdekit.sample(gmm.score_fn(sde), sde, (n, *gmm.item_shape), sampler, steps=steps, schedule=schedule,
                          seed=seed, dtype=torch.float64, registry=registry).samples
        if not bool(torch.isfinite(x).all()):
            return {"mmd": math.nan, "mmd_se": math.nan}
        res = mixture_mmd(x, gmm)
        values.append(res.mmd2), ses.append(res.se)
    return {"mmd": statistics.fmean(values), "mmd_se": math.sqrt(sum(s * s for s in ses)) / len(ses)}


def markdown(rows, plan) -> str:
    lines = [f"# 1000 x MMD^2 to the exact law by time grid (n = {plan['n']}, seeds {plan['seeds']}, means)", "",
             "Bold: the lowest of the row. 0 is exact; the standard errors are in schedules.json.", ""]
    schedules = plan["schedules"]
    lines += ["| SDE | mixture | sampler | steps | " + " | ".join(schedules) + " |",
              "|---|---|---|---|" + "---|" * len(schedules)]
    keys = list(dict.fromkeys((r["sde"], r["mixture"], r["sampler"], r["steps"]) for r in rows))
    for key in keys:
        cells = {r["schedule"]: r for r in rows if (r["sde"], r["mixture"], r["sampler"], r["steps"]) == key}
        best = min((c["mmd"] for c in cells.values() if not math.isnan(c["mmd"])), default=math.nan)
        text = [("nan" if math.isnan(cells[s]["mmd"]) else
                 (f"**{1e3 * cells[s]['mmd']:.2f}**" if cells[s]["mmd"] == best else f"{1e3 * cells[s]['mmd']:.2f}"))
                for s in schedules]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | " + " | ".join(text) + " |")
    wins = {s: sum(1 for key in keys if min(schedules, key=lambda q: _mmd(rows, key, q)) == s) for s in schedules}
    lines += ["", "Rows where each grid is the lowest: " + ", ".join(f"{s} {w}" for s, w in wins.items()), ""]
    return "\n".join(lines)


def _mmd(rows, key, schedule):
    value = next(r["mmd"] for r in rows if (r["sde"], r["mixture"], r["sampler"], r["steps"], r["schedule"])
                 == (*key, schedule))
    return math.inf if math.isnan(value) else value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key}", default=value, metavar="LIST", help=f"comma-separated (default {value})")
    parser.add_argument("-n", "--samples", type=int, default=2000, metavar="N", help="samples per set")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/schedules"), metavar="DIR")
    args = parser.parse_args(argv)
    plan = {k: getattr(args, k).split(",") for k in DEFAULTS}
    plan["steps"], plan["seeds"] = [int(s) for s in plan["steps"]], [int(s) for s in plan["seeds"]]
    plan["n"] = args.samples
    registry = load_registry(strict=True)
    missing = [s for s in plan["samplers"] if s not in registry.names()]
    if missing:
        print(f"skipping samplers that are not installed: {', '.join(missing)}", file=sys.stderr)
        plan["samplers"] = [s for s in plan["samplers"] if s not in missing]
    rows, start = [], time.perf_counter()
    for sde_name in plan["sdes"]:
        for mixture in plan["mixtures"]:
            for sampler in plan["samplers"]:
                for steps in plan["steps"]:
                    row = {"sde": sde_name, "mixture": mixture, "sampler": sampler, "steps": steps}
                    cells = {s: measure(sde_name, mixture, sampler, steps, s, args.samples, plan["seeds"], registry)
                             for s in plan["schedules"]}
                    rows += [{**row, "schedule": s, **c} for s, c in cells.items()]
                    print(f"{sde_name:5s} {mixture:9s} {sampler:15s} {steps:3d} "
                          + " ".join(f"{s}:{1e3 * c['mmd']:8.2f}" for s, c in cells.items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info({}), "plan": plan, "rows": rows, "seconds": time.perf_counter() - start}
    (args.out / "schedules.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "schedules.md").write_text(markdown(rows, plan))
    print(f"wrote {args.out / 'schedules.json'} and {args.out / 'schedules.md'}")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
