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

import gzip
import hashlib
import importlib
import json
import math
import os
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from spray.data.files import file_stamp
from spray.errors import ConfigError, DataError


def samples_digest(x: np.ndarray, indices: np.ndarray) -> bytes:
    """SHA-256 of a batch of samples and their dataset indices (32 bytes).

    LRP tasks hash the samples of their chunk as they read them; the store keeps the digest per
    chunk, so a rerun recomputes exactly the chunks whose samples changed.
    """
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    h.update(str((x.dtype.str, x.shape)).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.digest()


class Source:
    """Base class: labels, sample shape, loading by index, fingerprint.

    Subclasses implement :meth:`_raw` (float32 ``(n, C, H, W)`` before ``scale``) for sorted,
    unique indices, :meth:`labels` and :attr:`sample_shape`.
    """

    name = "source"
    class_names: list[str] | None = None

    def __init__(self, scale: float = 1.0, mean=None, std=None):
        self.scale = float(scale)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.std = None if std is None else np.asarray(std, dtype=np.float32)

    # -- to implement ---------------------------------------------------------------------------
    def labels(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def sample_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _raw(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _content_key(self) -> bytes:
        """Bytes identifying the dataset's files/arrays (beyond labels and sampled content)."""
        return b""

    # -- shared ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels())

    def _check_indices(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(indices) and (indices.min() < 0 or indices.max() >= n):
            bad = int(indices[(indices < 0) | (indices >= n)][0])
            raise DataError(f"{self.name}: sample index {bad} out of range (the dataset has "
                            f"{n} samples)")
        return indices

    def load_display(self, indices) -> np.ndarray:
        """Samples at ``indices`` (any order, repeats allowed) before normalization."""
        indices = self._check_indices(indices)
        if len(indices) == 0:
            return np.zeros((0,) + tuple(self.sample_shape), dtype=np.float32)
        uniq, inverse = np.unique(indices, return_inverse=True)
        batch = np.asarray(self._raw(uniq), dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[:, None]
        if self.scale != 1.0:
            batch = batch * np.float32(self.scale)
        return np.ascontiguousarray(batch[inverse])

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        if self.mean is None:
            return batch
        channels = batch.shape[1]
        if len(self.mean) not in (1, channels):
            raise ConfigError(f"keys 'data.mean'/'data.std': {len(self.mean)} entries for samples "
                              f"with {channels} channel(s) in {self.name}")
        return (batch - self.mean.reshape(1, -1, 1, 1)) / self.std.reshape(1, -1, 1, 1)

    def load(self, indices) -> np.ndarray:
        """Samples at ``indices`` as the model sees them: float32 ``(n, C, H, W)``."""
        return self.normalize(self.load_display(indices)).astype(np.float32, copy=False)

    def fingerprint(self) -> str:
        """Hash of the dataset's identity: the labels, the source, the sample shape and the
        normalization. The samples themselves are hashed chunk by chunk by the tasks reading
        them (:func:`samples_digest`)."""
        y = np.ascontiguousarray(self.labels(), dtype=np.int64)
        h = hashlib.sha256()
        h.update(type(self).__name__.encode())
        h.update(str(tuple(self.sample_shape)).encode())
        h.update(y.tobytes())
        h.update(self._content_key())
        h.update(json.dumps({"scale": self.scale,
                             "mean": None if self.mean is None else self.mean.tolist(),
                             "std": None if self.std is None else self.std.tolist()}).encode())
        return h.hexdigest()[:16]


def _check_labels(y, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{name}: labels must have shape ({n},) to match the samples, "
                        f"got {tuple(y.shape)}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating):
            raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(y) | (np.mod(y, 1) != 0) | (np.abs(y) > 2 ** 31))
        if len(bad):
            raise DataError(f"{name}: labels must be integers, sample {int(bad[0])} has label "
                            f"{y[bad[0]]!r}" + (f" ({len(bad)} such samples)" if len(bad) > 1
                                                else ""))
        y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{name}: labels must be >= 0, sample {int(np.argmin(y))} "
                        f"has label {int(y.min())}")
    return y.astype(np.int64)


class ArraySource(Source):
    """Samples in an array-like of shape ``(N, C, H, W)`` or ``(N, H, W)``: a NumPy array or
    memory map (npz, digits, IDX), an h5py dataset or a Zarr array (read lazily per index list).
    """

    def __init__(self, x, y, name: str, scale: float = 1.0, mean=None, std=None):
        super().__init__(scale, mean, std)
        if len(x.shape) not in (3, 4):
            raise DataError(f"{name}: samples must have shape (N, C, H, W) or (N, H, W), "
                            f"got {tuple(x.shape)}")
        dtype = np.dtype(x.dtype)
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) \
                or np.issubdtype(dtype, np.complexfloating):
            raise DataError(f"{name}: samples must be real numeric values, got dtype {dtype}")
        self.y = _check_labels(y, x.shape[0], name)
        self.x, self.name = x, name

    def labels(self) -> np.ndarray:
        return self.y

    @property
    def sample_shape(self) -> tuple[int, ...]:
        shape = tuple(int(s) for s in self.x.shape[1:])
        return shape if len(shape) == 3 else (1,) + shape

    def _raw(self, indices: np.ndarray) -> np.ndarray:
        x = self.x
        if isinstance(x, np.ndarray):
            return x[indices].astype(np.float32)
        if hasattr(x, "oindex"):  # zarr: orthogonal selection along the sample axis
            return np.asarray(x.oindex[(indices,) + (slice(None),) * (len(x.shape) - 1)],
                              dtype=np.float32)
        # h5py: increasing unique indices (np.unique gave us those); contiguous runs are read
        # as slices, which h5py does much faster than point selections.
        runs = np.split(indices, np.flatnonzero(np.diff(indices) != 1) + 1)
        return np.concatenate([np.asarray(x[int(r[0]):int(r[-1]) + 1], dtype=np.float32)
                               for r in runs])

    def _content_key(self) -> bytes:
        return f"{tuple(self.x.shape)} {np.dtype(self.x.dtype)}".encode()


# -- IDX (MNIST, Fashion-MNIST) ------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: str) -> np.ndarray:
    """An IDX file as an array; memory-mapped when uncompressed, read whole when ``.gz``."""
    gz = str(path).endswith(".gz")
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            if head[2] not in _IDX_TYPES:
                raise DataError(f"{path}: unknown IDX element type 0x{head[2]:02x}")
            ndim = head[3]
            dims = fh.read(4 * ndim)
            shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_TYPES[head[2]])
            offset = 4 + 4 * ndim
            expected = math.prod(shape) * dtype.itemsize
            if gz:
                raw = fh.read()
                if len(raw) < expected:
                    raise DataError(f"{path}: truncated IDX file: header says {shape}, found "
                                    f"{len(raw) // dtype.itemsize} values")
                return np.frombuffer(raw, dtype=dtype, count=math.prod(shape)).reshape(shape)
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read as IDX: {err}") from None
    size = os.path.getsize(path) - offset
    if size < expected:
        raise DataError(f"{path}: truncated IDX file: header says {shape}, found "
                        f"{size // dtype.itemsize} values")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


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


# -- image folders -------------------------------------------------------------------------------

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

def import_callable(spec: str, base_dir: str | None, key: str):
    """``module:function`` → the function; ``base_dir`` (the config folder) is importable."""
    module_name, _, func_name = spec.partition(":")
    if base_dir and base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is a user error
        raise ConfigError(f"key '{key}': cannot import module '{module_name}' (searched the "
                          f"config folder {base_dir} and sys.path): {err}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"key '{key}': module '{module_name}' has no function '{func_name}'")
    return func


class DatasetSource(Source):
    """A ``torch.utils.data.Dataset`` whose items are ``(x, y)`` (x: ``(C, H, W)`` or ``(H, W)``).

    Labels are taken without loading samples from ``dataset.targets`` (torchvision's
    convention), ``dataset.labels`` or a ``dataset.get_labels()`` method; only when none exists
    is every item loaded once (with a warning). The dataset should return samples *before*
    normalization and leave ``mean``/``std`` to the config, so reports can show the images.
    """

    def __init__(self, factory: str, kwargs: dict, base_dir: str | None, scale: float = 1.0,
                 mean=None, std=None):
        super().__init__(scale, mean, std)
        func = import_callable(factory, base_dir, "data.factory")
        try:
            self.dataset = func(**kwargs)
        except Exception as err:  # noqa: BLE001
            raise DataError(f"key 'data.factory': {factory}() raised {type(err).__name__}: "
                            f"{err}") from None
        if not (hasattr(self.dataset, "__getitem__") and hasattr(self.dataset, "__len__")):
            raise DataError(f"key 'data.factory': {factory}() returned "
                            f"{type(self.dataset).__name__}, not a map-style Dataset "
                            f"(__getitem__ and __len__)")
        self.name = f"{factory}()"
        self.spec = json.dumps([factory, kwargs], sort_keys=True, default=str)
        self.class_names = list(getattr(self.dataset, "classes", None) or []) or None
        self.y = _check_labels(self._labels(), len(self.dataset), self.name)
        self._shape = None

    def _labels(self):
        ds = self.dataset
        for attr in ("targets", "labels"):
            value = getattr(ds, attr, None)
            if value is not None and not callable(value):
                return np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        if callable(getattr(ds, "get_labels", None)):
            return np.asarray(ds.get_labels())
        warnings.warn(f"{self.name}: the dataset has no 'targets' attribute; reading every item "
                      f"once to get the labels (slow for image datasets)", stacklevel=2)
        return np.asarray([int(self._item(i)[1]) for i in range(len(ds))])

    def _item(self, i: int):
        try:
            item = self.dataset[i]
        except Exception as err:  # noqa: BLE001 - name the sample
            raise DataError(f"{self.name}: loading sample {i} failed: {type(err).__name__}: "
                            f"{err}") from None
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"{self.name}: item {i} must be a pair (x, y), got "
                            f"{type(item).__name__}")
        return item

    def _sample(self, i: int) -> np.ndarray:
        x = self._item(i)[0]
        x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise DataError(f"{self.name}: sample {i} has shape {x.shape}, expected (C, H, W)")
        return x

    def labels(self) -> np.ndarray:
        return self.y

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            self._shape = tuple(self._sample(0).shape) if len(self.y) else (1, 0, 0)
        return self._shape

    def _raw(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices),) + tuple(self.sample_shape), dtype=np.float32)
        for row, i in enumerate(indices):
            x = self._sample(int(i))
            if x.shape != out.shape[1:]:
                raise DataError(f"{self.name}: sample {int(i)} has shape {x.shape}, others "
                                f"{out.shape[1:]}")
            out[row] = x
        return out

    def _content_key(self) -> bytes:
        return self.spec.encode()


