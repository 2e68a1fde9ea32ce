from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tokexport.data import (
    SKIMAGE_EXCLUDED_FILES,
    SKIMAGE_NATURAL_FILES,
    InstanceSet,
    Preprocess,
    image_folder,
    instance_recognition_set,
    natural_images,
    skimage_data_dir,
)
from tokexport.errors import InputError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def images():
    return natural_images(include_optional=False)


@pytest.fixture(scope="module")
def small_images(images):
    # A few real photographs, shrunk, keeps the crop tests fast.
    out = []
    for name, img in images[:3]:
        im = img.copy()
        im.thumbnail((128, 128))
        out.append((name, im))
    return out


def _gradient(w=96, h=64):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate(
        [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 128.0)], axis=2
    )
    return Image.fromarray(arr.astype(np.uint8), "RGB")


# ---------------------------------------------------------------- natural_images


def test_natural_images_are_rgb_sorted_unique(images):
    names = [n for n, _ in images]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert all(img.mode == "RGB" for _, img in images)
    assert all(n.startswith("skimage/") for n in names)
    present = [f for f in SKIMAGE_NATURAL_FILES if (skimage_data_dir() / f).is_file()]
    assert len(images) == len(present) >= 15
    # grey photographs are converted to RGB too
    assert "skimage/camera" in names


def test_natural_images_exclude_synthetic(images):
    names = {n.split("/", 1)[1] for n, _ in images}
    for bad in ("chessboard_GRAY", "chessboard_RGB", "logo", "page", "text", "phantom", "color", "horse"):
        assert bad not in names
    assert not set(SKIMAGE_NATURAL_FILES) & set(SKIMAGE_EXCLUDED_FILES)


def test_every_bundled_file_is_classified():
    # A new scikit-image release adding files should make us decide about them explicitly.
    known = set(SKIMAGE_NATURAL_FILES) | set(SKIMAGE_EXCLUDED_FILES) | {"README.txt"}
    files = {p.name for p in skimage_data_dir().iterdir() if p.is_file() and not p.name.endswith((".py", ".pyi"))}
    assert files <= known, sorted(files - known)


def test_natural_images_deterministic(images):
    again = natural_images(include_optional=False)
    assert [n for n, _ in again] == [n for n, _ in images]
    assert np.array_equal(np.asarray(again[0][1]), np.asarray(images[0][1]))


def test_optional_sources_only_add(images):
    with_opt = natural_images(include_optional=True)
    base = {n for n, _ in images}
    assert base <= {n for n, _ in with_opt}
    assert all(n.split("/")[0] in ("skimage", "sklearn", "matplotlib") for n, _ in with_opt)


# ---------------------------------------------------------------- Preprocess


def test_center_shape_dtype_and_default_resize():
    p = Preprocess(224, MEAN, STD)
    assert p.resize_shorter == 256
    x = p.center(_gradient(300, 200))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32


def test_normalisation_on_constant_colour():
    rgb = (200, 100, 50)
    img = Image.new("RGB", (80, 60), rgb)
    p = Preprocess(32, MEAN, STD)
    expected = (np.array(rgb) / 255.0 - np.array(MEAN)) / np.array(STD)
    for x in (p.center(img), p.random_crop(img, np.random.default_rng(0))):
        assert x.shape == (3, 32, 32)
        for c in range(3):
            np.testing.assert_allclose(x[c], expected[c], atol=1e-5)


def test_grey_and_rgba_inputs_are_converted():
    p = Preprocess(16, MEAN, STD)
    assert p.center(Image.new("L", (40, 30), 128)).shape == (3, 16, 16)
    assert p.random_crop(Image.new("RGBA", (40, 30)), np.random.default_rng(0)).shape == (3, 16, 16)


def test_center_crop_is_centred():
    # Left half black, right half white: the centre crop straddles the boundary symmetrically.
    arr = np.zeros((64, 128, 3), np.uint8)
    arr[:, 64:] = 255
    p = Preprocess(32, (0, 0, 0), (1, 1, 1), resize_shorter=64)
    x = p.center(Image.fromarray(arr))
    assert x[0, :, :14].max() < 0.05 and x[0, :, 18:].min() > 0.95


