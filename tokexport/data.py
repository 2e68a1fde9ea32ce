"""Real evaluation images without network access, and torchvision-free preprocessing.

Sources, all read straight from installed packages (nothing is downloaded):

* scikit-image's bundled ``skimage/data/`` directory (always available; see
  :data:`SKIMAGE_NATURAL_FILES` for which files count as natural photographs);
* scikit-learn's ``datasets/images/*.jpg`` (china, flower), only if scikit-learn is installed;
* matplotlib's ``mpl-data/sample_data/grace_hopper.jpg`` (a photograph of Grace Hopper). matplotlib is a
  required dependency of tokexport, so ``include_dependencies=True`` adds it without making the set
  depend on the environment; otherwise it is an optional source like scikit-learn's.

Looked at and left out (not photographs, or not shipped): matplotlib's other sample data
(``Minduka_Present_Blue_Pack.png`` is a rendered icon, ``logo2.png`` a logo, ``s1045.ima.gz`` an MRI
slice, ``*.npz``/``*.dat`` arrays), imageio (its standard images are downloaded on first use, nothing is
shipped), Pillow (its test images are not in the wheel), SciPy (``scipy.datasets`` downloads through
pooch; ``scipy.misc.face`` is gone). scikit-image's other files are listed in
:data:`SKIMAGE_EXCLUDED_FILES` with the reason.

The optional packages are located with :func:`importlib.util.find_spec`, which finds a package
without importing it.

:func:`instance_recognition_set` turns these photographs into an instance-recognition task
(class = source image, samples = random resized crops with flips), a real if modest way to compare
a reduced model with the original one.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError

# Natural photographs shipped inside scikit-image's ``data/`` directory (no download needed).
# Grey-level photographs are converted to RGB by replicating the channel.
SKIMAGE_NATURAL_FILES: tuple[str, ...] = (
    "astronaut.png",  # colour portrait (Eileen Collins)
    "brick.png",  # grey, brick-wall texture photograph
    "camera.png",  # grey, cameraman
    "cell.png",  # grey, light-microscopy photograph of a cell
    "chelsea.png",  # colour, cat
    "clock_motion.png",  # grey, wall clock photographed with motion blur
    "coffee.png",  # colour, cup of coffee
    "coins.png",  # grey, coins on a table
    "grass.png",  # grey, grass texture photograph
    "gravel.png",  # grey, gravel texture photograph
    "hubble_deep_field.jpg",  # colour, Hubble deep field
    "ihc.png",  # colour, immunohistochemistry microscopy
    "microaneurysms.png",  # grey, 102x102 crop of a retinal fundus photograph (upscaled)
    "moon.png",  # grey, lunar surface
    "motorcycle_left.png",  # colour, motorcycle (left view of a stereo pair)
    "retina.jpg",  # colour, retinal fundus photograph
    "rocket.jpg",  # colour, rocket on the launch pad
)

# Everything else in that directory, and why it is left out.
SKIMAGE_EXCLUDED_FILES: dict[str, str] = {
    "chessboard_GRAY.png": "synthetic pattern",
    "chessboard_RGB.png": "synthetic pattern",
    "color.png": "synthetic colour chart",
    "horse.png": "binary silhouette, not a photograph",
    "logo.png": "graphic (scikit-image logo)",
    "page.png": "scanned text page",
    "text.png": "text on a photograph; mostly a text/thresholding test image",
    "phantom.png": "synthetic Shepp-Logan phantom",
    "motorcycle_right.png": "right view of the same stereo pair as motorcycle_left: a near-duplicate "
    "class that no model could tell apart from crops",
    "lfw_subset.npy": "array stack of 25x25 faces, not an image file",
    "motorcycle_disp.npz": "disparity map array",
    "multipage.tif": "tiny multi-page TIFF test stack",
    "multipage_rgb.tif": "tiny multi-page TIFF test stack",
    "no_time_for_that_tiny.gif": "tiny animated GIF",
    "lbpcascade_frontalface_opencv.xml": "classifier cascade, not an image",
}

# Photographs shipped by tokexport's other required dependencies (``include_dependencies=True``).
_DEPENDENCY_SOURCES: tuple[tuple[str, str, str], ...] = (("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg"),)

# Optional extra sources: (package, path relative to the package directory, glob pattern).
_OPTIONAL_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("sklearn", "datasets/images", "*.jpg"),
    ("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg"),
)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".pgm",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
)


def _load_rgb(path: Path) -> Image.Image:
    """Open an image file fully (no lazy file handle) and return it as RGB."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # Composite on white rather than letting convert() drop alpha onto black.
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, rgba).convert("RGB")
        return im.convert("RGB")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def skimage_data_dir() -> Path:
    import skimage

    return Path(os.path.dirname(skimage.__file__)) / "data"


