"""Spectral stage: L_sym eigenpairs against a dense reference, components, eigengaps."""

import numpy as np
import pytest
import scipy.sparse as sp

from spray.analysis.knn import knn_affinity
from spray.analysis.spectral import (
    eigengaps,
    laplacian_sym,
    relative_eigengaps,
    smallest_eigenpairs,
    suggest_n_clusters,
)

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def one_blas_thread():
    """Dense reference solves are small; extra BLAS threads only add contention."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def dense_reference(W, m):
    """Smallest eigenvalues of the dense L_sym (same isolated-node convention)."""
    from scipy.linalg import eigh

    L = laplacian_sym(W).toarray()
    return eigh(L, eigvals_only=True, subset_by_index=[0, min(m, L.shape[0]) - 1], driver="evr")


def four_gaussians(sigma, per=100, seed=0):
    """Von Luxburg's / the thesis' toy example: four Gaussians centred at 2, 4, 6, 8."""
    rng = np.random.default_rng(seed)
    centres = np.array([[2.0, 0.0], [4.0, 0.0], [6.0, 0.0], [8.0, 0.0]])
    return np.vstack([c + sigma * rng.standard_normal((per, 2)) for c in centres])


@pytest.mark.parametrize("n,k,weighting,symmetrize", [
    (300, "auto", "binary", "max"),
    (1200, 8, "gaussian", "mean"),
    (2000, "auto", "local-scaling", "max"),
])
def test_eigenvalues_match_dense_eigh(n, k, weighting, symmetrize):
    rng = np.random.default_rng(n)
    X = np.vstack([rng.standard_normal((n // 3, 10)) + 4 * rng.standard_normal(10)
                   for _ in range(3)])
    W = knn_affinity(X, {"k": k, "weighting": weighting, "symmetrize": symmetrize})
    lam, vec = smallest_eigenpairs(W, 32)
    np.testing.assert_allclose(lam, dense_reference(W, 32), atol=1e-8)
    # they are eigenpairs of L_sym, orthonormal
    L = laplacian_sym(W)
    np.testing.assert_allclose(L @ vec, vec * lam, atol=1e-7)
    np.testing.assert_allclose(vec.T @ vec, np.eye(32), atol=1e-7)


def test_eigenvalues_ascending_in_range():
    rng = np.random.default_rng(1)
    W = knn_affinity(rng.standard_normal((500, 5)), {"k": 3})
    lam, _ = smallest_eigenpairs(W, 32)
    assert np.all(np.diff(lam) >= 0) and lam[0] >= 0 and lam[-1] <= 2
    assert abs(lam[0]) < 1e-10


def test_bipartite_graph_la_not_lm():
    """A bipartite graph has μ = −1 in D^-1/2 W D^-1/2; 'LA' must not report it as λ ≈ 2."""
    n = 400
    i = np.arange(n)
    W = sp.csr_matrix((np.ones(n), (i, (i + 1) % n)), shape=(n, n))
    W = W + W.T  # even cycle: bipartite
    lam, _ = smallest_eigenpairs(W, 10)
    np.testing.assert_allclose(lam, dense_reference(W, 10), atol=1e-8)
    assert lam.max() < 0.05


@pytest.mark.parametrize("sizes", [[300, 250, 200, 150, 100], [300] * 3 + [1, 1, 2]])
def test_components_give_zero_eigenvalues(sizes):
    rng = np.random.default_rng(2)
    blocks = []
    for s in sizes:
        if s <= 2:
            blocks.append(sp.csr_matrix((s, s)) if s == 1 else sp.csr_matrix(np.ones((2, 2)) - np.eye(2)))
            continue
        Ws = knn_affinity(rng.standard_normal((s, 4)), {"k": 5})
        blocks.append(Ws)
    W = sp.block_diag(blocks, format="csr")
    lam, vec = smallest_eigenpairs(W, 12)
    c = len(sizes)
    assert np.all(np.abs(lam[:c]) < 1e-10)
    assert lam[c] > 1e-4
    np.testing.assert_allclose(lam, dense_reference(W, 12), atol=1e-8)
    assert suggest_n_clusters(lam, max_clusters=10) == c


@pytest.mark.parametrize("sigma", [0.2, 0.4])
def test_von_luxburg_clear_gap_after_fourth(sigma):
    for seed in range(3):
        W = knn_affinity(four_gaussians(sigma, seed=seed), {"k": "auto"})
        lam, _ = smallest_eigenpairs(W, 10)
        gaps = eigengaps(lam)
        assert np.all(lam[:4] < 0.01)
        assert np.argmax(gaps) == 3, lam  # the largest gap follows λ4
        assert relative_eigengaps(lam)[3] > 0.6
    if sigma == 0.2:
        assert np.all(lam[:4] < 1e-10)  # disjoint groups: exactly zero


def test_von_luxburg_no_gap_when_overlapping():
    for seed in range(3):
        W = knn_affinity(four_gaussians(0.8, seed=seed), {"k": "auto"})
        lam, _ = smallest_eigenpairs(W, 10)
        gaps = eigengaps(lam)
        assert np.argmax(gaps) != 3 or gaps[3] < 1.5 * np.delete(gaps, 3).max()
        assert relative_eigengaps(lam)[3] < 0.5


def test_relative_gap_and_suggestion():
    lam = np.array([0.0, 0.004, 0.03, 0.05, 0.07, 0.09, 0.12])
    # absolute gap would pick K = 6 (0.03); relative picks K = 2
    assert suggest_n_clusters(lam, max_clusters=6) == 2
    rg = relative_eigengaps([0.0, 0.0, 0.5, 0.6])
    np.testing.assert_allclose(rg, [0.0, 1.0, 1 / 6])
    assert suggest_n_clusters([0.0, 0.0, 0.0, 0.3, 0.4]) == 3
    assert suggest_n_clusters([0.0, 0.5]) == 1
    assert eigengaps([0.0]).shape == (0,)


def test_isolated_nodes_are_components():
    W = sp.csr_matrix((300, 300))
    rng = np.random.default_rng(3)
    inner = knn_affinity(rng.standard_normal((298, 3)), {"k": 4})
    W = sp.block_diag([inner, sp.csr_matrix((2, 2))], format="csr")
    lam, vec = smallest_eigenpairs(W, 6)
    assert np.sum(lam < 1e-10) == 3


def test_lobpcg_agrees_with_eigsh():
    rng = np.random.default_rng(4)
    X = np.vstack([rng.standard_normal((700, 6)) + 5 * rng.standard_normal(6) for _ in range(3)])
    W = knn_affinity(X, {"k": "auto"})
    a, _ = smallest_eigenpairs(W, 8, solver="eigsh")
    b, _ = smallest_eigenpairs(W, 8, solver="lobpcg")
    np.testing.assert_allclose(a, b, atol=1e-6)


def planted_graph(n, seed, groups=3, d=8):
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.standard_normal((n // groups, d)) + 4 * rng.standard_normal(d)
                   for _ in range(groups)])
    return knn_affinity(X, {"k": "auto"})


@pytest.mark.parametrize("tol,vec_atol", [(0.0, 1e-6), (1e-10, 1e-9)])
def test_chebyshev_matches_dense_eigh(tol, vec_atol):
    W = planted_graph(3000, seed=5)
    lam, vec = smallest_eigenpairs(W, 32, solver="chebyshev", tol=tol)
    np.testing.assert_allclose(lam, dense_reference(W, 32), atol=1e-8)
    L = laplacian_sym(W)
    assert np.abs(L @ vec - vec * lam).max() < vec_atol
    np.testing.assert_allclose(vec.T @ vec, np.eye(32), atol=1e-7)


def test_chebyshev_components_and_isolated_nodes():
    rng = np.random.default_rng(6)
    blocks = [knn_affinity(rng.standard_normal((s, 4)), {"k": 5}) for s in (900, 700, 500)]
    W = sp.block_diag(blocks + [sp.csr_matrix((2, 2))], format="csr")
    lam, _ = smallest_eigenpairs(W, 12, solver="chebyshev")
    assert np.sum(lam < 1e-10) == 5 and lam[5] > 1e-4
    np.testing.assert_allclose(lam, dense_reference(W, 12), atol=1e-8)


def test_auto_solver_is_chebyshev_at_scale_and_agrees_with_eigsh(monkeypatch):
    import spray.analysis.spectral as spectral

    assert spectral.choose_solver("auto", 1000, 32) == "eigsh"
    assert spectral.choose_solver("auto", spectral.CHEBYSHEV_ABOVE, 32) == "chebyshev"
    W = planted_graph(24000, seed=7, groups=6, d=12)
    used = []
    real = spectral._chebyshev
    monkeypatch.setattr(spectral, "_chebyshev", lambda *a, **k: used.append(1) or real(*a, **k))
    import torch

    threads = torch.get_num_threads()
    a, va = smallest_eigenpairs(W, 32)  # auto
    assert torch.get_num_threads() == threads  # the solver's own thread choice is undone
    b, vb = smallest_eigenpairs(W, 32, solver="eigsh")
    assert used
    np.testing.assert_allclose(a, b, atol=1e-9)
    # same invariant subspace for the clustered (well separated) leading eigenvalues
    overlap = np.linalg.svd(va[:, :6].T @ vb[:, :6], compute_uv=False)
    assert overlap.min() > 1 - 1e-6


def test_chebyshev_falls_back_to_eigsh_when_it_does_not_converge(monkeypatch):
    import spray.analysis.spectral as spectral

    W = planted_graph(2400, seed=8)
    monkeypatch.setattr(spectral, "CHEBYSHEV_MAX_ITER", 1)
    M, d = spectral.normalized_affinity(W)
    _, _, null = spectral.component_vectors(M, d, 16)
    assert spectral._chebyshev(M, 16, 1e-12, 0, null) is None
    lam, _ = smallest_eigenpairs(W, 16, solver="chebyshev", tol=1e-12)
    np.testing.assert_allclose(lam, dense_reference(W, 16), atol=1e-8)


def test_chebyshev_gives_up_on_a_gapless_spectrum_and_eigsh_finishes(monkeypatch):
    """A long cycle has pairs of eigenvalues 1 − cos(2πj/n) packed ~1e-5 apart near 0: the
    filter cannot separate them, the residual stalls, and eigsh takes over."""
    import spray.analysis.spectral as spectral

    n = 3000
    i = np.arange(n)
    W = sp.csr_matrix((np.ones(n), (i, (i + 1) % n)), shape=(n, n))
    W = W + W.T
    outcomes = []
    real = spectral._chebyshev
    monkeypatch.setattr(spectral, "_chebyshev",
                        lambda *a, **k: outcomes.append(real(*a, **k)) or outcomes[-1])
    lam, _ = smallest_eigenpairs(W, 10, solver="chebyshev")
    assert outcomes == [None]
    exact = np.sort(1 - np.cos(2 * np.pi * np.arange(n) / n))[:10]
    np.testing.assert_allclose(lam, exact, atol=1e-10)


def test_a_solver_that_did_not_run_is_recorded_in_the_analysis_warnings():
    """solver: chebyshev on a small class, or a stalled Chebyshev iteration, must not pass
    silently: the class's warnings (report, summary.json) say which solver really ran."""
    from spray.analysis.analyze import analyze

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (60, 8)), rng.normal(5, 1, (60, 8))])
    result = analyze(X, embed=False, spectral={"solver": "chebyshev"})
    assert any("solver chebyshev" in w and "densely" in w for w in result.warnings)
    assert not any("solver" in w for w in analyze(X, embed=False).warnings)
    n = 3000
    i = np.arange(n)
    W = sp.csr_matrix((np.ones(n), (i, (i + 1) % n)), shape=(n, n))
    notes: list = []
    smallest_eigenpairs(W + W.T, 10, solver="chebyshev", notes=notes)
    assert len(notes) == 1 and "stalled" in notes[0] and "eigsh" in notes[0]


