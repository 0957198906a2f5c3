"""The score of a large class, measured on a stratified random subsample of it.

Every piece of evidence of the rule is a property of the class's distribution — conductances
of a group in kNN graphs of its relevance, its inputs and their edges, each divided by what a
random subset of the group's size would have — so it can be estimated on a random subsample,
as the bootstrap already does with its resamples (``bootstrap_max_samples``) and as the
evaluation does with draws of 300 samples per class. What a subsample cannot change is which
groups are candidates: those come from the analysis of the whole class.

Above ``score_max_samples`` samples (:class:`spray.config.presets.FlagsSection`), the class is
scored on that many of its samples, drawn without replacement within each analysis cluster in
proportion to its size (at least one member each; largest remainders first, seeded by the
``seed`` of the flags). The subsample's relevance graph is built as the analysis builds one for
a class of that size (its own ``k``); the eigenvectors are the whole class's, restricted to the
subsample and rescaled so that the sweep cuts order the subsample as they would order the
whole class (by each eigenvector over the square root of the whole graph's degree). The
verdict's labels are then extended to the samples that were not drawn: a sample keeps its
analysis cluster unless the score split or moved drawn members of that cluster; then it takes
the label its edges in the analysis' relevance graph weigh most among the labelled samples of
the same analysis cluster (the drawn ones first, then outwards in rounds; a sample without
such a path: the label most common among the drawn members of its cluster). Who of a suspect
carries its pattern (:mod:`spray.verdict.members`) is decided afterwards on the whole class:
the members that leave a suspect are near it in the relevance graph, so propagating labels
after that step would bring them back. Sizes, fractions, ``trimmed``, ``joined``,
``pattern_joined`` and ``agreed_joined`` count the whole class; the conductances, contrasts and
penalties are the subsample's, and the verdict says how many samples they were measured on (``scored_on``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)


@dataclass
class SubsampleResult:
    """The parts of an analysis result the rule reads, restricted to a subsample."""

    labels: np.ndarray
    affinity: object
    k: int
    eigenvectors: np.ndarray | None
    n_clusters: int


def stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` row indices (sorted), drawn without replacement within each label in proportion
    to its count (largest remainders first, at least one row per label while ``size`` allows;
    all rows when ``size`` is at least their number)."""
    labels = np.asarray(labels)
    n = len(labels)
    if size >= n:
        return np.arange(n)
    ids, counts = np.unique(labels, return_counts=True)
    quota = _quotas(counts, size)
    rng = np.random.default_rng(seed)
    rows = [rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
            for c, q in zip(ids, quota) if q]
    return np.sort(np.concatenate(rows))


def _quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """Rows per label summing to ``size`` (< counts.sum()): proportional, largest remainders
    first, at least one per label while ``size`` allows (the smallest labels go without
    first), never more than a label holds."""
    exact = counts * size / counts.sum()
    quota = np.floor(exact).astype(int)
    order = np.argsort(-counts, kind="stable")
    empty = order[quota[order] == 0]
    give = min(len(empty), max(size - int(quota.sum()), 0))
    quota[empty[:give]] = 1                      # at least one each, largest labels first
    spare = np.argsort(-(exact - quota), kind="stable")
    while int(quota.sum()) < size:               # the rest by largest remainder, where room is
        for i in spare:
            if quota.sum() >= size:
                break
            if quota[i] < counts[i]:
                quota[i] += 1
    return quota


def restrict(result, rows: np.ndarray, features: np.ndarray, pipeline: dict) -> SubsampleResult:
    """The analysis result of the class restricted to ``rows``, with the relevance kNN graph
    of those rows built as the analysis builds it for a class of their number."""
    from spray.analysis.knn import resolve_k
    from spray.verdict.graphs import knn_graph

    affinity = dict(pipeline["affinity"])
    affinity["k"] = resolve_k(len(rows), affinity.get("k", "auto"))
    W, degree = knn_graph(np.ascontiguousarray(features[rows], dtype=np.float32), affinity)
    vec = getattr(result, "eigenvectors", None)
    if vec is not None:
        # the sweep cuts order samples by vec / sqrt(degree) of the graph they are given: scale
        # the restricted rows so that this is the whole class's ordering (k-means on the rows,
        # normalized per row, is unchanged)
        whole = np.asarray(sp.csr_matrix(result.affinity).sum(axis=1)).ravel()[rows]
        vec = np.asarray(vec)[rows] * np.sqrt(np.maximum(degree, 1e-12)
                                              / np.maximum(whole, 1e-12))[:, None]
    labels = np.asarray(result.labels)[rows]
    return SubsampleResult(labels=labels, affinity=W, k=int(affinity["k"]), eigenvectors=vec,
                           n_clusters=int(len(np.unique(labels))))


def extend_labels(labels: np.ndarray, rows: np.ndarray, sub_labels: np.ndarray,
                  W: sp.spmatrix) -> np.ndarray:
    """Whole-class labels from the subsample's verdict labels (see the module docstring).

    Parameters
    ----------
    labels : ``(n,)`` the analysis' labels of the whole class.
    rows : ``(m,)`` the drawn rows.
    sub_labels : ``(m,)`` the verdict's labels of the drawn rows.
    W : ``(n, n)`` the analysis' relevance kNN graph of the whole class.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    out[rows] = sub_labels
    known = np.zeros(len(labels), dtype=bool)
    known[rows] = True
    changed = [c for c in np.unique(labels) if (out[rows][labels[rows] == c] != c).any()]
    todo = np.isin(labels, changed) & ~known
    W = sp.csr_matrix(W)
    while todo.any():
        done = _propagate(W, np.flatnonzero(todo), labels, out, known)
        if not len(done):
            break
        known[done] = True
        todo[done] = False
    for c in np.unique(labels[todo]):    # no path to a drawn member of their cluster
        values, counts = np.unique(out[rows][labels[rows] == c], return_counts=True)
        out[todo & (labels == c)] = values[counts.argmax()]
    return out


def _propagate(W: sp.csr_matrix, rows: np.ndarray, labels: np.ndarray, out: np.ndarray,
               known: np.ndarray) -> np.ndarray:
    """One round: each of ``rows`` with edges to labelled samples of its own analysis cluster
    takes the label those edges weigh most (in place in ``out``); returns the rows labelled."""
    edges = W[rows].tocoo()
    src, dst, weight = rows[edges.row], edges.col, edges.data
    ok = known[dst] & (labels[dst] == labels[src])
    if not ok.any():
        return np.empty(0, dtype=np.intp)
    src, dst, weight = src[ok], dst[ok], weight[ok]
    values, code = np.unique(out[dst], return_inverse=True)
    pair, where = np.unique(src * len(values) + code, return_inverse=True)
    total = np.bincount(where, weights=weight)
    row_of, label_of = np.divmod(pair, len(values))
    order = np.lexsort((-total, row_of))          # per row, the heaviest label first
    first = np.ones(len(order), dtype=bool)
    first[1:] = row_of[order][1:] != row_of[order][:-1]
    best = order[first]
    out[row_of[best]] = values[label_of[best]]
    return row_of[best]
