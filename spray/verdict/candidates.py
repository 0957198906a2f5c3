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


def mask_key(mask: np.ndarray) -> bytes:
    """A hashable key of a group's mask: groups with the same members have the same key."""
    return np.packbits(mask).tobytes()


def other_k_groups(result, pipeline: dict, seen: list[np.ndarray]) -> list[ClusterEvidence]:
    """Clusters of k-means on the first K eigenvectors for every other K up to max_clusters
    (groups identical to one in ``seen``, or to an earlier one, dropped)."""
    from spray.analysis.clustering import cluster

    clus = dict(pipeline["clustering"])
    vec = np.asarray(result.eigenvectors)
    K_max = min(int(clus.get("max_clusters", 10)), vec.shape[1], vec.shape[0] - 1)
    keys = {mask_key(m) for m in seen}
    out = []
    for K in range(2, K_max + 1):
        if int(result.n_clusters) == K:
            continue
        lab = cluster(vec, K, clus, affinity=result.affinity)
        for cid in np.unique(lab):
            mask = lab == cid
            key = mask_key(mask)
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


def sweep_cuts(W: sp.csr_matrix, degree: np.ndarray, eigenvectors: np.ndarray, count: int,
               params: FlagsSection, graph: str | None = None) -> list[ClusterEvidence]:
    """Sweep cuts along the leading eigenvectors of the class graph, whatever K was chosen.

    For each of the ``count`` eigenvectors after the first (scaled by D^-1/2, as the random-walk
    Laplacian's), the nodes are ordered by their value and, from each end, the prefix of least
    conductance among the sizes a candidate may have (``min_cluster_fraction`` …
    ``max_cluster_fraction``, at least ``min_cluster_size``) is a candidate: a group the graph
    separates along that direction (Cheeger's sweep). Identical groups are kept once.
    """
    n = W.shape[0]
    lo = max(params.min_cluster_size, int(np.ceil(params.min_cluster_fraction * n)))
    hi = min(int(np.floor(params.max_cluster_fraction * n)), n - 1)
    vec = np.asarray(eigenvectors)
    if hi < lo or vec.ndim != 2:
        return []
    from spray.verdict.graphs import sweep_profile

    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    sizes = np.arange(lo, hi + 1)
    out, keys = [], set()
    for i in range(1, min(count + 1, vec.shape[1])):
        order = np.argsort(vec[:, i] * scale, kind="stable")
        phi = sweep_profile(W, degree, order)            # phi[s - 1]: prefix of length s
        for sign, prefix in ((1, sizes - 1), (-1, n - sizes - 1)):
            size = int(sizes[np.argmin(phi[prefix])])
            members = order[:size] if sign > 0 else order[n - size:]
            mask = np.zeros(n, dtype=bool)
            mask[members] = True
            key = mask_key(mask)
            if key not in keys:
                keys.add(key)
                out.append(ClusterEvidence.of(mask, cut_along=sign * i, cut_graph=graph))
    return out


def edge_cuts(edges: tuple, count: int, params: FlagsSection,
              graph: str = "edges") -> list[ClusterEvidence]:
    """Sweep cuts along the leading ``count`` eigenvectors of the kNN graph of the inputs' edge
    energy (``edges``: the graph and its degrees, :attr:`~spray.verdict.evidence.ClassGraphs.
    edges`): groups that share edges the rest lacks (a stamp, whatever is around it), found
    whether or not the relevance graph separates them (``cut_graph`` ``"edges"``). The same
    for another graph of the class's samples (``graph`` names it: ``"windows"``, the peak
    windows' graph)."""
    from spray.analysis.spectral import smallest_eigenpairs

    W, degree = edges
    if count <= 0 or W.shape[0] < 3:
        return []
    _, vectors = smallest_eigenpairs(W, count + 1, seed=params.seed)
    return sweep_cuts(W, degree, vectors, count, params, graph=graph)
