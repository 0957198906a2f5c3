"""Smallest eigenpairs of the normalized graph Laplacian and the eigengap.

``L_sym = I − D^-1/2 W D^-1/2`` is never formed densely. Its smallest eigenvalues are
``1 − μ`` for the *largest algebraic* eigenvalues μ of the normalized affinity
``M = D^-1/2 W D^-1/2`` (``which='LA'`` in ARPACK's Lanczos). The spectrum of ``M`` lies in
``[−1, 1]``; asking for the largest *magnitude* (``'LM'``) instead would also return
eigenvalues near −1 (bipartite-like structure) and corrupt the spectrum of ``L_sym``.

Isolated nodes (degree 0) are treated as components of their own: they get eigenvalue 0 and an
indicator eigenvector, exactly as if they carried a self-loop, so that the number of zero
eigenvalues always equals the number of connected components.

Eigenvalues are returned ascending and clipped to ``[0, 2]``; eigenvectors are orthonormal
eigenvectors of ``L_sym`` with a deterministic sign (largest-magnitude entry positive).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

#: eigenvalues of L_sym at or below this are treated as exactly zero (component indicators)
ZERO_TOL = 1e-9

#: below this many nodes the eigenproblem is solved densely (cheap and exact)
DENSE_BELOW = 200


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

    mu, vec, res = run(degree) if degree > 1 else (None, None, np.inf)
    if res > 1e-9:
        mu, vec, res = run(1)
    if c:
        mu = np.concatenate([np.ones(c), mu])
        vec = np.hstack([null, vec])
    order = np.argsort(mu, kind="stable")[::-1]
    return mu[order], vec[:, order]


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
    if c:
        mu = np.concatenate([np.ones(c), mu])
        vec = np.hstack([null, vec])
    order = np.argsort(mu, kind="stable")[::-1]
    return mu[order], vec[:, order]


def smallest_eigenpairs(W, n_eigenvalues: int, solver: str = "eigsh", tol: float = 0.0,
                        seed: int = 0):
    """Smallest eigenvalues (ascending) and eigenvectors of ``L_sym`` of the affinity ``W``.

    Args:
        W: symmetric sparse affinity ``(n, n)`` with non-negative weights.
        n_eigenvalues: how many eigenpairs; ``m = min(n_eigenvalues, n)`` are returned
            (graphs below :data:`DENSE_BELOW` nodes, or asking for ≥ n/2 eigenpairs, are solved
            densely, otherwise at most ``n − 1``).
        solver: ``eigsh`` (ARPACK Lanczos, ``which='LA'`` on ``D^-1/2 W D^-1/2``) or ``lobpcg``.
        tol: solver tolerance (0 = machine precision for ``eigsh``).
        seed: seed of the random start vector (results are deterministic).

    Returns:
        ``(eigenvalues (m,), eigenvectors (n, m))``.
    """
    M, d = normalized_affinity(W)
    n = M.shape[0]
    if n == 0:
        return np.zeros(0), np.zeros((0, 0))
    m = int(max(1, n_eigenvalues))
    if n < DENSE_BELOW or (m >= n // 2 and n <= 2000):
        m = min(m, n)
        mu, vec = _dense(M, m)
    else:
        m = min(m, n // 2 - 1 if n > 2000 else n - 1)
        n_comp, _, null = component_vectors(M, d, m)
        if n_comp >= m:
            mu, vec = np.ones(m), null[:, :m]
        elif solver == "lobpcg" and 5 * m < n:
            mu, vec = _lobpcg(M, d, m, tol, seed, null)
        else:
            mu, vec = _eigsh(M, m, tol, seed, null)
    lam = np.clip(1.0 - mu, 0.0, 2.0)
    order = np.argsort(lam, kind="stable")
    return lam[order], _fix_signs(vec[:, order])


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
