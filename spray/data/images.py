"""ImageNet-style image folders (``path/<class>/<image>``), decoded with Pillow."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from spray.data.base import Source
from spray.errors import DataError


def _task_threads() -> int:
    """Threads a task may use: torch's intra-op setting, which spray's tasks set per worker."""
    try:
        import torch

        return max(1, torch.get_num_threads())
    except ImportError:  # pragma: no cover - torch is a dependency
        return 1


def _pair(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    return (int(value[0]), int(value[-1]))


class ImageFolderSource(Source):
    """ImageNet-style folders ``root/<class>/<image>``, decoded on demand with Pillow.

    Classes are the sorted subfolder names (the torchvision ``ImageFolder`` convention) or, with
    ``class_list``, the folder names listed one per line in the model's output order (folders not
    listed are ignored). Labels come from the folder listing alone; no image is decoded for them.

    Each image is converted to ``mode`` (RGB or L), resized (an int ``resize`` scales the shorter
    side to it keeping the aspect ratio, ``[h, w]`` resizes exactly; bilinear with antialiasing),
    centre-cropped to ``crop`` and scaled to [0, 1] (times ``scale``).
    """

    def __init__(self, root: str, mode: str = "RGB", resize=None, crop=None,
                 extensions=(".jpg", ".jpeg", ".png"), class_list: str | None = None,
                 scale: float = 1.0, mean=None, std=None):
        super().__init__(scale, mean, std)
        self.root, self.mode, self.name = Path(root), mode, str(root)
        self.resize, self.crop = resize, _pair(crop)
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if class_list:
            names = [ln.strip() for ln in Path(class_list).read_text().splitlines() if ln.strip()]
            missing = [n for n in names if not (self.root / n).is_dir()]
            if missing:
                warnings.warn(f"{root}: {len(missing)} class folder(s) of {class_list} are "
                              f"missing (e.g. {missing[0]}); those classes have no samples", stacklevel=2)
        else:
            names = sorted(e.name for e in os.scandir(self.root) if e.is_dir()
                           and not e.name.startswith("."))
        if not names:
            raise DataError(f"{root}: no class subfolders found (expected {root}/<class>/<image>)")
        self.class_names = names
        files, labels = [], []
        for label, cname in enumerate(names):
            folder = self.root / cname
            if not folder.is_dir():
                continue
            found = sorted(e.name for e in os.scandir(folder)
                           if e.is_file() and e.name.lower().endswith(exts))
            files.extend(f"{cname}/{f}" for f in found)
            labels.extend([label] * len(found))
        self.files = files
        self.y = np.asarray(labels, dtype=np.int64)
        self._shape = None

    def labels(self) -> np.ndarray:
        return self.y

    def _decode(self, i: int) -> np.ndarray:
        from PIL import Image

        path = self.root / self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)
                if self.resize is not None:
                    if isinstance(self.resize, int):
                        w, h = img.size
                        s = self.resize / min(w, h)
                        size = (max(1, round(w * s)), max(1, round(h * s)))
                    else:
                        size = (int(self.resize[1]), int(self.resize[0]))
                    img = img.resize(size, Image.BILINEAR, reducing_gap=None)
                if self.crop is not None:
                    ch, cw = self.crop
                    w, h = img.size
                    if ch > h or cw > w:
                        raise DataError(f"{path} (sample {i}): image of {h}×{w} pixels is smaller "
                                        f"than 'data.crop' {ch}×{cw}; set 'data.resize'")
                    top, left = int(round((h - ch) / 2)), int(round((w - cw) / 2))
                    img = img.crop((left, top, left + cw, top + ch))
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - name the file that cannot be decoded
            raise DataError(f"{path} (sample {i}): cannot decode the image: "
                            f"{type(err).__name__}: {err}") from None
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            channels = 3 if self.mode == "RGB" else 1
            if self.crop is not None:
                self._shape = (channels,) + self.crop
            elif self.resize is not None and not isinstance(self.resize, int):
                self._shape = (channels, int(self.resize[0]), int(self.resize[-1]))
            elif len(self.files):
                self._shape = tuple(self._decode(0).shape)
            else:
                self._shape = (channels, 0, 0)
        return self._shape

    def _raw(self, indices: np.ndarray) -> np.ndarray:
        """Decode the images, in parallel threads (Pillow releases the GIL while decoding and
        resizing): as many as the task's torch threads, i.e. its share of the worker's cores."""
        out = np.empty((len(indices),) + tuple(self.sample_shape), dtype=np.float32)
        threads = min(len(indices), _task_threads())
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                images = list(pool.map(self._decode, (int(i) for i in indices)))
        else:
            images = (self._decode(int(i)) for i in indices)
        for row, (i, img) in enumerate(zip(indices, images)):
            if img.shape != out.shape[1:]:
                raise DataError(f"{self.root / self.files[int(i)]} (sample {int(i)}): decoded to "
                                f"{img.shape}, other images to {out.shape[1:]}; set 'data.crop' "
                                f"(and 'data.resize') so all images get one size")
            out[row] = img
        return out

    def _content_key(self) -> bytes:
        h = hashlib.sha256()
        h.update(json.dumps([self.mode, self.resize, self.crop, self.class_names]).encode())
        for f in self.files:
            h.update(f.encode())
            h.update(b"\0")
        return h.digest()


# -- a Python factory returning a torch Dataset ---------------------------------------------------
