"""Writing and reading sample files: atomic, self-describing, no pickle.

A samples file is an ``.npz`` with two arrays:

- ``samples``: (B, *item_shape), the dtype the sampler produced;
- ``provenance``: a 0-d unicode array holding a JSON object (sampler, resolved
  options, seeds, versions, command line, ...), so ``np.load(path,
  allow_pickle=False)`` reads the whole file.

Every writer here goes through :func:`atomic_write`: a temporary file in the
target's directory, then ``os.replace``, so a reader never sees a half-written
file and an interrupted run leaves the earlier file intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from .errors import SdekitError, ShapeError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary binary file beside ``path``; on success it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    # not mkstemp: its files are 0600; this one gets the usual permissions (umask)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_samples(path: str | os.PathLike, samples: np.ndarray, provenance: dict) -> Path:
    """Write ``samples`` and ``provenance`` (JSON-ready) to an ``.npz`` at ``path``, atomically."""
    text = json.dumps(provenance, default=str)
    with atomic_write(path) as f:
        np.savez(f, samples=np.asarray(samples), provenance=np.array(text, dtype=np.str_))
    return Path(path)


def load_samples(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a file written by :func:`save_samples`: ``(samples, provenance)``, without pickle."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"samples", "provenance"} - set(data.files)
            if missing:
                raise SdekitError(f"{path} is not an sdekit samples file (no {', '.join(sorted(missing))})")
            samples, provenance = data["samples"], data["provenance"]
    except (OSError, ValueError) as err:
        raise SdekitError(f"cannot read samples from {path}: {err}") from err
    if provenance.ndim != 0 or provenance.dtype.kind != "U":
        raise SdekitError(f"{path}: 'provenance' must be a 0-d unicode array holding JSON")
    return samples, json.loads(provenance.item())


def _plane(x: np.ndarray) -> np.ndarray:
    """Items (B, ...) flattened to (B, D); the first two coordinates are plotted."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ShapeError(f"need samples of shape (B, ...) with B > 0 to plot, got {x.shape}")
    return x.reshape(len(x), -1)


def save_scatter(path: str | os.PathLike, samples: np.ndarray, reference: np.ndarray | None = None, *,
                 title: str = "", labels: tuple[str, str] = ("generated", "exact")) -> Path:
    """A PNG scatter plot of ``samples`` beside ``reference`` (optional), written atomically.

    2-D items are plotted as they are, larger ones by their first two
    coordinates, 1-D items as histograms. Uses matplotlib's Agg backend through
    a ``Figure`` of its own (imported here, never pyplot), so no global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(labels[0], _plane(samples))]
    if reference is not None:
        panels.append((labels[1], _plane(reference)))
    fig = Figure(figsize=(4.2 * len(panels), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False)[0]
    for ax, (label, x) in zip(axes, panels):
        if x.shape[1] == 1:
            ax.hist(x[:, 0], bins=60, color="C0" if ax is axes[0] else "C1")
            ax.set_xlabel("x[0]")
        else:
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, linewidths=0, color="C0" if ax is axes[0] else "C1")
            ax.set_xlabel("x[0]")
            if ax is axes[0]:
                ax.set_ylabel("x[1]")
            ax.set_aspect("equal")
        ax.set_title(f"{label} (n={len(x)})", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    return Path(path)
