"""Likelihoods against exact answers: the probability-flow ODE's log-likelihood against the
mixture oracle's log p_{t_min}, Hutchinson's estimate against the exact divergence, the ELBO
against the exact likelihood of the SDE model of a Gaussian (closed form, also for a wrong
score), and bits/dim against the exact probabilities of discretized Gaussian images.

Measured (OMP_NUM_THREADS=1, seeds as below) and printed by the tests (pytest -s):

- ODE log-likelihood, exact score and divergence, rtol = atol = 1e-5, 128 points from
  p_{t_min}: mean |error| / D <= 3.5e-3 nats/dim against the oracle (ring8: 3e-5 VP,
  1e-5 sub-VP, 3e-4 VE; random:dim=16: 1.1e-3 VP, 3.5e-3 VE). That is almost all prior
  mismatch (the model starts from N(0, prior_std^2), not p_T): with the oracle's p_T as the
  prior the error is 1e-5..6e-5 nats/dim, and 1e-7 at rtol = atol = 1e-7. 100-140 NFE.
- Hutchinson: the mean of 200 one-probe estimates is within 1.6 SE of the exact divergence
  (SE 0.1-1.7 nats); probes scaled by 1.1 are rejected (max |z| 6.5-127).
- ELBO with the exact score: tight (the gap is a KL between path measures, zero for the true
  reverse process; measured within Monte Carlo error, |gap| < 1.2 nats at SE 0.2-0.7); for a
  Gaussian with a mis-scaled score (variance x 0.7) the exact SDE-model likelihood exceeds
  the ELBO by 3.6 (VP, sub-VP) and 2.8 (VE) nats, and the estimator's mean matches the
  bound's closed form within 0.25 nats (SE 0.25).
- Bits/dim of discretized Gaussian images (D = 12, 256 levels): estimate - exact
  dequantized bound = 1e-4 +- 3e-4 bits/dim; against the exact discrete -log2 P(k)/D it is
  3e-4 bits/dim for a 16-pixel std and 0.031 (the dequantization gap) for a 1.4-pixel std.
"""

import dataclasses
import math

import pytest
import torch

import sdekit.likelihood as likelihood
from sdekit.data import from_images
from sdekit.errors import OptionError, SdekitError, ShapeError, UnknownNameError
from sdekit.likelihood import LikelihoodResult, bits_per_dim, elbo, log_likelihood
from sdekit.oracle import GaussianMixture, named_mixture
from sdekit.sde import SubVPSDE, VESDE, VPSDE

LN2 = math.log(2.0)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mean_se(v, dim=-1):
    return v.mean(dim), v.std(dim) / math.sqrt(v.shape[dim])


def with_exact_prior(sde, gmm):
    """The same SDE, but with the oracle's p_T as its prior: removes the prior mismatch."""

    class ExactPrior(type(sde)):
        def prior_log_prob(self, x):
            return gmm.log_prob(x, self.T, self)

    return ExactPrior(**dataclasses.asdict(sde))


# -- 1. the ODE log-likelihood against the oracle ---------------------------------------------

ODE_CASES = [("ring8", VPSDE()), ("ring8", SubVPSDE()), ("ring8", VESDE()),
             ("random:dim=16", VPSDE()), ("random:dim=16", VESDE())]


@pytest.mark.parametrize("spec,sde", ODE_CASES, ids=[f"{s}-{type(e).__name__}" for s, e in ODE_CASES])
def test_exact_divergence_matches_the_oracle(spec, sde):
    gmm = named_mixture(spec)
    x = gmm.sample_t(128, sde.t_min, sde, gen(1))
    exact = gmm.log_prob(x, sde.t_min, sde)
    res = log_likelihood(sde, gmm.score_fn(sde), x, divergence="exact")
    err = ((res.log_likelihood - exact).abs().mean() / gmm.dim).item()
    sharp = log_likelihood(with_exact_prior(sde, gmm), gmm.score_fn(sde), x, divergence="exact")
    err_solver = ((sharp.log_likelihood - exact).abs().mean() / gmm.dim).item()
    print(f"{spec} {type(sde).__name__}: {err:.2e} nats/dim ({err_solver:.2e} with the exact prior), nfe {res.nfe}")
    assert err <= 0.01
    assert err_solver <= 2e-4  # the solver's share: the rest is the prior N(0, prior_std^2) != p_T
    assert torch.equal(res.log_likelihood, res.prior_log_prob + res.delta_log_prob)
    assert torch.allclose(res.bits_per_dim, -res.log_likelihood / (gmm.dim * LN2))
    assert res.nfe > 0


