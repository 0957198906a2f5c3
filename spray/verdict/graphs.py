"""Graph measures the verdict needs: conductance, a random subset's conductance, sweep cuts.

Every graph is a symmetric sparse affinity ``W`` (csr) carried with its node degrees, as
:func:`with_degree` returns it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def with_degree(W) -> tuple[sp.csr_matrix, np.ndarray]:
    """A graph as CSR with its node degrees (what the conductances need)."""
    W = sp.csr_matrix(W)
    return W, np.asarray(W.sum(axis=1)).ravel()


def knn_graph(X: np.ndarray, affinity_params: dict) -> tuple[sp.csr_matrix, np.ndarray]:
    """The kNN affinity of ``X`` built as the analysis builds it, with its degrees."""
    from spray.analysis.knn import knn_affinity

    return with_degree(knn_affinity(X, affinity_params))


def mask_conductance(W: sp.csr_matrix, degree: np.ndarray, mask: np.ndarray) -> float:
    """Edge weight leaving ``mask`` over the smaller of the two volumes (0 for a component)."""
    vol_in, vol_out = degree[mask].sum(), degree[~mask].sum()
    if min(vol_in, vol_out) <= 0:
        return 0.0
    internal = W[mask][:, mask].sum()
    cut = vol_in - internal
    return float(max(cut, 0.0) / min(vol_in, vol_out))


def conductance(W, members: np.ndarray) -> float:
    """Conductance of the nodes ``members`` (indices) in the graph ``W``."""
    mask = np.zeros(W.shape[0], dtype=bool)
    mask[members] = True
    return mask_conductance(*with_degree(W), mask)


def random_conductance(size: int, n: int) -> float:
    """Expected conductance of a random subset of ``size`` of ``n`` nodes: max(s, n − s)/(n − 1).

    Each edge is cut with probability 2 s (n − s) / (n (n − 1)) and the volumes are shared in
    proportion to the sizes, so E[cut] / min(E[vol S], E[vol rest]) = max(s, n − s) / (n − 1)
    whatever the graph.
    """
    return max(size, n - size) / max(n - 1, 1)


def sweep_profile(W: sp.csr_matrix, degree: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Conductance of every prefix of ``order`` (lengths 1 … n − 1), in one pass over the edges."""
    n = len(order)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    coo = sp.triu(W, k=1).tocoo()
    lo, hi = np.minimum(pos[coo.row], pos[coo.col]), np.maximum(pos[coo.row], pos[coo.col])
    # an edge is cut by every prefix that holds its earlier end but not its later one
    diff = np.bincount(lo, coo.data, n + 1) - np.bincount(hi, coo.data, n + 1)
    cut = np.cumsum(diff)[:n - 1]
    vol = np.cumsum(degree[order])[:n - 1]
    return cut / np.maximum(np.minimum(vol, degree.sum() - vol), 1e-12)


def sweep_cut(W: sp.csr_matrix, degree: np.ndarray, order: np.ndarray) -> int:
    """Length of the prefix of ``order`` with the smallest conductance (1 … n − 1)."""
    return int(np.argmin(sweep_profile(W, degree, order))) + 1


def bisect(W: sp.csr_matrix, members: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """One side of a cluster's own spectral bisection (Shi & Malik's 2-way normalized cut).

    The cluster's subgraph is cut where its Fiedler vector (the second eigenvector of the
    normalized Laplacian, scaled by D^-1/2) gives the smallest conductance: a sweep over the
    nodes in Fiedler order, every prefix a candidate cut (Cheeger's sweep). A subgraph of several
    connected components is cut between its largest component and the rest.

    Returns
    -------
    numpy.ndarray or None
        A boolean mask over all nodes of the smaller side (the other side is
        ``members & ~side``), or None for a cluster of fewer than 4 samples.
    """
    from scipy.sparse.csgraph import connected_components

    from spray.analysis.spectral import smallest_eigenpairs

    idx = np.flatnonzero(members)
    if len(idx) < 4:
        return None
    sub = sp.csr_matrix(W[idx][:, idx])
    n_comp, comp = connected_components(sub, directed=False)
    if n_comp > 1:
        side = comp != np.bincount(comp).argmax()
    else:
        _, vec = smallest_eigenpairs(sub, 2, seed=seed)
        degree = np.asarray(sub.sum(axis=1)).ravel()
        order = np.argsort(vec[:, 1] / np.sqrt(np.maximum(degree, 1e-12)), kind="stable")
        side = np.zeros(len(idx), dtype=bool)
        side[order[:sweep_cut(sub, degree, order)]] = True
    if side.sum() > len(idx) / 2:
        side = ~side
    out = np.zeros(len(members), dtype=bool)
    out[idx[side]] = True
    return out
