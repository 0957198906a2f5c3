"""The kNN affinity graph ``W`` (the ``affinity`` section of a pipeline).

* Neighbours: the ``k`` nearest neighbours of every sample, excluding the sample itself
  (``k: auto`` = ⌈ln n⌉). Exact search (scikit-learn, brute force on BLAS) up to
  ``approximate_above`` samples; above, ``search`` decides: ``approximate`` (pynndescent's
  NN-descent), ``exact`` (blocked bfloat16 products, :mod:`spray.analysis.knn_blocked`) or
  ``auto`` (the exact search where its ``n²·d`` multiply-adds are at most ``exact_max_cost``,
  off by default; otherwise pynndescent where a probe finds low-dimensional neighbourhoods and
  its recall on the probe rows reaches ``min_recall``, the exact search otherwise, see
  :func:`large_knn`). Duplicate
  samples are fine: the sample itself is removed by index, never by distance, and ties are
  broken by index, so the graph is deterministic.
* Edge weights: ``binary`` (thesis eq. 6.1), ``gaussian`` ``exp(-d²/(2σ²))`` with ``sigma``
  (``auto`` = median kNN distance), or ``local-scaling`` ``exp(-d²/(σ_i σ_j))`` with σ_i the
  distance to the ``scale_neighbor``-th neighbour of i (Zelnik-Manor & Perona 2004).
* Symmetrization: ``max`` (w_ij = max(w_ij, w_ji), von Luxburg's kNN graph) or ``mean``
  ((w_ij + w_ji) / 2, CoRelAy's choice).

The result is a symmetric ``scipy.sparse.csr_matrix`` with no self-loops and ~``n·k`` to
``2·n·k`` stored entries. Disconnected graphs are allowed (they give several zero eigenvalues).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings

import numpy as np
import scipy.sparse as sp

from spray.config.presets import AffinitySection
from spray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

def resolve_k(n: int, k) -> int:
    """Number of neighbours for ``n`` samples: ``auto`` = ⌈ln n⌉, clamped to ``[1, n-1]``."""
    if k == "auto" or k is None:
        k = math.ceil(math.log(max(n, 2)))
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ConfigError(f"pipeline key 'affinity.k': must be a positive integer or 'auto', "
                          f"got {k!r}")
    return int(max(1, min(int(k), n - 1)))


def _as_features(features) -> np.ndarray:
    X = np.asarray(features)
    if X.ndim != 2:
        raise DataError(f"features must be a 2-D array (n, d), got shape {X.shape}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        from spray.analysis.preprocess import describe_rows

        raise DataError(f"features of {describe_rows(bad)} hold NaN or Inf")
    return X


def drop_self(indices: np.ndarray, distances: np.ndarray, k: int):
    """Remove each row's own index from a ``(n, k+1)`` neighbour list, keeping ``k`` entries.

    Rows that do not list themselves (possible with duplicates or approximate search) drop
    their last (farthest) entry instead.
    """
    n = indices.shape[0]
    is_self = indices == np.arange(n)[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    # keep exactly one dropped entry per row (the first self match)
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), first] = False
    ind = indices[keep].reshape(n, -1)[:, :k]
    dist = distances[keep].reshape(n, -1)[:, :k]
    return ind, dist


def exact_knn(X: np.ndarray, k: int, n_jobs: int = 1):
    """Exact ``k`` nearest neighbours (self excluded): ``(indices, distances)`` of shape (n, k)."""
    from sklearn.neighbors import NearestNeighbors

    # one joblib worker: the distance blocks are BLAS products, which are threaded already
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(X)
    dist, ind = nn.kneighbors()  # X=None: each sample is not its own neighbour
    return ind.astype(np.int64), dist.astype(np.float32)


def approximate_knn(X: np.ndarray, k: int, params: AffinitySection | dict, seed: int = 0):
    """Approximate kNN with pynndescent (self excluded): ``(indices, distances)``, (n, k).

    The search runs with ``max(k+1, ann_neighbors)`` neighbours (more candidates per node give
    a much higher recall at a small cost) and is truncated to the ``k`` nearest afterwards.
    ``ann_pca`` optionally projects the features onto their leading principal components
    first (the distances of the returned edges are recomputed in the full space).
    """
    from pynndescent import NNDescent

    params = AffinitySection.coerce(params)
    n = X.shape[0]
    Xs = X
    pca = params.ann_pca
    if pca is not None:
        from sklearn.decomposition import PCA

        dim = min(64 if pca == "auto" else int(pca), X.shape[1], n)
        Xs = PCA(n_components=dim, svd_solver="randomized", random_state=seed) \
            .fit_transform(X).astype(np.float32)
    n_search = min(n - 1, max(k + 1, params.ann_neighbors))
    kwargs = {}
    if params.ann_iters != "auto":
        kwargs["n_iters"] = int(params.ann_iters)
    if params.ann_trees != "auto":
        kwargs["n_trees"] = int(params.ann_trees)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = NNDescent(Xs, n_neighbors=n_search + 1, metric="euclidean", random_state=seed,
                          n_jobs=params.n_jobs, low_memory=True,
                          compressed=True, **kwargs)
    ind, dist = index.neighbor_graph
    del index
    ind, dist = drop_self(ind.astype(np.int64), dist.astype(np.float32), n_search)
    # NN-descent may leave -1 for unfilled slots; push them to the end
    dist = np.where(ind < 0, np.inf, dist)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ind = np.take_along_axis(ind, order, axis=1)
    dist = np.take_along_axis(dist, order, axis=1)
    if pca is not None:
        dist = edge_distances(X, np.repeat(np.arange(n), k), ind.ravel()).reshape(n, k)
    return ind, dist


def edge_distances(X: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                   chunk: int = 65536) -> np.ndarray:
    """Euclidean distances ``||x_rows - x_cols||`` for a list of edges, in chunks."""
    out = np.empty(len(rows), dtype=np.float32)
    for s in range(0, len(rows), chunk):
        diff = X[rows[s:s + chunk]] - X[cols[s:s + chunk]]
        out[s:s + chunk] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def squared_norms(X: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``|x_i|²`` of every row, accumulated in float64 (in chunks: a float64 einsum over a
    float32 array casts element by element and is several times slower)."""
    out = np.empty(X.shape[0], dtype=np.float64)
    for s in range(0, X.shape[0], chunk):
        Y = X[s:s + chunk].astype(np.float64)
        out[s:s + chunk] = np.einsum("ij,ij->i", Y, Y)
    return out


