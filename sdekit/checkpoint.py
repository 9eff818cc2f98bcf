"""Checkpoints: nothing lost, nobody let in.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python
data (dicts, lists, tuples, numbers, strings, bytes, None, dtypes, sizes), so
it loads with ``torch.load(path, weights_only=True)``: loading never runs code
from the file. sdekit never loads with ``weights_only=False``, and
:func:`save_checkpoint` refuses, naming the key, a state that could not be
loaded that way (a numpy array, a dataclass, a function ...). The file holds::

    {"sdekit_checkpoint": FORMAT_VERSION, "versions": {"sdekit", "torch", "python"},
     "step": int | None, "metric": float | None, "state": <the caller's dict>}

where the state is typically the model's, the EMA's and the optimizer's
``state_dict()``, the step, :func:`capture_rng_state` and the resolved config
as TOML text (:func:`sdekit.config.dump_config`).

Every write is atomic (:func:`sdekit.io.atomic_write`: a temporary file in the
same directory, flushed and fsynced, then ``os.replace``, then the directory
fsynced): a run killed mid-write leaves the previous checkpoint intact and a
stray ``.ckpt_*.tmp`` file that is never taken for a checkpoint. Loading
checks every byte against the archive's CRC-32s (torch.load alone does not), so
a damaged file is an error, never silently wrong weights.

:class:`CheckpointManager` keeps ``ckpt_<step:08d>.pt`` files in a directory:
the last ``keep_last`` of them and ``best.pt`` (the lowest metric so far, a
hard link, or a copy where links are not supported). :meth:`~CheckpointManager.latest`
finds the newest checkpoint that loads, skipping damaged ones with a
:class:`CheckpointWarning`, so a crash costs at most the steps since the last
good checkpoint.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import random
import re
import secrets
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .errors import OptionError, SdekitError
from .io import atomic_write

FORMAT_KEY = "sdekit_checkpoint"
FORMAT_VERSION = 1
BEST_NAME = "best.pt"
CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
#: temporary files of atomic_write (``.NAME.PID.HEX.tmp``) for checkpoints and best.pt
TEMP_RE = re.compile(r"^\.(?:ckpt_\d+\.pt|best\.pt)\.(\d+)\.[0-9a-f]+\.tmp$")
ZIP_MAGIC = b"PK\x03\x04"

#: leaf types that torch.load(weights_only=True) rebuilds without running code from the file
_LEAVES = (bool, int, float, complex, str, bytes, type(None), torch.Size, torch.dtype, torch.device)
_TENSORS = (torch.Tensor, torch.nn.Parameter)
_MAPPINGS = (dict, collections.OrderedDict)
_SEQUENCES = (list, tuple)


class CheckpointError(SdekitError):
    """A checkpoint that cannot be written or loaded; the message names the file."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint skipped, or a checkpoint removed, by :class:`CheckpointManager`."""


def _versions() -> dict:
    from .api import versions

    return {name: str(v) for name, v in versions().items()}  # torch.__version__ is a str subclass


