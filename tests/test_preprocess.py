"""Preprocessing of relevance maps into features."""

import numpy as np
import pytest

from spray.analysis.preprocess import nonfinite_rows, pooling_matrix, preprocess, sum_pool
from spray.config.presets import load_pipeline
from spray.errors import DataError


def params(**kw):
    return load_pipeline(overrides={"preprocess": kw})["preprocess"]


@pytest.mark.parametrize("size,bins", [(28, 20), (37, 20), (20, 20), (224, 20), (7, 20), (5, 3)])
def test_pooling_keeps_total_and_equal_cells(size, bins):
    P = pooling_matrix(size, bins)
    np.testing.assert_allclose(P.sum(axis=0), 1.0)           # every pixel fully distributed
    np.testing.assert_allclose(P.sum(axis=1), size / bins)   # every cell covers the same area
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((4, size, size + 3)).astype(np.float32)
    pooled = sum_pool(maps, (bins, bins))
    assert pooled.shape == (4, bins, bins)
    np.testing.assert_allclose(pooled.sum(axis=(1, 2)), maps.sum(axis=(1, 2)), rtol=1e-4, atol=1e-3)


def test_divisible_pooling_is_block_sum():
    maps = np.arange(2 * 40 * 60, dtype=np.float32).reshape(2, 40, 60)
    expected = maps.reshape(2, 20, 2, 20, 3).sum(axis=(2, 4))
    np.testing.assert_allclose(sum_pool(maps, (20, 20)), expected, rtol=1e-6)


def test_default_features_shape_and_l1():
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((5, 3, 37, 29)).astype(np.float32)
    f = preprocess(maps, params())
    assert f.shape == (5, 400) and f.dtype == np.float32
    total = np.abs(maps.sum(axis=1)).sum(axis=(1, 2))
    np.testing.assert_allclose(f.sum(axis=1), maps.sum(axis=(1, 2, 3)) / total, rtol=1e-4)


def test_zero_maps_stay_zero_and_l2():
    maps = np.zeros((3, 16, 16), dtype=np.float32)
    maps[1, 2, 3] = 5.0
    for norm in ("l1", "l2", "none"):
        f = preprocess(maps, params(normalize=norm, pool=[4, 4]))
        assert np.all(f[0] == 0) and np.isfinite(f).all()
    f = preprocess(maps, params(normalize="l2", pool=[4, 4]))
    np.testing.assert_allclose(np.linalg.norm(f[1]), 1.0, rtol=1e-6)


def test_transforms():
    rng = np.random.default_rng(2)
    maps = rng.standard_normal((4, 32, 32)).astype(np.float32)
    a = preprocess(maps, params(transform="abs"))
    assert (a >= 0).all()
    low = preprocess(maps, params(transform="lowpass", lowpass_sigma=2.0, normalize="none"))
    raw = preprocess(maps, params(normalize="none"))
    assert low.std() < raw.std()
    # FFT magnitude is invariant to circular shifts of the map
    shifted = np.roll(maps, (5, -3), axis=(1, 2))
    f1 = preprocess(maps, params(transform="fft", pool=[8, 8], normalize="l2"))
    f2 = preprocess(shifted, params(transform="fft", pool=[8, 8], normalize="l2"))
    assert f1.shape == (4, 64)
    np.testing.assert_allclose(f1, f2, rtol=1e-4, atol=1e-6)


def test_channels_kept_when_not_summed():
    maps = np.ones((2, 3, 8, 8), dtype=np.float32)
    f = preprocess(maps, params(channel_sum=False, pool=[2, 2], normalize="none"))
    assert f.shape == (2, 12)
    np.testing.assert_allclose(f, 16.0)


def test_nonfinite_rows_reported():
    maps = np.zeros((6, 8, 8), dtype=np.float32)
    maps[2, 1, 1] = np.nan
    maps[5, 0, 0] = np.inf
    np.testing.assert_array_equal(nonfinite_rows(maps), [2, 5])
    with pytest.raises(DataError, match=r"2 sample\(s\) \(rows 2, 5\)"):
        preprocess(maps, params())


def test_bad_shapes():
    with pytest.raises(DataError, match="shape"):
        preprocess(np.zeros((4, 8)), params())
    assert preprocess(np.zeros((0, 8, 8)), params(pool=[4, 4])).shape == (0, 16)
