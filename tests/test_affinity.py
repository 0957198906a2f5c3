"""kNN affinity graph: symmetry, no self-loops, duplicates, weights, exact vs approximate."""

import numpy as np
import pytest
import scipy.sparse as sp

from spray.analysis.knn import drop_self, exact_knn, knn_affinity, resolve_k
from spray.analysis.spectral import smallest_eigenpairs, suggest_n_clusters
from spray.errors import ConfigError, DataError


def planted(n_per=(600, 300, 150, 100), dim=30, seed=0):
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((m, dim)) + 6 * rng.standard_normal(dim) for m in n_per]
    return np.vstack(parts).astype(np.float32)


def test_resolve_k():
    assert resolve_k(1000, "auto") == 7  # ceil(ln 1000)
    assert resolve_k(5, 10) == 4
    with pytest.raises(ConfigError, match="affinity.k"):
        resolve_k(100, -1)


@pytest.mark.parametrize("weighting", ["binary", "gaussian", "local-scaling"])
@pytest.mark.parametrize("symmetrize", ["max", "mean"])
def test_graph_is_symmetric_without_self_loops(weighting, symmetrize):
    X = planted()
    W = knn_affinity(X, {"k": 7, "weighting": weighting, "symmetrize": symmetrize})
    assert sp.isspmatrix_csr(W) or isinstance(W, sp.csr_matrix)
    assert abs(W - W.T).max() < 1e-12
    assert W.diagonal().max() == 0
    assert W.data.min() > 0 and W.data.max() <= 1.0
    deg = np.diff(W.indptr)
    assert deg.min() >= 7  # the union of the directed 7-NN lists, either way
    if weighting == "binary":  # max keeps 1 on every edge; mean halves the one-sided ones
        expected = [1.0] if symmetrize == "max" else [0.5, 1.0]
        assert np.unique(W.data).tolist() == expected
    if weighting == "binary" and symmetrize == "max":
        assert set(np.unique(W.data)) == {1.0}
    if weighting == "binary" and symmetrize == "mean":
        assert set(np.unique(W.data)) <= {0.5, 1.0}


def test_duplicates_do_not_create_self_loops():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((50, 5))
    X = np.vstack([base, base, base])  # every point three times
    W = knn_affinity(X, {"k": 4, "weighting": "local-scaling"})
    assert W.diagonal().max() == 0
    assert np.isfinite(W.data).all()
    assert np.diff(W.indptr).min() >= 4


def test_drop_self_handles_missing_self():
    ind = np.array([[1, 0, 2], [1, 0, 2], [0, 1, 3]])
    dist = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0]])
    out, d = drop_self(ind, dist, 2)
    np.testing.assert_array_equal(out, [[1, 2], [0, 2], [0, 1]])