def test_a_score_that_is_no_oracle_gives_the_ode_models_likelihood():
    """For a Gaussian with a mis-scaled linear score -x / (c v(t)), the ODE model is Gaussian
    with variance u(t_min), du/dt = (2 f + g^2 / (c v)) u, u(T) = prior_std^2: its exact
    log-density, not the data's, is what log_likelihood must return."""
    sde, c = VPSDE(), 1.5
    x = _gaussian_data(sde, 16, seed=4)
    res = log_likelihood(sde, _scaled_score(sde, c), x, divergence="exact")
    exact = _log_normal(x, _model_variance(sde, c, sde.t_min, model="ode"))
    assert (res.log_likelihood - exact).abs().max() < 1e-4


def test_conditioning_is_passed_to_the_score():
    """cond={"y": k} makes the oracle's score that of component k: the likelihood is the component's."""
    sde, gmm = VPSDE(), named_mixture("ring8")
    x, k = gmm.sample(32, gen(2), return_labels=True)
    res = log_likelihood(sde, gmm.score_fn(sde), x, divergence="exact", cond={"y": k})
    component = torch.stack([GaussianMixture([1.0], gmm.means[j:j + 1], gmm.stds[j:j + 1]).log_prob(
        x[i:i + 1], sde.t_min, sde)[0] for i, j in enumerate(k.tolist())])
    # 0.01 nats of prior mismatch (a component 2 away from 0); without cond, log w_k = -2.1 nats off
    assert (res.log_likelihood - component).abs().mean() < 0.03


# -- 2. Hutchinson's estimator is unbiased (and the check can fail) ---------------------------

HUTCHINSON_CASES = [("ring8", VESDE(), "rademacher"), ("random:dim=16", VPSDE(), "rademacher"),
                    ("random:dim=16", VESDE(), "gaussian")]


def _hutchinson_z(spec, sde, probe, scale, monkeypatch, repeats=200):
    """z-scores (4,) of the mean of `repeats` one-probe estimates against the exact divergence."""
    gmm = named_mixture(spec)
    x = gmm.sample_t(4, sde.t_min, sde, gen(1))
    exact = log_likelihood(sde, gmm.score_fn(sde), x, divergence="exact").log_likelihood
    draw = likelihood.draw_probes
    monkeypatch.setattr(likelihood, "draw_probes", lambda *a, **k: scale * draw(*a, **k))
    res = log_likelihood(sde, gmm.score_fn(sde), x.repeat_interleave(repeats, 0), probe=probe, generator=gen(2))
    mean, se = mean_se(res.log_likelihood.reshape(4, repeats))
    return (mean - exact) / se, se


@pytest.mark.parametrize("spec,sde,probe", HUTCHINSON_CASES,
                         ids=[f"{s}-{type(e).__name__}-{p}" for s, e, p in HUTCHINSON_CASES])
def test_hutchinson_is_unbiased(spec, sde, probe, monkeypatch):
    z, se = _hutchinson_z(spec, sde, probe, 1.0, monkeypatch)
    print(f"{spec} {type(sde).__name__} {probe}: z = {[round(v, 2) for v in z.tolist()]}, se {se.max():.3f}")
    assert z.abs().max() <= 3.0


@pytest.mark.parametrize("spec,sde,probe", HUTCHINSON_CASES,
                         ids=[f"{s}-{type(e).__name__}-{p}" for s, e, p in HUTCHINSON_CASES])
