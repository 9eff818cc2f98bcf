"""Losses against exact answers: the oracle's score minimises every loss, the expected loss
of a Gaussian is known in closed form, DDPM's loss is Ho et al.'s L_simple, SMLD's levels
are NCSN's, importance sampling keeps the mean and cuts the variance."""

import math

import pytest
import torch

from sdekit.config import ConfigError, load_config, make_schema
from sdekit.errors import OptionError
from sdekit.losses import LikelihoodWeighting, LogSNRTimes, LossConfig, discrete_levels, make_loss
from sdekit.oracle import GaussianMixture, named_mixture
from sdekit.score import score_from
from sdekit.sde import SubVPSDE, VESDE, VPSDE

#: (sde, loss config) pairs that make sense
CASES = [
    (VPSDE(), LossConfig()),
    (SubVPSDE(), LossConfig()),
    (VESDE(), LossConfig()),
    (VPSDE(), LossConfig(reduce="sum")),
    (VPSDE(), LossConfig(weighting="likelihood")),
    (VPSDE(), LossConfig(weighting="likelihood", importance_sampling=True)),
    (SubVPSDE(), LossConfig(weighting="likelihood", importance_sampling=True)),
    (VESDE(), LossConfig(weighting="likelihood", importance_sampling=True)),
    (VPSDE(), LossConfig(kind="ddpm")),
    (VESDE(), LossConfig(kind="smld")),
]
IDS = [f"{type(s).__name__}-{c.kind}-{c.weighting}{'-is' if c.importance_sampling else ''}-{c.reduce}"
       for s, c in CASES]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mean_se(v):
    return v.mean().item(), (v.std() / math.sqrt(len(v))).item()


@pytest.mark.parametrize("sde,config", CASES, ids=IDS)
def test_exact_score_attains_the_smallest_loss(sde, config):
    gmm = named_mixture("ring8")
    x0 = gmm.sample(20000, gen(0))
    exact = gmm.score_fn(sde)
    loss = make_loss(config, sde)
    base = loss(exact, x0, gen(1))
    perturbed = {
        "x1.1": lambda x, t: 1.1 * exact(x, t),
        "+0.1": lambda x, t: exact(x, t) + 0.1,
        "time-shifted": lambda x, t: exact(x, 0.8 * t),
    }
    for name, score_fn in perturbed.items():
        diff = loss(score_fn, x0, gen(1)) - base  # same t and z: a paired difference
        mean, se = mean_se(diff)
        assert mean > 3 * se, f"{name}: the exact score's loss is not smaller ({mean:.3g} +- {se:.3g})"


def _gaussian(item_shape=(1, 2, 2), std=0.5):
    d = math.prod(item_shape)
    return GaussianMixture([1.0], torch.zeros(1, d, dtype=torch.float64), [std], item_shape=item_shape)


def _expected_residual(m_k, s_k, m, s, std0):
    """E ||s score_t'(x) + z||^2 / D for x = m_k x0 + s_k z, x0 ~ N(0, std0^2 I), score at a
    time t' with marginal (m, s): score = -x / v, v = m^2 std0^2 + s^2."""
    v = m**2 * std0**2 + s**2
    return (s * m_k * std0 / v) ** 2 + (1 - s * s_k / v) ** 2


@pytest.mark.parametrize("sde,config", CASES, ids=IDS)
def test_expected_loss_of_a_gaussian_is_the_closed_form(sde, config):
    """With the exact score the loss is irreducible: for x0 ~ N(0, std0^2 I) its expectation
    is E_t[w(t) D m^2 std0^2 / (m^2 std0^2 + s^2)] (over dims: mean -> no D), a 1-D integral
    (dsm, float64 quadrature on a log grid) or a finite sum (ddpm, smld: per level)."""
    std0, item_shape = 0.5, (1, 2, 2)
    gmm = _gaussian(item_shape, std0)
    d = 1 if config.reduce == "mean" else math.prod(item_shape)
    if config.kind == "dsm":
        t_eps = sde.t_min
        t = torch.logspace(math.log10(t_eps), 0.0, 400001, dtype=torch.float64)
        m, s = sde.marginal(t)
        w = LikelihoodWeighting()(sde, t) if config.weighting == "likelihood" else torch.ones_like(t)
        exact = torch.trapezoid(w * d * _expected_residual(m, s, m, s, std0), t).item() / (1.0 - t_eps)
    else:
        t, m_k, s_k = discrete_levels(sde, config.kind, config.num_scales)
        m, s = sde.marginal(t)
        exact = (d * _expected_residual(m_k, s_k, m, s, std0)).mean().item()
    losses = make_loss(config, sde)(gmm.score_fn(sde), gmm.sample(40000, gen(2)), gen(3))
    mean, se = mean_se(losses)
    assert abs(mean - exact) < 4 * se, f"{mean:.5g} +- {se:.2g}, exact {exact:.5g}"


