"""Smallest eigenpairs of the normalized graph Laplacian and the eigengap.

``L_sym = I − D^-1/2 W D^-1/2`` is never formed densely. Its smallest eigenvalues are
``1 − μ`` for the *largest algebraic* eigenvalues μ of the normalized affinity
``M = D^-1/2 W D^-1/2`` (``which='LA'`` in ARPACK's Lanczos). The spectrum of ``M`` lies in
``[−1, 1]``; asking for the largest *magnitude* (``'LM'``) instead would also return
eigenvalues near −1 (bipartite-like structure) and corrupt the spectrum of ``L_sym``.

Isolated nodes (degree 0) are treated as components of their own: they get eigenvalue 0 and an
indicator eigenvector, exactly as if they carried a self-loop, so that the number of zero
eigenvalues always equals the number of connected components.

Two solvers for the largest μ (``solver: auto`` picks by size, see :func:`choose_solver`):

* ``eigsh``: ARPACK Lanczos on a polynomial filter of ``M`` (:func:`_eigsh`), exact to machine
  precision, one sparse matrix–vector product at a time.
* ``chebyshev``: Chebyshev-filtered subspace iteration (Zhou & Saad 2007, :func:`_chebyshev`)
  on a block of vectors. Written here because no library offers it and because it turns the
  work into sparse × dense *block* products, which PyTorch runs in float32 (row blocks of the
  matrix side by side on the cores, :class:`_RowBlocks`) —
  at n = 100 000 a float32 product with 16–24 columns costs ~0.3 ms per vector against ~2.3 ms for
  scipy's float64 single vector, so the eigenpairs take ~3 s instead of ~13 s. Known
  eigenvectors that the filter amplifies far more than the wanted ones (the component null
  vectors, locked vectors well above the bulk) are projected out inside the recurrence, so
  that their float32 rounding cannot swamp the wanted components; the float32 iterations
  run down to the residual tolerance (float32's floor is ~1e-7) and a float64 Rayleigh–Ritz
  confirms it and gives the eigenvalues (float64 iterations finish only when it does not).
  Thirty float64 Lanczos steps before the iteration place the filter: its lower end at the
  bottom of the spectrum instead of −1, its first cut at the top 1 % of the spectrum, and
  the isolated eigenvectors they find far above the cut start the block (projected out of
  the first filter). Against the fixed [−1, 0.5] start this needs a third fewer column
  products on the hard 100k graph (8 160 → 5 466 float32-equivalent columns) and 11 % fewer
  on the easy one (4 128 → 3 675), the same eigenvalues to ~4e-10 (``docs/scale.md``).
  Tested against a dense ``eigh`` and against ``eigsh`` (``tests/test_spectral.py``).

Eigenvalues are returned ascending and clipped to ``[0, 2]``; eigenvectors are orthonormal
eigenvectors of ``L_sym`` with a deterministic sign (largest-magnitude entry positive).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

#: eigenvalues of L_sym at or below this are treated as exactly zero (component indicators)
ZERO_TOL = 1e-9

#: below this many nodes the eigenproblem is solved densely (cheap and exact)
DENSE_BELOW = 200

log = logging.getLogger(__name__)


def normalized_affinity(W) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(M, d)``: ``M = D^-1/2 W D^-1/2`` with unit self-loops on isolated nodes, and degrees."""
    W = sp.csr_matrix(W, dtype=np.float64)
    d = np.asarray(W.sum(axis=1)).ravel()
    isolated = d <= 0
    if isolated.any():
        W = W + sp.diags(isolated.astype(np.float64), format="csr")
        d = np.where(isolated, 1.0, d)
    inv = 1.0 / np.sqrt(d)
    M = sp.csr_matrix(sp.diags(inv) @ W @ sp.diags(inv))
    return M, d


def laplacian_sym(W) -> sp.csr_matrix:
    """Sparse ``L_sym = I − D^-1/2 W D^-1/2`` (same isolated-node convention)."""
    M, _ = normalized_affinity(W)
    return sp.csr_matrix(sp.identity(M.shape[0], format="csr") - M)


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _dense(M: sp.csr_matrix, m: int):
    mu, vec = np.linalg.eigh(M.toarray())
    return mu[::-1][:m], vec[:, ::-1][:, :m]