def test_random_crop_flips_happen():
    img = _gradient(96, 64)
    p = Preprocess(32, (0, 0, 0), (1, 1, 1))
    rng = np.random.default_rng(123)
    flipped = 0
    n = 40
    for _ in range(n):
        x = p.random_crop(img, rng, scale=(0.5, 0.5))
        # red channel increases left->right in the source; a flip makes it decrease
        flipped += x[0, :, 0].mean() > x[0, :, -1].mean()
    assert 8 <= flipped <= 32
    rng = np.random.default_rng(123)
    no_flip = [p.random_crop(img, rng, flip=False) for _ in range(10)]
    assert all(x[0, :, 0].mean() < x[0, :, -1].mean() for x in no_flip)


def test_random_crop_area_in_scale():
    # A crop of the full image (scale 1, ratio 1 on a square image) equals the resized image.
    img = _gradient(64, 64)
    p = Preprocess(64, (0, 0, 0), (1, 1, 1))
    x = p.random_crop(img, np.random.default_rng(0), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    np.testing.assert_allclose(x, p.normalize(img), atol=1e-6)


def test_random_crop_fallback_on_impossible_ratio():
    # Very wide ratio on a tall image can never fit at full area -> falls back to a centre crop.
    img = _gradient(40, 200)
    p = Preprocess(16, (0, 0, 0), (1, 1, 1))
    x = p.random_crop(img, np.random.default_rng(0), scale=(1.0, 1.0), ratio=(4.0, 5.0), flip=False)
    assert x.shape == (3, 16, 16)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(image_size=0, mean=MEAN, std=STD), "image_size"),
        (dict(image_size=32, mean=(0.5, 0.5), std=STD), "mean"),
        (dict(image_size=32, mean=MEAN, std=(0.2, 0.0, 0.2)), "std"),
        (dict(image_size=32, mean=MEAN, std=STD, resize_shorter=16), "resize_shorter"),
    ],
)
def test_preprocess_bad_args(kwargs, field):
    with pytest.raises(InputError, match=field):
        Preprocess(**kwargs)


def test_random_crop_bad_scale():
    p = Preprocess(16, MEAN, STD)
    with pytest.raises(InputError, match="scale"):
        p.random_crop(_gradient(), np.random.default_rng(0), scale=(0.7, 0.3))
    with pytest.raises(InputError, match="scale"):
        p.random_crop(_gradient(), np.random.default_rng(0), scale=(0.3, 1.5))


# ---------------------------------------------------------------- instance_recognition_set


def test_instance_set_shapes_and_labels(small_images):
    p = Preprocess(32, MEAN, STD)
    s = instance_recognition_set(small_images, p, samples_per_class=5, prototypes_per_class=2, seed=0)
    assert isinstance(s, InstanceSet)
    assert s.eval_x.shape == (15, 3, 32, 32) and s.eval_x.dtype == np.float32
    assert s.proto_x.shape == (6, 3, 32, 32) and s.proto_x.dtype == np.float32
    assert s.eval_y.dtype == np.int64 and s.proto_y.dtype == np.int64
    assert s.eval_y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert s.proto_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.class_names == [n for n, _ in small_images]
    assert s.n_classes == 3


def test_instance_set_deterministic(small_images):
    p = Preprocess(32, MEAN, STD)
    a = instance_recognition_set(small_images, p, 4, 2, seed=7)
    b = instance_recognition_set(small_images, p, 4, 2, seed=7)
    c = instance_recognition_set(small_images, p, 4, 2, seed=8)
    assert np.array_equal(a.eval_x, b.eval_x) and np.array_equal(a.proto_x, b.proto_x)
    assert not np.array_equal(a.eval_x, c.eval_x)
    assert not np.array_equal(a.proto_x, c.proto_x)


def test_eval_and_prototype_crops_differ(small_images):
    p = Preprocess(32, MEAN, STD)
    s = instance_recognition_set(small_images, p, 6, 6, seed=0)
    ev = s.eval_x.reshape(len(s.eval_x), -1)
    pr = s.proto_x.reshape(len(s.proto_x), -1)
    dist = np.abs(ev[:, None, :] - pr[None, :, :]).max(axis=2)
    assert dist.min() > 1e-3  # no eval crop equals any prototype crop
    # independent streams: the number of prototypes does not change the eval crops
    s2 = instance_recognition_set(small_images, p, 6, 2, seed=0)
    assert np.array_equal(s.eval_x, s2.eval_x)