def test_exact_knn_matches_bruteforce():
    X = planted(n_per=(200, 100))
    ind, dist = exact_knn(X, 5)
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    np.fill_diagonal(D, np.inf)
    expected = np.sort(np.sqrt(np.sort(D, axis=1)[:, :5]), axis=1)
    np.testing.assert_allclose(np.sort(dist, axis=1), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # pynndescent compiles its kernels with numba on first use (~1 min)
def test_exact_and_approximate_agree_on_eigengap():
    X = planted()
    exact = knn_affinity(X, {"k": "auto", "approximate_above": 10 ** 9})
    approx, info = knn_affinity(X, {"k": "auto", "approximate_above": 0, "exact_max_cost": 0},
                                return_info=True)
    assert info["method"] == "pynndescent"
    lam_e, _ = smallest_eigenpairs(exact, 12)
    lam_a, _ = smallest_eigenpairs(approx, 12)
    assert suggest_n_clusters(lam_e) == suggest_n_clusters(lam_a) == 4
    np.testing.assert_allclose(lam_e[:4], lam_a[:4], atol=1e-6)
    overlap = (exact.multiply(approx)).nnz / exact.nnz
    assert overlap > 0.95


def test_nan_features_named():
    X = planted(n_per=(20, 20))
    X[3, 0] = np.inf
    with pytest.raises(DataError, match="rows 3"):
        knn_affinity(X, {"k": 3})


def isotropic(n=3000, d=200, seed=0):
    """Noise without low-dimensional structure (an index-based search loses most neighbours)."""
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("products", ["bfloat16", "int8"])
@pytest.mark.parametrize("make", [planted, isotropic])
def test_blocked_knn_is_exact(make, products):
    from spray.analysis.knn_blocked import blocked_knn

    X = make()
    k = 9
    ref_ind, ref_dist = exact_knn(X, k)
    # blocks smaller than n: diagonal, row and column scans of several block pairs all run
    ind, dist = blocked_knn(X, k, block=700, products=products)
    assert ind.shape == (len(X), k)
    assert not (ind == np.arange(len(X))[:, None]).any()
    np.testing.assert_allclose(np.sort(dist, axis=1), np.sort(ref_dist, axis=1), rtol=1e-5)
    assert np.mean(np.sort(ind, axis=1) == np.sort(ref_ind, axis=1)) > 0.999


@pytest.mark.parametrize("products", ["bfloat16", "int8"])
def test_blocked_knn_keeps_duplicates_and_excludes_self(products):
    from spray.analysis.knn_blocked import blocked_knn

    X = np.repeat(planted()[:200], 3, axis=0)  # every row three times
    ind, dist = blocked_knn(X, 4, block=128, products=products)
    assert not (ind == np.arange(len(X))[:, None]).any()
    assert np.all(dist[:, :2] == 0)  # the two copies come first


def test_blocked_knn_int8_candidates_are_the_exact_neighbours_of_the_rounded_rows():
    """The int8 scan ranks by the products of the dequantized rows ``scale · q``: its
    candidate lists are the exact nearest rows of those (checked before any re-ranking)."""
    import torch

    from spray.analysis import knn_blocked as kb

    X = isotropic(n=900, d=64)
    rows, scales, _ = kb._centred(X, X.mean(axis=0), "int8", chunk=256)
    assert rows.dtype == torch.int8 and np.abs(rows.numpy()).max() == 127
    R = rows.numpy().astype(np.float64) * scales[:, None]
    np.testing.assert_allclose(R, X - X.mean(axis=0), atol=float(scales.max()) / 2 * 1.001)
    kk = 12
    best_d, best_i = kb._candidates(rows, kk, 2, 200, scales)
    D = (R ** 2).sum(axis=1)[None, :] - 2 * R @ R.T
    np.fill_diagonal(D, np.inf)
    ref = np.argsort(D, axis=1, kind="stable")[:, :kk]
    assert np.mean(np.sort(best_i, axis=1) == np.sort(ref, axis=1)) > 0.999
    np.testing.assert_allclose(best_d, np.take_along_axis(D, best_i, axis=1), rtol=1e-5,
                               atol=1e-2)


def test_product_kind_falls_back_to_bfloat16_without_int8_products(monkeypatch):
    import torch

    from spray.analysis import knn_blocked as kb

    def unsupported(*args):
        raise RuntimeError("_int_mm: not supported on this device")

    kb.product_kind.cache_clear()
    monkeypatch.setattr(torch, "_int_mm", unsupported)
    try:
        assert kb.product_kind(400) == "bfloat16"
    finally:
        kb.product_kind.cache_clear()
    assert kb.candidate_margin(12, "int8") > kb.candidate_margin(12, "bfloat16")


@pytest.mark.parametrize("n_blocks", [1, 2, 5, 8])
def test_block_rounds_cover_every_pair_once_and_share_no_block_within_a_round(n_blocks):
    from spray.analysis.knn_blocked import block_rounds

    rounds = block_rounds(n_blocks)
    pairs = [p for r in rounds for p in r]
    assert sorted(pairs) == [(i, j) for i in range(n_blocks) for j in range(i, n_blocks)]
    for r in rounds:
        used = [b for p in r for b in set(p)]
        assert len(used) == len(set(used))


def test_blocked_knn_ranks_near_ties_in_float64():
    """Two candidates whose distances differ by one float32 ulp of a coordinate: a float32
    sum of the 400 squares orders them wrongly (the blocked search re-ranked that way and
    missed 2 edges of 20 000 rows of noise, moving the eigenvalues by 4e-5)."""
    from spray.analysis.knn_blocked import blocked_knn

    rng = np.random.default_rng(0)
    for _ in range(100):
        a = rng.standard_normal(400).astype(np.float32)
        b = rng.permutation(a)
        b[0] = np.nextafter(b[0], np.float32(np.inf))
        exact = [np.sum(v.astype(np.float64) ** 2) for v in (a, b)]
        single = [np.einsum("i,i->", v, v) for v in (a, b)]
        if (exact[0] < exact[1]) != (single[0] < single[1]) and exact[0] != exact[1]:
            break
    else:
        pytest.fail("no pair that float32 orders wrongly")
    far = 50 + rng.standard_normal((20, 400)).astype(np.float32)
    X = np.vstack([np.zeros((1, 400), np.float32), a, b, far])
    for products in ("bfloat16", "int8"):
        ind, _ = blocked_knn(X, 1, block=8, products=products)
        assert ind[0, 0] == 1 + int(np.argmin(exact))


@pytest.mark.slow  # pynndescent compiles its kernels with numba on first use
def test_search_auto_uses_the_exact_search_where_an_index_fails():
    from spray.analysis.knn import knn_neighbors, probe_neighbours

    X, Y = isotropic(), planted()
    assert probe_neighbours(X, 8)[2] > 40 > probe_neighbours(Y, 8)[2]
    params = {"approximate_above": 0, "search": "auto", "exact_max_cost": 0}  # probe decides
    ind, dist, method = knn_neighbors(X, 8, params)
    assert method == "exact-blocked"
    ref, _ = exact_knn(X, 8)
    assert np.mean(np.sort(ind, axis=1) == np.sort(ref, axis=1)) > 0.999
    assert knn_neighbors(Y, 8, params)[2] == "pynndescent"


@pytest.mark.slow  # pynndescent compiles its kernels with numba on first use
def test_search_auto_replaces_an_index_below_min_recall():
    """Fail closed: an approximate graph that misses the recall floor on the probe is redone."""
    from spray.analysis.knn import knn_neighbors

    X = isotropic()
    params = {"approximate_above": 0, "search": "auto", "ann_max_lid": 1e9,
              "exact_max_cost": 0, "ann_neighbors": 9, "ann_iters": 1, "ann_trees": 1}
    assert knn_neighbors(X, 8, dict(params, search="approximate"))[2] == "pynndescent"
    _, _, method = knn_neighbors(X, 8, params)
    assert method == "exact-blocked"


def test_search_auto_takes_the_exact_search_below_its_cost_bound(monkeypatch):
    """Below ``exact_max_cost`` (n²·d) ``search: auto`` runs the exact search without a probe
    or pynndescent (whose compilation in every new process can cost more than the search);
    above it, and by default (0), the probe decides."""
    import spray.analysis.knn as knn

    bound = {"exact_max_cost": 1.6e13}
    assert knn.exact_is_cheap(100_000, 400, bound) and knn.exact_is_cheap(200_000, 400, bound)
    assert not knn.exact_is_cheap(300_000, 400, bound)
    assert not knn.exact_is_cheap(60_000, 400, {})

    def no_probe(*args, **kwargs):
        raise AssertionError("probe or index used below the exact search's cost bound")

    monkeypatch.setattr(knn, "probe_neighbours", no_probe)
    monkeypatch.setattr(knn, "approximate_knn", no_probe)
    Y = planted()  # low-dimensional: the probe would have chosen pynndescent
    params = {"approximate_above": 0, "search": "auto"}
    ind, _, method = knn.knn_neighbors(Y, 8, dict(params, **bound))
    assert method == "exact-blocked"
    ref, _ = exact_knn(Y, 8)
    assert np.mean(np.sort(ind, axis=1) == np.sort(ref, axis=1)) > 0.999
    with pytest.raises(AssertionError, match="probe"):
        knn.knn_neighbors(Y, 8, params)
