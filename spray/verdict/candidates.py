"""Candidate groups of a class: the analysis' clusters, halves of them, clusters of other K."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from spray.config.presets import FlagsSection
from spray.verdict.graphs import bisect
from spray.verdict.result import ClusterEvidence


def analysis_clusters(labels: np.ndarray) -> list[ClusterEvidence]:
    """One entry per cluster of the analysis (label −1, unassigned, included)."""
    return [ClusterEvidence.of(labels == cid, id=int(cid)) for cid in np.unique(labels)]


def halves(W: sp.csr_matrix, clusters: list[ClusterEvidence], min_size: int,
           seed: int) -> list[ClusterEvidence]:
    """Both sides of the spectral bisection of every cluster of at least ``min_size`` samples
    (not of the unassigned samples, label −1)."""
    out = []
    for c in clusters:
        if c.id < 0 or c.size < min_size:
            continue
        side = bisect(W, c.mask, seed)
        if side is not None:
            out += [ClusterEvidence.of(side, half_of=c.id),
                    ClusterEvidence.of(c.mask & ~side, half_of=c.id)]
    return out


def other_k_groups(result, pipeline: dict, seen: list[np.ndarray]) -> list[ClusterEvidence]:
    """Clusters of k-means on the first K eigenvectors for every other K up to max_clusters
    (groups identical to one in ``seen``, or to an earlier one, dropped)."""
    from spray.analysis.clustering import cluster

    clus = dict(pipeline["clustering"])
    vec = np.asarray(result.eigenvectors)
    K_max = min(int(clus.get("max_clusters", 10)), vec.shape[1], vec.shape[0] - 1)
    keys = {np.packbits(m).tobytes() for m in seen}
    out = []
    for K in range(2, K_max + 1):
        if int(result.n_clusters) == K:
            continue
        lab = cluster(vec, K, clus, affinity=result.affinity)
        for cid in np.unique(lab):
            mask = lab == cid
            key = np.packbits(mask).tobytes()
            if key in keys:
                continue
            keys.add(key)
            out.append(ClusterEvidence.of(mask, n_clusters=K, cluster=int(cid)))
    return out


def candidate_groups(result, pipeline: dict, params: FlagsSection,
                     W: sp.csr_matrix) -> tuple[list, list, list]:
    """The groups a class is scored on: ``(clusters, halves, other_k)``."""
    clusters = analysis_clusters(np.asarray(result.labels))
    cut = halves(W, clusters, 4 * params.min_cluster_size, params.seed) \
        if params.bisect_clusters else []
    other = other_k_groups(result, pipeline, [g.mask for g in clusters + cut]) \
        if params.candidates == "all-k" else []
    return clusters, cut, other
