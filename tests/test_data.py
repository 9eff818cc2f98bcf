"""Data: toys have the statistics they are designed to have, files round-trip, every bad
input is one clear error, splits and batches are seeded."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdekit.data import RING_RADII, DataConfig, Dataset, from_images, load_dataset, to_images
from sdekit.config import ConfigError, load_config, make_schema
from sdekit.errors import OptionError, SdekitError, ShapeError, UnknownNameError

TOYS = ["checkerboard", "swissroll", "moons", "rings", "8gaussians"]


def load(name="checkerboard", **kw):
    return load_dataset(DataConfig(name=name, **kw))


@pytest.mark.parametrize("name", TOYS + ["gmm:ring8", "gmm:image:channels=3,size=4"])
def test_toys_have_their_shape_and_are_reproducible(name):
    a, b, c = load(name, size=500, seed=1), load(name, size=500, seed=1), load(name, size=500, seed=2)
    assert a.x.dtype == torch.float32 and len(a) == 500
    assert a.item_shape == ((3, 4, 4) if "image" in name else (2,))
    assert a.kind == ("image" if "image" in name else "vector")
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    if a.y is not None:
        assert a.y.dtype == torch.int64 and a.y.shape == (500,) and int(a.y.max()) < a.num_classes


def test_checkerboard_occupies_the_even_squares_uniformly():
    x = load("checkerboard", size=40000).x.double()
    assert float(x.abs().max()) <= 4.0
    col, row = ((x + 4) // 2).long().unbind(1)
    assert ((col + row) % 2 == 0).all()
    counts = torch.bincount(4 * row + col, minlength=16).double()
    assert (counts[(torch.arange(16) // 4 + torch.arange(16) % 4) % 2 == 1] == 0).all()
    occupied = counts[counts > 0]
    assert len(occupied) == 8
    assert (occupied - 5000).abs().max() < 5 * math.sqrt(5000)  # multinomial, p = 1/8
    within = ((x + 4) % 2).flatten()  # uniform inside its square: mean 1, variance 1/3
    assert abs(within.mean().item() - 1) < 0.02 and abs(within.var().item() - 1 / 3) < 0.02


def test_swissroll_radius_grows_with_the_angle():
    x = load("swissroll", size=20000).x.double()
    r, theta = x.norm(dim=1), torch.atan2(x[:, 1], x[:, 0])
    assert r.min() > 1.5 * math.pi / 5 - 0.5 and r.max() < 4.5 * math.pi / 5 + 0.5
    assert abs(r.mean().item() - 3 * math.pi / 5) < 0.03  # E[t]/5, plus a noise bias ~ 0.003
    # on the spiral r = t/5 with t = angle mod 2 pi: cos(5 r - angle) is near 1 (noise 0.1 -> 5 r +- 0.5)
    assert (5 * r - theta).cos().mean() > 0.8


def test_moons_lie_on_their_unit_half_circles():
    data = load("moons", size=20000)
    x, y = data.x.double(), data.y
    assert data.num_classes == 2 and abs(y.double().mean().item() - 0.5) < 0.02
    centre = torch.tensor([[-0.5, -0.25], [0.5, 0.25]], dtype=torch.float64)[y]
    d = x - centre
    assert abs(d.norm(dim=1).mean().item() - 1.0) < 0.01
    assert (d.norm(dim=1) - 1).abs().max() < 0.3
    side = torch.where(y == 0, d[:, 1], -d[:, 1])  # moon 0 is the upper half, moon 1 the lower
    assert side.min() > -0.25 and (side < 0).double().mean() < 0.05
    assert abs(x.mean(0)).max() < 0.05  # centred


def test_rings_have_their_radii():
    data = load("rings", size=20000)
    r = data.x.double().norm(dim=1)
    assert data.num_classes == len(RING_RADII)
    for k, radius in enumerate(RING_RADII):
        rk = r[data.y == k]
        assert abs(len(rk) / 20000 - 0.25) < 0.02
        assert abs(rk.mean().item() - radius) < 0.01 and abs(rk.std().item() - 0.08) < 0.01


def test_eight_gaussians_and_gmm_carry_their_exact_mixture():
    data = load("8gaussians", size=16000)
    assert data.num_classes == 8 and data.mixture is not None
    for k in range(8):
        xk = data.x.double()[data.y == k]
        assert (xk.mean(0) - data.mixture.means[k]).norm() < 0.03
        assert abs(xk.std(0).mean().item() - 0.5 / math.sqrt(2)) < 0.02
    assert abs(data.mixture.means.norm(dim=1) - 2 * math.sqrt(2)).max() < 1e-12
    gmm = load("gmm:random:dim=3,components=4,seed=0", size=100)
    assert gmm.num_classes == 4 and gmm.item_shape == (3,) and gmm.mixture.dim == 3


def test_digits_are_the_bundled_1797_images():
    data = load("digits")
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == torch.float32 and data.kind == "image"
    assert float(data.x.min()) == -1.0 and float(data.x.max()) == 1.0
    assert data.num_classes == 10 and data.classes == tuple("0123456789")
    assert torch.equal(data.y.unique(), torch.arange(10))
    assert torch.equal(((data.x + 1) * 8).unique(), torch.arange(17, dtype=torch.float32))  # 0..16 -> x/8 - 1


def test_to_images_and_from_images_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    x = from_images(pixels)
    assert x.dtype == torch.float32 and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(to_images(x), pixels)
    assert torch.equal(from_images(pixels.numpy()), x)
    assert torch.equal(to_images(torch.tensor([-3.0, 0.0, 3.0])), torch.tensor([0, 128, 255], dtype=torch.uint8))
    with pytest.raises(OptionError, match="uint8"):
        from_images(x)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _pixels(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_a_folder_of_images_without_classes(tmp_path):
    images = [_pixels(i, (6, 5, 3)) for i in range(3)]
    for i, img in enumerate(images):
        _png(tmp_path / f"img{i}.png", img)
    (tmp_path / "notes.txt").write_text("not an image")  # other files are ignored
    data = load("folder", path=str(tmp_path))
    assert data.x.shape == (3, 3, 6, 5) and data.y is None and data.num_classes == 0
    assert torch.equal(to_images(data.x), torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2)))


def test_a_folder_with_one_sub_folder_per_class(tmp_path):
    for name, count in (("zebra", 2), ("ant", 3)):
        for i in range(count):
            _png(tmp_path / name / f"{i}.png", _pixels(i, (4, 4)))
    data = load("folder", path=str(tmp_path))
    assert data.x.shape == (5, 1, 4, 4) and data.classes == ("ant", "zebra") and data.num_classes == 2
    assert data.y.tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(to_images(data.x[3, 0]), torch.from_numpy(_pixels(0, (4, 4))))


def test_image_size_crops_and_resizes_mixed_sizes(tmp_path):
    _png(tmp_path / "wide.png", np.full((4, 8), 255))
    _png(tmp_path / "tall.png", np.zeros((6, 3)))
    data = load("folder", path=str(tmp_path), image_size=2)
    assert data.x.shape == (2, 1, 2, 2)
    assert torch.equal(data.x[0], -torch.ones(1, 2, 2)) and torch.equal(data.x[1], torch.ones(1, 2, 2))


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_npy_and_npz_round_trip(tmp_path, layout):
    pixels = _pixels(0, (5, 3 if layout != "nhw" else 1, 4, 6))
    stored = {"nchw": pixels, "nhwc": pixels.transpose(0, 2, 3, 1), "nhw": pixels[:, 0]}[layout]
    np.save(tmp_path / "a.npy", stored)
    data = load("npy", path=str(tmp_path / "a.npy"))
    assert data.kind == "image" and torch.equal(to_images(data.x), torch.from_numpy(pixels))
    y = np.arange(5) % 2
    np.savez(tmp_path / "b.npz", x=stored, y=y)
    data = load("npy", path=str(tmp_path / "b.npz"))
    assert torch.equal(to_images(data.x), torch.from_numpy(pixels)) and data.y.tolist() == y.tolist()
    assert data.num_classes == 2


def test_npz_vectors_and_single_arrays(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(7, 3)) * 5
    np.savez(tmp_path / "v.npz", whatever=vectors)
    data = load("npy", path=str(tmp_path / "v.npz"))
    assert data.kind == "vector" and data.y is None
    assert torch.equal(data.x, torch.from_numpy(vectors.astype(np.float32)))
    floats = np.linspace(-1, 1, 2 * 1 * 3 * 3).reshape(2, 1, 3, 3)
    np.save(tmp_path / "f.npy", floats)
    assert torch.allclose(load("npy", path=str(tmp_path / "f.npy")).x.double(), torch.from_numpy(floats))


def _bad_cases(tmp_path):
    """(config fields, error type, message) for each bad input."""
    d = tmp_path
    _png(d / "sizes" / "a.png", np.zeros((4, 4)))
    _png(d / "sizes" / "b.png", np.zeros((4, 5)))
    _png(d / "channels" / "a.png", np.zeros((4, 4)))
    _png(d / "channels" / "b.png", np.zeros((4, 4, 3)))
    (d / "broken").mkdir()
    (d / "broken" / "c.png").write_bytes(b"not a png")
    (d / "empty").mkdir()
    _png(d / "emptyclass" / "cat" / "a.png", np.zeros((4, 4)))
    (d / "emptyclass" / "dog").mkdir()
    _png(d / "mixed" / "a.png", np.zeros((4, 4)))
    _png(d / "mixed" / "cls" / "b.png", np.zeros((4, 4)))
    np.save(d / "rank5.npy", np.zeros((2, 1, 1, 4, 4), np.uint8))
    np.save(d / "rank1.npy", np.zeros(4, np.uint8))
    np.save(d / "bigint.npy", np.full((2, 4, 4), 300, np.int32))
    np.save(d / "floats.npy", np.full((2, 4, 4), 2.0))
    np.save(d / "nan.npy", np.full((2, 3), np.nan))
    np.savez(d / "labels.npz", x=np.zeros((3, 2)), y=np.arange(4))
    np.savez(d / "floatlabels.npz", x=np.zeros((3, 2)), y=np.zeros(3))
    np.savez(d / "keys.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    np.save(d / "strings.npy", np.array([["a", "b"]]))
    (d / "garbage.npy").write_bytes(b"garbage")
    folder = lambda name: {"name": "folder", "path": str(d / name)}  # noqa: E731
    npy = lambda name: {"name": "npy", "path": str(d / name)}  # noqa: E731
    return [
        (folder("sizes"), ShapeError, r"b\.png is 5x4 \(WxH\), but .*a\.png is 4x4.*image_size"),
        (folder("channels"), ShapeError, r"b\.png has 3 channel\(s\), but .*a\.png has 1"),
        (folder("broken"), SdekitError, r"cannot read image .*c\.png"),
        (folder("empty"), SdekitError, "no images in .*empty: expected files ending in .png"),
        (folder("nowhere"), SdekitError, "nowhere is not a folder"),
        (folder("emptyclass"), SdekitError, "class folder .*dog has no images"),
        (folder("mixed"), SdekitError, r"mixes image files \(a\.png, \.\.\.\) with class sub-folders \(cls"),
        (npy("rank5.npy"), ShapeError, r"rank5\.npy \(the array\) has shape \(2, 1, 1, 4, 4\): expected"),
        (npy("rank1.npy"), ShapeError, r"rank1\.npy .* has shape \(4,\): expected"),
        (npy("bigint.npy"), SdekitError, r"integer pixels must lie in 0\.\.255, got 300\.\.300"),
        (npy("floats.npy"), SdekitError, r"float images must already be scaled to \[-1, 1\], got 2\.\.2"),
        (npy("nan.npy"), SdekitError, "nan.npy .* holds NaN"),
        (npy("labels.npz"), ShapeError,
         r"labels\.npz \(key 'y'\) must be integer labels of shape \(3,\).*shape \(4,\)"),
        (npy("floatlabels.npz"), ShapeError, r"\(key 'y'\) must be integer labels"),
        (npy("keys.npz"), SdekitError, r"expected an array 'x' \(or a single array\).*found keys a, b"),
        (npy("strings.npy"), SdekitError, "must hold numbers, got dtype <U1"),
        (npy("garbage.npy"), SdekitError, r"cannot read .*garbage\.npy"),
        ({"name": "moons", "flip": True}, ConfigError, "data.flip applies to images, but 'moons' holds vectors"),
        ({"name": "moons", "image_size": 8}, ConfigError, "data.image_size applies to images"),
        ({"name": "gmm:nope"}, UnknownNameError, "unknown mixture 'nope'"),
    ]


def test_each_bad_input_is_one_clear_error(tmp_path):
    for fields, error, message in _bad_cases(tmp_path):
        with pytest.raises(error, match=message):
            load(**fields)


@pytest.mark.parametrize("fields,message", [
    ({"name": "moonz"}, r"^name = 'moonz'; did you mean 'moons'\? \(valid: .*gmm:<spec>"),
    ({"name": "folder"}, "^path is required with name = 'folder'"),
    ({"name": "moons", "path": "x.npy"}, "^path applies to name 'folder' and 'npy', not 'moons'"),
    ({"holdout": 1.0}, r"^holdout must be >= 0.0 and < 1.0, got 1.0"),
    ({"size": 0}, "^size must be >= 1"),
])
def test_bad_config_names_the_key(fields, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**fields)


def test_the_data_section_loads_from_a_config_with_its_key_path(tmp_path):
    schema = make_schema(data=DataConfig)
    np.save(tmp_path / "a.npy", np.zeros((3, 2)))
    config = load_config(None, schema, ["data.name=npy", f"data.path={tmp_path / 'a.npy'}"]).data
    assert load_dataset(config).item_shape == (2,)
    with pytest.raises(ConfigError, match=r"--set data.name=digitz: data.name = 'digitz'; did you mean 'digits'"):
        load_config(None, schema, ["data.name=digitz"])


def test_holdout_split_is_disjoint_and_seeded():
    data = load("rings", size=1000, holdout=0.2, seed=3)
    train, held = data.split()
    assert (len(train), len(held)) == (800, 200)
    rows = lambda d: {tuple(v) for v in d.x.tolist()}  # noqa: E731
    assert not rows(train) & rows(held) and rows(train) | rows(held) == rows(data)
    assert torch.equal(held.y, data.y[torch.isin(data.x[:, 0], held.x[:, 0])])
    again = data.split()
    assert torch.equal(again[1].x, held.x)
    other = Dataset(data.x, data.y, holdout=0.2, seed=4).split()[1]
    assert not torch.equal(other.x, held.x)
    assert len(load("rings", size=10).split()[1]) == 0


def test_flips_flip_and_batches_are_reproducible():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3).repeat(500, 1, 1, 1)
    data = Dataset(x, flip=True)
    flipped = []
    for batch in data.batches(64, torch.Generator().manual_seed(0), shuffle=False):
        assert batch.y is None
        same = (batch.x == x[: len(batch.x)]).flatten(1).all(1)
        mirrored = (batch.x == x[: len(batch.x)].flip(-1)).flatten(1).all(1)
        assert (same ^ mirrored).all()  # each item is itself or its mirror image
        flipped.append(mirrored)
    flipped = torch.cat(flipped).double()
    assert len(flipped) == 1000 and abs(flipped.mean().item() - 0.5) < 4 * math.sqrt(0.25 / 1000)
    no_flip = torch.cat([b.x for b in Dataset(x).batches(64, torch.Generator().manual_seed(0), shuffle=False)])
    assert torch.equal(no_flip, x)

    labelled = load("moons", size=1000)
    run = lambda seed, **kw: list(labelled.batches(96, torch.Generator().manual_seed(seed), **kw))  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    assert [len(bt.x) for bt in a] == [96] * 10 + [40]
    assert all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in zip(a, b))
    assert not torch.equal(a[0].x, c[0].x)
    everything = torch.cat([bt.x for bt in a])
    assert torch.equal(everything.sort(0).values, labelled.x.sort(0).values)  # one pass, every item once
    assert [len(bt.x) for bt in run(1, drop_last=True)] == [96] * 10


def test_levels_say_which_data_are_discrete(tmp_path):
    """Likelihoods of discrete data are dequantized with these levels; continuous data have none."""
    assert load("digits").levels == 17
    assert torch.equal(((load("digits").x + 1) * 8), ((load("digits").x + 1) * 8).round())  # on the 17 levels
    _png(tmp_path / "img" / "a.png", _pixels(0, (4, 4)))
    assert load("folder", path=str(tmp_path / "img")).levels == 256
    assert load("folder", path=str(tmp_path / "img"), image_size=2).levels is None  # resampled
    np.save(tmp_path / "u8.npy", _pixels(1, (3, 1, 4, 4)))
    np.save(tmp_path / "f.npy", np.zeros((3, 1, 4, 4), np.float32))
    np.save(tmp_path / "v.npy", np.zeros((3, 2), np.int64))
    assert load("npy", path=str(tmp_path / "u8.npy")).levels == 256
    assert load("npy", path=str(tmp_path / "f.npy")).levels is None
    assert load("npy", path=str(tmp_path / "v.npy")).levels is None
    assert load("checkerboard").levels is None
