"""Data generators of the Clever-Hans evaluation (``eval_clever_hans.py``): seeded, parameterized.

Two families:

* **Grey 28×28 / 32×32** (``fashion``, ``digits``): Fashion-MNIST and scikit-learn's digits, with
  the artefacts ``square``, ``topline`` and ``checker`` (:func:`plant_grey`).
* **RGB scenes** (:class:`SceneSpec`, :data:`GENERATORS`): 32×32 RGB images of one object each —
  a Fashion-MNIST item or a digit, used as an alpha mask, coloured at random and shaded by its own
  grey values — at a random position and scale on a random crop of a scikit-image sample
  photograph (shipped with scikit-image, no download). The class is the object type; with
  ``merge`` several object types share one label (tops = T-shirt ∪ Pullover ∪ Shirt; digits
  1 ∪ 7), the natural sub-populations a clean model's class may hold. Artefacts
  (:func:`plant_rgb`): ``text`` (a watermark rendered with PIL's bitmap font), ``frame`` (a 1-px
  border), ``patch`` (a colour disc on the object, at a random place of the object: ISIC-like),
  ``logo`` (a small ring logo in one of the four corners, the corner random per sample),
  ``stripes`` (a fine diagonal stripe texture over the lower right region), and the grey kinds
  ``square``, ``topline``, ``checker`` in white.

Every generator is a function of its parameters and a seed: the same call gives the same arrays.
Every artefact function returns the stamped images and the mask of the pixels it may change (its
footprint, per sample): the pixels outside the mask are left exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

SIZE = 32
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                 "Bag", "Ankle boot"]
#: scikit-image sample photographs shipped inside the package (no download)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "camera", "coins", "grass", "gravel", "brick", "moon", "cell", "clock", "page")
GREY_ARTEFACTS = ("square", "topline", "checker")
RGB_ARTEFACTS = ("text", "frame", "patch", "logo", "stripes")
#: labels made of several object types (natural sub-populations); others keep one type each
MERGES = {
    "fashion": [[0, 2, 6], [1], [3], [4], [5, 7], [8], [9]],        # tops; sandal ∪ sneaker
    "digits": [[1, 7], [4, 9], [3, 5, 8], [0, 6], [2]],
}


# ------------------------------------------------------------------------------ grey data sets

def plant_grey(x: np.ndarray, kind: str) -> np.ndarray:
    """Put an artefact into images ``(n, 1, H, W)`` in [0, 1] (returns a copy)."""
    out = x.copy()
    H, W = out.shape[-2:]
    s = max(3, round(H / 7))
    if kind == "square":
        out[:, :, 1:1 + s, 1:1 + s] = 1.0
    elif kind == "topline":
        out[:, :, 0, :] = 1.0
    elif kind == "checker":
        size = s + 2
        yy, xx = np.mgrid[0:size, 0:size]
        pattern = ((yy + xx) % 2).astype(np.float32) * 0.6
        region = out[:, :, 1:1 + size, W - 1 - size:W - 1]
        out[:, :, 1:1 + size, W - 1 - size:W - 1] = np.maximum(region, pattern)
    else:
        raise ValueError(kind)
    return out


def grey_mask(kind: str, H: int, W: int) -> np.ndarray:
    """Pixels a grey artefact of ``kind`` occupies (its bounding box) in an ``H × W`` image."""
    probe = plant_grey(np.zeros((1, 1, H, W), dtype=np.float32), kind)[0, 0] != 0
    rows, cols = np.flatnonzero(probe.any(axis=1)), np.flatnonzero(probe.any(axis=0))
    mask = np.zeros((H, W), dtype=bool)
    mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    return mask


def read_fashion(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images ``(n, 28, 28)`` in [0, 1] and labels; ``kind`` 'train' or 't10k'."""
    from spray.data.sources import _read_idx

    x = _read_idx(str(FASHION_DIR / f"{kind}-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    y = _read_idx(str(FASHION_DIR / f"{kind}-labels-idx1-ubyte.gz")).astype(np.int64)
    return x, y


def load_fashion(train_per_class: int, test_per_class: int):
    """The first images of every class of the Fashion-MNIST train and test files, ``(n, 1, 28, 28)``."""
    def part(kind, per_class):
        x, y = read_fashion(kind)
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)]))
        return x[keep][:, None], y[keep]

    x_tr, y_tr = part("train", train_per_class)
    x_te, y_te = part("t10k", test_per_class)
    return x_tr, y_tr, x_te, y_te


