"""Array datasets: NumPy ``.npz``, scikit-learn's digits, MNIST-style IDX files, HDF5 and Zarr.

Uncompressed ``.npz`` and IDX files are memory-mapped; HDF5 and Zarr arrays are read lazily,
one chunk of samples at a time.
"""

from __future__ import annotations

import gzip
import math
import os

import numpy as np

from spray.data.base import Source, _check_labels, _norm
from spray.errors import ConfigError, DataError


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
