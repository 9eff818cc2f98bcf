"""The classic samplers are the textbook updates, exactly; related ones agree in distribution."""

import numpy as np
import pytest
import torch

import sdekit
from sdekit.metrics import sliced_wasserstein
from sdekit.oracle import named_mixture
from sdekit.sde import VESDE, VPSDE

f64 = torch.float64


def eps_model(x, t):
    """An arbitrary smooth 'network' predicting the noise."""
    return torch.tanh(x) * (0.5 + t[:, None]) + 0.1 * x.flip(1)


def test_ancestral_on_vp_is_the_textbook_ddpm_update(registry):
    # Ho et al. 2020, Algorithm 2 with sigma_t^2 = beta_t, linear betas 1e-4 ... 0.02, T = 1000.
    n, batch = 1000, 16
    betas = torch.tensor(np.linspace(1e-4, 0.02, n), dtype=f64)
    alpha_bar = torch.cumprod(1 - betas, 0)

    def score(x, t):  # the score an eps-network defines on DDPM's own discrete schedule
        k = torch.round(t * n).long()
        return -eps_model(x, t) / (1 - alpha_bar[k - 1])[:, None].sqrt()

    out = sdekit.sample(score, VPSDE(), (batch, 2), "ancestral", steps=n, t_min=0.0, seed=3, dtype=f64,
                        registry=registry, variance="step", denoise="mean").samples

    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 2, generator=g, dtype=f64)
    for k in range(n, 0, -1):
        z = torch.randn(batch, 2, generator=g, dtype=f64)
        t = torch.full((batch,), k / n, dtype=f64)
        beta = betas[k - 1]
        mean = (x - beta / (1 - alpha_bar[k - 1]).sqrt() * eps_model(x, t)) / (1 - beta).sqrt()
        x = mean + beta.sqrt() * z if k > 1 else mean
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_ancestral_on_ve_is_the_textbook_smld_update(registry):
    # Song et al. 2021, eq. 47, on NCSN's geometric noise levels sigma_1 ... sigma_N.
    n, batch, sde = 200, 16, VESDE()
    sig = torch.tensor(np.exp(np.linspace(np.log(0.01), np.log(50.0), n)), dtype=f64)
    gmm = named_mixture("ring8")
    score = gmm.score_fn(sde)
    out = sdekit.sample(score, sde, (batch, 2), "ancestral", steps=n - 1, t_min=0.0, seed=5, dtype=f64,
                        registry=registry, denoise="none").samples

    g = torch.Generator().manual_seed(5)
    x = 50.0 * torch.randn(batch, 2, generator=g, dtype=f64)
    levels = torch.linspace(0, 1, n, dtype=f64)
    for i in range(n - 1, 0, -1):
        s2, s2_prev = sig[i] ** 2, sig[i - 1] ** 2
        x = (x + (s2 - s2_prev) * score(x, levels[i].expand(batch))
             + (s2_prev * (s2 - s2_prev) / s2).sqrt() * torch.randn(batch, 2, generator=g, dtype=f64))
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=lambda s: type(s).__name__)
def test_ddim_eta_one_matches_ancestral_in_distribution(sde, registry, exact):
    gmm, ref, floor = exact("ring8")
    kw = dict(registry=registry, steps=200)
    a = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, "ancestral", seed=1, **kw).samples
    d = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, "ddim", eta=1.0, seed=2, **kw).samples
    assert sliced_wasserstein(a, d) < 2.0 * floor


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_not(registry):
    gmm, sde = named_mixture("ring8"), VPSDE()
    x1 = sdekit.sample(gmm.score_fn(sde), sde, (8, 2), "ddim", steps=10, seed=0, registry=registry).samples
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    # with eta = 0 only the prior draw is random: the same prior gives the same output
    from sdekit.samplers.ddim import DDIMOptions, ddim_step
    from sdekit.samplers.pc import PCOptions, pc

    def step(sde_, s, x, tc, tn, noise):
        return ddim_step(sde_, s, x, tc, tn, options=DDIMOptions(0.0), noise=noise)

    def no_noise(like):
        raise AssertionError("deterministic DDIM drew noise")

    grid = torch.linspace(1, 1e-3, 11, dtype=f64)
    x2 = pc(sde, gmm.score_fn(sde), z, grid, options=PCOptions(), noise=no_noise, predictor=step)
    torch.testing.assert_close(x1, x2)


def test_corrector_alone_is_ncsn_and_options_route_to_their_step(registry):
    gmm, sde = named_mixture("ring8"), VESDE()
    r = sdekit.sample(gmm.score_fn(sde), sde, (8, 2), "ald", steps=7, registry=registry, n_steps=3)
    assert r.nfe == 7 * 3
    assert r.provenance["predictor"] is None and r.provenance["corrector"]["options"]["n_steps"] == 3
    r = sdekit.sample(gmm.score_fn(sde), sde, (8, 2), "pc", steps=5, registry=registry,
                      corrector="ald", **{"corrector.n_steps": 2})
    assert r.nfe == 5 * (1 + 2)
    r = sdekit.sample(gmm.score_fn(sde), sde, (8, 2), "pc", steps=5, registry=registry, denoise="tweedie")
    assert r.nfe == 5 * 2 + 1
