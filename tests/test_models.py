"""Score networks (sdekit.models): shapes, conditioning, the null class and context, clear errors,
the parametrization adapters against exact answers, autocast, compile, and a training step."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from sdekit import VESDE, VPSDE, SubVPSDE
from sdekit.errors import OptionError, ShapeError, UnknownNameError
from sdekit.guidance import classifier_free_guidance, classifier_grad
from sdekit.models import (ModelConfig, build_model, count_parameters, network_classifier_fn, network_score_fn,
                           noise_input)

SMALL = ModelConfig(channels=8, channel_mult=(1, 2), attn_resolutions=(4,), dropout=0.0)
TINY_MLP = ModelConfig(arch="mlp", hidden=32, depth=2, dropout=0.0)


def build(config, item_shape, seed=0, perturb_out=True):
    """A network in eval mode; its zero-initialised output layer redrawn so outputs depend on the input."""
    torch.manual_seed(seed)
    net = build_model(config, item_shape).eval()
    if perturb_out:
        out = net.conv_out if hasattr(net, "conv_out") else net.out
        nn.init.normal_(out.weight, std=0.1)
    return net


def inputs(item_shape, b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *item_shape, generator=g), 999 * torch.rand(b, generator=g)


# -- shapes and sizes ---------------------------------------------------------------------

@pytest.mark.parametrize("item_shape", [(1, 8, 8), (3, 8, 8), (1, 16, 16), (3, 16, 16), (3, 8, 16)])
def test_unet_output_shape(item_shape):
    net = build(ModelConfig(channels=8, channel_mult=(1, 2, 2)), item_shape)
    x, c = inputs(item_shape)
    assert net(x, c).shape == x.shape
    assert net(x, c[0]).shape == x.shape  # a 0-d c_noise is broadcast over the batch


@pytest.mark.parametrize("item_shape", [(2,), (16,), (1, 4, 4)])
def test_mlp_output_shape(item_shape):
    net = build(TINY_MLP, item_shape)
    x, c = inputs(item_shape)
    assert net(x, c).shape == x.shape


@pytest.mark.parametrize("item_shape", [(1, 8, 8), (3, 16, 16), (2,), (16,)])
def test_classifier_returns_logits(item_shape):
    net = build(dataclasses.replace(SMALL, arch="classifier", num_classes=5, hidden=32), item_shape,
                perturb_out=False)
    x, c = inputs(item_shape)
    logits = net(x, c)
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    assert logits.std(dim=0).sum() > 0  # depends on the item


def test_default_parameter_counts_are_the_documented_ones():
    digits = count_parameters(build_model(ModelConfig(), (1, 8, 8)))
    mlp = count_parameters(build_model(ModelConfig(arch="mlp"), (2,)))
    assert 350_000 <= digits <= 650_000  # "about 0.5M" for the 8x8 digits
    assert f"{digits:,}" in ModelConfig.__doc__ and f"{mlp:,}" in ModelConfig.__doc__


def test_output_layer_starts_at_zero():
    for config, shape in ((SMALL, (1, 8, 8)), (TINY_MLP, (2,))):
        x, c = inputs(shape)
        assert torch.equal(build(config, shape, perturb_out=False)(x, c), torch.zeros_like(x))


def test_same_seed_same_weights_and_fourier_frequencies_fixed():
    config = dataclasses.replace(SMALL, embedding="fourier", num_classes=3, context_dim=2)
    a, b, c = (build(config, (1, 8, 8), seed, perturb_out=False) for seed in (5, 5, 6))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv_in.weight"], sc["conv_in.weight"])
    assert torch.equal(sa["cond.features.freqs"], sc["cond.features.freqs"])  # own generator


# -- conditioning ---------------------------------------------------------------------------

@pytest.mark.parametrize("embedding", ["positional", "fourier"])
@pytest.mark.parametrize("config,shape", [(SMALL, (1, 8, 8)), (TINY_MLP, (2,))])
def test_noise_input_changes_the_output(config, shape, embedding):
    net = build(dataclasses.replace(config, embedding=embedding), shape)
    x, _ = inputs(shape)
    near, far = net(x, torch.full((4,), 10.0)), net(x, torch.full((4,), 500.0))
    assert (near - far).abs().mean() > 1e-3 * near.abs().mean()


@pytest.mark.parametrize("config,shape", [(SMALL, (1, 8, 8)), (TINY_MLP, (2,))])
def test_class_labels_and_the_null_class(config, shape):
    net = build(dataclasses.replace(config, num_classes=3), shape)
    x, c = inputs(shape)
    y = torch.tensor([0, 1, 2, 1])
    null = net(x, c)
    assert torch.equal(null, net(x, c, y=y, cond_drop=torch.ones(4, dtype=torch.bool)))
    assert torch.equal(null, net(x, c, y=torch.full((4,), 3)))  # index num_classes is the null class
    cond = net(x, c, y=y)
    assert (cond - null).abs().amax() > 1e-4
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert (net(x, c, y=zeros) - net(x, c, y=ones)).abs().amax() > 1e-4
    drop = torch.tensor([True, False, True, False])
    mixed = net(x, c, y=y, cond_drop=drop)
    torch.testing.assert_close(mixed[drop], null[drop])
    torch.testing.assert_close(mixed[~drop], cond[~drop])


@pytest.mark.parametrize("config,shape", [(SMALL, (1, 8, 8)), (TINY_MLP, (2,))])
def test_context_vectors_and_the_null_context(config, shape):
    net = build(dataclasses.replace(config, num_classes=2, context_dim=4), shape)
    x, c = inputs(shape)
    ctx = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    y = torch.tensor([0, 1, 0, 1])
    null = net(x, c)
    assert torch.equal(null, net(x, c, y=y, context=ctx, cond_drop=torch.ones(4, dtype=torch.bool)))
    assert (net(x, c, context=ctx) - null).abs().amax() > 1e-4
    assert (net(x, c, context=ctx) - net(x, c, context=ctx.flip(1))).abs().amax() > 1e-4
    # the null context is learned, not the zero vector
    assert (net(x, c, context=torch.zeros(4, 4)) - null).abs().amax() > 1e-4


# -- clear errors -----------------------------------------------------------------------------

def test_unconditional_model_refuses_conditioning():
    net = build(SMALL, (1, 8, 8))
    x, c = inputs((1, 8, 8))
    with pytest.raises(OptionError, match="no class conditioning .num_classes=0."):
        net(x, c, y=torch.zeros(4, dtype=torch.long))
    with pytest.raises(OptionError, match="no context conditioning .context_dim=0."):
        net(x, c, context=torch.zeros(4, 3))
    with pytest.raises(OptionError, match="unconditional"):
        net(x, c, cond_drop=torch.zeros(4, dtype=torch.bool))


def test_wrong_shapes_and_labels_are_named():
    net = build(dataclasses.replace(SMALL, channel_mult=(1, 2, 2), num_classes=3, context_dim=4), (1, 8, 8))
    x, c = inputs((1, 8, 8))
    with pytest.raises(ShapeError, match=r"\(B, 1, H, W\) with H and W divisible by 4 .* got \(4, 3, 8, 8\)"):
        net(torch.zeros(4, 3, 8, 8), c)
    with pytest.raises(ShapeError, match=r"divisible by 4 \(3 levels.*got \(4, 1, 6, 6\)"):
        net(torch.zeros(4, 1, 6, 6), c)
    with pytest.raises(ShapeError, match=r"context must be \(4, 4\) \(context_dim=4\), got \(4, 5\)"):
        net(x, c, context=torch.zeros(4, 5))
    with pytest.raises(OptionError, match=r"labels must lie in \[0, 2\] \(or be 3, the null class\)"):
        net(x, c, y=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(OptionError, match=r"labels must lie in \[0, 2\]"):
        net(x, c, y=torch.tensor([0, -1, 2, 0]))
    with pytest.raises(ShapeError, match=r"y must be \(4,\) integer class labels"):
        net(x, c, y=torch.zeros(4))
    with pytest.raises(ShapeError, match=r"c_noise must be a \(4,\) float tensor"):
        net(x, c[:3])
    with pytest.raises(ShapeError, match=r"cond_drop must be a \(4,\) bool tensor"):
        net(x, c, y=torch.zeros(4, dtype=torch.long), cond_drop=torch.zeros(4))
    mlp = build(TINY_MLP, (2,))
    with pytest.raises(ShapeError, match=r"MLP expects x of shape \(B, 2\), got \(4, 3\)"):
        mlp(torch.zeros(4, 3), c)
    clf = build(dataclasses.replace(SMALL, arch="classifier", num_classes=3), (1, 8, 8), perturb_out=False)
    with pytest.raises(OptionError, match="predicts the class y"):
        clf(x, c, y=torch.zeros(4, dtype=torch.long))


def test_config_validation_names_the_key():
    with pytest.raises(OptionError, match=r"model.channels must be >= 1, got 0"):
        ModelConfig(channels=0)
    with pytest.raises(OptionError, match=r"model.parametrization must be one of .*did you mean 'eps'"):
        ModelConfig(parametrization="epsilon")
    with pytest.raises(OptionError, match=r"model.channel_mult\[1\] must be >= 1"):
        ModelConfig(channel_mult=(1, 0))
    with pytest.raises(OptionError, match=r"model.dropout must be >= 0.0 and < 1.0"):
        ModelConfig(dropout=1.0)
    with pytest.raises(OptionError, match=r"num_classes must be >= 1 for arch 'classifier'"):
        ModelConfig(arch="classifier")
    with pytest.raises(UnknownNameError, match=r"unknown model option 'chanels'; did you mean 'channels'"):
        ModelConfig.from_dict({"chanels": 8})
    config = ModelConfig.from_dict({"channel_mult": [1, 2, 2], "attn_resolutions": "8,4", "channels": "16"})
    assert config.channel_mult == (1, 2, 2) and config.attn_resolutions == (8, 4) and config.channels == 16
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ShapeError, match=r"arch 'unet' needs images"):
        build_model(ModelConfig(), (2,))
    with pytest.raises(ShapeError, match=r"H and W must be divisible by 4 for 3 levels"):
        build_model(ModelConfig(channel_mult=(1, 2, 2)), (1, 6, 6))
    with pytest.raises(OptionError, match=r"num_heads=5 must divide"):
        build_model(ModelConfig(num_heads=5), (1, 8, 8))


# -- noise input and the score adapter --------------------------------------------------------

def test_noise_input():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(noise_input(VPSDE(), t, "t"), 999 * t)
    ve = VESDE()
    torch.testing.assert_close(noise_input(ve, t, "log_sigma"), ve.sigma(t).log())
    vp = VPSDE()
    mean, std = vp.marginal(t[1:])
    torch.testing.assert_close(noise_input(vp, t[1:], "log_sigma"), (std / mean).log())
    assert torch.isfinite(noise_input(vp, t, "log_sigma")).all()  # sigma = 0 at t = 0, clamped
    with pytest.raises(UnknownNameError, match="unknown noise input 'sigma'"):
        noise_input(vp, t, "sigma")


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("parametrization", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("kind", ["t", "log_sigma"])
def test_network_score_fn_converts_each_parametrization(sde, parametrization, kind):
    """A network predicting the true eps / x0 / v / score of a known x_t gives the true score -z / s."""
    g = torch.Generator().manual_seed(0)
    x0, z = (torch.randn(6, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    t = 0.05 + 0.9 * torch.rand(6, generator=g, dtype=torch.float64)
    m, s = (c[:, None, None, None] for c in sde.marginal(t))
    xt = m * x0 + s * z
    truth = {"eps": z, "x0": x0, "v": m * z - s * x0, "score": -z / s}[parametrization]
    seen = {}

    def net(x, c_noise, **cond):
        seen.update(c_noise=c_noise, cond=cond)
        return truth

    config = ModelConfig(parametrization=parametrization, noise_input=kind)
    score = network_score_fn(net, sde, config)(xt, t, y=7)
    torch.testing.assert_close(score, -z / s)
    torch.testing.assert_close(seen["c_noise"], noise_input(sde, t, kind))
    assert seen["cond"] == {"y": 7}


def test_score_fn_and_guidance_with_a_real_network():
    sde = VPSDE()
    net = build(dataclasses.replace(TINY_MLP, num_classes=3), (2,))
    score_fn = network_score_fn(net, sde)  # config from net.config
    x, _ = inputs((2,))
    t, y = torch.full((4,), 0.5), torch.tensor([0, 1, 2, 0])
    assert score_fn(x, t, y=y).shape == x.shape
    # classifier-free guidance in one batched call with the null class index
    uncond = classifier_free_guidance(score_fn, 0.0, convention="s", null=3)(x, t, y=y)
    torch.testing.assert_close(uncond, score_fn(x, t))
    guided = classifier_free_guidance(score_fn, 2.0, convention="s", null=3)(x, t, y=y)
    torch.testing.assert_close(guided, 2 * score_fn(x, t, y=y) - score_fn(x, t))
    clf = build(dataclasses.replace(TINY_MLP, arch="classifier", num_classes=3), (2,), perturb_out=False)
    grad = classifier_grad(network_classifier_fn(clf, sde), x, t, y)
    assert grad.shape == x.shape and grad.abs().sum() > 0


# -- dtypes, autocast, compile, training ---------------------------------------------------------

@pytest.mark.parametrize("config,shape", [(SMALL, (3, 8, 8)), (TINY_MLP, (16,))])
def test_autocast_bfloat16_forward_is_finite(config, shape):
    net = build(dataclasses.replace(config, num_classes=3, context_dim=2, embedding="fourier"), shape)
    x, c = inputs(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, c, y=torch.tensor([0, 1, 2, 3]), context=torch.ones(4, 2),
                  cond_drop=torch.tensor([True, False, False, True]))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0


def test_float64_after_to():
    net = build(dataclasses.replace(SMALL, embedding="fourier", context_dim=2), (1, 8, 8)).to(torch.float64)
    x, c = inputs((1, 8, 8))
    assert net.cond.features.freqs.dtype == torch.float64  # buffers move with .to()
    assert net(x.double(), c.double(), context=torch.ones(4, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("config,shape", [(SMALL, (1, 8, 8)), (TINY_MLP, (2,))])
def test_compiles_without_graph_breaks(config, shape):
    net = build(dataclasses.replace(config, num_classes=3), shape)
    x, c = inputs(shape)
    y, drop = torch.tensor([0, 1, 2, 0]), torch.tensor([True, False, False, True])
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, c, y=y, cond_drop=drop), net(x, c, y=y, cond_drop=drop))


@pytest.mark.parametrize("config,shape", [(SMALL, (1, 8, 8)), (TINY_MLP, (2,))])
def test_gradient_steps_reduce_a_denoising_loss(config, shape):
    sde = VPSDE()
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(config, num_classes=2), shape)
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(16, *shape, generator=g), torch.randn(16, *shape, generator=g)
    t, y = 0.1 + 0.8 * torch.rand(16, generator=g), torch.randint(0, 2, (16,), generator=g)
    xt = sde.perturb(x0, t, z)

    def loss():
        return (net(xt, noise_input(sde, t), y=y) - z).square().mean()

    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    first = loss().item()
    assert math.isclose(first, z.square().mean().item(), rel_tol=1e-6)  # zero output at init
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.9 * first