def test_the_unbiasedness_check_rejects_probes_scaled_by_1_1(spec, sde, probe, monkeypatch):
    z, _ = _hutchinson_z(spec, sde, probe, 1.1, monkeypatch)
    assert z.abs().max() > 3.0


def test_more_probes_average():
    """num_probes = 16 in one call has about 1/16 the variance of one probe (and the same mean)."""
    sde, gmm = VPSDE(), named_mixture("random:dim=16")
    x = gmm.sample_t(2, sde.t_min, sde, gen(1)).repeat_interleave(64, 0)
    one = log_likelihood(sde, gmm.score_fn(sde), x, generator=gen(3)).log_likelihood.reshape(2, 64)
    many = log_likelihood(sde, gmm.score_fn(sde), x, num_probes=16, generator=gen(4)).log_likelihood.reshape(2, 64)
    ratio = one.var(1) / many.var(1)
    assert bool(((ratio > 6) & (ratio < 40)).all()), ratio  # 16, within sampling error of 64-point variances
    (m1, s1), (m16, s16) = mean_se(one), mean_se(many)
    assert bool(((m1 - m16).abs() < 3 * (s1**2 + s16**2).sqrt()).all())


# -- 3. the ELBO ------------------------------------------------------------------------------

def _gaussian_data(sde, n, seed, dim=4, std=0.5):
    gmm = GaussianMixture([1.0], torch.zeros(1, dim, dtype=torch.float64), [std])
    return gmm.sample_t(n, sde.t_min, sde, gen(seed))


def _data_variance(sde, t, std=0.5):
    mean, s = sde.marginal(t)
    return mean**2 * std**2 + s**2


def _scaled_score(sde, c):
    """-x / (c v(t)): the exact score of the Gaussian data for c = 1, no diffused density's otherwise."""
    return lambda x, t: -x / (c * _data_variance(sde, t.to(torch.float64))[:, None]).to(x.dtype)


def _model_variance(sde, c, a, model, n=200001):
    """Variance at time a of the SDE model (reverse SDE) or ODE model of the score -x / (c v(t)) from
    N(0, prior_std^2): w' = A w - g^2 (sde) or u' = A u (ode), solved backwards from T by the
    integrating factor on a fine float64 grid; A = 2 f + 2 g^2 / (c v) (sde), 2 f + g^2 / (c v) (ode)."""
    t = torch.linspace(a, sde.T, n, dtype=torch.float64)
    f, g2, v = sde.drift_coef(t), sde.diffusion(t) ** 2, _data_variance(sde, t)
    rate = 2 * f + (2.0 if model == "sde" else 1.0) * g2 / (c * v)
    integral = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(rate, t)])
    w = torch.exp(-integral[-1]) * sde.prior_std() ** 2
    if model == "sde":
        w = w + torch.trapezoid(torch.exp(-integral) * g2, t)
    return float(w)


def _log_normal(x, var):
    return -0.5 * (x**2).sum(1) / var - 0.5 * x.shape[1] * math.log(2 * math.pi * var)


def _elbo_closed_form(sde, c, x, n=200001):
    """The ELBO's expectation for the score -x / (c v): the prior term and a 1-D quadrature of
    -g^2 E|s|^2 / 2 - g^2 E[div s] + D f with x_t | x ~ N(alpha x, sigma^2 I)."""
    a, d = sde.t_min, x.shape[1]
    t = torch.linspace(a, sde.T, n, dtype=torch.float64)[1:]
    alpha, sigma = likelihood._kernel_from(sde, a, t)
    g2, cv = sde.diffusion(t) ** 2, c * _data_variance(sde, t)
    xx = (x**2).sum(1, keepdim=True)
    integrand = -0.5 * g2 * (alpha**2 * xx + d * sigma**2) / cv**2 + g2 * d / cv + d * sde.drift_coef(t)
    alpha_T, sigma_T = likelihood._kernel_from(sde, a, torch.tensor([sde.T], dtype=torch.float64))
    var_pi = sde.prior_std() ** 2
    prior = -0.5 * (alpha_T**2 * xx[:, 0] + d * sigma_T**2) / var_pi - 0.5 * d * math.log(2 * math.pi * var_pi)
    return prior + torch.trapezoid(integrand, t, dim=1)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=lambda s: type(s).__name__)