def natural_images(include_optional: bool = True, include_dependencies: bool = False) -> list[tuple[str, Image.Image]]:
    """Natural photographs from installed packages, as ``(name, RGB image)``, sorted by name.

    Names are ``"skimage/<stem>"``, ``"sklearn/<stem>"`` and ``"matplotlib/<stem>"``, so they are
    unique. Files named in :data:`SKIMAGE_NATURAL_FILES` but absent from the installed
    scikit-image version are skipped; the optional sources are used only when their package is
    installed (``include_optional=False`` leaves them out for a result that does not depend on
    the environment); ``include_dependencies=True`` adds the photographs of tokexport's other required
    dependencies (:data:`_DEPENDENCY_SOURCES`: matplotlib's grace_hopper), which every install has.
    """
    found: dict[str, Path] = {}
    data_dir = skimage_data_dir()
    for fname in SKIMAGE_NATURAL_FILES:
        p = data_dir / fname
        if p.is_file():
            found[f"skimage/{p.stem}"] = p
    sources = (_DEPENDENCY_SOURCES if include_dependencies else ()) + (_OPTIONAL_SOURCES if include_optional else ())
    if sources:
        for pkg, rel, pattern in sources:
            root = _package_dir(pkg)
            if root is None:
                if (pkg, rel, pattern) in _DEPENDENCY_SOURCES:  # a required dependency: the set must not shrink
                    from .errors import EnvironmentProblem

                    raise EnvironmentProblem(
                        f"{pkg} is not installed but tokexport needs it (its sample "
                        f"photograph {pattern} is part of the evaluation set): pip install {pkg}"
                    )
                continue
            for p in sorted((root / rel).glob(pattern)):
                if p.is_file():
                    found[f"{pkg}/{p.stem}"] = p
    if not found:
        raise InputError(
            f"no natural images found under {data_dir}; reinstall scikit-image "
            "(pip install --force-reinstall scikit-image)"
        )
    return [(name, _load_rgb(found[name])) for name in sorted(found)]


def _check_pair(field: str, value, positive: bool = True, upper: float | None = None) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{field}={value!r}: expected a pair (low, high) of numbers") from None
    if (
        not (math.isfinite(lo) and math.isfinite(hi))
        or lo > hi
        or (positive and lo <= 0)
        or (upper is not None and hi > upper)
    ):
        bound = f" within (0, {upper}]" if upper is not None else " with 0 < low"
        raise InputError(f"{field}={value!r}: expected low <= high{bound}")
    return lo, hi


