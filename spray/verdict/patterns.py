"""The inputs at a suspect's hot spot at their own resolution and in colour: how closely each
sample carries the members' pattern there.

The rest of the rule sees the inputs as the relevance features are made (summed over the
colour channels, pooled to the feature grid, normalized). That is what the graphs need, but a
watermark of white text over photographs is then a brighter patch of a few cells: pooled
luminance does not tell the letters from a bright sleeve at the same place (on the text
watermarks of the evaluation, the samples outside a suspect that carry the text are told from
those that do not with ROC AUC 0.90–0.98 there). In the pixels themselves the letters are a
shape. The *pattern correlation* of a sample is the cosine between its hot-spot pixels and the
members' median pattern there, each channel of each sample centred on its mean over the hot
spot first, so that a stamp blended over a light or a dark background, or a fixed shape in
another colour balance, still correlates. On the same suspects it tells the stamped samples
outside from the others with AUC 0.977–1.0 (docs/verdict-eval.md, "Members by their
pattern").

Inputs are read in chunks through a ``load(rows)`` function: per suspect, one pass over at most
``max_template`` members for the template, then one over the whole class; memory holds one
chunk of whole inputs and the template's ``max_template`` × C·P hot-spot values.

**A pattern where the model looks** (:meth:`InputPatterns.peak_correlation`, with the relevance
maps at the inputs' resolution). An artefact that sits at one of several places (a logo in one
of four corners) makes a suspect of one place: its hot spot holds none of the others. The
members' pattern is instead taken where each member's relevance peaks: the S × S window holding
the largest share of its |relevance|, S the side of the region where the members' mean
relevance exceeds the rest's by at least half its peak (the artefact's extent as the model
sees it). The median of those windows, each channel centred, is a first template; the median of
the members' windows that match it best is the template (the members' pattern aligned: a window
at a peak may hold only part of the stamp). Every sample's *peak correlation* is the best
cosine of any of its windows with the template, found for all windows at once by FFT. A
stamped sample whose relevance peaks on its object still carries the stamp where it is
(docs/verdict.md, "Members where the model looks"). Where the members' peaks hold no common
pattern (the model looks hardest at the object), the first template is taken at the hot
region's place instead, the same window in every member, and the samples outside are matched
anywhere and away from that place too (``at="region"``). Windows wider than :data:`MAX_SIDE`
pixels are compared on block-averaged images.

*Why written here:* a normalized cross-correlation over every window of a batch of
multi-channel images with one template (per-channel centring, edge padding, block averaging)
is not in scikit-image (``match_template`` takes one image and centres the whole window, not
each channel) nor in OpenCV (not a dependency); ``scipy.fft`` and running sums
give it in a few lines. ``tests/test_patterns.py`` checks it against a loop over every window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from spray.analysis.preprocess import cell_pixels
from spray.config.presets import PreprocessSection
from spray.verdict.evidence import auc, excess_of_sums

#: the fewest pixel values (pixels × colour channels) where a suspect's members must agree for
#: :meth:`InputPatterns.agreement` to measure anything
AGREED_MIN = 4
#: the fewest members in each half of a group for
#: :meth:`InputPatterns.agreement_separation` to measure anything (random halves of 1–3
#: members agree on values by chance: AUCs of random groups of 2 reach 0.95)
HALF_MIN = 5
#: the most bytes of prepared images (spectra and window norms) one class's
#: :class:`InputPatterns` keeps between templates (:meth:`InputPatterns._prepared`)
KEPT_BYTES = 2 ** 27
#: the most input values :meth:`InputPatterns.agreement_anywhere` and
#: :meth:`InputPatterns.aligned_agreement` hold at once (a chunk of images in float64 and its
#: FFT buffers: about 0.2 GB each at this size)
ANYWHERE_VALUES = 2 ** 25


class InputPatterns:
    """The raw inputs of one class's samples, read in chunks.

    Parameters
    ----------
    load : function of an index array (positions ``0 … n − 1`` of the class) returning the
        inputs at those positions, ``(len, C, H, W)`` or ``(len, H, W)``, before normalization.
    n : the number of samples of the class.
    grid : the feature grid the relevance was pooled to (``preprocess.pool``; None: the pixels).
    chunk : samples read at a time.
    relevance : like ``load``, the relevance maps at the inputs' resolution, ``(len, H, W)``
        (summed over the colour channels) or ``(len, C, H, W)`` (then the sum of |relevance|
        over the channels is used); None: :meth:`peak_correlation` is not available.
    """

    def __init__(self, load: Callable[[np.ndarray], np.ndarray], n: int, grid,
                 chunk: int = 4096,
                 relevance: Callable[[np.ndarray], np.ndarray] | None = None):
        self.load, self.n, self.grid, self.chunk = load, int(n), grid, int(chunk)
        self.relevance = relevance
        self._class_sums: tuple | None = None
        self._input_shape: tuple | None = None
        self._prepared_at: tuple | None = None
        self._finite_at: tuple | None = None

    def subset(self, rows: np.ndarray) -> InputPatterns:
        """The patterns of the samples at positions ``rows`` of this class (a subsample),
        numbered ``0 … len(rows) − 1``."""
        rows = np.asarray(rows, dtype=np.intp)
        relevance = self.relevance
        return InputPatterns(lambda r: self.load(rows[r]), len(rows), self.grid, self.chunk,
                             None if relevance is None else (lambda r: relevance(rows[r])))

    def detail(self) -> InputPatterns:
        """The same samples' fine detail (:func:`fine_detail`), with the same relevance maps."""
        load = self.load
        return InputPatterns(lambda rows: fine_detail(load(rows)), self.n, self.grid,
                             self.chunk, self.relevance)

    @classmethod
    def for_pipeline(cls, load: Callable[[np.ndarray], np.ndarray], n: int, preprocess: dict,
                     chunk: int = 4096,
                     relevance: Callable[[np.ndarray], np.ndarray] | None = None
                     ) -> InputPatterns | None:
        """Patterns for relevance features made by the ``preprocess`` section, or None where
        a feature cell is not a place in the input (``transform: fft``; channels kept apart)."""
        p = PreprocessSection.coerce(preprocess)
        if p.transform == "fft" or not p.channel_sum:
            return None
        return cls(load, n, None if p.pool is None else tuple(p.pool), chunk, relevance)

    @classmethod
    def of(cls, inputs: np.ndarray, preprocess: dict, chunk: int = 4096,
           maps: np.ndarray | None = None) -> InputPatterns | None:
        """:meth:`for_pipeline` for inputs already in memory, ``(n, C, H, W)`` or ``(n, H, W)``,
        and their relevance ``maps`` (``(n, H, W)``, optional)."""
        return cls.for_pipeline(_rows_of(inputs), len(inputs), preprocess, chunk,
                                None if maps is None else _rows_of(maps))

    def _values(self, rows: np.ndarray, cells: np.ndarray, index: np.ndarray | None = None,
                dtype=np.float64):
        """The values of ``rows`` as they are, at the flat positions ``index`` of their
        ``C·H·W`` values; by default ``(C, P)``: every colour channel of the P pixels at least
        half in ``cells``. Returns the values, ``(len, *index.shape)``, and ``index``."""
        x = np.asarray(self.load(rows))
        if x.ndim == 3:
            x = x[:, None]
        if index is None:
            pixels = np.flatnonzero(cell_pixels(cells, self.grid, x.shape[-2], x.shape[-1]))
            plane = x.shape[-2] * x.shape[-1]
            index = np.arange(x.shape[1])[:, None] * plane + pixels
        return np.asarray(np.take(x.reshape(len(x), -1), index, axis=1), dtype=dtype), index

    def _read(self, rows: np.ndarray, cells: np.ndarray, index: np.ndarray | None = None,
              dtype=np.float64):
        """:meth:`_values` of ``rows`` (at least one) in chunks, concatenated."""
        parts = []
        for start in range(0, len(rows), self.chunk):
            V, index = self._values(rows[start:start + self.chunk], cells, index, dtype)
            parts.append(V)
        return np.concatenate(parts), index

    def colocation(self, cells: np.ndarray, mask: np.ndarray, noise: float) -> float | None:
        """The share of how the members ``mask`` differ from the rest beyond chance, pixel by
        pixel and colour by colour (:func:`~spray.verdict.evidence.excess_of_sums` at
        ``noise``), that lies in the pixels at least half in the feature ``cells``: the
        colocation of the pooled inputs measured in the pixels. Fine stripes over photographs
        pool into a faint darker patch whose excess falls below chance while textures elsewhere
        do not (pooled 0.0–0.14 for stamped groups of the design draws); in the pixels the
        stripes' lines are the members' difference (0.5–0.6). The class's sums are read once
        and kept (one more row, once, for the images' shape), the members' once per call.
        None — nothing measured — with fewer than two samples on a side, without a pixel in
        the cells, where the members differ nowhere beyond chance (no evidence of a place) or
        where a value is not finite."""
        mask = np.asarray(mask, dtype=bool)
        if len(mask) != self.n:
            raise ValueError(f"the mask has {len(mask)} samples, the patterns {self.n}")
        members = np.flatnonzero(mask)
        if len(members) < 2 or self.n - len(members) < 2:
            return None
        totals = self._class_totals()
        shape = self._image_shape()
        group = self._sums(members)
        excess = excess_of_sums(group, len(members), totals, self.n, noise).reshape(shape)
        pixels = cell_pixels(cells, self.grid, shape[-2], shape[-1])
        total = float(excess.sum())
        if not pixels.any() or not np.isfinite(total) or total <= 0:
            return None
        return float(excess[:, pixels].sum() / total)

    def _image_shape(self) -> tuple:
        """``(C, H, W)`` of the inputs (``C`` 1 for ``(n, H, W)``), read from one row once."""
        if self._input_shape is None:
            first = np.asarray(self.load(np.arange(1)))
            self._input_shape = (tuple(first.shape[1:]) if first.ndim == 4
                                 else (1, *first.shape[1:]))
        return self._input_shape

    def _class_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_sums` of every sample of the class, kept after the first call."""
        if self._class_sums is None:
            self._class_sums = self._sums(np.arange(self.n))
        return self._class_sums

    def _sums(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sum and sum of squares of the ``rows``' values (float64, ``(C·H·W,)``), read in
        chunks of at most :data:`SUM_BYTES` of float64 (111 images of 3 × 224 × 224)."""
        step = max(1, min(self.chunk, SUM_BYTES // (8 * int(np.prod(self._image_shape())))))
        total = squares = None
        for start in range(0, len(rows), step):
            x = np.asarray(self.load(rows[start:start + step]), dtype=np.float64)
            x = x.reshape(len(x), -1)
            part, sq = x.sum(axis=0), np.einsum("ij,ij->j", x, x)
            total, squares = (part, sq) if total is None else (total + part, squares + sq)
        return total, squares

    def correlation(self, cells: np.ndarray, mask: np.ndarray,
                    max_template: int) -> np.ndarray | None:
        """Each sample's pattern correlation with the members ``mask`` at the feature ``cells``.

        The template is the median centred pattern of at most ``max_template`` members (evenly
        spaced in their order; members with a non-finite value there are left out of it).
        Returns ``(n,)`` cosines in [−1, 1] (NaN for a sample with a NaN there), or None when
        the template is flat (no pattern to carry), no member is finite there or no pixel lies
        at least half in the cells.
        """
        members = _evenly(np.flatnonzero(mask), max_template)
        if not len(members):
            return None
        M, index = self._read(members, cells, dtype=np.float32)
        if not index.size:
            return None
        template = _median_of_finite(_centred(M))
        if template is None:
            return None
        norm = float(np.linalg.norm(template))
        if norm <= 0:
            return None
        out = np.empty(self.n, dtype=np.float64)
        for start in range(0, self.n, self.chunk):
            rows = np.arange(start, min(start + self.chunk, self.n))
            V = _centred(self._values(rows, cells, index, np.float32)[0])
            lengths = np.linalg.norm(V, axis=1)
            out[rows] = np.where(lengths > 0, V @ template / np.maximum(lengths, 1e-30) / norm,
                                 np.where(np.isnan(lengths), np.nan, 0.0))
        return out

    def _agreed(self, cells: np.ndarray, mask: np.ndarray, spread: float, max_template: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """What the members ``mask`` agree on at the feature ``cells`` (:meth:`agreement`):
        the flat positions of the agreed values in ``C·H·W``, the members' medians there and
        the outside's mean absolute deviations from them; None where nothing is measured."""
        members = _evenly(np.flatnonzero(mask), max_template)
        others = _evenly(np.flatnonzero(~mask), max_template)
        if not len(members) or not len(others):
            return None
        M, index = self._read(members, cells)
        if not index.size:
            return None
        M, index = M.reshape(len(M), -1), index.ravel()
        median, outside, agreed = agreeing(M, self._read(others, cells, index)[0], spread)
        if agreed.sum() < AGREED_MIN:
            return None
        return index[agreed], median[agreed], outside[agreed]

    def agreement(self, cells: np.ndarray, mask: np.ndarray, spread: float,
                  max_template: int) -> np.ndarray | None:
        """Each sample's distance to the members' own pixels where the members agree.

        At the feature ``cells``, the members' median value per pixel (and colour channel) is
        taken from at most ``max_template`` members (evenly spaced); a pixel counts where the
        members' mean absolute deviation from it is at most ``spread`` times that of as many
        samples outside ``mask`` (a stamp: the same value in every member, whatever the others
        show there). A sample's distance is its mean absolute deviation from the members'
        medians over those pixels, each in units of the outside's deviation there: about 1 for
        a sample without the pattern, near 0 for one that carries it, whatever its
        relevance. Unlike :meth:`correlation` nothing is centred: a flat stamp (a white
        square) is a pattern too. Returns ``(n,)`` (NaN for a sample with a NaN there), or
        None when fewer than :data:`AGREED_MIN` pixels agree, no member or no sample outside
        is there, or no pixel lies at least half in the cells.
        """
        found = self._agreed(cells, mask, spread, max_template)
        if found is None:
            return None
        index, median, outside = found
        scale = 1.0 / outside
        out = np.empty(self.n, dtype=np.float64)
        for start in range(0, self.n, self.chunk):
            rows = np.arange(start, min(start + self.chunk, self.n))
            V = self._values(rows, cells, index)[0]
            out[rows] = np.abs(V - median) @ scale / len(index)
        return out

    def agreement_separation(self, cells: np.ndarray, mask: np.ndarray, spread: float,
                             max_template: int, seed: int = 0,
                             least: float = 0.0) -> float | None:
        """How well what the members ``mask`` agree on at the feature ``cells`` tells them from
        the rest of the class, measured out of sample: ROC AUC in [0, 1].

        The members are split at random (``seed``) into two halves. What one half agrees on
        (:meth:`agreement`'s values: the same pixel and colour value in every member of the
        half, at most ``spread`` times the rest's deviation from it) is the template; the other
        half and every sample outside ``mask`` are ranked by their distance to it, and the AUC
        says how much closer that other half is. The two AUCs (each half the template once)
        are averaged. Only pixels where the half agrees in every colour channel count (a stamp
        is one colour in every member; a cluster of green objects agrees on the green channel
        alone), and a half that agrees on fewer than :data:`AGREED_MIN` values, or on less than
        the share ``least`` of the values there, counts 0.5 (members of a sub-type whose
        object covers the hot spot agree on a few values by chance: a tenth of them or less).
        A stamp, the same pixels in every stamped image, scores near 1 however little of the
        region it covers (fine stripes, thin letters that pooling to the feature grid blurs
        into the background); a group whose members share nothing value by value — a sub-type
        of the class that moves, changes colour or sits on other photographs — agrees on
        nothing (0.5), and a random subset's template does not carry over to its other half.
        Returns None with fewer than :data:`HALF_MIN` members in a half (a member always agrees
        with itself, two by chance), no sample outside or no pixel in the cells. Every
        sample's values at the cells are read once (``n`` × C·P in float64: 0.24 GB for 2 000
        images of 3 × 224 × 224 at a tenth of their cells)."""
        members = np.flatnonzero(mask)
        rest = np.flatnonzero(~mask)
        if len(members) < 2 * HALF_MIN or not len(rest):
            return None
        # every sample's values at the cells, read once (n × C·P in float64)
        X, index = self._read(np.arange(self.n), cells)
        if not index.size:
            return None
        X = X.reshape(self.n, -1)
        C = index.shape[0]
        others = X[_evenly(rest, max_template)]
        halves = np.array_split(np.random.default_rng(seed).permutation(members), 2)
        aucs = []
        for template, held in (halves, halves[::-1]):
            median, outside, agreed = agreeing(
                X[_evenly(np.sort(template), max_template)], others, spread)
            # the values of the pixels where every colour channel agrees: a stamp is one
            # colour in every member; objects of one colour family agree on a channel at most
            keep = np.flatnonzero(np.tile(agreed.reshape(C, -1).all(axis=0), C))
            if len(keep) < max(AGREED_MIN, least * agreed.size):
                aucs.append(0.5)
                continue
            rows = np.concatenate([held, rest])
            with np.errstate(invalid="ignore"):
                distance = (np.abs(X[np.ix_(rows, keep)] - median[keep]) @ (1.0 / outside[keep])
                            / len(keep))
            carried = np.zeros(len(rows), dtype=bool)
            carried[:len(held)] = True
            finite = np.isfinite(distance)
            aucs.append(auc(-distance[finite], carried[finite])
                        if carried[finite].any() and (~carried[finite]).any() else 0.5)
        return float(np.mean(aucs))

    def agreement_anywhere(self, cells: np.ndarray, mask: np.ndarray, spread: float,
                           max_template: int) -> AgreedPlaces | None:
        """Each sample's distance to what the members agree on at the feature ``cells``, at
        the best place in its image: a logo in one of several corners carried elsewhere.

        The agreed values are those of :meth:`agreement` (pixel and colour channel where the
        members' deviation from their median is at most ``spread`` times the outside's); in
        their bounding box they are the template. A sample's distance at a place is the root
        mean square of its differences from the template there, each in units of the outside's
        deviation at that value: about 0 for a sample that carries the members' pixels there,
        about 1 or more for one without. Every place is compared at once by FFT
        (``scipy.signal.fftconvolve``; Σ w (x − t)² = Σ w x² − 2 Σ w t x + Σ w t²). Returns
        :class:`AgreedPlaces`, or None where :meth:`agreement` measures nothing (fewer than
        :data:`AGREED_MIN` agreed values, no member or no sample outside, no pixel in the
        cells). A sample with a non-finite input gets NaN.
        """
        found = self._agreed(cells, mask, spread, max_template)
        if found is None:
            return None
        index, median, outside = found
        first = np.asarray(self.load(np.arange(1)))
        C, (H, W) = (1 if first.ndim == 3 else first.shape[1]), first.shape[-2:]
        c, rest_of = np.divmod(index, H * W)
        y, x = np.divmod(rest_of, W)
        home = (int(y.min()), int(x.min()))
        h, w = int(y.max()) - home[0] + 1, int(x.max()) - home[1] + 1
        T, weight = np.zeros((C, h, w)), np.zeros((C, h, w))
        T[c, y - home[0], x - home[1]] = median
        weight[c, y - home[0], x - home[1]] = 1.0 / outside ** 2
        distance = np.empty(self.n)
        places = np.zeros((self.n, 2), dtype=np.intp)
        step = max(1, min(self.chunk, ANYWHERE_VALUES // (C * H * W)))
        for start in range(0, self.n, step):
            rows = np.arange(start, min(start + step, self.n))
            X = np.asarray(self.load(rows), dtype=np.float64)
            distance[rows], places[rows] = _nearest_place(X[:, None] if X.ndim == 3 else X,
                                                          T, weight, len(index))
        return AgreedPlaces(distance, places, home)

    def aligned_agreement(self, diff: np.ndarray, mask: np.ndarray, spread: float,
                          max_template: int, side_share: float | None = None
                          ) -> AlignedAgreement | None:
        """Each sample's distance, at the best place in its image, to what the members agree
        on where the model looks: a stamp that moves with the object (a colour patch).
        With the best places (``places``, ``side``) for :func:`~spray.verdict.members.at_places`.

        :meth:`peak_correlation` (``side_share`` as there) aligns the members' windows where
        the model looks at them and finds every sample's best match. The *carriers* are the
        members whose best cosine is at least the members' median (the better half: a suspect
        the graph cut with look-alikes still has a template of the stamp). At their best
        matches, the raw windows (block-averaged as compared, not centred) of at most
        ``max_template`` carriers give their median per pixel and colour channel; a pixel
        counts where in every channel
        the carriers' mean absolute deviation from it is at most ``spread`` times that of as
        many samples outside ``mask`` at their best matches (:func:`agreeing`; the pixels
        of the stamp, not the object or photograph around it), and where in at least one
        channel that median lies farther from the outside's median than the outside's mean
        absolute deviation, the outside's windows taken at the carriers' places in turn
        (:func:`_unlike`: what the rest shows where the stamp is; the carriers also agree on a
        background most images share there — a grey garment's black corner around a white
        square — and a member whose garment reaches under it would be far from a stamp it
        carries). A sample's
        distance is the root mean square of its differences from those values at its best place, each in
        units of the outside's deviation (as :meth:`agreement_anywhere`, every place at once
        by FFT): near 0 for a sample that carries the stamp anywhere, about 1 or more for
        one without. The cosine alone is diluted by the window's other pixels, which vary
        with the object (on the design draws of a colour patch the stamped samples outside a
        suspect matched at 0.63–0.98, the others up to 0.77; their distances were 0 and at
        least 0.37). Returns :class:`AlignedAgreement`, or None where
        :meth:`peak_correlation` gives nothing, fewer than :data:`HALF_MIN` carriers or no
        sample outside has a finite match, or fewer than :data:`AGREED_MIN` values are left at
        pixels that agree in every channel (a channel in which the carriers and the outside
        all hold one value counts as agreeing, with no weight) and are unlike the rest in one.
        NaN for a non-finite input.
        """
        side = self._peak_side(diff, 1, side_share)
        if side is None:
            return None
        H, W = self._shape()
        window = _PeakWindows(side, H, W)
        # the members and as many others as the template: only theirs are matched (a match is
        # finite exactly where the image compared is)
        finite = self._finite(window)
        members = np.flatnonzero(mask & finite)
        others = _evenly(np.flatnonzero(~mask & finite), max_template)
        found = self.peak_correlation(diff, mask, max_template, side_share=side_share,
                                      places=True, rows=np.union1d(members, others))
        if found is None or not len(members) or not len(others):
            return None
        carriers = members[found.r[members] >= np.median(found.r[members])]
        if len(carriers) < HALF_MIN:         # one image agrees with itself, a few by chance
            return None
        template = _evenly(carriers, max_template)
        rest = self._raw_windows(window, others, found.places[others])
        inside = self._raw_windows(window, template, found.places[template])
        median, outside, agreed = agreeing(inside, rest, spread)
        # what the rest shows where the carriers carry it (their places in turn)
        there = self._raw_windows(window, others,
                                  found.places[template][np.arange(len(others)) % len(template)])
        with np.errstate(all="ignore"):
            # a channel nobody varies in (one value inside and out) neither agrees nor refuses
            flat = (outside == 0) & (np.nanmean(np.abs(inside - median), axis=0) == 0)
        C = len(agreed) // window.side ** 2
        # a stamp is one colour, every channel, and unlike what the rest shows there in one
        pixels = ((agreed | flat).reshape(C, -1).all(axis=0)
                  & (agreed & _unlike(median, there)).reshape(C, -1).any(axis=0))
        used = np.tile(pixels, C) & agreed
        if int(used.sum()) < AGREED_MIN:
            return None
        shape = (C, window.side, window.side)
        weight = np.where(used, 1.0 / np.where(used, outside, 1.0) ** 2, 0.0).reshape(shape)
        T = np.where(used, median, 0.0).reshape(shape)
        distance = np.empty(self.n)
        places = np.zeros((self.n, 2), dtype=np.intp)
        step = max(1, min(self.chunk, ANYWHERE_VALUES // (C * H * W)))
        for start in range(0, self.n, step):
            rows = np.arange(start, min(start + step, self.n))
            distance[rows], places[rows] = _nearest_place(window.padded(self.load(rows)), T,
                                                          weight)
        held = np.zeros(self.n, dtype=bool)
        held[carriers] = True
        return AlignedAgreement(distance, held, places - window.slack, window.side,
                                window.factor)

    def _finite(self, window: _PeakWindows) -> np.ndarray:
        """Whether each sample's image, as ``window`` compares it, is finite: where its best
        match with a template is (:meth:`_PeakWindows.best_match`). The padded, block-averaged
        image is made in float32 (:meth:`_PeakWindows._padded`): an image whose values all lie
        well inside float32's range (their f² sums too) is finite there exactly when its
        whole blocks are; any other is padded to tell (a finite value may overflow). Read
        once per block size and kept."""
        key = (window.factor, window.H, window.W, window.slack)
        if self._finite_at is not None and self._finite_at[0] == key:
            return self._finite_at[1]
        f = window.factor
        safe = float(np.finfo(np.float32).max) / (4 * f * f)
        out = np.empty(self.n, dtype=bool)
        for start in range(0, self.n, self.chunk):
            rows = np.arange(start, min(start + self.chunk, self.n))
            x = np.asarray(self.load(rows))
            flat = x[..., :window.H * f, :window.W * f].reshape(len(rows), -1)
            with np.errstate(invalid="ignore"):
                out[rows] = (np.abs(flat) < safe).all(axis=1)   # NaN, inf and huge: False
            with np.errstate(over="ignore", invalid="ignore"):
                for i in np.flatnonzero(~out[rows]):
                    out[start + i] = bool(np.isfinite(window.padded(x[i:i + 1])).all())
        self._finite_at = (key, out)
        return out

    def _raw_windows(self, window: _PeakWindows, rows: np.ndarray, places: np.ndarray
                     ) -> np.ndarray:
        """The raw S × S windows ``(len, C·S·S)`` of ``rows`` at ``places`` (one per row,
        top-left corners in blocks, as :meth:`peak_correlation` finds them)."""
        parts = []
        for start in range(0, len(rows), self.chunk):
            part = slice(start, start + self.chunk)
            parts.append(window.raw_at(self.load(rows[part]), places[part]))
        return np.concatenate(parts)

    def peak_correlation(self, diff: np.ndarray, mask: np.ndarray, max_template: int,
                         scale: int = 1, at: str = "peak",
                         side_share: float | None = None, places: bool = False,
                         rows: np.ndarray | None = None):
        """Each sample's best cosine, anywhere in its image, with the members' pattern where
        the model looks (see the module notes).

        ``diff`` is the members' mean relevance feature minus the rest's (flat, on the feature
        grid); the window's side is ``scale`` (a power of 2) times the larger side of
        :func:`hot_region` of it, in pixels, at most the image's (compared on blocks when wider
        than :data:`MAX_SIDE`). The region is that of the largest *positive* difference: a
        suspect whose members the model looks at less than at the rest, everywhere, gets None
        (nobody joins by this step).
        The first template is the median centred pattern of at most ``max_template`` members at
        their own relevance peaks (``at`` ``"peak"``) or at the hot region's place, the same
        for every member (``at`` ``"region"``: a suspect of one place whose model looks hardest
        at the object, so that the members' peaks hold no common pattern); the template is
        that of the same members at their best match with it (the members' pattern aligned);
        members whose window holds a non-finite value are left out of both. Returns ``(n,)``
        cosines in [−1, 1] (NaN for an image with a non-finite value); at the region
        ``(2, n)``: those, and for the samples outside ``mask`` the best cosine of the windows
        that do not overlap the members' place (a carrier at *another* place; NaN where no
        such window is left; the members' own as in the first row), or
        None without relevance maps, without a region, with a flat template or when the
        window compared at ``scale`` spans no more pixels than at ``scale / 2`` (the image's
        side reached, or the same number of blocks).
        With ``side_share`` the window's side at scale 1 is that share of the maps' shorter
        side (as :meth:`peak_windows` takes it) instead of the hot region's: for a group whose
        members' relevance peaks at varying places (a window cut), the mean difference spreads
        over the object and its hot region is no measure of the pattern.
        With ``places``, a :class:`PeakMatches`: the cosines, each sample's place of the best
        match that gives the joining cosine (the last row at the region; ``(n, 2)`` top-left
        corners in the window's blocks, negative up to half a window beyond the border), and
        the window's side in blocks.
        With ``rows`` (ascending; at the peak only) only those samples are matched, the others'
        cosines are NaN and their places 0: a caller that reads a few samples of a large class
        pays for those (each sample's match is its own: the same values as matching all).
        """
        side = self._peak_side(diff, scale, side_share)
        if side is None:
            return None
        members = _evenly(np.flatnonzero(mask), max_template)
        H, W = self._shape()
        window = _PeakWindows(side, H, W)
        if at == "region":
            place = self._region_place(diff, window)
            template = self._template(window, members, lambda x, rows: window.at_place(
                x, *place))
        else:
            template = self._template(window, members, lambda x, rows: window.at_peak(
                x, self.relevance(rows)))
        if template is not None:       # aligned: the members' windows at their best match
            template = self._template(window, members, lambda x, rows: self._aligned(
                window, x, rows, template))
        if template is None:
            return None
        away = place if at == "region" else None
        if rows is not None:
            assert away is None, "rows are matched at the peak only"
            r, found = np.full(self.n, np.nan), np.zeros((self.n, 2), dtype=np.intp)
            for start in range(0, self.n, self.chunk):
                chunk = np.arange(start, min(start + self.chunk, self.n))
                want = np.intersect1d(chunk, rows)
                if len(want):
                    r[want], found[want] = window.best_match(
                        None, template, places=True, prepared=self._prepared_rows(
                            window, chunk, want))
            return PeakMatches(r, found, window.side, window.factor) if places else r
        r = np.empty((2, self.n) if away is not None else self.n)
        found = np.empty((self.n, 2), dtype=np.intp)
        for start in range(0, self.n, self.chunk):
            chunk = np.arange(start, min(start + self.chunk, self.n))
            r[..., chunk], found[chunk] = window.best_match(
                None, template, away=away, rows_away=None if away is None else ~mask[chunk],
                places=True, prepared=self._prepared(window, chunk))
        return PeakMatches(r, found, window.side, window.factor) if places else r

    def _prepared_rows(self, window: _PeakWindows, chunk: np.ndarray, want: np.ndarray
                       ) -> list[_Prepared]:
        """What :meth:`_PeakWindows.best_match` reads of the samples ``want`` of ``chunk``: cut
        from the chunk's kept preparation when it is kept or fits beside what is kept
        (:meth:`_prepared`: later templates read it again), else the rows prepared alone."""
        kept = self._kept(window)
        if int(chunk[0]) in kept or self._fits(window, len(chunk)):
            return _cut_prepared(self._prepared(window, chunk), want - chunk[0])
        return window.prepare(self.load(want), images=False)

    def _kept(self, window: _PeakWindows) -> dict[int, list[_Prepared]]:
        """The chunks' preparations kept at ``window`` by their first row (empty when none, or
        when those kept are of another window)."""
        key = (window.side, window.factor)
        return self._prepared_at[1] if self._prepared_at and self._prepared_at[0] == key else {}

    def _fits(self, window: _PeakWindows, count: int) -> bool:
        """Whether ``count`` more images' preparations at ``window`` fit beside what is kept
        (:data:`KEPT_BYTES`: a spectrum of complex values per channel, a norm and a flag per
        window place)."""
        C = self._image_shape()[0]
        h, w = window.H + 2 * window.slack, window.W + 2 * window.slack
        places = (h - window.side + 1) * (w - window.side + 1)
        each = C * h * (w // 2 + 1) * 16 + places * 9
        return _nbytes(self._kept(window).values()) + count * each <= KEPT_BYTES

    def _prepared(self, window: _PeakWindows, rows: np.ndarray) -> list[_Prepared]:
        """:meth:`_PeakWindows.prepare` of the samples ``rows`` (a chunk), kept for the next
        template at the same window while everything kept holds at most :data:`KEPT_BYTES`
        (the member steps and the carried candidates match many templates against the same
        images: the images' spectra and the windows' norms are made once; a class of 2 000
        RGB images of 32 × 32 keeps about 92 MB)."""
        key = (window.side, window.factor)
        if self._prepared_at is None or self._prepared_at[0] != key:
            self._prepared_at = (key, {})
        kept = self._prepared_at[1]
        hit = kept.get(int(rows[0]))
        if hit is None:
            hit = window.prepare(self.load(rows), images=False)
            if _nbytes([*kept.values(), hit]) <= KEPT_BYTES:
                kept[int(rows[0])] = hit
        return hit

    def _gathered(self, window: _PeakWindows, rows: np.ndarray) -> list[_Prepared] | None:
        """What :meth:`_prepared` keeps of the class's chunks that hold ``rows`` (ascending),
        cut down to ``rows`` in their order (no images); None where a chunk is not kept yet
        (or too large to keep: the rows are then prepared alone, nothing is prepared twice).
        Each image's spectrum, norms and flat windows are its own, whatever else was prepared
        with it: the same values as :meth:`prepare` of the rows alone."""
        kept = self._kept(window)
        out: list[_Prepared] = []
        for start in np.unique(rows // self.chunk) * self.chunk:
            parts = kept.get(int(start))
            if parts is None:
                return None
            mine = rows[(rows >= start) & (rows < start + self.chunk)] - start
            out += _cut_prepared(parts, mine, first=sum(p.shape[0] for p in out))
        return out

    def _aligned(self, window: _PeakWindows, x: np.ndarray, rows: np.ndarray,
                 template: np.ndarray) -> np.ndarray:
        """The unit centred windows of the images ``x`` (the samples ``rows``) at their best
        match with ``template``: :meth:`_PeakWindows.best_match` with ``windows``, read from the
        class's kept spectra where they are kept (the member steps and the carried candidates
        align many groups of the same class; bit for bit the same windows)."""
        gathered = self._gathered(window, np.asarray(rows))
        if gathered is None:
            return window.best_match(x, template, windows=True)
        r, places = window.best_match(None, template, places=True, prepared=gathered)
        m = window.slack
        found = window._windows(window.padded(x), places[:, 0] + m, places[:, 1] + m)
        found[np.isnan(r)] = np.nan        # no best match: not the top-left window
        return found

    def peak_windows(self, side_share: float, rows: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray] | None:
        """What each sample looks like where the model looks hardest, wherever that is.

        For each of ``rows`` (default: every sample) the unit, per-channel centred window of
        side ``side_share`` × the maps' shorter side (at least 3 pixels; compared on blocks when
        wider than :data:`MAX_SIDE`) at its relevance peak (the window of largest |relevance|),
        and that window's share of the sample's |relevance|. Returns ``(windows (len, C·S·S)
        float32, shares (len,))``, or None without relevance maps. A sample whose window or
        map holds a non-finite value gets a window of zeros and a share of 0, as a flat window
        is zeros: no pattern (window cuts leave such samples out)."""
        if self.relevance is None:
            return None
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        H, W = self._shape()
        window = _PeakWindows(_share_side(side_share, H, W), H, W)
        parts, shares = [], []
        finite = []
        for start in range(0, len(rows), self.chunk):
            chunk = rows[start:start + self.chunk]
            maps = np.asarray(self.relevance(chunk))
            finite.append(np.isfinite(maps.reshape(len(chunk), -1)).all(axis=1))
            with np.errstate(invalid="ignore"):
                X, mass = window.at_peak(self.load(chunk), maps, share=True)
            parts.append(X.astype(np.float32))
            shares.append(mass)
        X, share = np.concatenate(parts), np.concatenate(shares)
        bad = ~(np.isfinite(X).all(axis=1) & np.isfinite(share) & np.concatenate(finite))
        X[bad], share[bad] = 0.0, 0.0
        return X, share

    def recurrence(self, rows: np.ndarray, side_share: float) -> np.ndarray | None:
        """How closely each sample's pattern where the model looks recurs in the others.

        Each of ``rows``' peak windows (:meth:`peak_windows` at ``side_share``) is a template;
        entry ``(i, j)`` is its best cosine anywhere in the image of ``rows[j]``
        (:meth:`_PeakWindows.best_match`, every window by FFT). A pixel-identical stamp at one
        of several places (a logo in one of four corners) recurs: a stamped sample whose
        relevance peaks on the stamp finds it in every stamped image, wherever it sits there.
        Returns ``(len, len)`` cosines, NaN on the diagonal, in the row of a sample whose
        window is flat or non-finite (no pattern) and in the column of a non-finite image; or
        None without relevance maps. Costs ``len`` templates matched against ``len`` images
        (their spectra made once)."""
        rows = np.asarray(rows)
        found = self.peak_windows(side_share, rows)
        if found is None:
            return None
        from scipy import fft

        templates = found[0]
        H, W = self._shape()
        window = _PeakWindows(_share_side(side_share, H, W), H, W)
        h, w = window.H + 2 * window.slack, window.W + 2 * window.slack
        size = (fft.next_fast_len(h, real=True), fft.next_fast_len(w, real=True))
        norms, flats, spectra = [], [], []
        for start in range(0, len(rows), self.chunk):
            P = window.padded(self.load(rows[start:start + self.chunk]))
            norm, flat = window.norms(P)
            norms.append(norm)
            flats.append(flat)
            # every template against the same images: their spectra once, at a fast FFT size
            # (zero-padded, a window that fits still does not wrap around; the spectra kept
            # for the member steps are at the images' own size, as their matches were
            # measured), in single precision (a ranking; twice as fast), each channel less its
            # mean first (a template centred per channel gives the same dot products, with
            # less rounding)
            P -= P.mean(axis=(2, 3), keepdims=True)
            spectra.append(fft.rfft2(P.astype(np.float32), s=size, axes=(2, 3)))
        norm, flat, spectrum = (np.concatenate(a) for a in (norms, flats, spectra))
        C = spectrum.shape[1]
        S = window.side
        out = np.full((len(rows), len(rows)), np.nan)
        for i in np.flatnonzero(np.abs(templates).sum(axis=1) > 0):
            T = np.conj(fft.rfft2(templates[i].reshape(C, S, S), s=size))
            dot = fft.irfft2((spectrum * T).sum(axis=1), s=size)[:, :h - S + 1, :w - S + 1]
            cos = np.where(flat, 0.0, dot / np.maximum(norm, 1e-300))
            out[i] = np.clip(cos.reshape(len(rows), -1).max(axis=1), -1.0, 1.0)
        np.fill_diagonal(out, np.nan)
        return out

    def place_correlation(self, mask: np.ndarray, found: PeakMatches, places: np.ndarray,
                          max_template: int, side_share: float) -> np.ndarray:
        """Each sample's largest absolute cosine, over fixed ``places`` (``(k, 2)`` top-left
        corners in blocks of the window at ``side_share``, as ``found`` was matched), with the
        pattern there of the members ``mask`` whose best match (``found``,
        :meth:`peak_correlation` with ``places``) is at that place: a stamp at a fixed place,
        compared where it is rather than at every window, where a photograph's best window
        comes close by chance. Absolute: in the fine detail (:func:`fine_detail`) a stamp
        blended over a background darker than itself is its own pattern reversed. ``(n,)``
        values in [0, 1]; NaN for an image with a non-finite value in a window compared, and
        everywhere when no place has a template (a flat one)."""
        H, W = self._shape()
        window = _PeakWindows(_share_side(side_share, H, W), H, W)
        out = np.full(self.n, -np.inf)
        for y, x0 in np.asarray(places):
            members = np.flatnonzero(mask & (found.places == (y, x0)).all(axis=1))
            template = self._template(window, _evenly(members, max_template),
                                      lambda x, rows, y=y, x0=x0: window.at_place(x, y, x0))
            if template is None:
                continue
            for start in range(0, self.n, self.chunk):
                rows = np.arange(start, min(start + self.chunk, self.n))
                with np.errstate(invalid="ignore"):
                    out[rows] = np.maximum(out[rows], np.abs(
                        window.at_place(self.load(rows), y, x0) @ template))
        out[~np.isfinite(out)] = np.nan
        return out

    def peak_window(self, diff: np.ndarray, scale: int = 1,
                    side_share: float | None = None) -> int | None:
        """The side in pixels of the window :meth:`peak_correlation` compares at ``scale``
        (block-averaged windows count the pixels they span), or None where it compares none."""
        side = self._peak_side(diff, scale, side_share)
        return None if side is None else _span(side, *self._shape())

    def _region_place(self, diff: np.ndarray, window: _PeakWindows) -> tuple[int, int]:
        """Top-left corner, in ``window``'s (block-averaged) pixels, of the window centred on
        the centre of :func:`hot_region` of ``diff``."""
        H, W = self._shape()
        grid = (H, W) if self.grid is None else (int(self.grid[0]), int(self.grid[1]))
        rows, cols = hot_region_cells(np.asarray(diff, dtype=np.float64).reshape(grid))
        cy = (rows.mean() + 0.5) * H / grid[0] / window.factor
        cx = (cols.mean() + 0.5) * W / grid[1] / window.factor
        return int(round(cy - window.side / 2)), int(round(cx - window.side / 2))

    def _shape(self) -> tuple[int, int]:
        """Height and width of the relevance maps (read from the first sample's)."""
        return tuple(np.asarray(self.relevance(np.arange(1))).shape[-2:])

    def _peak_side(self, diff: np.ndarray, scale: int,
                   side_share: float | None = None) -> int | None:
        """The window side of :meth:`peak_correlation` at ``scale`` (see there), or None: no
        relevance maps, no hot region, or no wider than at ``scale / 2``."""
        if self.relevance is None:
            return None
        H, W = self._shape()
        if side_share is not None:
            base = _share_side(side_share, H, W)
        else:
            grid = (H, W) if self.grid is None else (int(self.grid[0]), int(self.grid[1]))
            region = hot_region(np.asarray(diff, dtype=np.float64).reshape(grid))
            if region is None:
                return None
            h, w = region
            base = max(1, round(max(h * H / grid[0], w * W / grid[1])))
        side = int(min(H, W, scale * base))
        if scale > 1 and _span(side, H, W) <= _span(int(min(H, W, scale // 2 * base)), H, W):
            return None             # no wider than the window at half the scale
        return side

    def _template(self, window: _PeakWindows, members: np.ndarray, windows_of
                  ) -> np.ndarray | None:
        """The unit, per-channel centred median of the members' windows (``windows_of(inputs,
        rows)`` gives ``(len, C·S·S)`` centred windows), or None when it is flat."""
        parts = []
        for start in range(0, len(members), self.chunk):
            rows = members[start:start + self.chunk]
            parts.append(windows_of(self.load(rows), rows))
        template = _median_of_finite(np.concatenate(parts))
        if template is None:
            return None
        template = template.reshape(-1, window.side ** 2)
        scale = float(np.linalg.norm(template))
        template = (template - template.mean(axis=1, keepdims=True)).ravel()
        norm = float(np.linalg.norm(template))
        if norm <= 1e-6 * scale or norm <= 0:
            return None
        return template / norm


def fine_detail(x: np.ndarray) -> np.ndarray:
    """Images less their local mean: each pixel of each channel minus the mean of its 3 × 3
    neighbourhood (edges repeated), ``(n, C, H, W)`` or ``(n, H, W)`` as given, float32.

    A stamp blended over the image (``(1 − a) · x + a · c``) keeps its fine structure here
    whatever lies under it: what varies with the background is mostly its smooth part, and a
    cosine ignores the strength of the rest. On a design model's draws (stripes at 70 % over
    merged-garment scenes, seed 73) the stamped windows' median absolute cosine with the
    stripes' own pattern was 0.70–0.82 in this view, 95 % of the other images' windows at most
    0.08 (docs/verdict.md, "Candidates by a recurring fine detail")."""
    from scipy.ndimage import uniform_filter

    x = np.asarray(x, dtype=np.float32)
    size = (1,) * (x.ndim - 2) + (3, 3)
    return x - uniform_filter(x, size=size, mode="nearest")


def agreeing(members: np.ndarray, rest: np.ndarray, spread: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where a group's members agree, value by value (pixel and colour channel).

    ``members`` ``(m, D)`` and ``rest`` ``(k, D)``: the members' median per value, the rest's
    mean absolute deviation from it, and whether the members agree there — their own mean
    absolute deviation at most ``spread`` times the rest's, where the rest deviate at all (a
    stamp: the same value in every member, whatever the others show). NaN values are left out
    of the medians and means; a value no member has is not agreed.
    """
    with np.errstate(all="ignore"):
        median = (np.nanmedian(members, axis=0) if np.isnan(members).any()
                  else np.median(members, axis=0))
        inside = np.nanmean(np.abs(members - median), axis=0)
        outside = np.nanmean(np.abs(rest - median), axis=0)
    return median, outside, np.isfinite(inside) & (outside > 0) & (inside <= spread * outside)


def _nearest_place(X: np.ndarray, T: np.ndarray, weight: np.ndarray,
                   count: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The weighted root mean square distance of images ``X`` ``(len, C, H, W)`` to the
    template ``T`` ``(C, h, w)`` at each image's best place, and that place (top-left corner,
    ``(len, 2)``): Σ w (x − t)² = Σ w x² − 2 Σ w t x + Σ w t² for every place at once by FFT
    (``scipy.signal.fftconvolve``), divided by ``count`` (default: the weighted values'
    count). NaN for an image with a non-finite value."""
    from scipy.signal import fftconvolve

    X = np.asarray(X, dtype=np.float64)
    finite = np.isfinite(X).all(axis=(1, 2, 3))
    X = np.where(finite[:, None, None, None], X, 0.0)
    (C, h, w), (H, W) = T.shape, X.shape[-2:]
    acc = np.zeros((len(X), H - h + 1, W - w + 1))
    for ch in np.flatnonzero(weight.reshape(C, -1).any(axis=1)):
        acc += fftconvolve(X[:, ch] ** 2, weight[ch][::-1, ::-1][None], mode="valid") - 2 * \
            fftconvolve(X[:, ch], (weight[ch] * T[ch])[::-1, ::-1][None], mode="valid")
    const = float((weight * T ** 2).sum())
    total = float((weight > 0).sum() if count is None else count)
    flat = np.maximum(acc + const, 0.0).reshape(len(X), -1) / total
    best = flat.argmin(axis=1)
    distance = np.where(finite, np.sqrt(flat[np.arange(len(X)), best]), np.nan)
    return distance, np.column_stack(np.unravel_index(best, acc.shape[1:]))


def _unlike(values: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` (``(D,)``) lies farther from the median of ``rest``
    (``(k, D)``) than the rest's mean absolute deviation from that median (:func:`agreeing` of
    the rest with itself; NaNs left out): a value the rest shows too (a background most images
    share) is no mark of a group."""
    centre, spread, _ = agreeing(rest, rest, 1.0)
    return np.abs(values - centre) > spread


#: the most bytes of whole images (float64) :meth:`InputPatterns.colocation` holds at a time
SUM_BYTES = 1 << 27


def _evenly(rows: np.ndarray, most: int) -> np.ndarray:
    """At most ``most`` of ``rows``, evenly spaced in their order."""
    if len(rows) <= most:
        return rows
    return rows[np.linspace(0, len(rows) - 1, most).astype(np.intp)]


def _centred(values: np.ndarray) -> np.ndarray:
    """Hot-spot values ``(len, C, P)``, each channel's centred on its mean over the pixels, as
    ``(len, C·P)``."""
    return (values - values.mean(axis=-1, keepdims=True)).reshape(len(values), -1)


def _median_of_finite(values: np.ndarray) -> np.ndarray | None:
    """The median over the rows of ``values`` that are finite throughout (a member whose
    inputs or relevance hold a NaN would make the whole template NaN), or None without one."""
    finite = np.isfinite(values).all(axis=1)
    return np.median(values[finite], axis=0) if finite.any() else None


def _rows_of(array: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``load(rows)`` of an array in memory (a run of consecutive rows is a view, not a copy)."""
    def load(rows: np.ndarray) -> np.ndarray:
        if consecutive(rows):
            return array[rows[0]:rows[-1] + 1]
        return array[rows]

    return load


