"""The run's Zarr v3 store, its fingerprints and the run lock.

Layout of ``RUN_DIR/spray.zarr`` (a Zarr v3 group)::

    attrs: format="spray-store", format_version, spray_version, config_hash,
           fingerprints={model, data, attribution, spray, ...}, classes=[...],
           run_state ("running" | "finished" | "failed"), run_id
    classes/<c>/                     one group per class index c
        attrs: class, name, n_samples, chunk_size, analysis={...} when finished
        index       (n_c,)           int64     dataset index of each row
        relevance   (n_c, H, W)      float32   channel-summed relevance maps
        relevance_full (n_c, C, H, W)          optional, attribution.store_channels
        logits      (n_c, K)         float32
        prediction  (n_c,)           int64
        done        (n_chunks,)      bool      chunk i of the rows is written
        conservation (n_c,)          float64   relevance health: Σ relevance / explained logit
        nonfinite   (n_c,)           int64     NaN/Inf entries of the map (−1: not recorded)
        zero_map    (n_c,)           bool      the map is all zeros
        sample_hash (n_chunks, 32)   uint8     SHA-256 of the samples chunk i was computed from
        features    (n_c, d)         float32   preprocessed relevance
        input_features (n_c, d)      float32   the same preprocessing of the raw inputs
        eigenvalues (m,), eigengaps (m-1,), eigenvectors (n_c, m), labels (n_c,), tsne (n_c, 2)

LRP chunks are whole-chunk, idempotent writes followed by a ``done`` marker (its own Zarr chunk),
so a killed task can simply be run again and a rerun skips finished chunks. Each chunk records
the hash of the samples it was computed from (``sample_hash``, hashed by the task as it reads
them); a rerun reads the samples again and recomputes a chunk whose samples changed.

The files spray writes into a run folder are listed in ``RUN_DIR/.spray-files.json``
(:class:`OwnedFiles`); spray overwrites or deletes nothing that is not listed there with the same
content.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
import zarr

from spray import __version__
from spray.errors import StoreError

FORMAT = "spray-store"
FORMAT_VERSION = 1
LOCK_NAME = ".spray.lock"
MANIFEST_NAME = ".spray-files.json"
FOLDER_MARKER = ".spray-folder"
#: fingerprints a resumed run must share with the store (a change means other relevance maps)
RESUME_FINGERPRINTS = ("model", "data", "attribution", "spray")
HASH_BYTES = 32


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
        old = dict(group.attrs.get("fingerprints", {}))
        changed = [k for k in RESUME_FINGERPRINTS
                   if k in fingerprints and old.get(k) != fingerprints[k]]
        if changed:
            raise StoreError(
                f"{path} was made with a different {', '.join(changed)} "
                f"({', '.join(f'{k}: {old.get(k)} vs now {fingerprints[k]}' for k in changed)}); "
                f"refusing to mix results. Choose another --output or pass --overwrite to start over."
            )
        group.attrs.update({"config_hash": config_hash, "classes": classes,
                            "fingerprints": {**old, **fingerprints}})
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
            _require_sample_hash(cg, int(cg["done"].shape[0]))
            _require_health(cg, n, max(1, min(chunk_size, n)))
            if cg.attrs.get("name") != name:  # names come from the current config
                cg.attrs["name"] = name
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
    _require_sample_hash(cg, n_chunks)
    _require_health(cg, n, rows)
    return cg


def _require_sample_hash(cg: zarr.Group, n_chunks: int) -> None:
    """The per-chunk sample hashes (all zero, i.e. unknown, for a class stored without them)."""
    if "sample_hash" not in cg:
        cg.create_array("sample_hash", shape=(n_chunks, HASH_BYTES), chunks=(1, HASH_BYTES),
                        dtype="uint8", fill_value=0)


#: the relevance health arrays of a class (see :func:`spray.lrp.relevance_health`)
HEALTH_ARRAYS = {"conservation": ("float64", np.nan), "nonfinite": ("int64", -1),
                 "zero_map": ("bool", False)}


def _require_health(cg: zarr.Group, n: int, rows: int) -> None:
    """The per-sample relevance health arrays (``nonfinite`` −1, i.e. not recorded, for rows
    of a class stored without them)."""
    for name, (dtype, fill) in HEALTH_ARRAYS.items():
        if name not in cg:
            cg.create_array(name, shape=(n,), chunks=(max(1, rows),), dtype=dtype,
                            fill_value=fill)


def write_health(cg: zarr.Group, start: int, stop: int, health: dict) -> None:
    """Store the :func:`spray.lrp.relevance_health` figures of rows ``[start, stop)``."""
    cg["conservation"][start:stop] = health["conservation"]
    cg["nonfinite"][start:stop] = health["nonfinite"]
    cg["zero_map"][start:stop] = health["zero"]


def read_health(cg: zarr.Group) -> dict | None:
    """The class's health figures as :func:`spray.lrp.relevance_health` returns them, plus
    ``recorded`` (bool per sample); None for a class stored without them."""
    if any(name not in cg for name in HEALTH_ARRAYS):
        return None
    nonfinite = cg["nonfinite"][:]
    conservation = cg["conservation"][:]
    return {"conservation": conservation, "lost": 1.0 - conservation,
            "nonfinite": np.maximum(nonfinite, 0), "zero": cg["zero_map"][:],
            "recorded": nonfinite >= 0}


def class_samples_hash(cg: zarr.Group) -> str:
    """Hash of the class's per-chunk sample hashes: the samples its maps were computed from."""
    if "sample_hash" not in cg:
        return ""
    return hashlib.sha256(np.ascontiguousarray(cg["sample_hash"][:]).tobytes()).hexdigest()[:16]


