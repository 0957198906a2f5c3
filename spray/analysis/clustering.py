"""Cluster labels from the spectral embedding (the ``clustering`` section of a pipeline).

The rows of the first K eigenvectors of ``L_sym`` (K = the number of clusters, or all
eigenvectors with ``eigenvectors: all`` as in CoRelAy) are normalized to unit length
(Ng, Jordan & Weiss 2002) and clustered with

* ``kmeans`` (scikit-learn, ``n_init`` restarts, seeded),
* ``agglomerative`` (scikit-learn; when the affinity graph is given it is used as the
  connectivity constraint, which keeps memory linear in n),
* ``hdbscan`` (scikit-learn; finds its own number of clusters, ``n_clusters`` is ignored;
  samples it leaves as noise are assigned to the cluster of their nearest clustered point, so
  every sample has a cluster).

Labels are renumbered by decreasing cluster size (0 = largest), which makes them stable across
runs and solvers.
"""

from __future__ import annotations

import warnings

import numpy as np

from spray.config.presets import ClusteringSection
from spray.errors import ConfigError


def spectral_features(eigenvectors: np.ndarray, n_clusters: int,
                      params: ClusteringSection | dict) -> np.ndarray:
    """The rows to cluster: the selected eigenvectors, row-normalized unless disabled."""
    params = ClusteringSection.coerce(params)
    V = np.asarray(eigenvectors, dtype=np.float64)
    choice = params.eigenvectors
    if choice == "all":
        m = V.shape[1]
    elif choice in ("n_clusters", "auto"):
        m = n_clusters
    else:
        m = int(choice)
    V = V[:, :max(1, min(m, V.shape[1]))]
    if params.normalize_rows:
        norms = np.linalg.norm(V, axis=1, keepdims=True)
        V = V / np.where(norms > 0, norms, 1.0)
    return V


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels ``0..K-1`` by decreasing size (ties by first occurrence); -1 kept."""
    labels = np.asarray(labels)
    ids, first, counts = np.unique(labels[labels >= 0], return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = {int(ids[o]): i for i, o in enumerate(order)}
    return np.array([mapping.get(int(x), -1) for x in labels], dtype=np.int64)


def _kmeans(V, K, params):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=K, n_init=params.n_init, random_state=params.seed)
    return km.fit_predict(V)


def _agglomerative(V, K, params, affinity):
    from sklearn.cluster import AgglomerativeClustering

    if affinity is None and V.shape[0] > 20000:
        raise ConfigError("pipeline key 'clustering.method': agglomerative clustering of more "
                          "than 20000 samples needs the affinity graph as connectivity")
    model = AgglomerativeClustering(n_clusters=K, linkage=params.linkage, connectivity=affinity)
    with warnings.catch_warnings():  # a disconnected graph is completed by scikit-learn: fine
        warnings.simplefilter("ignore", UserWarning)
        return model.fit_predict(V)


def _hdbscan(V, params):
    from sklearn.cluster import HDBSCAN

    n = V.shape[0]
    size = params.min_cluster_size
    if size == "auto":
        size = max(5, int(round(0.02 * n)))
    size = int(min(max(2, size), n))
    labels = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(V)
    noise = labels < 0
    if noise.all():
        return np.zeros(n, dtype=np.int64)
    if noise.any():
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=1).fit(V[~noise])
        _, idx = nn.kneighbors(V[noise])
        labels = labels.copy()
        labels[noise] = labels[~noise][idx[:, 0]]
    return labels


def cluster(eigenvectors: np.ndarray, n_clusters: int, params: ClusteringSection | dict,
            affinity=None) -> np.ndarray:
    """Cluster labels ``(n,)`` (int64, 0 = largest cluster) from the eigenvectors of ``L_sym``.

    Parameters
    ----------
    eigenvectors
        ``(n, m)`` eigenvectors, ascending eigenvalues.
    n_clusters
        K (ignored by ``hdbscan``).
    params
        the pipeline's ``clustering`` section.
    affinity
        optional sparse affinity ``W``, the connectivity for ``agglomerative``.
    """
    V0 = np.asarray(eigenvectors)
    n = V0.shape[0]
    K = int(max(1, min(int(n_clusters), n)))
    params = ClusteringSection.coerce(params)
    method = params.method
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    V = spectral_features(V0, K, params)
    if method == "hdbscan":
        labels = _hdbscan(V, params) if n > 2 else np.zeros(n, dtype=np.int64)
    elif K == 1:
        labels = np.zeros(n, dtype=np.int64)
    elif method == "kmeans":
        labels = _kmeans(V, K, params)
    elif method == "agglomerative":
        labels = _agglomerative(V, K, params, affinity)
    else:
        raise ConfigError(f"pipeline key 'clustering.method': unknown method {method!r}")
    return relabel_by_size(labels)
