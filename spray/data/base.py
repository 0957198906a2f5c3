"""The source interface every dataset kind implements, and the sample hash of a chunk."""

from __future__ import annotations

import hashlib
import json

import numpy as np

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


def _norm(cfg: dict) -> dict:
    """The sample transform keys every source takes (scale, then mean/std per channel)."""
    return {"scale": cfg.get("scale", 1.0), "mean": cfg.get("mean"), "std": cfg.get("std")}
