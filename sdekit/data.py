"""Training data held in memory: 2-D toys, exact mixtures, the bundled digits, your files.

Nothing is downloaded. A :class:`DataConfig` names the data; :func:`load_dataset`
returns a :class:`Dataset` of tensors::

    x  float32 (N, *item_shape)   images (C, H, W) scaled to [-1, 1]; vectors (D,) as generated
    y  int64 (N,) labels, or None

Built in (``name``):

- 2-D toys generated with torch from ``seed`` (``size`` points): ``checkerboard``
  (uniform on the 8 squares of a 4x4 board of side-2 squares on [-4, 4]^2
  whose row + column is even), ``swissroll`` (t = 1.5 pi (1 + 2u), (t cos t,
  t sin t) / 5 plus N(0, 0.1^2) noise), ``moons`` (two interleaved unit half
  circles centred at (-0.5, -0.25) and (0.5, 0.25), noise 0.05; y = which moon),
  ``rings`` (radii 0.75, 1.5, 2.25, 3, noise 0.08, equally likely; y = which
  ring), ``8gaussians`` (8 components of std 0.5/sqrt 2 on a circle of radius
  2 sqrt 2, the FFJORD toy; y = which component; its exact law is ``mixture``).
- ``gmm:<spec>``: draws from :func:`sdekit.oracle.named_mixture` (``gmm:ring8``,
  ``gmm:image:channels=3,size=4``); y = the component; ``mixture`` is exact.
- ``digits``: scikit-learn's bundled 8x8 digits (a file inside the package):
  1797 images (1, 8, 8), pixel values 0..16 mapped to [-1, 1], y = 0..9.

Your data (``path``):

- ``folder``: PNG/JPEG/BMP/GIF/WebP files read by PIL. Image files at the top
  level are one unlabelled set; a folder holding only sub-folders is one class
  per sub-folder (searched recursively), labels in sorted folder-name order.
  Gray images (modes 1, L, LA, 16-bit I) have C = 1, every other mode is
  converted to RGB (C = 3, alpha dropped); pixels 0..255 (0..65535) map to [-1, 1].
- ``npy``: a ``.npy`` array, or a ``.npz`` with key ``x`` (or a single array)
  and optional int labels ``y``, read with ``allow_pickle=False``. Rank 2 is
  vectors (N, D), kept as they are. Rank 3 is gray images (N, H, W). Rank 4 is
  (N, C, H, W), unless it is read channels-last (N, H, W, C): when the last dim
  is 1 or 3 and dim 1 is neither. Integer pixels must lie in 0..255 and map to
  [-1, 1]; float images must already be in [-1, 1]; bool images map to {-1, 1}.

``image_size`` resizes every image to a square: center-cropped to its shorter
side, then antialiased bilinear interpolation (torch). Without it, images must
all have one size. Every bad input is one :class:`SdekitError` naming the file
or key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from .errors import OptionError, SdekitError, ShapeError, UnknownNameError
from .config import ConfigError, option, value_problem
from .io import _pil_planes
from .oracle import GaussianMixture, named_mixture, ring
from .utils import append_dims

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


# -- 2-D toys: (n, generator) -> (x float64 (n, 2), y int64 (n,) or None, exact mixture or None)

def checkerboard(n: int, generator: torch.Generator):
    cell = torch.randint(8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + row % 2  # row + col even
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return -4.0 + 2.0 * (torch.stack([col, row], 1) + u), None, None


def swissroll(n: int, generator: torch.Generator):
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator, dtype=torch.float64))
    noise = 0.1 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return torch.stack([t * t.cos(), t * t.sin()], 1) / 5.0 + noise, None, None


def moons(n: int, generator: torch.Generator):
    y = torch.randint(2, (n,), generator=generator)
    theta = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.stack([theta.cos() - 0.5, theta.sin() - 0.25], 1)
    lower = torch.stack([0.5 - theta.cos(), 0.25 - theta.sin()], 1)
    noise = 0.05 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return torch.where(y[:, None] == 0, upper, lower) + noise, y, None


RING_RADII = (0.75, 1.5, 2.25, 3.0)


def rings(n: int, generator: torch.Generator):
    y = torch.randint(len(RING_RADII), (n,), generator=generator)
    theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    radius = torch.tensor(RING_RADII, dtype=torch.float64)[y]
    noise = 0.08 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return radius[:, None] * torch.stack([theta.cos(), theta.sin()], 1) + noise, y, None


def eight_gaussians(n: int, generator: torch.Generator):
    gmm = ring(8, radius=2 * math.sqrt(2), std=0.5 / math.sqrt(2))
    x, y = gmm.sample(n, generator, return_labels=True)
    return x, y, gmm


TOYS: dict[str, Callable] = {
    "checkerboard": checkerboard, "swissroll": swissroll, "moons": moons, "rings": rings,
    "8gaussians": eight_gaussians,
}
NAMES = (*TOYS, "gmm:<spec>", "digits", "folder", "npy")


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` section of a config. An invalid value raises :class:`~sdekit.config.ConfigError`
    naming its key (the config loader adds ``data.`` and the source)."""

    name: str = option("checkerboard", "the data: a 2-D toy (checkerboard, swissroll, moons, rings, "
                       "8gaussians), gmm:<mixture spec>, digits, folder or npy")
    path: str | None = option(None, "a folder of images (name 'folder') or a .npy/.npz file (name 'npy')")
    size: int = option(10000, "number of points drawn (toys and gmm)", ge=1)
    image_size: int | None = option(None, "resize images to this square size (center crop, antialiased "
                                    "bilinear); default: keep sizes, which must agree", ge=1)
    flip: bool = option(False, "random horizontal flips of images in batches()")
    holdout: float = option(0.0, "fraction of the items kept aside for evaluation (seeded split)",
                            ge=0.0, lt=1.0)
    seed: int = option(0, "seed of the toys, the holdout split and nothing else", ge=0)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # the loader checked these; a direct construction did not
            problem = None if getattr(self, f.name) is None else value_problem(getattr(self, f.name), f.metadata)
            if problem:
                raise ConfigError(problem, f.name)
        if self.name not in TOYS and self.name not in ("digits", "folder", "npy") \
                and not self.name.startswith("gmm:"):
            raise ConfigError(str(UnknownNameError("data", self.name, NAMES)).replace("unknown data ", "= "), "name")
        if self.name in ("folder", "npy") and not self.path:
            raise ConfigError(f"is required with name = {self.name!r}", "path")
        if self.name not in ("folder", "npy") and self.path is not None:
            raise ConfigError(f"applies to name 'folder' and 'npy', not {self.name!r}", "path")


