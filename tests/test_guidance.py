"""Guidance wraps the score: exact against the oracle, bitwise at the trivial scales, with every sampler.

- Classifier guidance at scale 1 with the exact posterior is the exact
  conditional score (Bayes' rule), and CFG at scale s equals classifier
  guidance at scale s with the exact classifier.
- At the unconditional and conditional scales the wrappers return that score
  from one evaluation, so sampling is bitwise what it is without guidance, for
  every registered sampler.
- CFG with a null class evaluates both scores in one call of 2B items, equal to
  two separate calls.
- Guided sampling at scale 1 matches exact draws of the chosen component
  (sliced Wasserstein within 1.6x the noise floor), and larger scales raise the
  exact posterior p(y | x_0) of the samples (numbers in docs/guidance.md).
"""

import re
from pathlib import Path

import pytest
import torch

import sdekit
from sdekit.errors import OptionError
from sdekit.guidance import classifier_free_guidance, classifier_guidance, oracle_classifier
from sdekit.metrics import sliced_wasserstein
from sdekit.oracle import named_mixture, ring
from sdekit.sde import VESDE, VPSDE
from sdekit.utils import append_dims

f64 = torch.float64
SDES = [VPSDE(), VESDE()]
SDE_IDS = ["vp", "ve"]
FACTOR = 1.6  # as tests/test_quality.py


def overlapping():
    """Four equal components whose neighbours overlap: p(y | x) is far from one-hot."""
    return ring(4, radius=1.0, std=0.5)


def points(gmm, sde, n=48, seed=0):
    """(x, t, y) at many times, with draws of p_t and far-away points, and every label."""
    g = torch.Generator().manual_seed(seed)
    xs, ts = [], []
    for t in (sde.t_min, 0.01, 0.1, 0.3, 0.6, 1.0):
        x = gmm.sample_t(n, t, sde, g)
        xs += [x, 3.0 * torch.randn(x.shape, generator=g, dtype=f64)]
        ts.append(torch.full((2 * n,), t, dtype=f64))
    x, t = torch.cat(xs), torch.cat(ts)
    return x, t, torch.arange(len(x)) % gmm.num_components


def rel_err(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1.0)).max())


def with_null_class(gmm, sde, calls):
    """A 'network' conditional on y in [0, K], K the null class (the unconditional score),
    taking a per-item ``offset`` as extra conditioning; records each call's batch size."""
    k = gmm.num_components

    def net(x, t, y, offset):
        calls.append(x.shape[0])
        uncond, cond = gmm.score(x, t, sde), gmm.score(x, t, sde, y=y.clamp(max=k - 1))
        return torch.where(append_dims(y == k, x.ndim), uncond, cond) + append_dims(offset, x.ndim)

    return net


# -- exact scores ----------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["ring8", "random:dim=16,components=8,seed=0"], ids=["2d", "16d"])
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_classifier_guidance_at_scale_one_is_the_exact_conditional_score(sde, spec):
    gmm = named_mixture(spec)
    x, t, y = points(gmm, sde)
    guided = classifier_guidance(gmm.score_fn(sde), oracle_classifier(gmm, sde), 1.0)
    with torch.no_grad():  # as in sampling
        out = guided(x, t, y=y)
    assert out.dtype == f64 and out.shape == x.shape and not out.requires_grad
    assert rel_err(out, gmm.score(x, t, sde, y=y)) < 1e-10


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("scale", [-0.5, 2.0, 4.0])
def test_cfg_equals_classifier_guidance_with_the_exact_classifier(sde, scale):
    gmm = overlapping()
    x, t, y = points(gmm, sde)
    cls = classifier_guidance(gmm.score_fn(sde), oracle_classifier(gmm, sde), scale)(x, t, y=y)
    for convention, value in (("s", scale), ("w", scale - 1.0)):
        cfg = classifier_free_guidance(gmm.score_fn(sde), value, convention=convention)(x, t, y=y)
        assert rel_err(cfg, cls) < 1e-10


def test_classifier_guidance_at_scale_zero_skips_the_classifier():
    gmm, sde = overlapping(), VPSDE()
    x, t, y = points(gmm, sde)

    def broken(x, t):
        raise AssertionError("the classifier must not be called at scale 0")

    assert torch.equal(classifier_guidance(gmm.score_fn(sde), broken, 0)(x, t, y=y), gmm.score(x, t, sde))


