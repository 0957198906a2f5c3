"""Graph measures the verdict needs: conductance, a random subset's conductance, sweep cuts.

Every graph is a symmetric sparse affinity ``W`` (csr) carried with its node degrees, as
:func:`with_degree` returns it.
"""

from __future__ import annotations

import math

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


class NeighbourLists:
    """The kNN graphs of one array and of its subsamples, from one neighbour search.

    Below the affinity's ``approximate_above`` the search is exact, so the ``k`` nearest
    neighbours of a sample *within a subsample* are the first ``k`` of its longer list over the
    whole array that the subsample keeps (same order, ties by index). One search of ``k_ext``
    neighbours on the whole array therefore gives the graph of the array (its first ``k``
    columns) and that of every subsample; the few rows of a subsample that keep fewer than
    ``k`` listed neighbours are searched again exactly among the subsample. Above
    ``approximate_above`` every graph is built by its own search, as :func:`knn_graph` does;
    with ``k_ext`` not above ``k``, every subsample's graph is.

    Parameters
    ----------
    X : numpy.ndarray
        ``(n, d)`` rows.
    affinity_params : dict
        The affinity section with an integer ``k``.
    k_ext : int
        Length of the lists kept for the subsamples.
    search : callable, optional
        ``search(k_ext) -> (indices, distances)``: exact neighbour lists of ``X`` found another
        way (:meth:`MaskedSearch.neighbours`) instead of the affinity's search.
    """

    def __init__(self, X: np.ndarray, affinity_params: dict, k_ext: int, search=None):
        from spray.analysis.knn import _as_features, knn_neighbors, resolve_k
        from spray.config.presets import AffinitySection

        self.X = _as_features(X)
        self.affinity = dict(affinity_params)
        n = len(self.X)
        self.k = resolve_k(n, self.affinity["k"])
        above = AffinitySection.coerce(self.affinity).approximate_above
        k_ext = int(min(max(k_ext, self.k), n - 1))
        self.exact = n <= above
        self.indices = self.distances = None
        if self.exact and search is not None:
            self.indices, self.distances = search(k_ext)
        elif self.exact:
            self.indices, self.distances, _ = knn_neighbors(self.X, k_ext, self.affinity)
        # lists no longer than k would leave most rows of a subsample short: searched anew
        self.derive = self.exact and k_ext > self.k

    def whole(self) -> tuple[sp.csr_matrix, np.ndarray]:
        """The kNN graph of the whole array (as :func:`knn_graph` builds it)."""
        from spray.analysis.knn import graph_from_neighbors

        if not self.exact:
            return knn_graph(self.X, self.affinity)
        k = self.k
        return with_degree(graph_from_neighbors(self.indices[:, :k], self.distances[:, :k],
                                                self.affinity))

    def subsample(self, idx: np.ndarray, k: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """The ``k``-NN graph of the rows ``idx`` (sorted, unique) among themselves."""
        from spray.analysis.knn import graph_from_neighbors

        aff = dict(self.affinity, k=int(k))
        if not self.derive or k > self.k:
            return knn_graph(self.X[idx], aff)
        ind, dist = sub_neighbours(self.X, self.indices, self.distances, idx, k)
        return with_degree(graph_from_neighbors(ind, dist, aff))


def sub_neighbours(X: np.ndarray, indices: np.ndarray, distances: np.ndarray,
                   idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of the rows ``idx`` among themselves (positions in ``idx``),
    taken from exact neighbour lists ``indices``/``distances`` over all rows of ``X``.

    Rows whose list keeps fewer than ``k`` members of ``idx`` are searched exactly again.
    """
    n = len(X)
    pos = np.full(n, -1, dtype=np.int64)
    pos[idx] = np.arange(len(idx))
    mapped = pos[indices[idx]]
    kept = mapped >= 0
    # the kept entries of each row first, in their order (stable sort of a boolean key)
    order = np.argsort(~kept, axis=1, kind="stable")[:, :k]
    ind = np.take_along_axis(mapped, order, axis=1)
    dist = np.take_along_axis(distances[idx], order, axis=1)
    short = np.flatnonzero(kept.sum(axis=1) < k)
    if len(short):
        ind[short], dist[short] = _exact_rows(X[idx], short, k)
    return ind, dist


def _nearest_of_rows(X: np.ndarray, rows: np.ndarray, cand: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of the candidates ``cand[i]`` to the row ``rows[i]`` of ``X``, for
    every ``i`` (float64 distances, ties by index; chunks of a few MB)."""
    ind = np.empty((len(rows), k), dtype=np.int64)
    dist = np.empty((len(rows), k), dtype=np.float32)
    step = max(1, (1 << 22) // max(1, cand.shape[1] * X.shape[1]))     # rows per chunk
    for a in range(0, len(rows), step):
        r, c = rows[a:a + step], cand[a:a + step]
        diff = X[c].astype(np.float64) - X[r].astype(np.float64)[:, None, :]
        flat = diff.reshape(-1, diff.shape[-1])
        d = np.sqrt(np.einsum("ij,ij->i", flat, flat)).reshape(c.shape)
        order = np.lexsort((c, d), axis=-1)[:, :k]
        ind[a:a + step] = np.take_along_axis(c, order, axis=1)
        dist[a:a + step] = np.take_along_axis(d, order, axis=1).astype(np.float32)
    return ind, dist


def _exact_rows(Xs: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of ``rows`` of ``Xs`` among all rows (self excluded,
    ties by index)."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="euclidean").fit(Xs)
    dist, ind = nn.kneighbors(Xs[rows])
    is_self = ind == rows[:, None]
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False
    out_i = np.stack([r[m][:k] for r, m in zip(ind, keep)])
    out_d = np.stack([r[m][:k] for r, m in zip(dist, keep)])
    return out_i.astype(np.int64), out_d.astype(np.float32)


def extended_k(k: int, n: int, m: int, resamples: int) -> int:
    """List length that lets subsamples of ``m`` of ``n`` rows take their ``k``-NN graphs from
    one search (:class:`NeighbourLists`): ``k`` itself (every graph searched on its own) without
    resamples or when a subsample keeps less than half of the rows (then ``resamples`` searches
    of ``m`` rows cost less than one of ``n``); otherwise 1.5 k n / m + 5, so that the rare row
    that keeps fewer than ``k`` of its listed neighbours is searched again."""
    if resamples <= 0 or m < n / 2:
        return int(k)
    return int(math.ceil(1.5 * k * n / m)) + 5


class GraphCache:
    """:class:`NeighbourLists` per array (by identity; the array is kept alive with them)."""

    def __init__(self, affinity_params: dict, k_ext: int):
        self.affinity = dict(affinity_params)
        self.k_ext = int(k_ext)
        self._lists: dict[int, tuple[np.ndarray, NeighbourLists]] = {}

    def lists(self, X: np.ndarray, search=None, keep: bool = True) -> NeighbourLists:
        """The neighbour lists of ``X`` (searched once; ``search`` as :class:`NeighbourLists`
        takes it; ``keep=False``: not kept for later calls)."""
        hit = self._lists.get(id(X))
        if hit is None or hit[0] is not X:
            hit = (X, NeighbourLists(X, self.affinity, self.k_ext, search))
            if keep:
                self._lists[id(X)] = hit
        return hit[1]


#: classes up to this size keep the Gram matrix of their inputs (float32, n² · 4 bytes)
GRAM_MAX_SAMPLES = 10_000


class MaskedSearch:
    """Exact nearest neighbours of an array with a few columns set to 0 and its rows rescaled,
    for many such variants, from the array's Gram matrix computed once.

    For ``X̃ = (X with the columns C set to 0) / s`` (``s`` per row), the products are
    ``x̃_i·x̃_j = (G_ij − x_iC·x_jC) / (s_i s_j)``: a correction of rank |C| of the Gram matrix
    ``G = X Xᵀ``. Row i's neighbours minimise ``s_i (||x̃_j||² − 2 x̃_i·x̃_j)`` over j (float32,
    torch's top-k of ``k + MARGIN``, then sorted with ties by index). A row with two of its
    ``k + 1`` nearest closer than float32 can order (``TOLERANCE``) is searched again exactly:
    the lists of the exact search (:func:`spray.analysis.knn.exact_knn`) at a fraction of its
    cost, since no product with all of X is formed again.
    """

    #: rows per block of the distance matrix
    BLOCK = 512
    #: shortlist beyond ``k`` (ties at the k-th neighbour)
    MARGIN = 8
    #: relative gap below which two neighbours' order is left to the exact search of the row
    TOLERANCE = 1e-5

    def __init__(self, X: np.ndarray, keep_gram: bool = True):
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        self.keep_gram = keep_gram
        self._gram = None
        self._guide: dict[int, np.ndarray] = {}

    def gram_rows(self, a: int, b: int):
        """Rows ``a:b`` of ``X Xᵀ`` (float32 torch; the whole matrix is made on first use and
        kept, or each block computed when asked with ``keep_gram=False``)."""
        import torch

        Xt = torch.from_numpy(self.X)
        if not self.keep_gram:
            return Xt[a:b] @ Xt.T
        if self._gram is None:
            self._gram = Xt @ Xt.T
        return self._gram[a:b]

    def neighbours(self, Xm: np.ndarray, cells: np.ndarray, scale: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest neighbours (self excluded) of every row of ``Xm``, which is
        ``X`` with the columns ``cells`` at 0, each row divided by ``scale``.

        Returns ``(indices, distances)``, ``(n, k)`` int64 and float32, nearest first.
        """
        import torch

        n = len(self.X)
        k = int(min(k, n - 1))
        short = int(min(n - 1, k + self.MARGIN))
        Xc = torch.from_numpy(np.ascontiguousarray(self.X[:, cells]))
        XcT = Xc.T.contiguous()
        s = torch.from_numpy(np.asarray(scale, dtype=np.float32))
        q = torch.from_numpy(np.einsum("ij,ij->i", Xm, Xm, dtype=np.float64).astype(np.float32))
        w = -2.0 / s
        ind = np.empty((n, k), dtype=np.int64)
        dist = np.empty((n, k), dtype=np.float32)
        qi = q.numpy().astype(np.float64)
        si = s.numpy().astype(np.float64)
        qmax, search = float(qi.max()), []
        guide = self._guide.get(short)
        shortlists = None if guide is not None else np.empty((n, short), dtype=np.int64)
        for a in range(0, n, self.BLOCK):
            b = min(a + self.BLOCK, n)
            R = torch.addmm(self.gram_rows(a, b), Xc[a:b], XcT, alpha=-1.0)   # x_i·x_j without C
            R.mul_(w).addr_(s[a:b], q)                            # s_i (||x̃_j||² − 2 x̃_i·x̃_j)
            R[torch.arange(b - a), torch.arange(a, b)] = float("inf")
            cand, val = self._shortlist(R, short, a, b, guide)
            val = val.astype(np.float64)
            order = np.lexsort((cand, val), axis=-1)             # ties by index
            val = np.take_along_axis(val, order, axis=1)
            ind[a:b] = np.take_along_axis(cand, order[:, :k], axis=1)
            d2 = val[:, :k] / si[a:b, None] + qi[a:b, None]
            dist[a:b] = np.sqrt(np.maximum(d2, 0.0))
            # rows whose order float32 cannot vouch for: two of the k + 1 nearest closer than
            # its rounding, or one as close to 0 (recomputed in float64), or the shortlist's
            # edge as close (searched again)
            tol = self.TOLERANCE * si[a:b] * (qi[a:b] + qmax)
            close = np.diff(val[:, :k + 1], axis=1).min(axis=1, initial=np.inf) <= tol
            close |= d2[:, 0] * si[a:b] <= tol           # a (near-)duplicate: its distance
            edge = (val[:, -1] - val[:, min(k, short - 1)] <= tol) & (short < n - 1)
            cand = np.take_along_axis(cand, order, axis=1)
            redo = np.flatnonzero(close & ~edge)
            if len(redo):
                ind[a + redo], dist[a + redo] = _nearest_of_rows(Xm, a + redo, cand[redo], k)
            search.append(a + np.flatnonzero(edge))
            if shortlists is not None:
                shortlists[a:b] = cand
        if shortlists is not None:
            self._guide[short] = shortlists
        search = np.concatenate(search)
        if len(search):
            ind[search], dist[search] = _exact_rows(Xm, search, k)
        return ind, dist

    @staticmethod
    def _shortlist(R, short: int, a: int, b: int,
                   guide: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The ``short`` smallest entries of every row of ``R`` (rows ``a:b``): their columns
        and values, in no particular order.

        With ``guide`` (``short`` distinct columns per row other than the row itself: the
        shortlists of an earlier search of the same class), the largest of ``R`` at those
        columns bounds each row's ``short``-th smallest entry from above, so only the entries
        up to that bound are selected from (the same values as a selection over the whole row;
        rows of equal values at the edge may keep another of them, which the caller's edge
        test sends to the exact search either way).
        """
        import torch

        Rn = R.numpy()
        if guide is not None:
            bound = np.take_along_axis(Rn, guide[a:b], axis=1).max(axis=1, keepdims=True)
            flat = np.flatnonzero(Rn <= bound)
            rows = flat // Rn.shape[1]
            counts = np.bincount(rows, minlength=b - a)
            if counts.min() >= short:           # (not so only where R holds NaN)
                slot = np.arange(len(flat)) - (np.cumsum(counts) - counts)[rows]
                vals = np.full((b - a, int(counts.max())), np.inf, dtype=Rn.dtype)
                cols = np.zeros(vals.shape, dtype=np.int64)
                vals[rows, slot] = Rn.reshape(-1)[flat]
                cols[rows, slot] = flat - rows * Rn.shape[1]
                if vals.shape[1] > short:
                    part = np.argpartition(vals, short - 1, axis=1)[:, :short]
                    vals = np.take_along_axis(vals, part, axis=1)
                    cols = np.take_along_axis(cols, part, axis=1)
                return cols, vals
        top = torch.topk(R, short, dim=1, largest=False, sorted=False)
        return top.indices.numpy(), top.values.numpy()


def unmasked_search(X: np.ndarray):
    """``search(k)``: exact neighbour lists of ``X`` by :class:`MaskedSearch` without cells
    (blocks of ``X Xᵀ``, not kept), for :class:`NeighbourLists`."""
    gram = MaskedSearch(X, keep_gram=False)
    none = np.zeros(0, dtype=np.int64)
    return lambda k: gram.neighbours(gram.X, none, np.ones(len(X), dtype=np.float32), k)
