"""Training speed of the demo network: sdekit's loop against the bare step, side by side.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.training [--steps 300] [--repeats 3]

On a quiet machine only. The loop is :func:`sdekit.train.train` on
``configs/digits_vp.toml`` (checkpoints, samples and evaluations switched off,
the log every 100 steps); the bare step is the same network, loss and optimizer
in a hand-written loop (random batches, no EMA, no logging, no per-step
finiteness check). The ratio is the toolkit's overhead; steps/s of both are
medians over ``repeats`` alternating runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from sdekit.config import load_config
from sdekit.data import load_dataset
from sdekit.losses import make_loss
from sdekit.models import build_model, count_parameters, network_score_fn
from sdekit.train import RunConfig, train

OFF = ["train.eval_every=0", "train.sample_every=0", "train.checkpoint_every=1000000", "train.log_every=100"]


def loop_steps_per_s(steps: int) -> float:
    config = load_config("configs/digits_vp.toml", RunConfig, [f"train.steps={steps}", *OFF])
    with tempfile.TemporaryDirectory() as workdir:
        summary = train(config, workdir, log=lambda _: None, progress=False)
    return summary["examples_per_s"] / config.train.batch_size


def bare_steps_per_s(steps: int, warmup: int = 20) -> float:
    config = load_config("configs/digits_vp.toml", RunConfig, [])
    sde = config.sde.build()
    data, _ = load_dataset(config.data).split()
    torch.manual_seed(0)
    net = build_model(config.model, data.item_shape)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.optim.lr)
    loss = make_loss(config.loss, sde)
    score_fn = network_score_fn(net, sde, config.model)
    gen = torch.Generator().manual_seed(0)

    def step():
        index = torch.randint(0, len(data), (config.train.batch_size,), generator=gen)
        value = loss(score_fn, data.x[index], gen, {}).mean()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loop, bare = [], []
    for _ in range(args.repeats):  # alternate, so that drift hits both alike
        loop.append(loop_steps_per_s(args.steps))
        bare.append(bare_steps_per_s(args.steps))
    config = load_config("configs/digits_vp.toml", RunConfig, [])
    result = {"network_parameters": count_parameters(build_model(config.model, (1, 8, 8))),
              "batch_size": config.train.batch_size, "threads": torch.get_num_threads(),
              "loop_steps_per_s": statistics.median(loop), "bare_steps_per_s": statistics.median(bare),
              "loop_over_bare": statistics.median(loop) / statistics.median(bare), "runs": {"loop": loop, "bare": bare}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
