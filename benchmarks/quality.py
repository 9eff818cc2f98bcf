"""Sample quality against score evaluations: sdekit's samplers beside diffusers' and k-diffusion's.

    .venv/bin/python -m benchmarks.run [--quick] [--out DIR]      (the entry point; see benchmarks/README.md)

Every sampler of :mod:`benchmarks.peers` draws ``n`` samples of each mixture
with the exact score under sdekit's default VP SDE, with at most 5, 10, 20,
50, 100 and 1000 score evaluations (adaptive samplers: the tightest tolerance
of :data:`benchmarks.peers.TOLERANCES` whose median evaluations fit), once per
seed. Two numbers per sample set, each against exact draws of the mixture:

- ``sw``: sliced 2-Wasserstein distance (:func:`sdekit.metrics.sliced_wasserstein`)
  to an exact reference set of the same size;
- ``tv``: total variation between the mixture's weights and the samples' mode
  weights (argmax of the exact posterior p(k | x), :func:`sdekit.metrics.mode_weights`).

Each is the median over the seeds. The noise floor is the same two numbers for
exact draws in place of a sampler's (medians over the seeds too): a sampler at
the floor is indistinguishable from the exact law at this ``n``.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass

import torch

from sdekit.metrics import mode_weights, sliced_wasserstein
from sdekit.oracle import GaussianMixture, named_mixture

from .peers import TOLERANCES, Entry

BUDGETS = (5, 10, 20, 50, 100, 1000)
#: the budgets at which the goal of issue 7 is checked
GOAL_BUDGETS = (10, 20)
#: short name -> mixture spec (``skewed`` is built here, the rest are sdekit's named mixtures)
MIXTURES = {
    "ring8": "ring8",
    "random16": "random:dim=16,components=8,seed=0",
    "random64": "random:dim=64,components=8,seed=1",
    "skewed8": "skewed:dim=8,seed=3",
}
REFERENCE_SEED = 10_000


def skewed(dim: int = 8, seed: int = 3) -> GaussianMixture:
    """A harder mixture: five narrow components (std 0.1) with weights 0.5, 0.25, 0.15, 0.07, 0.03,
    means N(0, 3^2 I) in ``dim`` dimensions (seeded). The small components are easy to lose."""
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(5, dim, generator=g, dtype=torch.float64)
    return GaussianMixture([0.5, 0.25, 0.15, 0.07, 0.03], means, torch.full((5,), 0.1))


def make_mixture(spec: str) -> GaussianMixture:
    name, _, args = spec.partition(":")
    if name != "skewed":
        return named_mixture(spec)
    kwargs = {k: int(v) for k, v in (a.split("=") for a in args.split(",") if a)}
    return skewed(**kwargs)


def mode_tv(gmm: GaussianMixture, x: torch.Tensor) -> float:
    """Total variation between the mixture weights and the mode weights of ``x`` under p_0."""
    return float(0.5 * (mode_weights(gmm.posterior(x.double())) - gmm.weights).abs().sum())


@dataclass
class Problem:
    """A mixture, its exact reference set, and the noise floor at ``n`` samples."""

    name: str
    spec: str
    gmm: GaussianMixture
    reference: torch.Tensor
    floor_sw: float
    floor_tv: float

    @classmethod
    def build(cls, name: str, spec: str, n: int, seeds) -> "Problem":
        gmm = make_mixture(spec)
        ref = gmm.sample(n, torch.Generator().manual_seed(REFERENCE_SEED))
        exact = [gmm.sample(n, torch.Generator().manual_seed(20_000 + s)) for s in seeds]
        return cls(name, spec, gmm, ref, statistics.median(sliced_wasserstein(x, ref) for x in exact),
                   statistics.median(mode_tv(gmm, x) for x in exact))

    def score(self, x: torch.Tensor) -> tuple[float, float]:
        if not bool(torch.isfinite(x).all()):
            return math.nan, math.nan
        return sliced_wasserstein(x, self.reference), mode_tv(self.gmm, x)


def _median(values):
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else statistics.median(values)


def _one(entry: Entry, problem: Problem, budget_or_level: int, n: int, seeds) -> dict:
    """Median sw, tv and nfe over the seeds (or the error that stopped the sampler)."""
    sws, tvs, nfes, details = [], [], [], []
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # torchsde's BrownianTree: float rounding at the interval's ends
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            for seed in seeds:
                d = entry.draw(problem.gmm, budget_or_level, n, seed)
                sw, tv = problem.score(d.x)
                sws.append(sw), tvs.append(tv), nfes.append(d.nfe), details.append(d.detail)
    except Exception as err:  # noqa: BLE001 (a sampler that fails here is a result, not a crash)
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return {"sw": _median(sws), "tv": _median(tvs), "nfe": int(statistics.median(nfes)), "sw_all": sws,
            "tv_all": tvs, "nfe_all": nfes, "detail": details[0], "error": None,
            "seconds": time.perf_counter() - start}  # wall time on a shared machine: bookkeeping only


def measure(entries: list[Entry], problem: Problem, budgets, n: int, seeds, log=print) -> list[dict]:
    """One row per (entry, budget): median sw / tv / nfe, or the error."""
    rows = []
    for entry in entries:
        base = {"mixture": problem.name, "family": entry.family, "sampler": entry.name, "evals": entry.evals,
                "adaptive": entry.adaptive, "stochastic": entry.stochastic}
        if entry.adaptive:
            levels = []
            for level in range(len(TOLERANCES)):
                res = _one(entry, problem, level, n, seeds)
                levels.append(res)
                if res["error"] or res["nfe"] > max(budgets):
                    break
            for budget in budgets:
                fits = [r for r in levels if not r["error"] and r["nfe"] <= budget]
                res = fits[-1] if fits else {"error": f"fewest evaluations over {len(levels)} tolerances: "
                                             f"{min((r['nfe'] for r in levels if not r['error']), default='-')}"}
                rows.append({**base, "budget": budget, **res})
        else:
            for budget in budgets:
                rows.append({**base, "budget": budget, **_one(entry, problem, budget, n, seeds)})
        log(f"  {entry.label:45s} " + " ".join(_cell(r) for r in rows[-len(budgets):]))
    return rows


def _cell(row: dict, width: int = 12) -> str:
    if row.get("error"):
        return f"{'-':>{width}s}"
    if math.isnan(row["sw"]):
        return f"{'nan':>{width}s}"
    return f"{row['sw']:.3f}/{row['tv']:.3f}".rjust(width)


def winners(rows: list[dict], problems: dict, budgets) -> list[dict]:
    """Per mixture and budget: the best (lowest median sw) sampler of each family, and the best overall."""
    out = []
    for name in problems:
        for budget in budgets:
            ok = [r for r in rows if r["mixture"] == name and r["budget"] == budget and not r.get("error")
                  and not math.isnan(r["sw"])]
            best = {}
            for r in ok:
                if r["family"] not in best or r["sw"] < best[r["family"]]["sw"]:
                    best[r["family"]] = r
            overall = min(best.values(), key=lambda r: r["sw"]) if best else None
            peers = [r for f, r in best.items() if f != "sdekit"]
            best_peer = min(peers, key=lambda r: r["sw"]) if peers else None
            out.append({"mixture": name, "budget": budget,
                        "best": {f: {"sampler": r["sampler"], "sw": r["sw"], "tv": r["tv"], "nfe": r["nfe"]}
                                 for f, r in best.items()},
                        "winner": overall and f"{overall['family']}:{overall['sampler']}",
                        "sdekit_vs_best_peer_sw": (best["sdekit"]["sw"] / best_peer["sw"]
                                                   if best_peer and "sdekit" in best else None),
                        "sdekit_vs_best_peer_tv": (best["sdekit"]["tv"] - best_peer["tv"]
                                                   if best_peer and "sdekit" in best else None)})
    return out


def markdown(rows: list[dict], problems: dict, budgets, wins: list[dict], n: int, seeds, status: dict) -> str:
    """Tables: per mixture, median sw / tv of every sampler at every budget; then who wins."""
    lines = [f"# Sample quality against score evaluations (n = {n}, {len(seeds)} seeds, medians)", "",
             "Cells: sliced W2 to exact samples / mode-weight TV; `-` = cannot run within the budget or "
             "failed (see the JSON for the message); `nan` = non-finite samples. Adaptive samplers: the "
             "tightest tolerance whose median evaluations fit, with those evaluations in brackets; "
             "fixed-step ones use the most steps that fit (Heun-type: 2/step - 1).", "",
             "Peers: " + ", ".join(f"{k} {v}" for k, v in status.items()), ""]
    for name, problem in problems.items():
        lines += [f"## {name} (`{problem.spec}`, D = {problem.gmm.dim}, K = {problem.gmm.num_components})", "",
                  f"noise floor (exact samples): sw {problem.floor_sw:.4f}, tv {problem.floor_tv:.4f}", "",
                  "| sampler | evals | " + " | ".join(f"{b}" for b in budgets) + " |",
                  "|---|---|" + "---|" * len(budgets)]
        sub = [r for r in rows if r["mixture"] == name]
        labels = list(dict.fromkeys((r["family"], r["sampler"]) for r in sub))
        best = {(w["budget"]): w["winner"] for w in wins if w["mixture"] == name}
        for family, sampler in labels:
            cells = []
            for b in budgets:
                r = next(r for r in sub if (r["family"], r["sampler"], r["budget"]) == (family, sampler, b))
                if r.get("error"):
                    cells.append("-")
                elif math.isnan(r["sw"]):
                    cells.append("nan")
                else:
                    text = f"{r['sw']:.3f} / {r['tv']:.3f}" + (f" [{r['nfe']}]" if r["adaptive"] else "")
                    cells.append(f"**{text}**" if best[b] == f"{family}:{sampler}" else text)
            lines.append(f"| {family}:{sampler} | {r['evals']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Who wins (lowest median sliced W2; mode TV beside it)", "",
              "| mixture | evals | best sdekit | best diffusers | best k-diffusion | winner | sdekit sw / best peer sw |",
              "|---|---|---|---|---|---|---|"]
    for w in wins:
        cell = lambda f: (f"{w['best'][f]['sampler']} {w['best'][f]['sw']:.3f} / {w['best'][f]['tv']:.3f}"  # noqa: E731
                          if f in w["best"] else "-")
        ratio = w["sdekit_vs_best_peer_sw"]
        lines.append(f"| {w['mixture']} | {w['budget']} | {cell('sdekit')} | {cell('diffusers')} | "
                     f"{cell('k-diffusion')} | {w['winner']} | {'-' if ratio is None else f'{ratio:.2f}'} |")
    lines.append("")
    return "\n".join(lines)


FAMILY_STYLE = {"sdekit": ("-", "tab:blue"), "diffusers": ("--", "tab:orange"), "k-diffusion": (":", "tab:green")}


def plot(rows: list[dict], problems: dict, path_stem) -> list[str]:
    """sw and tv against evaluations, one panel per mixture, one line per sampler; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric, ylabel in (("sw", "sliced W2 to exact samples"), ("tv", "mode-weight TV")):
        fig, axes = plt.subplots(1, len(problems), figsize=(5.0 * len(problems), 4.6), squeeze=False)
        for ax, (name, problem) in zip(axes[0], problems.items()):
            sub = [r for r in rows if r["mixture"] == name and not r.get("error") and not math.isnan(r["sw"])]
            labels = list(dict.fromkeys((r["family"], r["sampler"]) for r in sub))
            cmaps = {f: plt.get_cmap(c) for f, c in (("sdekit", "Blues"), ("diffusers", "Oranges"),
                                                      ("k-diffusion", "Greens"))}
            count = {f: sum(1 for l in labels if l[0] == f) for f in FAMILY_STYLE}
            seen = {f: 0 for f in FAMILY_STYLE}
            for family, sampler in labels:
                pts = sorted({(r["nfe"], r[metric]) for r in sub if (r["family"], r["sampler"]) == (family, sampler)})
                seen[family] += 1
                color = cmaps[family](0.35 + 0.6 * seen[family] / max(count[family], 1))
                ax.plot([p[0] for p in pts], [max(p[1], 1e-4) for p in pts], FAMILY_STYLE[family][0], marker="o",
                        markersize=3, color=color, linewidth=1.2, label=f"{family}:{sampler}")
            floor = problem.floor_sw if metric == "sw" else problem.floor_tv
            ax.axhline(max(floor, 1e-4), color="k", linewidth=0.8, linestyle="-.", label="exact (noise floor)")
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.set_title(f"{name} (D = {problem.gmm.dim})")
            ax.set_xlabel("score evaluations")
            ax.grid(True, which="major", alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        handles, labels = axes[0][-1].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        path = f"{path_stem}_{metric}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
