"""A ``torch.utils.data.Dataset`` returned by a Python factory ``module:function``."""

from __future__ import annotations

import importlib
import json
import sys
import warnings

import numpy as np

from spray.data.base import Source, _check_labels
from spray.errors import ConfigError, DataError


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
