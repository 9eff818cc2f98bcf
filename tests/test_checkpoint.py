"""Checkpoints: nothing lost (atomic writes, a kill mid-write costs only the unfinished checkpoint),
nobody let in (weights_only loading, clear refusals), and the keep-last / best bookkeeping."""

import collections
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from sdekit.checkpoint import (CheckpointError, CheckpointManager, CheckpointWarning, capture_rng_state,
                               checkpoint_info, load_checkpoint, restore_rng_state, save_checkpoint)
from sdekit.config import SDEConfig, dump_config
from sdekit.errors import OptionError, SdekitError


def training_state(step=0, value=1.0):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.SiLU(), torch.nn.Linear(4, 2))
    torch.nn.init.constant_(model[0].weight, value)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(5, 3)).square().sum().backward()
    opt.step()
    return {"model": model.state_dict(), "ema": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "step": step, "rng": capture_rng_state(),
            "config": dump_config(SDEConfig()), "nested": {"a": [1, 2.5, "x", None, (3, b"raw")],
                                                           "t": torch.arange(6).reshape(2, 3)}}


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def steps(manager):
    return [s for s, _ in manager.checkpoints()]


# -- round trip -------------------------------------------------------------------------

def test_round_trip_of_a_training_state(tmp_path):
    state = training_state(step=7)
    path = save_checkpoint(tmp_path / "a.pt", state, step=7, metric=0.5)
    loaded = load_checkpoint(path)
    assert_same(loaded, state)
    assert isinstance(loaded["model"], collections.OrderedDict)
    info = checkpoint_info(path)
    assert info["step"] == 7 and info["metric"] == 0.5 and info["format_version"] == 1
    assert set(info["versions"]) == {"sdekit", "torch", "python"}
    # plain torch with weights_only=True reads it too: no sdekit code needed, no pickle
    raw = torch.load(path, weights_only=True)
    assert raw["sdekit_checkpoint"] == 1 and torch.equal(raw["state"]["nested"]["t"], state["nested"]["t"])
    # the optimizer state loads back into an optimizer
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.SiLU(), torch.nn.Linear(4, 2))
    model.load_state_dict(loaded["model"])
    torch.optim.Adam(model.parameters()).load_state_dict(loaded["optimizer"])


def test_rng_state_restores_every_generator(tmp_path):
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    first = (torch.rand(3), random.random(), np.random.rand(2))
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and np.array_equal(first[2], again[2])


@pytest.mark.parametrize("bad, where, hint", [
    ({"a": np.ones(3)}, r"state\['a'\] is a numpy.ndarray", "torch.from_numpy"),
    ({"a": [1, {"b": SDEConfig()}]}, r"state\['a'\]\[1\]\['b'\] is a sdekit.config.SDEConfig", "plain data"),
    ({"f": len}, r"state\['f'\] is a builtins.builtin_function_or_method", "weights_only=True"),
    ({"n": np.float64(1.0)}, r"state\['n'\] is a numpy.float64", r"\.item\(\)"),
    ({("a", "b"): 1}, r"state has the key \('a', 'b'\) of type tuple", "strings or numbers"),
])
def test_saving_what_weights_only_cannot_load_is_refused_before_writing(tmp_path, bad, where, hint):
    with pytest.raises(CheckpointError, match=f"^cannot save {tmp_path / 'bad.pt'}: {where}") as info:
        save_checkpoint(tmp_path / "bad.pt", bad)
    assert hint.replace("\\", "") in str(info.value).replace("\\", "")
    assert not list(tmp_path.iterdir())


# -- refusals on load ---------------------------------------------------------------------