# -- opening a source from its config -------------------------------------------------------------

def _npz_memmap(path: str, key: str):
    """Memory-map member ``key`` of an uncompressed ``.npz`` (``np.savez``); None if it is
    compressed (``np.savez_compressed``) or not a plain array, so it must be read whole."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if dtype.hasobject or fortran:
            return None
        return np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape)


def _open_npz(cfg: dict) -> ArraySource:
    """An ``.npz`` file; samples of an uncompressed one are memory-mapped, not loaded, so a
    worker's memory does not grow with the dataset (a compressed one is read whole)."""
    path = cfg["path"]
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        raise DataError(f"{path}: cannot read as .npz: {err}") from None
    x_key, y_key = cfg.get("x_key", "x"), cfg.get("y_key", "y")
    for key in (x_key, y_key):
        if key not in archive.files:
            raise ConfigError(f"{path}: array '{key}' not found (has {archive.files}); "
                              f"set data.x_key / data.y_key")
    try:
        x = _npz_memmap(path, x_key)
    except Exception:  # noqa: BLE001 - an unusual zip layout: read it the ordinary way
        x = None
    try:
        if x is None:
            x = archive[x_key]
        y = archive[y_key]
    except ValueError as err:  # object arrays (pickles) are refused
        raise DataError(f"{path}: cannot read its arrays: {err}") from None
    return ArraySource(x, y, name=path, **_norm(cfg))