def test_importance_sampling_keeps_the_mean_and_lowers_the_variance():
    sde, gmm = VPSDE(), named_mixture("ring8")
    x0, exact = gmm.sample(20000, gen(0)), gmm.score_fn(sde)
    plain = make_loss(LossConfig(weighting="likelihood"), sde)(exact, x0, gen(1))
    weighted = make_loss(LossConfig(weighting="likelihood", importance_sampling=True), sde)(exact, x0, gen(2))
    (m1, se1), (m2, se2) = mean_se(plain), mean_se(weighted)
    assert abs(m1 - m2) < 4 * math.hypot(se1, se2)
    assert weighted.var() < 0.25 * plain.var()


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=lambda s: type(s).__name__)
def test_log_snr_times_have_density_g2_over_s2_and_a_constant_weight(sde):
    t_eps = sde.t_min
    draw = LogSNRTimes(sde, t_eps, 1.0)(20000, torch.zeros(1, dtype=torch.float64), gen(0))
    assert float(draw.t.min()) >= t_eps and float(draw.t.max()) <= 1.0
    hi, lo = float(sde.log_snr(t_eps)), float(sde.log_snr(1.0))
    # t ~ g^2/s^2 / Z = -(d log SNR/dt) / Z  <=>  log SNR(t) uniform on [lo, hi]
    u = (hi - sde.log_snr(draw.t)) / (hi - lo)
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / 20000)
    assert abs(u.var().item() - 1 / 12) < 0.005
    constant = draw.weight * LikelihoodWeighting()(sde, draw.t)
    assert torch.allclose(constant, torch.full_like(constant, (hi - lo) / (1.0 - t_eps)), rtol=1e-9)


