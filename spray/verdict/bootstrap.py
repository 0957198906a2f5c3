"""Stability of a candidate's contrast over subsamples of its class (the stable contrast)."""

from __future__ import annotations

import math

import numpy as np

from spray.config.presets import FlagsSection
from spray.verdict.evidence import contrast, subsample_size
from spray.verdict.graphs import (
    GraphCache,
    extended_k,
    knn_graph,
    mask_conductance,
    unmasked_search,
)
from spray.verdict.result import ClusterEvidence


class Resamples:
    """The bootstrap's subsamples of a class, their relevance graphs built once and shared.

    ``contrasts(inputs, mask)`` gives the contrast of ``mask`` on every subsample, with the input
    graph of ``inputs`` rebuilt on the subsample (the same array for several candidates is
    graphed once per subsample). The subsample graphs are taken from one neighbour search of
    each array on the whole class (:class:`~spray.verdict.graphs.NeighbourLists`, the same
    graphs as searching each subsample); ``cache`` shares those searches with the evidence.
    """

    def __init__(self, features: np.ndarray, pipeline: dict, k: int, params: FlagsSection,
                 cache: GraphCache | None = None):
        n = len(features)
        B = params.bootstrap
        m = subsample_size(n, params)
        self.floor = params.conductance_floor
        self.features = features
        self.k = int(min(k, m - 2))
        if cache is None:
            aff = dict(pipeline["affinity"], k=int(k))
            cache = GraphCache(aff, extended_k(k, n, m, B))
        self.cache = cache
        rng = np.random.default_rng(params.seed)
        enough = B > 0 and m >= max(10, k + 2)
        self.subsets = [np.sort(rng.choice(n, size=m, replace=False)) for _ in range(B)] \
            if enough else []
        self._relevance = {}
        self._inputs = {}

    def _relevance_graph(self, idx: np.ndarray) -> tuple:
        """The relevance graph of the resample ``idx``: from the features' lists (searched once,
        as the masked inputs are) when the lists are long enough, else its own search."""
        if self.cache.k_ext <= int(self.cache.affinity["k"]):
            return knn_graph(self.features[idx], dict(self.cache.affinity, k=self.k))
        return self.cache.lists(self.features, unmasked_search(self.features)).subsample(
            idx, self.k)

    def contrasts(self, inputs: np.ndarray, mask: np.ndarray) -> list[float]:
        """The contrast of ``mask`` (inputs ``inputs``) on each subsample that keeps two
        members on either side."""
        out = []
        for b, idx in enumerate(self.subsets):
            sub = mask[idx]
            if sub.sum() < 2 or (~sub).sum() < 2:
                continue
            if b not in self._relevance:
                self._relevance[b] = self._relevance_graph(idx)
            key = (id(inputs), b)
            if key not in self._inputs:
                self._inputs[key] = self.cache.lists(inputs).subsample(idx, self.k)
            out.append(contrast(mask_conductance(*self._inputs[key], sub),
                                mask_conductance(*self._relevance[b], sub), self.floor))
        return out


def set_stable(entry: ClusterEvidence, values: list[float], params: FlagsSection) -> None:
    """Stable contrast (bootstrap quantile, capped by the plain contrast) and score of a
    candidate from its resampled contrasts (none: the plain contrast)."""
    if values:
        stable = float(np.quantile(values, params.bootstrap_quantile))
        entry.contrast_stable = round(min(stable, entry.contrast), 4)
    else:
        entry.contrast_stable = entry.contrast
    entry.score = round(entry.contrast_stable - entry.penalty, 4)


def upper_score(entry: ClusterEvidence) -> float:
    """The plain score, an upper bound of the stable one (the stable contrast never exceeds the
    plain contrast)."""
    return entry.contrast - entry.penalty


def stabilize(candidates: list[ClusterEvidence], resamples: Resamples | None,
              params: FlagsSection) -> None:
    """Score every candidate, resampling from the highest plain score down.

    Once a cluster's plain score can beat neither the best stable score found nor reach the
    threshold, resampling it cannot change the class score or the suspects: it keeps its plain
    score (``resampled = False``). A half counts only as a suspect that outscores its cluster,
    so it is resampled only if its plain score reaches the threshold and exceeds its cluster's
    stable score (when known). With ``candidates: all-k`` every candidate is resampled (a group
    of another K can lift an analysis cluster). Candidates below ``min_concentration`` are
    excluded (not scored).
    """
    gate = params.min_concentration
    prune = params.candidates == "analysis"
    threshold = params.threshold
    best_stable, stable_of = -math.inf, {}
    for entry in sorted(candidates, key=lambda e: -upper_score(e)):
        if gate > 0 and (entry.concentration if entry.concentration is not None else 1.0) < gate:
            entry.excluded = f"concentration {entry.concentration} < {gate}"
            continue
        values = []
        if resamples is not None and resamples.subsets:
            if entry.half_of is not None:
                bar = max(threshold, stable_of.get(entry.half_of, -math.inf) + 1e-9)
            else:
                bar = min(best_stable, threshold)
            if prune and upper_score(entry) < bar:
                entry.resampled = False
                entry.score = round(upper_score(entry), 4)
                continue
            values = resamples.contrasts(entry.inputs, entry.mask)
        set_stable(entry, values, params)
        if entry.half_of is None:
            best_stable = max(best_stable, entry.score)
            if entry.id is not None:
                stable_of[entry.id] = entry.score


def verify(entry: ClusterEvidence, resamples: Resamples | None, params: FlagsSection,
           bar: float | None = None) -> None:
    """Resample a candidate that kept its plain score but now reaches ``bar`` (default: the
    threshold; the other side of a split can become a suspect)."""
    bar = params.threshold if bar is None else bar
    if entry.resampled is False and entry.score >= bar and resamples is not None:
        entry.resampled = None
        set_stable(entry, resamples.contrasts(entry.inputs, entry.mask), params)


def stabilize_cuts(cuts: list[ClusterEvidence], resamples: Resamples | None,
                   params: FlagsSection, bar: float) -> None:
    """Score sweep cuts that could become the suspect: resampled from the highest plain score
    down while their plain score reaches ``bar`` (the threshold, or the best cluster score if
    higher), which rises to each stable score found; the others keep their plain score."""
    for entry in sorted(cuts, key=lambda e: -upper_score(e)):
        if upper_score(entry) < bar:
            entry.resampled = False
            entry.score = round(upper_score(entry), 4)
            continue
        values = resamples.contrasts(entry.inputs, entry.mask) if resamples is not None else []
        set_stable(entry, values, params)
        bar = max(bar, entry.score + 1e-9)
