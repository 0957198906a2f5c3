"""Transplant test: does a group's input pattern, moved onto other classes' inputs, turn the
model to the class?

The spectral rule (:mod:`spray.verdict.score`) asks whether a group of a class is separated in
the relevance graph more than in the inputs. That question cannot tell a planted patch from a
natural look-alike when both sit under the relevance peaks (docs/verdict-eval.md, "Results:
window cuts on rebuilt models"). This module asks the model instead, by intervention, as the
field defines a Clever Hans (and as the evaluation measures reliance): take the inputs of the
group's members *where the relevance says the model looks*, paste them onto images of the
other classes, and count how many of those the model then predicts as the class; do the same
with the rest of the class as donors. A shortcut is a small pattern that suffices on its own:
the members' pieces turn far more images than the rest's. A natural sub-type's most relevant
piece is class evidence like the rest's, and turns about as many.

Two regions are moved for every candidate:

* ``place``: the pixels where the members' mean relevance (each map divided by its total
  |relevance|) exceeds the rest's most, the top ``area`` share of the image — one region for
  all donors (a stamp, a border, a corner logo: an artefact at a fixed place);
* ``peak``: each donor's own S × S window of largest |relevance| (S = ``side`` × the shorter
  image side), pasted at the same place — a pattern that moves with the object; or, for a
  group made of the samples that carry what its members agree on, ``agreed``: each donor's
  window where it carries that pattern best (the rest's where they come closest to it), so
  that a stamp is moved where a donor's relevance peaks elsewhere.

The test is paired: the members' and the rest's pieces go onto the same target images (images
of other classes the model does not already predict as the class). No library offers it; it
is a few array operations around the caller's model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from spray.verdict.patterns import _box_sums, _share_side, agreeing

Predict = Callable[[np.ndarray], np.ndarray]


def _as_images(x: np.ndarray) -> np.ndarray:
    """``(n, C, H, W)`` float32 (a ``(n, H, W)`` array gets one channel)."""
    x = np.asarray(x, dtype=np.float32)
    return x[:, None] if x.ndim == 3 else x


def _abs_maps(maps: np.ndarray) -> np.ndarray:
    """``(n, H, W)`` |relevance| (channels summed first)."""
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim == 4:
        a = a.sum(axis=1)
    return np.abs(a)


def peak_boxes(maps: np.ndarray, side: float) -> np.ndarray:
    """Each map's S × S window of largest |relevance| as a ``(n, H, W)`` boolean mask (S =
    ``side`` × the shorter side, at least 3 pixels)."""
    a = _abs_maps(maps)
    n, H, W = a.shape
    S = _share_side(side, H, W)
    sums = _box_sums(a[:, None], S)[:, 0].reshape(n, -1)
    best = np.unravel_index(sums.argmax(axis=1), (H - S + 1, W - S + 1))
    out = np.zeros((n, H, W), dtype=bool)
    for i, (y, x) in enumerate(zip(*best)):
        out[i, y:y + S, x:x + S] = True
    return out


def boxes_at(places: np.ndarray, side: int, H: int, W: int) -> np.ndarray:
    """``(n, H, W)`` boolean masks of the ``side`` × ``side`` windows with top-left corners
    ``places`` (``(n, 2)`` pixels; the part inside the image of a window reaching past its
    border)."""
    places = np.asarray(places, dtype=np.intp).reshape(-1, 2)
    ys, xs = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
    y0, x0 = places[:, 0, None, None], places[:, 1, None, None]
    return (ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side)


def place_mask(maps: np.ndarray, members: np.ndarray, area: float) -> np.ndarray:
    """The ``(H, W)`` pixels where the members' mean relevance exceeds the rest's most (each map
    divided by its total |relevance|): the top ``area`` share of the image, only pixels where it
    exceeds at all (an empty mask when nowhere)."""
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim == 4:
        m = m.sum(axis=1)
    total = np.abs(m).reshape(len(m), -1).sum(axis=1)
    m = m / np.where(total > 0, total, 1.0)[:, None, None]
    members = np.asarray(members, dtype=bool)
    diff = m[members].mean(axis=0) - m[~members].mean(axis=0)
    count = max(1, int(round(area * diff.size)))
    cut = np.partition(diff.ravel(), -count)[-count]
    return (diff >= cut) & (diff > 0)


def _predict_all(predict: Predict, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(predict(x[i:i + batch])).reshape(-1)
                           for i in range(0, len(x), batch)])


def pasted_flips(predict: Predict, targets: np.ndarray, donors: np.ndarray,
                 regions: np.ndarray, c: int, batch: int = 256) -> np.ndarray:
    """Whether the model predicts ``c`` for each target with its donor's region pasted in.

    Parameters
    ----------
    predict : callable
        ``(N, C, H, W)`` float32 → ``(N,)`` predicted labels.
    targets, donors : numpy.ndarray
        ``(P, C, H, W)`` pairs of images (a target, the donor whose pixels it receives).
    regions : numpy.ndarray
        ``(P, H, W)`` or ``(H, W)`` boolean: the pixels moved.
    """
    regions = np.asarray(regions, dtype=bool)
    mixed = np.where(regions[:, None] if regions.ndim == 3 else regions[None, None],
                     donors, targets).astype(np.float32)
    return _predict_all(predict, mixed, batch) == c


@dataclass
class TransplantResult:
    """One candidate's transplant test in one region kind.

    ``members`` and ``rest`` are the shares of target images turned to the class by the
    members' and by the rest's pieces; ``effect`` their difference; ``z`` McNemar's statistic
    of the pairs, ``(n10 − n01) / √(n10 + n01)`` with ``n10`` the targets only a member's piece
    turned and ``n01`` those only the rest's did (0 when no pair differs; a group whose pieces
    turn every target and the rest's none has ``√pairs``); ``pairs`` the pairs and
    ``targets`` the distinct target images among them; ``se`` the standard error of
    ``effect`` (:func:`effect_se`): with :func:`decide`'s floor, how surely it lies below a bar;
    ``agreed`` (the ``place`` region, when asked for) :func:`place_agreement` of the members'
    pieces there, None when not measured.
    """

    region: str
    members: float
    rest: float
    effect: float
    z: float
    pairs: int
    se: float = float("nan")
    targets: int = 0
    agreed: float | None = None

    def to_dict(self) -> dict:
        """The fields, floats rounded to 4 places (a NaN, not valid JSON, as None)."""
        return {k: (round(v, 4) if np.isfinite(v) else None) if isinstance(v, float) else v
                for k, v in asdict(self).items()}


def _cluster_var(values: np.ndarray, groups: np.ndarray) -> float:
    """Cluster-robust variance of the mean of ``values`` in clusters ``groups`` with the
    small-sample factor G / (G − 1) of G clusters: G / (G − 1) · Σ_g (Σ_{k∈g} (v_k − v̄))² / N²
    (infinite for one cluster: nothing is known of the spread between clusters)."""
    dev = values - values.mean()
    index = np.unique(groups, return_inverse=True)[1]
    g = int(index.max()) + 1
    if g < 2:
        return float("inf")
    sums = np.bincount(index, weights=dev)
    return g / (g - 1) * float((sums ** 2).sum()) / len(values) ** 2


def effect_se(a: np.ndarray, b: np.ndarray, targets: np.ndarray, d_in: np.ndarray,
              d_out: np.ndarray) -> float:
    """Standard error of the effect ``mean(a) − mean(b)`` of paired turns, allowing for pairs
    that share a donor or a target.

    Donors and targets are drawn with replacement, so the pairs are not independent: one
    member whose piece turns everything, or a few easily turned targets, would make an effect
    look surer than it is. The variance is the larger of the pairs' own (``var(a − b) / N``)
    and the sum of the cluster-robust variances by member donor (of ``a``), by rest donor (of
    ``b``) and by target (of ``a − b``), each with the small-sample factor G / (G − 1) —
    each counts the pairs' own noise again, so the sum errs high. Erring high is the safe
    side: a larger error only ever keeps a suspect. Where no pair differs this error is 0;
    :func:`decide` puts a floor under it.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``(N,)`` boolean: the target turned by the member's piece, by the rest's.
    targets, d_in, d_out : numpy.ndarray
        ``(N,)`` the pairs' target, member donor and rest donor indices.

    Returns
    -------
    float
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    n = len(a)
    pair_var = float(np.var(a - b)) / n
    clustered = (_cluster_var(a, d_in) + _cluster_var(b, d_out)
                 + _cluster_var(a - b, targets))
    return float(np.sqrt(max(pair_var, clustered)))