def _check_state(value: Any, where: str) -> None:
    """Raise CheckpointError at the first value that weights_only loading could not rebuild."""
    kind = type(value)
    if kind in _MAPPINGS:
        for key, item in value.items():
            if type(key) not in (str, int, float, bool, type(None)):
                raise CheckpointError(f"{where} has the key {key!r} of type {type(key).__name__}; keys must be "
                                      f"strings or numbers")
            _check_state(item, f"{where}[{key!r}]")
    elif kind in _SEQUENCES:
        for i, item in enumerate(value):
            _check_state(item, f"{where}[{i}]")
    elif kind not in _TENSORS and kind not in _LEAVES:
        name = f"{kind.__module__}.{kind.__qualname__}"
        hint = ""
        if isinstance(value, np.ndarray) or isinstance(value, np.generic):
            hint = " (use torch.from_numpy(a) for arrays, .item() for numpy scalars)"
        elif isinstance(value, torch.Tensor):
            hint = " (a tensor subclass: store x.as_subclass(torch.Tensor))"
        raise CheckpointError(f"{where} is a {name}{hint}; a checkpoint holds only tensors and plain data "
                              f"(dict, list, tuple, numbers, str, bytes, None), so that it loads with "
                              f"weights_only=True, without running code from the file")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any], *, step: int | None = None,
                    metric: float | None = None) -> Path:
    """Write ``state`` (a dict of tensors and plain data) to ``path`` atomically; returns the path.

    Raises :class:`CheckpointError`, before writing anything, naming the first
    value that ``torch.load(weights_only=True)`` could not rebuild.
    """
    path = Path(path)
    if type(state) not in _MAPPINGS:
        raise CheckpointError(f"cannot save {path}: the state must be a dict, got {type(state).__name__}")
    record = {FORMAT_KEY: FORMAT_VERSION, "versions": _versions(), "step": None if step is None else int(step),
              "metric": None if metric is None else float(metric), "state": state}
    try:
        _check_state(state, "state")
        _check_state({k: v for k, v in record.items() if k != "state"}, "checkpoint")
    except CheckpointError as err:
        raise CheckpointError(f"cannot save {path}: {err}") from None
    try:
        with atomic_write(path) as f:
            torch.save(record, f)
        _fsync_dir(path.parent)
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint {path}: {err}") from err
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    text = text[0] if text else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_crc(path: Path) -> None:
    """Read every member of the archive against its CRC-32 (torch.save writes them; torch.load does not
    check them, so a flipped bit in a tensor would load silently)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:  # BadZipFile, EOFError, OSError, ... for a cut or damaged archive
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: "
                              f"{_first_line(err)})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: its member {bad!r} fails its CRC-32 check")


def _read(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False, verify: bool = True) -> dict:
    """The whole record of a checkpoint file, or CheckpointError saying what is wrong with it.

    ``verify`` checks every byte against the archive's CRC-32s first; ``mmap``
    maps the tensors instead of reading them.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}: the file does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file") from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (truncated: was its write interrupted?)")
    if head != ZIP_MAGIC:
        raise CheckpointError(f"{path} is not an sdekit checkpoint: it is not a PyTorch zip archive "
                              f"(torch.save's format)")
    if verify:
        _check_crc(path)
    try:
        record = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:
            raise CheckpointError(
                f"refusing to load {path}: it holds a Python object ({found[1]}) that only pickle can rebuild, "
                f"and unpickling runs code from the file. sdekit checkpoints hold only tensors and plain data "
                f"and load with weights_only=True") from None
        found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(err), re.S)
        reason = " ".join(found[1].split()) if found else _first_line(err)
        raise CheckpointError(f"refusing to load {path}: its data cannot be read with weights_only=True "
                              f"({reason}); the file is corrupt or was not written by sdekit") from None
    except Exception as err:  # a damaged archive fails in many ways: RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: "
                              f"{_first_line(err)})") from None
    if not isinstance(record, dict) or FORMAT_KEY not in record:
        what = f"a dict with keys {sorted(map(str, record))[:8]}" if isinstance(record, dict) else \
            f"a {type(record).__name__}"
        raise CheckpointError(f"{path} is not an sdekit checkpoint: it holds {what}, without the "
                              f"{FORMAT_KEY!r} marker")
    version = record[FORMAT_KEY]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version!r}, newer than this sdekit's "
                              f"{FORMAT_VERSION}: upgrade sdekit to load it")
    if type(record.get("state")) not in _MAPPINGS:
        raise CheckpointError(f"{path} is not an sdekit checkpoint: its 'state' is not a dict")
    return record


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The state dict saved in ``path``, tensors on ``map_location``.

    Checks every byte against the archive's CRC-32s, then loads with
    ``weights_only=True``. Raises :class:`CheckpointError` naming ``path`` for a
    missing, empty, truncated or corrupt file, a file that is not an sdekit
    checkpoint, and a file that would need pickle to load.
    """
    return _read(path, map_location)["state"]


def checkpoint_info(path: str | os.PathLike, verify: bool = True) -> dict:
    """``{"format_version", "versions", "step", "metric"}`` of a checkpoint, checking that it loads.

    Tensors are memory-mapped, not loaded. ``verify`` reads the file once to
    check its CRC-32s; without it, only the archive's directory and the record
    are read (cheap for a large file, blind to damage inside tensor data).
    Raises :class:`CheckpointError` like :func:`load_checkpoint`.
    """
    record = _read(path, "cpu", mmap=True, verify=verify)
    return {"format_version": record[FORMAT_KEY], "versions": record.get("versions"),
            "step": record.get("step"), "metric": record.get("metric")}


# -- random number generators ----------------------------------------------------------

def capture_rng_state() -> dict:
    """The states of torch's CPU (and initialized CUDA) generators, Python's ``random`` and
    numpy's global generator, as tensors and plain data (checkpointable)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the generators from :func:`capture_rng_state`'s dict (CUDA states only where CUDA is in use)."""
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -- a directory of checkpoints ---------------------------------------------------------

def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return True  # never remove a temporary file that may still be written
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointManager:
    """``ckpt_<step:08d>.pt`` files in ``workdir``: the last ``keep_last`` and ``best.pt``.

    One writer per directory. After each :meth:`save` the manager keeps the
    ``keep_last`` checkpoints of the highest steps up to the one just saved (so
    never the newest good one); checkpoints of *later* steps, left by a run
    that went further and was restarted from an earlier checkpoint, are removed
    with a :class:`CheckpointWarning` so that :meth:`latest` returns the step
    just saved. ``best.pt`` holds the checkpoint of the lowest ``metric`` so far
    and is never pruned. Temporary files left by a killed writer (whose
    process is gone) are removed when the manager is created.
    """

    def __init__(self, workdir: str | os.PathLike, keep_last: int = 3):
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise OptionError(f"keep_last must be an integer >= 1, got {keep_last!r}")
        self.dir = Path(workdir)
        self.keep_last = keep_last
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointError(f"cannot create the checkpoint directory {self.dir}: {err}") from None
        self._remove_stale_temps()
        self.best_metric: float | None = None
        self.best_step: int | None = None
        if self.best_path.exists():
            try:
                info = checkpoint_info(self.best_path, verify=False)
                self.best_metric, self.best_step = info["metric"], info["step"]
            except CheckpointError as err:
                warnings.warn(f"ignoring the best checkpoint: {err}", CheckpointWarning, stacklevel=2)

    @property
    def best_path(self) -> Path:
        return self.dir / BEST_NAME

    def path(self, step: int) -> Path:
        return self.dir / f"ckpt_{step:08d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every ``ckpt_*.pt`` file, by increasing step (loadable or not)."""
        found = []
        for entry in self.dir.iterdir():
            match = CKPT_RE.match(entry.name)
            if match and entry.is_file():
                found.append((int(match[1]), entry))
        return sorted(found)

    def save(self, step: int, state: Mapping[str, Any], metric: float | None = None) -> Path:
        """Write the checkpoint of ``step``; make it ``best.pt`` if ``metric`` is the lowest so far
        (a NaN metric never is); prune. Returns its path."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise OptionError(f"step must be an integer >= 0, got {step!r}")
        path = save_checkpoint(self.path(step), state, step=step, metric=metric)
        if metric is not None and not math.isnan(metric) and (self.best_metric is None
                                                             or metric < self.best_metric):
            self._set_best(path)
            self.best_metric, self.best_step = float(metric), step
        self._prune(step)
        return path

    def _set_best(self, path: Path) -> None:
        """Point best.pt at ``path`` atomically: a hard link renamed over it, or a copy."""
        tmp = self.dir / f".{BEST_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            with atomic_write(self.best_path) as f, open(path, "rb") as src:
                shutil.copyfileobj(src, f)
        else:
            try:
                os.replace(tmp, self.best_path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        _fsync_dir(self.dir)

    def _prune(self, step: int) -> None:
        ckpts = self.checkpoints()
        later = [p for s, p in ckpts if s > step]
        if later:
            warnings.warn(f"removing {', '.join(p.name for p in later)} from {self.dir}: checkpoints of steps "
                          f"after {step}, left by a run that went further before this one restarted from an "
                          f"earlier step", CheckpointWarning, stacklevel=3)
        upto = [p for s, p in ckpts if s <= step]
        for p in later + upto[:-self.keep_last]:
            p.unlink(missing_ok=True)

    def _remove_stale_temps(self) -> None:
        for entry in self.dir.iterdir():
            match = TEMP_RE.match(entry.name)
            if match and not _alive(int(match[1])):
                entry.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        """The newest checkpoint that loads and passes its CRC checks, or None; damaged newer ones
        are skipped with a warning. :meth:`load_latest` also loads it."""
        for _, path in reversed(self.checkpoints()):
            try:
                checkpoint_info(path)
            except CheckpointError as err:
                warnings.warn(f"skipping a damaged checkpoint: {err}", CheckpointWarning, stacklevel=2)
                continue
            return path
        return None

    def load_latest(self, map_location: Any = "cpu") -> tuple[Path, dict] | None:
        """``(path, state)`` of the newest checkpoint that loads, or None when there is none."""
        for _, path in reversed(self.checkpoints()):
            try:
                return path, load_checkpoint(path, map_location)
            except CheckpointError as err:
                warnings.warn(f"skipping a damaged checkpoint: {err}", CheckpointWarning, stacklevel=2)
        return None

    def best(self) -> Path | None:
        """``best.pt`` when a metric was ever given, else None."""
        return self.best_path if self.best_path.exists() else None

    def load(self, path: str | os.PathLike, map_location: Any = "cpu") -> dict:
        """:func:`load_checkpoint`: the state saved in ``path``, or :class:`CheckpointError`."""
        return load_checkpoint(path, map_location)
