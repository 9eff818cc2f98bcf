"""SDEs: the exact classic discretizations, the kernel's moment equations, any rank/dtype."""

import math

import numpy as np
import pytest
import torch

import sdekit
from sdekit.metrics import sliced_wasserstein
from sdekit.sde import SDE, SubVPSDE, VESDE, VPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE()]
f64 = torch.float64


def test_vp_uniform_grid_gives_ddpm_linear_betas_exactly():
    n = 1000
    grid = torch.linspace(0, 1, n + 1, dtype=f64)
    a, b = VPSDE().discretize(grid[:-1], grid[1:])
    ddpm_betas = np.linspace(1e-4, 0.02, n)  # Ho et al. 2020
    np.testing.assert_allclose(b.numpy() ** 2, ddpm_betas, rtol=1e-12, atol=0)
    np.testing.assert_allclose(a.numpy() ** 2, 1 - ddpm_betas, rtol=1e-12, atol=0)


def test_ve_gives_ncsn_geometric_sigmas_and_smld_steps_exactly():
    n, sde = 1000, VESDE(sigma_min=0.01, sigma_max=50.0)
    levels = torch.linspace(0, 1, n, dtype=f64)
    ncsn = np.exp(np.linspace(np.log(0.01), np.log(50.0), n))  # Song and Ermon 2019
    np.testing.assert_allclose(sde.sigma(levels).numpy(), ncsn, rtol=1e-12)
    a, b = sde.discretize(levels[:-1], levels[1:])
    np.testing.assert_array_equal(a.numpy(), np.ones(n - 1))
    np.testing.assert_allclose(b.numpy() ** 2, ncsn[1:] ** 2 - ncsn[:-1] ** 2, rtol=1e-10)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_marginal_solves_the_kernel_moment_equations(sde):
    # x_t = m x_0 + s z solves dx = f x dt + g dw iff m' = f m and (s^2)' = 2 f s^2 + g^2.
    t = torch.linspace(0.05, 0.95, 19, dtype=f64)
    h = 1e-6
    m_p, s_p = sde.marginal(t + h)
    m_m, s_m = sde.marginal(t - h)
    m, s = sde.marginal(t)
    f, g = sde.drift_coef(t), sde.diffusion(t)
    torch.testing.assert_close((m_p - m_m) / (2 * h), f * m, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close((s_p**2 - s_m**2) / (2 * h), 2 * f * s**2 + g**2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_discretization_is_consistent_with_the_kernel(sde):
    # One step from s to t: a -> m(t)/m(s) and b^2 -> v(t) - a^2 v(s), error O(h^2) (first order).
    s0 = torch.tensor(0.4, dtype=f64)
    errs = []
    for h in (1e-2, 5e-3):
        a, b = sde.discretize(s0, s0 + h)
        m0, sd0 = sde.marginal(s0)
        m1, sd1 = sde.marginal(s0 + h)
        errs.append(abs(float(a - m1 / m0)) + abs(float(b**2 - (sd1**2 - (m1 / m0) ** 2 * sd0**2))))
    assert errs[0] < 1e-12 or errs[1] < errs[0] / 3  # exact (VE), or shrinks like h^2 (ratio 4)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("shape", [(5, 2), (5, 3, 4, 4), (5, 1, 2, 3, 2)])
def test_any_rank_and_dtype(sde, shape):
    x = torch.randn(shape, dtype=torch.float32)
    t = torch.full((5,), 0.3, dtype=torch.float32)
    assert sde.drift(x, t).shape == shape and sde.drift(x, t).dtype == torch.float32
    mean, std = sde.marginal(t)
    assert mean.dtype == std.dtype == torch.float32 and mean.shape == (5,)
    rev = sde.reverse(lambda x, t: -x)
    assert rev.drift(x, t).shape == shape
    assert sde.prior_log_prob(x).shape == (5,)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_prior_log_prob_and_sample(sde):
    z = torch.randn(20000, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    x = sde.prior_sample(z)
    assert abs(float(x.std()) / sde.prior_std() - 1) < 0.02
    ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(x[:10]).sum(1)
    torch.testing.assert_close(sde.prior_log_prob(x[:10]), ref)
    m, s = sde.marginal(torch.tensor(sde.T, dtype=f64))
    # the prior matches the kernel at T for data near 0
    assert abs(float(s) / sde.prior_std() - 1) < 0.01 and float(m) / sde.prior_std() < 0.05


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_reverse_and_probability_flow(sde):
    x = torch.randn(4, 2, dtype=f64)
    t = torch.full((4,), 0.5, dtype=f64)
    score = lambda x, t: -2.0 * x  # noqa: E731
    g2 = sde.diffusion(t)[:, None] ** 2
    f = sde.drift(x, t)
    torch.testing.assert_close(sde.reverse(score).drift(x, t), f - g2 * score(x, t))
    torch.testing.assert_close(sde.reverse(score, probability_flow=True).drift(x, t), f - 0.5 * g2 * score(x, t))
    assert float(sde.reverse(score, True).diffusion(t).abs().max()) == 0.0


def test_log_snr_decreases():
    for sde in SDES:
        lam = sde.log_snr(torch.linspace(0.01, 1, 50, dtype=f64))
        assert (lam[1:] < lam[:-1]).all()


class ConstantBetaSDE(SDE):
    """A VP SDE with constant beta: a new SDE is one small subclass."""

    beta = 4.0

    def drift_coef(self, t):
        return torch.full_like(torch.as_tensor(t, dtype=f64), -0.5 * self.beta)

    def diffusion(self, t):
        return torch.full_like(torch.as_tensor(t, dtype=f64), math.sqrt(self.beta))

    def marginal(self, t):
        m = torch.exp(-0.5 * self.beta * torch.as_tensor(t, dtype=f64))
        return m, (1 - m**2).sqrt()

    def prior_std(self):
        return 1.0


def test_a_new_sde_subclass_works_with_every_kind_of_sampler(registry, exact):
    sde = ConstantBetaSDE()
    test_marginal_solves_the_kernel_moment_equations(sde)  # raises if the moments are wrong
    gmm, ref, floor = exact("ring8")
    for name, steps in (("ddim", 100), ("ancestral", 500), ("ode", 100)):
        out = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, name, steps=steps, registry=registry).samples
        assert sliced_wasserstein(out, ref) < 1.6 * floor, name