def test_chebyshev_filter_in_float32_keeps_the_wanted_components_with_outliers_projected():
    """A degree-40 filter cut at the bulk edge of a graph of noise amplifies the null vector
    (μ = 1) ~10¹⁰× more than the bulk edge it is after; in float32 the rounding of that
    component drowned the wanted ones (the iteration stalled near a residual of 1e-4 on
    100k nodes of noise). Projecting the known outliers out of the recurrence keeps float32
    within its rounding of the float64 result."""
    import torch

    import spray.analysis.spectral as spectral

    rng = np.random.default_rng(9)
    W = knn_affinity(rng.standard_normal((3000, 200)), {"k": 10})
    M, d = spectral.normalized_affinity(W)
    _, _, null = spectral.component_vectors(M, d, 4)
    assert null.shape[1] == 1
    X = torch.from_numpy(rng.standard_normal((M.shape[0], 8)))
    X = X - torch.from_numpy(null) @ (torch.from_numpy(null).T @ X)
    P64 = torch.from_numpy(null)
    A64, A32 = (spectral._RowBlocks(M, t, 2) for t in (torch.float64, torch.float32))
    mu = spectral._eigsh(M, 3, 0.0, 0, null)[0]
    cut = float(mu[-1]) - 0.02  # the bulk edge, as the iteration places it
    ref = spectral._chebyshev_filter(A64, X, 40, cut, P=P64)
    ref = ref / torch.linalg.vector_norm(ref, dim=0)

    def error(P):
        out = spectral._chebyshev_filter(A32, X.float(), 40, cut, P=P).double()
        out = out - P64 @ (P64.T @ out)  # the iteration deflates the null vectors afterwards
        out = out / torch.linalg.vector_norm(out, dim=0)
        return float(torch.linalg.vector_norm(out - ref, dim=0).max())

    assert error(P64.float()) < 1e-5
    assert error(None) > 0.1


