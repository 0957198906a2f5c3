"""Datasets and class partitions.

A source gives the labels of the whole dataset cheaply (class partitions are built from them
without touching the images) and loads the samples of any index list as ``float32 (n, C, H, W)``.
Tasks open the source themselves from its config, so data is never shipped through the Dask
scheduler; :func:`open_source` caches one open source per worker process.
"""

from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from spray.errors import ConfigError, DataError


class ArraySource:
    """Samples held in (memory-mapped) arrays: npz, digits, IDX."""

    def __init__(self, x: np.ndarray, y: np.ndarray, name: str, scale: float = 1.0):
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise DataError(f"{name}: samples must have shape (N, C, H, W) or (N, H, W), "
                            f"got {tuple(x.shape)}")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{name}: labels must have shape ({len(x)},) to match the samples, "
                            f"got {tuple(y.shape)}")
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
            else:
                raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise DataError(f"{name}: samples must be numeric, got dtype {x.dtype}")
        if len(y) and y.min() < 0:
            raise DataError(f"{name}: labels must be >= 0, sample {int(np.argmin(y))} "
                            f"has label {int(y.min())}")
        self.x, self.y, self.name, self.scale = x, y.astype(np.int64), name, scale

    def labels(self) -> np.ndarray:
        return self.y

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def load(self, indices: np.ndarray) -> np.ndarray:
        """Samples at ``indices`` as float32 ``(n, C, H, W)``, scaled by ``scale``."""
        batch = np.asarray(self.x[np.sort(indices)] if len(indices) else self.x[:0],
                           dtype=np.float32)
        order = np.argsort(np.argsort(indices))
        return batch[order] * np.float32(self.scale)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(self.x.shape).encode())
        h.update(np.ascontiguousarray(self.y).tobytes())
        step = max(1, len(self.x) // 64)
        h.update(np.ascontiguousarray(self.x[::step]).tobytes())
        return h.hexdigest()[:16]


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DataError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def upsample(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``(N, C, H, W)`` images to ``size × size``."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).numpy()


def load_digits_arrays(size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits as ``(1797, 1, S, S)`` in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    if size is not None and size != x.shape[-1]:
        x = np.clip(upsample(x, size), 0.0, 1.0)
    return x, bunch.target.astype(np.int64)


def _open_npz(cfg: dict) -> ArraySource:
    path = cfg["path"]
    try:
        archive = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        raise DataError(f"{path}: cannot read as .npz: {err}") from None
    for key in (cfg.get("x_key", "x"), cfg.get("y_key", "y")):
        if key not in archive.files:
            raise ConfigError(f"{path}: array '{key}' not found (has {archive.files}); "
                              f"set data.x_key / data.y_key")
    return ArraySource(archive[cfg.get("x_key", "x")], archive[cfg.get("y_key", "y")],
                       name=path, scale=cfg.get("scale", 1.0))


@lru_cache(maxsize=4)
def _open_cached(key: tuple) -> ArraySource:
    cfg = dict(key)
    if cfg["source"] == "npz":
        return _open_npz(cfg)
    if cfg["source"] == "digits":
        x, y = load_digits_arrays(cfg.get("size"))
        return ArraySource(x, y, name="digits", scale=cfg.get("scale", 1.0))
    if cfg["source"] == "idx":
        x = _read_idx(cfg["path"]).astype(np.float32) / 255.0
        y = _read_idx(cfg["labels"])
        return ArraySource(x, y, name=cfg["path"], scale=cfg.get("scale", 1.0))
    raise ConfigError(f"key 'data.source': unknown source {cfg['source']!r}")


def open_source(data_cfg: dict) -> ArraySource:
    """Open (or reuse, per process) the dataset described by a ``data`` config section."""
    return _open_cached(tuple(sorted((k, v) for k, v in data_cfg.items())))


def class_partitions(labels: np.ndarray, classes, n_classes: int | None = None) -> dict[int, np.ndarray]:
    """Dataset indices of each selected class (``classes`` = 'all' or a list of indices)."""
    present = np.unique(labels)
    if classes == "all":
        selected = [int(c) for c in present]
    else:
        selected = list(classes)
        upper = n_classes if n_classes is not None else int(present.max()) + 1
        bad = [c for c in selected if c >= upper]
        if bad:
            raise ConfigError(f"key 'classes': class index {bad[0]} out of range "
                              f"(the model/data have {upper} classes: 0..{upper - 1})")
    parts = {c: np.flatnonzero(labels == c) for c in selected}
    return parts