def component_vectors(W, d: np.ndarray, max_vectors: int):
    """Connected components and the orthonormal null vectors ``D^1/2 1_C / ||·||`` of L_sym.

    Returns ``(n_components, labels, vectors (n, min(n_components, max_vectors)))``; the
    vectors belong to the largest components.
    """
    from scipy.sparse.csgraph import connected_components

    n_comp, comp = connected_components(W, directed=False)
    sizes = np.bincount(comp, minlength=n_comp)
    keep = np.argsort(-sizes, kind="stable")[:max_vectors]
    sq = np.sqrt(d)
    V = np.zeros((len(d), len(keep)))
    for j, c in enumerate(keep):
        members = comp == c
        V[members, j] = sq[members] / np.linalg.norm(sq[members])
    return n_comp, comp, V


#: degree of the polynomial filter ((1 + μ) / 2)^p applied before Lanczos (see _eigsh)
FILTER_DEGREE = 16


def _with_null(mu: np.ndarray, vec: np.ndarray, null: np.ndarray | None):
    """The solver's eigenpairs plus the deflated null vectors (μ = 1), μ descending."""
    if null is not None and null.shape[1]:
        mu = np.concatenate([np.ones(null.shape[1]), mu])
        vec = np.hstack([null, vec])
    order = np.argsort(mu, kind="stable")[::-1]
    return mu[order], vec[:, order]


def _rayleigh_ritz(M: sp.csr_matrix, V: np.ndarray):
    """Eigenpairs of ``M`` in the span of ``V`` and the largest residual norm."""
    Q, _ = np.linalg.qr(V)
    MQ = M @ Q
    mu, S = np.linalg.eigh(Q.T @ MQ)
    vec = Q @ S
    res = np.linalg.norm(MQ @ S - vec * mu, axis=0)
    return mu, vec, float(res.max()) if res.size else 0.0


