"""sdekit's samplers against diffusers' and k-diffusion's on exact Gaussian-mixture scores (issue 7).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.run --quick            # a check: ring8, 10 and 20 evaluations
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.run                    # the full quality run
    .venv/bin/python -m benchmarks.run --timing --skip-quality              # the timing parts, on a quiet machine

Writes into ``--out`` (default ``benchmarks/out/quality``, ``benchmarks/out/quick``
with ``--quick``): ``quality.json`` (every row, the winners, floors, machine and
versions), ``quality.md`` (the tables) and ``quality_sw.png`` / ``quality_tv.png`` /
``quality_mmd.png``;
with ``--timing`` (or ``--quick``) also ``timing.json``. A peer that does not
import is named in the output with the reason, and the run goes on without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import sdekit

from . import quality, timing
from .peers import all_entries

QUICK = {"mixtures": ["ring8"], "budgets": [10, 20], "n": 500, "seeds": [0]}
FULL = {"mixtures": list(quality.MIXTURES), "budgets": list(quality.BUDGETS), "n": 4000, "seeds": [0, 1, 2]}


def machine_info(status: dict) -> dict:
    """CPU, threads and versions, recorded next to every result."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip())
    except OSError:
        commit, dirty = None, None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "sdekit": sdekit.__version__, "git_commit": commit, "git_dirty": dirty, "peers": status}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run (one mixture, 10 and 20 evaluations, "
                        "500 samples, one seed) plus a check of the timing parts")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="output directory")
    parser.add_argument("--mixtures", default=None, metavar="NAMES",
                        help=f"comma-separated, from {', '.join(quality.MIXTURES)}")
    parser.add_argument("--budgets", default=None, metavar="LIST", help="comma-separated evaluation budgets")
    parser.add_argument("-n", "--samples", type=int, default=None, metavar="N", help="samples per set")
    parser.add_argument("--seeds", default=None, metavar="LIST", help="comma-separated seeds (medians over them)")
    parser.add_argument("--timing", action="store_true", help="also run the timing parts at full size "
                        "(for a quiet machine)")
    parser.add_argument("--skip-quality", action="store_true", help="only the timing parts")
    parser.add_argument("--no-peers", action="store_true", help="sdekit's samplers only")
    args = parser.parse_args(argv)

    plan = dict(QUICK if args.quick else FULL)
    if args.mixtures:
        plan["mixtures"] = args.mixtures.split(",")
    if args.budgets:
        plan["budgets"] = [int(b) for b in args.budgets.split(",")]
    if args.samples:
        plan["n"] = args.samples
    if args.seeds:
        plan["seeds"] = [int(s) for s in args.seeds.split(",")]
    unknown = [m for m in plan["mixtures"] if m not in quality.MIXTURES]
    if unknown:
        parser.error(f"unknown mixture(s) {unknown}; choose from {', '.join(quality.MIXTURES)}")
    out = args.out or Path("benchmarks/out") / ("quick" if args.quick else "quality")
    out.mkdir(parents=True, exist_ok=True)

    entries, status = all_entries()
    if args.no_peers:
        entries = [e for e in entries if e.family == "sdekit"]
        status = {k: "skipped (--no-peers)" for k in status}
    info = machine_info(status)
    for peer, state in status.items():
        print(f"{peer}: {state}")
    result = {"machine": info, "plan": plan}

    if not args.skip_quality:
        start = time.perf_counter()
        problems, rows = {}, []
        for name in plan["mixtures"]:
            problems[name] = problem = quality.Problem.build(name, quality.MIXTURES[name], plan["n"], plan["seeds"])
            print(f"\n{name}: n={plan['n']}, seeds {plan['seeds']}, floor sw {problem.floor_sw:.4f} "
                  f"tv {problem.floor_tv:.4f}; cells sw/tv/1000 x mmd at budgets {plan['budgets']}")
            rows += quality.measure(entries, problem, plan["budgets"], plan["n"], plan["seeds"])
        wins = quality.winners(rows, problems, plan["budgets"])
        table = quality.markdown(rows, problems, plan["budgets"], wins, plan["n"], plan["seeds"], status)
        plots = quality.plot(rows, problems, str(out / "quality"))
        result["quality"] = {
            "floors": {k: {"sw": p.floor_sw, "tv": p.floor_tv, "sw_all": list(p.floor_sw_all), "spec": p.spec}
                       for k, p in problems.items()},
            "rows": rows, "winners": wins, "seconds": time.perf_counter() - start}
        (out / "quality.md").write_text(table)
        (out / "quality.json").write_text(json.dumps(_json_safe(result), indent=1))
        print(f"\nwrote {out / 'quality.json'}, {out / 'quality.md'}, {', '.join(plots)}")
        for w in wins:
            ratio = w["sdekit_vs_best_peer_sw"]
            print(f"  {w['mixture']:10s} {w['budget']:5d}: winner {w['winner']}"
                  + ("" if ratio is None else f"  (sdekit / best peer sw = {ratio:.2f})")
                  + f"; by mmd {w['winner_mmd']}"
                  + ("" if w["sdekit_vs_best_peer_mmd"] is None
                     else f" (sdekit against best peer: {w['sdekit_vs_best_peer_mmd']})"))

    if args.quick or args.timing:
        timings = timing.run_all(quick=args.quick and not args.timing)
        timings["machine"] = info
        (out / "timing.json").write_text(json.dumps(_json_safe(timings), indent=1))
        print(f"wrote {out / 'timing.json'}" + ("" if timings["for_reporting"] else " (check only: not results)"))
        result["timing"] = timings
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
