"""How unusual a class score is: its rate among the clean class checks of the evaluation.

The score of the rule (docs/verdict.md) is a log-ratio with penalties; on its own it says
nothing about how often a class without an artefact reaches it. This module gives it that
meaning from a reference: the scores of every clean-model and non-planted class check of the
evaluation's design data (``clean_scores.json`` next to this module, written by
``tests/benchmarks/verdict_calibration.py`` from the evaluation's ``draws.json`` files; RGB
scenes and grey images, CNN and ResNet models, two training recipes, draws of 300 samples per
class).

* :func:`clean_rate` — the share of reference checks scoring at least a given score (the
  false-flag rate per class check a threshold at that score would have had there). Above the
  highest :data:`TAIL_SHARE` of the reference (at least :data:`TAIL_MIN` checks) the share
  comes from an exponential tail fitted to them (peaks over a threshold), so that it goes on
  falling beyond the highest reference score; the report also gives the one-sided 95 % upper
  bound that the counts alone allow.
* :func:`threshold_for` — the inverse: the score whose rate is a chosen false-flag rate
  (``flags.false_flag_rate``).

The reference holds for the rule parameters it was measured with; a run whose ``flags`` differ
in any parameter that changes scores gets no rate (None), and ``false_flag_rate`` is refused,
rather than a rate of another rule. Written here (not a library call) because it is a few lines
of order statistics on a few thousand numbers; ``scipy.stats.beta`` gives the bounds.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: the reference file (package data)
REFERENCE = Path(__file__).with_name("clean_scores.json")

#: flags that do not change a class's score (how it is read, not what it is)
NOT_SCORING = frozenset({"threshold", "watch_margin", "false_flag_rate"})

#: the fewest reference checks the exponential tail is fitted to
TAIL_MIN = 25

#: share of the reference (its highest scores) the exponential tail is fitted to
TAIL_SHARE = 0.05

#: one-sided confidence of the upper bound
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Reference:
    """The clean-check scores of the evaluation and the rule parameters they were scored with.

    Attributes
    ----------
    scores : descending scores of the reference checks.
    params : the ``flags`` parameters that change scores, as the reference was scored.
    sources : what the checks came from (setting names and counts), for the report.
    """

    scores: np.ndarray
    params: dict
    sources: list

    @property
    def n(self) -> int:
        return int(self.scores.size)

    @functools.cached_property
    def tail(self) -> tuple[float, float, int]:
        """``(u, scale, m)``: the exponential tail over the ``m``-th highest score ``u``."""
        m = max(TAIL_MIN, int(math.ceil(TAIL_SHARE * self.n)))
        m = min(m, self.n - 1)
        u = float(self.scores[m])
        scale = float(np.mean(self.scores[:m] - u))
        return u, max(scale, 1e-6), m

    def exceeding(self, score: float) -> int:
        """Reference checks scoring at least ``score``."""
        return int(np.searchsorted(-self.scores, -score, side="right"))

    def rate(self, score: float) -> float:
        """The estimated share of clean checks scoring at least ``score``."""
        u, scale, m = self.tail
        if score <= u:
            return self.exceeding(score) / self.n
        return (m / self.n) * math.exp(-(score - u) / scale)

    def upper(self, score: float) -> float:
        """One-sided upper confidence bound of that share from the counts alone."""
        from scipy.stats import beta

        count = self.exceeding(score)
        return 1.0 if count >= self.n else float(beta.ppf(CONFIDENCE, count + 1, self.n - count))

    def threshold(self, rate: float) -> float:
        """The score whose estimated rate is ``rate``."""
        u, scale, m = self.tail
        if rate * self.n > m:
            return float(np.quantile(self.scores, 1.0 - rate))
        return u + scale * math.log(m / (self.n * rate))


def scoring_params(params: dict) -> dict:
    """The flags that change scores (every flag but :data:`NOT_SCORING`)."""
    return {k: v for k, v in params.items() if k not in NOT_SCORING}


@functools.cache
def _load(path: str) -> Reference | None:
    try:
        data = json.loads(Path(path).read_text())
        scores = np.sort(np.asarray(data["scores"], dtype=np.float64))[::-1]
        return Reference(scores=scores, params=dict(data["params"]),
                         sources=list(data.get("sources", [])))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("no clean-score reference (%s): %s", path, exc)
        return None


def reference(params: dict, path: Path | str = REFERENCE) -> Reference | None:
    """The reference, when it was scored with these ``params`` (else None: fail closed)."""
    ref = _load(str(path))
    if ref is None:
        return None
    mine, theirs = scoring_params(params), scoring_params(ref.params)
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        log.info("no clean rate: the flags differ from the reference's in %s",
                 ", ".join(differ))
        return None
    return ref


def clean_rate(score: float, params: dict, path: Path | str = REFERENCE) -> dict | None:
    """How unusual ``score`` is among the reference's clean checks.

    Parameters
    ----------
    score : float
        A class score.
    params : dict
        The ``flags`` parameters the score was computed with.
    path : path-like, optional
        The reference file.

    Returns
    -------
    dict or None
        ``{"rate", "upper", "exceeded", "of"}``: the estimated share of clean checks scoring at
        least ``score``, its one-sided 95 % upper bound from the counts, how many of how many
        reference checks did; None when the reference does not apply to these ``params``.
    """
    ref = reference(params, path)
    if ref is None:
        return None
    return {"rate": float(f"{ref.rate(score):.3g}"), "upper": float(f"{ref.upper(score):.3g}"),
            "exceeded": ref.exceeding(score), "of": ref.n}


def threshold_for(rate: float, params: dict, path: Path | str = REFERENCE) -> float:
    """The score threshold with false-flag rate ``rate`` per clean class check.

    Raises
    ------
    spray.errors.ConfigError
        When the reference does not apply to ``params`` (a rate of another rule is no rate).
    """
    from spray.errors import ConfigError

    ref = reference(params, path)
    if ref is None:
        raise ConfigError("flags.false_flag_rate needs the clean-score reference of these "
                          "flags; they differ from the reference's (set flags.threshold "
                          "instead, see docs/verdict.md \"Calibration\")")
    return round(ref.threshold(rate), 3)


def rate_text(rate: dict) -> str:
    """A :func:`clean_rate` in words (the report and the CI reason)."""
    return (f"clean classes score this high at a rate of ~{rate['rate']:.2g} per class check "
            f"({rate['exceeded']} of {rate['of']} reference checks; at most "
            f"{rate['upper']:.2g} at 95 %)")
