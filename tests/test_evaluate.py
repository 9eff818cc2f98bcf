"""Digits evaluation: the Frechet distance matches its closed form, the judge is accurate
and reproducible, real digits score well, and noise, blank images and mode collapse score
clearly worse."""

import json

import pytest
import torch

from sdekit import evaluate
from sdekit.errors import OptionError, SdekitError, ShapeError
from sdekit.evaluate import (DIGITS_HOLDOUT, DIGITS_SEED, DigitsJudge, digits_split, evaluate_digits,
                             fit_digits_judge, frechet_distance, real_digits_reference)

KEYS = {"n", "confident_fraction", "class_histogram", "histogram_tv", "frechet", "threshold", "judge_accuracy"}


@pytest.fixture(scope="module")
def judge():
    return fit_digits_judge()


@pytest.fixture(scope="module")
def real(judge):
    """The real-digits reference with n = len(held_out) = 359."""
    return real_digits_reference(judge=judge)


def gaussian(n, mean, std, seed):
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return mean + std * torch.randn(n, len(mean), generator=g, dtype=torch.float64)


# -- frechet_distance -----------------------------------------------------------------------

def test_frechet_of_identical_sets_is_zero():
    a = gaussian(500, [0.0] * 8, [1.0] * 8, seed=0) @ gaussian(8, [0.0] * 8, [1.0] * 8, seed=1)  # correlated
    assert abs(frechet_distance(a, a)) < 1e-8
    assert abs(frechet_distance(a, a.flip(0))) < 1e-8  # row order does not matter


def test_frechet_matches_the_closed_form_for_diagonal_gaussians():
    mu1, s1 = [0.0, 0.0, 0.0], [1.0, 2.0, 0.5]
    mu2, s2 = [1.0, -0.5, 0.25], [1.5, 1.0, 0.5]
    exact = sum((m - n) ** 2 for m, n in zip(mu1, mu2)) + sum((s - t) ** 2 for s, t in zip(s1, s2))  # 2.5625
    got = frechet_distance(gaussian(200_000, mu1, s1, seed=0), gaussian(200_000, mu2, s2, seed=1))
    # sampling error of the means and standard deviations at N = 2e5: sd about 0.012; 0.05 is 4 sd
    assert abs(got - exact) < 0.05, (got, exact)


def test_frechet_agrees_with_scipy_sqrtm_on_full_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    a = gaussian(300, [0.0] * 6, [1.0] * 6, seed=0) @ gaussian(6, [0.0] * 6, [1.0] * 6, seed=1)
    b = gaussian(400, [0.5] * 6, [1.0] * 6, seed=2) @ gaussian(6, [0.0] * 6, [1.0] * 6, seed=3)
    ca, cb = torch.cov(a.T).numpy(), torch.cov(b.T).numpy()
    cross = linalg.sqrtm(ca @ cb).real.trace()  # the textbook formula, another matrix square root
    expected = float((a.mean(0) - b.mean(0)).square().sum()) + ca.trace() + cb.trace() - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_frechet_is_symmetric_and_shifts_by_the_squared_translation():
    a = gaussian(400, [0.0] * 5, [1.0, 2.0, 0.5, 1.0, 3.0], seed=0)
    b = gaussian(300, [1.0] * 5, [2.0, 1.0, 1.0, 0.2, 1.0], seed=1)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    shift = torch.tensor([3.0, -1.0, 0.0, 2.0, 0.5], dtype=torch.float64)
    assert frechet_distance(a + shift, a) == pytest.approx(float(shift.square().sum()), rel=1e-9)
    assert frechet_distance(a + shift, b + shift) == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_frechet_is_stable_for_rank_deficient_covariances():
    a = gaussian(10, [0.0] * 64, [1.0] * 64, seed=0)  # 10 rows of 64 features: rank 9
    b = torch.cat([a[:, :32], torch.zeros(10, 32, dtype=torch.float64)], 1)  # half the features dead
    assert abs(frechet_distance(a, a)) < 1e-8 and abs(frechet_distance(b, b)) < 1e-8
    # the dead half contributes exactly its trace and squared mean: the distance is additive over blocks
    expected = frechet_distance(a[:, :32], b[:, :32]) + float(a[:, 32:].mean(0).square().sum()) \
        + float(torch.cov(a[:, 32:].T).trace())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_frechet_rejects_bad_feature_sets():
    a = torch.zeros(5, 4)
    with pytest.raises(ShapeError, match="at least 2 rows"):
        frechet_distance(a[:1], a)
    with pytest.raises(ShapeError, match=r"\(5, 3\)"):
        frechet_distance(a, a[:, :3])
    with pytest.raises(ShapeError, match=r"\(N, F\)"):
        frechet_distance(a[None], a)
    with pytest.raises(SdekitError, match="NaN"):
        frechet_distance(a, torch.full((5, 4), float("nan")))


# -- the judge ------------------------------------------------------------------------------