class Preprocess:
    """Resize / crop / normalise PIL images into float32 ``[3, H, W]`` arrays (no torchvision).

    ``mean`` and ``std`` are per-channel, on the 0..1 scale (e.g. ImageNet's
    ``(0.485, 0.456, 0.406)`` / ``(0.229, 0.224, 0.225)``).
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], resize_shorter: int | None = None):
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise InputError(f"image_size={image_size!r}: expected a positive integer, e.g. 224")
        if resize_shorter is None:
            resize_shorter = int(round(image_size * 256 / 224))
        if (
            isinstance(resize_shorter, bool)
            or not isinstance(resize_shorter, (int, np.integer))
            or resize_shorter < image_size
        ):
            raise InputError(f"resize_shorter={resize_shorter!r}: expected an integer >= image_size ({image_size})")
        mean_a = np.asarray(mean, dtype=np.float64).reshape(-1)
        std_a = np.asarray(std, dtype=np.float64).reshape(-1)
        if mean_a.shape != (3,) or not np.all(np.isfinite(mean_a)):
            raise InputError(f"mean={mean!r}: expected 3 finite per-channel values on the 0..1 scale")
        if std_a.shape != (3,) or not np.all(np.isfinite(std_a)) or np.any(std_a <= 0):
            raise InputError(f"std={std!r}: expected 3 positive per-channel values on the 0..1 scale")
        self.image_size = int(image_size)
        self.resize_shorter = int(resize_shorter)
        self.mean = tuple(float(v) for v in mean_a)
        self.std = tuple(float(v) for v in std_a)
        self._mean = mean_a.astype(np.float32).reshape(3, 1, 1)
        self._std = std_a.astype(np.float32).reshape(3, 1, 1)

    def __repr__(self) -> str:
        return (
            f"Preprocess(image_size={self.image_size}, mean={self.mean}, std={self.std}, "
            f"resize_shorter={self.resize_shorter})"
        )

    def normalize(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 ``[3, H, W]``, scaled to 0..1 then ``(x - mean) / std``."""
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        return ((arr.transpose(2, 0, 1) - self._mean) / self._std).astype(np.float32)

    def center(self, img: Image.Image) -> np.ndarray:
        """Resize the shorter side to ``resize_shorter`` (bicubic), center-crop ``image_size``."""
        img = img.convert("RGB")
        w, h = img.size
        s = self.resize_shorter
        if w <= h:
            nw, nh = s, max(1, int(round(h * s / w)))
        else:
            nw, nh = max(1, int(round(w * s / h))), s
        img = img.resize((nw, nh), Image.BICUBIC)
        c = self.image_size
        left = int(round((nw - c) / 2.0))
        top = int(round((nh - c) / 2.0))
        return self.normalize(img.crop((left, top, left + c, top + c)))

    def random_crop(
        self, img: Image.Image, rng: np.random.Generator, scale=(0.3, 0.7), ratio=(3 / 4, 4 / 3), flip: bool = True
    ) -> np.ndarray:
        """RandomResizedCrop + RandomHorizontalFlip semantics (as torchvision), bicubic resize.

        The crop's area is a uniform fraction in ``scale`` of the image area, its aspect ratio
        (w/h) log-uniform in ``ratio``; after 10 failed tries it falls back to a center crop of
        the whole image with the aspect ratio clamped to ``ratio``. With ``flip``, the crop is
        mirrored horizontally with probability 0.5.
        """
        scale = _check_pair("scale", scale, upper=1.0)
        ratio = _check_pair("ratio", ratio)
        img = img.convert("RGB")
        W, H = img.size
        area = W * H
        log_r = (math.log(ratio[0]), math.log(ratio[1]))
        box = None
        for _ in range(10):
            target_area = area * rng.uniform(scale[0], scale[1])
            aspect = math.exp(rng.uniform(log_r[0], log_r[1]))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= W and 0 < h <= H:
                top = int(rng.integers(0, H - h + 1))
                left = int(rng.integers(0, W - w + 1))
                box = (left, top, left + w, top + h)
                break
        if box is None:
            in_ratio = W / H
            if in_ratio < ratio[0]:
                w, h = W, int(round(W / ratio[0]))
            elif in_ratio > ratio[1]:
                h, w = H, int(round(H * ratio[1]))
            else:
                w, h = W, H
            top, left = (H - h) // 2, (W - w) // 2
            box = (left, top, left + w, top + h)
        out = img.resize((self.image_size, self.image_size), Image.BICUBIC, box=box)
        if flip and rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return self.normalize(out)


