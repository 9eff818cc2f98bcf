"""The training loop: quality against the exact mixture, exact resume, DDP = one process, NaN stops,
nothing overwritten, clear config errors, the classifier branch, TensorBoard, every shipped config."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from sdekit import sample
from sdekit.checkpoint import load_checkpoint
from sdekit.config import ConfigError, load_config
from sdekit.errors import SdekitError
from sdekit.metrics import sliced_wasserstein
from sdekit.models import build_model, network_score_fn
from sdekit.train import (ClassifierLoss, EpochBatches, NonFiniteLossError, RunConfig, load_run, make_objective,
                          train)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))

#: a tiny 2-D run: MLP on the ring of 8 Gaussians, no files but the workdir's, quiet
TINY = ["model.arch=mlp", "model.hidden=32", "model.depth=1", "data.name=gmm:ring8", "data.size=512",
        "train.batch_size=64", "train.log_every=1", "train.sample_every=0", "train.eval_every=0",
        "train.device=cpu", "optim.warmup=2", "optim.lr=1e-2"]


def config(*overrides, path=None):
    return load_config(path, RunConfig, [*TINY, *overrides] if path is None else list(overrides))


def quiet(_):
    pass


def ckpt_files(workdir):
    return sorted(p.name for p in (Path(workdir) / "checkpoints").glob("ckpt_*.pt"))


def assert_same_state(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


# -- quality ----------------------------------------------------------------------------------

#: sliced W2 to 4000 exact ring8 samples; the noise floor of two exact sets is ~0.06, a Gaussian with the
#: mixture's mean and covariance scores 0.41 and the untrained network (score 0) is far off
SW_BOUND = 0.15


def test_short_training_run_reaches_the_exact_mixture(tmp_path, exact):
    gmm, reference, floor = exact("ring8")
    cfg = config("model.hidden=64", "model.depth=2", "model.dropout=0", "data.size=20000", "train.steps=1200",
                 "train.batch_size=256", "train.log_every=400", "optim.warmup=100", "optim.lr=2e-3",
                 "optim.ema_decay=0.99")
    summary = train(cfg, tmp_path / "run", log=quiet)
    run = load_run(tmp_path / "run")
    assert (summary["step"], run.step, run.item_shape) == (1200, 1200, (2,))
    assert run.net.training is False and summary["checkpoint"] == str(run.path)

    def distance(score_fn):
        x = sample(score_fn, run.sde, (len(reference), 2), "pc", steps=200, seed=1).samples
        return sliced_wasserstein(x, reference)

    trained = distance(run.score_fn)
    untrained = distance(network_score_fn(build_model(cfg.model, (2,)), run.sde, cfg.model))  # NaN: score 0
    x = gmm.sample(20000, torch.Generator().manual_seed(5))
    chol = torch.linalg.cholesky(torch.cov(x.T))
    gaussian = sliced_wasserstein(torch.randn(len(reference), 2, generator=torch.Generator().manual_seed(3),
                                              dtype=torch.float64) @ chol.T + x.mean(0), reference)
    print(f"sliced W2 after training {trained:.4f} (bound {SW_BOUND}, noise floor {floor:.4f}); "
          f"untrained {untrained:.3g}, moment-matched Gaussian {gaussian:.3f}")
    assert trained < SW_BOUND < gaussian and not untrained < SW_BOUND


# -- reproducibility ----------------------------------------------------------------------------

def test_resume_continues_exactly_as_the_uninterrupted_run(tmp_path):
    base = ["model.dropout=0.1", "train.checkpoint_every=3"]  # dropout: the global RNG is seeded per step
    first = train(config(*base, "train.steps=3"), tmp_path / "split", log=quiet)
    rest = train(config(*base, "train.steps=5"), tmp_path / "split", resume=True, log=quiet)
    whole = train(config(*base, "train.steps=5"), tmp_path / "whole", log=quiet)
    assert rest["resumed_from"] == 3 and rest["steps"] == 2
    assert [h["loss"] for h in first["history"] + rest["history"]] == [h["loss"] for h in whole["history"]]
    a = load_checkpoint(tmp_path / "split" / "checkpoints" / "ckpt_00000005.pt")
    b = load_checkpoint(tmp_path / "whole" / "checkpoints" / "ckpt_00000005.pt")
    for key in ("model", "ema", "optimizer"):
        assert_same_state(a[key], b[key])
    again = train(config(*base, "train.steps=5"), tmp_path / "whole", resume=True, log=quiet)
    assert again["steps"] == 0 and again["step"] == 5  # nothing left to do


def test_epoch_batches_visit_every_item_once_per_epoch():
    batches = EpochBatches(10, 4, seed=3)
    seen = torch.cat([batches(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(EpochBatches(10, 4, seed=3)(3), batches(3))  # a fresh sampler: same batch of step 3
    assert not torch.equal(EpochBatches(10, 4, seed=4)(0), batches(0))


def _ddp_worker(rank, world, init_file, cfg_overrides, workdir):
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train(config(*cfg_overrides), workdir, log=quiet)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    overrides = ["model.dropout=0", "train.steps=3", "train.batch_size=30", "train.log_every=3", "optim.lr=1e-3"]
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), overrides, str(tmp_path / "ddp")), nprocs=2)
    train(config(*overrides), tmp_path / "one", log=quiet)
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "ckpt_00000003.pt")
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "ckpt_00000003.pt")
    worst = max((ddp["model"][k] - one["model"][k]).abs().max().item() for k in one["model"])
    print(f"largest weight difference, 2 processes vs 1: {worst:.2g}")
    assert worst < 1e-6
    assert not torch.equal(one["model"]["out.weight"], torch.zeros_like(one["model"]["out.weight"]))  # it trained


# -- failures -----------------------------------------------------------------------------------

def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import sdekit.train as train_module

    real = train_module.make_objective
    calls = []

    def poisoned(cfg, sde):
        objective = real(cfg, sde)

        def call(*args, **kwargs):
            calls.append(1)
            per_item = objective(*args, **kwargs)
            return per_item * math.nan if len(calls) == 5 else per_item

        return call

    monkeypatch.setattr(train_module, "make_objective", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"at step 5 .*last good checkpoint is .*ckpt_00000004\.pt"):
        train(config("train.steps=8", "train.checkpoint_every=2"), tmp_path, log=quiet)
    assert ckpt_files(tmp_path) == ["ckpt_00000002.pt", "ckpt_00000004.pt"]
    assert len(calls) == 5  # stopped at once on the CPU
    assert torch.isfinite(load_run(tmp_path).net.out.weight).all()


def test_a_diverging_learning_rate_is_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match="NaN or infinite at step 2 .*Lower optim.lr"):
        train(config("optim.lr=1e30", "optim.warmup=0", "optim.grad_clip=0", "train.steps=10",
                     "train.checkpoint_every=1"), tmp_path, log=quiet)
    assert ckpt_files(tmp_path) == ["ckpt_00000001.pt"]


def test_a_fresh_run_never_overwrites_an_earlier_one(tmp_path):
    train(config("train.steps=2"), tmp_path, log=quiet)
    before = (tmp_path / "checkpoints" / "ckpt_00000002.pt").read_bytes()
    with pytest.raises(SdekitError, match=r"already holds a training run .*--resume.*another --workdir"):
        train(config("train.steps=2", "train.seed=1"), tmp_path, log=quiet)
    assert (tmp_path / "checkpoints" / "ckpt_00000002.pt").read_bytes() == before


def test_resume_with_another_model_names_the_differing_keys(tmp_path):
    train(config("train.steps=1"), tmp_path, log=quiet)
    with pytest.raises(ConfigError, match=r"model differs .*model\.hidden: 32 \(checkpoint\) != 48 \(config\)"):
        train(config("train.steps=2", "model.hidden=48"), tmp_path, resume=True, log=quiet)


def test_conditional_models_must_match_the_data(tmp_path):
    with pytest.raises(ConfigError, match=r"model.num_classes = 10, but data 'gmm:ring8' has 8 classes"):
        train(config("model.num_classes=10"), tmp_path, log=quiet)
    with pytest.raises(ConfigError, match=r"data 'checkerboard' has no labels"):
        train(config("model.num_classes=8", "data.name=checkerboard"), tmp_path, log=quiet)
    with pytest.raises(ConfigError, match=r"loss.p_uncond .*model is unconditional"):
        train(config("loss.p_uncond=0.1"), tmp_path, log=quiet)
    assert not ckpt_files(tmp_path)


# -- the classifier branch ------------------------------------------------------------------------

def test_a_noise_aware_classifier_learns_the_labels(tmp_path):
    cfg = config("model.arch=classifier", "model.num_classes=8", "model.hidden=64", "model.dropout=0",
                 "data.size=4000", "train.steps=150", "train.batch_size=128", "optim.lr=3e-3",
                 "optim.warmup=10", "optim.ema_decay=0.9", "train.log_every=50")
    assert isinstance(make_objective(cfg, cfg.sde.build()), ClassifierLoss)
    summary = train(cfg, tmp_path, log=quiet)
    run = load_run(tmp_path)
    assert run.score_fn is None and run.null_label is None
    from sdekit.guidance import oracle_classifier
    from sdekit.models import network_classifier_fn
    from sdekit.oracle import named_mixture

    gmm = named_mixture("ring8")
    x0, y = gmm.sample(2000, torch.Generator().manual_seed(9), return_labels=True)
    objective = make_objective(cfg, run.sde)

    def cross_entropy(fn, x0=x0.float()):
        with torch.no_grad():
            return float(objective(fn, x0, torch.Generator().manual_seed(0), {"y": y}).mean())

    torch.manual_seed(0)
    before = cross_entropy(network_classifier_fn(build_model(cfg.model, (2,)), run.sde, cfg.model))
    after = cross_entropy(run.classifier_fn)
    best = cross_entropy(oracle_classifier(gmm, run.sde), x0)  # the exact p_t(y | x_t): the lowest possible
    print(f"cross-entropy at random t: untrained {before:.3f}, trained {after:.3f}, exact posterior {best:.3f}")
    assert after - best < 0.1 * (before - best)  # closes 90% of the gap to the optimum
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    with pytest.raises(ConfigError, match="loss.weighting .*applies to score networks"):
        make_objective(config("model.arch=classifier", "model.num_classes=8", "loss.weighting=likelihood"),
                       run.sde)


# -- TensorBoard and samples ----------------------------------------------------------------------

def test_tensorboard_has_the_scalars_the_samples_and_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(config("train.steps=4", "train.log_every=2", "train.sample_every=4", "train.eval_every=2",
                 "data.holdout=0.25", "sample.sampler=euler_maruyama", "sample.steps=5", "sample.num_samples=16"),
          tmp_path, log=quiet)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()
    buckets = [f"loss_by_t/{i / 5:.1f}-{(i + 1) / 5:.1f}" for i in range(5)]
    expected = {"loss", "lr", "grad_norm", "throughput/examples_per_s", "throughput/steps_per_s", "eval/loss",
                "sample/sliced_wasserstein"}
    assert expected <= set(tags["scalars"]) and set(tags["scalars"]) & set(buckets)
    assert [e.step for e in events.Scalars("loss")] == [2, 4]
    assert tags["images"] == ["samples"] and "config/text_summary" in tags["tensors"]
    assert (tmp_path / "samples" / "step_00000004.png").exists()
    assert load_config(tmp_path / "config.toml", RunConfig) == load_run(tmp_path).config


def test_a_sampling_failure_is_reported_and_training_goes_on(tmp_path):
    lines = []
    summary = train(config("train.steps=2", "train.sample_every=1", "sample.steps=5"), tmp_path, log=lines.append)
    assert summary["step"] == 2 and ckpt_files(tmp_path) == ["ckpt_00000002.pt"]
    assert any("sampling at step 1 failed" in line and "use more steps" in line for line in lines)


def test_a_class_conditional_unet_trains_and_samples_an_image_grid(tmp_path):
    cfg = load_config(CONFIGS[0].parent / "digits_cond.toml", RunConfig, [
        "model.channels=8", "model.attn_resolutions=[]", "train.steps=2", "train.batch_size=16",
        "train.sample_every=2", "train.device=cpu", "sample.sampler=euler_maruyama", "sample.steps=2",
        "sample.num_samples=20"])
    train(cfg, tmp_path, log=quiet)
    from PIL import Image

    with Image.open(tmp_path / "samples" / "step_00000002.png") as img:
        assert img.mode == "L" and img.width > img.height  # 10 classes per row, 2 rows
    run = load_run(tmp_path)
    assert (run.num_classes, run.null_label, run.classes[:2]) == (10, 10, ("0", "1"))


# -- the shipped configs ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(path, registry):
    cfg = load_config(path, RunConfig)
    cfg.sample.check(registry)
    sde = cfg.sde.build()
    make_objective(cfg, sde)
    if cfg.data.name not in ("folder", "npy"):
        from sdekit.data import load_dataset
        from sdekit.train import _check_data

        dataset = load_dataset(cfg.data)
        _check_data(cfg, dataset)
        build_model(cfg.model, dataset.item_shape)


def test_the_shipped_configs_are_the_promised_ones():
    assert {p.name for p in CONFIGS} == {
        "toy_vp.toml", "toy_ve.toml", "digits_vp.toml", "digits_subvp.toml", "digits_ve.toml", "digits_cond.toml",
        "digits_classifier.toml", "cifar_ncsnpp.toml", "cifar_ddpmpp.toml"}


@pytest.mark.parametrize("name, amp", [("cifar_ncsnpp.toml", "none"), ("cifar_ddpmpp.toml", "bf16")])
def test_cifar_configs_run_two_steps_on_fake_data(tmp_path, name, amp):
    images = np.random.default_rng(0).integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "fake.npy", images)
    cfg = load_config(CONFIGS[0].parent / name, RunConfig, [
        "data.name=npy", f"data.path={tmp_path / 'fake.npy'}", "model.channels=8", "model.channel_mult=[1, 2]",
        "model.num_res_blocks=1", "model.attn_resolutions=[16]", "train.steps=2", "train.batch_size=4",
        "train.sample_every=0", "train.device=cpu", f"train.amp={amp}"])
    assert cfg.data.flip
    summary = train(cfg, tmp_path / "run", log=quiet)
    assert summary["step"] == 2 and math.isfinite(summary["final_loss"])
    assert load_run(tmp_path / "run").item_shape == (3, 32, 32)


def test_best_checkpoint_is_the_lowest_held_out_loss(tmp_path):
    from sdekit.checkpoint import checkpoint_info

    train(config("data.holdout=0.25", "train.eval_every=100", "train.checkpoint_every=2", "train.steps=6",
                 "train.keep_last=1"), tmp_path, log=quiet)
    folder = tmp_path / "checkpoints"
    assert ckpt_files(tmp_path) == ["ckpt_00000006.pt"]  # keep_last 1, and best.pt besides
    best = checkpoint_info(folder / "best.pt")
    # the held-out losses of the EMA weights at steps 2, 4, 6, recomputed from scratch
    losses = {}
    for step in (2, 4, 6):
        train(config("data.holdout=0.25", "train.eval_every=100", f"train.checkpoint_every={step}",
                     f"train.steps={step}"), tmp_path / f"s{step}", log=quiet)
        losses[step] = checkpoint_info(tmp_path / f"s{step}" / "checkpoints" / "best.pt")["metric"]
    assert best["step"] == min(losses, key=losses.get)
    assert best["metric"] == pytest.approx(min(losses.values()), rel=1e-6)
    assert len(set(losses.values())) == 3  # three different weights: the choice means something


def test_ema_warmup_forgets_the_initial_weights():
    """With warm-up, the decay after n updates is min(d, (1 + n) / (10 + n)); the weight left on the
    initial parameters after 2100 steps is their product, far below d^2100."""
    from sdekit.config import OptimConfig

    on, off = OptimConfig(ema_decay=0.999), OptimConfig(ema_decay=0.999, ema_warmup=False)
    assert on.ema_decay_at(0) == pytest.approx(0.1) and on.ema_decay_at(10_000) == 0.999
    assert off.ema_decay_at(0) == 0.999
    left = lambda c: math.prod(c.ema_decay_at(k) for k in range(2100))  # noqa: E731
    assert left(off) == pytest.approx(0.999 ** 2100) and left(off) > 0.12
    assert left(on) < 1e-3