def test_elbo_of_a_gaussian_is_the_closed_form_and_bounds_the_sde_model(sde):
    """Exact answers for Gaussian data: with the exact score (c = 1) the bound is tight; with a
    mis-scaled score (c = 0.7, no diffused density's score) the exact SDE-model likelihood
    (closed form) exceeds it. The estimator's mean is the bound's closed form in both."""
    x, repeats = _gaussian_data(sde, 4, seed=1), 256
    for c in (1.0, 0.7):
        log_sde = _log_normal(x, _model_variance(sde, c, sde.t_min, model="sde"))
        bound = _elbo_closed_form(sde, c, x)
        est = elbo(sde, _scaled_score(sde, c), x.repeat_interleave(repeats, 0), num_times=32, generator=gen(3))
        mean, se = mean_se(est.reshape(4, repeats))
        gap = log_sde - bound
        print(f"{type(sde).__name__} c={c}: exact gap {gap.mean():.3g} nats, estimate - bound "
              f"{(mean - bound).tolist()} (se {se.max():.3f})")
        assert ((mean - bound).abs() <= 3 * se).all()  # unbiased
        assert (mean - log_sde <= 3 * se).all()  # a lower bound
        if c == 1.0:
            assert gap.abs().max() < 1e-4  # tight, up to the prior mismatch
        else:
            assert (gap > 1.0).all() and (log_sde - mean > 3 * se).all()


@pytest.mark.parametrize("spec,sde", [("ring8", VPSDE()), ("ring8", VESDE()), ("random:dim=16", VPSDE())],
                         ids=["ring8-VPSDE", "ring8-VESDE", "random16-VPSDE"])
@pytest.mark.parametrize("importance_sampling", [True, False], ids=["is", "uniform"])
def test_elbo_with_the_exact_score_is_tight_on_the_oracle(spec, sde, importance_sampling):
    """With the exact score the gap (a KL between path measures) vanishes up to the prior
    mismatch, so the ELBO's mean is the oracle's log p_{t_min}(x) within Monte Carlo error."""
    gmm, repeats = named_mixture(spec), 256
    x = gmm.sample_t(4, sde.t_min, sde, gen(1))
    exact = gmm.log_prob(x, sde.t_min, sde)
    est = elbo(sde, gmm.score_fn(sde), x.repeat_interleave(repeats, 0), num_times=16,
               importance_sampling=importance_sampling, generator=gen(3))
    mean, se = mean_se(est.reshape(4, repeats))
    print(f"{spec} {type(sde).__name__}: exact - ELBO = {(exact - mean).tolist()} (se {se.max():.3f})")
    assert torch.isfinite(est).all()
    assert (mean - exact <= 3 * se).all()
    assert ((mean - exact).abs() <= 3 * se).all()


def test_elbo_is_reproducible_and_float64():
    sde, gmm = VPSDE(), named_mixture("ring8")
    x = gmm.sample(8, gen(0), dtype=torch.float32)
    a = elbo(sde, gmm.score_fn(sde), x, num_times=4, generator=gen(5))
    b = elbo(sde, gmm.score_fn(sde), x, num_times=4, generator=gen(5))
    assert a.dtype == torch.float64 and a.shape == (8,) and torch.equal(a, b)


# -- 4. bits per dimension ----------------------------------------------------------------------

ITEM = (3, 2, 2)


def _pixel_model(sde, std_px, mean_px=127.5):
    """A Gaussian in model space (x = 2 y / 256 - 1) whose t_min marginal is N(mu, sd^2) per pixel in y."""
    d = math.prod(ITEM)
    gmm = GaussianMixture([1.0], torch.full((1, d), 2 * mean_px / 256 - 1, dtype=torch.float64), [2 * std_px / 256],
                          item_shape=ITEM)
    m, s = (float(v) for v in sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64)))
    mu_y = (m * gmm.means[0, 0].item() + 1) * 128
    sd_y = math.sqrt(m**2 * gmm.stds[0, 0].item() ** 2 + s**2) * 128
    return gmm, mu_y, sd_y