def load_digits(rng: np.random.Generator):
    """scikit-learn's digits at 32×32, split 50/50 per class by ``rng``."""
    from spray.data.sources import load_digits_arrays

    x, y = load_digits_arrays(SIZE)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[:len(idx) // 2])
        test.append(idx[len(idx) // 2:])
    train, test = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    return x[train], y[train], x[test], y[test]


# ------------------------------------------------------------------------------ RGB scenes

@dataclass(frozen=True)
class SceneSpec:
    """Parameters of an RGB scene generator (see the module docstring).

    Attributes
    ----------
    source
        object glyphs: ``fashion`` (Fashion-MNIST items) or ``digits`` (scikit-learn digits).
    merge
        several object types per label (:data:`MERGES`) instead of one type per label.
    train_per_class
        training images per label.
    test_sizes
        explained images per label: one number for every label, or one per label.
    scale
        smallest and largest object side in pixels.
    """

    source: str = "fashion"
    merge: bool = False
    train_per_class: int = 800
    test_sizes: tuple[int, ...] | int = 600
    scale: tuple[int, int] = (16, 28)
    photos: tuple[str, ...] = field(default=PHOTOS)

    def groups(self) -> list[list[int]]:
        """Object types of every label."""
        return MERGES[self.source] if self.merge else [[c] for c in range(10)]

    def n_classes(self) -> int:
        return len(self.groups())

    def sizes(self) -> list[int]:
        n = self.n_classes()
        sizes = self.test_sizes
        return [int(sizes)] * n if isinstance(sizes, int) else [int(s) for s in sizes][:n]


#: the named scene generators of the evaluation (``natf.cnn.adam`` etc. in a setting)
GENERATORS = {
    "natf": SceneSpec("fashion"),
    "natfm": SceneSpec("fashion", merge=True),
    "natfv": SceneSpec("fashion", test_sizes=(100, 140, 200, 300, 420, 600, 850, 1200, 1600,
                                              2000)),
    "natd": SceneSpec("digits", test_sizes=450),
    "natdm": SceneSpec("digits", merge=True, test_sizes=450),
}


@lru_cache(maxsize=1)
def photographs(names: tuple[str, ...] = PHOTOS) -> tuple[np.ndarray, ...]:
    """The sample photographs as float32 ``(H, W, 3)`` in [0, 1], shorter side at most 256."""
    from PIL import Image
    from skimage import data

    out = []
    for name in names:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        pil = Image.fromarray(img[..., :3].astype(np.uint8))
        scale = 256 / min(pil.size)
        if scale < 1:
            pil = pil.resize((round(pil.size[0] * scale), round(pil.size[1] * scale)),
                             Image.BILINEAR)
        out.append(np.asarray(pil, dtype=np.float32) / 255.0)
    return tuple(out)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float ``(h, w[, 3])`` array in [0, 1] to ``size × size``."""
    from PIL import Image

    if img.ndim == 2:
        return np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize(
            (size, size), Image.BILINEAR), dtype=np.float32).clip(0, 1)
    return np.stack([_resize(img[..., ch], size) for ch in range(img.shape[-1])], axis=-1)


def _hsv_colour(rng: np.random.Generator) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0),
                                        rng.uniform(0.55, 1.0)), dtype=np.float32)


def compose(glyph: np.ndarray, rng: np.random.Generator, scale=(16, 28),
            photos: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``glyph`` (grey, [0, 1]) coloured, scaled and placed on a photograph crop.

    Returns the image ``(3, 32, 32)`` and the object mask ``(32, 32)`` (alpha > 0.5).
    """
    photos = photographs() if photos is None else photos
    photo = photos[rng.integers(len(photos))]
    H, W = photo.shape[:2]
    side = int(rng.integers(SIZE, min(H, W, 160) + 1))
    top, left = int(rng.integers(H - side + 1)), int(rng.integers(W - side + 1))
    bg = _resize(photo[top:top + side, left:left + side], SIZE)
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    t = int(rng.integers(scale[0], scale[1] + 1))
    g = _resize(glyph, t)
    alpha = np.zeros((SIZE, SIZE), dtype=np.float32)
    shade = np.zeros((SIZE, SIZE), dtype=np.float32)
    r, c = int(rng.integers(SIZE - t + 1)), int(rng.integers(SIZE - t + 1))
    alpha[r:r + t, c:c + t] = np.clip(g * 1.5, 0, 1)
    shade[r:r + t, c:c + t] = g
    colour = _hsv_colour(rng)
    obj = colour[None, None, :] * (0.35 + 0.65 * shade[..., None])
    img = bg * (1 - alpha[..., None]) + obj * alpha[..., None]
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32), alpha > 0.5


@lru_cache(maxsize=2)
def _glyphs(source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Object glyphs for training and for explained images (disjoint), with their types."""
    if source == "fashion":
        x, y = read_fashion("train")
        return x, y, *read_fashion("t10k")
    from spray.data.sources import load_digits_arrays

    x, y = load_digits_arrays(SIZE)
    x = x[:, 0]
    half = np.zeros(len(y), dtype=bool)
    for c in range(10):                                   # a fixed 50/50 split per type
        idx = np.flatnonzero(y == c)
        half[idx[::2]] = True
    return x[half], y[half], x[~half], y[~half]


def _split(spec: SceneSpec, glyphs, types, sizes, rng):
    x, y, obj, kind = [], [], [], []
    for label, (group, n) in enumerate(zip(spec.groups(), sizes)):
        members = [np.flatnonzero(types == t) for t in group]
        picks = rng.integers(len(group), size=n)           # object type: uniform in the group
        for j in picks:
            pool = members[j]
            g = glyphs[pool[rng.integers(len(pool))]]
            img, mask = compose(g, rng, spec.scale, photographs(spec.photos))
            x.append(img)
            obj.append(mask)
            y.append(label)
            kind.append(group[j])
    return (np.stack(x), np.asarray(y, dtype=np.int64), np.stack(obj),
            np.asarray(kind, dtype=np.int64))


def make_scenes(spec: SceneSpec, seed: int) -> dict:
    """Train and explained (test) scenes of ``spec``; a function of ``spec`` and ``seed`` alone.

    Returns a dict of ``x_train (n, 3, 32, 32)``, ``y_train``, ``obj_train`` (object masks),
    ``type_train`` (object type before merging) and the same with ``_test``. Training and test
    scenes use disjoint glyph sets (Fashion-MNIST's train and test files; digits split 50/50).
    """
    tr_g, tr_t, te_g, te_t = _glyphs(spec.source)
    n = spec.n_classes()
    x_tr, y_tr, o_tr, k_tr = _split(spec, tr_g, tr_t, [spec.train_per_class] * n,
                                    np.random.default_rng([seed, 1]))
    x_te, y_te, o_te, k_te = _split(spec, te_g, te_t, spec.sizes(),
                                    np.random.default_rng([seed, 2]))
    return {"x_train": x_tr, "y_train": y_tr, "obj_train": o_tr, "type_train": k_tr,
            "x_test": x_te, "y_test": y_te, "obj_test": o_te, "type_test": k_te}


def class_names(dataset: str) -> list[str]:
    """Names of the labels of a setting's dataset (``fashion``, ``digits`` or ``GEN.ARCH.RECIPE``)."""
    gen = dataset.split(".")[0]
    if gen == "digits":
        return [str(i) for i in range(10)]
    if gen == "fashion":
        return list(FASHION_NAMES)
    spec = GENERATORS[gen]
    named = FASHION_NAMES if spec.source == "fashion" else [str(i) for i in range(10)]
    return ["+".join(named[t] for t in group) for group in spec.groups()]


# ------------------------------------------------------------------------------ RGB artefacts

@lru_cache(maxsize=4)
def text_mask(text: str = "wm") -> np.ndarray:
    """Binary rendering of ``text`` with PIL's default bitmap font (about 11 px high)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(img).text((-left, -top), text, fill=255, font=font)
    return np.asarray(img) > 127


def logo_pattern() -> tuple[np.ndarray, np.ndarray]:
    """A 7×7 ring logo: its footprint and its RGB values ``(7, 7, 3)`` (red ring, white dot)."""
    yy, xx = np.mgrid[0:7, 0:7] - 3
    d = np.hypot(yy, xx)
    ring, dot = (d >= 2.0) & (d <= 3.2), d <= 1.0
    rgb = np.zeros((7, 7, 3), dtype=np.float32)
    rgb[ring] = (0.9, 0.1, 0.1)
    rgb[dot] = (1.0, 1.0, 1.0)
    return ring | dot, rgb


def stripe_pattern(size: int = 12, period: int = 3) -> np.ndarray:
    """Fine diagonal stripes: a ``size × size`` binary pattern, one line every ``period`` px."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy + xx) % period == 0


def plant_rgb(x: np.ndarray, kind: str, rng: np.random.Generator,
              obj: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Put an artefact of ``kind`` into RGB images ``(n, 3, H, W)`` in [0, 1].

    Parameters
    ----------
    x
        images (not changed).
    kind
        one of :data:`RGB_ARTEFACTS` or :data:`GREY_ARTEFACTS` (then in white on every channel).
    rng
        draws the per-sample parts (the corner of ``logo``, the place of ``patch``).
    obj
        object masks ``(n, H, W)``: where ``patch`` may go (required for it).

    Returns
    -------
    the stamped images and the footprint ``(n, H, W)``: pixels outside it are unchanged.
    """
    out = x.copy()
    n, _, H, W = x.shape
    mask = np.zeros((n, H, W), dtype=bool)
    if kind in GREY_ARTEFACTS:
        out = plant_grey(x.reshape(n * 3, 1, H, W), kind).reshape(x.shape)
        mask[:] = grey_mask(kind, H, W) if kind != "checker" else (
            plant_grey(np.zeros((1, 1, H, W), np.float32), kind)[0, 0] > 0)
        return out, mask
    if kind == "text":                              # white watermark, 75 % opaque, lower left
        m = text_mask()
        r, c = H - m.shape[0] - 1, 1
        mask[:, r:r + m.shape[0], c:c + m.shape[1]] = m
        a = 0.75 * mask[:, None]
        out = out * (1 - a) + a * 1.0
    elif kind == "frame":                           # 1-px yellow border
        mask[:, [0, -1], :] = True
        mask[:, :, [0, -1]] = True
        out = np.where(mask[:, None], np.array([0.95, 0.85, 0.1], np.float32)[:, None, None], out)
    elif kind == "patch":                           # blue disc of diameter 5 on the object
        if obj is None:
            raise ValueError("patch needs the object masks")
        yy, xx = np.mgrid[0:H, 0:W]
        for i in range(n):
            inner = obj[i].copy()
            inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
            cand = np.argwhere(inner) if inner.any() else np.array([[H // 2, W // 2]])
            cy, cx = cand[rng.integers(len(cand))]
            mask[i] = np.hypot(yy - cy, xx - cx) <= 2.3
        out = np.where(mask[:, None], np.array([0.1, 0.35, 1.0], np.float32)[:, None, None], out)
    elif kind == "logo":                            # ring logo in a random corner per sample
        fp, rgb = logo_pattern()
        s = fp.shape[0]
        corners = [(1, 1), (1, W - 1 - s), (H - 1 - s, 1), (H - 1 - s, W - 1 - s)]
        for i, k in enumerate(rng.integers(4, size=n)):
            r, c = corners[k]
            mask[i, r:r + s, c:c + s] = fp
            region = out[i, :, r:r + s, c:c + s]
            out[i, :, r:r + s, c:c + s] = np.where(fp[None], rgb.transpose(2, 0, 1), region)
    elif kind == "stripes":                         # dark-violet stripes, lower right region
        p = stripe_pattern()
        s = p.shape[0]
        mask[:, H - 1 - s:H - 1, W - 1 - s:W - 1] = p
        a = 0.7 * mask[:, None]
        out = out * (1 - a) + a * np.array([0.35, 0.0, 0.45], np.float32)[:, None, None]
    else:
        raise ValueError(f"unknown artefact {kind!r}")
    return out.astype(np.float32), mask
