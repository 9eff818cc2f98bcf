"""Sample quality on the bundled 8x8 digits, judged by a small classifier trained here.

Nothing is downloaded: the judge is a tiny CNN fitted (torch, seeded, a few
seconds on one CPU thread) to the TRAIN part of the evaluation split
``DataConfig(name="digits", holdout=DIGITS_HOLDOUT, seed=DIGITS_SEED)``; its
accuracy is measured on the held-out part, which is also the default reference
set of real digits. Typical use::

    judge = fit_digits_judge()                  # cached per (seed, device)
    scores = evaluate_digits(samples, judge)    # samples (N, 1, 8, 8) in [-1, 1]
    yardstick = real_digits_reference(n=len(samples), judge=judge)

Metrics (see :func:`evaluate_digits`): the share of confidently classified
samples, the class histogram and its total-variation distance to uniform, and
the Frechet distance between judge features of the samples and of real digits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from .data import DataConfig, Dataset, load_dataset
from .errors import OptionError, SdekitError, ShapeError

DIGITS_HOLDOUT = 0.2
DIGITS_SEED = 0
DIGITS_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def digits_split() -> tuple[Dataset, Dataset]:
    """``(train, held_out)``: the evaluation split of the 1797 digits (1438 and 359 items)."""
    return load_dataset(DataConfig(name="digits", holdout=DIGITS_HOLDOUT, seed=DIGITS_SEED)).split()


def _check_images(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x`` as a tensor, after checking it is (N, 1, 8, 8) with N >= 2 and finite."""
    x = torch.as_tensor(x)
    if x.ndim != 4 or tuple(x.shape[1:]) != DIGITS_SHAPE or len(x) < 2:
        raise ShapeError(f"{what} has shape {tuple(x.shape)}: expected digits images of shape (N, 1, 8, 8) "
                         f"with N >= 2, in [-1, 1]")
    if not torch.isfinite(x).all():
        raise SdekitError(f"{what} (shape {tuple(x.shape)}, expected (N, 1, 8, 8)) holds NaN or infinite values")
    return x


@dataclass(frozen=True, eq=False)
class DigitsJudge:
    """A fitted digits classifier: ``net = Sequential(body, head)``, in eval mode without
    gradients. ``body`` maps images (N, 1, 8, 8) to features (N, 64); ``head`` is the final
    linear layer to 10 logits. ``test_accuracy`` is measured on the held-out split."""

    net: nn.Module
    test_accuracy: float

    @torch.no_grad()
    def _run(self, x: torch.Tensor, module: nn.Module, batch_size: int = 4096) -> torch.Tensor:
        param = next(self.net.parameters())
        x = x.detach().to(param.device, param.dtype)  # once for the whole set
        return torch.cat([module(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).cpu()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, 8, 8) in [-1, 1], any device and dtype -> logits (N, 10) float32 on the CPU."""
        return self._run(x, self.net)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, 8, 8) in [-1, 1] -> penultimate features (N, 64) float64 on the CPU."""
        return self._run(x, self.net[0]).double()


def _digits_net() -> nn.Sequential:
    """conv 3x3 (16) -> pool -> conv 3x3 (32) -> pool -> linear 128 -> 64 (the features) -> 10."""
    body = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (16, 4, 4)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (32, 2, 2)
        nn.Flatten(), nn.Linear(128, 64), nn.ReLU())
    return nn.Sequential(body, nn.Linear(64, NUM_CLASSES))


def fit_digits_judge(seed: int = 0, device: str | torch.device = "cpu") -> DigitsJudge:
    """The digits judge fitted on the TRAIN split (Adam, 40 epochs of batches of 64; a
    few seconds on one CPU thread), reaching about 0.99 held-out accuracy.

    Deterministic given ``seed`` on the CPU: weights are initialised under
    ``torch.manual_seed(seed)`` inside a forked RNG (the caller's global RNG is
    untouched) and batches are drawn from a generator seeded with ``seed``.
    Cached per (seed, device), so a process fits it once: the judge is shared,
    do not train it further.
    """
    return _cached_judge(int(seed), str(torch.device(device)))


