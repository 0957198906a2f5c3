"""Relevance maps -> feature vectors (the ``preprocess`` section of a pipeline).

Steps, in order:

1. ``channel_sum``: ``(n, C, H, W)`` -> ``(n, H, W)`` by summing relevance over channels
   (when false, channels are kept and pooled separately).
2. ``transform``: ``none``; ``abs`` (absolute relevance); ``lowpass`` (Gaussian smoothing with
   ``lowpass_sigma`` pixels before pooling, thesis appendix E); ``fft`` (magnitude of the 2-D
   Fourier spectrum, shift-invariant; the ``pool`` grid then selects the centred block of the
   lowest frequencies instead of pooling).
3. ``pool``: sum-pooling onto a ``[h, w]`` grid. Each output cell covers exactly ``H/h × W/w``
   pixels; a pixel straddling two cells is split between them by area, so non-divisible sizes
   (and grids finer than the map) keep the total relevance and treat all cells alike.
4. ``normalize``: ``l1`` divides each map by its total absolute relevance ``sum |R|`` (taken on
   the transformed map before pooling), ``l2`` by the Euclidean norm of the feature vector,
   ``none`` leaves it. All-zero maps stay zero. A signed sum, which can be ~0, is never used.

Maps holding NaN or Inf are refused with a :class:`~spray.errors.DataError` listing the rows.
"""

from __future__ import annotations

import numpy as np

from spray.config.presets import PreprocessSection
from spray.errors import DataError

_CHUNK = 4096


def nonfinite_rows(maps: np.ndarray) -> np.ndarray:
    """Row positions (first axis) of ``maps`` holding NaN or Inf, ascending."""
    maps = np.asarray(maps)
    if maps.ndim == 0 or maps.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    flat = maps.reshape(maps.shape[0], -1)
    bad = np.zeros(flat.shape[0], dtype=bool)
    for start in range(0, flat.shape[0], _CHUNK):
        bad[start:start + _CHUNK] = ~np.isfinite(flat[start:start + _CHUNK]).all(axis=1)
    return np.flatnonzero(bad)


def describe_rows(rows: np.ndarray, limit: int = 10) -> str:
    """``"3 sample(s) (rows 1, 5, 9)"``-style text for error messages."""
    rows = np.asarray(rows)
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{len(rows)} sample(s) (rows {shown}{more})"


def pooling_matrix(size: int, bins: int) -> np.ndarray:
    """``(bins, size)`` matrix summing ``size`` pixels into ``bins`` equal-width cells.

    Cell ``j`` covers ``[j*size/bins, (j+1)*size/bins)``; pixel ``i`` covers ``[i, i+1)`` and
    contributes the length of the overlap. Rows sum to ``size/bins``, columns to 1.
    """
    edges = np.arange(bins + 1) * (size / bins)
    lo = np.maximum(edges[:-1, None], np.arange(size)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(size)[None, :] + 1)
    return np.clip(hi - lo, 0.0, None)


def sum_pool(maps: np.ndarray, grid) -> np.ndarray:
    """Sum-pool ``(..., H, W)`` maps onto a ``grid = (h, w)`` (area-exact for any sizes)."""
    H, W = maps.shape[-2:]
    ph = pooling_matrix(H, int(grid[0])).astype(maps.dtype)
    pw = pooling_matrix(W, int(grid[1])).astype(maps.dtype)
    return np.matmul(np.matmul(ph, maps), pw.T)


def cell_pixels(cells: np.ndarray, grid, H: int, W: int) -> np.ndarray:
    """The pixels of an ``H × W`` map that lie at least half in the feature ``cells`` (flat
    indices of the pooled ``grid``; without a grid the cells are the pixels).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` boolean.
    """
    grid = (H, W) if grid is None else (int(grid[0]), int(grid[1]))
    chosen = np.zeros(grid[0] * grid[1])
    chosen[np.asarray(cells, dtype=np.intp)] = 1.0
    # the share of each pixel's area in the chosen cells (columns of the pooling matrices sum to 1)
    share = pooling_matrix(H, grid[0]).T @ chosen.reshape(grid) @ pooling_matrix(W, grid[1])
    return share >= 0.5 - 1e-9      # exactly half, up to the rounding of the overlaps