def _hdf5_dataset(fh, path: str, key: str, name: str):
    """Dataset ``name`` of an open HDF5 file; external links, external raw storage and virtual
    datasets are refused (they read other files than the one the config names)."""
    import h5py

    link = fh.get(name, getlink=True)
    if link is None or name not in fh:
        raise ConfigError(f"key 'data.{key}': {path} has no dataset '{name}' "
                          f"(has {sorted(fh.keys())[:10]})")
    if isinstance(link, h5py.ExternalLink):
        raise DataError(f"key 'data.{key}': '{name}' in {path} is an external link to another "
                        f"file; refusing to follow it (copy the data into {path})")
    ds = fh[name]
    if not isinstance(ds, h5py.Dataset):
        raise ConfigError(f"key 'data.{key}': '{name}' in {path} is a group, not a dataset")
    if ds.is_virtual:
        raise DataError(f"key 'data.{key}': '{name}' in {path} is a virtual dataset (its data "
                        f"lives in other files); refusing to read it")
    if ds.external:
        raise DataError(f"key 'data.{key}': '{name}' in {path} keeps its data in external raw "
                        f"files; refusing to read them")
    return ds


def _labels_of(array, path: str, key: str) -> np.ndarray:
    """All labels of a dataset/array (a scalar or unreadable one named)."""
    try:
        y = np.asarray(array[...])
    except Exception as err:  # noqa: BLE001 - codec or I/O errors of a damaged file
        raise DataError(f"key 'data.{key}': cannot read the labels in {path}: "
                        f"{type(err).__name__}: {err}") from None
    if y.ndim != 1:
        raise DataError(f"key 'data.{key}': the labels in {path} must be a 1-d array, got shape "
                        f"{tuple(y.shape)}")
    return y


