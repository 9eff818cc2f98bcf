"""The sample-quality metrics: the closed-form MMD to a mixture against Monte Carlo and exact draws."""

import math
import statistics

import pytest
import torch

from sdekit.errors import ShapeError
from sdekit.metrics import _gauss_expectation, mixture_bandwidths, mixture_mmd, sliced_wasserstein
from sdekit.oracle import named_mixture

MIXTURE = named_mixture("random:dim=4,components=3,seed=2")


def _draws(n, seed, gmm=MIXTURE):
    return gmm.sample(n, torch.Generator().manual_seed(seed))


def test_closed_form_expectations_match_monte_carlo():
    w, mu, var = MIXTURE.weights, MIXTURE.means, MIXTURE.stds.square()
    x, y = _draws(200_000, 1), _draws(200_000, 2)
    probe = _draws(4, 3)
    for h in mixture_bandwidths(MIXTURE):
        k = torch.exp(-0.5 * (x - y).square().sum(1) / h**2)
        pair = _gauss_expectation((mu[:, None] - mu[None]).square(), var[:, None] + var[None], h * h)
        assert abs(float(w @ pair @ w) - float(k.mean())) < 5 * float(k.std()) / math.sqrt(len(k))
        g = (w * _gauss_expectation((probe[:, None] - mu[None]).square(), var[None], h * h)).sum(1)
        kp = torch.exp(-0.5 * (probe[:, None] - y[None]).square().sum(-1) / h**2)
        assert (g - kp.mean(1)).abs().max() < 5 * float(kp.std(1).max()) / math.sqrt(len(y))


def test_exact_draws_are_unbiased_and_the_standard_error_is_calibrated():
    results = [mixture_mmd(_draws(150, 100 + s), MIXTURE) for s in range(400)]
    values = [r.mmd2 for r in results]
    spread = statistics.stdev(values)
    # an unbiased estimate: exact draws average to 0, not to a positive floor
    assert abs(statistics.mean(values)) < 4 * spread / math.sqrt(len(values))
    assert sum(v < 0 for v in values) > 0.3 * len(values)
    # the reported standard error is the spread across independent draws, erring high near the
    # exact law (measured about 1.25x; without the zeta_2 correction of zeta_1 it is about 1.7x)
    assert 0.9 < statistics.mean(r.se for r in results) / spread < 1.5


@pytest.mark.parametrize("wrong", ["narrow", "wide", "weights"])
def test_a_wrong_law_is_many_standard_errors_above_zero(wrong):
    x, k = MIXTURE.sample(2000, torch.Generator().manual_seed(7), return_labels=True)
    centre = MIXTURE.means[k]
    if wrong == "narrow":
        x = centre + 0.8 * (x - centre)
    elif wrong == "wide":
        x = centre + 1.2 * (x - centre)
    else:  # every item of the first component moved to the second
        other = _draws(8000, 8)
        other = other[MIXTURE.posterior(other).argmax(1) == 1][: int((k == 0).sum())]
        x = x.clone()
        x[k == 0] = other
    res = mixture_mmd(x, MIXTURE)
    assert res.mmd2 > 5 * res.se, res
    assert res.z() > 5


def test_inputs_are_checked():
    with pytest.raises(ShapeError, match="items of shape"):
        mixture_mmd(torch.zeros(10, 3), MIXTURE)
    with pytest.raises(ValueError, match="at least 3"):
        mixture_mmd(torch.zeros(2, 4), MIXTURE)
    with pytest.raises(ValueError, match="equal shapes"):
        sliced_wasserstein(torch.zeros(10, 4), torch.zeros(9, 4))


def test_bandwidths_follow_the_component_scale():
    ring = named_mixture("ring8")  # 2-D, std 0.2: sqrt(2 * 0.04) = 0.283
    assert mixture_bandwidths(ring) == pytest.approx([math.sqrt(0.08) * f for f in (0.5, 1, 2, 4, 8, 16)])
    res = mixture_mmd(ring.sample(50, torch.Generator().manual_seed(0)), ring, bandwidths=[1.0])
    assert res.bandwidths == (1.0,) and res.n == 50


def test_the_widths_shares_add_up_and_see_different_errors():
    x, k = MIXTURE.sample(2000, torch.Generator().manual_seed(7), return_labels=True)
    centre = MIXTURE.means[k]
    narrow = mixture_mmd(centre + 0.8 * (x - centre), MIXTURE)
    assert sum(narrow.per_bandwidth) == pytest.approx(narrow.mmd2, rel=1e-9)
    # a 20% narrower spread in each mode is the two smallest widths' error (measured 97%), a
    # shift of the whole law by half a component's std is seen at every width (4x and up: 18%)
    shifted = mixture_mmd(x + 0.5 * MIXTURE.stds.mean(), MIXTURE)
    share = lambda r, i: sum(r.per_bandwidth[i]) / r.mmd2  # noqa: E731
    assert share(narrow, slice(0, 2)) > 0.9 and share(narrow, slice(3, None)) < 0.02
    assert share(shifted, slice(3, None)) > 0.1
