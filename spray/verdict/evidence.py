"""The evidence measured on one candidate group: contrast, input randomness, concentration.

The rule that combines them is described once, in docs/verdict.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

from spray.config.presets import FlagsSection
from spray.verdict.candidates import mask_key
from spray.verdict.graphs import (
    GRAM_MAX_SAMPLES,
    GraphCache,
    MaskedSearch,
    NeighbourLists,
    extended_k,
    mask_conductance,
    random_conductance,
    unmasked_search,
    with_degree,
)
from spray.verdict.result import ClusterEvidence

if TYPE_CHECKING:
    from spray.verdict.patterns import InputPatterns


def contrast(phi_in: float, phi_rel: float, floor: float) -> float:
    """log(max(φ_input, floor) / max(φ_relevance, floor))."""
    return math.log(max(phi_in, floor) / max(phi_rel, floor))


def difference(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean features of ``mask`` minus those of the rest (float64)."""
    X = np.asarray(features, dtype=np.float64)
    return X[mask].mean(axis=0) - X[~mask].mean(axis=0)


def top_cells(magnitude: np.ndarray, area: float) -> np.ndarray:
    """Indices of the ``area`` share of cells with the largest ``magnitude`` (at least one)."""
    top = max(1, int(math.ceil(area * magnitude.size)))
    return np.argsort(magnitude)[::-1][:top]


def footprint(magnitude: np.ndarray, share: float, low: float, high: float) -> np.ndarray:
    """Indices of the cells whose ``magnitude`` is at least ``share`` of the largest, largest
    first: at least the ``low`` share of the cells and at most the ``high`` share (never fewer
    than ``low``). With ``high`` ≤ ``low`` these are :func:`top_cells` of ``low``."""
    order = np.argsort(magnitude)[::-1]
    least = max(1, int(math.ceil(low * magnitude.size)))
    most = max(least, int(math.ceil(high * magnitude.size)))
    peak = float(magnitude[order[0]]) if magnitude.size else 0.0
    count = int((magnitude >= share * peak).sum()) if peak > 0 else least
    return order[:min(max(count, least), most)]


def touched_regions(excess: np.ndarray, cells: np.ndarray, grid, share: float) -> np.ndarray:
    """``cells`` and every region of the input difference they touch.

    A region is a set of 8-connected grid cells whose ``excess`` is at least ``share`` of the
    largest: one pattern of the inputs (a frame, a stamp, a stroke). A region that holds one of
    ``cells`` is added whole. ``share`` 0, no excess, or a ``grid`` that does not match
    ``excess``: ``cells`` alone.
    """
    from scipy.ndimage import label

    peak = float(excess.max()) if excess.size else 0.0
    shape = tuple(int(g) for g in grid) if grid is not None else ()
    if share <= 0 or peak <= 0 or len(shape) != 2 or shape[0] * shape[1] != excess.size:
        return cells
    regions, _ = label((excess >= share * peak).reshape(shape), structure=np.ones((3, 3)))
    regions = regions.ravel()
    touched = np.setdiff1d(regions[cells], [0])
    return np.union1d(cells, np.flatnonzero(np.isin(regions, touched)))


