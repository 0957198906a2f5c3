"""Loading the model to explain.

A model comes from a Python factory ``module:function`` (the config's folder is importable) and
an optional weights file read with ``torch.load(..., weights_only=True)``. Arbitrary pickles are
refused unless the config sets ``model.trust_pickle: true``.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from functools import lru_cache

import torch

from spray.errors import ModelError


def _import_factory(spec: str, base_dir: str | None):
    module_name, _, func_name = spec.partition(":")
    if base_dir and base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - report any import failure as a user error
        raise ModelError(f"key 'model.factory': cannot import module '{module_name}' "
                         f"(searched the config folder {base_dir} and sys.path): {err}") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ModelError(f"key 'model.factory': module '{module_name}' has no function "
                         f"'{func_name}'")
    return factory


def _pickled_objects(err: Exception) -> list[str]:
    """The Python objects PyTorch's safe loader refused (``GLOBAL a.b.C`` in its message)."""
    import re

    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))


def _read_weights(path: str, trust_pickle: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        if not trust_pickle:
            objects = _pickled_objects(err)
            what = (f"a pickled Python object ({', '.join(objects)})" if objects
                    else "no plain tensor checkpoint (a pickle, or not a torch.save file)")
            raise ModelError(
                f"key 'model.weights': {path} holds {what}. Loading a pickle can run arbitrary "
                f"code, so spray refuses it. Two ways out: save the weights as a state_dict "
                f"(torch.save(model.state_dict(), PATH)) and point 'model.weights' at that "
                f"file, or, if you trust the file, set 'model.trust_pickle: true' in the "
                f"config."
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"key 'model.weights': cannot load {path}: {err}") from None


def build_model(model_cfg: dict, base_dir: str | None) -> torch.nn.Module:
    """Instantiate the model, load its weights and switch it to eval mode."""
    factory = _import_factory(model_cfg["factory"], base_dir)
    try:
        model = factory(**model_cfg.get("kwargs", {}))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"key 'model.factory': {model_cfg['factory']}() raised: {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"key 'model.factory': {model_cfg['factory']}() returned "
                         f"{type(model).__name__}, not a torch.nn.Module")
    weights = model_cfg.get("weights")
    if weights:
        state = _read_weights(weights, model_cfg.get("trust_pickle", False))
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except Exception as err:  # noqa: BLE001
            first = str(err).strip().splitlines()
            raise ModelError(f"key 'model.weights': {weights} does not match the model built by "
                             f"{model_cfg['factory']}: {' '.join(first[:3])}") from None
    return model.eval()


@lru_cache(maxsize=2)
def _cached(key: tuple, base_dir: str | None) -> torch.nn.Module:
    cfg = dict(key)
    cfg["kwargs"] = dict(cfg.get("kwargs", ()))
    return build_model(cfg, base_dir)


def load_model(model_cfg: dict, base_dir: str | None) -> torch.nn.Module:
    """Build the model once per process and reuse it (Dask workers call this per task)."""
    key = tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
                       for k, v in model_cfg.items()))
    return _cached(key, base_dir)


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the model's parameters and buffers (what the relevance maps depend on)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