def test_instance_set_bad_inputs(small_images):
    p = Preprocess(16, MEAN, STD)
    with pytest.raises(InputError, match="images"):
        instance_recognition_set([], p)
    with pytest.raises(InputError, match="duplicate"):
        instance_recognition_set([small_images[0], small_images[0]], p)
    with pytest.raises(InputError, match="samples_per_class"):
        instance_recognition_set(small_images, p, samples_per_class=0)
    with pytest.raises(InputError, match="seed"):
        instance_recognition_set(small_images, p, seed=-1)


# ---------------------------------------------------------------- image_folder


def _write_folder(root, classes):
    for cls, colours in classes.items():
        d = root / cls
        d.mkdir(parents=True)
        for i, col in enumerate(colours):
            Image.new("RGB", (40, 30), col).save(d / f"img{i}.png")


def test_image_folder_happy_path(tmp_path):
    _write_folder(tmp_path, {"b_cls": [(0, 0, 255)] * 2, "a_cls": [(255, 0, 0)] * 3})
    (tmp_path / "a_cls" / "notes.txt").write_text("ignored")
    (tmp_path / "stray.png").write_bytes(b"")  # files at the top level are not classes
    p = Preprocess(16, (0, 0, 0), (1, 1, 1))
    x, y, names = image_folder(tmp_path, p)
    assert names == ["a_cls", "b_cls"]
    assert x.shape == (5, 3, 16, 16) and x.dtype == np.float32
    assert y.tolist() == [0, 0, 0, 1, 1] and y.dtype == np.int64
    np.testing.assert_allclose(x[0, 0], 1.0, atol=1e-6)  # red class
    np.testing.assert_allclose(x[-1, 2], 1.0, atol=1e-6)  # blue class
    x2, y2, _ = image_folder(str(tmp_path), p, limit_per_class=1)
    assert y2.tolist() == [0, 1]


def test_image_folder_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="nope.*does not exist"):
        image_folder(missing, Preprocess(16, MEAN, STD))


def test_image_folder_not_a_directory(tmp_path):
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="file.png.*not a directory"):
        image_folder(f, Preprocess(16, MEAN, STD))


def test_image_folder_no_class_dirs(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="no class sub-directories") as e:
        image_folder(tmp_path, Preprocess(16, MEAN, STD))
    assert str(tmp_path) in str(e.value)


def test_image_folder_empty_class(tmp_path):
    _write_folder(tmp_path, {"ok": [(1, 2, 3)]})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match="no image files") as e:
        image_folder(tmp_path, Preprocess(16, MEAN, STD))
    assert str(tmp_path / "empty") in str(e.value)


def test_image_folder_unreadable_image(tmp_path):
    _write_folder(tmp_path, {"ok": [(1, 2, 3)]})
    bad = tmp_path / "ok" / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image") as e:
        image_folder(tmp_path, Preprocess(16, MEAN, STD))
    assert str(bad) in str(e.value)


def test_image_folder_message_is_one_line(tmp_path):
    with pytest.raises(InputError) as e:
        image_folder(tmp_path / "missing", Preprocess(16, MEAN, STD))
    assert "\n" not in str(e.value)


def test_search_split_is_disjoint_from_the_eval_split(small_images):
    """`tokexport search` chooses on its own crop stream; the prototypes are shared, the eval crops are not."""
    from tokexport.data import SEARCH_STREAM

    p = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    ev = instance_recognition_set(small_images, p, 3, 2, seed=0)
    se = instance_recognition_set(small_images, p, 3, 2, seed=0, eval_stream=SEARCH_STREAM)
    assert np.array_equal(ev.proto_x, se.proto_x) and np.array_equal(ev.eval_y, se.eval_y)
    flat_e, flat_s = ev.eval_x.reshape(len(ev.eval_x), -1), se.eval_x.reshape(len(se.eval_x), -1)
    assert not any(np.array_equal(a, b) for a in flat_e for b in flat_s)
    with pytest.raises(InputError):
        instance_recognition_set(small_images, p, 3, 2, seed=0, eval_stream=1)  # the prototypes' stream


def test_dependency_photographs_are_added_only_when_asked():
    base = natural_images(include_optional=False)
    deps = natural_images(include_optional=False, include_dependencies=True)
    assert [n for n, _ in deps if n not in dict(base)] == ["matplotlib/grace_hopper"]