class Payload:
    """An arbitrary Python object: loading it would run pickle's code from the file."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("name, write, message", [
    ("missing.pt", None, r"no checkpoint at {path}: the file does not exist"),
    ("empty.pt", lambda p: p.write_bytes(b""), r"checkpoint {path} is empty \(truncated"),
    ("text.pt", lambda p: p.write_text("hello"), r"{path} is not an sdekit checkpoint: it is not a PyTorch zip"),
    ("pickle.pt", lambda p: p.write_bytes(pickle.dumps({"state": {}})),
     r"{path} is not an sdekit checkpoint: it is not a PyTorch zip"),
    ("foreign.pt", lambda p: torch.save({"model": {"w": torch.ones(2)}}, p),
     r"{path} is not an sdekit checkpoint: it holds a dict with keys \['model'\], without the 'sdekit_checkpoint'"),
    ("list.pt", lambda p: torch.save([1, 2], p), r"{path} is not an sdekit checkpoint: it holds a list"),
    ("object.pt", lambda p: torch.save({"sdekit_checkpoint": 1, "state": {"x": Payload()}}, p),
     r"refusing to load {path}: it holds a Python object \(posix.system\) that only pickle can rebuild"),
    ("newer.pt", lambda p: torch.save({"sdekit_checkpoint": 99, "state": {}}, p),
     r"{path} has checkpoint format 99, newer than this sdekit's 1"),
])
def test_clear_errors_naming_the_file(tmp_path, name, write, message):
    path = tmp_path / name
    if write:
        write(path)
    with pytest.raises(CheckpointError, match="^" + message.format(path=path)) as info:
        load_checkpoint(path)
    assert isinstance(info.value, SdekitError)


def test_arbitrary_object_is_refused_and_never_run(tmp_path, capfd):
    path = tmp_path / "evil.pt"
    torch.save({"sdekit_checkpoint": 1, "state": {"x": Payload()}}, path)
    with pytest.raises(CheckpointError, match="only pickle can rebuild.*weights_only=True"):
        load_checkpoint(path)
    assert "pwned" not in capfd.readouterr().out
    manager = CheckpointManager(tmp_path)
    os.replace(path, manager.path(5))
    with pytest.warns(CheckpointWarning, match="only pickle can rebuild"):
        assert manager.latest() is None


def test_truncated_and_corrupt_files(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", training_state())
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"^checkpoint {path} is truncated or corrupt"):
            load_checkpoint(path)
    # damage the pickled record inside an otherwise complete archive
    save_checkpoint(tmp_path / "ok.pt", {"w": torch.ones(2)})
    with zipfile.ZipFile(tmp_path / "ok.pt") as src, zipfile.ZipFile(tmp_path / "a2.pt", "w") as out:
        for item in src.infolist():
            body = src.read(item)
            out.writestr(item, b"\x00garbage" + body[8:] if item.filename.endswith("data.pkl") else body)
    with pytest.raises(CheckpointError, match=f"^refusing to load {tmp_path / 'a2.pt'}: its data cannot be "
                                              r"read with weights_only=True \(Unsupported operand 0\); the file is"):
        load_checkpoint(tmp_path / "a2.pt")
    # one flipped bit in a tensor's bytes: torch.load alone would not notice, the CRC-32 check does
    ones = save_checkpoint(tmp_path / "ones.pt", {"w": torch.ones(64)})
    data = bytearray(ones.read_bytes())
    data[data.find(bytes(torch.ones(1).numpy().tobytes()) * 8) + 1] ^= 0x10
    ones.write_bytes(data)
    assert not torch.equal(torch.load(ones, weights_only=True)["state"]["w"], torch.ones(64))
    with pytest.raises(CheckpointError, match=r"^checkpoint .*ones.pt is corrupt: its member '.*data/0' fails its "
                                              r"CRC-32 check"):
        load_checkpoint(ones)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


# -- nothing lost: atomic writes ------------------------------------------------------------

KILLED_WRITER = textwrap.dedent("""
    import io, sys, time
    import torch
    from sdekit.checkpoint import CheckpointManager

    manager = CheckpointManager(sys.argv[1], keep_last=2)
    manager.save(100, {"w": torch.full((4,), 100.0)})
    real_save = torch.save

    def save_half_then_hang(obj, f, **kw):  # a long write, caught in the middle by SIGKILL
        buf = io.BytesIO()
        real_save(obj, buf, **kw)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("halfway", flush=True)
        time.sleep(600)

    torch.save = save_half_then_hang
    manager.save(200, {"w": torch.zeros(1_000_000)})
