"""End-to-end tests of spray.analysis.analyze.analyze and the pipeline loader."""

import numpy as np
import pytest

from spray.analysis.analyze import AnalysisResult, analyze
from spray.config.presets import load_pipeline
from spray.errors import ConfigError, DataError


def blobs(n_per=150, centers=4, dim=20, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)) * 3
    X = np.vstack([ci + spread * rng.standard_normal((n_per, dim)) for ci in c])
    y = np.repeat(np.arange(centers), n_per)
    return X.astype(np.float32), y


def test_analyze_finds_planted_clusters():
    X, y = blobs(n_per=100)
    r = analyze(X)
    assert isinstance(r, AnalysisResult)
    assert r.n_clusters == 4
    assert r.k == int(np.ceil(np.log(len(X))))
    assert r.embedding.shape == (len(X), 2)
    assert np.all(np.diff(r.eigenvalues) >= 0)
    assert r.eigenvectors.shape == (len(X), 32)
    # labels match the planted groups up to renaming
    for g in range(4):
        assert len(np.unique(r.labels[y == g])) == 1
    assert r.affinity.shape == (len(X), len(X))


def test_analyze_deterministic_and_no_embed():
    X, _ = blobs(n_per=40)
    a, b = analyze(X), analyze(X)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.embedding, b.embedding)
    assert analyze(X, embed=False).embedding is None


def test_overrides_and_loaded_dict():
    X, _ = blobs(n_per=60)
    r = analyze(X, affinity={"k": 5}, clustering={"n_clusters": 3}, embed=False)
    assert r.k == 5 and r.n_clusters == 3
    pipe = load_pipeline("spray-default", overrides={"affinity": {"k": 6}})
    assert analyze(X, pipeline=pipe, embed=False).k == 6


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_tiny_classes_do_not_crash(n):
    X, _ = blobs(n_per=10)
    r = analyze(X[:n])
    assert r.labels.shape == (n,) and r.embedding.shape == (n, 2)
    assert 1 <= r.k <= n - 1


def test_tiny_class_warns_when_k_reduced():
    X, _ = blobs(n_per=10)
    r = analyze(X[:5], affinity={"k": 10}, embed=False)
    assert r.k == 3 and any("k reduced" in w for w in r.warnings)


def test_too_few_samples_and_bad_rows():
    X, _ = blobs(n_per=10)
    with pytest.raises(DataError, match="at least 3"):
        analyze(X[:2])
    X = X.copy()
    X[[4, 7]] = np.nan
    with pytest.raises(DataError, match="rows 4, 7"):
        analyze(X)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"'affinity.k': must be a positive integer or 'auto', got -1"):
        load_pipeline(overrides={"affinity": {"k": -1}})
    with pytest.raises(ConfigError, match="'spectral.bogus': unknown key"):
        load_pipeline(overrides={"spectral": {"bogus": 1}})
    with pytest.raises(ConfigError, match="'clustering.method'"):
        load_pipeline(overrides={"clustering": {"method": "dbscan"}})
    with pytest.raises(ConfigError, match="unknown pipeline preset"):
        load_pipeline("no-such-preset")
    with pytest.raises(ConfigError, match="'flags.extra_key': unknown key"):
        load_pipeline(overrides={"flags": {"extra_key": 3}})
    with pytest.raises(ConfigError, match="'flags.threshold'"):
        load_pipeline(overrides={"flags": {"threshold": "high"}})
    with pytest.raises(ConfigError, match="'flags.candidates'"):
        load_pipeline(overrides={"flags": {"candidates": "every"}})
    with pytest.raises(ConfigError, match="'flags.other_k_min_jaccard'"):
        load_pipeline(overrides={"flags": {"other_k_min_jaccard": 1.5}})
    with pytest.raises(ConfigError, match="'spectral.solver'"):
        load_pipeline(overrides={"spectral": {"solver": "arpack"}})


def test_pipeline_from_yaml_path(tmp_path):
    (tmp_path / "mine.yaml").write_text("extends: spray-default\naffinity:\n  k: 4\n")
    p = load_pipeline("mine.yaml", base_dir=tmp_path)
    assert p["affinity"]["k"] == 4 and p["spectral"]["n_eigenvalues"] == 32
    assert p["name"] == "mine"


@pytest.mark.parametrize("method", ["agglomerative", "hdbscan"])
def test_other_clustering_methods(method):
    X, y = blobs(n_per=80)
    r = analyze(X, clustering={"method": method}, embed=False)
    assert r.labels.min() >= 0
    for g in range(4):
        assert len(np.unique(r.labels[y == g])) == 1


@pytest.mark.parametrize("preset", ["spray-default", "lowpass", "fft", "abs", "corelay-compat",
                                    "followed"])
def test_every_preset_runs_on_maps(preset):
    from spray.analysis.preprocess import preprocess

    rng = np.random.default_rng(5)
    maps = rng.standard_normal((60, 1, 28, 28)).astype(np.float32)
    maps[:20, :, :4, :4] += 5.0  # a planted corner artefact in a third of the maps
    pipe = load_pipeline(preset)
    feats = preprocess(maps, pipe["preprocess"])
    r = analyze(feats, pipeline=pipe, embedding={"n_iter": 50, "early_exaggeration_iter": 25})
    assert r.labels.shape == (60,) and r.embedding.shape == (60, 2)
    assert np.all(np.diff(r.eigenvalues) >= 0)
