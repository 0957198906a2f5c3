"""Turning a suspect half into a cluster of its own, and lifting clusters by groups of other K."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from spray.verdict.result import ClusterEvidence


def jaccard(a: ClusterEvidence, b: ClusterEvidence) -> float:
    """Jaccard index of two groups' member masks."""
    return float((a.mask & b.mask).sum() / (a.mask | b.mask).sum())


def _as_cluster(half: ClusterEvidence, cid: int) -> ClusterEvidence:
    return replace(half, id=int(cid), half_of=None)


def split_suspect_halves(labels: np.ndarray, clusters: list[ClusterEvidence],
                         halves: list[ClusterEvidence], threshold: float):
    """Split a cluster whose better half is a suspect that outscores the whole cluster.

    The half becomes a new cluster (the next free id), the cluster keeps its other half, and
    both take the entries (scores, evidence) measured on them.

    Returns
    -------
    labels : numpy.ndarray
        The labels with the splits.
    clusters : list of ClusterEvidence
        One entry per cluster of the new labels, by id.
    splits : list of dict
        ``{"cluster": new id, "from": old id}`` per split.
    """
    labels = np.array(labels)
    next_id = int(labels.max()) + 1 if labels.size else 0
    out, splits = [], []
    for c in clusters:
        sides = [h for h in halves if h.half_of == c.id]
        best = max((h for h in sides if h.score is not None), key=lambda h: h.score,
                   default=None)
        own = c.score if c.score is not None else -math.inf
        if best is None or best.score < threshold or best.score <= own:
            out.append(c)
            continue
        rest = next(h for h in sides if h is not best)
        labels[best.mask] = next_id
        out.append(_as_cluster(rest, c.id))
        out.append(replace(_as_cluster(best, next_id), split_from=c.id))
        splits.append({"cluster": next_id, "from": c.id})
        next_id += 1
    return labels, sorted(out, key=lambda c: c.id), splits


def lift_by_other_k(clusters: list[ClusterEvidence], other_k: list[ClusterEvidence],
                    min_jaccard: float) -> None:
    """A group isolated at another K lifts the score of the analysis cluster it overlaps with
    Jaccard ≥ ``min_jaccard`` to its own score (``score_from_k`` names it)."""
    for c in clusters:
        if c.score is None:
            continue
        for o in other_k:
            if o.score is None or o.score <= c.score:
                continue
            jac = jaccard(c, o)
            if jac >= min_jaccard:
                c.score = o.score
                c.score_from_k, c.jaccard = o, round(jac, 4)


def split_off_sweep(labels: np.ndarray, clusters: list[ClusterEvidence],
                    sweeps: list[ClusterEvidence], threshold: float, min_jaccard: float):
    """Make the best sweep cut a cluster of its own when it is a suspect that outscores every
    cluster and no cluster already holds it (Jaccard ≥ ``min_jaccard``).

    Its members leave their clusters (which keep the rest and must be measured again: their
    entries are returned in ``changed``) and take the next free id; ``split_from`` names the
    cluster that held most of them.

    Returns
    -------
    labels, clusters, splits, changed
    """
    best_cluster = max((c.score for c in clusters if c.score is not None), default=-math.inf)
    best = max((s for s in sweeps if s.score is not None), key=lambda s: s.score, default=None)
    if best is None or best.score < threshold or best.score <= best_cluster:
        return labels, clusters, [], []
    if any(jaccard(c, best) >= min_jaccard for c in clusters):
        return labels, clusters, [], []
    return split_cut(labels, clusters, best)


def split_cut(labels: np.ndarray, clusters: list[ClusterEvidence], cut: ClusterEvidence):
    """Make ``cut`` a cluster of its own: its members leave their clusters (which keep the rest
    and must be measured again: their entries are returned in ``changed``) and take the next
    free id; ``split_from`` names the cluster left that held most of them. A cluster all of
    whose members the cut holds is absorbed: it is gone, and the split names it under
    ``absorbed`` (``split_from`` is None when every cluster it took members from is).

    Returns
    -------
    labels, clusters, splits, changed
    """
    labels = np.array(labels)
    new_id = int(labels.max()) + 1 if labels.size else 0
    absorbed = [c.id for c in clusters if c.size and not (c.mask & ~cut.mask).any()]
    left = cut.mask & ~np.isin(labels, absorbed)
    parent = (int(np.argmax(np.bincount(labels[left] - labels.min())) + labels.min())
              if left.any() else None)
    labels[cut.mask] = new_id
    out, changed = [], []
    for c in clusters:
        if not (c.mask & cut.mask).any():
            out.append(c)
        elif (c.mask & ~cut.mask).any():
            changed.append(ClusterEvidence.of(labels == c.id, id=c.id, split_from=c.split_from))
            out.append(changed[-1])
    out.append(replace(cut, id=new_id, split_from=parent))
    split = {"cluster": new_id, "from": parent, **({"absorbed": absorbed} if absorbed else {})}
    return labels, sorted(out, key=lambda c: c.id), [split], changed
