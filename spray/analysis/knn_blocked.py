"""Exact kNN by blocked matrix products: all ``n²`` distances, none of them stored.

Used for the classes an approximate index cannot search well (features without low-dimensional
structure, where NN-descent, HNSW and inverted lists all lose most neighbours) and large enough
that scikit-learn's brute force is slow:

* The feature rows, centred, are split into blocks of :data:`BLOCK` rows. For every pair of
  blocks ``(I, J)`` with ``J ≥ I`` one product ``X_I X_Jᵀ`` is computed (so each distance once):
  in bfloat16 through PyTorch, which runs it on the CPU's matrix units (AMX) where the CPU has
  them and on its vector units otherwise.
* Each product block is scanned twice by compiled kernels (numba, ``cache=True``: compiled once
  per machine, loaded from numba's on-disk cache afterwards): rows of ``I`` against the columns
  of ``J`` and rows of ``J`` against the columns of ``I``. A row keeps its ``k + margin`` best
  candidates by ``|x_j|² − 2 x_i·x_j`` (the same order as the distance) in a small sorted list;
  after the first blocks almost no entry beats the list's worst, so the scan is one compare
  per entry.
* The candidates are re-ranked with exact float32 distances and cut to ``k``. A row whose
  exact k-th score is not clearly below its worst kept candidate's rounded score, by twice
  the largest rounding error measured on all candidates (:func:`unsure_rows`), is searched
  again in float32 (:func:`rows_knn`); data far from its mean has larger rounding errors and
  gets more rows searched again.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

logger = logging.getLogger(__name__)

#: rows per block of the blocked product (a block pair's product is BLOCK² bfloat16 values)
BLOCK = 4096

_LOCK = threading.Lock()  # numba's default threading layer allows one parallel caller at a time


def _kernels():
    """The compiled scan kernels (imported lazily: numba's import costs ~0.3 s)."""
    from spray.analysis import _knn_kernels

    return _knn_kernels


def candidate_margin(k: int) -> int:
    """Extra candidates kept per row beyond ``k`` before the exact re-ranking."""
    return max(8, k)


def blocked_knn(X: np.ndarray, k: int, n_jobs: int = -1, block: int = BLOCK):
    """Exact ``k`` nearest neighbours (self excluded, by index) of every row of ``X``.

    Args:
        X: ``(n, d)`` float32 features.
        k: neighbours per row (``k < n``).
        n_jobs: threads for the products and the scans (-1 = the cores this process may use).
        block: rows per block.

    Returns:
        ``(indices (n, k) int64, distances (n, k) float32)``, each row sorted by distance,
        ties broken by index.
    """
    import torch

    from spray.analysis.knn import edge_distances

    n = X.shape[0]
    kk = min(n - 1, k + candidate_margin(k))
    Xc = X - X.mean(axis=0, dtype=np.float64).astype(np.float32)
    Xb = torch.from_numpy(np.ascontiguousarray(Xc)).to(torch.bfloat16)
    sq = Xb.float().pow(2).sum(dim=1).numpy().astype(np.float32)  # norms of the rounded rows
    best_d = np.full((n, kk), np.inf, dtype=np.float32)
    best_i = np.full((n, kk), -1, dtype=np.int64)
    kern = _kernels()
    threads = _threads(n_jobs)
    starts = list(range(0, n, block))
    with _LOCK, _torch_threads(threads):
        import numba

        numba.set_num_threads(threads)
        for a in starts:
            rows = slice(a, min(a + block, n))
            for b in starts[starts.index(a):]:
                cols = slice(b, min(b + block, n))
                G = torch.mm(Xb[rows], Xb[cols].T).view(torch.int16).numpy().view(np.uint16)
                kern.scan_rows(G, sq[cols], a, b, best_d[rows], best_i[rows])
                if b != a:
                    kern.scan_cols(G, sq[rows], a, b, best_d[cols], best_i[cols])
    # exact re-ranking of the candidates in float32, ties by index
    valid = best_i >= 0
    exact = np.full(best_i.shape, np.inf, dtype=np.float32)
    r = np.repeat(np.arange(n), kk).reshape(n, kk)
    exact[valid] = edge_distances(X, r[valid], best_i[valid])
    slack = rounding_slack(Xc, best_i, best_d, exact)
    by_index = np.argsort(best_i, axis=1, kind="stable")
    cand = np.take_along_axis(best_i, by_index, axis=1)
    dist = np.take_along_axis(exact, by_index, axis=1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ind = np.take_along_axis(cand, order, axis=1)
    dist = np.take_along_axis(dist, order, axis=1)
    unsure = unsure_rows(Xc, dist[:, -1], best_d[:, -1], slack)
    if unsure.size:
        logger.debug("blocked kNN: %d of %d rows searched again in float32 (candidates within "
                     "the bfloat16 rounding of the k-th distance)", unsure.size, n)
        ind[unsure], dist[unsure] = rows_knn(X, unsure, k)
    return ind, dist


def _scores_exact(Xc: np.ndarray, ind: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Exact scores ``|x_j|² − 2 x_i·x_j = d_ij² − |x_i|²`` in the centred frame."""
    norms2 = np.einsum("ij,ij->i", Xc, Xc, dtype=np.float64)
    return dist.astype(np.float64) ** 2 - norms2[:, None]


def rounding_slack(Xc, best_i, best_d, exact) -> float:
    """Twice the largest rounding error of a score seen among all ``n × (k + margin)``
    candidates (their exact distances are known): the room a row's k-th score must leave."""
    valid = (best_i >= 0) & np.isfinite(best_d)
    if not valid.any():
        return 0.0
    err = np.abs(best_d.astype(np.float64) - _scores_exact(Xc, best_i, exact))[valid]
    return 2.0 * float(err.max())


def unsure_rows(Xc: np.ndarray, kth: np.ndarray, worst_score: np.ndarray,
                slack: float) -> np.ndarray:
    """Rows whose true ``k`` neighbours may not all be among their candidates.

    A list misses a true neighbour only if that neighbour's rounded score exceeded the list's
    worst rounded score ``w``; a row is sure when its exact k-th score stays below ``w`` by
    more than ``slack`` (twice the largest rounding error measured on the candidates, which
    are the pairs closest to the threshold). Rows with fewer candidates than the margin
    (``w`` infinite) are sure.
    """
    kth_score = _scores_exact(Xc, np.zeros((len(kth), 1), dtype=np.int64), kth[:, None])[:, 0]
    full = np.isfinite(worst_score)
    return np.flatnonzero(full & ~(kth_score < worst_score.astype(np.float64) - slack))


def rows_knn(X: np.ndarray, rows: np.ndarray, k: int, chunk: int = 256):
    """Exact ``k`` nearest neighbours (self excluded, ties by index) of ``X[rows]``, float32."""
    sq = np.einsum("ij,ij->i", X, X)
    out_i = np.empty((len(rows), k), dtype=np.int64)
    out_d = np.empty((len(rows), k), dtype=np.float32)
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        D = sq[r, None] - 2.0 * (X[r] @ X.T) + sq[None, :]
        D[np.arange(len(r)), r] = np.inf
        part = np.argpartition(D, k, axis=1)[:, :k + 1]
        part.sort(axis=1)  # ties by index after the stable sort below
        d = np.sqrt(np.maximum(np.take_along_axis(D, part, axis=1), 0.0))
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        out_i[s:s + chunk] = np.take_along_axis(part, order, axis=1)
        out_d[s:s + chunk] = np.take_along_axis(d, order, axis=1)
    # distances of the chosen edges exactly as the re-ranking computes them
    from spray.analysis.knn import edge_distances

    out_d = edge_distances(X, np.repeat(rows, k), out_i.ravel()).reshape(len(rows), k)
    return out_i, out_d


def _threads(n_jobs: int) -> int:
    from spray.config.run_config import available_cores

    cores = available_cores()
    return cores if n_jobs is None or n_jobs < 1 else max(1, min(int(n_jobs), cores))


class _torch_threads:
    """Run torch with ``threads`` intra-op threads, restoring the previous count afterwards."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def warm_up() -> None:
    """Compile (or load from the on-disk cache) the scan kernels on a tiny problem."""
    X = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    blocked_knn(X, 3, n_jobs=1, block=32)
