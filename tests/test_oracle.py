"""The Gaussian-mixture oracle is exact: score = grad log p_t, samples match moments."""

import math

import pytest
import torch

from sdekit.errors import OptionError, ShapeError, UnknownNameError
from sdekit.oracle import GaussianMixture, named_mixture
from sdekit.sde import SubVPSDE, VESDE, VPSDE

f64 = torch.float64


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("spec", ["ring8", "random:dim=16,components=8,seed=0"])
@pytest.mark.parametrize("t", [0.0, 0.05, 0.5, 1.0])
def test_score_is_the_gradient_of_log_prob(sde, spec, t):
    gmm = named_mixture(spec)
    x = gmm.sample_t(32, t, sde, torch.Generator().manual_seed(1)).requires_grad_()
    tt = torch.full((32,), t, dtype=f64)
    (grad,) = torch.autograd.grad(gmm.log_prob(x, tt, sde).sum(), x)
    torch.testing.assert_close(gmm.score(x, tt, sde), grad, rtol=1e-9, atol=1e-9)


def test_log_prob_of_one_gaussian_and_image_shaped_items():
    mu, sd = torch.randn(1, 12, dtype=f64), 0.7
    gmm = GaussianMixture([1.0], mu, [sd], item_shape=(3, 2, 2))
    sde = VPSDE()
    x = torch.randn(5, 3, 2, 2, dtype=f64)
    t = torch.full((5,), 0.3, dtype=f64)
    m, s = sde.marginal(t)
    ref = torch.distributions.Normal(m[:, None] * mu, (m[:, None] ** 2 * sd**2 + s[:, None] ** 2).sqrt())
    torch.testing.assert_close(gmm.log_prob(x, t, sde), ref.log_prob(x.reshape(5, -1)).sum(1))
    assert gmm.score(x, t, sde).shape == x.shape


def test_samples_match_mixture_moments_and_weights():
    gmm = named_mixture("random:dim=4,components=3,seed=2")
    x, k = gmm.sample(40000, torch.Generator().manual_seed(0), return_labels=True)
    freq = torch.bincount(k, minlength=3).to(f64) / len(k)
    assert (freq - gmm.weights).abs().max() < 0.01
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    assert (x.mean(0) - mean).abs().max() < 0.05


def test_posterior_and_conditional_score():
    gmm, sde = named_mixture("ring8"), VESDE()
    x = gmm.sample_t(16, 0.2, sde, torch.Generator().manual_seed(0))
    t = torch.full((16,), 0.2, dtype=f64)
    post = gmm.posterior(x, t, sde)
    torch.testing.assert_close(post.sum(1), torch.ones(16, dtype=f64))
    # the marginal score is the posterior-weighted conditional scores
    cond = torch.stack([gmm.score(x, t, sde, y=torch.full((16,), k)) for k in range(8)], 1)
    torch.testing.assert_close((post[:, :, None] * cond).sum(1), gmm.score(x, t, sde))


def test_named_mixtures_and_their_errors():
    assert named_mixture("grid9").num_components == 9
    assert named_mixture("random:dim=3,components=2,seed=1").dim == 3
    with pytest.raises(UnknownNameError, match="did you mean 'ring8'"):
        named_mixture("rign8")
    with pytest.raises(OptionError, match="key=value"):
        named_mixture("random:dim")
    with pytest.raises(OptionError, match="bad arguments"):
        named_mixture("random:dims=3")
    with pytest.raises(ShapeError, match="weights must have shape"):
        GaussianMixture([1.0, 1.0], torch.zeros(3, 2), [1.0, 1.0, 1.0])
    with pytest.raises(ShapeError, match="expected items of shape"):
        named_mixture("ring8").score(torch.zeros(4, 3), 0.5, VPSDE())
    assert math.isclose(float(named_mixture("ring8").weights.sum()), 1.0)
