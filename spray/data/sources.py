"""Datasets and class partitions.

A source gives the labels of the whole dataset cheaply (class partitions are built from them
without decoding or reading any sample) and loads the samples of any index list as
``float32 (n, C, H, W)``:

* :meth:`Source.load` — what the model sees (scaled, then normalized with ``mean``/``std``);
* :meth:`Source.load_display` — the same samples before normalization (for reports and the
  raw-input comparison of the Clever-Hans score).

Sources: ``npz``, ``digits``, ``idx`` (MNIST/Fashion-MNIST, memory-mapped when uncompressed),
``hdf5`` and ``zarr`` arrays (read lazily, one chunk of samples at a time), ``imagefolder``
(ImageNet-style class subfolders, decoded with Pillow: ``mode``, ``resize``, ``crop``) and
``factory`` (a Python function returning a ``torch.utils.data.Dataset``).

Tasks open the source themselves from its config, so samples never travel through the Dask
scheduler; :func:`open_source` caches one open source per worker process.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

from spray.data.arrays import (
    ArraySource,
    _open_hdf5,
    _open_npz,
    _open_zarr,
    _read_idx,
    _ScaledIdx,
    load_digits_arrays,
    upsample,
)
from spray.data.base import Source, _norm, samples_digest
from spray.data.datasets import DatasetSource, import_callable
from spray.data.files import file_stamp
from spray.data.images import ImageFolderSource
from spray.errors import ConfigError


def _open(cfg: dict) -> Source:
    kind = cfg["source"]
    if kind == "npz":
        return _open_npz(cfg)
    if kind == "digits":
        x, y = load_digits_arrays(cfg.get("size"))
        return ArraySource(x, y, name="digits", **_norm(cfg))
    if kind == "idx":
        x = _read_idx(cfg["path"])
        y = _read_idx(cfg["labels"])
        source = (_ScaledIdx if x.dtype == np.uint8 else ArraySource)(x, np.asarray(y),
                                                                       name=cfg["path"], **_norm(cfg))
        return source
    if kind == "hdf5":
        return _open_hdf5(cfg)
    if kind == "zarr":
        return _open_zarr(cfg)
    if kind == "imagefolder":
        return ImageFolderSource(cfg["path"], mode=cfg.get("mode", "RGB"),
                                 resize=cfg.get("resize"), crop=cfg.get("crop"),
                                 extensions=cfg.get("extensions") or (".jpg", ".jpeg", ".png"),
                                 class_list=cfg.get("class_list"), **_norm(cfg))
    if kind == "factory":
        return DatasetSource(cfg["factory"], cfg.get("kwargs") or {}, cfg.get("base_dir"),
                             **_norm(cfg))
    raise ConfigError(f"key 'data.source': unknown source {kind!r}")


#: config keys that name files or folders a source reads (their stamps key the cache)
_FILE_KEYS = ("path", "labels")


@lru_cache(maxsize=4)
def _open_cached(key: str, stamps: tuple) -> Source:
    return _open(json.loads(key))


def open_source(data_cfg: dict, base_dir: str | None = None) -> Source:
    """Open (or reuse, per process) the dataset described by a ``data`` config section.

    ``base_dir`` (the config's folder, importable for ``factory`` sources) may also be given as
    ``data_cfg['base_dir']``.
    """
    cfg = dict(data_cfg)
    if base_dir is not None:
        cfg["base_dir"] = str(base_dir)
    stamps = tuple(file_stamp(cfg.get(k), cfg.get("base_dir")) for k in _FILE_KEYS)
    return _open_cached(json.dumps(cfg, sort_keys=True, default=str), stamps)


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


__all__ = ["ArraySource", "DatasetSource", "ImageFolderSource", "Source", "class_partitions",
           "import_callable", "load_digits_arrays", "open_source", "samples_digest", "upsample",
           "_read_idx"]
