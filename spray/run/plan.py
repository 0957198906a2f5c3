"""The first step of a run: everything decided before anything is written or any Dask worker
starts (:func:`plan_run` returns a :class:`RunPlan`).

The preset is loaded, the data opened, the model built and probed on one sample (unknown
composites, unsupported layers and out-of-range targets fail here, with the key or layer
named), the classes partitioned and named, the fingerprints of everything the results depend
on computed, and the output folder checked against the files spray wrote there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spray import __version__
from spray.config.presets import load_pipeline
from spray.config.run_config import (
    RunConfig,
    attribution_hash,
    check_finite,
    json_hash,
)
from spray.data.models import load_model, model_code_fingerprint, model_fingerprint
from spray.data.sources import class_partitions, open_source
from spray.errors import (
    ConfigError,
    DataError,
    ModelError,
    SprayError,
    StoreError,
)
from spray.run.tasks import pipeline_hash
from spray.store import (
    FORMAT,
    LOCK_NAME,
    MANIFEST_NAME,
    OwnedFiles,
    adopt_legacy_run,
    open_store,
)
from spray.verdict.score import flag_params

log = logging.getLogger(__name__)

RUN_FILES = ("spray.zarr", "report", "run.json", "config.yaml")



def _pipeline_spec(cfg: RunConfig):
    if isinstance(cfg.pipeline, dict):
        spec = dict(cfg.pipeline)
        return spec.pop("preset", "spray-default"), spec
    return cfg.pipeline, None


def _class_names(cfg: RunConfig, n_outputs: int, source_names=None) -> list[str]:
    if cfg.class_names is None:
        if source_names and len(source_names) == n_outputs:
            return [str(n) for n in source_names]
        return [str(i) for i in range(n_outputs)]
    if len(cfg.class_names) != n_outputs:
        raise ConfigError(f"key 'class_names': {len(cfg.class_names)} names for a model with "
                          f"{n_outputs} outputs")
    return list(cfg.class_names)


def _probe_model(cfg: RunConfig, base_dir: Path, source) -> tuple[torch.nn.Module, int]:
    model = load_model(cfg.model.model_dump(), str(base_dir))
    if len(source.labels()) == 0:
        raise DataError(f"{source.name}: the dataset holds no samples")
    x = torch.as_tensor(source.load(np.array([0])))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"the model cannot process a sample of shape {tuple(x.shape[1:])} from "
                        f"{source.name}: {type(err).__name__}: {err}") from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"key 'model.factory': the model's forward returns "
                         f"{type(out).__name__}; it must return one tensor of logits "
                         f"(batch, classes) (wrap the model to pick the logits)")
    if out.ndim != 2:
        raise DataError(f"the model must return logits of shape (batch, classes), got "
                        f"{tuple(out.shape)}")
    _check_target(cfg, int(out.shape[1]))
    _probe_lrp(cfg, model, x)
    _check_labels(source.labels(), int(out.shape[1]), source.name)
    return model, int(out.shape[1])


def _check_target(cfg: RunConfig, n_outputs: int) -> None:
    """A fixed ``attribution.target`` must name one of the model's outputs."""
    target = cfg.attribution.target
    if isinstance(target, int) and not 0 <= target < n_outputs:
        raise ConfigError(f"key 'attribution.target': output {target} does not exist; the model "
                          f"has {n_outputs} outputs (0..{n_outputs - 1}), or use 'label' or "
                          f"'prediction'")


def _probe_lrp(cfg: RunConfig, model: torch.nn.Module, x: torch.Tensor) -> None:
    """Explain one sample before anything is written: unknown composites, bad composite
    parameters and unsupported layers fail here, with the key or layer named."""
    from spray import lrp

    try:
        target = cfg.attribution.target
        lrp.attribute(model, x, torch.tensor([target if isinstance(target, int) else 0]),
                      composite=cfg.attribution.composite, **cfg.attribution.params)
    except ConfigError as err:
        raise ConfigError(f"key 'attribution.composite' ({cfg.attribution.composite!r}): {err}") from None
    except TypeError as err:
        raise ConfigError(f"key 'attribution.params': {err}") from None


def _check_k(pipeline: dict, parts: dict) -> None:
    """An explicit kNN ``k`` must leave neighbours to choose from in every analysed class."""
    k = pipeline["affinity"].get("k")
    sizes = {c: len(idx) for c, idx in parts.items() if len(idx) >= 3}
    if isinstance(k, int) and sizes and k >= min(sizes.values()):
        c = min(sizes, key=sizes.get)
        raise ConfigError(f"pipeline key 'affinity.k': k = {k} but class {c} has only "
                          f"{sizes[c]} samples; choose k < {sizes[c]} or k: auto")


def _check_labels(labels: np.ndarray, n_outputs: int, name: str) -> None:
    """Every label must name one of the model's outputs."""
    bad = np.flatnonzero((labels < 0) | (labels >= n_outputs))
    if len(bad):
        shown = ", ".join(f"{int(i)} (label {int(labels[i])})" for i in bad[:5])
        raise DataError(f"{name}: {len(bad)} sample(s) have labels outside the model's "
                        f"{n_outputs} outputs: dataset indices {shown}")