def mark_run(group: zarr.Group, state: str) -> str:
    """Record the run's state in the store (``running``, ``finished`` or ``failed``).

    Every invocation gets a new ``run_id``; the summary carries the id and state it was built
    from, so ``spray check`` can tell a summary of this store's last finished run from a stale
    one.
    """
    run_id = uuid.uuid4().hex if state == "running" else group.attrs.get("run_id")
    group.attrs.update({"run_state": state, "run_id": run_id})
    return run_id


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
    """An exclusive lock on a run folder, so two runs never write one store at once.

    ``fcntl.flock`` on ``RUN_DIR/.spray.lock``: the kernel releases it when its holder exits, so a
    lock file left by a killed run is simply taken again; after locking, the file must still be
    the one at the path (a releasing holder unlinks it), otherwise the lock is taken again on the
    new file.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False
        self._fd = None

    def _holder(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text().strip() or "unknown process"
        return "unknown process"

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreError(
                    f"{self.path.parent} is in use by another spray run (lock {self.path}: "
                    f"{self._holder()}); wait for it to finish") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder unlinked the file as we opened it
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
            self._fd, self.held = fd, True
            return self
        raise StoreError(f"cannot take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)  # before unlocking: waiters then see a new file
            os.close(self._fd)
            self._fd, self.held = None, False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OwnedFiles:
    """The entries of a folder that spray wrote, listed in ``FOLDER/.spray-files.json``.

    A file is listed with the SHA-256 of the content spray wrote (a file changed since is not
    spray's any more), a folder (the report, the demo's files) as ``"folder:TOKEN"`` with the
    token in its marker file :data:`FOLDER_MARKER`, the store as ``"store"``. spray only
    overwrites or deletes listed entries.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME

    def entries(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            return {}
        return {str(k): str(v) for k, v in data["entries"].items()}

    def owns(self, name: str) -> bool:
        """``name`` is absent, or spray wrote it (and a file is unchanged since)."""
        target = self.folder / name
        if not target.exists() and not target.is_symlink():
            return True
        kind = self.entries().get(name)
        if kind is None or target.is_symlink():
            return False
        if kind == "store":
            return (target / "zarr.json").is_file()
        if kind.startswith("folder:"):
            try:
                return target.is_dir() and \
                    (target / FOLDER_MARKER).read_text() == kind.partition(":")[2]
            except OSError:
                return False
        try:
            return target.is_file() and _digest(target) == kind
        except OSError:
            return False

    def not_owned(self, names) -> list[str]:
        """Those of ``names`` that exist and that spray did not write."""
        return [n for n in names if not self.owns(n)]

    def _save(self, entries: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{MANIFEST_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"written_by": "spray", "entries": entries}, indent=1))
        os.replace(tmp, self.path)

    def claim_folder(self, name: str) -> None:
        """Record ``name`` as a folder spray writes (creating it, with a marker file inside that
        tells it from a folder someone else put at the same path later)."""
        entries = self.entries()
        kind = entries.get(name, "")
        target = self.folder / name
        if kind.startswith("folder:") and self.owns(name) and target.is_dir():
            return
        if target.exists() or target.is_symlink():
            raise StoreError(f"{target} exists and was not written by spray; refusing to write "
                             f"into it. Move it away or choose another folder")
        token = uuid.uuid4().hex
        target.mkdir(parents=True, exist_ok=True)
        (target / FOLDER_MARKER).write_text(token)
        entries[name] = f"folder:{token}"
        self._save(entries)

    def claim_store(self) -> None:
        """Record the Zarr store (its own ``format`` attribute marks it as spray's)."""
        entries = self.entries()
        if entries.get("spray.zarr") != "store":
            entries["spray.zarr"] = "store"
            self._save(entries)

    def write_text(self, name: str, text: str) -> Path:
        """Write a file spray owns: refuse if a file of someone else's is in the way."""
        target = self.folder / name
        if not self.owns(name):
            raise StoreError(f"{target} exists and was not written by spray (or was changed "
                             f"since); refusing to overwrite it. Move it away or choose another "
                             f"folder")
        data = text.encode()
        entries = self.entries()
        entries[name] = hashlib.sha256(data).hexdigest()
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        self._save(entries)
        os.replace(tmp, target)
        return target

    def record(self, name: str) -> None:
        """Record a file spray has just written (by another writer, e.g. h5py) as its own."""
        entries = self.entries()
        entries[name] = _digest(self.folder / name)
        self._save(entries)

    def remove(self, name: str) -> None:
        """Delete an entry spray wrote; refuse (and delete nothing) otherwise."""
        target = self.folder / name
        if not target.exists():
            return
        if not self.owns(name):
            raise StoreError(f"{target} was not written by spray (or was changed since); "
                             f"refusing to delete it")
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
        entries = self.entries()
        entries.pop(name, None)
        self._save(entries)


