"""Sample quality against score evaluations: sdekit's samplers beside diffusers' and k-diffusion's.

    .venv/bin/python -m benchmarks.run [--quick] [--out DIR]      (the entry point; see benchmarks/README.md)

Every sampler of :mod:`benchmarks.peers` draws ``n`` samples of each mixture
with the exact score under sdekit's default VP SDE, with at most 5, 10, 20,
50, 100 and 1000 score evaluations (adaptive samplers: the tightest tolerance
of :data:`benchmarks.peers.TOLERANCES` whose median evaluations fit), once per
seed. Three numbers per sample set:

- ``sw``: sliced 2-Wasserstein distance (:func:`sdekit.metrics.sliced_wasserstein`)
  to an exact reference set of the same size;
- ``tv``: total variation between the mixture's weights and the samples' mode
  weights (argmax of the exact posterior p(k | x), :func:`sdekit.metrics.mode_weights`);
- ``mmd``: the unbiased squared MMD to the exact mixture law itself
  (:func:`sdekit.metrics.mixture_mmd`, Gaussian kernels on the components'
  scale, closed-form expectations under the mixture), with its standard error.

``sw`` and ``tv`` are medians over the seeds. Their noise floor is the same
two numbers for exact draws in place of a sampler's (medians over the seeds
too). Both are noisy and biased: a sampler can sit *below* the floor by the
luck of its seeds (k-diffusion's ``dpmpp_sde`` on ring8, see docs/benchmarks.md)
or by being slightly narrower than the truth (a smaller finite-sample W2 term).
``mmd`` has no floor: its expectation is 0 for the exact law and positive for
every other, so it is averaged over the seeds
(``mmd_se``: the standard error of that mean) and two samplers whose ``mmd``
differ by less than twice their combined standard error are a tie.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass

import torch

from sdekit.metrics import mixture_mmd, mode_weights, sliced_wasserstein
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
    #: the sliced W2 of each exact set to the reference (the floor's spread: one set's noise)
    floor_sw_all: tuple = ()

    @classmethod
    def build(cls, name: str, spec: str, n: int, seeds) -> "Problem":
        gmm = make_mixture(spec)
        ref = gmm.sample(n, torch.Generator().manual_seed(REFERENCE_SEED))
        exact = [gmm.sample(n, torch.Generator().manual_seed(20_000 + s)) for s in seeds]
        sws = tuple(sliced_wasserstein(x, ref) for x in exact)
        return cls(name, spec, gmm, ref, statistics.median(sws), statistics.median(mode_tv(gmm, x) for x in exact),
                   sws)

    def score(self, x: torch.Tensor) -> tuple[float, float, float, float, tuple]:
        """sw, tv, mmd, mmd_se and mmd's share per kernel width of one sample set (nan where it is
        not finite)."""
        if not bool(torch.isfinite(x).all()):
            return math.nan, math.nan, math.nan, math.nan, ()
        mmd = mixture_mmd(x, self.gmm)
        return sliced_wasserstein(x, self.reference), mode_tv(self.gmm, x), mmd.mmd2, mmd.se, mmd.per_bandwidth


def _median(values):
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else statistics.median(values)


def _one(entry: Entry, problem: Problem, budget_or_level: int, n: int, seeds) -> dict:
    """Median sw, tv and nfe, mean mmd (and its standard error) over the seeds, or the error
    that stopped the sampler."""
    sws, tvs, mmds, ses, parts, nfes, details = [], [], [], [], [], [], []
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # torchsde's BrownianTree: float rounding at the interval's ends
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            for seed in seeds:
                d = entry.draw(problem.gmm, budget_or_level, n, seed)
                sw, tv, mmd, se, part = problem.score(d.x)
                sws.append(sw), tvs.append(tv), mmds.append(mmd), ses.append(se), parts.append(part)
                nfes.append(d.nfe), details.append(d.detail)
    except Exception as err:  # noqa: BLE001 (a sampler that fails here is a result, not a crash)
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return {"sw": _median(sws), "tv": _median(tvs), "mmd": statistics.fmean(mmds),
            "mmd_se": math.sqrt(sum(se * se for se in ses)) / len(ses),
            # mean share of each kernel width (sdekit.metrics.BANDWIDTH_FACTORS x one component's scale)
            "mmd_per_width": [statistics.fmean(p) for p in zip(*parts)] if all(parts) else None,
            "nfe": int(statistics.median(nfes)),
            "sw_all": sws, "tv_all": tvs, "mmd_all": mmds, "nfe_all": nfes, "detail": details[0], "error": None,
            "seconds": time.perf_counter() - start}  # wall time on a shared machine: bookkeeping only


def measure(entries: list[Entry], problem: Problem, budgets, n: int, seeds, log=print) -> list[dict]:
    """One row per (entry, budget): median sw / tv / nfe, or the error."""
    rows = []
    for entry in entries:
        base = {"mixture": problem.name, "family": entry.family, "sampler": entry.name, "evals": entry.evals,
                "adaptive": entry.adaptive, "stochastic": entry.stochastic, "builtin": entry.builtin}
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


def _cell(row: dict, width: int = 19) -> str:
    if row.get("error"):
        return f"{'-':>{width}s}"
    if math.isnan(row["sw"]):
        return f"{'nan':>{width}s}"
    return f"{row['sw']:.3f}/{row['tv']:.3f}/{1e3 * row['mmd']:.2f}".rjust(width)


#: two samplers' mmd are a tie when they differ by less than this many combined standard errors
TIE_SE = 2.0


def _best_by(rows: list[dict], key: str) -> dict:
    """family -> its row with the lowest ``key``."""
    best = {}
    for r in rows:
        if r["family"] not in best or r[key] < best[r["family"]][key]:
            best[r["family"]] = r
    return best


def mmd_verdict(a: dict, b: dict) -> str:
    """'better', 'worse' or 'tie' for row ``a`` against row ``b`` by mmd (TIE_SE combined standard errors)."""
    diff, se = a["mmd"] - b["mmd"], math.hypot(a["mmd_se"], b["mmd_se"])
    return "tie" if abs(diff) <= TIE_SE * se else ("better" if diff < 0 else "worse")


def winners(rows: list[dict], problems: dict, budgets) -> list[dict]:
    """Per mixture and budget, for each family its best sampler by median sw and by mean mmd, the best
    overall by each, and sdekit's best against the best peer's (sw ratio; mmd verdict)."""
    out = []
    for name in problems:
        for budget in budgets:
            ok = [r for r in rows if r["mixture"] == name and r["budget"] == budget and not r.get("error")
                  and not math.isnan(r["sw"])]
            entry = {"mixture": name, "budget": budget}
            for key in ("sw", "mmd"):
                best = _best_by(ok, key)
                overall = min(best.values(), key=lambda r: r[key]) if best else None
                peers = [r for f, r in best.items() if f != "sdekit"]
                best_peer = min(peers, key=lambda r: r[key]) if peers else None
                mine = best.get("sdekit")
                entry[f"best_{key}" if key != "sw" else "best"] = {
                    f: {"sampler": r["sampler"], "sw": r["sw"], "tv": r["tv"], "mmd": r["mmd"],
                        "mmd_se": r["mmd_se"], "nfe": r["nfe"]} for f, r in best.items()}
                winner = overall and f"{overall['family']}:{overall['sampler']}"
                entry["winner" if key == "sw" else "winner_mmd"] = winner
                if key == "sw":
                    entry["sdekit_vs_best_peer_sw"] = mine["sw"] / best_peer["sw"] if mine and best_peer else None
                    entry["sdekit_vs_best_peer_tv"] = mine["tv"] - best_peer["tv"] if mine and best_peer else None
                else:
                    entry["sdekit_vs_best_peer_mmd"] = mmd_verdict(mine, best_peer) if mine and best_peer else None
                    own = [r for r in ok if r["family"] == "sdekit" and r.get("builtin")]
                    own = min(own, key=lambda r: r["mmd"]) if own else None
                    entry["best_builtin_mmd"] = own and {"sampler": own["sampler"], "mmd": own["mmd"],
                                                         "mmd_se": own["mmd_se"], "nfe": own["nfe"]}
                    entry["builtin_vs_best_peer_mmd"] = mmd_verdict(own, best_peer) if own and best_peer else None
            out.append(entry)
    return out


def _mmd_text(r: dict) -> str:
    return f"{1e3 * r['mmd']:.2f} ± {1e3 * r['mmd_se']:.2f}"


def markdown(rows: list[dict], problems: dict, budgets, wins: list[dict], n: int, seeds, status: dict) -> str:
    """Tables: per mixture, median sw / tv and mean mmd of every sampler at every budget; then who wins."""
    lines = [f"# Sample quality against score evaluations (n = {n}, {len(seeds)} seeds)", "",
             "Cells of the first table of each mixture: sliced W2 to exact samples / mode-weight TV (medians "
             "over the seeds); of the second: 1000 x the unbiased squared MMD to the exact law (mean over the "
             "seeds; 0 = exact, the SE is in the JSON and the winners' table). `-` = cannot run within the "
             "budget or failed (see the JSON for the message); `nan` = non-finite samples. Adaptive samplers: "
             "the tightest tolerance whose median evaluations fit, with those evaluations in brackets; "
             "fixed-step ones use the most steps that fit (Heun-type: 2/step - 1).", "",
             "Peers: " + ", ".join(f"{k} {v}" for k, v in status.items()), ""]
    for name, problem in problems.items():
        sub = [r for r in rows if r["mixture"] == name]
        labels = list(dict.fromkeys((r["family"], r["sampler"]) for r in sub))
        best = {w["budget"]: (w["winner"], w["winner_mmd"]) for w in wins if w["mixture"] == name}
        lines += [f"## {name} (`{problem.spec}`, D = {problem.gmm.dim}, K = {problem.gmm.num_components})", "",
                  f"noise floor (exact samples): sw {problem.floor_sw:.4f}"
                  + (f" (each exact set: {min(problem.floor_sw_all):.4f}-{max(problem.floor_sw_all):.4f})"
                     if problem.floor_sw_all else "")
                  + f", tv {problem.floor_tv:.4f}; mmd: 0", ""]
        for which, metric in ((0, "sw / tv"), (1, "1000 x mmd")):
            lines += [f"| sampler ({metric}) | evals | " + " | ".join(f"{b}" for b in budgets) + " |",
                      "|---|---|" + "---|" * len(budgets)]
            for family, sampler in labels:
                cells = []
                for b in budgets:
                    r = next(r for r in sub if (r["family"], r["sampler"], r["budget"]) == (family, sampler, b))
                    if r.get("error"):
                        cells.append("-")
                        continue
                    if math.isnan(r["sw"]):
                        cells.append("nan")
                        continue
                    text = f"{r['sw']:.3f} / {r['tv']:.3f}" if which == 0 else f"{1e3 * r['mmd']:.2f}"
                    text += f" [{r['nfe']}]" if r["adaptive"] else ""
                    cells.append(f"**{text}**" if best[b][which] == f"{family}:{sampler}" else text)
                lines.append(f"| {family}:{sampler} | {r['evals']} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Who wins by sliced W2 (lowest median; mode TV beside it)", "",
              "| mixture | evals | best sdekit | best diffusers | best k-diffusion | winner | sdekit sw / best peer sw |",
              "|---|---|---|---|---|---|---|"]
    for w in wins:
        cell = lambda f: (f"{w['best'][f]['sampler']} {w['best'][f]['sw']:.3f} / {w['best'][f]['tv']:.3f}"  # noqa: E731
                          if f in w["best"] else "-")
        ratio = w["sdekit_vs_best_peer_sw"]
        lines.append(f"| {w['mixture']} | {w['budget']} | {cell('sdekit')} | {cell('diffusers')} | "
                     f"{cell('k-diffusion')} | {w['winner']} | {'-' if ratio is None else f'{ratio:.2f}'} |")
    lines += ["", f"## Who wins by MMD to the exact law (1000 x mean ± SE; tie: within {TIE_SE:g} combined SE)", "",
              "The last two columns: sdekit's best (plugins included), and its best built-in sampler, each "
              "against the best peer.", "",
              "| mixture | evals | best sdekit | best diffusers | best k-diffusion | winner | sdekit | "
              "best sdekit built-in | built-in |", "|---|---|---|---|---|---|---|---|---|"]
    for w in wins:
        cell = lambda f: (f"{w['best_mmd'][f]['sampler']} {_mmd_text(w['best_mmd'][f])}"  # noqa: E731
                          if f in w["best_mmd"] else "-")
        own = w["best_builtin_mmd"]
        lines.append(f"| {w['mixture']} | {w['budget']} | {cell('sdekit')} | {cell('diffusers')} | "
                     f"{cell('k-diffusion')} | {w['winner_mmd']} | {w['sdekit_vs_best_peer_mmd'] or '-'} | "
                     f"{own['sampler'] + ' ' + _mmd_text(own) if own else '-'} | "
                     f"{w['builtin_vs_best_peer_mmd'] or '-'} |")
    lines.append("")
    return "\n".join(lines)


FAMILY_STYLE = {"sdekit": ("-", "tab:blue"), "diffusers": ("--", "tab:orange"), "k-diffusion": (":", "tab:green")}


def plot(rows: list[dict], problems: dict, path_stem) -> list[str]:
    """sw, tv and mmd against evaluations, one panel per mixture, one line per sampler; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric, ylabel in (("sw", "sliced W2 to exact samples"), ("tv", "mode-weight TV"),
                           ("mmd", "squared MMD to the exact law (symlog)")):
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
                ys = [p[1] if metric == "mmd" else max(p[1], 1e-4) for p in pts]
                ax.plot([p[0] for p in pts], ys, FAMILY_STYLE[family][0], marker="o",
                        markersize=3, color=color, linewidth=1.2, label=f"{family}:{sampler}")
            floor = {"sw": problem.floor_sw, "tv": problem.floor_tv, "mmd": 0.0}[metric]
            ax.axhline(max(floor, 1e-4) if metric != "mmd" else 0.0, color="k", linewidth=0.8, linestyle="-.",
                       label="exact (noise floor; 0 for mmd)")
            ax.set_xscale("log")
            if metric == "mmd":  # linear within the typical standard error, log beyond
                se = max(statistics.median(r["mmd_se"] for r in sub) if sub else 1e-4, 1e-6)
                ax.set_yscale("symlog", linthresh=se)
                ax.set_ylim(bottom=-2 * se)  # below 0 is noise only: keep it to two standard errors
            else:
                ax.set_yscale("log")
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