def _paired(region: str, a: np.ndarray, b: np.ndarray, targets: np.ndarray,
            d_in: np.ndarray, d_out: np.ndarray) -> TransplantResult:
    """The paired comparison of the members' turns ``a`` with the rest's ``b`` (McNemar), on
    pairs of the given target and donor indices."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    z = (only_a - only_b) / np.sqrt(only_a + only_b) if only_a + only_b else 0.0
    return TransplantResult(region, float(a.mean()), float(b.mean()),
                            float(a.mean() - b.mean()), float(z), int(len(a)),
                            effect_se(a, b, targets, d_in, d_out), len(np.unique(targets)))


#: the most rows of the members and of the rest whose maps are averaged for the ``place`` region
MEAN_ROWS = 1000


def place_agreement(members: np.ndarray, rest: np.ndarray, spread: float) -> float:
    """The share of a region's values where the members' pieces are alike.

    A value (a pixel in one colour channel) counts where the rest deviate from the members'
    median at all; of those, the share where the members' mean absolute deviation from their
    median is at most ``spread`` times the rest's (:func:`~spray.verdict.patterns.agreeing`,
    as the member steps read a stamp). A stamp, a logo or a frame at a fixed place
    is the same in every member: its pixels agree, whatever the rest show there. Class
    evidence the members share without a common pattern (strokes of differently coloured
    digits on plain backgrounds) agrees nowhere: the members differ there about as much as
    from the rest (docs/verdict.md, "Suspects the model follows below the threshold").

    Parameters
    ----------
    members, rest : numpy.ndarray
        ``(m, D)`` and ``(k, D)``: the region's D values of members and of the rest.
    spread : float
        How much more closely than the rest the members must lie to their median.

    Returns
    -------
    float
        The share in [0, 1]; NaN when no value counts (or a side is empty).
    """
    members, rest = np.asarray(members, dtype=np.float64), np.asarray(rest, dtype=np.float64)
    if not len(members) or not len(rest) or not members.shape[1]:
        return float("nan")
    _, outside, agreed = agreeing(members, rest, spread)
    counted = int((outside > 0).sum())
    return float(agreed.sum() / counted) if counted else float("nan")


def _rows_of(array: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rows: np.asarray(array)[rows]


def _place_values(load: Callable[[np.ndarray], np.ndarray], rows: np.ndarray,
                  place: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``(len(rows), C·P)``: the inputs of ``rows`` at the P pixels of ``place``, read
    ``chunk`` rows at a time (whole inputs of a thousand rows need not fit in memory)."""
    parts = [_as_images(load(rows[i:i + chunk]))[:, :, place].reshape(len(rows[i:i + chunk]), -1)
             for i in range(0, len(rows), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def usable_targets(predict: Predict, targets: np.ndarray, c: int) -> np.ndarray:
    """The target images the model does not already predict as ``c`` (``(m, C, H, W)``)."""
    t = _as_images(targets)
    return t[_predict_all(predict, t, 256) != c] if len(t) else t


def target_rows(labels: np.ndarray, c: int, pairs: int, seed: int) -> np.ndarray:
    """Rows of ``labels`` outside class ``c`` the transplant test draws its targets from:
    ``4 × pairs`` of them at random (all when fewer), sorted, seeded by ``seed`` and ``c``."""
    others = np.flatnonzero(np.asarray(labels) != c)
    rng = np.random.default_rng([int(seed), int(c)])
    return np.sort(rng.choice(others, size=min(len(others), 4 * pairs), replace=False))


def transplant_test(predict: Predict, inputs, maps, members: np.ndarray,
                    targets: np.ndarray, c: int, *, side: float = 0.22, area: float = 0.1,
                    pairs: int = 256, seed: int | list[int] = 0, filtered: bool = False,
                    spread: float | None = None,
                    at: tuple[np.ndarray, int] | None = None) -> list[TransplantResult]:
    """The transplant test of one candidate group of class ``c`` in both region kinds.

    Parameters
    ----------
    predict : callable
        ``(N, C, H, W)`` float32 → ``(N,)`` predicted labels (the model under test).
    inputs, maps : numpy.ndarray or callable
        The class's model inputs ``(n, C, H, W)`` (or ``(n, H, W)``) and relevance maps
        ``(n, [C,] H, W)``, or functions reading them for an array of row positions.
    members : numpy.ndarray
        ``(n,)`` boolean: the candidate group.
    targets : numpy.ndarray
        Images of the other classes (model inputs); those the model already predicts as ``c``
        are left out.
    side, area : float
        The ``peak`` window's side (share of the shorter side) and the ``place`` region's share.
    pairs : int
        Target images drawn (with their member and rest donors).
    seed : int or list of int
        Fixes which targets and donors are drawn (a seed for :func:`numpy.random.default_rng`).
    filtered : bool
        ``targets`` are :func:`usable_targets` already (not predicted again).
    spread : float, optional
        Also measure :func:`place_agreement` of the ``place`` region (the members' and the
        rest's inputs of the rows its mean maps are taken from) with this spread.
    at : tuple, optional
        ``(places, side)``: for each sample of the class the top-left corner ``(n, 2)`` of a
        ``side`` × ``side`` window in pixels, where it carries what the group agrees on
        (:mod:`~spray.verdict.carried`). Each donor's window there is moved instead of its
        peak window: the region ``agreed`` instead of ``peak``.

    Returns
    -------
    list of TransplantResult
        ``place`` then ``peak`` (``agreed`` with ``at``); empty when the group, the rest or
        the targets are empty.
    """
    load = inputs if callable(inputs) else _rows_of(inputs)
    read_maps = maps if callable(maps) else _rows_of(maps)
    t = _as_images(targets) if filtered else usable_targets(predict, targets, c)
    members = np.asarray(members, dtype=bool)
    if not members.any() or members.all() or not len(t):
        return []
    rng = np.random.default_rng(seed)
    t_idx = rng.integers(0, len(t), pairs)
    pick_t = t[t_idx]
    inside, outside = np.flatnonzero(members), np.flatnonzero(~members)
    d_in = inside[rng.integers(0, len(inside), pairs)]
    d_out = outside[rng.integers(0, len(outside), pairs)]
    mean_in = np.sort(rng.permutation(inside)[:MEAN_ROWS])
    mean_out = np.sort(rng.permutation(outside)[:MEAN_ROWS])
    both = np.concatenate([mean_in, mean_out])
    out = []
    place = place_mask(read_maps(both), np.arange(len(both)) < len(mean_in), area)
    donors = np.unique(np.concatenate([d_in, d_out]))
    i_in, i_out = np.searchsorted(donors, d_in), np.searchsorted(donors, d_out)
    ids = (t_idx, d_in, d_out)
    x = _as_images(load(donors))
    if place.any():
        out.append(_paired("place", pasted_flips(predict, pick_t, x[i_in], place, c),
                           pasted_flips(predict, pick_t, x[i_out], place, c), *ids))
        if spread is not None:
            pieces = _place_values(load, both, place)
            out[-1].agreed = place_agreement(pieces[:len(mean_in)], pieces[len(mean_in):],
                                             spread)
    if at is None:
        region, boxes = "peak", peak_boxes(read_maps(donors), side)
    else:
        region, boxes = "agreed", boxes_at(np.asarray(at[0])[donors], at[1], *x.shape[-2:])
    out.append(_paired(region, pasted_flips(predict, pick_t, x[i_in], boxes[i_in], c),
                       pasted_flips(predict, pick_t, x[i_out], boxes[i_out], c), *ids))
    return out


@dataclass
class ModelTest:
    """What the transplant test of one class needs from the run: the model and the inputs.

    Attributes
    ----------
    predict : callable
        ``(N, C, H, W)`` float32 model inputs → ``(N,)`` predicted labels.
    inputs, maps : callable
        Row positions of the class → its model inputs and its relevance maps.
    targets : numpy.ndarray
        Model inputs of other classes' samples (drawn by the caller).
    c : int
        The class (the model's output index).
    """

    predict: Predict
    inputs: Callable[[np.ndarray], np.ndarray]
    maps: Callable[[np.ndarray], np.ndarray]
    targets: np.ndarray
    c: int

    @functools.cached_property
    def usable(self) -> np.ndarray:
        """:func:`usable_targets` of ``targets``, predicted once for all the class's suspects."""
        return usable_targets(self.predict, self.targets, self.c)

    def rows(self, rows: np.ndarray) -> ModelTest:
        """The test of the class's samples at positions ``rows`` (a subsample), same targets
        (their predictions shared: :attr:`usable` is made once)."""
        rows = np.asarray(rows)
        inputs, maps = self.inputs, self.maps
        sub = ModelTest(self.predict, lambda r: inputs(rows[np.asarray(r)]),
                        lambda r: maps(rows[np.asarray(r)]), self.targets, self.c)
        sub.__dict__["usable"] = self.usable
        return sub

    def test(self, members: np.ndarray, side: float, area: float, pairs: int,
             seed: int | list[int], spread: float | None = None,
             at: tuple[np.ndarray, int] | None = None) -> list[TransplantResult]:
        """:func:`transplant_test` of the group ``members`` of this class."""
        return transplant_test(self.predict, self.inputs, self.maps, members, self.usable,
                               self.c, side=side, area=area, pairs=pairs, seed=seed,
                               filtered=True, spread=spread, at=at)


def _floored(r: TransplantResult, min_effect: float) -> float:
    """:func:`decide`'s error of a result: its own, at least √(m (1 − m) / T) and 1 / T over
    the T distinct targets; NaN when its own is not finite (nothing is decided on it)."""
    if not np.isfinite(r.se):
        return float("nan")
    units = max(1, min(r.pairs, r.targets or r.pairs))
    return max(r.se, np.sqrt(min_effect * (1 - min_effect) / units), 1.0 / units)


def decide(results: list[TransplantResult], min_effect: float, min_z: float) -> str:
    """What a group's transplant test shows.

    ``"followed"``: in either region the members' pieces turn at least ``min_effect`` more
    target images to the class than the rest's, at a McNemar z of ``min_z`` or more.
    ``"ignored"``: in every region the effect lies below ``min_effect`` by ``min_z`` standard
    errors — the model is shown not to follow the pieces. The error is :func:`effect_se`, but
    never below √(m (1 − m) / T) nor 1 / T, m = ``min_effect``, T the distinct targets (at
    most the pairs): the least error an effect at the bar could show, if it lay in an m share of the
    targets (no pair differing out of a few targets proves little); a NaN error decides
    nothing.
    ``"undecided"``: neither (an effect near the bar, or too few pairs to tell), and
    ``"untested"`` without results. Only ``"ignored"`` clears a suspect: what the test cannot
    vouch for stays suspect (fail closed).
    """
    if not results:
        return "untested"
    if any(r.effect >= min_effect and r.z >= min_z for r in results):
        return "followed"
    if all(min_effect - r.effect >= min_z * _floored(r, min_effect) for r in results):
        return "ignored"
    return "undecided"


def shown_margin(results: list[TransplantResult], min_effect: float, min_z: float) -> float:
    """How far the clearest region lies past :func:`shown_followed`'s bar, in :func:`decide`'s
    errors: the largest over ``results`` of min((effect − ``min_effect``) / e, effect / e −
    ``min_z``), e the floored clustered error (:func:`effect_se`, at least √(m (1 − m) / T)
    and 1 / T). At 0 or above the model is shown to follow the pieces; the value says by how
    many errors the estimate would have to move before the nearer of the two bars (the
    effect's size, its distance from none) flips that (at an exact tie the sign may differ
    from :func:`shown_followed`'s by rounding). −inf without a result with a finite error.
    """
    margins = [min((r.effect - min_effect) / e, r.effect / e - min_z)
               for r in results if np.isfinite(e := _floored(r, min_effect))]
    return max((m for m in margins if np.isfinite(m)), default=-np.inf)


def shown_followed(results: list[TransplantResult], min_effect: float, min_z: float) -> bool:
    """Whether in some region the members' pieces turn at least ``min_effect`` more targets
    than the rest's, ``min_z`` of :func:`decide`'s errors (clustered by donor and target, with
    its floor) above none (:func:`shown_margin` at 0 or above, but for rounding at a tie).
    Stricter than :func:`decide`'s "followed" (McNemar's z counts the pairs as independent): a
    group below the threshold becomes a suspect only on an effect that a few donors or easily
    turned targets cannot make (a NaN error shows nothing)."""
    return any(r.effect >= min_effect and r.effect >= min_z * _floored(r, min_effect)
               for r in results)


def pieces_alike(results: list[TransplantResult], bar: float) -> bool:
    """Whether the ``place`` region's :func:`place_agreement` is at least ``bar`` (False
    where it was not measured or is NaN: nothing shows the pieces alike)."""
    agreed = next((r.agreed for r in results if r.region == "place"), None)
    return agreed is not None and bool(agreed >= bar)


def decided_test(test: ModelTest, members: np.ndarray, *, side: float, area: float,
                 pairs: int, max_pairs: int, seed: int, min_effect: float, min_z: float,
                 spread: float | None = None, confirm: bool = False,
                 at: tuple[np.ndarray, int] | None = None
                 ) -> tuple[str, list[TransplantResult]]:
    """The transplant test of a group with more pairs while it is undecided.

    The test runs with ``pairs`` pairs; while :func:`decide` finds it undecided it runs again
    with four times as many (at most ``max_pairs``; new draws of targets and donors from the
    same images, seeded by ``seed`` and the size), until ``max_pairs`` have been tried.
    An effect far from the bar is decided at the first size; one near it is given the pairs
    to tell, and stays undecided (a suspect) if they do not. With ``confirm``, a group found
    "followed" with fewer than ``max_pairs`` is tested again with ``max_pairs`` and decided
    on that run. With ``spread``, the ``place`` results carry their :func:`place_agreement`;
    with ``at``, the ``agreed`` region is moved instead of the ``peak`` one
    (:func:`transplant_test`).

    Returns
    -------
    tuple
        The decision and the results of the last run.
    """
    n, draw = pairs, seed
    while True:
        results = test.test(members, side, area, n, draw, spread, at=at)
        verdict = decide(results, min_effect, min_z)
        if n >= max_pairs or verdict in ("ignored", "untested") \
                or (verdict == "followed" and not confirm):
            return verdict, results
        n = max_pairs if verdict == "followed" else min(4 * n, max_pairs)
        draw = [seed, n]
