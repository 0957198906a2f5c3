"""The folded view: every relevance map mirrored so that its peak lies in the top-left quadrant.

An artefact at one of several places (a logo in one of four corners) splits its samples by
place: on 10 % of a class of 300, each corner holds about seven, too few to make a cluster of
the relevance graph, and all of them together are no group of it either (their maps differ by
where the logo is). Measured on the garment-merged digit ResNet with a corner logo on 10 % of a
class (design seeds 12–14, docs/verdict-eval.md, "The folded view"): the stamped samples'
relevance conductance is 0.48–0.54 and the best sweep cut along the leading eigenvectors holds
at most 17 % of them; the class scores −3.5 to −6.5 in every draw though the logo turns 30 % of
other classes' predictions.

Mirroring each sample whose window of largest |relevance| lies in the far quarter of the grid
(bottom, right or both) so that it lies in the near one puts the four corners on one: the same
class is flagged in 6 of its 10 design draws (2.43–4.01), its suspects holding the stamped
samples. A sample whose peak lies in the middle half along an axis is not mirrored along it:
mirroring there splits a group whose peaks sit on its objects (a frame on three sides of 15 %
of a synthetic class, with its objects' peaks in the middle, was split by the mirror into two
variants whose inputs no longer look alike, and half of it was flagged at 1.96; the look-alike
of ``test_artefact_larger_than_the_mask_is_flagged`` in tests/test_flags.py).

A class the rule does not flag in its own view is scored in the folded view too
(:func:`spray.verdict.score.score_class`); when the folded view flags it, the verdict is the
folded view's (``view``), otherwise the class's own stays (with ``folded_score``, the best
folded candidate that could reach the threshold). The fold can add a detection and changes
nothing else. A flagged class keeps its own view because the fold can split a group at one
fixed place: a stamp the relevance peaks on for some of its samples only (a faint top row on a
bright object) folds onto two places, and a third of the group then outscores the whole (in the
test of a visible top row, 12 of 45 members at 6.89 against all 45 at 6.71). An unflagged class
keeps its own view and score because only a flag needs the folded labels carried to the whole
class. Objects at varied places fold onto one quadrant, where their relevance no longer tells
them apart by place. The fold needs a feature grid whose cells are places in the input: not
with ``transform: fft`` or without a pooling grid.

The view is scored on the class, or on a stratified subsample of ``fold_max_samples`` (1 000;
at most ``score_max_samples``) of a larger one, analysed afresh
(:func:`spray.analysis.analyze.analyze`, no embedding); a candidate that cannot reach the
threshold is not measured (only a flag is asked of this view). When it flags a class scored on
a subsample, the samples not drawn take the verdict label that weighs most among their ``k``
nearest drawn samples in the folded relevance (:func:`extend_by_neighbours`): a folded view has
no whole-class graph to propagate along.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from spray.config.presets import PreprocessSection
from spray.verdict.patterns import InputPatterns, _box_sums

#: the peak window's side as a share of the feature grid's side
PEAK_WINDOW = 0.25

#: a sample is mirrored along an axis when its peak's centre lies at least this share of the
#: grid along it: in the far quarter (a peak near the middle, on an object, is left as it is)
FAR = 0.75


@dataclass
class Fold:
    """Which samples are mirrored up-down (``flip_y``) and left-right (``flip_x``) on a
    ``grid`` of ``(h, w)`` feature cells."""

    flip_y: np.ndarray
    flip_x: np.ndarray
    grid: tuple[int, int]

    @classmethod
    def of(cls, features: np.ndarray, preprocess: dict) -> Fold | None:
        """The fold of relevance ``features`` (``(n, d)``) made by ``preprocess``; None where
        a feature cell is not a place in the input (``fft``, no pooling grid)."""
        p = PreprocessSection.coerce(preprocess)
        if p.transform == "fft" or p.pool is None:
            return None
        h, w = int(p.pool[0]), int(p.pool[1])
        x = np.abs(np.asarray(features, dtype=np.float64))
        cells = x.reshape(len(x), -1, h, w).sum(axis=1)          # channels kept: summed
        side = max(1, round(PEAK_WINDOW * min(h, w)))
        box = _box_sums(cells[:, None], side)[:, 0]
        flat = box.reshape(len(box), -1).argmax(axis=1)
        top, left = np.divmod(flat, box.shape[2])
        centre_y, centre_x = top + (side - 1) / 2, left + (side - 1) / 2
        return cls(flip_y=centre_y >= FAR * (h - 1), flip_x=centre_x >= FAR * (w - 1),
                   grid=(h, w))

    def rows(self, rows: np.ndarray) -> Fold:
        """The fold of ``rows`` only."""
        return Fold(self.flip_y[rows], self.flip_x[rows], self.grid)

    def apply(self, features: np.ndarray | None) -> np.ndarray | None:
        """``(n, d)`` features on the grid (channels kept apart or not), each row mirrored."""
        if features is None:
            return None
        x = np.asarray(features)
        h, w = self.grid
        return _mirror(x.reshape(len(x), -1, h, w), self.flip_y, self.flip_x).reshape(x.shape)

    def patterns(self, patterns: InputPatterns | None) -> InputPatterns | None:
        """``patterns`` whose inputs and relevance maps are read mirrored like the features
        (positions ``0 … n − 1`` as in the fold)."""
        if patterns is None:
            return None
        return InputPatterns(self._mirrored(patterns.load), patterns.n, patterns.grid,
                             patterns.chunk,
                             None if patterns.relevance is None
                             else self._mirrored(patterns.relevance))

    def _mirrored(self, load):
        def read(rows: np.ndarray) -> np.ndarray:
            rows = np.asarray(rows)
            return _mirror(np.asarray(load(rows)), self.flip_y[rows], self.flip_x[rows])
        return read


def _mirror(x: np.ndarray, flip_y: np.ndarray, flip_x: np.ndarray) -> np.ndarray:
    """``x`` (``(n, ..., H, W)``) with row ``i`` mirrored up-down where ``flip_y[i]`` and
    left-right where ``flip_x[i]`` (a new array)."""
    out = np.array(x, copy=True)
    out[flip_y] = out[flip_y][..., ::-1, :]
    out[flip_x] = out[flip_x][..., :, ::-1]
    return out


def extend_by_neighbours(features: np.ndarray, rows: np.ndarray, sub_labels: np.ndarray,
                         k: int, chunk: int = 4096) -> tuple[np.ndarray, sp.csr_matrix]:
    """Whole-class labels and a graph from a verdict on the drawn ``rows``.

    Each sample not drawn takes the label whose ones among its ``k`` nearest drawn samples
    (Euclidean, in ``features``) are most; the graph links each sample not drawn to those
    neighbours (weight 1, both ways), for the member steps that move a sample to the cluster
    its edges weigh most.

    Returns
    -------
    labels : numpy.ndarray
        ``(n,)``, ``sub_labels`` on ``rows``.
    W : scipy.sparse.csr_matrix
        ``(n, n)``.
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    labels = np.empty(n, dtype=np.asarray(sub_labels).dtype)
    labels[rows] = sub_labels
    rest = np.setdiff1d(np.arange(n), rows)
    k = max(1, min(int(k), len(rows)))
    index = NearestNeighbors(n_neighbors=k).fit(np.asarray(features[rows], dtype=np.float32))
    src, dst = [], []
    for start in range(0, len(rest), chunk):
        part = rest[start:start + chunk]
        nearest = index.kneighbors(np.asarray(features[part], dtype=np.float32),
                                   return_distance=False)
        votes = np.asarray(sub_labels)[nearest]
        for i, row in enumerate(part):
            values, counts = np.unique(votes[i], return_counts=True)
            labels[row] = values[counts.argmax()]
        src.append(np.repeat(part, k))
        dst.append(np.asarray(rows)[nearest].ravel())
    src = np.concatenate(src) if src else np.empty(0, dtype=np.intp)
    dst = np.concatenate(dst) if dst else np.empty(0, dtype=np.intp)
    W = sp.coo_matrix((np.ones(2 * len(src)), (np.r_[src, dst], np.r_[dst, src])),
                      shape=(n, n)).tocsr()
    return labels, W