def _lowpass(maps: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sig = (0,) * (maps.ndim - 2) + (sigma, sigma)
    return gaussian_filter(maps, sigma=sig, mode="nearest")


def _fft_magnitude(maps: np.ndarray, grid) -> np.ndarray:
    """Centred magnitude spectrum; with a grid, the ``h × w`` block of the lowest frequencies."""
    spec = np.abs(np.fft.fftshift(np.fft.fft2(maps, axes=(-2, -1)), axes=(-2, -1)))
    if grid is None:
        return spec.astype(maps.dtype)
    H, W = spec.shape[-2:]
    h, w = min(int(grid[0]), H), min(int(grid[1]), W)
    top, left = H // 2 - h // 2, W // 2 - w // 2
    return spec[..., top:top + h, left:left + w].astype(maps.dtype)


def _check_maps(maps) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim not in (3, 4):
        raise DataError(f"relevance maps must have shape (n, H, W) or (n, C, H, W), got "
                        f"{maps.shape}")
    if not np.issubdtype(maps.dtype, np.number) or np.issubdtype(maps.dtype, np.complexfloating):
        raise DataError(f"relevance maps must be real numbers, got dtype {maps.dtype}")
    bad = nonfinite_rows(maps)
    if len(bad):
        raise DataError(f"relevance maps of {describe_rows(bad)} hold NaN or Inf")
    return maps


def _preprocess_chunk(maps: np.ndarray, params: PreprocessSection | dict) -> np.ndarray:
    p = PreprocessSection.coerce(params)
    x = maps.astype(np.float32, copy=False)
    if x.ndim == 4 and p.channel_sum:
        x = x.sum(axis=1)
    transform, grid, norm = p.transform, p.pool, p.normalize
    if transform == "abs":
        x = np.abs(x)
    elif transform == "lowpass":
        x = _lowpass(x, p.lowpass_sigma)
    l1 = None
    if norm == "l1" and transform != "fft":
        l1 = np.abs(x).reshape(len(x), -1).sum(axis=1, dtype=np.float64)
    if transform == "fft":
        x = _fft_magnitude(x, grid)
    elif grid is not None:
        x = sum_pool(x, grid)
    feats = x.reshape(len(x), -1).astype(np.float64)
    if norm == "l1":
        scale = l1 if l1 is not None else np.abs(feats).sum(axis=1)
    elif norm == "l2":
        scale = np.linalg.norm(feats, axis=1)
    else:
        scale = None
    if scale is not None:
        scale = np.where(scale > 0, scale, 1.0)
        feats = feats / scale[:, None]
    return feats.astype(np.float32)


def preprocess(maps: np.ndarray, params: PreprocessSection | dict) -> np.ndarray:
    """Turn relevance maps into a float32 feature matrix ``(n, d)``.

    Parameters
    ----------
    maps
        ``(n, H, W)`` or ``(n, C, H, W)`` relevance maps.
    params
        the pipeline's ``preprocess`` section.

    Raises
    ------
    DataError
        wrong shape or dtype, or maps holding NaN/Inf (the rows are listed).
    """
    maps = _check_maps(maps)
    if maps.shape[0] == 0:
        probe = _preprocess_chunk(np.zeros((1,) + maps.shape[1:], dtype=np.float32), params)
        return np.zeros((0, probe.shape[1]), dtype=np.float32)
    params = PreprocessSection.coerce(params)
    chunks = [_preprocess_chunk(maps[s:s + _CHUNK], params) for s in range(0, len(maps), _CHUNK)]
    return np.concatenate(chunks, axis=0)


def _squared_steps(x: np.ndarray, axis: int) -> np.ndarray:
    """Per pixel, the mean of the squared differences to its neighbours along ``axis`` (the one
    neighbour at the image's border)."""
    step = np.diff(x, axis=axis)
    step *= step
    out = np.empty_like(x)
    n = x.shape[axis]

    def at(index):
        return (slice(None),) * (axis % x.ndim) + (index,)

    out[at(slice(1, n - 1))] = 0.5 * (step[at(slice(0, n - 2))] + step[at(slice(1, n - 1))])
    out[at(0)] = step[at(0)]
    out[at(n - 1)] = step[at(n - 2)]
    return out


def edge_energy(inputs: np.ndarray) -> np.ndarray:
    """Per-pixel edge energy of images, summed over their colour channels.

    Parameters
    ----------
    inputs
        ``(n, H, W)`` or ``(n, C, H, W)`` images.

    Returns
    -------
    numpy.ndarray
        ``(n, H, W)`` float32: Σ_c sqrt(s_y + s_x), where s_y (s_x) is the mean of the squared
        differences of a pixel to its upper and lower (left and right) neighbour, the one
        neighbour at the border. On a smooth image it is the gradient magnitude; unlike
        central differences (:func:`numpy.gradient`, used before 2026-12-04) it also sees the
        finest textures: a checkerboard or dithering of period two pixels has no central
        difference at all inside it, and a stamp made of one then only showed its outline. A
        stamp adds the same edges to every image it is on whatever the colours around it; the
        position of an object on a textured background changes little of it (the evidence
        ``edge_randomness`` of docs/verdict.md).
    """
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"inputs must have shape (n, H, W) or (n, C, H, W), got {x.shape}")
    out = np.zeros((x.shape[0],) + x.shape[2:], dtype=np.float32)
    for s in range(0, len(x), _CHUNK):
        chunk = x[s:s + _CHUNK]
        if min(chunk.shape[-2:]) < 2:
            continue
        out[s:s + _CHUNK] = np.sqrt(_squared_steps(chunk, -2) + _squared_steps(chunk, -1)).sum(axis=1)
    return out