def test_split_is_the_documented_one():
    train, held_out = digits_split()
    assert (DIGITS_HOLDOUT, DIGITS_SEED) == (0.2, 0)
    assert (len(train), len(held_out)) == (1438, 359)
    assert train.item_shape == held_out.item_shape == (1, 8, 8)


def test_judge_is_accurate_cached_and_has_its_shapes(judge):
    assert isinstance(judge, DigitsJudge) and judge.test_accuracy >= 0.95
    assert fit_digits_judge(seed=0, device=torch.device("cpu")) is judge  # one fit per session
    assert not judge.net.training and not any(p.requires_grad for p in judge.net.parameters())
    x = digits_split()[1].x[:7]
    logits, features = judge.logits(x), judge.features(x)
    assert logits.shape == (7, 10) and features.shape[0] == 7 and 16 <= features.shape[1] <= 64
    assert features.dtype == torch.float64
    assert torch.allclose(judge.logits(x.double()), logits)  # any dtype of x


def test_refitting_with_the_same_seed_gives_identical_logits(judge):
    x = digits_split()[1].x
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)  # a global RNG state unlike the cached judge's: only `seed` may matter
        state = torch.get_rng_state()
        refit = evaluate._train_judge(0, "cpu")  # uncached
        assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    assert refit is not judge and refit.test_accuracy == judge.test_accuracy
    assert torch.equal(refit.logits(x), judge.logits(x))
    other = evaluate._train_judge(1, "cpu")
    assert not torch.equal(other.logits(x), judge.logits(x))


# -- evaluate_digits and the real-digits yardstick --------------------------------------------

def test_real_digits_score_well(real, judge):
    assert set(real) == KEYS and real["n"] == 359 and real["judge_accuracy"] == judge.test_accuracy
    assert real["confident_fraction"] > 0.8 and real["histogram_tv"] < 0.1
    assert 0 < real["frechet"] < 30
    assert sum(real["class_histogram"]) == pytest.approx(1.0) and len(real["class_histogram"]) == 10
    json.dumps(real)  # plain numbers, ready for --json
    assert real_digits_reference(judge=judge) == real  # seeded
    assert real_digits_reference(judge=judge, seed=1)["frechet"] != real["frechet"]


def test_held_out_digits_against_themselves_have_zero_frechet(judge):
    held_out = digits_split()[1].x
    assert abs(evaluate_digits(held_out, judge)["frechet"]) < 1e-8  # the default reference is the held-out set


@pytest.mark.parametrize("kind", ["noise", "black"])
def test_noise_and_blank_images_score_clearly_worse(kind, real, judge):
    if kind == "noise":
        fake = torch.rand(359, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    else:
        fake = torch.full((359, 1, 8, 8), -1.0)
    scores = evaluate_digits(fake, judge)
    assert scores["frechet"] > 10 * real["frechet"], (scores["frechet"], real["frechet"])
    assert scores["confident_fraction"] < real["confident_fraction"] - 0.3 \
        or scores["histogram_tv"] > real["histogram_tv"] + 0.3, scores


def test_mode_collapse_is_detected(judge):
    train = digits_split()[0]
    three = train.x[train.y == 3][0]
    scores = evaluate_digits(three.expand(300, 1, 8, 8), judge)
    assert scores["class_histogram"][3] == 1.0
    assert scores["histogram_tv"] == pytest.approx(0.9)
    reference = real_digits_reference(300, judge)
    assert scores["frechet"] > 10 * reference["frechet"], (scores["frechet"], reference["frechet"])


def test_samples_are_clamped_to_the_pixel_range(judge):
    x = digits_split()[1].x[:50]
    assert evaluate_digits(x * 3, judge) == evaluate_digits((x * 3).clamp(-1, 1), judge)


@pytest.mark.parametrize("shape", [(10, 8, 8), (10, 3, 8, 8), (10, 1, 28, 28), (10, 64), (1, 1, 8, 8)])
def test_wrong_shapes_name_the_expected_one(shape, judge):
    with pytest.raises(ShapeError) as err:
        evaluate_digits(torch.zeros(shape), judge)
    assert "(N, 1, 8, 8)" in str(err.value) and str(shape) in str(err.value)


def test_bad_values_and_options_are_clear_errors(judge):
    x = digits_split()[1].x[:20].clone()
    x[3, 0, 2, 2] = float("nan")
    with pytest.raises(SdekitError, match=r"NaN.*\(N, 1, 8, 8\)|\(N, 1, 8, 8\).*NaN"):
        evaluate_digits(x, judge)
    with pytest.raises(ShapeError, match=r"reference.*\(N, 1, 8, 8\)"):
        evaluate_digits(x.nan_to_num(), judge, reference=torch.zeros(5, 64))
    with pytest.raises(OptionError, match="threshold"):
        evaluate_digits(x.nan_to_num(), judge, threshold=1.5)
    with pytest.raises(OptionError, match="1438"):
        real_digits_reference(5000, judge)
