"""Writing and reading sample files: atomic, self-describing, no pickle.

A samples file is an ``.npz`` with two arrays:

- ``samples``: (B, *item_shape), the dtype the sampler produced;
- ``provenance``: a 0-d unicode array holding a JSON object (sampler, resolved
  options, seeds, versions, command line, ...), so ``np.load(path,
  allow_pickle=False)`` reads the whole file.

Every writer here goes through :func:`atomic_write`: a temporary file in the
target's directory, then ``os.replace``, so a reader never sees a half-written
file and an interrupted run leaves the earlier file intact.

:func:`read_image` and :func:`read_mask` read the inputs of inpainting and
colorization (:mod:`sdekit.controllable`): PNG/JPEG through PIL, or ``.npy``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import torch

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


def image_grid(images, nrow: int | None = None, *, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Images (B, C, H, W) tiled row by row into one uint8 array (H', W', C), C 1 or 3.

    ``images`` are floats in [-1, 1] (sdekit's scale; clipped, mapped as
    :func:`sdekit.data.to_images`) or uint8 pixels, as a tensor or array.
    ``nrow`` images per row (default: ceil(sqrt(B))); ``pad`` gray (128) pixels
    around every tile; then every pixel repeated ``scale`` x ``scale`` times.
    """
    from .data import to_images  # data imports this module

    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).detach().cpu()
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] not in (1, 3):
        raise ShapeError(f"need images (B, C, H, W) with B > 0 and C 1 or 3 to tile, got {tuple(x.shape)}")
    pixels = (x if x.dtype == torch.uint8 else to_images(x.to(torch.float32))).numpy()
    b, c, h, w = pixels.shape
    nrow = max(1, min(int(nrow or np.ceil(np.sqrt(b))), b))
    rows = -(-b // nrow)
    grid = np.full((pad + rows * (h + pad), pad + nrow * (w + pad), c), 128, dtype=np.uint8)
    for i in range(b):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[top:top + h, left:left + w] = pixels[i].transpose(1, 2, 0)
    return grid.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else grid


def save_image_grid(path: str | os.PathLike, images, nrow: int | None = None, *, pad: int = 1,
                    scale: int = 1) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG at ``path``, atomically (gray for C = 1, else RGB)."""
    from PIL import Image

    grid = image_grid(images, nrow, pad=pad, scale=scale)
    with atomic_write(path) as f:
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(f, format="PNG")
    return Path(path)


# -- images and masks for inpainting and colorization (sdekit.controllable) ----------

def _pil_planes(path: Path, what: str) -> np.ndarray:
    """A PIL-readable image as (C, H, W) float64 in [0, 1]: C = 1 for gray, 3 for color; alpha dropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "F":
                raise SdekitError(f"cannot read {what} {path}: floating-point images are ambiguous; "
                                  f"save the array as .npy instead")
            if mode.startswith("I"):  # 16-bit (or 32-bit integer) gray
                arr, full = np.asarray(img, dtype=np.float64)[None], 65535.0
                if arr.min() < 0 or arr.max() > full:
                    raise SdekitError(f"cannot read {what} {path}: integer pixel values outside 0..65535")
            elif mode in ("1", "L", "LA"):
                arr, full = np.asarray(img.convert("L"), dtype=np.float64)[None], 255.0
            else:  # RGB, RGBA, palette, CMYK, ...: RGB
                arr, full = np.asarray(img.convert("RGB"), dtype=np.float64).transpose(2, 0, 1), 255.0
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise SdekitError(f"cannot read {what} {path}: {err}") from err
    return arr / full


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SdekitError(f"cannot read {what} {path}: {err}") from err
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise SdekitError(f"cannot read {what} {path}: expected one array of numbers or bools in the .npy file")
    return arr


def read_image(path: str | os.PathLike, item_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Read an image for inpainting or colorization: a float32 torch tensor.

    - ``.npy``: the array as it is (any shape, values unchanged), as float32;
      read with ``allow_pickle=False``.
    - anything else through PIL (PNG, JPEG, ...): (C, H, W) with pixel values
      0..255 (0..65535 for 16-bit gray) mapped linearly to [-1, 1]; gray images
      (modes 1, L, LA, I) give C = 1, every other mode is converted to RGB,
      C = 3; alpha is dropped. Floating-point TIFFs are refused (use .npy).

    With ``item_shape``, the result must have exactly that shape. For
    colorization, a gray image saved as RGB can be reduced with
    ``read_image(path).mean(0, keepdim=True)``.

    Raises :class:`SdekitError` (:class:`ShapeError` for a wrong shape) naming
    the file when it cannot be read.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = _load_npy(path, "image").astype(np.float32)
    else:
        arr = (_pil_planes(path, "image") * 2.0 - 1.0).astype(np.float32)
    if item_shape is not None and tuple(arr.shape) != tuple(item_shape):
        raise ShapeError(f"image {path} has shape {tuple(arr.shape)}, but the samples' items have shape "
                         f"{tuple(item_shape)}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def read_mask(path: str | os.PathLike, item_shape: tuple[int, ...]) -> torch.Tensor:
    """Read an inpainting mask: a bool torch tensor of shape ``item_shape``, True = known.

    - ``.npy``: bool, or numbers that are all 0 or 1, of any shape that
      broadcasts to ``item_shape`` (e.g. (1, H, W) for (C, H, W) items).
    - anything else through PIL (save masks as PNG, not JPEG): a pixel is
      known where it is nonzero (white) and generated where it is 0 (black).
      A gray mask (1, H, W) applies to every channel; an RGB mask (3, H, W)
      gives each channel its own mask; alpha is dropped. For items (H, W) a
      gray mask is taken as (H, W).

    Raises :class:`SdekitError` (:class:`ShapeError` for a wrong shape) naming
    the file when it cannot be read, is not binary, or does not fit ``item_shape``.
    """
    path, item_shape = Path(path), tuple(int(s) for s in item_shape)
    if path.suffix.lower() == ".npy":
        arr = _load_npy(path, "mask")
        if arr.dtype != np.bool_:
            if not np.isin(arr, (0, 1)).all():
                raise SdekitError(f"mask {path} must be binary: bool, or 0 (generate) and 1 (known)")
            arr = arr != 0
    else:
        arr = _pil_planes(path, "mask") != 0
        if len(item_shape) == 2 and arr.shape[0] == 1:
            arr = arr[0]
    try:
        fits = np.broadcast_shapes(arr.shape, item_shape) == item_shape
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(f"mask {path} has shape {tuple(arr.shape)}, which does not broadcast to the "
                         f"samples' item shape {item_shape}")
    return torch.from_numpy(np.array(np.broadcast_to(arr, item_shape)))  # a writable copy
