"""Training: one loop for score networks and noise-aware classifiers, resumable bit for bit.

Typical use (``sdekit train --config configs/digits_vp.toml --workdir runs/digits_vp``)::

    config = load_config("configs/digits_vp.toml", RunConfig, ["train.steps=2000"])
    summary = train(config, "runs/digits_vp")      # {"step": 2000, "final_loss": ..., "checkpoint": ...}
    run = load_run("runs/digits_vp")               # the EMA network, in eval mode, as a score function
    result = sdekit.sample(run.score_fn, run.sde, (64, *run.item_shape))

A workdir holds::

    config.toml                  the resolved config of the latest start (written atomically)
    checkpoints/ckpt_<step>.pt   model, EMA, optimizer, step, RNG states, resolved config, data shape;
                                 the last train.keep_last, and best.pt: the lowest held-out loss (EMA
                                 weights) at a checkpoint step, when there are held-out items and evals
    tb/                          TensorBoard: loss (overall and per fifth of [0, T]), lr, gradient norm,
                                 throughput, held-out loss, held-out bits/dim (likelihood/*, the tags of
                                 sdekit likelihood), samples, the config as text
    samples/step_<step>.png/.npz samples drawn with the EMA weights every train.sample_every steps

Objective. A score network (``model.arch`` unet or mlp) minimises the loss of
the ``[loss]`` section (:func:`sdekit.losses.make_loss`) through
:func:`sdekit.models.network_score_fn`, with the labels as ``y`` when the
model is conditional. A noise-aware classifier (``arch = "classifier"``)
minimises the cross-entropy of the labels given x_t = m x0 + s z, t drawn by
the same loss section's time sampler (:class:`ClassifierLoss`; Dhariwal and
Nichol 2021, sec. 4.1).

Randomness. Step k (counted from 0) depends on (train.seed, k) only: its batch
is positions k B ... (k + 1) B - 1 of the endless sequence of epoch
permutations (epoch e's permutation drawn from a generator seeded by (seed, e):
each item once per epoch); its flips, times and noise come from a generator
seeded by (seed, k); torch's global generator (dropout) is seeded by (seed, k,
rank) before the step. A run resumed from a checkpoint therefore draws exactly
what the uninterrupted run would: on the CPU the weights are bitwise the same.

Distributed. Launched by ``torchrun`` (RANK and WORLD_SIZE set), or called in a
process whose default process group is already initialized, train() runs data
parallel (DistributedDataParallel; nccl on CUDA, gloo on the CPU). The global
batch (``train.batch_size``) and its noise are drawn identically on every rank;
rank r evaluates the network on its contiguous share of the rows, so the
averaged gradient is the single-process one (to float rounding; dropout masks
differ per rank). Only rank 0 writes files. A multi-node run needs a shared
workdir.

Non-finite loss. A NaN or infinite loss or gradient norm stops training with
:class:`NonFiniteLossError` naming the first bad step; no checkpoint of the
broken state is written, the earlier ones stay. On the CPU it is checked after
every step; on CUDA, to keep the GPU queue full, at every log, evaluation,
sample and checkpoint step (the error still names the first bad step).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .api import resolve_device, sample
from .checkpoint import CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state
from .config import (ConfigError, OptimConfig, SampleConfig, SDEConfig, TrainConfig, dump_config, loads_config,
                     make_schema, save_config)
from .data import DataConfig, Dataset, load_dataset
from .errors import SdekitError
from .losses import LossConfig, make_loss
from .models import ModelConfig, build_model, count_parameters, network_classifier_fn, network_score_fn
from .sde import SDE
from .utils import append_dims

RunConfig = make_schema("RunConfig", sde=SDEConfig, model=ModelConfig, loss=LossConfig, optim=OptimConfig,
                        train=TrainConfig, sample=SampleConfig, data=DataConfig)
RunConfig.__doc__ = "A training run's config: [sde] [model] [loss] [optim] [train] [sample] [data]."

#: the losses logged per bucket of t: [0, T/5), [T/5, 2T/5), ...
TIME_BUCKETS = 5
# independent random streams of a run, keyed with the seed (and the step, epoch or rank)
_EPOCH, _STEP, _DROPOUT, _EVAL = range(4)


class NonFiniteLossError(SdekitError):
    """Training met a NaN or infinite loss (or gradient norm) and stopped; nothing of it was saved."""


# -- randomness ---------------------------------------------------------------------------

def stream_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy's SeedSequence hash): different keys, unrelated streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]) >> 1


class EpochBatches:
    """``batches(step)`` -> indices (batch_size,) of step ``step``'s global batch.

    Positions step B ... step B + B - 1 of the endless sequence of epoch
    permutations of range(n), epoch e's drawn from a generator seeded by
    (seed, e). Depends on (n, batch_size, seed, step) only; a batch larger than
    the data spans several epochs.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            gen = torch.Generator().manual_seed(stream_seed(self.seed, _EPOCH, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def __call__(self, step: int) -> torch.Tensor:
        pos, end, parts = step * self.batch_size, (step + 1) * self.batch_size, []
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            take = min(end - pos, self.n - offset)
            parts.append(self._perm(epoch)[offset:offset + take])
            pos += take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


# -- objectives ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassifierLoss:
    """``loss(classifier_fn, x0, generator=None, cond={"y": labels}) -> (B,)`` cross-entropies.

    A noise-aware classifier p_t(y | x_t) (Dhariwal and Nichol 2021, sec. 4.1):
    t and the kernel (m, s) from ``times`` (a :mod:`sdekit.losses` time sampler),
    z ~ N(0, I), x_t = m x0 + s z, then cross-entropy of ``classifier_fn(x_t, t,
    **rest_of_cond)`` (B, K) logits against ``cond["y"]`` (B,) int64. Draws t
    then z from ``generator``, like the score losses.
    """

    times: Callable

    def __call__(self, classifier_fn: Callable, x0: torch.Tensor, generator: torch.Generator | None = None,
                 cond: Mapping | None = None) -> torch.Tensor:
        cond = dict(cond or {})
        y = cond.pop("y")
        t, mean, std, _ = self.times(x0.shape[0], x0, generator)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = append_dims(mean, x0.ndim) * x0 + append_dims(std, x0.ndim) * z
        return F.cross_entropy(classifier_fn(x_t, t, **cond).float(), y, reduction="none")


def make_objective(config: Any, sde: SDE) -> Callable:
    """The per-example objective of ``config`` (a RunConfig): the score loss, or the classifier's
    cross-entropy on noised inputs. Called as ``objective(fn, x0, generator, cond) -> (B,)``."""
    loss = make_loss(config.loss, sde)
    if config.model.arch != "classifier":
        return loss
    for key, default in (("weighting", "sigma2"), ("p_uncond", 0.0), ("importance_sampling", False)):
        if getattr(config.loss, key) != default:
            raise ConfigError(f"= {getattr(config.loss, key)!r} applies to score networks; a classifier "
                              f"(model.arch = 'classifier') is trained with cross-entropy, leave it out",
                              f"loss.{key}")
    return ClassifierLoss(loss.times)


class _Rows:
    """``fn`` evaluated on rows [lo, hi) of its batch only (this rank's share), zeros elsewhere.

    The objective draws t, z and the dropout mask for the whole global batch
    on every rank; the network sees the rank's rows. Remembers the last ``t``
    (for the loss per time bucket).
    """

    def __init__(self, fn: Callable, lo: int, hi: int):
        self.fn, self.lo, self.hi = fn, lo, hi
        self.t: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        self.t, n, lo, hi = t, x.shape[0], self.lo, self.hi
        if (lo, hi) == (0, n):
            return self.fn(x, t, **cond)
        cond = {k: v[lo:hi] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v
                for k, v in cond.items()}
        part = self.fn(x[lo:hi], t[lo:hi], **cond)
        return torch.cat([part.new_zeros((lo, *part.shape[1:])), part, part.new_zeros((n - hi, *part.shape[1:]))])


def _autocast(module: Callable, device: torch.device, amp: str) -> Callable:
    """``module`` run under bf16 autocast (outputs back in float32), or ``module`` itself."""
    if amp == "none":
        return module

    def forward(x, c_noise, **cond):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = module(x, c_noise, **cond)
        return out.float()

    return forward


# -- distributed --------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    owned: bool = False  # created here, destroyed here

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def _start_distributed(device_type: str) -> _Dist:
    """The caller's process group, or one from torchrun's environment (RANK, WORLD_SIZE), or none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        if not dist.is_available():
            raise SdekitError("WORLD_SIZE > 1 asks for distributed training, but this torch has no "
                              "torch.distributed")
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return _Dist(dist.get_rank(), dist.get_world_size(), owned=True)
    return _Dist()


# -- configs in checkpoints ---------------------------------------------------------------

def config_from_text(text: str, source: str) -> Any:
    """A RunConfig from TOML text (a checkpoint's saved config); errors name ``source``."""
    return loads_config(text, RunConfig, source)


def _section_diff(old: Any, new: Any, section: str) -> list[str]:
    """``["model.channels: 24 (checkpoint) != 32 (config)", ...]`` for the keys of a section that differ."""
    a, b = dataclasses.asdict(getattr(old, section)), dataclasses.asdict(getattr(new, section))
    return [f"{section}.{k}: {a[k]!r} (checkpoint) != {b[k]!r} (config)" for k in a if a[k] != b.get(k)]


# -- run state ----------------------------------------------------------------------------

class _Meter:
    """On-device sums between two log steps (no host sync until :meth:`flush`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(2 + 2 * TIME_BUCKETS, dtype=torch.float64, device=self.device)

    def add(self, per_item: torch.Tensor, t: torch.Tensor, T: float) -> None:
        per_item = per_item.detach().to(torch.float64)
        bucket = (t.detach() / T * TIME_BUCKETS).long().clamp(0, TIME_BUCKETS - 1)
        self.sums[0] += per_item.sum()
        self.sums[1] += per_item.numel()
        self.sums[2:2 + TIME_BUCKETS].index_add_(0, bucket, per_item)
        self.sums[2 + TIME_BUCKETS:].index_add_(0, bucket, torch.ones_like(per_item))

    def flush(self, dist: _Dist) -> tuple[float, list[float]]:
        """(mean loss, mean loss per time bucket (NaN where empty)) over every rank, and reset."""
        sums = dist.all_reduce(self.sums.clone()).cpu()
        self.reset()
        loss = float(sums[0] / sums[1]) if sums[1] else math.nan
        buckets = sums[2:2 + TIME_BUCKETS] / sums[2 + TIME_BUCKETS:]
        return loss, buckets.tolist()


def _bucket_tag(i: int) -> str:
    return f"loss_by_t/{i / TIME_BUCKETS:.1f}-{(i + 1) / TIME_BUCKETS:.1f}"


@torch.no_grad()
def _ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) net, parameters only (buffers are copied)."""
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


def _check_data(config: Any, dataset: Dataset) -> None:
    model = config.model
    if model.context_dim:
        raise ConfigError("> 0, but training data carry no context vectors (labels only); set it to 0",
                          "model.context_dim")
    if model.num_classes:
        what = "a classifier" if model.arch == "classifier" else "a class-conditional model"
        if dataset.y is None:
            raise ConfigError(f"= {model.num_classes} makes {what}, but data {dataset.name!r} has no labels; "
                              f"set model.num_classes = 0 or use labelled data", "model.num_classes")
        if dataset.num_classes != model.num_classes:
            raise ConfigError(f"= {model.num_classes}, but data {dataset.name!r} has {dataset.num_classes} "
                              f"classes; set model.num_classes = {dataset.num_classes}", "model.num_classes")
    elif config.loss.p_uncond > 0:
        raise ConfigError(f"= {config.loss.p_uncond} drops class labels (classifier-free guidance), but the "
                          f"model is unconditional; set model.num_classes to the data's number of classes "
                          f"({dataset.num_classes or 'it has none'}) or loss.p_uncond = 0", "loss.p_uncond")
    if len(dataset) == 0:
        raise SdekitError(f"no training data left: data {dataset.name!r} has {len(dataset)} items after the "
                          f"holdout")


# -- the loop -----------------------------------------------------------------------------

def train(config: Any, workdir: str | os.PathLike, *, resume: bool = False, progress: bool | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Train the model ``config`` (a :data:`RunConfig`) describes; write everything under ``workdir``.

    ``resume`` continues from the latest checkpoint in ``workdir/checkpoints``
    (the model section must be the checkpoint's; the other sections, e.g.
    ``train.steps``, may change); without any checkpoint it starts at step 0.
    Without ``resume``, a workdir that already has checkpoints is refused.
    ``progress`` shows a tqdm bar (None: when stderr is a terminal); ``log``
    receives one line per event (start, log steps, checkpoints, end); only
    rank 0 logs.

    Returns ``{"step", "steps", "final_loss", "examples_per_s", "checkpoint",
    "workdir", "resumed_from", "world_size", "device", "history"}``: the final
    step, the steps run by this call, the mean loss of the last log window,
    the mean throughput of this call (global examples per second; evaluations,
    samples and checkpoints left out), the final checkpoint's path, and
    ``history`` = [{"step", "loss", "lr"}] per log step.
    Raises :class:`NonFiniteLossError` on a NaN/inf loss, :class:`ConfigError`
    or :class:`SdekitError` for anything wrong with the config, data or workdir.
    """
    tc = config.train
    device = resolve_device(tc.device)
    dist = _start_distributed(device.type)
    try:
        if device.type == "cuda" and dist.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.rank % torch.cuda.device_count())))
            torch.cuda.set_device(device)
        summary = _train(config, Path(workdir), device, dist, resume, progress, log)
        dist.barrier()  # tear down together: a rank leaving while another still talks can abort gloo
        return summary
    finally:
        if dist.owned:
            import gc

            import torch.distributed

            gc.collect()  # the DDP wrapper (and its reducer's hooks) before the group it uses
            torch.distributed.destroy_process_group()


def _train(config, workdir: Path, device: torch.device, dist: _Dist, resume: bool, progress, log) -> dict:
    tc, main = config.train, dist.rank == 0
    say = log if main else (lambda _: None)

    # the parts, each from its own section
    sde = config.sde.build()
    dataset, held_out = load_dataset(config.data).split()
    _check_data(config, dataset)
    objective = make_objective(config, sde)
    torch.manual_seed(tc.seed)
    net = build_model(config.model, dataset.item_shape).to(device)
    if dataset.kind == "image":  # NHWC convolutions: ~1.1x a digits step on the CPU, faster on CUDA too
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = config.optim.build(net.parameters())
    registry = None
    if tc.sample_every and config.model.arch != "classifier":
        from .registry import load_registry

        registry = load_registry()
        config.sample.check(registry)

    # the workdir: refuse to start over an earlier run; resume from its latest checkpoint
    manager = CheckpointManager(workdir / "checkpoints", keep_last=tc.keep_last)
    found = manager.checkpoints()
    start, resumed_from = 0, None
    if found and not resume:
        raise SdekitError(f"{workdir} already holds a training run (checkpoints up to step {found[-1][0]} in "
                          f"{manager.dir}); continue it with --resume, or choose another --workdir")
    if resume:
        loaded = manager.load_latest()
        if loaded is None:
            say(f"no checkpoint in {manager.dir} to resume from: a new run, starting at step 0")
        else:
            start = resumed_from = _restore(loaded, config, dataset, net, ema, optimizer, say)
    dist.barrier()  # every rank has read the checkpoints before rank 0 writes

    # distributed wrapping, compilation, autocast; the score (or classifier) function the loss sees
    module: Callable = net
    if dist.world > 1:
        module = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                     else None)
    if tc.compile:
        module = torch.compile(module)
    module = _autocast(module, device, tc.amp)
    adapter = network_classifier_fn if config.model.arch == "classifier" else network_score_fn
    lo, hi = dist.rank * tc.batch_size // dist.world, (dist.rank + 1) * tc.batch_size // dist.world
    rows = _Rows(adapter(module, sde, config.model), lo, hi)

    data_x, data_y = dataset.x.to(device), None if dataset.y is None else dataset.y.to(device)
    if dataset.kind == "image":
        data_x = data_x.contiguous(memory_format=torch.channels_last)
    conditional = config.model.num_classes > 0
    batches = EpochBatches(len(dataset), tc.batch_size, tc.seed)
    noise = torch.Generator(device).manual_seed(0)
    writer = None
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        save_config(config, workdir / "config.toml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(workdir / "tb"))
        writer.add_text("config", "\n".join("    " + line for line in dump_config(config).splitlines()), start)
    say(f"training {type(net).__name__} ({count_parameters(net):,} parameters) on {dataset!r}, {device}"
        f"{f' x {dist.world} processes' if dist.world > 1 else ''}, steps {start} -> {tc.steps}, "
        f"global batch {tc.batch_size}, workdir {workdir}")
    show = main and (progress if progress is not None else sys.stderr.isatty())
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start, unit="step", desc="training", dynamic_ncols=True)
    emit = bar.write if bar is not None and log is print else say

    def snapshot(done: int) -> dict:
        return {"model": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "step": done, "rng": capture_rng_state(), "config": dump_config(config),
                "data": {"item_shape": list(dataset.item_shape), "num_classes": dataset.num_classes,
                         "classes": list(dataset.classes), "kind": dataset.kind}}

    meter, history = _Meter(device), []
    none = torch.iinfo(torch.int64).max
    first_bad = torch.full((), none, dtype=torch.int64, device=device)
    grad_norm = torch.zeros((), device=device)
    last_ckpt = manager.latest() if start else None
    final_loss, clock, window, paused, paused_total = math.nan, time.perf_counter(), start, 0.0, 0.0
    run_start = clock

    def check(done: int) -> None:
        bad = int(dist.all_reduce(first_bad.clone(), "min"))
        if bad != none:
            where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written"
            raise NonFiniteLossError(
                f"training stopped: the loss or gradient norm is NaN or infinite at step {bad} (learning rate "
                f"{config.optim.lr_at(bad - 1):.3g}); nothing of it was saved and {where}. Lower optim.lr, "
                f"raise optim.warmup, set optim.grad_clip or check the data, then resume with --resume")

    try:
        net.train()
        for step in range(start, tc.steps):
            done = step + 1
            # the batch, its noise and the dropout masks: functions of (seed, step) only
            index = batches(step).to(device)
            x0 = data_x[index]
            step_gen = torch.Generator().manual_seed(stream_seed(tc.seed, _STEP, step))
            if dataset.flip:
                mirror = (torch.rand(len(index), generator=step_gen) < 0.5).to(device)
                x0 = torch.where(append_dims(mirror, x0.ndim), x0.flip(-1), x0)
            noise.manual_seed(stream_seed(tc.seed, _STEP, step, 1))
            torch.manual_seed(stream_seed(tc.seed, _DROPOUT, step, dist.rank))
            cond = {"y": data_y[index]} if conditional else {}

            lr = config.optim.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            per_item = objective(rows, x0, noise, cond)[lo:hi]
            optimizer.zero_grad(set_to_none=True)
            (per_item.sum() * (dist.world / tc.batch_size)).backward()
            if config.optim.grad_clip > 0:
                grad_norm = nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
            elif done % tc.log_every == 0 or done == tc.steps:
                grad_norm = nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
            optimizer.step()
            _ema_update(ema, net, config.optim.ema_decay_at(step))

            bad = ~torch.isfinite(per_item).all() | ~torch.isfinite(grad_norm)
            first_bad = torch.where(bad, torch.clamp(first_bad, max=done), first_bad)
            meter.add(per_item, rows.t[lo:hi], sde.T)
            if bar is not None:
                bar.update(1)

            log_now = done % tc.log_every == 0 or done == tc.steps
            eval_now = bool(tc.eval_every) and done % tc.eval_every == 0 and len(held_out) > 0
            sample_now = registry is not None and done % tc.sample_every == 0
            bpd_now = bool(tc.bpd_every) and done % tc.bpd_every == 0 and config.model.arch != "classifier"
            ckpt_now = done % tc.checkpoint_every == 0 or done == tc.steps
            if device.type == "cpu" or log_now or eval_now or sample_now or ckpt_now or bpd_now:
                check(done)
            if log_now:
                loss, buckets = meter.flush(dist)
                now = time.perf_counter()
                rate = (done - window) / max(now - clock - paused, 1e-9)
                clock, window, paused, final_loss = now, done, 0.0, loss
                norm = float(grad_norm)
                history.append({"step": done, "loss": loss, "lr": lr})
                if writer is not None:
                    writer.add_scalar("loss", loss, done)
                    for i, value in enumerate(buckets):
                        if not math.isnan(value):
                            writer.add_scalar(_bucket_tag(i), value, done)
                    writer.add_scalar("lr", lr, done)
                    writer.add_scalar("grad_norm", norm, done)
                    writer.add_scalar("throughput/examples_per_s", rate * tc.batch_size, done)
                    writer.add_scalar("throughput/steps_per_s", rate, done)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4g}")  # the bar shows steps/s itself
                else:
                    emit(f"step {done}/{tc.steps}  loss {loss:.4g}  lr {lr:.3g}  grad norm {norm:.3g}  "
                         f"{rate:.3g} steps/s ({rate * tc.batch_size:.4g} examples/s)")
            if not (main and (eval_now or sample_now or ckpt_now or bpd_now)):
                continue
            pause = time.perf_counter()
            value = None
            if eval_now or (ckpt_now and tc.eval_every and len(held_out) > 0):  # best.pt: lowest held-out loss
                value = _evaluate(objective, ema, sde, config, held_out, device)
            if eval_now:
                writer.add_scalar("eval/loss", value, done)
                emit(f"step {done}: held-out loss {value:.4g} (EMA weights, {len(held_out)} items)")
            if bpd_now:
                value_bpd = _bits_per_dim(ema, sde, config, held_out if len(held_out) else dataset, device, writer, done)
                emit(f"step {done}: held-out bits/dim {value_bpd:.4f} (EMA weights, probability-flow ODE)")
            if sample_now:
                try:
                    _sample(ema, sde, config, dataset, device, registry, writer, workdir, done)
                except SdekitError as err:  # a bad [sample] section must not cost the training run
                    emit(f"warning: sampling at step {done} failed, training goes on: {err}")
            if ckpt_now:
                last_ckpt = manager.save(done, snapshot(done), metric=value)
                if bar is None:
                    emit(f"step {done}: checkpoint {last_ckpt}")
            paused += time.perf_counter() - pause
            paused_total += time.perf_counter() - pause
        dist.barrier()
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()

    ran = tc.steps - start
    elapsed = time.perf_counter() - run_start - paused_total  # without evaluations, samples, checkpoints
    if ran <= 0:
        say(f"nothing to do: the checkpoint is at step {start}, train.steps is {tc.steps}")
    summary = {"step": max(start, tc.steps), "steps": max(ran, 0), "final_loss": final_loss,
               "examples_per_s": max(ran, 0) * tc.batch_size / elapsed if ran > 0 else math.nan,
               "checkpoint": None if last_ckpt is None else str(last_ckpt), "workdir": str(workdir),
               "resumed_from": resumed_from, "world_size": dist.world, "device": str(device), "history": history}
    if ran > 0:
        say(f"done: step {summary['step']}, loss {final_loss:.4g}, {summary['examples_per_s']:.4g} examples/s, "
            f"checkpoint {last_ckpt}")
    return summary


def _restore(loaded: tuple[Path, dict], config, dataset: Dataset, net, ema, optimizer, say) -> int:
    """Load a checkpoint into the run; its step. Refuses a different model or data shape."""
    path, state = loaded
    saved = config_from_text(state["config"], f"{path} (its saved config)")
    differ = _section_diff(saved, config, "model")
    if differ:
        raise ConfigError(f"cannot resume from {path}: the model differs from the checkpoint's in "
                          f"{'; '.join(differ)}. Resume with the checkpoint's model section (see "
                          f"{path.parent.parent / 'config.toml'}), or train the new model in another workdir")
    data = state["data"]
    if tuple(data["item_shape"]) != dataset.item_shape or data["num_classes"] != dataset.num_classes:
        raise SdekitError(f"cannot resume from {path}: it was trained on items of shape {tuple(data['item_shape'])} "
                          f"with {data['num_classes']} classes, the data now has shape {dataset.item_shape} with "
                          f"{dataset.num_classes} classes")
    others = [d for s in ("sde", "loss", "data") for d in _section_diff(saved, config, s)]
    if others:
        say(f"note: resuming with changed settings: {'; '.join(others)}")
    net.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, settings in zip(optimizer.param_groups, fresh):  # the config's betas, eps, weight decay
        group.update(settings)
    restore_rng_state(state["rng"])
    say(f"resuming from {path} (step {state['step']})")
    return int(state["step"])


@torch.no_grad()
def _evaluate(objective, ema: nn.Module, sde: SDE, config, held_out: Dataset, device: torch.device) -> float:
    """The objective on the held-out items with the EMA weights and fixed noise (comparable across steps)."""
    adapter = network_classifier_fn if config.model.arch == "classifier" else network_score_fn
    fn = adapter(ema, sde, config.model)
    gen = torch.Generator(device).manual_seed(stream_seed(config.train.seed, _EVAL))
    total, size = 0.0, config.train.batch_size
    for lo in range(0, len(held_out), size):
        x0 = held_out.x[lo:lo + size].to(device)
        cond = {"y": held_out.y[lo:lo + size].to(device)} if config.model.num_classes else {}
        total += float(objective(fn, x0, gen, cond).sum())
    return total / len(held_out)


def _bits_per_dim(ema: nn.Module, sde: SDE, config, items: Dataset, device, writer, step: int) -> float:
    """Bits/dim of the first train.bpd_items items with the EMA weights, written as likelihood/* (the tags of
    ``sdekit likelihood``); Hutchinson divergence, one probe, seeds fixed across steps."""
    from .analysis import analyze, write_tensorboard

    score_fn = network_score_fn(ema, sde, config.model)
    if config.model.num_classes:  # the unconditional likelihood, through the null class
        score_fn = _with_label(score_fn, config.model.num_classes)
    x = items.x[:config.train.bpd_items].to(device)
    labels = None if items.y is None else items.y[:config.train.bpd_items]
    report = analyze(sde, score_fn, x, labels=labels, classes=items.classes, levels=items.levels,
                     batch_size=config.train.batch_size, seed=stream_seed(config.train.seed, _EVAL))
    write_tensorboard(report, None, step, writer=writer)
    return report.summary()["bpd"]


def _with_label(score_fn: Callable, label: int) -> Callable:
    return lambda x, t, **cond: score_fn(x, t, y=torch.full((x.shape[0],), label, device=x.device), **cond)


def _sample(ema: nn.Module, sde: SDE, config, dataset: Dataset, device, registry, writer, workdir: Path,
            step: int) -> None:
    """Samples of the EMA model (config.sample) to workdir/samples and TensorBoard."""
    from .io import save_image_grid, save_samples, save_scatter
    from .metrics import sliced_wasserstein

    sc, n = config.sample, config.sample.num_samples
    k = config.model.num_classes
    cond = {"y": torch.arange(n, device=device) % k} if k else {}
    result = sample(network_score_fn(ema, sde, config.model), sde, (n, *dataset.item_shape), device=device,
                    cond=cond, registry=registry, **sc.sample_kwargs())
    folder = workdir / "samples"
    folder.mkdir(exist_ok=True)
    x = result.samples.cpu()
    save_samples(folder / f"step_{step:08d}.npz", x.numpy(), {**result.provenance, "training_step": step})
    png = folder / f"step_{step:08d}.png"
    if dataset.kind == "image":
        side = max(1, math.ceil(256 / (math.ceil(math.sqrt(n)) * (dataset.item_shape[-1] + 1))))
        save_image_grid(png, x, nrow=k or None, scale=side)
    else:
        reference = dataset.x[torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n]]
        save_scatter(png, x.numpy(), reference.numpy(), title=f"step {step}", labels=("EMA samples", "data"))
        if len(reference) == n:
            writer.add_scalar("sample/sliced_wasserstein", sliced_wasserstein(x, reference), step)
    from PIL import Image

    with Image.open(png) as img:
        writer.add_image("samples", np.asarray(img.convert("RGB")), step, dataformats="HWC")


# -- loading a trained run ----------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """A trained run, ready to sample: the EMA network in eval mode and its score function.

    ``score_fn(x, t, **cond)`` is sdekit's score contract (None for a
    classifier, whose ``classifier_fn(x, t) -> (B, K)`` logits is set instead);
    ``num_classes`` and ``classes`` describe the data's labels; when the score
    network is :attr:`conditional`, it takes ``y`` labels in [0, num_classes)
    and the label ``num_classes`` is its null class (classifier-free guidance).
    """

    config: Any
    sde: SDE
    net: nn.Module
    score_fn: Callable | None
    classifier_fn: Callable | None
    item_shape: tuple[int, ...]
    num_classes: int
    classes: tuple[str, ...]
    step: int
    path: Path

    @property
    def conditional(self) -> bool:
        """Whether the score network takes class labels ``y`` (it was built with model.num_classes > 0)."""
        return self.score_fn is not None and self.config.model.num_classes > 0

    @property
    def null_label(self) -> int | None:
        """The label of the learned null class (conditional score networks), else None."""
        return self.config.model.num_classes if self.conditional else None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint ``path`` names: a file as it is; a workdir's (or checkpoint folder's) latest."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise SdekitError(f"no run at {path}: expected a workdir of sdekit train or a checkpoint file")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = CheckpointManager(folder).latest() if any(folder.glob("ckpt_*.pt")) else None
    if latest is None:
        raise SdekitError(f"no checkpoint in {folder}: train first (sdekit train --config ... --workdir {path})")
    return latest


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu", *, ema: bool = True) -> Run:
    """The run saved at ``path`` (a workdir or a checkpoint file), on ``device``.

    ``ema=False`` loads the raw training weights instead of their moving average.
    """
    ckpt = find_checkpoint(path)
    state = load_checkpoint(ckpt, map_location="cpu")
    config = config_from_text(state["config"], f"{ckpt} (its saved config)")
    sde, data = config.sde.build(), state["data"]
    item_shape = tuple(int(s) for s in data["item_shape"])
    net = build_model(config.model, item_shape)
    net.load_state_dict(state["ema" if ema else "model"])
    net = net.to(resolve_device(device)).eval().requires_grad_(False)
    classifier = config.model.arch == "classifier"
    return Run(config=config, sde=sde, net=net,
               score_fn=None if classifier else network_score_fn(net, sde, config.model),
               classifier_fn=network_classifier_fn(net, sde, config.model) if classifier else None,
               item_shape=item_shape, num_classes=int(data["num_classes"]), classes=tuple(data["classes"]),
               step=int(state["step"]), path=ckpt)


__all__ = ["ClassifierLoss", "EpochBatches", "NonFiniteLossError", "Run", "RunConfig", "TIME_BUCKETS",
           "config_from_text", "find_checkpoint", "load_run", "make_objective", "stream_seed", "train"]