@dataclass
class InstanceSet:
    """Instance recognition: class = source image. Eval and prototype crops are drawn independently."""

    eval_x: np.ndarray  # [M, 3, H, W] float32
    eval_y: np.ndarray  # [M] int64
    proto_x: np.ndarray  # [P, 3, H, W] float32
    proto_y: np.ndarray  # [P] int64
    class_names: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _check_count(field: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{field}={value!r}: expected an integer >= {minimum}")
    return int(value)


EVAL_STREAM = 0  # the verdict's crops (tokexport convert)
PROTOTYPE_STREAM = 1  # class prototypes (original model)
SEARCH_STREAM = 2  # the crops `tokexport search` chooses on (disjoint from the verdict's)


def instance_recognition_set(
    images: Sequence[tuple[str, Image.Image]],
    preprocess: Preprocess,
    samples_per_class: int = 8,
    prototypes_per_class: int = 4,
    scale=(0.3, 0.7),
    seed: int = 0,
    eval_stream: int = EVAL_STREAM,
) -> InstanceSet:
    """Random resized crops (with flips) of each image; class index = position in ``images``.

    Eval crops come from ``np.random.default_rng([seed, eval_stream])`` and prototype crops from
    ``np.random.default_rng([seed, 1])``: independent streams, so the sets do not share crops
    and changing ``prototypes_per_class`` does not change the eval crops. Deterministic per seed.

    Splits: ``eval_stream`` :data:`EVAL_STREAM` (0) is the verdict's split (``tokexport convert``);
    :data:`SEARCH_STREAM` (2) is the split ``tokexport search`` chooses schedules on, so the winner is
    judged on crops nothing was chosen with. Stream 1 is reserved for the prototypes.
    """
    if (
        eval_stream == PROTOTYPE_STREAM
        or isinstance(eval_stream, bool)
        or not isinstance(eval_stream, int)
        or eval_stream < 0
    ):
        raise InputError(
            f"eval_stream={eval_stream!r}: expected an integer >= 0 other than {PROTOTYPE_STREAM} "
            "(the prototypes' stream)"
        )
    images = list(images)
    if not images:
        raise InputError("images: empty list; pass at least one (name, PIL image) pair, e.g. natural_images()")
    names = [str(n) for n, _ in images]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"images: duplicate class names {dup}; give each image a unique name")
    samples_per_class = _check_count("samples_per_class", samples_per_class)
    prototypes_per_class = _check_count("prototypes_per_class", prototypes_per_class)
    seed = _check_count("seed", seed, minimum=0)
    scale = _check_pair("scale", scale, upper=1.0)
    rng_eval = np.random.default_rng([seed, eval_stream])
    rng_proto = np.random.default_rng([seed, PROTOTYPE_STREAM])

    def draw(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for c, (_, img) in enumerate(images):
            rgb = img.convert("RGB")
            for _ in range(per_class):
                xs.append(preprocess.random_crop(rgb, rng, scale=scale))
                ys.append(c)
        return np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64)

    eval_x, eval_y = draw(rng_eval, samples_per_class)
    proto_x, proto_y = draw(rng_proto, prototypes_per_class)
    return InstanceSet(eval_x, eval_y, proto_x, proto_y, names)


def image_folder(
    path, preprocess: Preprocess, limit_per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load an ImageFolder tree (``path/<class>/<image>``) with ``preprocess.center``.

    Classes are the sorted sub-directory names (hidden ones ignored); images are the sorted files
    with an image extension (:data:`IMAGE_EXTENSIONS`); other files are ignored. With
    ``limit_per_class``, the first N images of each class are used. Returns
    ``(x [N,3,H,W] float32, y [N] int64, class_names)``.
    """
    root = Path(path)
    if limit_per_class is not None:
        limit_per_class = _check_count("limit_per_class", limit_per_class)
    if not root.exists():
        raise InputError(f"image folder {root} does not exist; pass a directory with one sub-directory per class")
    if not root.is_dir():
        raise InputError(f"image folder {root} is not a directory; pass a directory with one sub-directory per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise InputError(
            f"image folder {root} has no class sub-directories; put each class's images in {root}/<class>/"
        )
    xs, ys = [], []
    for c, cdir in enumerate(class_dirs):
        files = sorted(
            p
            for p in cdir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if limit_per_class is not None:
            files = files[:limit_per_class]
        if not files:
            raise InputError(
                f"class directory {cdir} has no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the directory"
            )
        for f in files:
            try:
                img = _load_rgb(f)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise InputError(f"cannot read image {f} ({type(e).__name__}); fix or remove the file") from None
            xs.append(preprocess.center(img))
            ys.append(c)
    return np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64), [p.name for p in class_dirs]
