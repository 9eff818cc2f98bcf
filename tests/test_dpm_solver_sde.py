"""``dpm_solver_sde`` against exact identities: at eta = 1 and order 1 it is DDIM with eta = 1 (the DDPM
posterior step), at eta = 0 it is ``dpm_solver``; and at its 20 recommended steps it samples the mixture."""

import pytest
import torch

import sdekit
from sdekit.metrics import sliced_wasserstein
from sdekit.oracle import named_mixture
from sdekit.sde import SubVPSDE, VESDE, VPSDE

GMM = named_mixture("ring8")
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}


def draw(name, sde, steps, **options):
    return sdekit.sample(GMM.score_fn(sde), sde, (64, 2), name, steps=steps, seeds=range(64), dtype=torch.float64,
                         **options).samples


@pytest.mark.parametrize("sde_id", list(SDES))
def test_order_1_at_eta_1_is_ddim_with_eta_1(sde_id):
    sde = SDES[sde_id]
    ours = draw("dpm_solver_sde", sde, 30, order=1, schedule="logsnr")
    ddim = draw("pc", sde, 30, predictor="ddim", corrector="none", denoise="none", eta=1.0, schedule="logsnr")
    torch.testing.assert_close(ours, ddim, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_id", list(SDES))
def test_eta_0_is_dpm_solver(sde_id):
    sde = SDES[sde_id]
    ours = draw("dpm_solver_sde", sde, 20, eta=0.0)
    torch.testing.assert_close(ours, draw("dpm_solver", sde, 20), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(draw("dpm_solver_sde", sde, 20), ours)  # eta = 1 is another sampler


@pytest.mark.parametrize("sde_id", list(SDES))
def test_recommended_steps_sample_the_mixture(sde_id, exact):
    gmm, ref, floor = exact("ring8")
    sde = SDES[sde_id]
    out = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, "dpm_solver_sde", seed=0).samples
    assert sliced_wasserstein(out, ref) < 1.6 * floor