""")


def test_a_writer_killed_mid_write_loses_only_the_unfinished_checkpoint(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line == "halfway\n", proc.stderr.read() if proc.poll() is not None else line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "ckpt_00000100.pt" in names and "ckpt_00000200.pt" not in names
    leftovers = [n for n in names if n.startswith(".ckpt_00000200.pt.") and n.endswith(".tmp")]
    assert len(leftovers) == 1 and (tmp_path / leftovers[0]).stat().st_size > 0  # the half-written file

    manager = CheckpointManager(tmp_path, keep_last=2)  # removes the dead writer's temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000100.pt"]
    assert manager.latest() == manager.path(100)
    path, state = manager.load_latest()
    assert path == manager.path(100) and torch.equal(state["w"], torch.full((4,), 100.0))


def test_a_write_failing_halfway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(1, {"w": torch.ones(3)}, metric=1.0)
    real_save = torch.save

    def fail_halfway(obj, f, **kw):
        real_save(obj, f, **kw)
        f.truncate(f.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*ckpt_00000002.pt.*No space left"):
        manager.save(2, {"w": torch.zeros(3)}, metric=0.5)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ckpt_00000001.pt"]
    assert manager.latest() == manager.path(1) and manager.best_step == 1
    assert torch.equal(manager.load(manager.latest())["w"], torch.ones(3))


def test_latest_skips_a_damaged_newest_file_with_a_warning(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (10, 20, 30):
        manager.save(step, {"step": step})
    data = manager.path(30).read_bytes()
    manager.path(30).write_bytes(data[: len(data) // 3])  # e.g. a copy cut short
    with pytest.warns(CheckpointWarning, match="skipping a damaged checkpoint: checkpoint .*ckpt_00000030.pt "
                                               "is truncated or corrupt"):
        assert manager.latest() == manager.path(20)
    assert checkpoint_info(manager.path(20), verify=False)["step"] == 20
    with pytest.warns(CheckpointWarning):
        path, state = manager.load_latest()
    assert path == manager.path(20) and state == {"step": 20}
    # stray files are never taken for checkpoints
    (tmp_path / "ckpt_00000040.pt.tmp").write_bytes(b"x")
    (tmp_path / ".ckpt_00000050.pt.123.abcd.tmp").write_bytes(b"x")
    assert steps(manager) == [10, 20, 30]
    assert CheckpointManager(tmp_path / "empty").latest() is None
    assert CheckpointManager(tmp_path / "empty").load_latest() is None


# -- keep_last and best ----------------------------------------------------------------------

def test_keep_last_and_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    metrics = {1: 5.0, 2: 3.0, 3: 4.0, 4: float("nan"), 5: 3.5, 6: None}
    for step, metric in metrics.items():
        manager.save(step, {"step": step, "w": torch.full((2,), float(step))}, metric=metric)
    assert steps(manager) == [5, 6]  # the last two
    assert manager.best() == tmp_path / "best.pt" and manager.best_step == 2 and manager.best_metric == 3.0
    assert load_checkpoint(manager.best())["step"] == 2  # kept although ckpt 2 was pruned
    assert checkpoint_info(manager.best())["metric"] == 3.0
    manager.save(7, {"step": 7}, metric=1.0)
    assert load_checkpoint(manager.best())["step"] == 7 and steps(manager) == [6, 7]
    # a new manager on the same directory (a resumed run) knows the best so far
    resumed = CheckpointManager(tmp_path, keep_last=2)
    assert resumed.best_metric == 1.0 and resumed.best_step == 7
    resumed.save(8, {"step": 8}, metric=2.0)
    assert load_checkpoint(resumed.best())["step"] == 7
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_best_is_copied_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(1, {"step": 1}, metric=1.0)
    manager.save(2, {"step": 2}, metric=2.0)
    assert steps(manager) == [2] and load_checkpoint(manager.best()) == {"step": 1}
    assert os.stat(manager.best()).st_nlink == 1


def test_restart_from_an_earlier_step_removes_the_later_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (100, 200, 300):
        manager.save(step, {"step": step})
    with pytest.warns(CheckpointWarning, match="removing ckpt_00000200.pt, ckpt_00000300.pt .* steps after 150"):
        manager.save(150, {"step": 150})
    assert steps(manager) == [100, 150] and manager.latest() == manager.path(150)


def test_manager_arguments_are_checked(tmp_path):
    with pytest.raises(OptionError, match="keep_last must be an integer >= 1, got 0"):
        CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(OptionError, match="step must be an integer >= 0, got -1"):
        CheckpointManager(tmp_path).save(-1, {})
    with pytest.raises(CheckpointError, match="the state must be a dict, got list"):
        save_checkpoint(tmp_path / "x.pt", [1, 2])
