"""Likelihood analysis of a dataset under a model: batches, shards, summaries, TensorBoard.

:mod:`sdekit.likelihood` computes the log-likelihood of one batch; this module
runs it over a dataset and reports it, for ``sdekit likelihood`` and for
training's held-out bits/dim (``train.bpd_every``)::

    report = analyze(run.sde, run.score_fn, x, labels=y, levels=17, batch_size=128, seed=0)
    print(report.summary())                 # mean bpd, its standard error, nfe, ...
    write_tensorboard(report, "runs/digits_vp/likelihood", step=run.step)

**Batches and seeds.** Items are cut into batches of ``batch_size`` in order;
batch b draws its dequantization noise and Hutchinson probes from a generator
seeded by ``(seed, b)``, and the adaptive solver runs on that batch alone. A
batch's results therefore depend only on its items and ``(seed, b)``: under
``torchrun`` rank r integrates the batches b = r, r + W, ... with no collective
inside the solver (ranks take different numbers of steps; a collective there
would hang), and rank 0 gathers the one report a single process would give.

**Bits per dimension.** With ``levels`` (integer image data such as the
digits' 17 levels or 8-bit pixels), each item is dequantized and reported in
bits/dim as Song et al. 2021 do (:func:`sdekit.likelihood.bits_per_dim`);
without, the data are continuous and bits/dim is ``-log p(x) / (D ln 2)``.

**TensorBoard tags** (:func:`write_tensorboard`), at the global step given (a
checkpoint's training step, so several checkpoints of one run form a curve,
and several runs side by side compare under the same tags):

=================================  ==================================================
``likelihood/bpd``                  mean bits/dim over the items
``likelihood/bpd_se``               its standard error (std / sqrt(n))
``likelihood/nll``                  mean negative log-likelihood of the data (dequantized
                                    when discrete), nats per item
``likelihood/elbo_bpd``             the ELBO's bits/dim bound (when computed)
``likelihood/nfe``                  mean function evaluations per batch
``likelihood/bpd_class/<name>``     mean bits/dim of each class (labelled data)
``likelihood/bpd`` (histogram)      the per-item bits/dim
``likelihood/nfe`` (histogram)      function evaluations of each batch
``likelihood/divergence``           image: the divergence integrated from t_min to t,
                                    mean and a band over items, against t
=================================  ==================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .likelihood import bits_per_dim, elbo, log_likelihood
from .sde import SDE

#: times (fractions of [t_min, T]) at which the accumulated divergence is recorded
TRAJECTORY_POINTS = 33


@dataclass
class LikelihoodReport:
    """Per-item results (numpy, float64) and per-batch function evaluations.

    ``log_likelihood`` is in nats of the data as the model sees them (model
    space, dequantized when ``levels`` is set); ``bpd`` includes the
    dequantization offset. ``trajectory`` is ``(times (K,), delta (K, N))``:
    the divergence integrated from t_min to each time, per item.
    """

    log_likelihood: np.ndarray
    bpd: np.ndarray
    prior_log_prob: np.ndarray
    delta_log_prob: np.ndarray
    nfe: np.ndarray                       # (num_batches,)
    labels: np.ndarray | None = None
    classes: Sequence[str] = ()
    elbo_bpd: np.ndarray | None = None
    trajectory: tuple[np.ndarray, np.ndarray] | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.bpd)

    def summary(self) -> dict:
        """Means with standard errors, nfe, and bits/dim per class: JSON-ready."""
        n = len(self)
        se = float(self.bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        nll = self.bpd * (self.info.get("dim") or 1) * math.log(2.0)  # of the data: dequantized when discrete
        out = {"n": n, "bpd": float(self.bpd.mean()), "bpd_se": se,
               "nll": float(nll.mean()), "nfe_mean": float(self.nfe.mean()),
               "nfe_total": int(self.nfe.sum()), **self.info}
        if self.elbo_bpd is not None:
            out["elbo_bpd"] = float(self.elbo_bpd.mean())
            out["elbo_bpd_se"] = float(self.elbo_bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        if self.labels is not None:
            out["bpd_by_class"] = {self._name(k): float(self.bpd[self.labels == k].mean())
                                   for k in np.unique(self.labels)}
        return out

    def _name(self, k) -> str:
        return self.classes[int(k)] if int(k) < len(self.classes) else str(int(k))


def _batch_generator(device: torch.device, seed: int, batch: int) -> torch.Generator:
    return torch.Generator(device).manual_seed((seed * 1_000_003 + batch) % 2**63)


def analyze(sde: SDE, score_fn: Callable, x: torch.Tensor, *, labels: torch.Tensor | None = None,
            classes: Sequence[str] = (), levels: int | None = None, batch_size: int = 128, seed: int = 0,
            dequantize: int = 1, with_elbo: bool = False, elbo_times: int = 32, label_key: str | None = None,
            rank: int = 0, world: int = 1, gather: Callable | None = None, progress: bool = False,
            **ode_kwargs) -> LikelihoodReport | None:
    """Log-likelihoods of the items ``x`` (N, ...) (on the device the score wants) in batches.

    ``levels`` makes the data discrete (dequantized bits/dim); ``ode_kwargs`` go
    to :func:`sdekit.likelihood.log_likelihood` (``rtol``, ``atol``, ``method``,
    ``divergence``, ``probe``, ``num_probes``, ``t_min``). ``with_elbo`` adds the
    ELBO bound in bits/dim (its own dequantization draw). ``label_key`` passes
    each item's label to the score as that keyword (log p(x | y) of a
    conditional model); ``labels`` are otherwise only grouped by in the
    report. Under several processes (``rank``, ``world``) each
    integrates its share of the batches and ``gather(list) -> list of lists``
    (rank 0) or None (others) collects them; only rank 0 returns a report.
    """
    n, dim = x.shape[0], x[0].numel()
    t_min = ode_kwargs.get("t_min") or sde.t_min
    record = np.linspace(t_min, sde.T, TRAJECTORY_POINTS).tolist()
    record[-1] = float(sde.T)
    starts = list(range(0, n, batch_size))
    mine = starts[rank::world]
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="item", desc="likelihood", dynamic_ncols=True)
    rows, seen_bpd = [], []
    for lo in mine:
        b = lo // batch_size
        xb = x[lo:lo + batch_size]
        cond = {} if label_key is None else {label_key: labels[lo:lo + batch_size]}
        kwargs = ode_kwargs
        gen = _batch_generator(x.device, seed, b)
        if levels is None:
            res = log_likelihood(sde, score_fn, xb, generator=gen, cond=cond, record_times=record, **kwargs)
            bpd = res.bits_per_dim
            model_x = xb
        else:
            res = bits_per_dim(sde, score_fn, xb, levels=levels, dequantize=dequantize, generator=gen, cond=cond,
                               record_times=record, **kwargs)
            bpd = res.bits_per_dim
            model_x = (xb + 1.0) * 0.5 * (levels - 1)  # the levels; the ELBO sees their dequantized points
            model_x = (2.0 * (model_x.round() + torch.rand(xb.shape, generator=gen, device=xb.device,
                                                           dtype=xb.dtype)) / levels - 1.0)
        row = {"start": lo, "ll": res.log_likelihood, "bpd": bpd, "prior": res.prior_log_prob,
               "delta": res.delta_log_prob, "nfe": res.nfe, "traj": res.trajectory[1]}
        if with_elbo:
            bound = elbo(sde, score_fn, model_x, t_min=kwargs.get("t_min"), num_times=elbo_times, generator=gen,
                         cond=cond)
            offset = 0.0 if levels is None else dim * math.log(2.0 / levels)
            row["elbo_bpd"] = -(bound + offset) / (dim * math.log(2.0))
        rows.append({k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in row.items()})
        seen_bpd.append(row["bpd"].cpu())
        if bar is not None:
            bar.update(len(xb))
            bar.set_postfix(bpd=f"{float(torch.cat(seen_bpd).mean()):.4f}", nfe=res.nfe)
    if bar is not None:
        bar.close()
    if world > 1:
        everything = gather(rows)
        if everything is None:
            return None
        rows = [row for part in everything for row in part]
    rows.sort(key=lambda r: r["start"])
    cat = lambda key: torch.cat([r[key] for r in rows]).numpy().astype(np.float64)  # noqa: E731
    times = np.asarray(record, dtype=np.float64)
    return LikelihoodReport(
        log_likelihood=cat("ll"), bpd=cat("bpd"), prior_log_prob=cat("prior"), delta_log_prob=cat("delta"),
        nfe=np.array([r["nfe"] for r in rows]), labels=None if labels is None else labels.cpu().numpy(),
        classes=tuple(classes), elbo_bpd=cat("elbo_bpd") if with_elbo else None,
        trajectory=(times, torch.cat([r["traj"] for r in rows], dim=1).numpy().astype(np.float64)),
        info={"levels": levels, "dequantize": dequantize if levels else None, "batch_size": batch_size,
              "seed": seed, "dim": dim, "conditional": label_key is not None, **ode_kwargs})


def divergence_figure(report: LikelihoodReport, title: str = ""):
    """A matplotlib Figure (Agg, no pyplot): the divergence integrated from t_min to t, against t."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times, delta = report.trajectory
    per_dim = delta / (report.info.get("dim") or 1)
    fig = Figure(figsize=(5, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lo, mid, hi = np.percentile(per_dim, [10, 50, 90], axis=1)
    ax.fill_between(times, lo, hi, alpha=0.25, label="10-90% of items")
    ax.plot(times, per_dim.mean(axis=1), label="mean")
    ax.plot(times, mid, "--", lw=1, label="median")
    ax.set_xlabel("t")
    ax.set_ylabel("integral of div v from t_min to t (nats/dim)")
    ax.set_title(title or "divergence accumulated along the probability-flow ODE", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_tensorboard(report: LikelihoodReport, logdir, step: int, *, writer=None) -> None:
    """Write the tags of the module docstring at ``step`` (to ``writer``, or a new one in ``logdir``)."""
    own = writer is None
    if own:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(logdir))
    try:
        s = report.summary()
        writer.add_scalar("likelihood/bpd", s["bpd"], step)
        if not math.isnan(s["bpd_se"]):
            writer.add_scalar("likelihood/bpd_se", s["bpd_se"], step)
        writer.add_scalar("likelihood/nll", s["nll"], step)
        writer.add_scalar("likelihood/nfe", s["nfe_mean"], step)
        if "elbo_bpd" in s:
            writer.add_scalar("likelihood/elbo_bpd", s["elbo_bpd"], step)
        for name, value in s.get("bpd_by_class", {}).items():
            writer.add_scalar(f"likelihood/bpd_class/{name}", value, step)
        writer.add_histogram("likelihood/bpd", report.bpd, step)
        writer.add_histogram("likelihood/nfe", report.nfe.astype(np.float64), step)
        fig = divergence_figure(report, f"step {step}: mean bpd {s['bpd']:.4f}")
        fig.canvas.draw()
        image = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        writer.add_image("likelihood/divergence", image, step, dataformats="HWC")
    finally:
        if own:
            writer.close()