def knn_neighbors(X: np.ndarray, k: int, params: AffinitySection | dict, seed: int = 0):
    """Neighbour lists ``(indices, distances, method)`` with the method chosen by size."""
    params = AffinitySection.coerce(params)
    n = X.shape[0]
    if n > params.approximate_above and n > 2 * (k + 1):
        return large_knn(X, k, params, seed=seed)
    ind, dist = exact_knn(X, k)
    return ind, dist, "exact"


#: rows whose exact neighbours the ``search: auto`` probe computes
PROBE_ROWS = 256


def probe_neighbours(X: np.ndarray, k: int, seed: int = 0, m: int = PROBE_ROWS):
    """Exact ``k`` nearest neighbours of ``m`` random rows among all rows, and their local
    intrinsic dimension.

    Returns ``(rows, indices (m, k), lid)``; ``lid`` is the median over the rows of the
    maximum-likelihood estimate ``−1 / mean_j log(d_j / d_k)`` (Levina & Bickel 2004) of the
    dimension the neighbourhoods fill: ~20 for features on a low-dimensional structure, in the
    hundreds for isotropic noise, where every index-based search loses most neighbours.
    """
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(m, n), replace=False))
    sq = squared_norms(X)
    best = []
    step = max(1, min(64, 2 ** 25 // n))  # float64 distance blocks of at most ~256 MB
    for s in range(0, len(rows), step):
        r = rows[s:s + step]
        D = sq[r, None] - 2.0 * (X[r] @ X.T).astype(np.float64) + sq[None, :]
        D[np.arange(len(r)), r] = np.inf
        part = np.argpartition(D, k - 1, axis=1)[:, :k]
        dk = np.take_along_axis(D, part, axis=1)
        order = np.argsort(dk, axis=1, kind="stable")
        best.append((np.take_along_axis(part, order, axis=1),
                     np.sqrt(np.maximum(np.take_along_axis(dk, order, axis=1), 0.0))))
    ind = np.vstack([b[0] for b in best])
    dist = np.vstack([b[1] for b in best])
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(dist[:, :-1] / dist[:, -1:])
        lid = -1.0 / np.mean(logs, axis=1)
    lid = lid[np.isfinite(lid) & (lid > 0)]
    return rows, ind, float(np.median(lid)) if lid.size else 0.0


def probe_recall(indices: np.ndarray, rows: np.ndarray, truth: np.ndarray) -> float:
    """Mean recall@k of the neighbour lists of ``rows`` against their exact ``truth``."""
    k = truth.shape[1]
    hits = [np.intersect1d(indices[r, :k], t).size for r, t in zip(rows, truth)]
    return float(np.mean(hits)) / k


def exact_is_cheap(n: int, d: int, params: AffinitySection | dict) -> bool:
    """Whether ``search: auto`` takes the exact search without a probe: its ``n²·d``
    multiply-adds are at most ``exact_max_cost`` (0, the default, never).

    pynndescent compiles part of its kernels in every new process (~17 s on 2 cores, more
    than its search of 100 000 samples), while the exact search's kernels come from numba's
    on-disk cache. But ``n²·d`` predicts the exact search only where few rows have to be
    searched again: on features with low-dimensional clusters, bfloat16 rounding leaves many
    rows unsure (a third of 50 000 samples of the 8-group benchmark features, 38 CPU s
    against ~10 for 100 000 samples of noise; docs/scale.md), so the bound is off by default.
    """
    params = AffinitySection.coerce(params)
    return float(n) * float(n) * float(d) <= params.exact_max_cost


def large_knn(X: np.ndarray, k: int, params: AffinitySection | dict, seed: int = 0):
    """Neighbours of a class above ``approximate_above`` samples, per ``affinity.search``.

    ``exact``: the blocked exact search (:mod:`spray.analysis.knn_blocked`). ``approximate``:
    pynndescent. ``auto``: the exact search when :func:`exact_is_cheap`; otherwise a probe
    (:func:`probe_neighbours`) estimates the intrinsic dimension of the neighbourhoods; above
    ``ann_max_lid`` no index keeps its recall and the exact search runs; otherwise pynndescent
    runs and its recall on the probe rows is checked: below ``min_recall`` the exact search
    replaces it (fail closed, with a warning).
    """
    from spray.analysis.knn_blocked import blocked_knn

    params = AffinitySection.coerce(params)
    wait_for_warm_up()
    search, n_jobs = params.search, params.n_jobs
    if search == "approximate":
        return (*approximate_knn(X, k, params, seed=seed), "pynndescent")
    if search == "auto" and exact_is_cheap(X.shape[0], X.shape[1], params):
        log.info("kNN: %d × %d features: exact blocked search (n²·d = %.2g ≤ "
                 "affinity.exact_max_cost %.2g)", *X.shape, float(X.shape[0]) ** 2 * X.shape[1],
                 params.exact_max_cost)
    elif search == "auto":
        rows, truth, lid = probe_neighbours(X, k, seed=seed)
        max_lid = params.ann_max_lid
        if lid <= max_lid:
            ind, dist = approximate_knn(X, k, params, seed=seed)
            recall = probe_recall(ind, rows, truth)
            floor = params.min_recall
            if recall >= floor:
                log.debug("kNN: pynndescent, recall@%d %.3f on %d probe rows (intrinsic "
                          "dimension %.0f)", k, recall, len(rows), lid)
                return ind, dist, "pynndescent"
            log.warning("kNN: pynndescent reached recall@%d %.3f < affinity.min_recall %.2f "
                        "on %d probe rows; searching exactly instead", k, recall, floor,
                        len(rows))
        else:
            log.info("kNN: %d samples of intrinsic dimension ~%.0f > affinity.ann_max_lid %g: "
                     "exact blocked search (an index would lose most neighbours)", X.shape[0],
                     lid, max_lid)
    ind, dist = blocked_knn(X, k, n_jobs=n_jobs)
    return ind, dist, "exact-blocked"


def edge_weights(ind: np.ndarray, dist: np.ndarray,
                 params: AffinitySection | dict) -> np.ndarray:
    """Directed edge weights ``(n, k)`` for the neighbour lists, per ``params.weighting``."""
    params = AffinitySection.coerce(params)
    weighting = params.weighting
    if weighting == "binary":
        return np.ones(dist.shape, dtype=np.float64)
    d = dist.astype(np.float64)
    valid = ind >= 0
    if weighting == "gaussian":
        if params.sigma == "auto":
            pos = d[valid & np.isfinite(d)]
            sigma = float(np.median(pos)) if pos.size else 1.0
        else:
            sigma = float(params.sigma)
        sigma = sigma if sigma > 0 else 1.0
        return np.exp(-(d ** 2) / (2.0 * sigma ** 2))
    if weighting == "local-scaling":
        j = min(params.scale_neighbor, d.shape[1]) - 1
        scale = d[:, j].copy()
        positive = scale[np.isfinite(scale) & (scale > 0)]
        floor = float(positive.min()) * 1e-3 if positive.size else 1.0
        scale = np.maximum(np.where(np.isfinite(scale), scale, floor), floor)
        safe = np.where(valid, ind, 0)
        return np.exp(-(d ** 2) / (scale[:, None] * scale[safe]))
    raise ConfigError(f"pipeline key 'affinity.weighting': unknown weighting {weighting!r}")


def symmetrize(A: sp.csr_matrix, how: str = "max") -> sp.csr_matrix:
    """Symmetric version of a directed graph: element-wise ``max`` or ``mean`` with its transpose."""
    if how == "max":
        W = A.maximum(A.T)
    elif how == "mean":
        W = (A + A.T) * 0.5
    else:
        raise ConfigError(f"pipeline key 'affinity.symmetrize': must be 'max' or 'mean', got {how!r}")
    W = sp.csr_matrix(W)
    W.setdiag(0)
    W.eliminate_zeros()
    W.sort_indices()
    return W


def graph_from_neighbors(ind: np.ndarray, dist: np.ndarray,
                         params: AffinitySection | dict) -> sp.csr_matrix:
    """Symmetric affinity matrix from ``(n, k)`` neighbour lists."""
    params = AffinitySection.coerce(params)
    n, k = ind.shape
    weights = edge_weights(ind, dist, params)
    rows = np.repeat(np.arange(n), k)
    cols = ind.ravel()
    vals = weights.ravel()
    ok = (cols >= 0) & (cols != rows)
    A = sp.csr_matrix((vals[ok], (rows[ok], cols[ok])), shape=(n, n))
    A.sum_duplicates()
    return symmetrize(A, params.symmetrize)


def knn_affinity(features, params: AffinitySection | dict, seed: int = 0,
                 return_info: bool = False):
    """Symmetric kNN affinity matrix ``W`` (csr, (n, n), no self-loops) of the feature rows.

    Parameters
    ----------
    features
        ``(n, d)`` array.
    params
        the pipeline's ``affinity`` section.
    seed
        seed of the approximate search.
    return_info
        also return a dict with ``k``, ``method`` and the directed neighbour lists.
    """
    X = _as_features(features)
    n = X.shape[0]
    if n < 2:
        raise DataError(f"a kNN graph needs at least 2 samples, got {n}")
    params = AffinitySection.coerce(params)
    k = resolve_k(n, params.k)
    ind, dist, method = knn_neighbors(X, k, params, seed=seed)
    W = graph_from_neighbors(ind, dist, params)
    if return_info:
        return W, {"k": k, "method": method, "indices": ind, "distances": dist}
    return W


#: held while :func:`warm_up` runs; :func:`large_knn` waits for it instead of compiling the
#: same kernels side by side with it
_WARMING = threading.Lock()

#: rows and columns of the warm-up's random features: the kernels' types do not depend on the
#: size, and pynndescent takes the same code path as for a large class
WARM_UP_SHAPE = (2000, 16)


def wait_for_warm_up() -> float:
    """Wait until a running :func:`warm_up` of this process has finished; returns the wait
    in seconds (logged when it is noticeable)."""
    start = time.perf_counter()
    with _WARMING:
        pass
    waited = time.perf_counter() - start
    if waited > 0.5:
        log.info("kNN: waited %.1f s for this process's kNN warm-up to finish", waited)
    return waited


def warm_up(params: AffinitySection | dict | None = None) -> dict[str, float]:
    """Compile the kernels of the large-class kNN search in this process, on random features.

    pynndescent compiles its NN-descent (~30 s of one core) in every new process: it takes the
    distance as a function argument, which numba cannot cache on disk. This runs
    :func:`approximate_knn` with ``params`` (the same argument types, hence the same
    specializations, as a class of any size) unless ``search: exact``, and the blocked
    search's warm-up (kernels from numba's on-disk cache, the product timing) unless
    ``search: approximate``. Searches of this process wait for it (:func:`wait_for_warm_up`).

    Returns the wall seconds of each part (``pynndescent``, ``blocked``).
    """
    from spray.analysis.knn_blocked import warm_up as blocked_warm_up

    params = AffinitySection.coerce(params or {})
    seconds: dict[str, float] = {}
    with _WARMING:
        if params.search != "exact":
            start = time.perf_counter()
            X = np.random.default_rng(0).standard_normal(WARM_UP_SHAPE).astype(np.float32)
            approximate_knn(X, resolve_k(len(X), params.k), params)
            seconds["pynndescent"] = time.perf_counter() - start
        if params.search != "approximate":
            start = time.perf_counter()
            blocked_warm_up()
            seconds["blocked"] = time.perf_counter() - start
    return seconds
