"""How unusual a class score is: its rate among the clean class checks of the evaluation.

The score of the rule (docs/verdict.md) is a log-ratio with penalties; on its own it says
nothing about how often a class without an artefact reaches it. This module gives it that
meaning from a reference: the scores of every clean-model and non-planted class check of the
evaluation's design data (``clean_scores.json`` next to this module, written by
``tests/benchmarks/verdict_calibration.py`` from the evaluation's ``draws.json`` files; RGB
scenes and grey images, CNN and ResNet models, two training recipes, draws of 300 samples per
class).

* :func:`clean_rate` — the share of reference checks scoring at least a given score (the
  false-flag rate per class check a threshold at that score would have had there), and the
  one-sided 95 % upper bound the counts allow. Above the highest reference score, where no
  check reaches, the share falls on from ``1/n`` as an exponential tail whose scale is the mean
  excess of the highest :data:`TAIL_SHARE` of the reference (at least :data:`TAIL_MIN` checks)
  over the lowest of them: an extrapolation, flagged as such by ``exceeded: 0``.
* :func:`threshold_for` — the inverse: the lowest score (to 0.001) whose rate is at most a
  chosen false-flag rate (``flags.false_flag_rate``).

The reference holds for what it was scored with: the rule's flags (every one but
:data:`NOT_SCORING`) and the analysis sections of the pipeline (:data:`SECTIONS`). Where a run
differs in any of them it gets no rate (None), and ``false_flag_rate`` is refused, rather than a
rate of another rule. Written here (not a library call) because it is a few lines of order
statistics on a few thousand numbers; ``scipy.stats.beta`` gives the bound.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: the reference file (package data)
REFERENCE = Path(__file__).with_name("clean_scores.json")

#: flags that do not change a class's score (how it is read, who of a suspect is reported, or
#: whether the model follows it; not what it is). ``threshold`` does: it is also the bar a half
#: or sweep cut must reach to split off while a class is scored
NOT_SCORING = frozenset({"watch_margin", "false_flag_rate", "peak_guard_iqr",
                         "peak_window_doublings", "peak_carrier_gap", "peak_far_iqr",
                         "peak_place_share", "peak_place_carriers",
                         "pattern_trim_iqr", "pattern_join_iqr", "pattern_join_gap",
                         "agreement_spread",
                         "agreement_trim_spread",
                         "agreement_anywhere", "aligned_agreement",
                         "transplant_pairs", "transplant_min_effect", "transplant_min_z",
                         "transplant_max_pairs", "transplant_reach", "transplant_near_tries",
                         "transplant_near_effect", "transplant_near_z",
                         "transplant_near_spread", "transplant_near_agreed",
                         "transplant_near_max_pairs", "transplant_confirm",
                         "carried_candidates", "recurring_candidates", "recurrence_samples",
                         "recurrence_seeds", "recurring_detail"})

#: the pipeline sections that change scores besides the flags (the embedding does not)
SECTIONS = ("preprocess", "affinity", "spectral", "clustering")

#: the fewest reference checks the tail's scale is measured on, and the fewest a reference holds
TAIL_MIN = 25

#: share of the reference (its highest scores) the tail's scale is measured on
TAIL_SHARE = 0.05

#: one-sided confidence of the upper bound
CONFIDENCE = 0.95


class NoReference(ValueError):
    """The reference is missing, unreadable, or was scored with other flags or sections."""


@dataclass(frozen=True)
class Reference:
    """The clean-check scores of the evaluation and what they were scored with.

    Attributes
    ----------
    scores : descending, finite scores of the reference checks.
    params : the ``flags`` parameters that change scores, as the reference was scored.
    sections : the pipeline's :data:`SECTIONS` it was scored with.
    sources : what the checks came from (setting names and counts).
    digest : the first 12 hex digits of the file's SHA-256 (which reference gave a rate).
    """

    scores: np.ndarray
    params: dict
    sections: dict
    sources: list
    digest: str

    @property
    def n(self) -> int:
        return int(self.scores.size)

    @functools.cached_property
    def scale(self) -> float:
        """Mean excess of the highest ``m`` scores over the ``m+1``-th (the tail's scale)."""
        m = min(max(TAIL_MIN, int(math.ceil(TAIL_SHARE * self.n))), self.n - 1)
        return max(float(np.mean(self.scores[:m] - self.scores[m])), 1e-3)

    def exceeding(self, score: float) -> int:
        """Reference checks scoring at least ``score``."""
        return int(np.searchsorted(-self.scores, -score, side="right"))

    def rate(self, score: float) -> float:
        """The share of reference checks scoring at least ``score``; above the highest, its
        exponential extrapolation from ``1/n``."""
        count = self.exceeding(score)
        if count:
            return count / self.n
        return math.exp(-(score - float(self.scores[0])) / self.scale) / self.n

    def upper(self, score: float) -> float:
        """One-sided upper confidence bound of that share from the counts alone."""
        from scipy.stats import beta

        count = self.exceeding(score)
        return 1.0 if count >= self.n else float(beta.ppf(CONFIDENCE, count + 1, self.n - count))

    def threshold(self, rate: float) -> float:
        """The lowest score, to 0.001, whose :meth:`rate` is at most ``rate``."""
        allowed = int(math.floor(rate * self.n + 1e-9))      # checks that may reach it
        if allowed >= self.n:
            return math.floor(1000 * float(self.scores[-1])) / 1000
        if allowed:
            above = float(np.nextafter(self.scores[allowed], np.inf))
        else:
            above = float(self.scores[0]) + self.scale * math.log(1.0 / (self.n * rate))
        return math.ceil(1000 * above) / 1000


#: the flags of window cuts, which change no score while ``window_sweep_eigenvectors`` is 0
WINDOW_FLAGS = frozenset({"window_side", "window_mass_knee", "window_mass_weight"})

#: the flags of the hot spot in its pixels, which change no score while
#: ``hot_spot_agreement_spread`` is None (nor does that switch itself then: the reference,
#: scored before it existed, holds none of them)
PIXEL_FLAGS = frozenset({"hot_spot_agreement_spread", "hot_spot_agreed_share"})

#: the colocation in the pixels: off (False), or without the pixel separation that gates it
#: (``hot_spot_agreement_spread`` None), it changes no score, and the reference, scored before
#: it existed, holds no such flag
COLOCATION_FLAGS = frozenset({"colocation_pixels"})


def scoring_params(params: dict) -> dict:
    """The flags that change scores (every flag but :data:`NOT_SCORING`, the
    :data:`WINDOW_FLAGS` while window cuts are off, the :data:`PIXEL_FLAGS` while the hot
    spot is not measured in its pixels and the :data:`COLOCATION_FLAGS` while the colocation
    is not)."""
    idle = ((WINDOW_FLAGS if not params.get("window_sweep_eigenvectors") else frozenset())
            | (PIXEL_FLAGS if params.get("hot_spot_agreement_spread") is None else frozenset())
            | (COLOCATION_FLAGS if not params.get("colocation_pixels")
               or params.get("hot_spot_agreement_spread") is None else frozenset()))
    return {k: v for k, v in params.items() if k not in NOT_SCORING and k not in idle}


def scoring_sections(pipeline: dict) -> dict:
    """The pipeline's :data:`SECTIONS` (what the reference must have been scored with)."""
    return {k: pipeline.get(k) for k in SECTIONS}


def _load(path: Path) -> Reference:
    stat = path.stat()
    return _parse(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _parse(path: str, _mtime: int, _size: int) -> Reference:
    """The reference file, checked (cached per file version; failures are not cached)."""
    raw = Path(path).read_bytes()
    data = json.loads(raw)
    scores = np.sort(np.asarray(data["scores"], dtype=np.float64))[::-1]
    if scores.size <= TAIL_MIN or not np.isfinite(scores).all():
        raise NoReference(f"{path}: needs more than {TAIL_MIN} finite scores")
    return Reference(scores=scores, params=dict(data["params"]),
                     sections=dict(data["sections"]), sources=list(data.get("sources", [])),
                     digest=hashlib.sha256(raw).hexdigest()[:12])


def reference(params: dict, pipeline: dict, path: Path | str = REFERENCE) -> Reference:
    """The reference, when it was scored with these flags and pipeline sections.

    Raises
    ------
    NoReference
        Missing or unreadable, or scored with other flags or sections (which it names).
    """
    try:
        ref = _load(Path(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NoReference(f"no clean-score reference ({exc})") from None
    mine = {**scoring_params(params), **scoring_sections(pipeline)}
    theirs = {**scoring_params(ref.params), **ref.sections}
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        raise NoReference("the clean-score reference was scored with other "
                          + ", ".join(differ))
    return ref


def clean_rate(score: float, params: dict, pipeline: dict,
               path: Path | str = REFERENCE) -> dict | None:
    """How unusual ``score`` is among the reference's clean checks.

    Parameters
    ----------
    score : float
        A class score.
    params : dict
        The ``flags`` parameters the score was computed with.
    pipeline : dict
        The pipeline (its :data:`SECTIONS`).
    path : path-like, optional
        The reference file.

    Returns
    -------
    dict or None
        ``{"rate", "upper", "exceeded", "of", "reference"}``: the share of clean checks
        scoring at least ``score`` (extrapolated where ``exceeded`` is 0), its one-sided 95 %
        upper bound from the counts, how many of how many reference checks did, and the
        reference's digest; None where the reference does not apply (logged).
    """
    try:
        ref = reference(params, pipeline, path)
    except NoReference as exc:
        log.info("no clean rate: %s", exc)
        return None
    return {"rate": float(f"{ref.rate(score):.3g}"), "upper": float(f"{ref.upper(score):.3g}"),
            "exceeded": ref.exceeding(score), "of": ref.n, "reference": ref.digest}


def threshold_for(rate: float, params: dict, pipeline: dict,
                  path: Path | str = REFERENCE) -> float:
    """The score threshold with false-flag rate ``rate`` per clean class check.

    Raises
    ------
    spray.errors.ConfigError
        When the reference does not apply (a rate of another rule is no rate).
    """
    from spray.errors import ConfigError

    try:
        ref = reference(params, pipeline, path)
    except NoReference as exc:
        raise ConfigError(f"flags.false_flag_rate cannot be used: {exc} (set flags.threshold "
                          "instead; docs/verdict.md, \"Calibration\")") from None
    return ref.threshold(rate)


def reference_digest(path: Path | str = REFERENCE) -> str | None:
    """The reference's digest (None when it cannot be read)."""
    try:
        return _load(Path(path)).digest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rate_text(rate: dict) -> str:
    """A :func:`clean_rate` in words (the report and the CI reason)."""
    bound = f"at most {rate['upper']:.2g} at 95 %"
    if rate["exceeded"]:
        return (f"clean classes score this high at a rate of {rate['rate']:.2g} per class check "
                f"({rate['exceeded']} of {rate['of']} reference checks; {bound})")
    return (f"no clean class of the reference scored this high (0 of {rate['of']} checks; "
            f"{bound}; extrapolated ~{rate['rate']:.2g})")
