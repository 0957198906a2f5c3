"""Exact kNN by blocked matrix products: all ``n²`` distances, none of them stored.

Used for the classes an approximate index cannot search well (features without low-dimensional
structure, where NN-descent, HNSW and inverted lists all lose most neighbours) and large enough
that scikit-learn's brute force is slow:

* The feature rows, centred, are split into blocks of :data:`BLOCK` rows. For every pair of
  blocks ``(I, J)`` with ``J ≥ I`` one product ``X_I X_Jᵀ`` is computed (so each distance once):
  in bfloat16 through PyTorch, which runs it on the CPU's matrix units (AMX) where the CPU has
  them and on its vector units otherwise; or, where this is clearly faster
  (:func:`product_kind`: CPUs with int8 dot-product instructions and no AMX, 2× on an AMD
  EPYC), in int8 (``torch._int_mm``, exact int32 sums) of the rows rounded to 127 steps of
  their largest magnitude, the products scaled back per row and column in the scan, with more
  candidates kept (:func:`candidate_margin`). A block of 1024 × 1024 products (2 or 4 MiB)
  stays in the core's cache between the product and its scan.
* The pairs are grouped in rounds of pairs that share no block (:func:`block_rounds`, the
  circle method of round-robin tournaments); the pairs of a round run in parallel threads,
  each with a one-thread product and a single-threaded scan, so no list is written by two
  threads and no thread waits for another inside a round.
* Each product block is scanned once by a compiled kernel (numba, ``cache=True``: compiled
  once per machine, loaded from numba's on-disk cache afterwards) that serves both
  directions: rows of ``I`` against the columns of ``J`` and rows of ``J`` against the
  columns of ``I``. A row keeps its ``k + margin`` best candidates by ``|x_j|² − 2 x_i·x_j``
  (the same order as the distance) in a small sorted list; a vectorized pass per product row
  flags the entries that beat the lists' worst, and only flagged entries are walked.
* The candidates are re-ranked by their squared distances accumulated in float64 (a float32
  sum misorders near ties, which moved the eigenvalues of a graph of noise by ~4e-5) and cut
  to ``k``. A row whose exact k-th score is not clearly below its worst kept candidate's
  rounded score, by twice the largest rounding error measured on all candidates
  (:func:`unsure_rows`), is searched again (:func:`rows_knn`); data far from its mean has
  larger rounding errors and gets more rows searched again.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import numpy as np

logger = logging.getLogger(__name__)

#: rows per block of the blocked product (a block pair's product is BLOCK² bfloat16 values)
BLOCK = 1024

_LOCK = threading.Lock()  # numba's default threading layer allows one parallel caller at a time


def _kernels():
    """The compiled scan kernels (imported lazily: numba's import costs ~0.3 s)."""
    from spray.analysis import _knn_kernels

    return _knn_kernels


def candidate_margin(k: int, products: str = "bfloat16") -> int:
    """Extra candidates kept per row beyond ``k`` before the exact re-ranking.

    int8 rows round coarser than bfloat16 (a score's largest error on 100k rows of noise:
    5.1 against 3.1), so more candidates are kept: with ``k`` extra candidates, 6 407 rows of
    those 100k were searched again, with ``2k`` 6 rows.
    """
    return max(16, 2 * k) if products == "int8" else max(8, k)


#: the int8 products are used where they take at most this share of the bfloat16 ones' time
INT8_FASTER = 0.8


@functools.cache
def product_kind(d: int = 400) -> str:
    """``int8`` (integer products by ``torch._int_mm``, per-row scales) where this torch build
    runs them on this CPU clearly faster than bfloat16 products (AVX-512 VNNI without AMX:
    3.0 ms against 4.0 ms for a 1024 × 1024 × 400 block, the candidates' products of 100k
    rows 10 CPU s against 19), else ``bfloat16``. Timed once per process on one block of
    ``d`` columns (the products run in the calling thread: its CPU time is timed)."""
    import torch

    rng = np.random.default_rng(0)
    A = torch.from_numpy(rng.integers(-127, 128, (BLOCK, d), dtype=np.int8))
    B = A.to(torch.bfloat16)
    try:
        with _torch_threads(1):
            times = {kind: _best_time(mm, X, X.T)
                     for kind, mm, X in (("int8", torch._int_mm, A), ("bfloat16", torch.mm, B))}
    except (RuntimeError, AttributeError) as exc:  # no integer products in this build
        logger.debug("blocked kNN: no int8 products (%s)", exc)
        return "bfloat16"
    kind = "int8" if times["int8"] <= INT8_FASTER * times["bfloat16"] else "bfloat16"
    logger.debug("blocked kNN: %s products (%s)", kind,
                 ", ".join(f"{k} {1e3 * t:.1f} ms" for k, t in times.items()))
    return kind


def _best_time(run, *args, reps: int = 5) -> float:
    """The shortest of ``reps`` timings of ``run(*args)`` (after one warm-up call), in CPU
    time of the calling thread (``run`` computes in it): other processes do not count."""
    run(*args)
    times = []
    for _ in range(reps):
        start = time.thread_time()
        run(*args)
        times.append(time.thread_time() - start)
    return min(times)


def block_rounds(n_blocks: int) -> list[list[tuple[int, int]]]:
    """All block pairs ``(I, J)``, ``I ≤ J``, grouped in rounds of pairs that share no block.

    The diagonal pairs form the first round; the others follow the circle method of
    round-robin tournaments (``n_blocks − 1`` rounds for an even count, ``n_blocks`` for an odd
    one), so that the pairs of a round can be scanned in parallel threads without locks.
    """
    rounds = [[(i, i) for i in range(n_blocks)]]
    m = n_blocks + n_blocks % 2
    ring = list(range(m))
    for _ in range(m - 1):
        pairs = [(ring[i], ring[m - 1 - i]) for i in range(m // 2)]
        rounds.append([(min(p), max(p)) for p in pairs if max(p) < n_blocks])
        ring = [ring[0], ring[-1], *ring[1:-1]]
    return [r for r in rounds if r]


def blocked_knn(X: np.ndarray, k: int, n_jobs: int = -1, block: int = BLOCK,
                products: str | None = None, margin: int | None = None):
    """Exact ``k`` nearest neighbours (self excluded, by index) of every row of ``X``.

    Args:
        X: ``(n, d)`` float32 features.
        k: neighbours per row (``k < n``).
        n_jobs: threads for the products and the scans (-1 = the cores this process may use).
        block: rows per block.

    Returns:
        ``(indices (n, k) int64, distances (n, k) float32)``, each row sorted by distance
        (ranked in float64), ties broken by index.
    """

    n = X.shape[0]
    products = products or product_kind(X.shape[1])
    margin = candidate_margin(k, products) if margin is None else margin
    kk = min(n - 1, k + margin)
    mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    threads = _threads(n_jobs)
    Xb, scales, norms2 = _centred(X, mean, products)
    best_d, best_i = _candidates(Xb, kk, threads, block, scales)
    del Xb
    # exact re-ranking of the candidates (squared distances in float64), ties by index
    exact = _pair_distances(X, np.arange(n), best_i, threads)
    slack = rounding_slack(norms2, best_i, best_d, exact)
    by_index = np.argsort(best_i, axis=1, kind="stable")
    cand = np.take_along_axis(best_i, by_index, axis=1)
    dist2 = np.take_along_axis(exact, by_index, axis=1)
    order = np.argsort(dist2, axis=1, kind="stable")[:, :k]
    ind = np.take_along_axis(cand, order, axis=1)
    dist2 = np.take_along_axis(dist2, order, axis=1)
    unsure = unsure_rows(norms2, dist2[:, -1], best_d[:, -1], slack)
    if unsure.size:
        logger.debug("blocked kNN: %d of %d rows searched again in float32 (candidates within "
                     "the bfloat16 rounding of the k-th distance)", unsure.size, n)
        ind[unsure], dist2[unsure] = rows_knn(X, unsure, k, squared=True,
                                                   threads=threads)
    return ind, np.sqrt(dist2).astype(np.float32)


def _centred(X: np.ndarray, mean: np.ndarray, products: str = "bfloat16", chunk: int = 16384):
    """The centred rows ``X − mean`` rounded for the products, and their exact squared norms
    in float64: ``(rows, scales, norms2)``.

    ``products="bfloat16"``: ``rows`` is a bfloat16 tensor, ``scales`` is None.
    ``products="int8"``: row ``i`` is ``scales[i] · rows[i]``, ``rows`` an int8 tensor,
    ``scales`` (float32) the row's largest magnitude over 127.
    Made chunk by chunk: a float32 centred copy of 1M × 400 features took 1.6 GB next to the
    features themselves (the 1M run's RSS reached 5 GB in the search).
    """
    import torch

    from spray.analysis.knn import squared_norms

    n = X.shape[0]
    rows = torch.empty(X.shape, dtype=torch.int8 if products == "int8" else torch.bfloat16)
    scales = np.empty(n, dtype=np.float32) if products == "int8" else None
    norms2 = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk):
        Xc = X[s:s + chunk] - mean
        norms2[s:s + chunk] = squared_norms(Xc)
        if scales is None:
            rows[s:s + chunk] = torch.from_numpy(Xc)
            continue
        top = np.abs(Xc).max(axis=1) / np.float32(127)
        top[top == 0] = 1
        scales[s:s + chunk] = top
        rows[s:s + chunk] = torch.from_numpy(np.rint(Xc / top[:, None]).astype(np.int8))
    return rows, scales, norms2


def _rounded_norms(rows, scales) -> np.ndarray:
    """Squared norms (float32) of the rounded rows (``scales · rows`` for int8 rows)."""
    n = rows.shape[0]
    sq = np.empty(n, dtype=np.float32)  # in chunks: no float copy of all rows
    for s in range(0, n, 16384):
        sq[s:s + 16384] = rows[s:s + 16384].float().pow(2).sum(dim=1).numpy()
    if scales is not None:
        sq *= scales * scales
    return sq


def _candidates(Xb, kk: int, threads: int, block: int, scales=None):
    """The ``kk`` best candidates of every row (``Xb``: centred, rounded by :func:`_centred`)
    by their rounded score: ``(scores, indices)``."""
    import torch

    n = Xb.shape[0]
    sq = _rounded_norms(Xb, scales)
    best_d = np.full((n, kk), np.inf, dtype=np.float32)
    best_i = np.full((n, kk), -1, dtype=np.int64)
    kern = _kernels()
    starts = list(range(0, n, block))
    spans = [slice(a, min(a + block, n)) for a in starts]

    def scan(pair):
        rows, cols = spans[pair[0]], spans[pair[1]]
        lists = (rows.start, cols.start, best_d[rows], best_i[rows], best_d[cols], best_i[cols],
                 pair[0] != pair[1])
        if scales is None:
            G = torch.mm(Xb[rows], Xb[cols].T).view(torch.int16).numpy().view(np.uint16)
            kern.scan_pair(G, sq[rows], sq[cols], *lists)
        else:
            G = torch._int_mm(Xb[rows], Xb[cols].T).numpy()
            kern.scan_pair_int(G, scales[rows], scales[cols], sq[rows], sq[cols], *lists)

    # one torch thread per product: the threads here run disjoint block pairs side by side
    with _LOCK, _torch_threads(1):
        if threads == 1:
            for pairs in block_rounds(len(starts)):
                for pair in pairs:
                    scan(pair)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                for pairs in block_rounds(len(starts)):
                    list(pool.map(scan, pairs))
    return best_d, best_i


def _pair_distances(X: np.ndarray, rows: np.ndarray, cand: np.ndarray, threads: int):
    """Squared distances (float64) of ``X[rows[i]]`` to ``X[cand[i, j]]`` (``inf`` for -1)."""
    import numba

    out = np.empty(cand.shape, dtype=np.float64)
    with _LOCK:
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            _kernels().pair_distances(X, rows.astype(np.int64), np.ascontiguousarray(cand), out)
        finally:  # pynndescent's NN-descent, run next in this thread, depends on the count
            numba.set_num_threads(before)
    return out


def _scores_exact(norms2: np.ndarray, dist2: np.ndarray) -> np.ndarray:
    """Exact scores ``|x_j|² − 2 x_i·x_j = d_ij² − |x_i|²`` in the centred frame for the
    squared distances ``dist2`` (rows: queries) and the queries' squared norms ``norms2``."""
    return dist2 - norms2[:, None]


def rounding_slack(norms2, best_i, best_d, exact) -> float:
    """Twice the largest rounding error of a score seen among all ``n × (k + margin)``
    candidates (their exact squared distances ``exact`` are known): the room a row's k-th
    score must leave."""
    valid = (best_i >= 0) & np.isfinite(best_d)
    if not valid.any():
        return 0.0
    scores = _scores_exact(norms2, np.where(valid, exact, 0.0))
    err = np.abs(best_d.astype(np.float64) - scores)[valid]
    return 2.0 * float(err.max())


def unsure_rows(norms2: np.ndarray, kth2: np.ndarray, worst_score: np.ndarray,
                slack: float) -> np.ndarray:
    """Rows whose true ``k`` neighbours may not all be among their candidates.

    A list misses a true neighbour only if that neighbour's rounded score exceeded the list's
    worst rounded score ``w``; a row is sure when its exact k-th score (from the squared
    distance ``kth2`` and the row's centred squared norm ``norms2``) stays below ``w`` by
    more than ``slack`` (twice the largest rounding error measured on the candidates, which
    are the pairs closest to the threshold). Rows with fewer candidates than the margin
    (``w`` infinite) are sure.
    """
    kth_score = _scores_exact(norms2, kth2[:, None])[:, 0]
    full = np.isfinite(worst_score)
    return np.flatnonzero(full & ~(kth_score < worst_score.astype(np.float64) - slack))


def rows_knn(X: np.ndarray, rows: np.ndarray, k: int, chunk: int = 256, squared: bool = False,
             threads: int = 1):
    """Exact ``k`` nearest neighbours (self excluded, ties by index) of ``X[rows]``.

    Candidates by float32 products (``k + margin`` per row), ranked by float64 distances.
    Returns ``(indices, distances)`` (squared float64 distances with ``squared``, float32
    distances otherwise).
    """
    n = X.shape[0]
    kk = min(n - 1, k + candidate_margin(k))
    sq = np.einsum("ij,ij->i", X, X)
    cand = np.empty((len(rows), kk), dtype=np.int64)
    chunk = max(1, min(chunk, 2 ** 26 // n))  # distance blocks of at most ~256 MB
    for s in range(0, len(rows), chunk):
        r = rows[s:s + chunk]
        D = sq[r, None] - 2.0 * (X[r] @ X.T) + sq[None, :]
        D[np.arange(len(r)), r] = np.inf
        cand[s:s + chunk] = np.argpartition(D, kk - 1, axis=1)[:, :kk]
    cand.sort(axis=1)  # ties by index after the stable sort below
    dist2 = _pair_distances(X, rows, cand, threads)
    order = np.argsort(dist2, axis=1, kind="stable")[:, :k]
    out_i = np.take_along_axis(cand, order, axis=1)
    out_d = np.take_along_axis(dist2, order, axis=1)
    return (out_i, out_d) if squared else (out_i, np.sqrt(out_d).astype(np.float32))


def _threads(n_jobs: int) -> int:
    from spray.config.cluster import available_cores

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
    """Compile (or load from the on-disk cache) the scan kernels of both product kinds on a
    tiny problem, and time the products (:func:`product_kind`) for the usual feature width.

    Both kinds, not only the one timed here: the choice is timed once per feature width, so a
    class of another width (or the same width timed under load) may take the other kind.
    """
    X = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    product_kind()
    for kind in ("bfloat16", "int8"):
        try:
            blocked_knn(X, 3, n_jobs=1, block=32, products=kind)
        except (RuntimeError, AttributeError) as exc:  # no integer products in this build
            logger.debug("blocked kNN warm-up: no %s products (%s)", kind, exc)