def _discrete_and_dequantized_bpd(k, mu, sd):
    """Exact -log2 P(k) / D of the discretized density N(mu, sd^2) in y, and the exact expectation over
    u of the dequantized -log2 p(k + u) / D: E_u[(k + u - mu)^2] = (k - mu)^2 + (k - mu) + 1/3."""
    k = k.to(torch.float64).reshape(k.shape[0], -1)
    cdf = lambda y: torch.special.ndtr((y - mu) / sd)  # noqa: E731
    discrete = -(cdf(k + 1) - cdf(k)).log().sum(1)
    dequant = (((k - mu) ** 2 + (k - mu) + 1 / 3) / (2 * sd**2) + math.log(sd * math.sqrt(2 * math.pi))).sum(1)
    d = k.shape[1]
    return discrete / (d * LN2), dequant / (d * LN2)


@pytest.mark.parametrize("std_px", [16.0, 0.5], ids=["wide", "narrow"])
def test_bits_per_dim_of_discretized_gaussian_images(std_px):
    """Pixels drawn from the model's own discretized t_min marginal. The estimate's mean is the exact
    dequantized bound; for a wide density that bound is the exact discrete bpd within 1e-3 bits/dim;
    for a narrow one (1.4 pixels at t_min) the dequantization gap is visible and positive."""
    sde, n = VPSDE(), 256
    gmm, mu, sd = _pixel_model(sde, std_px)
    y = mu + sd * torch.randn(n, *ITEM, generator=gen(7), dtype=torch.float64)
    pixels = y.floor().clamp(0, 255).to(torch.uint8)
    discrete, dequant = _discrete_and_dequantized_bpd(pixels, mu, sd)
    res = bits_per_dim(sde, gmm.score_fn(sde), pixels, dequantize=2, generator=gen(8), divergence="exact",
                       dtype=torch.float64)
    diff_mean, diff_se = mean_se(res.bits_per_dim - dequant, 0)
    print(f"std {std_px} px: bpd {res.bits_per_dim.mean():.4f}, exact discrete {discrete.mean():.4f}, "
          f"exact dequantized {dequant.mean():.4f}, estimate - dequantized {diff_mean:.2e} +- {diff_se:.1e}, "
          f"nfe {res.nfe}")
    assert abs(diff_mean) <= 3 * diff_se + 1e-4
    assert bool((dequant >= discrete).all())  # Jensen
    if std_px > 5:
        assert (res.bits_per_dim - discrete).mean().abs() < 1e-3
    else:
        assert (res.bits_per_dim - discrete).mean() > 0.02  # about 1 / (24 sd^2 ln 2) = 0.03


def test_bits_per_dim_applies_the_offset_once():
    """Against log_likelihood on the same dequantized points (u first from the generator): the same
    model-space log p(x), and bpd = that bpd + log2(levels / 2) = + 7 bits for 8-bit images."""
    sde = VPSDE()
    gmm, _, _ = _pixel_model(sde, 16.0)
    pixels = torch.randint(100, 156, (8, *ITEM), generator=gen(0), dtype=torch.uint8)
    res = bits_per_dim(sde, gmm.score_fn(sde), pixels, generator=gen(3), divergence="exact")
    u = torch.rand(pixels.shape, generator=gen(3), dtype=torch.float64)
    x = (2 * (pixels.to(torch.float64) + u) / 256 - 1).to(torch.float32)
    ref = log_likelihood(sde, gmm.score_fn(sde), x, divergence="exact")
    assert torch.equal(res.log_likelihood, ref.log_likelihood)
    assert torch.allclose(res.bits_per_dim, ref.bits_per_dim + 7.0, rtol=0, atol=1e-12)
    d = math.prod(ITEM)
    assert torch.allclose(res.bits_per_dim, -(res.log_likelihood + d * math.log(2 / 256)) / (d * LN2),
                          rtol=0, atol=1e-12)


