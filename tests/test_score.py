"""Score adapters: every parametrization round-trips to the exact score."""

import pytest
import torch

from sdekit.errors import UnknownNameError
from sdekit.oracle import named_mixture
from sdekit.score import denoise, score_from
from sdekit.sde import SubVPSDE, VESDE, VPSDE


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("param", ["eps", "x0", "v", "score"])
def test_adapters_recover_the_exact_score(sde, param):
    gmm = named_mixture("ring8")
    x = gmm.sample_t(64, 0.4, sde, torch.Generator().manual_seed(0))
    t = torch.full((64,), 0.4, dtype=torch.float64)
    score = gmm.score(x, t, sde)
    m, s = (c[:, None] for c in sde.marginal(t))
    eps = -s * score
    x0 = (x - s * eps) / m
    out = {"eps": eps, "x0": x0, "v": m * eps - s * x0, "score": score}[param]
    net = lambda x_, t_: out  # noqa: E731
    torch.testing.assert_close(score_from(net, sde, param)(x, t), score, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(denoise(score, x, t, sde), x0)


def test_unknown_parametrization_names_the_valid_ones():
    with pytest.raises(UnknownNameError, match=r"did you mean 'eps'.*valid: eps, score, v, x0"):
        score_from(lambda x, t: x, VPSDE(), "epss")