def _eigsh(M: sp.csr_matrix, m: int, tol: float, seed: int, null: np.ndarray | None = None,
           degree: int = FILTER_DEGREE):
    """Largest algebraic eigenpairs of ``M`` with ARPACK (Lanczos).

    * The known eigenvectors for μ = 1 (``null``, one per component) are deflated, so Lanczos
      never has to resolve that repeated eigenvalue (it can silently miss copies of it).
    * Lanczos runs on the polynomial ``f(M) = ((I + M) / 2)^degree``: same eigenvectors, same
      order (f is increasing on [−1, 1]), but the unwanted bulk of the spectrum is pressed
      towards 0, so far fewer (cheap, sparse) Lanczos steps are needed — 4–6× faster on kNN
      graphs. The eigenvalues of ``M`` are then recovered by Rayleigh–Ritz on the converged
      vectors; if a residual ``||M v − μ v||`` exceeds 1e-9 the plain ``M`` is used instead.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh
    from threadpoolctl import threadpool_limits

    n = M.shape[0]
    c = 0 if null is None else null.shape[1]
    k = m - c
    v0 = np.random.default_rng(seed).standard_normal(n)

    def deflate(x):
        return x - null @ (null.T @ x) if c else x

    def run(p):
        def matvec(x):
            x = deflate(np.asarray(x, dtype=np.float64).reshape(n, -1))
            for _ in range(p):
                x = 0.5 * (M @ x + x)
            return x
        op = LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
        ncv = min(n, max(2 * k + 1, k + 32))
        _, V = eigsh(op, k=k, which="LA", tol=tol, v0=deflate(v0), ncv=ncv)
        return _rayleigh_ritz(M, V)

    # ARPACK works one vector at a time; idle BLAS threads spinning between its small dense
    # calls slowed it by a third on 2 cores, so BLAS runs single-threaded here
    with threadpool_limits(1, user_api="blas"):
        found = run(degree) if degree > 1 else None
        if found is None or found[2] > 1e-9:
            found = run(1)
    return _with_null(found[0], found[1], null)


#: Chebyshev solver: polynomial degree per iteration, columns per sparse block product
CHEBYSHEV_DEGREE = 24
CHEBYSHEV_BLOCK = 24
#: Chebyshev solver: residual tolerance ``||M v − μ v||`` when ``tol`` is 0 (eigenvalue errors
#: are at most this and in practice ~1e-10, the squared residual over the gap), iteration cap
CHEBYSHEV_TOL = 1e-6
CHEBYSHEV_MAX_ITER = 100
#: ``solver: auto`` uses the Chebyshev solver from this many nodes on, eigsh below
CHEBYSHEV_ABOVE = 20000
#: Chebyshev solver: guard vectors beyond the k wanted ones, ``max(MIN_GUARDS, GUARD_SHARE · k)``
#: (16, 24 or 33 instead of 8 for k = 31 cost 24–72 % more products on the hard 100k graph)
CHEBYSHEV_MIN_GUARDS = 8
CHEBYSHEV_GUARD_SHARE = 0.25
#: Chebyshev solver: Lanczos steps before the iteration (:func:`_lanczos_start`), the margin
#: of the filter's lower end below the smallest Lanczos value (share of the spread of the
#: Lanczos values), the share of the spectrum (Lanczos weights) above the first cut, and the
#: residual bound below which a Lanczos vector above the first cut is taken as an eigenvector
CHEBYSHEV_LANCZOS_STEPS = 30
CHEBYSHEV_LOW_MARGIN = 0.02
CHEBYSHEV_FIRST_CUT_SHARE = 0.01
CHEBYSHEV_OUTLIER_TOL = 1e-8


def _torch_csr(M: sp.csr_matrix, dtype):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.from_numpy(M.indptr.astype(np.int64)),
                                       torch.from_numpy(M.indices.astype(np.int64)),
                                       torch.from_numpy(M.data).to(dtype), size=M.shape)


class _RowBlocks:
    """``M`` as torch CSR row blocks of about equal non-zeros, multiplied side by side.

    torch's CSR × dense product with 2 OpenMP threads divides the work on idle cores, but its
    threads keep the cores busy between products: on shared cores both stayed busy for the
    whole solve (1.5–3× the CPU time of one thread, no shorter), and the timing of
    :func:`_fastest_threads` chose one thread in the quiet benchmark run (the eigenpairs of
    the hard 100k case on one core). Here each row block runs torch's kernel with one thread,
    the blocks in parallel Python threads (torch releases the GIL): the CPU time stays that
    of one thread whatever the load, and the wall time divides on idle cores. Every output
    row is computed by the same kernel as with one thread, so the results are the same to the
    bit whatever the number of threads.
    """

    def __init__(self, M: sp.csr_matrix, dtype, parts: int):
        cuts = np.searchsorted(M.indptr, np.linspace(0, M.nnz, parts + 1)[1:-1])
        edges = [0, *sorted(set(int(c) for c in cuts) - {0, M.shape[0]}), M.shape[0]]
        self.blocks = [(a, b, _torch_csr(M[a:b], dtype)) for a, b in zip(edges, edges[1:])]
        self.dtype = dtype
        # a ThreadPoolExecutor runs the blocks in parallel; None: one after another
        self.pool: ThreadPoolExecutor | None = None

    def addmm(self, x0, x1, beta: float, alpha: float, gamma: float = 0.0):
        """``beta · x0 + alpha · M @ x1 + gamma · x1`` (a new tensor)."""
        import torch

        out = torch.empty_like(x1)

        def run(block):
            a, b, A = block
            torch.addmm(x0[a:b], A, x1, beta=beta, alpha=alpha, out=out[a:b])
            if gamma:
                out[a:b].add_(x1[a:b], alpha=gamma)

        if self.pool is None or len(self.blocks) == 1:
            for block in self.blocks:
                run(block)
        else:
            list(self.pool.map(run, self.blocks))
        return out

    def __matmul__(self, X):
        X = X.to(self.dtype).contiguous()
        return self.addmm(X, X, 0.0, 1.0)


def _chebyshev_filter(A: _RowBlocks, X, degree: int, cut: float, low: float = -1.0, P=None):
    """``T_degree`` of ``M`` mapped so that ``[low, cut]`` is damped (|T| ≤ 1) and the
    eigenvalues above ``cut`` are amplified; three-term recurrence, column blocks.

    ``P`` (orthonormal eigenvectors of ``M``, or None) is projected out of the last two terms
    every :data:`PROJECT_EVERY` steps: the filter would amplify such components (the null
    vectors, eigenvalues near 1) by many orders of magnitude more than the wanted ones, and
    in float32 their rounding errors would then swamp the wanted components (the iteration
    stalled near a residual of 1e-4 on a 100k-node graph of noise). The terms of the
    recurrence act on each eigencomponent separately, so removing the components of ``P``
    at any step leaves the others exactly as the polynomial makes them.
    """
    import torch

    def project(x):
        return x if P is None else x - P @ (P.T @ x)

    e, c = (cut - low) / 2.0, (cut + low) / 2.0
    out = []
    for s in range(0, X.shape[1], CHEBYSHEV_BLOCK):
        x0 = project(X[:, s:s + CHEBYSHEV_BLOCK].contiguous()).contiguous()
        x1 = A.addmm(x0, x0, beta=-c / e, alpha=1.0 / e)
        for step in range(2, degree + 1):
            x2 = A.addmm(x0, x1, beta=-1.0, alpha=2.0 / e, gamma=-2.0 * c / e)
            x0, x1 = x1, x2
            if step % PROJECT_EVERY == 0 or step == degree:
                x0, x1 = project(x0).contiguous(), project(x1).contiguous()
        out.append(x1)
    return torch.cat(out, dim=1)


#: Chebyshev solver: steps of the recurrence between projections of the outliers
PROJECT_EVERY = 4
#: Chebyshev solver: known eigenvectors the filter would amplify by more than this factor over
#: the wanted ones are projected out of every term (see :func:`_chebyshev_filter`)
CHEBYSHEV_PROJECT_ABOVE = 1e3


def _outliers(theta: np.ndarray, locked: int, cut: float, degree: int,
              low: float = -1.0) -> np.ndarray:
    """Positions among the ``locked`` leading Ritz values whose amplification by the filter
    exceeds that of the first unlocked one by :data:`CHEBYSHEV_PROJECT_ABOVE`."""
    e, c = (cut - low) / 2.0, (cut + low) / 2.0
    x = np.maximum((np.asarray(theta, dtype=np.float64) - c) / e, 1.0)
    log_amp = degree * np.arccosh(x)
    ref = log_amp[locked] if locked < len(log_amp) else log_amp[-1]
    return np.flatnonzero(log_amp[:locked] - ref > np.log(CHEBYSHEV_PROJECT_ABOVE))


_THREADS_LOCK = threading.Lock()


def _fastest_threads(A: _RowBlocks, X, pool) -> int:
    """Threads for the block products: one per row block of ``A`` (in ``pool``), or one
    thread if that is faster right now.

    Measured, not assumed: with other processes busy on the cores (parallel classes, other
    workers), threads waiting for a core can make the products slower than one thread (with
    torch's OpenMP threads the eigenpairs of a 100k-node graph took 14 s with 2 threads, 4 s
    with 1, on 2 busy cores). Three products per choice decide.
    """
    if len(A.blocks) <= 1:
        return 1
    block = X[:, :CHEBYSHEV_BLOCK].to(A.dtype).contiguous()
    timings: dict[int, float] = {}
    for threads, use in ((len(A.blocks), pool), (1, None)):
        A.pool = use
        A @ block  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            A @ block
        timings[threads] = time.perf_counter() - start
    return min(timings, key=lambda t: timings[t])


def _chebyshev(M: sp.csr_matrix, m: int, tol: float, seed: int, null: np.ndarray | None = None,
               degree: int = CHEBYSHEV_DEGREE):
    """:func:`_chebyshev_iterate` with the faster torch thread count (restored afterwards).

    torch's thread count is per process: solves in concurrent threads of one process (a
    threaded Dask worker) take turns, so that each restores what it found.
    """
    import torch

    with _THREADS_LOCK:
        threads = torch.get_num_threads()
        try:
            return _chebyshev_iterate(M, m, tol, seed, null, degree)
        finally:
            torch.set_num_threads(threads)


def _chebyshev_iterate(M: sp.csr_matrix, m: int, tol: float, seed: int,
                       null: np.ndarray | None = None, degree: int = CHEBYSHEV_DEGREE):
    """Largest algebraic eigenpairs of ``M`` by Chebyshev-filtered subspace iteration.

    A block of ``k + max(8, k/4)`` vectors (k wanted, the rest speed up convergence of the
    last wanted ones) is filtered with a degree-``degree`` Chebyshev polynomial that damps
    ``[low, cut]``, ``cut`` being the smallest Ritz value of the block, then orthonormalized
    and rotated by Rayleigh–Ritz. Thirty Lanczos steps first give ``low`` (the lower end of
    the spectrum), the first cut and the isolated eigenvectors far above it
    (:func:`_lanczos_start`).
    The component null vectors are deflated after each filter. Converged leading vectors are
    locked (not filtered again). Filtering runs in float32 until the float32 residuals reach
    the tolerance, which a float64 Rayleigh–Ritz confirms; float64 filtering finishes when it
    does not (or when float32 stalls). Returns ``None`` when the iteration cap is reached or
    the residual stalls for 10 iterations (the caller falls back to eigsh).
    """
    import torch

    n = M.shape[0]
    c = 0 if null is None else null.shape[1]
    k = m - c
    b = min(n - c, k + max(CHEBYSHEV_MIN_GUARDS, int(CHEBYSHEV_GUARD_SHARE * k)))
    tol = tol if tol > 0 else CHEBYSHEV_TOL
    gen = torch.Generator().manual_seed(int(seed))
    N = torch.from_numpy(null) if c else None
    parts = torch.get_num_threads()
    A64 = _RowBlocks(M, torch.float64, parts)
    A32 = _RowBlocks(M, torch.float32, parts)
    X = torch.randn(n, b, generator=gen, dtype=torch.float64)
    torch.set_num_threads(1)  # each row block's product runs on one thread (see _RowBlocks)
    with ThreadPoolExecutor(len(A32.blocks)) as pool:
        threads = _fastest_threads(A32, X, pool)
        A32.pool = A64.pool = pool if threads > 1 else None
        log.debug("chebyshev: products in %d thread(s)", threads)
        low, cut, U = _lanczos_start(A64, N, gen, b)
        return _chebyshev_loop(M, A32, A64, X, k, tol, null, N, degree, low, cut, U)


def _lanczos_start(A: _RowBlocks, N, gen, b: int, steps: int = 0):
    """``(low, cut, U)`` for the first filter, from ``steps`` (default
    :data:`CHEBYSHEV_LANCZOS_STEPS`) float64 Lanczos steps on ``M`` with the null vectors
    ``N`` deflated.

    * ``low``: the filter's lower end, the smallest Lanczos value minus its residual bound and
      :data:`CHEBYSHEV_LOW_MARGIN` of the spread. −1 (the bound of the spectrum) damps an
      interval up to twice as wide as the spectrum, which slows the filter's amplification
      near its cut (the hard 100k graph's spectrum ends near −0.64).
    * ``cut``: the Lanczos value above which the Lanczos weights (the spectral measure seen
      from a random vector) add up to :data:`CHEBYSHEV_FIRST_CUT_SHARE` (at least ``2b / n``),
      so that the first filter amplifies the top of the spectrum: the fixed first cut 0.5
      lay above the bulk of a graph of noise (the first iteration was lost), and a cut near
      the b-th eigenvalue amplifies too little against the ``n`` damped components.
    * ``U``: Lanczos vectors above the cut that have converged to eigenvectors (residual
      bound ≤ :data:`CHEBYSHEV_OUTLIER_TOL`, computed residual ≤ :data:`CHEBYSHEV_TOL`), or
      None. Isolated eigenvalues far above the
      cut (the shifted group of the hard case, μ = 0.986) converge in a few steps; the first
      filter would amplify them ~10¹⁰× more than the bulk edge, beyond float32's precision,
      so they start the block and are projected out of the first filter.
    """
    import torch

    steps = steps or CHEBYSHEV_LANCZOS_STEPS
    n = A.blocks[-1][1]
    q = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    if N is not None:
        q = q - N @ (N.T @ q)
    q = q / torch.linalg.vector_norm(q)
    prev, beta, alphas, betas, basis = torch.zeros_like(q), 0.0, [], [], []
    for _ in range(steps):
        basis.append(q.float())
        w = A @ q
        if N is not None:
            w = w - N @ (N.T @ w)
        alpha = float((q * w).sum())
        w = w - alpha * q - beta * prev
        beta = float(torch.linalg.vector_norm(w))
        alphas.append(alpha)
        betas.append(beta)
        if beta <= 1e-12:
            break
        prev, q = q, w / beta
    T = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    theta, S = np.linalg.eigh(T)
    bounds = np.abs(betas[-1] * S[-1])
    low = max(-1.0, theta[0] - bounds[0] - CHEBYSHEV_LOW_MARGIN * (theta[-1] - theta[0]))
    share = np.cumsum(S[0, ::-1] ** 2)  # of the spectrum above each Lanczos value
    above = int(np.searchsorted(share, max(CHEBYSHEV_FIRST_CUT_SHARE, 2 * b / n)))
    i = len(theta) - 1 - min(above, len(theta) - 1)
    top = [j for j in range(len(theta) - 1, i, -1) if bounds[j] <= CHEBYSHEV_OUTLIER_TOL]
    U = None
    if top:
        U = torch.zeros(n, len(top), dtype=torch.float64)
        for v, row in zip(basis, S[:, top]):
            U += v.double() * torch.from_numpy(row)
        # without reorthogonalization a converged eigenvalue returns as a copy (a "ghost")
        # and the residual bounds lose their meaning (after 90 steps on a 1 500-node graph of
        # noise a vector with a bound below 1e-8 had a residual of 2e-2): kept are the
        # independent vectors whose residual, computed, is below the solver's tolerance
        U, R = torch.linalg.qr(U)
        U = U[:, torch.abs(torch.diagonal(R)) > 0.5]
        AU = A @ U
        if N is not None:
            AU = AU - N @ (N.T @ AU)
        rayleigh = (U * AU).sum(dim=0)
        U = U[:, torch.linalg.vector_norm(AU - U * rayleigh, dim=0) <= CHEBYSHEV_TOL]
    log.debug("chebyshev: Lanczos lower end %.4f, first cut %.4f, %d eigenvector(s) above",
              low, theta[i], 0 if U is None else U.shape[1])
    return float(low), float(theta[i]), U if U is not None and U.shape[1] else None


def _chebyshev_loop(M, A32: _RowBlocks, A64: _RowBlocks, X, k: int, tol: float, null, N,
                    degree: int, low: float = -1.0, cut: float = 0.5, U=None):
    """The iterations of :func:`_chebyshev_iterate` (``None``: stalled or capped)."""
    import torch

    A = A32
    locked, worst, history, theta = 0, np.inf, [], None
    if U is not None and U.shape[1] < X.shape[1]:
        X = torch.cat([U, X[:, U.shape[1]:]], dim=1)
        locked = U.shape[1]
    for _ in range(CHEBYSHEV_MAX_ITER):
        parts = [N] if N is not None else []
        if locked and theta is not None:
            parts.append(X[:, _outliers(theta.numpy(), locked, cut, degree, low)])
        elif locked:
            parts.append(X[:, :locked])
        P = (torch.cat(parts, dim=1).to(A.dtype) if parts and sum(p.shape[1] for p in parts)
             else None)
        Xf = _chebyshev_filter(A, X[:, locked:].to(A.dtype), degree, cut, low, P=P).double()
        X = torch.cat([X[:, :locked], Xf], dim=1)
        if N is not None:
            X = X - N @ (N.T @ X)
        Q, _ = torch.linalg.qr(X)
        AQ = (A @ Q.to(A.dtype)).double()
        theta, S = torch.linalg.eigh(0.5 * (Q.T @ AQ + AQ.T @ Q))
        theta, S = theta.flip(0), S.flip(1)
        X = Q @ S
        res = torch.linalg.vector_norm(AQ @ S - X * theta, dim=0).numpy()[:k]
        cut = float(theta[-1])
        done = res <= tol
        if done.all():
            # the float32 residual is only good to ~1e-7: confirm in float64
            mu, vec, final = _rayleigh_ritz(M, X[:, :k].numpy())
            if final <= tol:
                break
            done[:] = False
        locked = int(np.argmin(done))
        worst = float(res.max())
        history.append(worst)
        stalled = len(history) > 3 and min(history[-3:]) > 0.8 * min(history[:-3])
        if A is A32 and (worst < max(tol, 1e-6) or stalled):
            # float32 claimed the tolerance and float64 did not confirm it (float32's floor
            # is ~1e-7), or it stalled: finish in float64
            A = A64
        log.debug("chebyshev: iteration %d, %s, locked %d, converged %d, residual %.2e, "
                  "cut %.4f, low %.4f", len(history), "float32" if A is A32 else "float64",
                  locked, int(done.sum()), worst, cut, low)
        if len(history) > 20 and worst > 0.5 * history[-11]:
            return None  # stalled (e.g. no spectral gap below the block): leave it to eigsh
    else:
        return None
    return _with_null(mu, vec, null)


def choose_solver(solver: str, n: int, m: int) -> str:
    """The solver ``auto`` stands for: ``chebyshev`` from :data:`CHEBYSHEV_ABOVE` nodes on."""
    if solver != "auto":
        return solver
    return "chebyshev" if n >= CHEBYSHEV_ABOVE and 4 * m < n else "eigsh"


def _lobpcg(M: sp.csr_matrix, d: np.ndarray, m: int, tol: float, seed: int,
            null: np.ndarray | None = None):
    """LOBPCG for the smallest eigenpairs of ``L_sym``, the component null vectors as
    constraints; preconditioned with pyamg's smoothed aggregation when pyamg is installed,
    with the Jacobi diagonal otherwise."""
    from scipy.sparse.linalg import LinearOperator, lobpcg

    n = M.shape[0]
    L = sp.csr_matrix(sp.identity(n, format="csr") - M)
    c = 0 if null is None else null.shape[1]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, m - c))
    try:
        import pyamg

        ml = pyamg.smoothed_aggregation_solver(L + 1e-4 * sp.identity(n, format="csr"))
        precond = ml.aspreconditioner()
    except ImportError:
        dinv = 1.0 / np.maximum(L.diagonal(), 1e-12)
        precond = LinearOperator((n, n), matvec=lambda x: dinv * np.ravel(x),
                                 matmat=lambda x: dinv[:, None] * x, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lam, vec = lobpcg(L, X, M=precond, Y=null if c else None, largest=False,
                          tol=tol or 1e-9, maxiter=1000)
    mu, vec = 1.0 - lam, vec
    return _with_null(mu, vec, null)


def smallest_eigenpairs(W, n_eigenvalues: int, solver: str = "auto", tol: float = 0.0,
                        seed: int = 0, notes: list | None = None):
    """Smallest eigenvalues (ascending) and eigenvectors of ``L_sym`` of the affinity ``W``.

    Parameters
    ----------
    W
        symmetric sparse affinity ``(n, n)`` with non-negative weights.
    n_eigenvalues
        how many eigenpairs; ``m = min(n_eigenvalues, n)`` are returned
        (graphs below :data:`DENSE_BELOW` nodes, or asking for ≥ n/2 eigenpairs, are solved
        densely, otherwise at most ``n − 1``).
    solver
        ``auto`` (:func:`choose_solver`), ``eigsh`` (ARPACK Lanczos, ``which='LA'`` on
        ``D^-1/2 W D^-1/2``), ``chebyshev`` (filtered block subspace iteration) or
        ``lobpcg``.
    tol
        solver tolerance (0 = machine precision for ``eigsh``, a residual
        ``||M v − μ v||`` of :data:`CHEBYSHEV_TOL` for ``chebyshev``).
    seed
        seed of the random start vector (results are deterministic).
    notes
        a list that receives a sentence when the requested solver did not run (too few
        nodes for it, or a Chebyshev/LOBPCG stall answered by eigsh); also logged.

    Returns
    -------
        ``(eigenvalues (m,), eigenvectors (n, m))``.
    """
    M, d = normalized_affinity(W)
    n = M.shape[0]
    if n == 0:
        return np.zeros(0), np.zeros((0, 0))
    m = int(max(1, n_eigenvalues))
    if n < DENSE_BELOW or (m >= n // 2 and n <= 2000):
        m = min(m, n)
        if solver not in ("auto", "eigsh"):
            _note(notes, f"solver {solver}: a graph of {n} nodes is solved densely (exact)")
        mu, vec = _dense(M, m)
    else:
        m = min(m, n // 2 - 1 if n > 2000 else n - 1)
        n_comp, _, null = component_vectors(M, d, m)
        if n_comp >= m:
            mu, vec = np.ones(m), null[:, :m]
        else:
            solver = choose_solver(solver, n, m)
            found = None
            if solver == "chebyshev" and 4 * m < n:
                from threadpoolctl import threadpool_limits

                with threadpool_limits(1, user_api="blas"):  # torch threads; numpy's would spin
                    found = _chebyshev(M, m, tol, seed, null)
            elif solver == "lobpcg" and 5 * m < n:
                found = _lobpcg(M, d, m, tol, seed, null)
            if found is None and solver in ("chebyshev", "lobpcg"):
                why = ("it stalled" if (4 if solver == "chebyshev" else 5) * m < n
                       else f"{m} eigenpairs of {n} nodes are too many for it")
                _note(notes, f"solver {solver}: {why}; eigsh (Lanczos) computed the eigenpairs")
            mu, vec = found if found is not None else _eigsh(M, m, tol, seed, null)
    lam = np.clip(1.0 - mu, 0.0, 2.0)
    order = np.argsort(lam, kind="stable")
    return lam[order], _fix_signs(vec[:, order])


def _note(notes: list | None, text: str) -> None:
    log.info(text)
    if notes is not None:
        notes.append(text)


def eigengaps(eigenvalues) -> np.ndarray:
    """Absolute gaps ``λ_{i+1} − λ_i`` between consecutive ascending eigenvalues (length m−1)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    return np.diff(lam) if lam.size > 1 else np.zeros(0)


def relative_eigengaps(eigenvalues, zero_tol: float = ZERO_TOL) -> np.ndarray:
    """Relative gaps ``(λ_{i+1} − λ_i) / λ_{i+1}`` (length m−1, entry i is the gap after λ_{i+1}).

    Handling of λ ≈ 0 (|λ| ≤ ``zero_tol``): a gap between two zero eigenvalues (two
    components) is 0; a gap from a zero to a non-zero eigenvalue is 1 (the largest possible).
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    if lam.size < 2:
        return np.zeros(0)
    lo, hi = lam[:-1], lam[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.where(hi > zero_tol, (hi - np.where(lo > zero_tol, lo, 0.0)) / hi, 0.0)
    return np.clip(gaps, 0.0, 1.0)


def n_components(eigenvalues, zero_tol: float = ZERO_TOL) -> int:
    """Number of (numerically) zero eigenvalues = connected components seen in the spectrum."""
    return int(np.sum(np.asarray(eigenvalues) <= zero_tol))


def suggest_n_clusters(eigenvalues, max_clusters: int = 10, zero_tol: float = ZERO_TOL) -> int:
    """Number of clusters K at the largest relative eigengap ``(λ_{K+1} − λ_K) / λ_{K+1}``.

    K ranges over ``2 .. max_clusters`` (bounded by the number of eigenvalues − 1). λ_1 = 0
    always, so the relative gap after λ_1 is always 1 and carries no information; it is only
    used when the graph has several components (then K = the number of zero eigenvalues, as
    the gap from the last zero to the first non-zero eigenvalue is 1). Ties go to the
    smaller K. With fewer than 3 eigenvalues, 1 is returned.
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    if lam.size < 3:
        return 1
    comps = n_components(lam, zero_tol)
    if comps >= 2:
        return int(min(comps, max_clusters))
    gaps = relative_eigengaps(lam, zero_tol)
    hi = min(int(max_clusters), lam.size - 1)
    if hi < 2:
        return 1
    candidates = gaps[1:hi]  # gaps after λ_2 .. λ_hi  -> K = 2 .. hi
    return int(np.argmax(candidates) + 2)
