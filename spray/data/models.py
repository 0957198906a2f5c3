"""Loading the model to explain.

A model comes from a Python factory ``module:function`` (the config's folder is importable) and
an optional weights file read with ``torch.load(..., weights_only=True)``. Arbitrary pickles are
refused unless the config sets ``model.trust_pickle: true``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from functools import lru_cache

import torch

from spray.data.files import file_stamp
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
    from pathlib import Path

    if not Path(path).is_file():
        kind = "a folder" if Path(path).is_dir() else "not a regular file"
        raise ModelError(f"key 'model.weights': {path} is {kind}; give the weights file "
                         f"(a state_dict saved with torch.save)")
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
def _cached(key: str, base_dir: str | None, weights_stamp: tuple | None) -> torch.nn.Module:
    return build_model(json.loads(key), base_dir)


def load_model(model_cfg: dict, base_dir: str | None) -> torch.nn.Module:
    """Build the model once per process and reuse it (Dask workers call this per task)."""
    return _cached(json.dumps(model_cfg, sort_keys=True), base_dir,
                   file_stamp(model_cfg.get("weights"), base_dir))


def _source_of(module_name: str) -> bytes:
    """The source file of a module (empty when it has none, e.g. a built-in)."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not path:
        return b""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def model_code_fingerprint(model: torch.nn.Module, factory: str | None = None) -> str:
    """Hash of the model's code: its architecture (the module tree with every layer's settings),
    the source of the factory's module and of every module defining one of its layer classes
    outside torch (a change to a ``forward`` there changes the relevance maps)."""
    h = hashlib.sha256()
    h.update(repr(model).encode())
    modules = {factory.partition(":")[0]} if factory else set()
    for layer in model.modules():
        name = type(layer).__module__
        if name.split(".")[0] not in ("torch", "torchvision"):
            modules.add(name)
    for name in sorted(modules):
        h.update(name.encode())
        h.update(_source_of(name))
    return h.hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module, factory: str | None = None) -> str:
    """Hash of everything the relevance maps depend on in the model: its parameters and buffers
    (persistent or not) and its code (:func:`model_code_fingerprint`)."""
    h = hashlib.sha256()
    tensors = dict(model.named_parameters())
    tensors.update({f"buffer:{k}": v for k, v in model.named_buffers()})
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(model_code_fingerprint(model, factory).encode())
    return h.hexdigest()[:16]