def _owned(run_dir: Path) -> set[str]:
    """Entries of ``run_dir`` spray wrote: listed in its manifest, plus a spray store."""
    files = OwnedFiles(run_dir)
    owned = {n for n in files.entries() if (run_dir / n).exists() and files.owns(n)}
    try:
        if open_store(run_dir).attrs.get("format") == FORMAT:
            owned.add("spray.zarr")
    except SprayError:
        pass
    return owned | {LOCK_NAME, MANIFEST_NAME}


def _clear_run_dir(run_dir: Path) -> None:
    """``--overwrite``: delete what spray wrote there (only that; checked by :func:`_check_run_dir`)."""
    files = OwnedFiles(run_dir)
    for name in RUN_FILES:
        if name == "spray.zarr" and (run_dir / name).is_dir() and name in _owned(run_dir):
            files.claim_store()
        files.remove(name)


def _check_run_dir(run_dir: Path) -> None:
    """The output folder is new, empty or a spray run folder; nothing in it that spray would
    overwrite is someone else's."""
    if run_dir.exists() and not run_dir.is_dir():
        raise StoreError(f"output {run_dir} exists and is not a folder")
    if not run_dir.is_dir():
        return
    adopt_legacy_run(run_dir)
    owned = _owned(run_dir)
    present = {p.name for p in run_dir.iterdir()}
    clash = sorted(n for n in present & set(RUN_FILES) if n not in owned)
    if clash:
        raise StoreError(f"output {run_dir} holds {', '.join(clash)}, which spray did not write "
                         f"(or which changed since); spray would overwrite it. Choose an empty or "
                         f"new folder, or move those away")
    foreign = sorted(present - owned)
    if foreign and "spray.zarr" not in owned:
        raise StoreError(f"output {run_dir} already holds other files ({', '.join(foreign[:5])});"
                         f" choose an empty or new folder")


@dataclass
class RunPlan:
    """What a run will do, decided before anything is written or any Dask worker starts.

    Built by :func:`plan_run` from a validated config: the model has been probed on one sample
    (unknown composites and unsupported layers fail here), the classes partitioned and named,
    and the output folder checked.
    """

    cfg: RunConfig
    base_dir: Path
    run_dir: Path
    pipeline: dict
    source: object
    parts: dict[int, np.ndarray]
    names: list[str]
    n_outputs: int
    sample_shape: tuple
    fingerprints: dict[str, str]
    scheduler: str | None = None


def plan_run(cfg: RunConfig, base_dir: Path, output: str | None = None,
             scheduler: str | None = None, quiet: bool = False) -> RunPlan:
    """Load the preset and the data, probe the model and partition the classes (no Dask)."""
    run_dir = Path(output).resolve() if output else Path(cfg.output)
    _check_run_dir(run_dir)
    pipeline = load_pipeline(*_pipeline_spec(cfg), base_dir=base_dir)
    check_finite(pipeline, "pipeline")
    flag_params(pipeline)   # a false_flag_rate without its reference fails before any work
    source = open_source(cfg.data.model_dump(), str(base_dir))
    if cfg.attribution.precomputed:  # no model: classes and shapes come from the file
        from spray.data.precomputed import plan_run as plan_precomputed

        pre = plan_precomputed(cfg, source)
        n_outputs, parts, sample_shape = pre.n_outputs, pre.parts, pre.sample_shape
        model_fp = pre.fingerprint
    else:
        model, n_outputs = _probe_model(cfg, base_dir, source)
        parts = class_partitions(source.labels(), cfg.classes, n_outputs)
        model_fp, sample_shape = model_fingerprint(model, cfg.model.factory), source.sample_shape
    names = _class_names(cfg, n_outputs, getattr(source, "class_names", None))
    _check_k(pipeline, parts)
    fingerprints = {"model": model_fp, "data": source.fingerprint(),
                    "attribution": attribution_hash(cfg), "spray": __version__,
                    **_identity_fingerprints(cfg, pipeline, source, names, parts,
                                             None if cfg.attribution.precomputed else model)}
    return RunPlan(cfg=cfg, base_dir=base_dir, run_dir=run_dir, pipeline=pipeline, source=source,
                   parts=parts, names=names, n_outputs=n_outputs, sample_shape=sample_shape,
                   fingerprints=fingerprints, scheduler=scheduler)


def _identity_fingerprints(cfg: RunConfig, pipeline: dict, source, names: list[str], parts: dict,
                           model) -> dict[str, str]:
    """What a baseline run must share with this one (``spray check --baseline``): the model's
    code and architecture (not its weights), the kind and shape of the data (not its samples),
    the class list and the analysis pipeline."""
    code = (model_code_fingerprint(model, cfg.model.factory) if model is not None
            else json_hash(cfg.attribution.precomputed and Path(cfg.attribution.precomputed).name))
    return {"model_code": code,
            "dataset": json_hash([cfg.data.source, list(source.sample_shape),
                                    sorted(int(c) for c in parts),
                                    cfg.data.scale, cfg.data.mean, cfg.data.std]),
            "classes": json_hash([[int(c), names[c]] for c in sorted(parts)]),
            "pipeline": pipeline_hash(pipeline)}