def test_classifier_guidance_keeps_dtype_and_the_callers_graph():
    gmm, sde = overlapping(), VESDE()
    x, t, y = points(gmm, sde, n=8)
    guided = classifier_guidance(gmm.score_fn(sde), oracle_classifier(gmm, sde), 1.0)
    out32 = guided(x.float(), t.float(), y=y)
    assert out32.dtype == torch.float32 and rel_err(out32.double(), gmm.score(x, t, sde, y=y)) < 1e-4
    # a caller differentiating through x (a divergence, say) gets the guided score's own gradient
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(guided(xg, t, y=y).sum(), xg)
    xr = x.clone().requires_grad_()
    (ref,) = torch.autograd.grad(gmm.score(xr, t, sde, y=y).sum(), xr)
    assert rel_err(grad, ref) < 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_cfg_with_a_null_class_is_one_batched_call_equal_to_two(dtype):
    gmm, sde = overlapping(), VPSDE()
    x, t, y = points(gmm, sde)
    x, t = x.to(dtype), t.to(dtype)
    b, k = len(x), gmm.num_components
    offset = torch.linspace(-1, 1, b, dtype=dtype)
    calls = []
    net = with_null_class(gmm, sde, calls)
    nulls = torch.full((b,), k)
    uncond, cond = net(x, t, y=nulls, offset=offset), net(x, t, y=y, offset=offset)
    tol = 1e-12 if dtype == f64 else 1e-5
    for convention, value in (("s", 2.5), ("w", 1.5)):
        calls.clear()
        guided = classifier_free_guidance(net, value, convention=convention, null=k)(x, t, y=y, offset=offset)
        assert calls == [2 * b]
        torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=tol, atol=tol)
    # the trivial scales: one call of B, exactly that score
    for convention, value, expected in (("s", 1.0, cond), ("w", 0.0, cond), ("s", 0.0, uncond), ("w", -1.0, uncond)):
        calls.clear()
        out = classifier_free_guidance(net, value, convention=convention, null=k)(x, t, y=y, offset=offset)
        assert calls == [b] and torch.equal(out, expected)


# -- composes with every sampler -----------------------------------------------------------

def test_trivial_scales_sample_bitwise_as_without_guidance_with_every_sampler(registry):
    gmm, sde = overlapping(), VPSDE()
    n, y = 64, torch.arange(64) % 4
    base_calls = []

    def score_fn(x, t, y=None):
        base_calls.append(1)
        return gmm.score(x, t, sde, y=y)

    classifier = oracle_classifier(gmm, sde)
    for name in registry.names():
        def run(fn, **kw):
            return sdekit.sample(fn, sde, (n, 2), name, steps=30, seed=5, registry=registry, **kw)

        conditional = run(score_fn, cond={"y": y}).samples
        unconditional = run(score_fn).samples
        assert not torch.equal(conditional, unconditional), name
        cases = [
            (classifier_free_guidance(score_fn, 1.0, convention="s"), conditional),
            (classifier_free_guidance(score_fn, 0.0, convention="w"), conditional),
            (classifier_free_guidance(score_fn, 0.0, convention="s"), unconditional),
            (classifier_free_guidance(score_fn, -1.0, convention="w"), unconditional),
            (classifier_guidance(score_fn, classifier, 0.0), unconditional),
        ]
        for guided, expected in cases:
            base_calls.clear()
            result = run(guided, cond={"y": y})
            assert torch.equal(result.samples, expected), (name, guided.guidance)
            assert len(base_calls) == result.nfe, name  # one model evaluation per score call


def test_guided_sampling_runs_with_every_sampler_and_both_wrappers_agree(registry):
    gmm, sde = overlapping(), VESDE()
    n, y = 64, torch.arange(64) % 4
    for name in registry.names():
        def run(fn):
            return sdekit.sample(fn, sde, (n, 2), name, steps=30, seed=5, registry=registry, dtype=f64,
                                 cond={"y": y}).samples

        cfg = run(classifier_free_guidance(gmm.score_fn(sde), 3.0, convention="s"))
        cls = run(classifier_guidance(gmm.score_fn(sde), oracle_classifier(gmm, sde), 3.0))
        assert torch.isfinite(cfg).all(), name
        assert float((cfg - cls).abs().max()) < 1e-6, name


# -- the guided distribution ---------------------------------------------------------

def component_draws(gmm, c, n, seed):
    z = torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(seed), dtype=f64)
    return (gmm.means[c] + gmm.stds[c] * z).reshape(n, *gmm.item_shape).float()


