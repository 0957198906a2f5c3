"""Attributions made elsewhere: ``attribution: {precomputed: PATH}`` in a run config.

spray then runs no model: the class arrays of the store are filled from the file (one Dask task
per store chunk, :func:`spray.run.tasks.precomputed_chunk`, in place of the LRP tasks) and
everything downstream (analysis, report, verdict, ViRelAy export) is the same as for a full run.

Accepted files
--------------

* **Attribution HDF5** as written by Zennit-based scripts and read by ViRelAy (``.h5``/``.hdf5``):

  ``attribution``  float (N, C, H, W) or (N, H, W); or a group of per-sample (C, H, W) datasets
  ``label``        int (N,) class of each row; a one-hot (N, K) array is accepted too
  ``prediction``   optional: float (N, K) model outputs, or int (N,) predicted classes
  ``index``        optional: int (N,) dataset index of each row (default: row i is sample i)

  Group-form datasets (one member per sample) are read in the order ViRelAy uses (key order).
* **NumPy** ``.npz`` with arrays of the same names (``relevance`` is accepted for
  ``attribution``, ``labels``/``y`` for ``label``, ``logits`` for ``prediction``), or a bare
  ``.npy`` array of attributions (labels then come from the dataset).
* **Zarr** (a folder): a group with arrays of the same names, or a single array of attributions.

Rows are matched to the run's dataset by ``index`` (or row number), and the dataset must hold
samples of the same height and width: the analysis compares relevance with the inputs. The class
partitions come from the file's labels (the dataset's labels when the file has none).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from spray.data.files import file_stamp
from spray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ATTRIBUTION_KEYS = ("attribution", "attributions", "relevance", "heatmap")
LABEL_KEYS = ("label", "labels", "y")
PREDICTION_KEYS = ("prediction", "predictions", "logits")
INDEX_KEYS = ("index",)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


def _first(names, candidates):
    for key in candidates:
        if key in names:
            return key
    return None


class _Rows:
    """Row access to one array-like (h5py / zarr / numpy) or an h5py group of per-row members."""

    def __init__(self, obj, name: str):
        self.name = name
        self._group_keys = None
        try:
            import h5py
            if isinstance(obj, h5py.Group):
                self._group_keys = list(obj.keys())
        except ImportError:  # pragma: no cover - h5py is a dependency
            pass
        self.obj = obj
        if self._group_keys is not None:
            if not self._group_keys:
                raise DataError(f"{name}: the group is empty")
            first = obj[self._group_keys[0]]
            self.shape = (len(self._group_keys),) + tuple(first.shape)
            self.dtype = first.dtype
        else:
            self.shape = tuple(obj.shape)
            self.dtype = np.dtype(obj.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def all(self) -> np.ndarray:
        if self._group_keys is not None:
            return np.stack([np.asarray(self.obj[k][()]) for k in self._group_keys])
        return np.asarray(self.obj[...])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (ascending) as a numpy array; reads a span at once when it is dense."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0,) + self.shape[1:], dtype=self.dtype)
        if self._group_keys is not None:
            return np.stack([np.asarray(self.obj[self._group_keys[r]][()]) for r in rows])
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if isinstance(self.obj, np.ndarray) or hi - lo <= 4 * len(rows):
            return np.asarray(self.obj[lo:hi])[rows - lo]
        return np.asarray(self.obj[rows])  # h5py/zarr: ascending point selection


class AttributionFile:
    """An attribution file opened read-only: maps, labels, predictions and dataset indices."""

    def __init__(self, path: str):
        self.path = str(path)
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"key 'attribution.precomputed': file not found: {path}")
        self._handle = None
        arrays = self._open(p)
        key = _first(arrays, ATTRIBUTION_KEYS)
        if key is None:
            raise DataError(f"{path}: no attribution array found (looked for "
                            f"{', '.join(ATTRIBUTION_KEYS)}; the file has {sorted(arrays)})")
        self.attribution = _Rows(arrays[key], f"{path}:{key}")
        if len(self.attribution.shape) == 3:
            self._channels_added = True
            self.sample_shape = (1,) + self.attribution.shape[1:]
        elif len(self.attribution.shape) == 4:
            self._channels_added = False
            self.sample_shape = self.attribution.shape[1:]
        else:
            raise DataError(f"{path}:{key}: attributions must have shape (N, C, H, W) or "
                            f"(N, H, W), got {self.attribution.shape}")
        if not np.issubdtype(self.attribution.dtype, np.number):
            raise DataError(f"{path}:{key}: attributions must be numeric, got dtype "
                            f"{self.attribution.dtype}")
        n = len(self.attribution)
        if n == 0:
            raise DataError(f"{path}:{key}: the file holds no attributions")
        self.n_rows = n
        self._labels = self._read_labels(arrays, n)
        self._prediction = self._read_prediction(arrays, n)
        self._index = self._read_index(arrays, n)

    # -- opening --------------------------------------------------------------------------------

    def _open(self, p: Path) -> dict:
        path = str(p)
        if p.is_dir():
            import zarr

            try:
                node = zarr.open(path, mode="r")
            except Exception as err:  # noqa: BLE001
                raise DataError(f"{path}: cannot open as a Zarr store: {err}") from None
            if isinstance(node, zarr.Array):
                return {"attribution": node}
            return {k: node[k] for k in node.array_keys()}
        suffix = p.suffix.lower()
        if suffix in HDF5_SUFFIXES:
            import h5py

            try:
                self._handle = h5py.File(path, "r")
            except Exception as err:  # noqa: BLE001
                raise DataError(f"{path}: cannot read as HDF5: {err}") from None
            return {k: self._handle[k] for k in self._handle}
        if suffix == ".npy":
            try:
                return {"attribution": np.load(path, mmap_mode="r", allow_pickle=False)}
            except Exception as err:  # noqa: BLE001
                raise DataError(f"{path}: cannot read as .npy: {err}") from None
        if suffix == ".npz":
            try:
                archive = np.load(path, allow_pickle=False)
                return {k: archive[k] for k in archive.files}
            except Exception as err:  # noqa: BLE001
                raise DataError(f"{path}: cannot read as .npz: {err}") from None
        raise ConfigError(f"key 'attribution.precomputed': {path}: unknown file type "
                          f"'{suffix}' (use an attribution HDF5 .h5, .npy, .npz or a Zarr folder)")

    def _read_labels(self, arrays: dict, n: int):
        key = _first(arrays, LABEL_KEYS)
        if key is None:
            return None
        raw = _Rows(arrays[key], f"{self.path}:{key}").all()
        where = f"{self.path}:{key}"
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if raw.ndim == 2:
            hot = raw.astype(bool) if raw.dtype == bool else raw != 0
            counts = hot.sum(axis=1)
            if np.any(counts != 1):
                row = int(np.flatnonzero(counts != 1)[0])
                raise DataError(f"{where}: labels of shape {raw.shape} are not one-hot (row {row} "
                                f"has {int(counts[row])} labels); spray analyses one class per "
                                f"sample, so multi-label attributions are not supported")
            raw = hot.argmax(axis=1)
        if raw.ndim != 1 or len(raw) != n:
            raise DataError(f"{where}: labels must have shape ({n},) to match the attributions, "
                            f"got {raw.shape}")
        if not np.issubdtype(raw.dtype, np.integer):
            if np.issubdtype(raw.dtype, np.floating) and np.all(np.mod(raw, 1) == 0):
                raw = raw.astype(np.int64)
            else:
                raise DataError(f"{where}: labels must be integers, got dtype {raw.dtype}")
        raw = raw.astype(np.int64)
        if raw.min() < 0:
            raise DataError(f"{where}: labels must be >= 0, row {int(np.argmin(raw))} has "
                            f"{int(raw.min())}")
        return raw

    def _read_prediction(self, arrays: dict, n: int):
        """The predictions, read lazily by rows ((N, K) can be large)."""
        key = _first(arrays, PREDICTION_KEYS)
        if key is None:
            return None
        rows = _Rows(arrays[key], f"{self.path}:{key}")
        where = f"{self.path}:{key}"
        if len(rows) != n or len(rows.shape) not in (1, 2) or \
                not np.issubdtype(rows.dtype, np.number):
            raise DataError(f"{where}: predictions must have shape ({n}, K) (model outputs) or "
                            f"({n},) (predicted classes), got {rows.shape} {rows.dtype}")
        return rows

    def _read_index(self, arrays: dict, n: int) -> np.ndarray:
        key = _first(arrays, INDEX_KEYS)
        if key is None:
            return np.arange(n, dtype=np.int64)
        raw = np.asarray(_Rows(arrays[key], f"{self.path}:{key}").all()).reshape(-1)
        where = f"{self.path}:{key}"
        if len(raw) != n or not np.issubdtype(raw.dtype, np.integer):
            raise DataError(f"{where}: the index must be {n} integers (the dataset index of each "
                            f"row), got shape {raw.shape} dtype {raw.dtype}")
        raw = raw.astype(np.int64)
        if raw.min() < 0:
            raise DataError(f"{where}: dataset indices must be >= 0, row {int(np.argmin(raw))} "
                            f"has {int(raw.min())}")
        uniq, counts = np.unique(raw, return_counts=True)
        if np.any(counts > 1):
            dup = int(uniq[np.argmax(counts > 1)])
            raise DataError(f"{where}: dataset index {dup} appears {int(counts.max())} times; "
                            f"each sample may have one attribution")
        return raw

    # -- access ---------------------------------------------------------------------------------

    def has_labels(self) -> bool:
        return self._labels is not None

    def labels(self) -> np.ndarray | None:
        return self._labels

    def index(self) -> np.ndarray:
        return self._index

    def n_outputs(self) -> int | None:
        """K when the file holds model outputs ``(N, K)``, else None."""
        if self._prediction is not None and len(self._prediction.shape) == 2:
            return int(self._prediction.shape[1])
        return None

    def maps(self, rows: np.ndarray) -> np.ndarray:
        """Attributions of file rows ``rows`` (ascending) as float32 ``(n, C, H, W)``."""
        out = self.attribution.take(rows).astype(np.float32, copy=False)
        return out[:, None] if self._channels_added else out

    def logits(self, rows: np.ndarray, n_outputs: int) -> tuple[np.ndarray, np.ndarray]:
        """``(logits (n, K) float32, prediction (n,) int64)`` of rows; see module notes."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._prediction is None:
            return (np.full((len(rows), n_outputs), np.nan, dtype=np.float32),
                    np.full(len(rows), -1, dtype=np.int64))
        pred = self._prediction.take(rows)
        if pred.ndim == 2:
            return pred.astype(np.float32), pred.argmax(axis=1).astype(np.int64)
        if not np.issubdtype(pred.dtype, np.integer) and np.any(np.mod(pred, 1) != 0):
            raise DataError(f"{self._prediction.name}: 1-D predictions must be class indices, "
                            f"got values like {float(pred[np.mod(pred, 1) != 0][0])}")
        classes = pred.astype(np.int64)
        logits = np.zeros((len(rows), n_outputs), dtype=np.float32)  # one-hot of the class
        ok = (classes >= 0) & (classes < n_outputs)
        logits[np.flatnonzero(ok), classes[ok]] = 1.0
        return logits, classes

    def fingerprint(self) -> str:
        """Shape, labels, indices and a sample of rows: a changed file gives another hash."""
        h = hashlib.sha256()
        h.update(str(self.attribution.shape).encode())
        h.update(np.ascontiguousarray(self._index).tobytes())
        if self._labels is not None:
            h.update(np.ascontiguousarray(self._labels).tobytes())
        step = max(1, self.n_rows // 16)
        h.update(np.ascontiguousarray(self.maps(np.arange(0, self.n_rows, step))).tobytes())
        return "precomputed-" + h.hexdigest()[:16]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@lru_cache(maxsize=2)
def _open_cached(path: str, stamp: tuple) -> AttributionFile:
    return AttributionFile(path)


def open_attributions(path: str) -> AttributionFile:
    """Open an attribution file; call :meth:`AttributionFile.close` when done.

    HDF5 files are opened afresh each time and closed after use, so no handle (and no HDF5
    file lock) outlives a task on a long-lived worker; NumPy and Zarr files are reused per
    process while unchanged (a ``.npz`` is read whole, once).
    """
    try:
        os.stat(path)
    except OSError:
        return AttributionFile(path)  # raises the error that names the key
    if Path(path).suffix.lower() in HDF5_SUFFIXES:
        return AttributionFile(path)
    return _open_cached(str(path), file_stamp(path))


@dataclass
class PrecomputedPlan:
    """What a run over precomputed attributions needs before it builds the store."""

    n_outputs: int
    parts: dict  # class -> dataset indices, in file order
    sample_shape: tuple  # (C, H, W) of the attributions
    fingerprint: str


def row_labels(attr: AttributionFile, dataset_labels: np.ndarray) -> np.ndarray:
    """The class of each file row: the file's labels, else the dataset's labels at ``index``."""
    if attr.has_labels():
        return attr.labels()
    return np.asarray(dataset_labels)[attr.index()]


def class_rows(attr: AttributionFile, c: int, dataset_labels: np.ndarray | None) -> np.ndarray:
    """File rows of class ``c`` (ascending), the order the store rows follow (cached per file)."""
    if not attr.has_labels():  # classes from the dataset: nothing file-bound to cache
        return np.flatnonzero(row_labels(attr, dataset_labels) == int(c))
    cache = attr.__dict__.setdefault("_class_rows", {})
    if int(c) not in cache:
        cache[int(c)] = np.flatnonzero(row_labels(attr, dataset_labels) == int(c))
    return cache[int(c)]


def plan_run(cfg, source) -> PrecomputedPlan:
    """Check the attribution file against the dataset and derive the class partitions."""
    from spray.data.sources import class_partitions

    attr = open_attributions(cfg.attribution.precomputed)
    try:
        return _plan(attr, cfg, source, class_partitions)
    finally:
        attr.close()


def _plan(attr: AttributionFile, cfg, source, class_partitions) -> PrecomputedPlan:
    data_labels = np.asarray(source.labels())
    n_data = len(data_labels)
    index = attr.index()
    if index.max() >= n_data:
        row = int(np.argmax(index >= n_data))
        raise DataError(f"{attr.path}: row {row} refers to dataset index {int(index[row])}, but "
                        f"the dataset ({source.name}) has {n_data} samples; does the file belong "
                        f"to this dataset?")
    data_hw = tuple(source.sample_shape[1:])
    if tuple(attr.sample_shape[1:]) != data_hw:
        raise DataError(f"{attr.path}: attributions are {attr.sample_shape[1]}x"
                        f"{attr.sample_shape[2]} pixels but the samples of {source.name} are "
                        f"{data_hw[0]}x{data_hw[1]}; attributions must have the inputs' height "
                        f"and width")
    labels = row_labels(attr, data_labels)
    if attr.has_labels():
        differ = int(np.sum(labels != data_labels[index]))
        if differ:
            log.warning("note: %d of %d rows of %s carry another label than the dataset "
                        "(attributions for another target, or rows in another order?); the "
                        "file's labels define the classes", differ, len(labels), attr.path)
    n_outputs = attr.n_outputs()
    top = int(labels.max()) + 1
    if n_outputs is None:
        n_outputs = len(cfg.class_names) if cfg.class_names else top
    if top > n_outputs:
        raise DataError(f"{attr.path}: label {top - 1} is out of range for {n_outputs} classes "
                        f"(from the predictions' width or 'class_names')")
    rows = class_partitions(labels, cfg.classes, n_outputs)
    parts = {c: index[r] for c, r in rows.items()}
    return PrecomputedPlan(n_outputs=n_outputs, parts=parts, sample_shape=tuple(attr.sample_shape),
                           fingerprint=attr.fingerprint())