def test_outliers_are_the_locked_vectors_the_filter_amplifies_far_more():
    from spray.analysis.spectral import _outliers

    theta = np.array([0.99, 0.42, 0.41, 0.40, 0.39])
    assert list(_outliers(theta, 3, 0.386, 24)) == [0]
    assert list(_outliers(theta, 0, 0.386, 24)) == []


def test_chebyshev_row_blocks_in_threads_give_the_same_products_to_the_bit():
    """torch's CSR product does not share its work among its own threads; the solver cuts
    ``M`` into row blocks multiplied in parallel threads, one torch thread each. The result
    must not depend on the number of blocks or threads, and torch's thread count is
    restored after a solve."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    import spray.analysis.spectral as spectral

    rng = np.random.default_rng(4)
    W = knn_affinity(rng.standard_normal((2000, 50)), {"k": 10})
    M, _ = spectral.normalized_affinity(W)
    x0, x1 = (torch.from_numpy(rng.standard_normal((2000, 24)).astype(np.float32))
              for _ in range(2))
    one = spectral._RowBlocks(M, torch.float32, 1)
    three = spectral._RowBlocks(M, torch.float32, 3)
    assert len(one.blocks) == 1 and len(three.blocks) == 3
    assert [b[0] for b in three.blocks] == [0, three.blocks[0][1], three.blocks[1][1]]
    ref = one.addmm(x0, x1, -1.0, 0.7, -0.3)
    assert np.allclose(ref.numpy(), -x0.numpy() + 0.7 * (M @ x1.numpy()) - 0.3 * x1.numpy(),
                       atol=1e-5)
    with ThreadPoolExecutor(3) as pool:
        three.pool = pool
        assert torch.equal(three.addmm(x0, x1, -1.0, 0.7, -0.3), ref)
        assert torch.equal(three @ x1, one @ x1)
    before = torch.get_num_threads()
    lam_one = smallest_eigenpairs(W, 12, solver="chebyshev")[0]
    assert torch.get_num_threads() == before
    torch.set_num_threads(1)
    try:
        assert np.array_equal(smallest_eigenpairs(W, 12, solver="chebyshev")[0], lam_one)
    finally:
        torch.set_num_threads(before)


def noise_with_a_group(n=1500, seed=9):
    """Isotropic noise with one shifted group, the hard benchmark case in small: a bulk
    without gaps and one isolated eigenvalue (μ ≈ 0.96) far above it."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 100))
    X[:n // 20] += 0.8
    return knn_affinity(X, {"k": 10})


def test_lanczos_start_brackets_the_spectrum_and_finds_the_isolated_eigenvector():
    """The Lanczos steps before the Chebyshev iteration place its first filter: the lower end
    at, not above, the bottom of the spectrum (−1 damped an interval twice as wide), a first
    cut with dozens of eigenvalues above it (the fixed cut 0.5 had 2 here: the first filter
    was lost), and the eigenvector of the isolated eigenvalue, which the first filter would
    amplify beyond float32's precision, as a start vector."""
    import scipy.linalg
    import torch

    import spray.analysis.spectral as spectral

    W = noise_with_a_group()
    M, d = spectral.normalized_affinity(W)
    _, _, null = spectral.component_vectors(M, d, 4)
    assert null.shape[1] == 1
    mu = scipy.linalg.eigvalsh(M.toarray())
    A = spectral._RowBlocks(M, torch.float64, 1)
    low, cut, U = spectral._lanczos_start(A, torch.from_numpy(null),
                                          torch.Generator().manual_seed(0), 39)
    assert mu[0] - 0.05 < low < mu[0] and low > -0.9
    assert 20 <= np.sum(mu > cut) <= 0.1 * len(mu)
    assert U is not None and U.shape[1] == 1
    u = U.numpy()[:, 0]
    rayleigh = u @ (M @ u)
    assert abs(rayleigh - mu[-2]) < 1e-9 and mu[-2] - mu[-3] > 0.3
    assert np.linalg.norm(M @ u - rayleigh * u) < 1e-6


def test_chebyshev_products_counted_on_noise_with_a_group(monkeypatch):
    """The sparse products are the solver's cost (memory-bound). Counted on this graph as
    float32 column products + 3 × float64 ones: 5 613 with the first filter on [−1, 0.5] and
    float64 iterations from a residual of 5e-6 on; now under 4 000, and no float64 products
    but those of the Lanczos start (float32 reaches the tolerance, float64 only confirms it)."""
    import torch

    import spray.analysis.spectral as spectral

    W = noise_with_a_group()
    columns = {torch.float32: 0, torch.float64: 0}
    real = spectral._RowBlocks.addmm

    def counted(self, x0, x1, *args, **kwargs):
        columns[self.dtype] += x1.shape[1]
        return real(self, x0, x1, *args, **kwargs)

    monkeypatch.setattr(spectral._RowBlocks, "addmm", counted)
    lam, vec = smallest_eigenpairs(W, 32, solver="chebyshev")
    np.testing.assert_allclose(lam, dense_reference(W, 32), atol=1e-8)
    assert np.abs(laplacian_sym(W) @ vec - vec * lam).max() < 1e-6
    # the Lanczos steps and the check of the one eigenvector they find above the first cut
    assert columns[torch.float64] == spectral.CHEBYSHEV_LANCZOS_STEPS + 1
    assert columns[torch.float32] + 3 * columns[torch.float64] < 4000


def test_chebyshev_converges_with_a_lower_end_above_the_spectrum(monkeypatch):
    """Should the Lanczos estimate of the lower end miss the bottom of the spectrum, the
    eigenvalues below it are amplified too, but less than the wanted ones: the iteration
    must still converge to the right eigenpairs (and not stall into the eigsh fallback)."""
    import spray.analysis.spectral as spectral

    W = noise_with_a_group()
    M, d = spectral.normalized_affinity(W)
    _, _, null = spectral.component_vectors(M, d, 16)
    monkeypatch.setattr(spectral, "_lanczos_start", lambda *a, **k: (0.0, 0.5, None))
    found = spectral._chebyshev(M, 16, 0.0, 0, null)
    assert found is not None
    np.testing.assert_allclose(np.clip(1 - found[0], 0, 2), dense_reference(W, 16), atol=1e-8)


def test_lanczos_start_keeps_only_vectors_that_are_eigenvectors():
    """Plain Lanczos loses orthogonality once an eigenvalue converges: after 120 steps on this
    graph three more vectors had residual bounds below 1e-8 but residuals of 4e-3 to 2e-2
    (copies of converged eigenvalues). Only true eigenvectors may start the block: they are
    locked at once and projected out of the first filter."""
    import torch

    import spray.analysis.spectral as spectral

    W = noise_with_a_group()
    M, d = spectral.normalized_affinity(W)
    _, _, null = spectral.component_vectors(M, d, 4)
    A = spectral._RowBlocks(M, torch.float64, 1)
    for steps in (30, 120):
        _, _, U = spectral._lanczos_start(A, torch.from_numpy(null),
                                          torch.Generator().manual_seed(0), 39, steps)
        u = U.numpy()
        rayleigh = np.einsum("ij,ij->j", u, M @ u)
        assert np.linalg.norm(M @ u - u * rayleigh, axis=0).max() <= 1e-6
        assert np.abs(rayleigh - 0.943).max() < 1e-3  # the shifted group's eigenvalue only