@pytest.mark.parametrize("sampler", ["ddim", pytest.param("ancestral", marks=pytest.mark.slow)])
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("spec", ["overlapping", "random:dim=16,components=8,seed=0"], ids=["2d", "16d"])
def test_classifier_guidance_at_scale_one_samples_the_chosen_component(spec, sde, sampler, registry):
    gmm = overlapping() if spec == "overlapping" else named_mixture(spec)
    n, c = 2000, 1
    floor = sum(sliced_wasserstein(component_draws(gmm, c, n, 100 + 2 * i),
                                   component_draws(gmm, c, n, 101 + 2 * i)) for i in range(3)) / 3
    ref = component_draws(gmm, c, n, 0)
    guided = classifier_guidance(gmm.score_fn(sde), oracle_classifier(gmm, sde), 1.0)
    out = sdekit.sample(guided, sde, ref.shape, sampler, seed=7, cond={"y": torch.full((n,), c)},
                        registry=registry).samples
    plain = sdekit.sample(gmm.score_fn(sde), sde, ref.shape, sampler, seed=7, registry=registry).samples
    ratio, plain_ratio = sliced_wasserstein(out, ref) / floor, sliced_wasserstein(plain, ref) / floor
    print(f"GUIDED {spec} {type(sde).__name__} {sampler} ratio={ratio:.2f} unguided={plain_ratio:.1f}")
    assert ratio < FACTOR
    assert plain_ratio > 5 * FACTOR  # the check can fail: unguided samples are far from the component


@pytest.mark.parametrize("sampler", ["ddim", pytest.param("ancestral", marks=pytest.mark.slow)])
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_larger_scales_concentrate_samples_on_the_chosen_component(sde, sampler, registry):
    """Mean exact posterior p(y | x_0) of the samples: 1/K unguided, the exact conditional
    value at scale 1, then strictly higher with the scale (numbers in docs/guidance.md)."""
    gmm = overlapping()
    k, n = gmm.num_components, 2000
    y = torch.arange(n) % k
    # exact value at scale 1: E over x ~ p(x | y) of p(y | x), by Monte Carlo on 40000 exact draws
    y_ref = torch.arange(40000) % k
    x_ref = gmm.means[y_ref] + gmm.stds[y_ref] * torch.randn(40000, 2, generator=torch.Generator().manual_seed(1),
                                                             dtype=f64)
    exact_scale_one = float(gmm.posterior(x_ref).gather(1, y_ref[:, None]).mean())
    means = {}
    for scale in (0.0, 1.0, 2.0, 4.0):
        guided = classifier_guidance(gmm.score_fn(sde), oracle_classifier(gmm, sde), scale)
        out = sdekit.sample(guided, sde, (n, 2), sampler, seed=3, cond={"y": y}, registry=registry).samples
        means[scale] = float(gmm.posterior(out.double()).gather(1, y[:, None]).mean())
    print(f"CONCENTRATION {type(sde).__name__} {sampler} exact(1)={exact_scale_one:.4f} "
          + " ".join(f"{s:g}:{m:.4f}" for s, m in means.items()))
    assert abs(means[0.0] - 1 / k) < 0.03
    assert abs(means[1.0] - exact_scale_one) < 0.03
    assert means[2.0] > means[1.0] + 0.1
    assert means[4.0] > means[2.0] + 0.01


def test_docs_example_runs(capsys):
    doc = Path(__file__).resolve().parents[1] / "docs" / "guidance.md"
    (src,) = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    exec(compile(src, "docs/guidance.md", "exec"), {})
    lines = capsys.readouterr().out.split()
    assert lines[0::2] == ["cfg", "classifier"]
    assert all(0.95 < float(v) < 0.99 for v in lines[1::2])  # "about 0.97"


# -- bad input -----------------------------------------------------------------------------

def test_bad_input_is_one_clear_option_error():
    gmm, sde = overlapping(), VPSDE()
    x, t, y = points(gmm, sde, n=4)
    with pytest.raises(OptionError, match=r"unknown classifier-free guidance convention 'g'.*'s'.*'w'"):
        classifier_free_guidance(gmm.score_fn(sde), 2.0, convention="g")
    with pytest.raises(TypeError, match="convention"):  # no default: the convention is an explicit choice
        classifier_free_guidance(gmm.score_fn(sde), 2.0)
    for bad in (float("nan"), float("inf"), "2", True):
        with pytest.raises(OptionError, match="must be a finite number"):
            classifier_free_guidance(gmm.score_fn(sde), bad, convention="s")
        with pytest.raises(OptionError, match="must be a finite number"):
            classifier_guidance(gmm.score_fn(sde), oracle_classifier(gmm, sde), bad)
    wrappers = {"classifier-free guidance": classifier_free_guidance(gmm.score_fn(sde), 2.0, convention="w"),
                "classifier guidance": classifier_guidance(gmm.score_fn(sde), oracle_classifier(gmm, sde), 2.0)}
    for what, guided in wrappers.items():
        for cond in ({}, {"y": None}, {"label": y}):
            with pytest.raises(OptionError, match=f"^{what} needs the class labels: pass cond={{'y': labels}}"):
                guided(x, t, **cond)
        with pytest.raises(OptionError, match="needs the class labels"):
            sdekit.sample(guided, sde, (8, 2), "ddim", steps=5)
    with pytest.raises(OptionError, match=r"class labels must lie in \[0, 3\]"):
        wrappers["classifier guidance"](x, t, y=y + 4)