def consecutive(rows: np.ndarray) -> bool:
    """``rows`` is a non-empty run of consecutive increasing indices (read as one slice)."""
    rows = np.asarray(rows)
    return bool(len(rows)) and bool(np.all(np.diff(rows) == 1))


#: a cell belongs to a hot region while its difference is at least this share of the peak's
REGION_LEVEL = 0.5


def hot_region(diff: np.ndarray) -> tuple[int, int] | None:
    """Height and width (in cells) of the connected region around the largest value of ``diff``
    (``(h, w)``) where it is at least :data:`REGION_LEVEL` of that value; None when ``diff``
    has no positive, finite value."""
    rows_cols = hot_region_cells(diff)
    if rows_cols is None:
        return None
    rows, cols = rows_cols
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def hot_region_cells(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Row and column indices of the cells of :func:`hot_region`."""
    from scipy import ndimage

    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or not np.isfinite(d).all() or d.max() <= 0:
        return None
    regions, _ = ndimage.label(d >= REGION_LEVEL * d.max())
    peak = np.unravel_index(np.argmax(d), d.shape)
    return np.nonzero(regions == regions[peak])


#: the widest window compared at full resolution (pixels); a wider one is compared on images
#: averaged over f × f blocks (f = ⌈side / 12⌉). The cost of a match grows with the averaged
#: image's area: a small window on 224-pixel images is searched at full resolution
MAX_SIDE = 12


def _share_side(share: float, H: int, W: int) -> int:
    """A window side of ``share`` × the shorter side of H × W maps, at least 3 pixels (at most
    the shorter side)."""
    return int(min(H, W, max(3, round(share * min(H, W)))))


def _blocks(side: int, H: int, W: int) -> tuple[int, int]:
    """``(f, s)``: a window of ``side`` pixels on H × W images is compared as s × s blocks of
    f × f pixels (f > 1 when ``side`` is wider than :data:`MAX_SIDE`; s never wider than the
    averaged image, which ``round(side / f)`` can exceed)."""
    f = max(1, -(-side // MAX_SIDE))
    return f, max(1, min(round(side / f), H // f, W // f))


def _span(side: int, H: int, W: int) -> int:
    """The pixels a window of ``side`` spans as it is compared (:func:`_blocks`)."""
    f, s = _blocks(side, H, W)
    return f * s


class AgreedPlaces(NamedTuple):
    """Best places of every sample for what a suspect's members agree on
    (:meth:`InputPatterns.agreement_anywhere`)."""

    #: each sample's distance at its best place, ``(n,)`` (NaN for a non-finite input)
    distance: np.ndarray
    #: the top-left corner of that place in pixels, ``(n, 2)``
    places: np.ndarray
    #: the template's own corner, at the members' hot spot
    home: tuple[int, int]


class AlignedAgreement(NamedTuple):
    """What a suspect's members agree on where the model looks, found anywhere
    (:meth:`InputPatterns.aligned_agreement`)."""

    #: each sample's distance at its best place, ``(n,)`` (NaN for a non-finite input)
    distance: np.ndarray
    #: the carriers: the better half of the members by their best cosine (the template is
    #: taken from at most ``max_template`` of them, evenly spaced)
    carriers: np.ndarray
    #: each sample's best place, top-left corner in blocks (as :class:`PeakMatches`'), ``(n, 2)``
    places: np.ndarray
    #: the window's side in blocks
    side: int
    #: a block's side in pixels
    factor: int = 1


class PeakMatches(NamedTuple):
    """Best matches of every sample with a template (:meth:`InputPatterns.peak_correlation`
    with ``places``)."""

    #: the best cosines, ``(n,)``, or at the region ``(2, n)`` (anywhere; the joining ones)
    r: np.ndarray
    #: the top-left corner of the window of each joining cosine, in blocks, ``(n, 2)``
    places: np.ndarray
    #: the window's side in blocks
    side: int
    #: a block's side in pixels
    factor: int = 1


class _PeakWindows:
    """S × S windows of images, centred per channel: at each one's relevance peak, or the one
    that best matches a template anywhere in the image.

    Beyond the border the edge pixels repeat (up to ``slack`` = S // 2 pixels), so that a
    window can reach as far past an image border as into it: a pattern next to one border is
    matched as well as the same pattern next to the opposite one. Images are compared in
    sub-chunks of at most :data:`SUB_ELEMENTS` values of the full-resolution padded images (the
    copies before averaging are the largest).
    """

    def __init__(self, side: int, H: int, W: int):
        self.factor, self.side = _blocks(side, H, W)
        self.H, self.W = H // self.factor, W // self.factor
        self.slack = self.side // 2

    def _down(self, a: np.ndarray) -> np.ndarray:
        """``a`` (``(len, …, h·f, w·f)``, or a whole image whose last partial blocks are cut)
        averaged over f × f blocks."""
        f = self.factor
        a = np.asarray(a, dtype=np.float32)
        if f == 1:
            return a
        h, w = a.shape[-2] // f, a.shape[-1] // f
        a = a[..., :h * f, :w * f]
        lead = a.shape[:-2]
        if f >= _STRIDED_BELOW:
            # the columns of each block first (contiguous), then its rows
            a = a.reshape(*lead, h * f, w, f).sum(axis=-1)
            return a.reshape(*lead, h, f, w).sum(axis=-2) / (f * f)
        cols = a[..., 0::f].copy()
        for j in range(1, f):
            cols += a[..., j::f]
        out = cols[..., 0::f, :].copy()
        for i in range(1, f):
            out += cols[..., i::f, :]
        return out / (f * f)

    def _peaks(self, relevance: np.ndarray, share: bool = False):
        """Top-left corner of each map's S × S window of largest |relevance|; with ``share``
        also that window's share of the map's |relevance| (0 for an all-zero map)."""
        a = np.abs(np.asarray(relevance, dtype=np.float32))
        if a.ndim == 4:
            a = a.sum(axis=1)
        a = self._down(a).astype(np.float64)
        S = self.side
        c = np.zeros((a.shape[0], self.H + 1, self.W + 1))
        c[:, 1:, 1:] = a.cumsum(1).cumsum(2)
        sums = c[:, S:, S:] - c[:, :-S, S:] - c[:, S:, :-S] + c[:, :-S, :-S]
        flat = sums.reshape(len(a), -1)
        best = flat.argmax(axis=1)
        peaks = np.unravel_index(best, sums.shape[1:])
        if not share:
            return peaks
        total = c[:, -1, -1]
        top = flat[np.arange(len(a)), best]
        return peaks, np.where(total > 0, top / np.where(total > 0, total, 1.0), 0.0)

    def _padded(self, x: np.ndarray) -> np.ndarray:
        """``(len, C, H + 2 · slack, W + 2 · slack)`` float64 images averaged over f × f blocks,
        the full-resolution edge pixels repeated ``slack`` blocks beyond the border first."""
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[:, None]
        f, m = self.factor, self.slack
        x = x[..., :self.H * f, :self.W * f]
        if m == 0 or f >= _STRIDED_BELOW:     # numpy's reduction adds by the array's shape
            pad = ((0, 0), (0, 0), (m * f, m * f), (m * f, m * f))
            return self._down(np.pad(x, pad, mode="edge")).astype(np.float64)
        out = np.empty((*x.shape[:2], self.H + 2 * m, self.W + 2 * m))
        out[..., m:-m, m:-m] = self._down(x)
        # the blocks beyond the border average repeated edge pixels: each band of them is one
        # block-wide strip of the edge row (or column), averaged as the whole padded image
        # would be (the same sums, bit for bit), without padding every image at full resolution
        beside = ((0, 0), (0, 0), (0, 0), (m * f, m * f))
        for rows, band in ((slice(None, 1), slice(None, m)), (slice(-1, None), slice(-m, None))):
            strip = np.pad(np.repeat(x[..., rows, :], f, axis=2), beside, mode="edge")
            out[..., band, :] = self._down(strip)
        for cols, band in ((slice(None, 1), slice(None, m)), (slice(-1, None), slice(-m, None))):
            out[..., m:-m, band] = self._down(np.repeat(x[..., cols], f, axis=3))
        return out

    def at_peak(self, x: np.ndarray, relevance: np.ndarray, share: bool = False):
        """Unit, per-channel centred windows ``(len, C·S·S)`` at the relevance peaks; with
        ``share`` also each window's share of its map's |relevance| (``(len,)``)."""
        (py, px), mass = self._peaks(relevance, share=True)
        m = self.slack
        windows = np.concatenate([self._windows(self._padded(x[part]), py[part] + m,
                                                px[part] + m) for part in self._parts(x)])
        return (windows, mass) if share else windows

    def padded(self, x: np.ndarray) -> np.ndarray:
        """:meth:`_padded` of ``x`` in sub-chunks (the copies a padding makes are bounded)."""
        return np.concatenate([self._padded(np.asarray(x)[part]) for part in self._parts(x)])

    def raw_at(self, x: np.ndarray, places: np.ndarray) -> np.ndarray:
        """The raw (not centred) S × S windows ``(len, C·S·S)`` of images ``x`` with top-left
        corners ``places`` (``(len, 2)`` in blocks, up to ``slack`` beyond the border)."""
        S, out = self.side, []
        places = np.asarray(places)
        for part in self._parts(x):
            P = self._padded(np.asarray(x)[part])
            py, px = (np.clip(places[part, k], -self.slack, (self.H, self.W)[k] + self.slack - S)
                      + self.slack for k in (0, 1))
            out.append(self._cut(P, py, px).reshape(len(P), -1))
        return np.concatenate(out)

    def _place(self, y: int, x0: int) -> tuple[int, int]:
        """The window with top left ``(y, x0)`` (averaged pixels) in the padded images'
        coordinates, moved inside them (up to ``slack`` beyond the border)."""
        m = self.slack
        return (int(np.clip(y, -m, self.H + m - self.side)) + m,
                int(np.clip(x0, -m, self.W + m - self.side)) + m)

    def at_place(self, x: np.ndarray, y: int, x0: int) -> np.ndarray:
        """Unit, per-channel centred windows ``(len, C·S·S)`` of every image at one place (top
        left ``(y, x0)``, in averaged pixels; up to ``slack`` beyond the border)."""
        py, px = self._place(y, x0)
        return np.concatenate([
            self._windows(self._padded(x[part]), np.full(len(x[part]), py),
                          np.full(len(x[part]), px)) for part in self._parts(x)])

    def _parts(self, x: np.ndarray) -> list[slice]:
        """Slices of ``x``'s samples whose padded images hold at most :data:`SUB_ELEMENTS`
        values together (at least one sample each)."""
        x = np.asarray(x)
        C = x.shape[1] if x.ndim == 4 else 1
        # the padded images are made at full resolution first: f² values per averaged one
        per = C * (self.H + 2 * self.slack) * (self.W + 2 * self.slack) * self.factor ** 2
        step = max(1, SUB_ELEMENTS // per)
        return [slice(i, i + step) for i in range(0, len(x), step)]

    def _windows(self, P: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
        """The unit centred S × S windows of the padded images ``P`` at ``(py, px)``."""
        return _unit(self._cut(P, py, px))

    def _cut(self, P: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
        """The raw S × S windows ``(len, C, S, S)`` of the padded images ``P`` with top-left
        corners ``(py, px)`` (padded coordinates, one per image)."""
        S = self.side
        rows = np.arange(len(P))[:, None, None, None]
        ys = py[:, None, None, None] + np.arange(S)[None, None, :, None]
        xs = px[:, None, None, None] + np.arange(S)[None, None, None, :]
        return P[rows, np.arange(P.shape[1])[None, :, None, None], ys, xs]

    def prepare(self, x: np.ndarray, images: bool = True) -> list[_Prepared]:
        """What :meth:`best_match` reads of the images ``x`` whatever the template, per
        sub-chunk: the padded images (with ``images``; else None), their spectrum, every
        window's centred norm and whether it is flat."""
        out = []
        for part in self._parts(x):
            P = self._padded(x[part])
            norm, flat = self.norms(P)
            out.append(_Prepared(part, P if images else None, P.shape, _spectrum(P), norm,
                                 flat))
        return out

    def norms(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every S × S window's centred norm in the padded images ``P`` and whether it is
        flat (each image's own, whatever else is in ``P``)."""
        S = self.side
        # the centred norm of every window: its squares (summed over the channels first)
        # less each channel's squared sum over S²
        energy = (P * P).sum(axis=1, keepdims=True)
        squares = _box_sums(energy, S)[:, 0]
        centred = squares - (_box_sums(P, S) ** 2).sum(axis=1) / (S * S)
        norm = np.sqrt(np.maximum(centred, 0.0))
        # a flat window (centred norm at rounding level) carries no pattern: 0, not noise
        # ... or at the rounding level of the running sums (relative to the whole image)
        floor = 64 * np.finfo(np.float64).eps * energy.sum(axis=(1, 2, 3))[:, None, None]
        flat = (norm <= 1e-6 * np.sqrt(np.maximum(squares, 0.0))) | (norm * norm <= floor)
        return norm, flat

    def best_match(self, x: np.ndarray | None, template: np.ndarray, windows: bool = False,
                   away: tuple[int, int] | None = None, rows_away: np.ndarray | None = None,
                   places: bool = False, prepared: list[_Prepared] | None = None):
        """The best cosine with ``template`` (unit, centred per channel) of every per-channel
        centred S × S window of each image (edge pixels repeated up to ``slack`` beyond the
        border), by FFT; with ``windows``, the unit centred windows
        ``(len, C·S·S)`` of the best matches instead. With ``away`` (a top left in averaged
        pixels, as :meth:`at_place` takes it), ``(2, len)``: the best cosines, and those of
        the images ``rows_away`` (all by default) matched only by the windows that do not
        overlap the window there (NaN where none is left; the others' best cosines). With
        ``places`` (not with ``windows``), ``(cosines, places)``: also the top-left corner, in
        blocks of the image (``factor`` pixels; negative beyond the top or left border), of
        the window whose cosine is returned (of the last row with ``away``), ``(len, 2)``.
        ``prepared``: :meth:`prepare` of the images, made once for several templates (``x``
        is then not read; with ``windows`` it must hold the images)."""
        S, out, out_away, found_at = self.side, [], [], []
        prepared = self.prepare(x) if prepared is None else prepared
        n = sum(p.shape[0] for p in prepared)
        rows_away = (np.ones(n, dtype=bool) if rows_away is None
                     else np.asarray(rows_away, dtype=bool))
        for part, P, shape, spectrum, norm, flat in prepared:
            dot = _correlate(spectrum, shape, np.asarray(template, dtype=np.float64).reshape(
                shape[1], S, S))
            cos = np.where(flat, 0.0, dot / np.maximum(norm, 1e-300))
            joined = cos.reshape(shape[0], -1)
            if away is not None:
                elsewhere = np.where(self._overlaps(away, dot.shape[1:]), -np.inf, cos)
                elsewhere = elsewhere.reshape(shape[0], -1)
                joined = np.where(rows_away[part][:, None], elsewhere, joined)
                top = joined.max(axis=1)
                out_away.append(np.where(np.isneginf(top), np.nan, np.clip(top, -1.0, 1.0)))
            if places:
                found_at.append(np.stack(np.unravel_index(joined.argmax(axis=1), dot.shape[1:]),
                                         axis=1) - self.slack)
            cos = cos.reshape(shape[0], -1)
            best = np.clip(cos.max(axis=1), -1.0, 1.0)
            if not windows:
                out.append(best)
                continue
            assert P is not None, "best_match with windows needs the images prepared"
            found = self._windows(P, *np.unravel_index(cos.argmax(axis=1), dot.shape[1:]))
            found[np.isnan(best)] = np.nan     # no best match: not the top-left window
            out.append(found)
        if away is not None and not windows:
            out = np.stack([np.concatenate(out), np.concatenate(out_away)])
        else:
            out = np.concatenate(out)
        return (out, np.concatenate(found_at)) if places and not windows else out

    def _overlaps(self, away: tuple[int, int], shape: tuple) -> np.ndarray:
        """``shape`` (the padded images' window positions): which windows overlap the one at
        ``away`` (top left in averaged pixels)."""
        py, px = self._place(*away)
        ys, xs = np.arange(shape[0])[:, None], np.arange(shape[1])[None, :]
        return (np.abs(ys - py) < self.side) & (np.abs(xs - px) < self.side)


#: block factors below this are summed by strided additions, about 2.7 times faster than
#: numpy's reduction over a short last axis and equal to it bit for bit but for the sign of
#: a zero sum (its pairwise summation adds in another order from 8 values on)
_STRIDED_BELOW = 8

#: values of full-resolution padded images compared at a time (bounds the copies a match makes)
SUB_ELEMENTS = 4_000_000


def _unit(raw: np.ndarray) -> np.ndarray:
    """``(len, C, S, S)`` windows centred per channel and scaled to unit length, flat
    (rounding-level) ones 0, as ``(len, C·S·S)``."""
    raw = np.asarray(raw, dtype=np.float64)
    v = (raw - raw.mean(axis=(2, 3), keepdims=True)).reshape(len(raw), -1)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    flat = norm <= 1e-6 * np.linalg.norm(raw.reshape(len(raw), -1), axis=1, keepdims=True)
    return np.where(flat, 0.0, v / np.maximum(norm, 1e-300))


class _Prepared(NamedTuple):
    """One sub-chunk of images as :meth:`_PeakWindows.best_match` reads it, whatever the
    template (:meth:`_PeakWindows.prepare`)."""

    part: slice
    P: np.ndarray | None
    shape: tuple
    spectrum: np.ndarray
    norm: np.ndarray
    flat: np.ndarray


def _nbytes(groups) -> int:
    """Bytes held by groups of preparations (lists of :class:`_Prepared`, no images)."""
    return sum(p.spectrum.nbytes + p.norm.nbytes + p.flat.nbytes for parts in groups
               for p in parts)


def _cut_prepared(parts: list[_Prepared], offsets: np.ndarray, first: int = 0
                  ) -> list[_Prepared]:
    """The preparations ``parts`` of a chunk cut down to the images at ``offsets`` (ascending,
    within the chunk), numbered from ``first`` in that order, without images."""
    out: list[_Prepared] = []
    done = first
    for p in parts:
        idx = offsets[(offsets >= p.part.start) & (offsets < p.part.stop)] - p.part.start
        if len(idx) == p.shape[0]:           # the whole part: its arrays, not copies
            out.append(_Prepared(slice(done, done + len(idx)), None, p.shape, p.spectrum,
                                 p.norm, p.flat))
        elif len(idx):
            out.append(_Prepared(slice(done, done + len(idx)), None, (len(idx), *p.shape[1:]),
                                 p.spectrum[idx], p.norm[idx], p.flat[idx]))
        done += len(idx)
    return out


def _spectrum(P: np.ndarray) -> np.ndarray:
    """The images' ``P`` (``(n, C, h, w)``) 2-D real FFT, for :func:`_correlate`."""
    from scipy import fft

    return fft.rfft2(P, axes=(2, 3))


def _correlate(spectrum: np.ndarray, shape: tuple, T: np.ndarray) -> np.ndarray:
    """``(n, h − S + 1, w − S + 1)``: the dot product of ``T`` (``(C, S, S)``) with every
    S × S window of the images of ``shape`` ``(n, C, h, w)`` whose :func:`_spectrum` is
    ``spectrum``, summed over the channels. By FFT of the images' own size: a window that fits
    does not wrap around, and the channels are summed before the one inverse transform per
    image."""
    from scipy import fft

    h, w = shape[-2:]
    S = T.shape[-1]
    product = spectrum * np.conj(fft.rfft2(T, s=(h, w), axes=(1, 2)))[None]
    return fft.irfft2(product.sum(axis=1), s=(h, w), axes=(1, 2))[:, :h - S + 1, :w - S + 1]


def _box_sums(a: np.ndarray, S: int) -> np.ndarray:
    """Sums of ``a`` (``(n, C, h, w)``) over every S × S window, ``(n, C, h − S + 1, w − S +
    1)``: running sums along the columns, then along the rows (each a cumulative sum less
    itself S places back)."""
    out = np.asarray(a, dtype=np.float64)
    for axis in (3, 2):
        c = np.cumsum(out, axis=axis)
        head = [slice(None)] * 4
        head[axis] = slice(S - 1, None)
        box = c[tuple(head)]                     # sums of the first S, S + 1, … values
        back = [slice(None)] * 4
        back[axis] = slice(None, -S) if c.shape[axis] > S else slice(0, 0)
        lead = [slice(None)] * 4
        lead[axis] = slice(1, None)
        box[tuple(lead)] -= c[tuple(back)]       # less the sums S places back
        out = box
    return out
