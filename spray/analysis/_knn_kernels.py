"""Compiled kernels of :mod:`spray.analysis.knn_blocked` (numba, cached on disk).

A product block ``G`` holds bfloat16 values (passed as ``uint16``: the upper half of a float32).
Each query row keeps its best candidates sorted ascending in ``best_d`` / ``best_i`` by the score
``|x_cand|² − 2 x_query·x_cand``. :func:`scan_pair` reads each row of a block once and serves
both directions (the block's rows as queries against its columns, and its columns against its
rows); scores are compared with the worst kept ones in one vectorized pass per row, and only
the entries of a row that beat them are walked (after the first blocks, few rows have any).
:func:`scan_pair` is single-threaded and releases the GIL: the caller runs blocks that share
no rows in parallel threads.
"""

from __future__ import annotations

import numba
import numpy as np

# reassociation lets LLVM vectorize the sums; no 'nnan'/'ninf': lists start at inf
_FAST = {"reassoc", "nsz", "contract", "arcp"}


@numba.njit(cache=True, nogil=True, inline="always")
def _insert(best_d, best_i, q, score, j):
    """Insert candidate ``j`` with ``score`` into row ``q``'s sorted list (worst dropped)."""
    pos = best_d.shape[1] - 1
    while pos > 0 and best_d[q, pos - 1] > score:
        best_d[q, pos] = best_d[q, pos - 1]
        best_i[q, pos] = best_i[q, pos - 1]
        pos -= 1
    best_d[q, pos] = score
    best_i[q, pos] = j


@numba.njit(cache=True, nogil=True, fastmath=_FAST, inline="always")
def _scan_row(g, r, sq_r, sq_cols, row0, col0, rows_d, rows_i, cols_d, cols_i, worst_c,
              flag_r, flag_c, both, diag):
    """Scan row ``r`` of a product block, its products ``g`` (float32) in hand (see
    :func:`scan_pair`)."""
    cb = g.shape[0]
    kk = rows_d.shape[1]
    words_r = flag_r.view(np.uint64)
    words_c = flag_c.view(np.uint64)
    two = np.float32(2.0)
    worst_r = rows_d[r, kk - 1]
    hits_r = np.int32(0)
    hits_c = np.int32(0)
    for c in range(cb):
        v = two * g[c]
        a = np.uint8(sq_cols[c] - v < worst_r)
        b = np.uint8(sq_r - v < worst_c[c])
        flag_r[c] = a
        flag_c[c] = b
        hits_r += np.int32(a)
        hits_c += np.int32(b)
    if hits_r:
        for w in range(words_r.shape[0]):
            if words_r[w]:
                for c in range(8 * w, min(cb, 8 * w + 8)):
                    score = sq_cols[c] - two * g[c]
                    if flag_r[c] and score < worst_r and not (diag and c == r):
                        _insert(rows_d, rows_i, r, score, col0 + c)
                        worst_r = rows_d[r, kk - 1]
    if both and hits_c:
        for w in range(words_c.shape[0]):
            if words_c[w]:
                for c in range(8 * w, min(cb, 8 * w + 8)):
                    score = sq_r - two * g[c]
                    if flag_c[c] and score < worst_c[c]:
                        _insert(cols_d, cols_i, c, score, row0 + r)
                        worst_c[c] = cols_d[c, kk - 1]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def scan_pair(G, sq_rows, sq_cols, row0, col0, rows_d, rows_i, cols_d, cols_i, both):
    """Scan one product block ``G = X_I X_Jᵀ`` (rows global ``row0 + r``, columns ``col0 + c``).

    The rows' lists (``rows_d`` / ``rows_i``) receive the columns; with ``both``, the columns'
    lists (``cols_d`` / ``cols_i``) receive the rows (a block of distinct row and column sets).
    A block on the diagonal (``row0 == col0``) skips each row's own column.

    Per row of ``G``, one vectorized pass flags the entries that beat the current worst kept
    score (of the row, or of each column) and counts them; only a row with flags is walked,
    eight flags (one 64-bit word) at a time, and each flagged entry is compared again with
    the worst as it is when the walk reaches it.
    """
    rb, cb = G.shape
    kk = rows_d.shape[1]
    width = (cb + 7) // 8 * 8
    bits = np.empty(cb, dtype=np.uint32)
    g = bits.view(np.float32)
    flag_r = np.zeros(width, dtype=np.uint8)
    flag_c = np.zeros(width, dtype=np.uint8)
    worst_c = cols_d[:, kk - 1].copy()
    diag = row0 == col0
    for r in range(rb):
        for c in range(cb):
            bits[c] = np.uint32(G[r, c]) << 16
        _scan_row(g, r, sq_rows[r], sq_cols, row0, col0, rows_d, rows_i, cols_d, cols_i,
                  worst_c, flag_r, flag_c, both, diag)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def scan_pair_int(G, scale_rows, scale_cols, sq_rows, sq_cols, row0, col0, rows_d, rows_i,
                  cols_d, cols_i, both):
    """:func:`scan_pair` for a block ``G`` of int32 products of int8 rows: the product of
    rows ``r`` and ``c`` is ``scale_rows[r] · scale_cols[c] · G[r, c]``."""
    rb, cb = G.shape
    kk = rows_d.shape[1]
    width = (cb + 7) // 8 * 8
    g = np.empty(cb, dtype=np.float32)
    flag_r = np.zeros(width, dtype=np.uint8)
    flag_c = np.zeros(width, dtype=np.uint8)
    worst_c = cols_d[:, kk - 1].copy()
    diag = row0 == col0
    for r in range(rb):
        s = scale_rows[r]
        for c in range(cb):
            g[c] = np.float32(G[r, c]) * (s * scale_cols[c])
        _scan_row(g, r, sq_rows[r], sq_cols, row0, col0, rows_d, rows_i, cols_d, cols_i,
                  worst_c, flag_r, flag_c, both, diag)


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def pair_distances(X, rows, cand, out):
    """``out[i, j] = ||x_rows[i] − x_cand[i, j]||²``, accumulated in float64 (``inf`` where the
    candidate is ``-1``)."""
    m, kk = cand.shape
    d = X.shape[1]
    for i in numba.prange(m):
        q = rows[i]
        for j in range(kk):
            c = cand[i, j]
            if c < 0:
                out[i, j] = np.inf
                continue
            acc = 0.0
            for t in range(d):
                diff = np.float64(X[q, t]) - np.float64(X[c, t])
                acc += diff * diff
            out[i, j] = acc