def adopt_legacy_run(run_dir: str | Path) -> None:
    """A run folder written before spray listed its files (a spray store, no manifest): list
    the run's own entries (store, report, config.yaml, run.json) once, so they can be updated."""
    run_dir = Path(run_dir)
    files = OwnedFiles(run_dir)
    if files.path.exists():
        return
    try:
        open_store(run_dir)
    except StoreError:
        return
    entries = {"spray.zarr": "store"}
    for name in ("config.yaml", "run.json"):
        if (run_dir / name).is_file() and not (run_dir / name).is_symlink():
            entries[name] = _digest(run_dir / name)
    report = run_dir / "report"
    if report.is_dir() and not report.is_symlink() and (report / "summary.json").is_file():
        token = uuid.uuid4().hex
        (report / FOLDER_MARKER).write_text(token)
        entries["report"] = f"folder:{token}"
    files._save(entries)


def damaged_class(run_dir: str | Path, c, err: Exception) -> StoreError:
    """The error for a class folder whose arrays or attributes cannot be read."""
    return StoreError(f"{store_path(run_dir)}/classes/{c}: cannot be read "
                      f"({type(err).__name__}: {err}); the store is corrupt or truncated. Other "
                      f"classes are untouched; rerun with --overwrite to start over, or move "
                      f"that class folder away to recompute only it")
