"""Relevance health: does an explanation add up, and is it numerically sound?

LRP redistributes the explained logit over the input.  Biases, stabilisers (ε) and rules that
do not conserve (AttnLRP's softmax rule, αβ with unbalanced shares) lose or add relevance on
the way; deep models can produce NaN/Inf or vanishing maps.  These pure functions turn a batch
of maps into per-sample numbers and per-class summaries, for any model and composite:

``conservation``
    ``Σ input relevance / explained logit`` (1 for a conserving explanation; NaN when the logit
    is zero or the map is not finite);
``lost``
    ``1 − conservation``: the share absorbed by biases, stabilisers and non-conserving rules
    (negative when relevance is created);
``nonfinite``
    number of NaN/Inf entries of the map;
``zero``
    whether the map is all zeros (no relevance reached the input).
"""

from __future__ import annotations

import numpy as np

from spray.errors import DataError

__all__ = ["relevance_health", "summarize_health"]


def _numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def relevance_health(relevance, explained) -> dict:
    """Per-sample health figures of a batch of relevance maps.

    Parameters
    ----------
    relevance:
        maps ``(n, ...)`` (torch tensor or array).
    explained:
        the explained output per sample ``(n,)``: the logit of the target class (the relevance
        put in at the output).

    Returns
    -------
    dict
        ``conservation`` (float64, ``(n,)``), ``lost`` (float64), ``nonfinite`` (int64) and
        ``zero`` (bool) arrays, one entry per sample.
    """
    maps = _numpy(relevance).astype(np.float64, copy=False)
    explained = _numpy(explained).astype(np.float64, copy=False).reshape(-1)
    if maps.ndim < 1 or maps.shape[0] != explained.shape[0]:
        raise DataError(f"relevance of shape {maps.shape} and explained outputs of shape "
                         f"{explained.shape} do not describe the same samples")
    flat = maps.reshape(maps.shape[0], -1)
    finite = np.isfinite(flat)
    nonfinite = (~finite).sum(axis=1).astype(np.int64)
    totals = np.where(nonfinite == 0, flat.sum(axis=1, where=finite), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        conservation = np.where(explained != 0, totals / explained, np.nan)
    zero = np.logical_and(nonfinite == 0, ~np.any(flat != 0, axis=1, where=finite))
    return {"conservation": conservation, "lost": 1.0 - conservation, "nonfinite": nonfinite,
            "zero": zero}


def summarize_health(health: dict, labels=None) -> dict:
    """Summaries of :func:`relevance_health` figures, over all samples and per class.

    Parameters
    ----------
    health:
        the output of :func:`relevance_health` (possibly concatenated over batches).
    labels:
        class per sample (optional); adds one summary per class under ``"classes"``.

    Returns
    -------
    dict
        ``{"all": summary, "classes": {label: summary}}``; a summary holds ``samples``,
        the median, 5th/95th percentile, minimum and maximum of the conservation ratio over the
        samples where it is defined, the median share ``lost``, and the counts of samples with
        non-finite entries (``nonfinite_samples``), of all-zero maps (``zero_maps``) and of
        undefined ratios (``undefined``).  Plain Python numbers (JSON-ready).
    """
    result = {"all": _summary(health, np.ones(len(health["conservation"]), dtype=bool))}
    if labels is not None:
        labels = _numpy(labels).reshape(-1)
        result["classes"] = {
            _plain(label): _summary(health, labels == label) for label in np.unique(labels)}
    return result


def _summary(health: dict, mask: np.ndarray) -> dict:
    ratio = health["conservation"][mask]
    defined = ratio[np.isfinite(ratio)]

    def stat(fn, *args):
        return float(fn(defined, *args)) if defined.size else None

    return {
        "samples": int(mask.sum()),
        "conservation_median": stat(np.median),
        "conservation_p05": stat(np.percentile, 5),
        "conservation_p95": stat(np.percentile, 95),
        "conservation_min": stat(np.min),
        "conservation_max": stat(np.max),
        "lost_median": (1.0 - float(np.median(defined))) if defined.size else None,
        "nonfinite_samples": int((health["nonfinite"][mask] > 0).sum()),
        "zero_maps": int(health["zero"][mask].sum()),
        "undefined": int(ratio.size - defined.size),
    }


def _plain(value):
    return value.item() if hasattr(value, "item") else value
