"""Inpainting and colorization (sdekit.controllable) against the exact conditional.

The oracle's ``GaussianMixture.condition`` gives p_0(x_unknown | x_known = y)
exactly, so the replacement method of Song et al. 2021 (appendix I) is checked
like every sampler: the sliced Wasserstein distance between the generated
unknown part and exact conditional samples, over the noise floor (two
independent exact sets of the same size), and the mode weights (hard argmax
of the conditional's posterior) against those of exact samples. Replacement
is an approximation, not an exact conditional sampler; the bounds below sit
above the measured values (docs/controllable.md) with margin, and each case
also checks that sampling without the constraint fails the same bounds.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import sdekit
from sdekit.controllable import Colorize, Inpaint, channel_basis
from sdekit.errors import OptionError, SdekitError, ShapeError
from sdekit.io import read_image, read_mask
from sdekit.metrics import mode_weights, sliced_wasserstein
from sdekit.oracle import named_mixture
from sdekit.sde import VESDE, VPSDE

f64 = torch.float64
DOC = Path(__file__).resolve().parents[1] / "docs" / "controllable.md"
IMAGE = "image:channels=3,size=4,components=8,seed=0"
RANDOM16 = "random:dim=16,components=8,seed=0"
STEPS = 500  # pc's recommended steps


def left_half(size=4):
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[..., : size // 2] = True
    return mask


def item(spec, seed):
    """One exact draw of the mixture: the data whose known part is kept."""
    return named_mixture(spec).sample(1, torch.Generator().manual_seed(seed))[0]


def q_coordinates(x):
    """Images (B, C, H, W) in the channel basis Q of Colorize (float64)."""
    q = channel_basis(x.shape[1])
    return torch.einsum("ij,bj...->bi...", q, x.to(f64))


def colorize_case(spec, seed):
    """(Colorize, the exact law of channels 1..C-1 in Q-coordinates, and how to read them from samples)."""
    gmm, x0 = named_mixture(spec), item(spec, seed)
    c, h, w = gmm.item_shape
    gray = x0.mean(0, keepdim=True)
    # isotropic components: the law of (Q x) is the mixture with means (Q kron I) mu, same stds
    gmm_q = gmm.transform(torch.kron(channel_basis(c), torch.eye(h * w, dtype=f64)))
    known_q = torch.zeros(c, h, w, dtype=f64)
    known_q[0] = math.sqrt(c) * gray[0]
    mask_q = torch.zeros(c, 1, 1, dtype=torch.bool)
    mask_q[0] = True
    return Colorize(gray, channels=c), gmm_q.condition(mask_q, known_q), lambda x: q_coordinates(x)[:, 1:]


def inpaint_case(spec, mask, values):
    gmm = named_mixture(spec)
    flat = torch.as_tensor(mask).expand(gmm.item_shape).reshape(-1)
    return Inpaint(values, mask), gmm.condition(mask, values), lambda x: x.reshape(len(x), -1)[:, ~flat]


#: case -> (mixture, samples, constraint builder, bound on SW / floor, bound on mode-weight error);
#: measured VP / VE (pc, 500 steps, seed 7) in the comments, and in docs/controllable.md
CASES = {
    # x0 = 1 known: x1 is +-1.41 (two equal modes) exactly. 0.46 / 0.44, 0.013 / 0.009
    "ring8": ("ring8", 4000, lambda: inpaint_case("ring8", torch.tensor([True, False]), torch.tensor([1.0, 0.0])),
              1.6, 0.04),
    # the first 8 of 16 coordinates known: one component (1 sample in 2000 strays). 1.98 / 2.73, 0.001 / 0.002
    "random16": (RANDOM16, 2000, lambda: inpaint_case(RANDOM16, torch.arange(16) < 8, item(RANDOM16, 2)),
                 5.0, 0.02),
    # the left half of a (3, 4, 4) image known (1.7 % stray). 4.58 / 4.68, 0.017 / 0.016
    "image": (IMAGE, 2000, lambda: inpaint_case(IMAGE, left_half(), item(IMAGE, 1)), 8.0, 0.05),
    # the gray image known: two colorings. 0.96 / 0.99, 0.001 / 0.002
    "colorize": (IMAGE, 2000, lambda: colorize_case(IMAGE, 1), 1.6, 0.02),
}


def distance_to_exact(samples, cond, unknown):
    """(SW / noise floor, max mode-weight error) of the generated unknown part against ``cond``."""
    n = len(samples)
    draw = lambda seed: cond.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float32)  # noqa: E731
    ref = draw(0)
    floor = sum(sliced_wasserstein(draw(100 + 2 * i), draw(101 + 2 * i)) for i in range(3)) / 3
    gen = unknown(samples)
    ratio = sliced_wasserstein(gen, ref) / floor
    weights = mode_weights(cond.posterior(gen.to(f64).reshape(n, -1)))
    exact = mode_weights(cond.posterior(ref.to(f64)))
    return ratio, float((weights - exact).abs().max())


def run(spec, n, constraint, sde, registry, **kw):
    gmm = named_mixture(spec)
    return sdekit.sample(gmm.score_fn(sde), sde, (n, *gmm.item_shape), "pc", steps=STEPS, seed=7,
                         constraint=constraint, registry=registry, **kw)


def known_part_is_exact(constraint, x):
    if isinstance(constraint, Colorize):
        return (x.mean(1, keepdim=True) - constraint.gray.to(x.dtype)).abs().max() < 1e-6
    mask = constraint.mask.expand_as(x)
    return torch.equal(x[mask], constraint.known.to(x.dtype).expand_as(x)[mask])


# -- against the exact conditional ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("case", list(CASES))
def test_unknown_part_follows_the_exact_conditional(case, sde, registry):
    spec, n, build, sw_bound, w_bound = CASES[case]
    constraint, cond, unknown = build()
    result = run(spec, n, constraint, sde, registry)
    assert known_part_is_exact(constraint, result.samples)
    assert result.provenance["constraint"] == repr(constraint)
    ratio, w_err = distance_to_exact(result.samples, cond, unknown)
    print(f"CONTROLLABLE {case} {type(sde).__name__} ratio={ratio:.2f} mode_weight_error={w_err:.3f}")
    assert ratio < sw_bound and w_err < w_bound


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_without_the_constraint_the_same_check_fails(case, registry):
    spec, n, build, sw_bound, w_bound = CASES[case]
    constraint, cond, unknown = build()
    samples = run(spec, n, None, VPSDE(), registry).samples
    assert not known_part_is_exact(constraint, samples)
    ratio, w_err = distance_to_exact(samples, cond, unknown)
    print(f"CONTROLLABLE {case} unconstrained ratio={ratio:.2f} mode_weight_error={w_err:.3f}")
    assert ratio > 2 * sw_bound or w_err > 2 * w_bound


# -- the constraints themselves ----------------------------------------------------------

@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_inpaint_replaces_the_known_part_by_the_diffused_data(sde):
    known = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=f64)
    mask = torch.tensor([[1, 0], [0, 1]])
    con = Inpaint(known, mask)
    x = torch.randn(5, 2, 2, dtype=f64)
    z = torch.randn(5, 2, 2, dtype=f64)
    m, s = (float(c) for c in sde.marginal(torch.tensor(0.3, dtype=f64)))
    out = con.project(sde, x, 0.3, lambda like: z)
    keep = mask.bool().expand_as(x)
    torch.testing.assert_close(out[keep], (m * known + s * z)[keep], rtol=0, atol=0)
    assert torch.equal(out[~keep], x[~keep])
    assert torch.equal(con.project(sde, x, 0.3, None)[keep], (m * known).expand_as(x)[keep])
    assert torch.equal(con.finish(x)[keep], known.expand_as(x)[keep]) and out.dtype == f64


def test_inpaint_noise_comes_from_the_noise_source_only():
    """Per-item seeds hold only if every draw goes through noise(x), once per call."""
    calls = []

    def noise(like):
        calls.append(tuple(like.shape))
        return torch.zeros_like(like)

    Inpaint(torch.ones(3), torch.tensor([1, 0, 1])).project(VESDE(), torch.zeros(4, 3), 0.5, noise)
    assert calls == [(4, 3)]


def test_inpaint_mask_broadcasts_and_keeps_device_and_dtype():
    known = torch.arange(3 * 2 * 2, dtype=torch.float32).reshape(3, 2, 2)
    con = Inpaint(known, torch.tensor([[[True, False], [False, True]]]))  # (1, H, W) for (C, H, W)
    for dtype in (torch.float32, f64, torch.float32):
        out = con.finish(torch.zeros(2, 3, 2, 2, dtype=dtype))
        assert out.dtype == dtype and out[:, :, 0, 0].eq(known[:, 0, 0]).all() and out[:, :, 0, 1].eq(0).all()
    assert len(con._cast) == 2  # one cast per (device, dtype), reused
    assert re.fullmatch(r"Inpaint\(item_shape=\(3, 2, 2\), known=6/12, sha256=[0-9a-f]{12}\)", repr(con))


def test_inpaint_errors_name_the_shapes():
    with pytest.raises(ShapeError, match=r"mask's shape \(2, 2\) does not broadcast to the known data's shape \(3,\)"):
        Inpaint(torch.zeros(3), torch.ones(2, 2))
    with pytest.raises(OptionError, match="must be binary"):
        Inpaint(torch.zeros(3), torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(OptionError, match="finite where the mask is 1"):
        Inpaint(torch.tensor([0.0, float("nan")]), torch.tensor([True, True]))
    Inpaint(torch.tensor([0.0, float("nan")]), torch.tensor([True, False]))  # NaN where generated is fine
    with pytest.raises(ShapeError, match=r"item shape \(3,\), but the samples have items of shape \(4,\)"):
        Inpaint(torch.zeros(3), torch.ones(3)).finish(torch.zeros(2, 4))


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 7])
def test_channel_basis_is_orthogonal_with_the_mean_as_first_row(channels):
    q = channel_basis(channels)
    torch.testing.assert_close(q @ q.T, torch.eye(channels, dtype=f64), rtol=0, atol=1e-15)
    torch.testing.assert_close(q[0], torch.full((channels,), channels**-0.5, dtype=f64), rtol=0, atol=1e-15)
    x = torch.randn(2, channels, 3, 3, dtype=f64)
    torch.testing.assert_close(q_coordinates(x)[:, 0], math.sqrt(channels) * x.mean(1))
    assert torch.equal(channel_basis(channels), q)  # deterministic


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_colorize_sets_the_channel_mean_and_keeps_the_rest(sde):
    gray = torch.rand(1, 4, 5) * 2 - 1
    con = Colorize(gray)
    x = torch.randn(6, 3, 4, 5)
    done = con.finish(x)
    assert (done.mean(1, keepdim=True) - gray).abs().max() < 1e-6
    # the colors (channels 1, 2 in Q-coordinates) are untouched
    torch.testing.assert_close(q_coordinates(done)[:, 1:], q_coordinates(x)[:, 1:], rtol=0, atol=1e-6)
    m, s = (float(c) for c in sde.marginal(torch.tensor(0.4, dtype=f64)))
    mean_part = con.project(sde, x, 0.4, None)
    assert (mean_part.mean(1, keepdim=True) - m * gray).abs().max() < 1e-5
    z = torch.randn(6, 3, 4, 5)
    noisy = con.project(sde, x, 0.4, lambda like: z)
    torch.testing.assert_close(noisy.mean(1), m * gray[0] + s * z[:, 0] / math.sqrt(3), rtol=0, atol=1e-4)
    assert re.fullmatch(r"Colorize\(item_shape=\(3, 4, 5\), sha256=[0-9a-f]{12}\)", repr(con))
    assert Colorize(gray[0]).item_shape == (3, 4, 5)  # (H, W) works too
    with pytest.raises(ShapeError, match=r"Colorize: .* items of shape \(3, 4, 5\), but the samples have items "
                                         r"of shape \(4, 4, 5\)"):
        con.finish(torch.zeros(2, 4, 4, 5))


# -- sampling ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["inpaint", "colorize"])
def test_a_sample_depends_on_its_seed_not_on_the_batch(kind, registry):
    if kind == "inpaint":
        spec, con = "ring8", Inpaint(torch.tensor([1.0, 0.0]), torch.tensor([True, False]))
    else:
        spec, con = IMAGE, Colorize(item(IMAGE, 1).mean(0, keepdim=True))
    gmm, sde = named_mixture(spec), VPSDE()

    def draw(n):  # reverse_diffusion alone (in pc) is per-item; pc's default langevin step is the batch's
        return sdekit.sample(gmm.score_fn(sde), sde, (n, *gmm.item_shape), "reverse_diffusion", steps=30,
                             seeds=range(n), constraint=con, registry=registry).samples

    small, large = draw(4), draw(16)
    assert torch.equal(small, large[:4])
    assert not torch.equal(large[0], large[1])


def test_a_whole_sampler_with_a_constraint_is_a_clear_error(registry):
    gmm, sde = named_mixture("ring8"), VPSDE()
    con = Inpaint(torch.tensor([1.0, 0.0]), torch.tensor([True, False]))
    with pytest.raises(SdekitError, match="need 'pc' or a predictor or corrector; 'ode' is a whole sampler"):
        sdekit.sample(gmm.score_fn(sde), sde, (4, 2), "ode", constraint=con, registry=registry)
    # a predictor named alone runs in pc: fine
    out = sdekit.sample(gmm.score_fn(sde), sde, (4, 2), "ancestral", steps=30, constraint=con, registry=registry)
    assert out.samples[:, 0].eq(1.0).all()


# -- the exact conditional -------------------------------------------------------------------

def test_condition_is_proportional_to_the_joint_density():
    gmm = named_mixture("random:dim=5,components=4,seed=3")
    mask = torch.tensor([True, False, True, False, False])
    y = gmm.sample(1, torch.Generator().manual_seed(0))[0]
    cond = gmm.condition(mask, y)
    assert cond.dim == 3 and math.isclose(float(cond.weights.sum()), 1.0)
    u = torch.randn(64, 3, dtype=f64)
    x = y.expand(64, 5).clone()
    x[:, ~mask] = u
    # p(u | y) = p(y, u) / p(y): the difference of log-densities does not depend on u
    diff = cond.log_prob(u) - gmm.log_prob(x)
    torch.testing.assert_close(diff, diff[:1].expand(64), rtol=0, atol=1e-10)
    with pytest.raises(OptionError, match="some coordinates known and some unknown"):
        gmm.condition(torch.ones(5), y)
    with pytest.raises(ShapeError, match="must broadcast to the item shape"):
        gmm.condition(torch.ones(4), y)


def test_transform_by_an_orthogonal_matrix_is_exact_for_isotropic_components():
    gmm = named_mixture(IMAGE)
    big = torch.kron(channel_basis(3), torch.eye(16, dtype=f64))
    moved = gmm.transform(big)
    x = gmm.sample(32, torch.Generator().manual_seed(0))
    torch.testing.assert_close(moved.log_prob(q_coordinates(x)), gmm.log_prob(x), rtol=0, atol=1e-10)
    with pytest.raises(OptionError, match="isotropic"):
        named_mixture(RANDOM16).transform(torch.eye(16))
    with pytest.raises(OptionError, match="orthogonal"):
        gmm.transform(2 * torch.eye(48))


def test_image_mixture_looks_like_small_images_with_two_colorings_per_gray():
    gmm = named_mixture(IMAGE)
    assert gmm.item_shape == (3, 4, 4) and gmm.num_components == 8
    assert gmm.means.abs().max() < 1.0
    gray = gmm.means.reshape(8, 3, 4, 4).mean(1)
    torch.testing.assert_close(gray[0::2], gray[1::2])  # pairs share a gray pattern
    assert not torch.allclose(gmm.means[0::2], gmm.means[1::2])  # ... and differ in color
    assert (gmm.stds == gmm.stds[:, :1]).all()
    assert named_mixture("image:channels=1,size=8,components=3,seed=2").item_shape == (1, 8, 8)


# -- reading images and masks -------------------------------------------------------------------

def write_png(path, array, mode=None):
    from PIL import Image

    Image.fromarray(array, mode=mode).save(path)
    return path


def test_read_image_maps_pixels_to_minus_one_one(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    img = read_image(write_png(tmp_path / "rgb.png", rgb))
    assert img.dtype == torch.float32 and img.shape == (3, 5, 6)
    torch.testing.assert_close(img, torch.from_numpy(rgb.transpose(2, 0, 1) / 127.5 - 1).float())
    gray = read_image(write_png(tmp_path / "gray.png", rgb[..., 0]))
    assert gray.shape == (1, 5, 6) and gray.min() >= -1 and gray.max() <= 1
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 7, np.uint8)], axis=2)
    assert torch.equal(read_image(write_png(tmp_path / "rgba.png", rgba)), img)  # alpha dropped
    deep = np.array([[0, 65535]], dtype=np.uint16)
    assert read_image(write_png(tmp_path / "deep.png", deep)).tolist() == [[[-1.0, 1.0]]]
    raw = np.linspace(-3, 3, 12).reshape(2, 6)
    np.save(tmp_path / "raw.npy", raw)
    assert torch.equal(read_image(tmp_path / "raw.npy"), torch.from_numpy(raw).float())  # as is
    assert read_image(tmp_path / "rgb.png", item_shape=(3, 5, 6)).shape == (3, 5, 6)


def test_read_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SdekitError, match=r"cannot read image .*bad\.png"):
        read_image(bad)
    with pytest.raises(SdekitError, match=r"cannot read image .*missing\.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(SdekitError, match=r"cannot read image .*bad\.npy"):
        read_image(tmp_path / "bad.npy")
    png = write_png(tmp_path / "small.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ShapeError, match=r"image .*small\.png has shape \(3, 4, 4\), but the samples' items have "
                                         r"shape \(3, 8, 8\)"):
        read_image(png, item_shape=(3, 8, 8))


def test_read_mask_white_is_known(tmp_path):
    pixels = np.array([[0, 255, 255], [0, 0, 1]], dtype=np.uint8)
    mask = read_mask(write_png(tmp_path / "m.png", pixels), (3, 2, 3))
    assert mask.dtype == torch.bool and mask.shape == (3, 2, 3)
    assert mask[0].tolist() == [[False, True, True], [False, False, True]] and (mask == mask[:1]).all()
    assert read_mask(tmp_path / "m.png", (2, 3)).shape == (2, 3)  # gray mask for (H, W) items
    binary = np.where(pixels > 0, 255, 0).astype(np.uint8)
    per_channel = np.stack([binary, np.zeros_like(binary), 255 - binary], axis=2)
    mask = read_mask(write_png(tmp_path / "rgb.png", per_channel), (3, 2, 3))
    assert mask[1].sum() == 0 and torch.equal(mask[0], ~mask[2])
    np.save(tmp_path / "m.npy", np.array([[1, 0, 1]]))
    assert read_mask(tmp_path / "m.npy", (2, 2, 3)).tolist() == [[[True, False, True]] * 2] * 2
    np.save(tmp_path / "b.npy", np.array([True, False]))
    assert read_mask(tmp_path / "b.npy", (2,)).tolist() == [True, False]


def test_read_mask_errors_name_the_file(tmp_path):
    np.save(tmp_path / "soft.npy", np.array([0.0, 0.5]))
    with pytest.raises(SdekitError, match=r"mask .*soft\.npy must be binary"):
        read_mask(tmp_path / "soft.npy", (2,))
    png = write_png(tmp_path / "m.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ShapeError, match=r"mask .*m\.png has shape \(1, 4, 4\), which does not broadcast to the "
                                         r"samples' item shape \(3, 8, 8\)"):
        read_mask(png, (3, 8, 8))
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(SdekitError, match=r"cannot read mask .*bad\.png"):
        read_mask(tmp_path / "bad.png", (1, 4, 4))


def test_inpainting_from_files_end_to_end(tmp_path, registry):
    """What ``sdekit sample --inpaint MASK --image IMG`` does: read, constrain, sample."""
    gmm, sde = named_mixture(IMAGE), VESDE()
    x0 = item(IMAGE, 1).clamp(-1, 1)
    pixels = np.round((x0.numpy().transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    image = read_image(write_png(tmp_path / "x.png", pixels), gmm.item_shape)
    mask = read_mask(write_png(tmp_path / "mask.png", left_half()[0].numpy().astype(np.uint8) * 255), gmm.item_shape)
    out = sdekit.sample(gmm.score_fn(sde), sde, (3, *gmm.item_shape), "pc", steps=30,
                        constraint=Inpaint(image, mask), registry=registry).samples
    assert torch.equal(out[:, mask], image[mask].expand(3, -1))
    assert (image - x0).abs().max() < 1 / 127


def test_docs_example_runs(capsys):
    src = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    exec(compile(src, str(DOC), "exec"), {})
    lines = capsys.readouterr().out.split("\n")
    assert lines[0] == "True"  # the known part is kept exactly
    assert float(lines[1]) < 0.04  # mode-weight error against the exact conditional (measured 0.011)
