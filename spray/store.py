"""The run's Zarr v3 store, its fingerprints and the run lock.

Layout of ``RUN_DIR/spray.zarr`` (a Zarr v3 group)::

    attrs: format="spray-store", format_version, spray_version, config_hash,
           fingerprints={model, data, attribution}, classes=[...]
    classes/<c>/                     one group per class index c
        attrs: class, name, n_samples, chunk_size, analysis={...} when finished
        index       (n_c,)           int64     dataset index of each row
        relevance   (n_c, H, W)      float32   channel-summed relevance maps
        relevance_full (n_c, C, H, W)          optional, attribution.store_channels
        logits      (n_c, K)         float32
        prediction  (n_c,)           int64
        done        (n_chunks,)      bool      chunk i of the rows is written
        features    (n_c, d)         float32   preprocessed relevance
        input_features (n_c, d)      float32   the same preprocessing of the raw inputs
        eigenvalues (m,), eigengaps (m-1,), eigenvectors (n_c, m), labels (n_c,), tsne (n_c, 2)

LRP chunks are whole-chunk, idempotent writes followed by a ``done`` marker (its own Zarr chunk),
so a killed task can simply be run again and a rerun skips finished chunks.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import zarr

from spray import __version__
from spray.errors import StoreError

FORMAT = "spray-store"
FORMAT_VERSION = 1
LOCK_NAME = ".spray.lock"


def store_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "spray.zarr"


def open_store(run_dir: str | Path, mode: str = "r") -> zarr.Group:
    """Open an existing spray store, refusing anything that is not one."""
    path = store_path(run_dir)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{run_dir}: no spray store found (expected {path}); "
                         f"is this the output folder of a 'spray run'?")
    try:
        group = zarr.open_group(str(path), mode=mode)
    except Exception as err:  # noqa: BLE001
        raise StoreError(f"{path}: cannot open the Zarr store: {err}") from None
    if group.attrs.get("format") != FORMAT:
        raise StoreError(f"{path}: a Zarr store, but not one written by spray "
                         f"(attribute 'format' is {group.attrs.get('format')!r})")
    return group


def create_or_check_store(run_dir: Path, fingerprints: dict, config_hash: str,
                          classes: list[int]) -> zarr.Group:
    """Create the store, or reopen it for resuming after checking the fingerprints match."""
    path = store_path(run_dir)
    if (path / "zarr.json").is_file():
        group = open_store(run_dir, mode="a")
        old = group.attrs.get("fingerprints", {})
        changed = [k for k in fingerprints if old.get(k) != fingerprints[k]]
        if changed:
            raise StoreError(
                f"{path} was made with a different {', '.join(changed)} "
                f"({', '.join(f'{k}: {old.get(k)} vs now {fingerprints[k]}' for k in changed)}); "
                f"refusing to mix results. Choose another --output or pass --overwrite to start over."
            )
        group.attrs.update({"config_hash": config_hash, "classes": classes})
        return group
    if path.exists():
        raise StoreError(f"{path} exists but is not a Zarr store; move it away or pass --overwrite")
    group = zarr.open_group(str(path), mode="w")
    group.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                        "spray_version": __version__, "config_hash": config_hash,
                        "fingerprints": fingerprints, "classes": classes})
    group.require_group("classes")
    return group


def class_key(c: int) -> str:
    return str(int(c))


def prepare_class(group: zarr.Group, c: int, name: str, indices: np.ndarray,
                  sample_shape: tuple, n_outputs: int, chunk_size: int,
                  dtype: str = "float32", store_channels: bool = False) -> zarr.Group:
    """Create (or reuse, when shapes agree) the arrays of one class."""
    classes = group.require_group("classes")
    key = class_key(c)
    n = len(indices)
    channels, height, width = sample_shape
    n_chunks = max(1, -(-n // chunk_size))
    if key in classes:
        cg = classes[key]
        same = (cg.attrs.get("n_samples") == n and cg.attrs.get("chunk_size") == chunk_size
                and np.array_equal(cg["index"][:], indices))
        if same:
            return cg
        where = getattr(group.store, "root", group.store)
        raise StoreError(f"{where}: class {c} in the store has other samples or chunking "
                         f"than this run; pass --overwrite to start over")
    cg = classes.require_group(key)
    cg.attrs.update({"class": int(c), "name": name, "n_samples": int(n),
                     "chunk_size": int(chunk_size), "n_chunks": n_chunks})
    rows = max(1, min(chunk_size, n))
    cg.create_array("index", data=np.asarray(indices, dtype=np.int64))
    cg.create_array("relevance", shape=(n, height, width), chunks=(rows, height, width),
                    dtype=dtype, fill_value=0)
    if store_channels:
        cg.create_array("relevance_full", shape=(n, channels, height, width),
                        chunks=(rows, channels, height, width), dtype=dtype, fill_value=0)
    cg.create_array("logits", shape=(n, n_outputs), chunks=(rows, n_outputs), dtype="float32",
                    fill_value=0)
    cg.create_array("prediction", shape=(n,), chunks=(rows,), dtype="int64", fill_value=-1)
    cg.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False)
    return cg


def open_class(run_dir: str | Path, c: int, mode: str = "r") -> zarr.Group:
    return zarr.open_group(str(store_path(run_dir) / "classes" / class_key(c)), mode=mode)


def write_array(cg: zarr.Group, name: str, data: np.ndarray) -> None:
    """(Over)write a whole analysis array of a class."""
    data = np.asarray(data)
    cg.create_array(name, shape=data.shape, dtype=data.dtype, overwrite=True,
                    chunks=data.shape if data.ndim else None)
    if data.size:
        cg[name][...] = data


class RunLock:
    """An exclusive lock on a run folder, so two runs never write one store at once."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def _holder_alive(self) -> bool:
        try:
            host, pid = self.path.read_text().split()[:2]
        except (OSError, ValueError):
            return True  # being written right now by another process
        if host != socket.gethostname():
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._holder_alive():
                    raise StoreError(
                        f"{self.path.parent} is in use by another spray run "
                        f"(lock {self.path}: {self.path.read_text().strip()}); wait for it to "
                        f"finish, or delete the lock file if that run is gone"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale lock of a dead process
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return self
        raise StoreError(f"cannot take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