def test_bits_per_dim_takes_floats_in_minus_one_one_and_other_level_counts():
    sde = VPSDE()
    gmm, _, _ = _pixel_model(sde, 16.0)
    pixels = torch.randint(0, 256, (4, *ITEM), generator=gen(0), dtype=torch.uint8)
    kw = dict(divergence="exact", rtol=1e-3, atol=1e-3)
    a = bits_per_dim(sde, gmm.score_fn(sde), pixels, generator=gen(1), **kw)
    b = bits_per_dim(sde, gmm.score_fn(sde), from_images(pixels), generator=gen(1), **kw)
    assert torch.equal(a.bits_per_dim, b.bits_per_dim)
    # 16 levels: the same points x = 2 (k + u) / 16 - 1 for k = pixels // 16, with the offset log2(8)
    c = bits_per_dim(sde, gmm.score_fn(sde), (pixels // 16).to(torch.int64), levels=16, generator=gen(1), **kw)
    d = math.prod(ITEM)
    assert torch.allclose(c.bits_per_dim, -c.log_likelihood / (d * LN2) + 3.0, rtol=0, atol=1e-12)


# -- 5. dtype, device, trajectory ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_and_nfe(dtype):
    sde, gmm = VESDE(), named_mixture("ring8")
    x = gmm.sample_t(16, sde.t_min, sde, gen(0), dtype=dtype)
    res = log_likelihood(sde, gmm.score_fn(sde), x, generator=gen(1))
    assert isinstance(res, LikelihoodResult) and res.nfe > 0
    for v in (res.log_likelihood, res.prior_log_prob, res.delta_log_prob, res.bits_per_dim):
        assert v.dtype == torch.float64 and v.device == x.device and v.shape == (16,)
    times, delta = res.trajectory
    assert times.dtype == torch.float64 and delta.shape == (len(times), 16)
    assert times[0] == sde.t_min and times[-1] == sde.T and bool((times.diff() > 0).all())
    assert torch.equal(delta[-1], res.delta_log_prob) and bool((delta[0] == 0).all())
    exact = log_likelihood(sde, gmm.score_fn(sde), x, divergence="exact")
    assert exact.log_likelihood.dtype == torch.float64
    err = ((exact.log_likelihood - gmm.log_prob(x.double(), sde.t_min, sde)).abs().mean() / 2).item()
    print(f"{dtype}: {err:.2e} nats/dim, nfe {exact.nfe} (exact), {res.nfe} (hutchinson)")
    assert err < (1e-3 if dtype == torch.float64 else 5e-3)


def test_record_times_report_the_cumulative_divergence_there():
    sde, gmm = VPSDE(), named_mixture("ring8")
    x = gmm.sample_t(8, sde.t_min, sde, gen(0))
    free = log_likelihood(sde, gmm.score_fn(sde), x, divergence="exact")
    rec = log_likelihood(sde, gmm.score_fn(sde), x, divergence="exact", record_times=[sde.t_min, 0.1, 0.5, 1.0])
    times, delta = rec.trajectory
    assert times.tolist() == [sde.t_min, 0.1, 0.5, 1.0] and delta.shape == (4, 8)
    assert torch.equal(rec.delta_log_prob, free.delta_log_prob)  # dense output: the same steps
    assert torch.equal(delta[-1], rec.delta_log_prob)
    # the accepted-step trajectory passes through about the same value at 0.5 (linear interpolation)
    ft, fd = free.trajectory
    i = int((ft <= 0.5).sum()) - 1
    w = (0.5 - ft[i]) / (ft[i + 1] - ft[i])
    mid = (1 - w) * fd[i] + w * fd[i + 1]
    assert (mid - delta[2]).abs().max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_stays_on_the_device():
    sde, gmm = VPSDE(), named_mixture("random:dim=16")
    x = gmm.sample_t(32, sde.t_min, sde, gen(0), device="cuda")
    exact = gmm.log_prob(x, sde.t_min, sde)
    for div in ("exact", "hutchinson"):
        res = log_likelihood(sde, gmm.score_fn(sde), x, divergence=div, generator=gen(1))  # CPU generator is fine
        assert res.log_likelihood.device == x.device and res.trajectory[1].device == x.device
        if div == "exact":
            assert ((res.log_likelihood - exact).abs().mean() / 16) < 0.01
    e = elbo(sde, gmm.score_fn(sde), x, num_times=4, generator=torch.Generator("cuda").manual_seed(0))
    assert e.device == x.device
    b = bits_per_dim(sde, gmm.score_fn(sde), x.clamp(-1, 1), generator=gen(2))
    assert b.bits_per_dim.device == x.device


# -- 6. errors -------------------------------------------------------------------------------------

def _never_called(x, t):
    raise AssertionError("the score must not be called")


def test_errors_name_what_is_valid():
    sde, gmm = VPSDE(), named_mixture("ring8")
    x = gmm.sample(4, gen(0))
    score = gmm.score_fn(sde)
    with pytest.raises(ShapeError, match=r"\(3,\)"):
        log_likelihood(sde, _never_called, x, item_shape=(3,))
    with pytest.raises(ShapeError, match="batch"):
        log_likelihood(sde, _never_called, x[0])
    with pytest.raises(ShapeError, match="score_fn returned"):
        log_likelihood(sde, lambda x, t: x[:, :1], x)
    with pytest.raises(ShapeError, match="score_fn returned"):
        elbo(sde, lambda x, t: x[:, :1], x)
    with pytest.raises(UnknownNameError, match="did you mean 'dopri5'.*valid: .*bosh3"):
        log_likelihood(sde, _never_called, x, method="dopri_5")
    with pytest.raises(UnknownNameError, match="valid: "):
        log_likelihood(sde, _never_called, x, method="rk4")  # fixed steps have no error control
    with pytest.raises(UnknownNameError, match="exact, hutchinson"):
        log_likelihood(sde, _never_called, x, divergence="hutchinsn")
    with pytest.raises(UnknownNameError, match="gaussian, rademacher"):
        log_likelihood(sde, _never_called, x, probe="normal")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(OptionError, match="num_probes"):
            log_likelihood(sde, _never_called, x, num_probes=bad)
    with pytest.raises(OptionError, match="t_min"):
        log_likelihood(sde, _never_called, x, t_min=0.0)
    with pytest.raises(OptionError, match="record_times"):
        log_likelihood(sde, _never_called, x, record_times=[0.5, 0.2])
    with pytest.raises(OptionError, match="record_times"):
        log_likelihood(sde, _never_called, x, record_times=[0.0, 0.5])
    with pytest.raises(OptionError, match="num_times"):
        elbo(sde, score, x, num_times=0)
    assert issubclass(UnknownNameError, SdekitError)


def test_exact_divergence_refuses_large_items():
    sde = VPSDE()
    with pytest.raises(OptionError, match="D = 1025.*hutchinson"):
        log_likelihood(sde, _never_called, torch.zeros(2, 1025), divergence="exact")
    with pytest.raises(OptionError, match="D = 3072.*hutchinson"):
        bits_per_dim(sde, _never_called, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), divergence="exact")


def test_pixels_outside_the_data_range():
    sde = VPSDE()
    with pytest.raises(OptionError, match=r"\[-1, 1\]"):
        bits_per_dim(sde, _never_called, torch.tensor([[0.5, 1.5]]))
    with pytest.raises(OptionError, match=r"\[-1, 1\]"):
        bits_per_dim(sde, _never_called, torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(OptionError, match=r"0\.\.15"):
        bits_per_dim(sde, _never_called, torch.tensor([[3, 20]], dtype=torch.uint8), levels=16)
    with pytest.raises(OptionError, match=r"0\.\.255"):
        bits_per_dim(sde, _never_called, torch.tensor([[-1, 3]]))
    with pytest.raises(OptionError, match="levels"):
        bits_per_dim(sde, _never_called, torch.tensor([[0, 1]]), levels=1)
    with pytest.raises(OptionError, match="dequantize"):
        bits_per_dim(sde, _never_called, torch.tensor([[0, 1]]), dequantize=0)
