"""Run configuration: a YAML file validated on load.

Unknown keys and wrong types are errors that name the key; relative paths resolve against the
config file's folder. Validation uses pydantic; :func:`load_config` turns its errors into one
:class:`~spray.errors.ConfigError` paragraph.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)

from spray.config.base import _Strict
from spray.config.cluster import ClusterConfig
from spray.errors import ConfigError

#: largest config (YAML nodes after expanding aliases) accepted; a small file whose aliases
#: expand to more (a "billion laughs" file) is refused before it is expanded
MAX_CONFIG_NODES = 200_000
logger = logging.getLogger(__name__)


def nonfinite_keys(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every NaN or infinite number (or text with a NUL character) in a nested
    mapping/list."""
    if isinstance(value, float) and not math.isfinite(value):
        return [prefix or "<value>"]
    if isinstance(value, str) and "\0" in value:
        return [prefix or "<value>"]
    if isinstance(value, dict):
        return [k for key, v in value.items()
                for k in nonfinite_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(value, (list, tuple)):
        return [k for i, v in enumerate(value) for k in nonfinite_keys(v, f"{prefix}[{i}]")]
    return []


def check_finite(value: Any, what: str, prefix: str = "") -> None:
    """Refuse NaN and infinite numbers anywhere in ``value`` (a config or a pipeline), naming
    the key: a NaN threshold would make every comparison false and silently pass the gate."""
    bad = nonfinite_keys(value, prefix)
    if bad:
        raise ConfigError(f"{what}: key '{bad[0]}' must be a finite number (or text without NUL "
                          f"characters), got {_at(value, bad[0], prefix)!r}"
                          + (f" (also {', '.join(bad[1:4])})" if len(bad) > 1 else ""))


def _at(value: Any, dotted: str, prefix: str) -> Any:
    import re

    rest = dotted[len(prefix):].lstrip(".") if prefix and dotted.startswith(prefix) else dotted
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", rest):
        try:
            value = value[int(part[1:-1])] if part.startswith("[") else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return value


class DataConfig(_Strict):
    """Where the samples come from (see :mod:`spray.data.sources`).

    ``npz``: arrays ``x`` (N, C, H, W) or (N, H, W) and ``y`` (N,) in ``path``.
    ``digits``: scikit-learn's bundled 8×8 digits (optionally upsampled with ``size``).
    ``idx``: MNIST/Fashion-MNIST IDX files (``path`` images, ``labels`` labels; gzip allowed).
    ``hdf5`` / ``zarr``: datasets ``x_key`` and ``y_key`` in the file/store at ``path``.
    ``imagefolder``: ImageNet-style ``path/<class>/<image>`` folders; ``mode``, ``resize``,
    ``crop`` shape the decoded image; classes are the sorted folder names or ``class_list``.
    ``factory``: ``module:function`` returning a ``torch.utils.data.Dataset`` of ``(x, y)``.
    All sources: ``scale`` multiplies the samples; ``mean``/``std`` normalize them per channel
    for the model (reports show the samples before normalization).
    """

    source: Literal["npz", "digits", "idx", "hdf5", "zarr", "imagefolder", "factory"]
    path: str | None = None
    labels: str | None = None
    x_key: str = "x"
    y_key: str = "y"
    scale: float = 1.0
    size: int | None = Field(default=None, gt=0)
    mean: list[float] | None = None
    std: list[float] | None = None
    mode: Literal["RGB", "L"] = "RGB"
    resize: int | list[int] | None = None
    crop: int | list[int] | None = None
    extensions: list[str] = Field(default_factory=lambda: [
        ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"])
    class_list: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("resize", "crop")
    @classmethod
    def _size_form(cls, value):
        if value is None:
            return value
        sizes = [value] if isinstance(value, int) else value
        if len(sizes) not in (1, 2) or any(v <= 0 for v in sizes):
            raise ValueError(f"must be a positive integer or [height, width], got {value!r}")
        return value

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value):
        if value is not None and any(v <= 0 for v in value):
            raise ValueError(f"all entries must be > 0, got {value!r}")
        return value


class ModelConfig(_Strict):
    """A Python factory ``module:function`` plus an optional weights file."""

    factory: str
    weights: str | None = None
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
    target: Literal["label", "prediction"] | int = "label"
    batch_size: int = Field(default=256, gt=0)
    chunk_size: int = Field(default=512, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)
    store_dtype: Literal["float32", "float16"] = "float32"
    store_channels: bool = False
    precomputed: str | None = None  # attributions made elsewhere (see spray.data.precomputed)


class RunConfig(_Strict):
    """A whole run: dataset, model, attribution, classes, analysis pipeline, cluster, output."""

    data: DataConfig
    model: ModelConfig | None = None  # required unless attribution.precomputed is set
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    classes: Literal["all"] | list[StrictInt] = "all"
    class_names: list[str] | None = None
    pipeline: str | dict[str, Any] = "spray-default"
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
            from spray.config.hints import did_you_mean

            parts.append(f"unknown key '{key}'{did_you_mean(RunConfig, tuple(item['loc']))}")
        elif item["type"] == "missing":
            parts.append(f"missing key '{key}'")
        else:
            parts.append(f"key '{key}': {item['msg']} (got {item.get('input')!r})")
    return f"{source}: invalid configuration: " + "; ".join(parts)


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _check_data(data: DataConfig, source: str) -> None:
    """Cross-key checks of the ``data`` section that depend on ``data.source``."""
    if data.source == "factory":
        if not data.factory:
            raise ConfigError(f"{source}: key 'data.factory' ('module:function' returning a "
                              f"torch Dataset) is required for source 'factory'")
        module, sep, func = data.factory.partition(":")
        if not (module and sep and func):
            raise ConfigError(f"{source}: key 'data.factory': must look like 'module:function', "
                              f"got {data.factory!r}")
    if data.source == "imagefolder" and data.path is not None and not Path(data.path).is_dir():
        raise ConfigError(f"{source}: key 'data.path': source 'imagefolder' needs a folder with "
                          f"one subfolder per class, got {data.path}")
    if (data.mean is None) != (data.std is None):
        raise ConfigError(f"{source}: keys 'data.mean' and 'data.std' go together; give both")
    if data.mean is not None and len(data.mean) != len(data.std):
        raise ConfigError(f"{source}: keys 'data.mean' and 'data.std' must have the same length "
                          f"(one entry per channel), got {len(data.mean)} and {len(data.std)}")


def validate_config(raw: Any, base_dir: Path, source: str = "config") -> RunConfig:
    """Validate a parsed YAML mapping and resolve its relative paths against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping, got {type(raw).__name__}")
    check_finite(raw, f"{source}: invalid configuration")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    base = Path(base_dir).resolve()
    cfg.data.path = _resolve(base, cfg.data.path)
    cfg.data.labels = _resolve(base, cfg.data.labels)
    cfg.data.class_list = _resolve(base, cfg.data.class_list)
    if cfg.model is not None:
        cfg.model.weights = _resolve(base, cfg.model.weights)
    cfg.attribution.precomputed = _resolve(base, cfg.attribution.precomputed)
    cfg.output = _resolve(base, cfg.output)
    if isinstance(cfg.pipeline, str) and cfg.pipeline.endswith((".yaml", ".yml")):
        cfg.pipeline = _resolve(base, cfg.pipeline)
    for key, path in (("data.path", cfg.data.path), ("data.labels", cfg.data.labels),
                      ("data.class_list", cfg.data.class_list),
                      ("model.weights", cfg.model.weights if cfg.model else None),
                      ("attribution.precomputed", cfg.attribution.precomputed)):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{source}: key '{key}': file not found: {path}")
    _check_data(cfg.data, source)
    if cfg.model is None and cfg.attribution.precomputed is None:
        raise ConfigError(f"{source}: missing key 'model' (needed unless "
                          f"'attribution.precomputed' names attributions made elsewhere)")
    if cfg.data.source in ("npz", "idx", "hdf5", "zarr", "imagefolder") and cfg.data.path is None:
        raise ConfigError(f"{source}: key 'data.path' is required for source '{cfg.data.source}'")
    if cfg.data.source == "idx" and cfg.data.labels is None:
        raise ConfigError(f"{source}: key 'data.labels' is required for source 'idx'")
    return cfg


def _expanded_size(node, memo: dict, limit: int) -> int:
    """Number of YAML nodes once aliases are expanded (counted on the node graph, so nothing is
    expanded), stopping at ``limit``."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit  # a node reached again while counting it: an alias cycle
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, memo, limit)
        if size >= limit:
            break
    memo[key] = min(size, limit)
    return memo[key]


def read_yaml(path: Path, what: str = "config") -> Any:
    """Parse a YAML file, refusing non-text files and alias bombs, with the file named."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file ({err.reason} at byte {err.start}); give the "
                          f"YAML {what} file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}, MAX_CONFIG_NODES) >= MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: the YAML expands to more than {MAX_CONFIG_NODES} values "
                              f"(aliases repeated inside aliases); refusing to expand it")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply") from None


def load_config(path: str | Path) -> tuple[RunConfig, Path]:
    """Read and validate a run config; returns it with the folder its paths resolve against."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the run config file (YAML) inside it")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = read_yaml(path)
    base = path.resolve().parent
    return validate_config(raw, base, source=str(path)), base


def json_hash(payload) -> str:
    """16 hex digits of the SHA-256 of ``payload`` as canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(cfg: RunConfig) -> str:
    """A stable hash of everything that changes the results (the output folder excluded)."""
    return json_hash(cfg.model_dump(exclude={"output", "cluster"}))


def attribution_hash(cfg: RunConfig) -> str:
    """Fingerprint of the attribution settings (a change means other relevance maps)."""
    return json_hash(cfg.attribution.model_dump(exclude={"batch_size"}))


def dump_config(cfg: RunConfig, base_dir: Path, pipeline: dict) -> str:
    """The resolved config as run, as YAML (pipeline expanded)."""
    data = cfg.model_dump()
    data["pipeline"] = {"preset": pipeline.get("name", "spray-default"),
                        **{k: v for k, v in pipeline.items() if k != "name"}}
    return yaml.safe_dump(data, sort_keys=False)
