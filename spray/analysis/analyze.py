"""The SpRAy analysis of one ``(n, d)`` feature matrix (thesis Algorithm 3, lines 10–16).

``features → kNN affinity W → L_sym smallest eigenpairs → eigengap / K → cluster labels →
t-SNE`` — sparse from end to end. Use :func:`analyze` (also exported as ``spray.analyze``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from spray.errors import DataError


@dataclass
class AnalysisResult:
    """Everything the analysis of one class produces.

    Attributes
    ----------
    eigenvalues
        smallest eigenvalues of L_sym, ascending, in [0, 2].
    eigengaps
        ``λ_{i+1} − λ_i`` (absolute gaps, length m−1).
    relative_eigengaps
        ``(λ_{i+1} − λ_i) / λ_{i+1}`` (see :mod:`spray.analysis.spectral`).
    eigenvectors
        ``(n, m)`` eigenvectors of L_sym.
    labels
        ``(n,)`` cluster labels (0 = largest cluster).
    n_clusters
        number of clusters used for the labels.
    suggested_n_clusters
        K at the largest relative eigengap (whatever ``n_clusters`` says).
    embedding
        ``(n, 2)`` t-SNE coordinates, or None.
    affinity
        the symmetric sparse kNN affinity ``W`` (csr).
    k
        number of neighbours actually used.
    knn_method
        ``exact`` or ``pynndescent``.
    n_components
        number of zero eigenvalues (connected components seen in the spectrum).
    warnings
        what was adjusted (e.g. k reduced for a tiny class).
    timings
        seconds per stage.
    pipeline
        the validated pipeline that was run.
    """

    eigenvalues: np.ndarray
    eigengaps: np.ndarray
    eigenvectors: np.ndarray
    labels: np.ndarray
    n_clusters: int
    embedding: np.ndarray | None
    affinity: sp.csr_matrix
    k: int
    relative_eigengaps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    suggested_n_clusters: int = 1
    knn_method: str = "exact"
    n_components: int = 1
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    pipeline: dict = field(default_factory=dict)


def _resolve_pipeline(pipeline: Any, overrides: dict) -> dict:
    from spray.config.presets import load_pipeline

    return load_pipeline(pipeline, overrides=overrides or None)


def _check_features(features) -> np.ndarray:
    X = np.asarray(features)
    if X.ndim != 2:
        raise DataError(f"features must be a 2-D array (n, d), got shape {X.shape}")
    if X.shape[0] < 3:
        raise DataError(f"the spectral analysis needs at least 3 samples, got {X.shape[0]}")
    if X.shape[1] == 0:
        raise DataError("features have no columns (d = 0)")
    X = np.ascontiguousarray(X, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        from spray.analysis.preprocess import describe_rows

        raise DataError(f"features of {describe_rows(bad)} hold NaN or Inf")
    return X


def _choose_k(n: int, requested, notes: list) -> int:
    """k for n samples; reduced (with a note) when the class is too small for it."""
    import math

    from spray.analysis.knn import resolve_k

    want = math.ceil(math.log(n)) if requested == "auto" else int(requested)
    k = resolve_k(n, requested)
    if want > n - 2:
        k = max(1, n - 2)
        notes.append(f"k reduced from {want} to {k}: the class has only {n} samples")
    return k


def analyze(features, pipeline="spray-default", embed: bool = True, **overrides) -> AnalysisResult:
    """Run the SpRAy analysis on an ``(n, d)`` feature matrix.

    Parameters
    ----------
    features
        ``(n, d)`` preprocessed relevance (see :func:`spray.analysis.preprocess.preprocess`).
    pipeline
        preset name, YAML path or pipeline dict (already loaded or partial).
    embed
        compute the t-SNE map (also needs ``embedding.method != 'none'``).
    **overrides
        section dicts merged into the pipeline, e.g. ``affinity={"k": 5}``.

    Raises
    ------
    DataError
        fewer than 3 samples, wrong shape, NaN/Inf rows.
    ConfigError
        invalid pipeline or overrides.
    """
    from spray.analysis.clustering import cluster
    from spray.analysis.knn import graph_from_neighbors, knn_neighbors
    from spray.analysis.spectral import (
        eigengaps,
        n_components,
        relative_eigengaps,
        smallest_eigenpairs,
        suggest_n_clusters,
    )

    pipe = _resolve_pipeline(pipeline, overrides)
    X = _check_features(features)
    n = X.shape[0]
    notes: list[str] = []
    timings: dict[str, float] = {}
    aff, spec, clus, emb = (pipe["affinity"], pipe["spectral"], pipe["clustering"],
                            pipe["embedding"])

    t = time.perf_counter()
    k = _choose_k(n, aff["k"], notes)
    ind, dist, method = knn_neighbors(X, k, aff, seed=spec["seed"])
    timings["knn"] = time.perf_counter() - t
    t = time.perf_counter()
    W = graph_from_neighbors(ind, dist, aff)
    del ind, dist
    timings["graph"] = time.perf_counter() - t

    t = time.perf_counter()
    lam, vec = smallest_eigenpairs(W, spec["n_eigenvalues"], solver=spec["solver"],
                                   tol=spec["tol"], seed=spec["seed"], notes=notes)
    timings["eigen"] = time.perf_counter() - t

    suggested = suggest_n_clusters(lam, clus["max_clusters"])
    if clus["n_clusters"] == "auto":
        K = suggested
    else:
        K = min(int(clus["n_clusters"]), n)
        if vec.shape[1] < K and clus["eigenvectors"] == "n_clusters":
            notes.append(f"n_clusters {K} exceeds the {vec.shape[1]} eigenvectors computed")
    t = time.perf_counter()
    labels = cluster(vec, K, clus, affinity=W)
    timings["cluster"] = time.perf_counter() - t

    Z = None
    if embed and emb["method"] != "none":
        from spray.analysis.embedding import embed as tsne_embed
        from spray.analysis.embedding import spectral_init

        t = time.perf_counter()
        init = spectral_init(vec, W, lam, seed=emb["seed"]) if emb["init"] == "spectral" else None
        Z = tsne_embed(W, X, emb, init=init)
        timings["embedding"] = time.perf_counter() - t

    return AnalysisResult(
        eigenvalues=lam, eigengaps=eigengaps(lam), eigenvectors=vec, labels=labels,
        n_clusters=int(len(np.unique(labels))), embedding=Z, affinity=W, k=k,
        relative_eigengaps=relative_eigengaps(lam), suggested_n_clusters=int(suggested),
        knn_method=method, n_components=n_components(lam), warnings=notes, timings=timings,
        pipeline=pipe,
    )