class Batch(NamedTuple):
    """A batch: ``x`` (B, *item_shape) float32 and ``y`` (B,) int64 or None."""

    x: torch.Tensor
    y: torch.Tensor | None


@dataclass(frozen=True, eq=False)
class Dataset:
    """Items ``x`` (N, *item_shape) float32 and labels ``y`` (N,) int64 or None, on the CPU.

    ``kind`` is ``"image"`` for items (C, H, W), else ``"vector"``; ``num_classes``
    is 0 without labels; ``classes`` names the labels when known; ``mixture`` is
    the exact law of the data when known (gmm, 8gaussians).
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    num_classes: int = 0
    classes: tuple[str, ...] = ()
    name: str = ""
    flip: bool = False
    holdout: float = 0.0
    seed: int = 0
    mixture: GaussianMixture | None = None
    #: the number of evenly spaced values each coordinate takes in [-1, 1] (17 for the digits, 256 for 8-bit
    #: images), or None for continuous data; likelihoods of discrete data are reported in dequantized bits/dim
    levels: int | None = None

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def kind(self) -> str:
        return "image" if self.x.ndim == 4 else "vector"

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        labels = f", {self.num_classes} classes" if self.y is not None else ""
        return f"Dataset({self.name!r}, {len(self)} {self.kind}s of shape {self.item_shape}{labels})"

    def _subset(self, index: torch.Tensor) -> "Dataset":
        return dataclasses.replace(self, x=self.x[index], y=None if self.y is None else self.y[index], holdout=0.0)

    def head(self, n: int) -> "Dataset":
        """The first ``n`` items (all of them when there are fewer)."""
        return self._subset(torch.arange(min(n, len(self))))

    def split(self) -> tuple["Dataset", "Dataset"]:
        """``(train, held_out)``: floor(holdout N) items chosen by a permutation seeded with
        ``seed`` are held out; both keep the original order. Disjoint, and the same for a
        given (seed, N, holdout)."""
        n = len(self)
        n_out = int(self.holdout * n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return self._subset(perm[n_out:].sort().values), self._subset(perm[:n_out].sort().values)

    def batches(self, batch_size: int, generator: torch.Generator | None = None, *,
                shuffle: bool = True, drop_last: bool = False) -> Iterator[Batch]:
        """One pass over the data in batches of ``batch_size`` (the last one smaller unless
        ``drop_last``). Order and flips are drawn from ``generator`` (torch's global RNG
        when None): the permutation first, then one flip mask per batch, each item flipped
        left-right with probability 1/2 when ``flip``."""
        if batch_size < 1:
            raise OptionError(f"batch_size must be >= 1, got {batch_size!r}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            index = order[start:start + batch_size]
            x = self.x[index]
            if self.flip:
                mirror = torch.rand(len(index), generator=generator) < 0.5
                x = torch.where(append_dims(mirror, x.ndim), x.flip(-1), x)
            yield Batch(x, None if self.y is None else self.y[index])


# -- scaling between [-1, 1] and 8-bit pixels ----------------------------------------------

def to_images(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (any shape) to uint8 pixels 0..255: round((x + 1) 127.5), clipped."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def from_images(pixels) -> torch.Tensor:
    """uint8 pixels 0..255 (a tensor or numpy array, any shape) to float32 in [-1, 1]:
    p / 127.5 - 1, the exact inverse of :func:`to_images` on pixels."""
    pixels = torch.as_tensor(pixels)
    if pixels.dtype != torch.uint8:
        raise OptionError(f"from_images needs uint8 pixels 0..255, got {pixels.dtype}")
    return pixels.to(torch.float32) / 127.5 - 1.0


# -- loading -----------------------------------------------------------------------------

def _fit(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, H, W) center-cropped to a square and resized to (size, size)."""
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top:top + side, left:left + side]
    if side != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
    return x.clamp(-1.0, 1.0)


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _read_folder(folder: Path, image_size: int | None):
    if not folder.is_dir():
        raise SdekitError(f"data.path {folder} is not a folder of images")
    top = _image_files(folder, recursive=False)
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if top:
        nested = [d for d in subdirs if _image_files(d, recursive=True)]
        if nested:
            raise SdekitError(f"{folder} mixes image files ({top[0].name}, ...) with class sub-folders "
                              f"({nested[0].name}, ...); put every image in a class sub-folder, or none")
        groups = [("", top)]
    else:
        groups = [(d.name, _image_files(d, recursive=True)) for d in subdirs]
        if not groups:
            raise SdekitError(f"no images in {folder}: expected files ending in {', '.join(IMAGE_SUFFIXES)}, "
                              f"or one sub-folder of them per class")
        for name, files in groups:
            if not files:
                raise SdekitError(f"class folder {folder / name} has no images "
                                  f"(expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    images, labels, first = [], [], None
    for label, (_, files) in enumerate(groups):
        for path in files:
            image = torch.from_numpy(_pil_planes(path, "image") * 2.0 - 1.0).to(torch.float32)
            if image_size is not None:
                image = _fit(image[None], image_size)[0]
            if first is None:
                first = (path, image.shape)
            elif image.shape[0] != first[1][0]:
                raise ShapeError(f"image {path} has {image.shape[0]} channel(s), but {first[0]} has "
                                 f"{first[1][0]}: every image must be gray, or every image color")
            elif image.shape != first[1]:
                raise ShapeError(f"image {path} is {image.shape[2]}x{image.shape[1]} (WxH), but {first[0]} is "
                                 f"{first[1][2]}x{first[1][1]}: set data.image_size to resize, or resize the files")
            images.append(image)
            labels.append(label)
    x = torch.stack(images)
    if groups[0][0] == "":
        return x, None, ()
    return x, torch.tensor(labels, dtype=torch.int64), tuple(name for name, _ in groups)


def _read_arrays(path: Path):
    """x and y (or None) from a .npy or .npz file, and the name of x's key."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            return data, None, "the array"
        with data:
            keys = data.files
            candidates = ["x"] if "x" in keys else [k for k in keys if k != "y"]
            if len(candidates) != 1:
                raise SdekitError(f"{path}: expected an array 'x' (or a single array) and optional labels 'y', "
                                  f"found keys {', '.join(keys) or '(none)'}")
            return data[candidates[0]], (data["y"] if "y" in keys else None), f"key {candidates[0]!r}"
    except (OSError, ValueError, EOFError) as err:
        raise SdekitError(f"cannot read {path}: {err}") from err


def _array_items(arr: np.ndarray, where: str) -> torch.Tensor:
    """Items (N, D) or images (N, C, H, W) in [-1, 1], float32 (see the module docstring)."""
    if arr.dtype.kind not in "biuf":
        raise SdekitError(f"{where} must hold numbers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3, 4) or arr.shape[0] == 0:
        raise ShapeError(f"{where} has shape {arr.shape}: expected N > 0 vectors (N, D), gray images "
                         f"(N, H, W), or images (N, C, H, W) or (N, H, W, C) with C 1 or 3")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise SdekitError(f"{where} holds NaN or infinite values")
    if arr.ndim == 2:
        return torch.from_numpy(arr.astype(np.float32))
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.dtype.kind == "b":
        x = arr.astype(np.float32) * 2.0 - 1.0
    elif arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise SdekitError(f"{where}: integer pixels must lie in 0..255, got {lo}..{hi}")
        x = arr.astype(np.float32) / 127.5 - 1.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1.0 or hi > 1.0:
            raise SdekitError(f"{where}: float images must already be scaled to [-1, 1], got {lo:.4g}..{hi:.4g}; "
                              f"rescale them, or save uint8 pixels 0..255")
        x = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(y: np.ndarray | torch.Tensor, n: int, where: str) -> torch.Tensor:
    y = np.asarray(y)
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise ShapeError(f"{where} must be integer labels of shape ({n},), one per item, "
                         f"got dtype {y.dtype} and shape {y.shape}")
    if n and y.min() < 0:
        raise SdekitError(f"{where} must be labels 0, 1, ..., got {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


def _digits():
    from sklearn.datasets import load_digits  # a file shipped inside scikit-learn: no download

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    return x, torch.from_numpy(digits.target.astype(np.int64)), tuple(str(i) for i in range(10))


def load_dataset(config: DataConfig) -> Dataset:
    """The data ``config`` names, in memory (see the module docstring)."""
    mixture, classes, levels = None, (), None
    if config.name in TOYS or config.name.startswith("gmm:"):
        generator = torch.Generator().manual_seed(config.seed)
        if config.name in TOYS:
            x, y, mixture = TOYS[config.name](config.size, generator)
        else:
            mixture = named_mixture(config.name[len("gmm:"):])
            x, y = mixture.sample(config.size, generator, return_labels=True)
        x = x.to(torch.float32)
    elif config.name == "digits":
        x, y, classes = _digits()
        levels = 17
    elif config.name == "folder":
        x, y, classes = _read_folder(Path(config.path), config.image_size)
        levels = 256 if config.image_size is None else None
    else:
        path = Path(config.path)
        arr, labels, key = _read_arrays(path)
        x = _array_items(arr, f"{path} ({key})")
        y = None if labels is None else _labels(labels, len(x), f"{path} (key 'y')")
        levels = {"b": 2, "i": 256, "u": 256}.get(arr.dtype.kind) if x.ndim == 4 else None
    if x.ndim == 4 and config.image_size is not None and config.name != "folder":
        x = _fit(x, config.image_size)
        levels = None  # resampled pixels are no longer on the levels
    if x.ndim != 4 and (config.image_size is not None or config.flip):
        key = "image_size" if config.image_size is not None else "flip"
        raise ConfigError(f"applies to images, but {config.name!r} holds vectors of shape {tuple(x.shape[1:])}",
                          f"data.{key}")
    num_classes = 0 if y is None else (mixture.num_components if mixture is not None else int(y.max()) + 1)
    return Dataset(x=x.contiguous(), y=y, num_classes=max(num_classes, len(classes)), classes=classes,
                   name=config.name, flip=config.flip, holdout=config.holdout, seed=config.seed, mixture=mixture,
                   levels=levels)