def test_ddpm_levels_are_hos_alpha_bar_and_smld_levels_are_ncsns_sigmas():
    n, vp, ve = 1000, VPSDE(), VESDE()
    alpha_bar = torch.cumprod(1 - torch.linspace(vp.beta_min / n, vp.beta_max / n, n, dtype=torch.float64), 0)
    t, mean, std = discrete_levels(vp, "ddpm", n)
    assert torch.allclose(mean**2, alpha_bar, rtol=1e-12, atol=0)
    assert torch.allclose(std**2, 1 - alpha_bar, rtol=1e-12, atol=0)
    # labels: the SDE time with the same noise, within O(1/N) of (k+1)/N, monotone, in [0, T]
    assert (t.diff() >= 0).all() and float(t.min()) > 0 and float(t.max()) == 1.0
    assert (t - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max() < 5 / n
    unclamped = t < 1.0
    assert unclamped.sum() > 0.99 * n
    m, s = vp.marginal(t[unclamped])
    assert torch.allclose(m, mean[unclamped], rtol=1e-10) and torch.allclose(s, std[unclamped], rtol=1e-10)

    sigmas = torch.exp(torch.linspace(math.log(ve.sigma_min), math.log(ve.sigma_max), n, dtype=torch.float64))
    t, mean, std = discrete_levels(ve, "smld", n)
    assert torch.allclose(std, sigmas, rtol=1e-12) and (mean == 1).all()
    assert torch.allclose(t, torch.linspace(0, 1, n, dtype=torch.float64), atol=1e-12)


def test_ddpm_loss_is_l_simple_and_zero_for_a_net_that_returns_the_true_noise():
    """Replaying the loss's documented draws (level k, then z): the net sees exactly
    x_t = sqrt(alpha_bar_k) x0 + sqrt(1 - alpha_bar_k) z and returns z; the eps loss is 0."""
    sde, n, b = VPSDE(), 1000, 4096
    x0 = named_mixture("image:channels=3,size=4").sample(b, gen(0))
    replay = gen(7)
    k = torch.randint(n, (b,), generator=replay)
    z = torch.randn(x0.shape, generator=replay, dtype=x0.dtype)
    alpha_bar = torch.cumprod(1 - torch.linspace(sde.beta_min / n, sde.beta_max / n, n, dtype=torch.float64), 0)
    seen = {}

    def eps_net(x, t):
        ab = alpha_bar[k].reshape(-1, 1, 1, 1)
        seen["x"] = torch.allclose(x, ab.sqrt() * x0 + (1 - ab).sqrt() * z, rtol=0, atol=1e-12)
        return z

    losses = make_loss(LossConfig(kind="ddpm"), sde)(score_from(eps_net, sde, "eps"), x0, gen(7))
    assert seen["x"]
    assert losses.shape == (b,) and float(losses.abs().max()) < 1e-24


def test_seeded_generator_reproduces_and_global_rng_is_untouched():
    sde, gmm = VPSDE(), named_mixture("ring8")
    x0, score = gmm.sample(512, gen(0), dtype=torch.float32), gmm.score_fn(sde)
    for config in (LossConfig(), LossConfig(weighting="likelihood", importance_sampling=True),
                   LossConfig(kind="ddpm")):
        loss = make_loss(config, sde)
        state = torch.get_rng_state()
        a, b, c = loss(score, x0, gen(5)), loss(score, x0, gen(5)), loss(score, x0, gen(6))
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.dtype == torch.float32 and a.shape == (512,)


def test_p_uncond_passes_a_cond_drop_mask_at_the_right_rate():
    sde, gmm, b = VPSDE(), named_mixture("ring8"), 20000
    x0, y = gmm.sample(b, gen(0), return_labels=True)
    calls = []

    def net(x, t, y=None, **extra):
        calls.append((y, extra))
        return gmm.score(x, t, sde, y=y)

    make_loss(LossConfig(), sde)(net, x0, gen(1), cond={"y": y})
    assert calls[-1][1] == {} and torch.equal(calls[-1][0], y)  # no cond_drop when p_uncond = 0
    for p in (0.1, 0.5):
        make_loss(LossConfig(p_uncond=p), sde)(net, x0, gen(1), cond={"y": y})
        drop = calls[-1][1]["cond_drop"]
        assert drop.dtype == torch.bool and drop.shape == (b,) and torch.equal(calls[-1][0], y)
        assert abs(drop.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / b)
    with pytest.raises(OptionError, match="p_uncond"):
        make_loss(LossConfig(p_uncond=0.1), sde)(net, x0, gen(1))


@pytest.mark.parametrize("sde,kind,valid", [(VESDE(), "ddpm", "vp"), (SubVPSDE(), "ddpm", "vp"),
                                            (VPSDE(), "smld", "ve"), (SubVPSDE(), "smld", "ve")])
def test_a_loss_on_the_wrong_sde_is_a_clear_error(sde, kind, valid):
    with pytest.raises(OptionError, match=f"loss kind '{kind}'.*{type(sde).__name__}.*Valid SDEs: {valid}; "
                                          f"on {type(sde).__name__} use kind 'dsm'"):
        make_loss(LossConfig(kind=kind), sde)


def test_too_few_ddpm_levels_is_a_clear_error():
    with pytest.raises(OptionError, match="loss.num_scales=10 is too coarse for kind 'ddpm' on VPSDE"):
        make_loss(LossConfig(kind="ddpm", num_scales=10), VPSDE())


@pytest.mark.parametrize("fields,message", [
    ({"kind": "dms"}, r"^kind must be one of dsm, ddpm, smld, got 'dms'; did you mean 'dsm'\?"),
    ({"reduce": "avg"}, "^reduce must be one of mean, sum"),
    ({"p_uncond": 1.5}, r"^p_uncond must be >= 0.0 and <= 1.0, got 1.5"),
    ({"num_scales": 1}, "^num_scales must be >= 2"),
    ({"t_eps": 0.0}, "^t_eps must be > 0.0"),
    ({"kind": "ddpm", "weighting": "likelihood"}, "^weighting = 'likelihood' applies to kind 'dsm' only"),
    ({"kind": "smld", "t_eps": 0.01}, "^t_eps applies to kind 'dsm' only"),
    ({"importance_sampling": True}, "^importance_sampling applies to kind 'dsm' with weighting 'likelihood'"),
])
def test_bad_options_name_the_key(fields, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(**fields)


def test_the_loss_section_loads_from_a_config_with_its_key_path():
    schema = make_schema(loss=LossConfig)
    assert load_config(None, schema, ["loss.kind=ddpm", "loss.num_scales=500"]).loss == LossConfig("ddpm",
                                                                                                   num_scales=500)
    with pytest.raises(ConfigError, match=r"--set loss.kind=ddpm and --set loss.t_eps=0.1: loss.t_eps applies"):
        load_config(None, schema, ["loss.kind=ddpm", "loss.t_eps=0.1"])
