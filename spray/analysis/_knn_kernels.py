"""Compiled scan kernels of :mod:`spray.analysis.knn_blocked` (numba, cached on disk).

A product block ``G`` holds bfloat16 values (passed as ``uint16``: the upper half of a float32).
Each query row keeps its best candidates sorted ascending in ``best_d`` / ``best_i`` by the score
``|x_cand|² − 2 x_query·x_cand``. Scores are computed and compared with the worst kept one in
vectorized runs of :data:`RUN` entries; only a run that holds a better score is walked entry by
entry (after the first blocks, few runs do).
"""

from __future__ import annotations

import numba
import numpy as np

#: entries compared at once before any is inserted
RUN = 32
# reassociation lets LLVM vectorize the min / any reductions; no 'nnan'/'ninf': lists start at inf
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


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _scores(G, r, c0, c1, sq, out, bits):
    """``out[c - c0] = sq[c - c0] - 2 G[r, c]`` for ``c`` in ``[c0, c1)``."""
    m = c1 - c0
    for c in range(m):
        bits[c] = np.uint32(G[r, c0 + c]) << 16
    g = bits.view(np.float32)
    for c in range(m):
        out[c] = sq[c] - 2.0 * g[c]


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def scan_rows(G, sq_cols, row0, col0, best_d, best_i):
    """Rows of the block as queries against its columns (global indices ``col0 + c``)."""
    rb, cb = G.shape
    kk = best_d.shape[1]
    for r in numba.prange(rb):
        bits = np.empty(cb, dtype=np.uint32)
        score = np.empty(cb, dtype=np.float32)
        _scores(G, r, 0, cb, sq_cols, score, bits)
        worst = best_d[r, kk - 1]
        me = row0 + r - col0
        for s in range(0, cb, RUN):
            e = min(cb, s + RUN)
            hit = False
            for c in range(s, e):
                hit |= score[c] < worst
            if hit:
                for c in range(s, e):
                    if score[c] < worst and c != me:
                        _insert(best_d, best_i, r, score[c], col0 + c)
                        worst = best_d[r, kk - 1]


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def scan_cols(G, sq_rows, row0, col0, best_d, best_i):
    """Columns of the block as queries against its rows (global indices ``row0 + r``)."""
    rb, cb = G.shape
    kk = best_d.shape[1]
    step = 512
    for chunk in numba.prange((cb + step - 1) // step):
        c0 = chunk * step
        c1 = min(cb, c0 + step)
        m = c1 - c0
        worst = best_d[c0:c1, kk - 1].copy()
        bits = np.empty(m, dtype=np.uint32)
        score = np.empty(m, dtype=np.float32)
        sq = np.empty(m, dtype=np.float32)
        for r in range(rb):
            sq[:] = sq_rows[r]
            _scores(G, r, c0, c1, sq, score, bits)
            for s in range(0, m, RUN):
                e = min(m, s + RUN)
                hit = False
                for c in range(s, e):
                    hit |= score[c] < worst[c]
                if hit:
                    for c in range(s, e):
                        if score[c] < worst[c]:
                            _insert(best_d, best_i, c0 + c, score[c], row0 + r)
                            worst[c] = best_d[c0 + c, kk - 1]
