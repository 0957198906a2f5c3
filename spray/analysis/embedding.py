"""2-D t-SNE map of a class (the ``embedding`` section of a pipeline), with openTSNE.

The t-SNE input similarities come from the *same* kNN graph as the spectral analysis
(thesis Algorithm 3, ``affinity2distance(W)``) — there is no second neighbour search. For each
sample, a Gaussian over the distances to its graph neighbours is calibrated to the preset's
perplexity (capped by the neighbourhood size: with the thesis' k = ⌈ln n⌉ binary graph and
perplexity 7 this is close to uniform weights over the neighbours, i.e. the thesis'
``1 / (W + ε)`` distances); the conditional probabilities are symmetrized into ``P``.

The optimisation starts from the spectral embedding (the 2nd and 3rd eigenvectors of
``L_sym``, scaled by ``D^-1/2`` — Laplacian eigenmaps), which already holds the global
layout, so the early-exaggeration and main phases can be shorter than openTSNE's defaults
(250 + 500 iterations); the budget is set by ``early_exaggeration_iter`` and ``n_iter``.
``init: pca`` or ``random`` and ``affinity: features`` (openTSNE's own perplexity-based
neighbours on the features) are available for comparison. All randomness is seeded.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from spray.config.presets import EmbeddingSection

#: openTSNE's FFT-interpolated gradients above this many points, Barnes–Hut below (measured
#: crossover on the benchmark features: BH 2.6 s vs FFT 6.5 s at 2 000, 6.2 s vs 5.6 s at 5 000)
FFT_ABOVE = 3500


def _calibrate(indptr: np.ndarray, sqdist: np.ndarray, perplexity: float,
               n_steps: int = 64) -> np.ndarray:
    """Per-row Gaussian conditional probabilities over CSR rows, matched to ``perplexity``.

    Vectorized bisection on the precision β_i of each row so that the entropy of
    ``p_j|i ∝ exp(−β_i (d²_ij − min_j d²_ij))`` equals ``ln(perplexity)`` (or is as large as
    the row allows, i.e. uniform, when the row has fewer than ``perplexity`` neighbours).
    """
    n = len(indptr) - 1
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(n), counts)
    nonempty = counts > 0
    starts = indptr[:-1][nonempty]
    rowmin = np.full(n, 0.0)
    rowmin[nonempty] = np.minimum.reduceat(sqdist, starts)
    dd = sqdist - rowmin[rows]
    scale = np.ones(n)
    scale[nonempty] = np.add.reduceat(dd, starts) / counts[nonempty]
    scale = np.where(scale > 0, scale, 1.0)
    dd = dd / scale[rows]
    target = np.log(np.minimum(perplexity, np.maximum(counts, 1)))
    beta = np.ones(n)
    lo, hi = np.zeros(n), np.full(n, np.inf)

    def row_sum(values):
        out = np.zeros(n)
        out[nonempty] = np.add.reduceat(values, starts)
        return out

    for _ in range(n_steps):
        w = np.exp(-beta[rows] * dd)
        s = row_sum(w)
        s = np.where(s > 0, s, 1.0)
        entropy = np.log(s) + beta * row_sum(w * dd) / s
        too_flat = entropy > target  # entropy too high -> sharpen (raise beta)
        lo = np.where(too_flat, beta, lo)
        hi = np.where(too_flat, hi, beta)
        beta = np.where(np.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    w = np.exp(-beta[rows] * dd)
    return w / np.where(row_sum(w) > 0, row_sum(w), 1.0)[rows]


def graph_affinities(W, features=None, perplexity: float = 7.0) -> sp.csr_matrix:
    """Symmetric t-SNE input probabilities ``P`` (sum 1) on the edges of the kNN graph ``W``."""
    W = sp.csr_matrix(W, dtype=np.float64)
    W.sort_indices()
    n = W.shape[0]
    rows = np.repeat(np.arange(n), np.diff(W.indptr))
    if features is not None:
        from spray.analysis.knn import edge_distances

        X = np.ascontiguousarray(features, dtype=np.float32)
        sq = edge_distances(X, rows, W.indices).astype(np.float64) ** 2
    else:  # no features: turn weights into distances (larger weight = closer)
        sq = -np.log(np.clip(W.data / W.data.max(), 1e-12, None)) if W.nnz else W.data
    cond = _calibrate(W.indptr, sq, perplexity)
    P = sp.csr_matrix((cond, W.indices.copy(), W.indptr.copy()), shape=(n, n))
    P = (P + P.T).tocsr()
    P.data /= P.data.sum() if P.nnz else 1.0
    return P


def spectral_init(eigenvectors: np.ndarray, W, eigenvalues=None, seed: int = 0) -> np.ndarray:
    """Laplacian-eigenmap start layout ``(n, 2)`` from the eigenvectors of ``L_sym``.

    Connected graph: ``D^-1/2 u_2, D^-1/2 u_3``. With c ≥ 2 components (c zero eigenvalues),
    the component indicators and the first non-trivial eigenvectors are projected onto their
    two principal axes, so that components start apart and each keeps its internal layout.
    A small seeded jitter (1 % of the spread) keeps samples with identical coordinates apart.
    """
    from spray.analysis.spectral import ZERO_TOL

    V = np.asarray(eigenvectors, dtype=np.float64)
    n, m = V.shape
    d = np.asarray(sp.csr_matrix(W).sum(axis=1)).ravel()
    d = np.where(d > 0, d, 1.0)
    c = int(np.sum(np.asarray(eigenvalues) <= ZERO_TOL)) if eigenvalues is not None else 1
    cols = list(range(1, min(m, max(3, c + 2))))
    rng = np.random.default_rng(seed)
    if not cols:
        return rng.standard_normal((n, 2))
    Y = V[:, cols] / np.sqrt(d)[:, None]
    Y = Y - Y.mean(axis=0)
    if Y.shape[1] > 2:
        _, _, vt = np.linalg.svd(Y, full_matrices=False)
        Y = Y @ vt[:2].T
    if Y.shape[1] < 2:
        Y = np.hstack([Y, np.zeros((n, 2 - Y.shape[1]))])
    spread = float(np.std(Y)) or 1.0
    return Y + 0.01 * spread * rng.standard_normal(Y.shape)


def _rescale(Y: np.ndarray, target_std: float = 1e-4) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64) - np.mean(Y, axis=0)
    std = float(np.std(Y[:, 0])) or 1.0
    return np.ascontiguousarray(Y / std * target_std)


def _initial_layout(W, features, params, init):
    n = W.shape[0]
    seed = params.seed
    if init is not None:
        return _rescale(init)
    how = params.init
    if how == "spectral":
        from spray.analysis.spectral import smallest_eigenpairs

        lam, vec = smallest_eigenpairs(W, 12, seed=seed)
        return _rescale(spectral_init(vec, W, lam, seed=seed))
    if how == "pca" and features is not None:
        from openTSNE.initialization import pca

        return pca(np.asarray(features, dtype=np.float64), random_state=seed)
    return _rescale(np.random.default_rng(seed).standard_normal((n, 2)))


def embed(W, features, params: EmbeddingSection | dict, init=None) -> np.ndarray:
    """2-D t-SNE coordinates ``(n, 2)`` of the samples of the kNN graph ``W``.

    Parameters
    ----------
    W
        symmetric sparse affinity from :func:`spray.analysis.knn.knn_affinity`.
    features
        the ``(n, d)`` features the graph was built on (for edge distances), or None.
    params
        the pipeline's ``embedding`` section.
    init
        optional ``(n, 2)`` starting layout (e.g. :func:`spectral_init`), rescaled to
        openTSNE's convention (standard deviation 1e-4).
    """
    from openTSNE import TSNE

    params = EmbeddingSection.coerce(params)
    n = W.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    Y0 = _initial_layout(W, features, params, init)
    if n < 4:
        return Y0 / 1e-4  # too few points for t-SNE to mean anything
    perplexity, seed = params.perplexity, params.seed
    if params.affinity == "features" and features is not None:
        from openTSNE.affinity import PerplexityBasedNN

        aff = PerplexityBasedNN(np.asarray(features, dtype=np.float32),
                                perplexity=min(perplexity, (n - 1) / 3), random_state=seed,
                                n_jobs=params.n_jobs)
    else:
        from openTSNE.affinity import PrecomputedAffinities

        aff = PrecomputedAffinities(graph_affinities(W, features, perplexity), normalize=False)
    tsne = TSNE(
        n_components=2,
        early_exaggeration=params.early_exaggeration,
        early_exaggeration_iter=params.early_exaggeration_iter,
        n_iter=params.n_iter,
        exaggeration=params.exaggeration,
        learning_rate=params.learning_rate,
        n_jobs=params.n_jobs,
        random_state=seed,
        negative_gradient_method="fft" if n > FFT_ABOVE else "bh",
    )
    Z = tsne.fit(affinities=aff, initialization=Y0)
    return np.asarray(Z, dtype=np.float64)