def _open_hdf5(cfg: dict) -> ArraySource:
    import h5py

    path = cfg["path"]
    try:
        fh = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: cannot open as HDF5: {err}") from None
    x = _hdf5_dataset(fh, path, "x_key", cfg.get("x_key", "x"))
    y = _hdf5_dataset(fh, path, "y_key", cfg.get("y_key", "y"))
    return ArraySource(x, _labels_of(y, path, "y_key"), name=path, **_norm(cfg))


def _open_zarr(cfg: dict) -> ArraySource:
    import zarr

    path = cfg["path"]
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: cannot open as a Zarr group: {err}") from None
    arrays = {}
    for key in ("x_key", "y_key"):
        name = cfg.get(key, key[0])
        try:
            arrays[key] = group[name]
        except KeyError:
            raise ConfigError(f"key 'data.{key}': {path} has no array '{name}' "
                              f"(has {sorted(group.array_keys())[:10]})") from None
        except Exception as err:  # noqa: BLE001 - unknown codec, damaged metadata
            raise DataError(f"key 'data.{key}': cannot open '{name}' in {path}: "
                            f"{type(err).__name__}: {err}") from None
        if not isinstance(arrays[key], zarr.Array):
            raise ConfigError(f"key 'data.{key}': '{name}' in {path} is a group, not an array")
    return ArraySource(arrays["x_key"], _labels_of(arrays["y_key"], path, "y_key"), name=path,
                       **_norm(cfg))


class _ScaledIdx(ArraySource):
    """IDX images stay uint8 (memory-mapped) and are scaled to [0, 1] when loaded."""

    def _raw(self, indices):
        return super()._raw(indices) / np.float32(255.0)


def _norm(cfg: dict) -> dict:
    return {"scale": cfg.get("scale", 1.0), "mean": cfg.get("mean"), "std": cfg.get("std")}


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