def _train_judge(seed: int, device: str) -> DigitsJudge:
    """A freshly fitted judge (see :func:`fit_digits_judge`, which caches this)."""
    train, held_out = digits_split()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _digits_net().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(40):
        for x, y in train.batches(64, generator):
            loss = nn.functional.cross_entropy(net(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval().requires_grad_(False)
    predicted = DigitsJudge(net, float("nan")).logits(held_out.x).argmax(1)
    return DigitsJudge(net, (predicted == held_out.y).double().mean().item())


_cached_judge = functools.lru_cache(maxsize=None)(_train_judge)


def _gaussian(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and unbiased covariance (F, F) of rows (N, F), float64."""
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def _psd_eigh(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and vectors of a symmetric PSD matrix (F, F); eigenvalues within rounding
    error of 0 (below F eps max|eigenvalue|, negative ones included) are set to 0, as their
    square roots (~1e-8) would otherwise add noise to a rank-deficient matrix."""
    eigenvalues, vectors = torch.linalg.eigh((c + c.T) / 2)
    tiny = len(c) * torch.finfo(c.dtype).eps * eigenvalues.abs().max()
    return torch.where(eigenvalues > tiny, eigenvalues, 0.0), vectors


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to rows ``a`` (N, F) and ``b`` (M, F).

    ||mu_a - mu_b||^2 + tr(C_a) + tr(C_b) - 2 tr((sqrt(C_a) C_b sqrt(C_a))^(1/2)), the
    squared 2-Wasserstein distance of the Gaussians (as in FID), in the squared units of
    the rows. Computed in float64 on the CPU with symmetric eigendecompositions, so
    rank-deficient covariances (N <= F, dead features) are fine; clipped at 0.
    """
    a, b = (torch.as_tensor(v).detach().to("cpu", torch.float64) for v in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ShapeError(f"frechet_distance needs feature rows (N, F) and (M, F), got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ShapeError(f"frechet_distance needs at least 2 rows in each set to fit a covariance, got "
                         f"{len(a)} and {len(b)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise SdekitError("frechet_distance got NaN or infinite features")
    (mu_a, c_a), (mu_b, c_b) = _gaussian(a), _gaussian(b)
    eigenvalues, vectors = _psd_eigh(c_a)
    root_a = (vectors * eigenvalues.sqrt()) @ vectors.T
    cross = _psd_eigh(root_a @ c_b @ root_a)[0].sqrt().sum()  # tr sqrt(sqrt(C_a) C_b sqrt(C_a))
    return max(float((mu_a - mu_b).square().sum() + c_a.trace() + c_b.trace() - 2 * cross), 0.0)


def evaluate_digits(samples: torch.Tensor, judge: DigitsJudge | None = None, *,
                    reference: torch.Tensor | None = None, threshold: float = 0.9) -> dict:
    """Scores of digit samples (N, 1, 8, 8), clamped to [-1, 1], N >= 2.

    Returns a JSON-ready dict::

        n                   N
        confident_fraction  share of samples whose max softmax probability is >= threshold
        class_histogram     10 fractions: how often each class is the judge's argmax
        histogram_tv        total-variation distance of that histogram to uniform,
                            0 (balanced) .. 0.9 (every sample one class)
        frechet             frechet_distance of judge features of the samples and of
                            ``reference`` (default: the held-out real digits)
        threshold           the threshold used
        judge_accuracy      the judge's held-out accuracy

    ``judge`` defaults to ``fit_digits_judge()``. The Frechet distance grows as N
    shrinks; compare with :func:`real_digits_reference` of the same N.
    """
    samples = _check_images(samples, "samples").clamp(-1.0, 1.0)
    reference = digits_split()[1].x if reference is None else _check_images(reference, "reference")
    if not 0.0 <= threshold <= 1.0:
        raise OptionError(f"threshold must lie in [0, 1], got {threshold!r}")
    judge = fit_digits_judge() if judge is None else judge
    probs = judge.logits(samples).double().softmax(1)
    histogram = torch.bincount(probs.argmax(1), minlength=NUM_CLASSES).double() / len(samples)
    return {"n": len(samples),
            "confident_fraction": (probs.max(1).values >= threshold).double().mean().item(),
            "class_histogram": histogram.tolist(),
            "histogram_tv": 0.5 * (histogram - 1.0 / NUM_CLASSES).abs().sum().item(),
            "frechet": frechet_distance(judge.features(samples), judge.features(reference)),
            "threshold": threshold,
            "judge_accuracy": judge.test_accuracy}


def real_digits_reference(n: int | None = None, judge: DigitsJudge | None = None, seed: int = 0) -> dict:
    """:func:`evaluate_digits` of ``n`` REAL digits, the yardstick for a model's numbers.

    The ``n`` digits are drawn without replacement (generator seeded with ``seed``)
    from the TRAIN split and scored against the held-out split, as model samples
    are. ``n`` defaults to len(held_out) = 359 and is at most len(train) = 1438.
    With few samples the Frechet distance is biased upwards (the covariance of
    64 features is estimated from n rows), so the fair comparison for N model
    samples is this reference with n = N.
    """
    train, held_out = digits_split()
    n = len(held_out) if n is None else n
    if not 2 <= n <= len(train):
        raise OptionError(f"n must lie in 2..{len(train)} (the size of the train split), got {n!r}")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return evaluate_digits(train.x[index], judge, reference=held_out.x)