def concentration(features: np.ndarray, mask: np.ndarray, grid, area: float,
                  delta: np.ndarray | None = None) -> dict:
    """Spatial concentration of the mean-relevance difference between ``mask`` and the rest.

    Returns ``concentration`` (share of |Δ| in the top ``area`` of the cells), ``peak`` (the
    grid cell of the largest |Δ|, [row, column], or None when Δ is 0) and ``peak_sign``.
    """
    delta = difference(features, mask)
    mag = np.abs(delta)
    total = mag.sum()
    if total <= 0:
        return {"concentration": 0.0, "peak": None}
    share = float(mag[top_cells(mag, area)].sum() / total)
    peak = int(np.argmax(mag))
    if grid is not None and int(grid[0]) * int(grid[1]) == mag.size:
        peak_at = [peak // int(grid[1]), peak % int(grid[1])]
    else:
        peak_at = [peak]
    return {"concentration": round(share, 4), "peak": peak_at,
            "peak_sign": int(np.sign(delta[peak]))}


def hot_spot_side(input_features: np.ndarray, features: np.ndarray, mask: np.ndarray,
                  area: float) -> np.ndarray | None:
    """Each sample's inputs at the hot spot of ``mask``, projected onto the line from the rest's
    median to the group's (0 halfway, about +½ for a typical member, −½ for the rest).

    Parameters
    ----------
    input_features : ``(n, d)`` inputs preprocessed like the relevance features.
    features : ``(n, d)`` relevance features.
    mask : ``(n,)`` boolean group membership (at least one member and one non-member).
    area : share of the cells that is the hot spot.

    Returns
    -------
    numpy.ndarray or None
        ``(n,)`` projections; None when the two medians coincide there.
    """
    cells = top_cells(np.abs(difference(features, mask)), area)
    V = np.asarray(input_features[:, cells], dtype=np.float64)
    V = V / _spread(V[~mask])
    group, rest = np.median(V[mask], axis=0), np.median(V[~mask], axis=0)
    line = group - rest
    norm = float(line @ line)
    if norm <= 0:
        return None
    return (V - (group + rest) / 2) @ line / norm


def _spread(V: np.ndarray) -> np.ndarray:
    """Per column, a robust spread of ``V`` (1.4826 × MAD; the standard deviation where that is
    0, and the largest spread of the columns where both are)."""
    spread = 1.4826 * np.median(np.abs(V - np.median(V, axis=0)), axis=0)
    spread = np.where(spread > 0, spread, V.std(axis=0))
    top = float(spread.max())
    return np.where(spread > 0, spread, top if top > 0 else 1.0)


def auc(scores: np.ndarray, mask: np.ndarray) -> float:
    """ROC AUC of ``scores`` for telling ``mask`` from the rest (ties count half)."""
    ranks = rankdata(scores)
    pos, neg = int(mask.sum()), int((~mask).sum())
    return float((ranks[mask].sum() - pos * (pos + 1) / 2) / (pos * neg))


def masked_inputs(input_features: np.ndarray, features: np.ndarray, mask: np.ndarray,
                  area: float, normalize: str) -> np.ndarray:
    """The inputs without the cells where the relevance of ``mask`` differs most from the rest.

    The ``area`` share of feature cells with the largest |mean relevance of the group − mean
    relevance of the rest| are set to 0 in every input, and each input is normalized again as
    the preprocessing did (``l1``, ``l2`` or ``none``).
    """
    cells = top_cells(np.abs(difference(features, mask)), area)
    return without_cells(input_features, cells, normalize)[0]


def without_cells(input_features: np.ndarray, cells: np.ndarray,
                  normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """The inputs with the columns ``cells`` set to 0 and normalized again (``l1``, ``l2`` or
    ``none``), and the per-row divisor used (1 where a row is 0 or without normalization)."""
    X = np.array(input_features, dtype=np.float32)
    X[:, cells] = 0.0
    scale = np.ones(len(X), dtype=np.float32)
    if normalize in ("l1", "l2"):
        scale = (np.abs(X).sum(axis=1) if normalize == "l1" else np.linalg.norm(X, axis=1))
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        X /= scale[:, None]
    return X, scale


def input_excess(X: np.ndarray, mask: np.ndarray, noise: float,
                 totals: tuple | None = None) -> np.ndarray:
    """Per cell, how far the mean input of ``mask`` differs from the rest's beyond chance:
    max(|t| − ``noise``, 0), t the difference of the means over its standard error (Welch's),
    the error taken as at least a tenth of the median cell's (a cell constant on both sides
    would otherwise outweigh every other). ``noise`` 0, or fewer than two samples on a side,
    gives the |difference of the means| itself. ``totals`` (the per-cell sum and sum of squares
    of ``X`` over all rows, float64) spare the copy of the rest's rows."""
    a = np.asarray(X[mask], dtype=np.float64)
    if totals is None:
        X64 = np.asarray(X, dtype=np.float64)
        totals = (X64.sum(axis=0), np.square(X64).sum(axis=0))
    return excess_of_sums((a.sum(axis=0), np.square(a).sum(axis=0)), len(a), totals,
                          len(mask), noise)


def excess_of_sums(group: tuple, s: int, totals: tuple, n: int, noise: float) -> np.ndarray:
    """:func:`input_excess` from the per-cell sums and sums of squares of a group of ``s``
    samples and of all ``n`` (float64): what a caller that reads the inputs in chunks can
    add up."""
    sum_a, sq_a = group
    sum_b, sq_b = totals[0] - sum_a, totals[1] - sq_a
    delta = np.abs(sum_a / s - sum_b / (n - s))
    if noise <= 0 or s < 2 or n - s < 2:
        return delta
    var_a = np.maximum(sq_a - sum_a ** 2 / s, 0.0) / (s - 1)
    var_b = np.maximum(sq_b - sum_b ** 2 / (n - s), 0.0) / (n - s - 1)
    se = np.sqrt(var_a / s + var_b / (n - s))
    floor = 0.1 * float(np.median(se))
    if floor <= 0:
        floor = 0.1 * float(se[se > 0].min()) if (se > 0).any() else 1.0
    return np.maximum(delta / np.maximum(se, floor) - noise, 0.0)


def colocation_penalty(colocation: float, params: FlagsSection) -> float:
    """Linear penalty below the knee: ``colocation_weight`` per unit of colocation."""
    return params.colocation_weight * max(0.0, params.colocation_knee - colocation)


def colocation_of(colocation: tuple[float, float], randomness: float,
                  params: FlagsSection) -> float:
    """The colocation that scores: with the regions its hot spot touches when the group is a
    random subset of the class without its input footprint (``randomness`` at least
    ``input_randomness_knee``: the region is a mark put on the group, a frame), else in the hot
    spot alone (a group that stays a group is a sub-type of the class, and a region of its
    input difference is part of its shape, which the model need not look at)."""
    hot, regions = colocation
    return regions if randomness >= params.input_randomness_knee else hot


def size_penalty(fraction: float, params: FlagsSection) -> float:
    """Linear penalty above the knee, equal to ``size_prior_weight`` at fraction 0.5."""
    knee, weight = params.size_prior_knee, params.size_prior_weight
    if fraction <= knee or weight <= 0 or knee >= 0.5:
        return 0.0
    return weight * (fraction - knee) / (0.5 - knee)


def edge_penalty(edge_randomness: float, params: FlagsSection) -> float:
    """Linear penalty above the knee: ``edge_randomness_weight`` per unit of edge randomness."""
    return params.edge_randomness_weight * max(0.0, edge_randomness - params.edge_randomness_knee)


def hot_spot_penalty(separation: float, params: FlagsSection) -> float:
    """Linear penalty below the knee: ``hot_spot_weight`` per unit of hot-spot separation."""
    return params.hot_spot_weight * max(0.0, params.hot_spot_knee - separation)


def hot_spot_mass_penalty(mass: float, params: FlagsSection) -> float:
    """Linear penalty below the knee: ``hot_spot_mass_weight`` per unit of hot-spot mass."""
    return params.hot_spot_mass_weight * max(0.0, params.hot_spot_mass_knee - mass)


def window_mass_penalty(mass: float, params: FlagsSection) -> float:
    """Linear penalty below the knee: ``window_mass_weight`` per unit of window mass."""
    return params.window_mass_weight * max(0.0, params.window_mass_knee - mass)


def randomness_penalty(randomness: float, params: FlagsSection) -> float:
    """Linear penalty below the knee: ``input_randomness_weight`` per unit of randomness."""
    return params.input_randomness_weight * max(0.0, params.input_randomness_knee - randomness)


@dataclass
class ClassGraphs:
    """What the evidence of every candidate of one class is measured against.

    Attributes
    ----------
    W, degree : the relevance kNN graph of the analysis and its degrees.
    input_features : ``(n, d)`` raw inputs preprocessed like the relevance maps.
    features : ``(n, d)`` relevance features, or None (then whole inputs, no concentration).
    affinity : the affinity section with the analysis' ``k``.
    params : the flags section.
    normalize, grid : the preprocessing's normalization and pooling grid.
    whole_inputs : the input graph on whole inputs (only built when ``mask_area`` is 0).
    cache : the neighbour lists of the arrays graphed (the contrast's inputs of every candidate,
        the relevance features), shared with the resamples (:class:`~spray.verdict.bootstrap.
        Resamples`), which take their graphs from them.
    search : the masked inputs' exact search from the inputs' Gram matrix (classes up to
        ``GRAM_MAX_SAMPLES``; above, every masked input array is searched on its own).
    edges : the kNN graph of the inputs' edge energy (``edge_features``), or None (not given,
        or ``edge_randomness_weight`` 0).
    edge_features : the edge energy that graph was built from (None with it).
    windows : the kNN graph of the samples' peak windows (``window_features``), or None (not
        given, or ``window_sweep_eigenvectors`` 0).
    window_features, window_share : the peak windows that graph was built from and each
        window's share of its sample's |relevance|
        (:meth:`~spray.verdict.patterns.InputPatterns.peak_windows`; None with it).
    window_cuts : the sweep cuts of that graph once made (``spray.verdict.score._window_cuts``:
        the window cuts and the carried candidates read the same eigenvectors), or None.
    patterns : the class's raw inputs (:class:`~spray.verdict.patterns.InputPatterns`), for the
        hot-spot separation and the colocation in the pixels (``hot_spot_agreement_spread``,
        ``colocation_pixels``), or None.
    """

    W: sp.csr_matrix
    degree: np.ndarray
    input_features: np.ndarray
    features: np.ndarray | None
    affinity: dict
    params: FlagsSection
    normalize: str
    grid: object
    whole_inputs: tuple | None = None
    cache: GraphCache | None = None
    search: MaskedSearch | None = None
    edges: tuple | None = None
    edge_features: np.ndarray | None = None
    windows: tuple | None = None
    window_features: np.ndarray | None = None
    window_share: np.ndarray | None = None
    window_cuts: list | None = None
    patterns: InputPatterns | None = None
    _float64: dict | None = None
    _input_totals: tuple | None = None
    _by_cells: dict | None = None
    _shares: np.ndarray | None = None
    _pixel_separations: dict | None = None

    @classmethod
    def build(cls, result, input_features, pipeline: dict, params: FlagsSection, features=None,
              edge_features=None, windows=None, patterns=None):
        """The graphs of a class from its analysis result and its inputs (and the edge energy
        of its inputs, preprocessed like them, for ``edge_randomness``; its peak windows
        with their relevance shares, ``(windows, shares)``, for window cuts; its raw inputs,
        :class:`~spray.verdict.patterns.InputPatterns`, for the hot spot in the pixels)."""
        affinity = dict(pipeline["affinity"])
        affinity["k"] = int(result.k)
        W, degree = with_degree(result.affinity)
        preprocess = pipeline.get("preprocess") or {}
        graphs = cls(W, degree, np.asarray(input_features, dtype=np.float32), features,
                     affinity, params, preprocess.get("normalize", "l1"), preprocess.get("pool"))
        if params.hot_spot_agreement_spread is not None:
            graphs.patterns = patterns
        n = len(graphs.input_features)
        graphs.cache = GraphCache(affinity, extended_k(affinity["k"], n,
                                                       subsample_size(n, params),
                                                       params.bootstrap))
        if graphs.mask_area == 0:
            graphs.whole_inputs = graphs.cache.lists(graphs.input_features).whole()
        elif n <= GRAM_MAX_SAMPLES:
            graphs.search = MaskedSearch(graphs.input_features)
        if edge_features is not None and params.edge_randomness_weight > 0:
            edges = np.asarray(edge_features, dtype=np.float32)
            if edges.shape[0] != n:
                raise ValueError(f"edge_features has {edges.shape[0]} rows, the inputs {n}")
            # lists of k, from blocks of E Eᵀ (as the resamples' relevance); the resamples of
            # edge cuts search the edge features again (GraphCache, extended k)
            graphs.edges = NeighbourLists(edges, affinity, affinity["k"],
                                          unmasked_search(edges)).whole()
            graphs.edge_features = edges
        if windows is not None and params.window_sweep_eigenvectors > 0:
            X, share = np.asarray(windows[0], dtype=np.float32), np.asarray(windows[1])
            if X.shape[0] != n or share.shape != (n,):
                raise ValueError(f"windows have {X.shape[0]} rows and {share.shape} shares, "
                                 f"the inputs {n}")
            graphs.windows = NeighbourLists(X, affinity, affinity["k"],
                                            unmasked_search(X)).whole()
            graphs.window_features, graphs.window_share = X, share.astype(np.float64)
        return graphs

    def window_mass(self, mask: np.ndarray) -> float:
        """The members' median share of |relevance| in their peak windows minus the rest's:
        how much more narrowly the model looks at what the group's windows hold."""
        share = self.window_share
        return float(np.median(share[mask]) - np.median(share[~mask]))

    def difference(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """:func:`difference` of ``X`` (the inputs or the relevance features) and ``mask``,
        with ``X`` in float64 once per class."""
        if self._float64 is None:
            self._float64 = {}
        hit = self._float64.get(id(X))
        if hit is None or hit[0] is not X:
            hit = (X, np.asarray(X, dtype=np.float64))
            self._float64[id(X)] = hit
        X64 = hit[1]
        return X64[mask].mean(axis=0) - X64[~mask].mean(axis=0)

    def _masked(self, cells: np.ndarray, keep: bool = True) -> NeighbourLists:
        """The inputs without ``cells`` (:func:`without_cells`); their neighbour lists
        (:class:`~spray.verdict.graphs.NeighbourLists`, kept for the resamples unless ``keep``
        is false) come from the Gram matrix when the class keeps one. Candidates whose cells
        are the same (in the same order, so the same products) share one search."""
        key = cells.tobytes()
        if self._by_cells is None:
            self._by_cells = {}
        hit = self._by_cells.get(key)
        if isinstance(hit, NeighbourLists):
            return hit
        X, scale = without_cells(self.input_features, cells, self.normalize)
        search = None
        if self.search is not None:
            def search(k, gram=self.search):
                return gram.neighbours(X, cells, scale, k)
        lists = self.cache.lists(X, search, keep)
        if keep:
            self._by_cells[key] = lists
        return lists

    def _masked_graph(self, cells: np.ndarray) -> tuple:
        """The kNN graph of :meth:`_masked`'s inputs (not kept for the resamples: only the
        graph is kept, for candidates with the same cells)."""
        key = cells.tobytes()
        hit = (self._by_cells or {}).get(key)
        if isinstance(hit, NeighbourLists):
            return hit.whole()
        if hit is None:
            hit = self._masked(cells, keep=False).whole()
            self._by_cells[key] = hit
        return hit

    def hot_spot(self, mask: np.ndarray) -> np.ndarray:
        """The ``input_mask_area`` of cells where the relevance of ``mask`` differs most from
        the rest's (the cells the contrast leaves out of the input graph)."""
        return top_cells(np.abs(self.difference(self.features, mask)), self.mask_area)

    def input_footprint(self, mask: np.ndarray) -> np.ndarray:
        """The cells where the mean input of ``mask`` differs most from the rest's: those whose
        |difference| is at least ``input_mask_share`` of the largest, at least
        ``input_mask_area`` and at most ``input_mask_max_area`` of the cells (a stamp keeps the
        least, a frame covers more)."""
        params = self.params
        return footprint(np.abs(self.difference(self.input_features, mask)),
                         params.input_mask_share, self.mask_area, params.input_mask_max_area)

    @property
    def n(self) -> int:
        return self.W.shape[0]

    @property
    def mask_area(self) -> float:
        """``input_mask_area``, or 0 without relevance features (whole inputs)."""
        return float(self.params.input_mask_area) if self.features is not None else 0.0

    def inputs_for(self, mask: np.ndarray) -> np.ndarray:
        """The inputs the contrast of ``mask`` compares with (masked or whole)."""
        if self.mask_area > 0:
            return self._masked(self.hot_spot(mask)).X
        return self.input_features

    def input_conductance(self, X_in: np.ndarray, mask: np.ndarray) -> float:
        graph = self.cache.lists(X_in).whole() if self.mask_area > 0 else self.whole_inputs
        return mask_conductance(*graph, mask)

    def colocation(self, mask: np.ndarray) -> tuple[float, float]:
        """Share of how the inputs of ``mask`` differ from the rest's beyond chance
        (:func:`input_excess`) that lies in the ``input_mask_area`` of cells where its relevance
        differs most (the cells the contrast leaves out of the input graph): near 1 for an
        artefact (the model looks differently where the inputs differ: the stamp), low for a
        sub-group of the class that differs in its shape while the model looks differently
        elsewhere; and the same share in those cells and in every region of the input
        difference they touch (:func:`touched_regions`; the model may look at part of a
        pattern: the top side of a frame), at least the first. Both 1 when the inputs differ
        nowhere beyond chance. Which one scores depends on the input randomness
        (:func:`colocation_of`).

        With the raw inputs and ``colocation_pixels``, each is at least the same share
        measured in the pixels (:meth:`~spray.verdict.patterns.InputPatterns.colocation`: fine
        stripes that pooling to the feature grid averages into the photograph) for a group
        whose members carry a pattern of their own at the hot spot (:meth:`pixel_separation`
        at least ``hot_spot_knee``: a fine pattern is the same pixels in every member; a
        sub-type's members agree on nothing there), measured only while the hot spot's share
        lies below ``colocation_knee``."""
        cells = self.hot_spot(mask)
        if self._input_totals is None:
            X64 = np.asarray(self.input_features, dtype=np.float64)
            self._input_totals = (X64.sum(axis=0), np.einsum("ij,ij->j", X64, X64))
        excess = input_excess(self.input_features, mask, self.params.colocation_noise,
                              self._input_totals)
        total = excess.sum()
        if total <= 0:
            return 1.0, 1.0
        regions = touched_regions(excess, cells, self.grid, self.params.colocation_region_share)
        hot, touched = float(excess[cells].sum() / total), float(excess[regions].sum() / total)
        if self.params.colocation_pixels and hot < self.params.colocation_knee:
            separation = self.pixel_separation(mask)
            if separation is not None and separation >= self.params.hot_spot_knee:
                pixels = self.patterns.colocation(cells, mask, self.params.colocation_noise)
                if pixels is not None:
                    hot, touched = max(hot, pixels), max(touched, pixels)
        return hot, touched

    def pixel_separation(self, mask: np.ndarray) -> float | None:
        """:meth:`~spray.verdict.patterns.InputPatterns.agreement_separation` of ``mask`` at
        its hot spot (``hot_spot_agreement_spread``, ``hot_spot_agreed_share``), once per group;
        None without the raw inputs or that spread."""
        params = self.params
        if self.patterns is None or params.hot_spot_agreement_spread is None:
            return None
        if self._pixel_separations is None:
            self._pixel_separations = {}
        key = mask_key(mask)
        if key not in self._pixel_separations:
            self._pixel_separations[key] = self.patterns.agreement_separation(
                self.hot_spot(mask), mask, float(params.hot_spot_agreement_spread),
                params.score_max_samples, params.seed, params.hot_spot_agreed_share)
        return self._pixel_separations[key]

    def input_randomness(self, mask: np.ndarray) -> float:
        """Conductance of ``mask`` in the kNN graph of the inputs without its input footprint
        (:meth:`input_footprint`: the cells within ``input_mask_share`` of the largest difference
        of its *inputs* from the rest's, ``input_mask_area``–``input_mask_max_area`` of the
        cells), over that of a random subset of its size: about 1 when the group differs from
        the rest only locally (a stamp on random members of the class), well below 1 for a style
        or sub-type of the class."""
        graph = (self._masked_graph(self.input_footprint(mask)) if self.mask_area > 0
                 else self.whole_inputs)
        return mask_conductance(*graph, mask) / random_conductance(int(mask.sum()), len(mask))

    def hot_spot_separation(self, mask: np.ndarray) -> float | None:
        """ROC AUC with which the inputs at the hot spot of ``mask`` (the ``input_mask_area`` of
        cells where its relevance differs most from the rest's), projected onto the line from
        the rest's median to the group's (:func:`hot_spot_side`), tell
        the group from the rest of the class. Near 1 when the members carry a pattern of their
        own where the model looks differently (a stamp); about that of a random subset
        (0.5-0.65) when the inputs there are no more alike within the group than across the
        class (an object on one side of varied photographs, in a random colour). None without
        relevance features, with ``input_mask_area`` 0 or ``hot_spot_weight`` 0.

        With the raw inputs and ``hot_spot_agreement_spread``, the larger of that and the
        separation in the pixels (:meth:`~spray.verdict.patterns.InputPatterns.
        agreement_separation` at the same cells: fine stripes or letters that pooling blurs),
        measured only while the pooled one lies below ``hot_spot_knee`` (above it the penalty
        is 0 either way)."""
        if self.features is None or self.mask_area <= 0 or self.params.hot_spot_weight <= 0:
            return None
        side = hot_spot_side(self.input_features, self.features, mask, self.mask_area)
        pooled = 0.5 if side is None else auc(side, mask)
        params = self.params
        if pooled >= params.hot_spot_knee:
            return pooled              # (at the knee the larger of the two has no penalty)
        pixels = self.pixel_separation(mask)
        return pooled if pixels is None else max(pooled, pixels)

    def hot_spot_mass(self, mask: np.ndarray) -> float | None:
        """The members' mean share of |relevance| at the hot spot of ``mask`` (the
        ``input_mask_area`` of cells where its relevance differs most from the rest's) minus the
        rest's mean share there, each sample's |relevance| summed to 1: how much more of the
        model's attention the group's distinguishing cells draw in the group. Clearly positive
        when the model looks at a mark the group carries; near 0 when the cells differ but hold
        little relevance (a stamp the model barely uses); negative when the group is set apart
        by less relevance there. None without relevance features or with ``input_mask_area`` 0."""
        if self.features is None or self.mask_area <= 0:
            return None
        if self._shares is None:
            A = np.abs(np.asarray(self.features, dtype=np.float64))
            total = A.sum(axis=1, keepdims=True)
            self._shares = A / np.where(total > 0, total, 1.0)
        at = self._shares[:, self.hot_spot(mask)].sum(axis=1)
        return float(at[mask].mean() - at[~mask].mean())

    def edge_randomness(self, mask: np.ndarray) -> float | None:
        """Conductance of ``mask`` in the kNN graph of the inputs' edge energy over that of a
        random subset of its size (None without that graph): well below 1 when the members
        share edges the rest lacks (a stamp, whatever its surroundings), about 1 for a group the
        edges do not tell apart (objects placed at one side of a textured background)."""
        if self.edges is None:
            return None
        return mask_conductance(*self.edges, mask) / random_conductance(int(mask.sum()),
                                                                        len(mask))


def subsample_size(n: int, params: FlagsSection) -> int:
    """Samples in each bootstrap resample of a class of ``n``."""
    return min(int(round(params.bootstrap_fraction * n)), params.bootstrap_max_samples)


def eligible(entry: ClusterEvidence, n: int, params: FlagsSection) -> bool:
    """Whether a group is a candidate by its size alone."""
    return (params.min_cluster_fraction <= entry.size / n <= params.max_cluster_fraction
            and entry.size >= params.min_cluster_size and entry.size < n)


def measure(entry: ClusterEvidence, graphs: ClassGraphs,
            bar: float | None = None) -> ClusterEvidence:
    """Fill in the evidence of a candidate (conductances, contrast, randomness, concentration).

    The contrast compares the group's conductance in the input graph with that in the graph
    that separates it: the relevance graph, or for a cut of the edge graph (``cut_graph``
    ``"edges"``) the edge graph (``conductance_edges``), for a cut of the peak windows' graph
    (``"windows"``) that graph (``conductance_windows``; its penalties are the size, the input
    randomness and the window mass: what the others measure is a fixed place).

    A half or a sweep cut whose score cannot reach ``bar`` (default: the threshold) even with
    φ_input = 1 is left unmeasured (no input graphs are built for it); a sweep cut also when
    its size, colocation and edge penalties (measured first: they need no input graph) keep it
    below ``bar`` with φ_input = 1 and a randomness penalty of 0. Returns ``entry``;
    ``entry.measured`` says whether it is a candidate.
    """
    params = graphs.params
    mask = entry.mask
    if not eligible(entry, graphs.n, params):
        return entry
    phi_rel = mask_conductance(graphs.W, graphs.degree, mask)
    # what separates the group: the relevance graph, or the graph it was cut from
    windows = entry.cut_graph == "windows"
    phi_sep = (mask_conductance(*graphs.edges, mask) if entry.cut_graph == "edges" else
               mask_conductance(*graphs.windows, mask) if windows else phi_rel)
    floor = params.conductance_floor
    bar = params.threshold if bar is None else bar
    if entry.split_only and (contrast(1.0, phi_sep, floor)
                             - size_penalty(entry.size / graphs.n, params) < bar):
        return entry       # φ_input ≤ 1: it cannot reach the threshold
    if windows:
        # a window cut's pattern need not be at one place: the terms that measure a place
        # (colocation, hot-spot separation and mass, edges) give way to the window mass
        both = edge = spot = mass = co_penalty = edge_pen = spot_pen = mass_pen = None
        window = graphs.window_mass(mask)
        window_pen = round(window_mass_penalty(window, params), 4)
    else:
        window = window_pen = None
        both = graphs.colocation(mask) if graphs.mask_area > 0 else None
        # the least colocation penalty it can have (its randomness is not measured yet)
        co_penalty = round(colocation_penalty(both[1], params), 4) if both is not None else None
        edge = graphs.edge_randomness(mask)
        edge_pen = round(edge_penalty(edge, params), 4) if edge is not None else None
        spot = graphs.hot_spot_separation(mask)
        spot_pen = round(hot_spot_penalty(spot, params), 4) if spot is not None else None
        mass = graphs.hot_spot_mass(mask)
        mass_pen = round(hot_spot_mass_penalty(mass, params), 4) if mass is not None else None
    size_pen = round(size_penalty(entry.fraction, params), 4)
    # the other penalties without an input graph
    free = (edge_pen or 0.0) + (spot_pen or 0.0) + (mass_pen or 0.0) + (window_pen or 0.0)
    if entry.cut_along is not None and _below(contrast(1.0, phi_sep, floor), size_pen,
                                              co_penalty, bar, free):
        return entry       # nor with the penalties that need no input graph
    X_in = graphs.inputs_for(mask)
    phi_in = graphs.input_conductance(X_in, mask)
    plain = round(contrast(phi_in, phi_sep, floor), 4)
    if entry.cut_along is not None and _below(plain, size_pen, co_penalty, bar, free):
        return entry       # its score stays below the bar whatever its randomness
    randomness = graphs.input_randomness(mask)
    entry.inputs = X_in
    entry.conductance_relevance = round(phi_rel, 6)
    if entry.cut_graph == "edges":
        entry.conductance_edges = round(phi_sep, 6)
    if windows:
        entry.conductance_windows = round(phi_sep, 6)
        entry.window_mass, entry.window_mass_penalty = round(window, 4), window_pen
    entry.conductance_input = round(phi_in, 6)
    entry.contrast = plain
    entry.input_randomness = round(randomness, 4)
    entry.randomness_penalty = round(randomness_penalty(randomness, params), 4)
    if both is not None:
        co = colocation_of(both, randomness, params)
        entry.colocation = round(co, 4)
        entry.colocation_penalty = round(colocation_penalty(co, params), 4)
    if graphs.features is not None:
        c = concentration(graphs.features, mask, graphs.grid, params.concentration_area,
                          graphs.difference(graphs.features, mask))
        entry.concentration, entry.peak = c["concentration"], c["peak"]
        entry.peak_sign = c.get("peak_sign")
    entry.size_penalty = size_pen
    if edge is not None:
        entry.edge_randomness = round(edge, 4)
        entry.edge_penalty = edge_pen
    if spot is not None:
        entry.hot_spot_separation = round(spot, 4)
        entry.hot_spot_penalty = spot_pen
    if mass is not None:
        entry.hot_spot_mass = round(mass, 4)
        entry.hot_spot_mass_penalty = mass_pen
    return entry


def _below(plain: float, size: float, colocation: float | None, bar: float,
           edge: float | None = None) -> bool:
    """Whether a sweep cut's score stays below ``bar`` whatever its input randomness.

    ``edge`` is the sum of the penalties that need no input graph besides the size and
    colocation penalties (edge randomness, hot-spot separation). Its score
    ``contrast − (size + randomness + colocation + edge + hot-spot penalty)`` is at most
    ``plain`` (its plain contrast, or the contrast with φ_input = 1, an upper bound of it) less
    the penalties with a randomness penalty of 0 (the penalties are never negative); the margin
    keeps its score rounded to four digits below ``bar`` too. Such a cut can neither be split
    off nor change which cut is (:func:`~spray.verdict.halves.split_off_sweep` takes the best
    only when it reaches ``bar``), so its input graphs are not built.
    """
    return plain - (size + 0.0 + (colocation or 0.0) + (edge or 0.0)) < bar - 1e-3
