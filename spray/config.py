"""Run configuration: a YAML file validated on load.

Unknown keys and wrong types are errors that name the key; relative paths resolve against the
config file's folder. Validation uses pydantic; :func:`load_config` turns its errors into one
:class:`~spray.errors.ConfigError` paragraph.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spray.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Where the samples come from.

    ``npz``: arrays ``x`` (N, C, H, W) or (N, H, W) and ``y`` (N,) in ``path``.
    ``digits``: scikit-learn's bundled 8×8 digits (optionally upsampled with ``size``).
    ``idx``: MNIST-style IDX files (``path`` images, ``labels`` labels; gzip allowed).
    """

    source: Literal["npz", "digits", "idx"]
    path: Optional[str] = None
    labels: Optional[str] = None
    x_key: str = "x"
    y_key: str = "y"
    scale: float = 1.0
    size: Optional[int] = Field(default=None, gt=0)


class ModelConfig(_Strict):
    """A Python factory ``module:function`` plus an optional weights file."""

    factory: str
    weights: Optional[str] = None
    trust_pickle: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str) -> str:
        module, sep, func = value.partition(":")
        if not sep or not module or not func:
            raise ValueError(f"must look like 'module:function', got {value!r}")
        return value


class AttributionConfig(_Strict):
    """How relevance maps are computed (see :mod:`spray.lrp`)."""

    composite: str = "epsilon-plus-flat"
    target: Union[Literal["label", "prediction"], int] = "label"
    batch_size: int = Field(default=256, gt=0)
    chunk_size: int = Field(default=512, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)
    store_dtype: Literal["float32", "float16"] = "float32"
    store_channels: bool = False


class ClusterConfig(_Strict):
    """Where the Dask graph runs: ``local`` (LocalCluster), ``threads`` or ``tcp://HOST:PORT``."""

    scheduler: str = "local"
    n_workers: int = Field(default=2, gt=0)
    threads_per_worker: int = Field(default=1, gt=0)
    memory_limit: str = "auto"
    progress: bool = True

    @field_validator("scheduler")
    @classmethod
    def _scheduler_form(cls, value: str) -> str:
        if value in ("local", "threads") or value.startswith("tcp://"):
            return value
        raise ValueError(f"must be 'local', 'threads' or 'tcp://HOST:PORT', got {value!r}")


class RunConfig(_Strict):
    """A whole run: dataset, model, attribution, classes, analysis pipeline, cluster, output."""

    data: DataConfig
    model: ModelConfig
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    classes: Union[Literal["all"], list[int]] = "all"
    class_names: Optional[list[str]] = None
    pipeline: Union[str, dict[str, Any]] = "spray-default"
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    output: str = "runs/spray"

    @field_validator("classes")
    @classmethod
    def _classes_nonempty(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("the class list is empty")
            if any(c < 0 for c in value):
                raise ValueError(f"class indices must be >= 0, got {value}")
            if len(set(value)) != len(value):
                raise ValueError(f"class indices repeat: {value}")
        return value


def _format_errors(err: ValidationError, source: str) -> str:
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        elif item["type"] == "missing":
            parts.append(f"missing key '{key}'")
        else:
            parts.append(f"key '{key}': {item['msg']} (got {item.get('input')!r})")
    return f"{source}: invalid configuration: " + "; ".join(parts)


def _resolve(base: Path, value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def validate_config(raw: Any, base_dir: Path, source: str = "config") -> RunConfig:
    """Validate a parsed YAML mapping and resolve its relative paths against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping, got {type(raw).__name__}")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    base = Path(base_dir).resolve()
    cfg.data.path = _resolve(base, cfg.data.path)
    cfg.data.labels = _resolve(base, cfg.data.labels)
    cfg.model.weights = _resolve(base, cfg.model.weights)
    cfg.output = _resolve(base, cfg.output)
    if isinstance(cfg.pipeline, str) and cfg.pipeline.endswith((".yaml", ".yml")):
        cfg.pipeline = _resolve(base, cfg.pipeline)
    for key, path in (("data.path", cfg.data.path), ("data.labels", cfg.data.labels),
                      ("model.weights", cfg.model.weights)):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{source}: key '{key}': file not found: {path}")
    if cfg.data.source in ("npz", "idx") and cfg.data.path is None:
        raise ConfigError(f"{source}: key 'data.path' is required for source '{cfg.data.source}'")
    if cfg.data.source == "idx" and cfg.data.labels is None:
        raise ConfigError(f"{source}: key 'data.labels' is required for source 'idx'")
    return cfg


def load_config(path: str | Path) -> tuple[RunConfig, Path]:
    """Read and validate a run config; returns it with the folder its paths resolve against."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    base = path.resolve().parent
    return validate_config(raw, base, source=str(path)), base


def config_hash(cfg: RunConfig) -> str:
    """A stable hash of everything that changes the results (the output folder excluded)."""
    payload = cfg.model_dump(exclude={"output", "cluster"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dump_config(cfg: RunConfig, base_dir: Path, pipeline: dict) -> str:
    """The resolved config as run, as YAML (pipeline expanded)."""
    data = cfg.model_dump()
    data["pipeline"] = {"preset": pipeline.get("name", "spray-default"),
                        **{k: v for k, v in pipeline.items() if k != "name"}}
    return yaml.safe_dump(data, sort_keys=False)
