"""Suspect members: which samples of a flagged group carry what the model looks at.

A suspect group comes out of the relevance graph, and its border is where the spectral cut put
it: a few samples whose relevance falls on the same place for another reason (a sleeve or a
bright fold where the stamp would be) end up inside. The inputs at the group's *hot spot* tell
them apart: an artefact is a near-identical pattern at a fixed place, so the members that carry
it look alike there, and unlike the rest of the class.

For every suspect (score at or above the threshold), the hot spot is the ``input_mask_area``
share of cells where the group's mean relevance differs most from the rest's (the cells the
contrast leaves out of the input graph). Each sample's inputs there, each cell scaled by its
robust spread over the rest of the class, are projected onto the line from the rest's median to
the group's median (0 halfway); the members on the group's side are its core. When the
projection tells the core from the rest of the class (ROC AUC at least ``trim_min_auc``) and the
core holds at least half the group, the members outside the core that also lie below the core's
lower fence (Q1 − ``trim_fence_iqr`` × IQR of the core's projections, 1 by default: a member of
a pattern that varies, like a stamp on objects of varied brightness, stays) leave the suspect
for the cluster their relevance-graph edges weigh most. Otherwise the group is kept as the graph
cut it (a pattern that moves, or a group the inputs there do not tell apart: in the test of a
group whose hot spot is the same in every input, the core's AUC is 0.83). The score and the flag
are not changed: only who is reported. Measured in docs/verdict-eval.md, "Suspect members".

The border errs the other way too: stamped samples whose relevance graph neighbours are
elsewhere (a stamp the model weighs less next to a salient object) stay outside. The samples
outside every suspect join it when both their inputs and their relevance at its hot spot lie on
the group's side and at or above the core's lower fence (the relevance projected like the
inputs, onto the line between the medians of the rest and the group): they carry the pattern
and the model looks at it the way it does for the members. The same test guards it: the core
holds at least half the group, and its inputs there tell it, with AUC at least
``trim_min_auc``, from the samples outside whose relevance there is *not* like the members'
(those that may join would lower the AUC for the wrong reason). ``joined`` counts them. Joining
comes first and the trim after it: stamped samples outside would also lower the AUC that decides
the trim, and keep look-alikes in the suspect. Measured in docs/verdict-eval.md, "Members that
join a suspect".

With the class's raw inputs (:mod:`spray.verdict.patterns`), a last step reads the pixels at
each suspect's hot spot themselves, in colour: a sample outside every suspect joins it when its
*pattern correlation* with the members' median pattern there is at or above the lower fence of
the members' (``pattern_joined``). Its own guard: the members' lower fence lies at or above the
upper fence of the samples outside (a suspect whose members share no pattern takes no one in).
No relevance condition: a sample that carries the pattern belongs to the list a user cleans.
Measured in docs/verdict-eval.md, "Members by their pattern". A suspect that holds only a part
of the carriers (the graph cut a half-transparent stamp where the model looks hardest) fails
that guard by the carriers outside, who lift the outside's fence; with ``pattern_join_gap``
they still join where they stand apart from the rest above a bar between the members' fence
and median (:func:`apart_bar`; docs/verdict.md, "Members that stand apart").

The correlation reads every pixel of the hot spot, centred: where the hot spot also holds cells
of the object (stamped samples have less relevance there), those dilute it, and a flat stamp (a
white square) has no centred pattern of its own. The next step reads only the pixels where the
members *agree* (deviate from their median far less than the rest of the class does there): a
sample outside joins when its distance to the members' values there is within the members' own
(``agreed_joined``), under a guard that the members' fence lies below the lower fence of the
other samples outside. Measured in docs/verdict-eval.md, "Members by what they agree on".

An artefact at one of several places (a logo in one of four corners) makes a suspect of one
place; the stamped samples of the others are neither at its hot spot nor near it in the graph.
With the relevance maps too, the last step takes the members' pattern *where their relevance
peaks*, aligned, and looks for it anywhere in every image
(:meth:`~spray.verdict.patterns.InputPatterns.peak_correlation`): a sample outside joins when
its best match is at or above the members' lower fence, under the same guard with a longer reach
for the samples outside (``peak_guard_iqr``; ``peak_joined``); while the guard refuses or the
pattern is flat, the window is widened (``peak_window_doublings``: a one-cell hot spot makes a
window smaller than the stamp), and a refused guard still lets the candidates in when they stand
apart from the rest of the samples outside (``peak_carrier_gap``: the carriers outside lift the
outside's fence themselves). As in the step before, no relevance condition: a stamped sample
whose relevance peaks on its object carries the stamp all the same. Where the members' own peaks
hold no common pattern (a model that looks hardest at the object, and at the logo less but
differently from the rest), no window at the peaks passes the guard; the same search is then
made with the first template taken at the hot region's place, which every member of a suspect
of one place shares (``peak_at`` ``"region"``). There the members all carry the stamp at the
same place: the guard and the bar compare the members' matches with the best matches of the
samples outside anywhere, and a sample outside joins when its best match *away* from the
members' place reaches the bar (at the place itself the hot-spot steps before decided).

On either path, carriers elsewhere match the members' template less crisply than the members
at their own place (another crop around the stamp, another border beside it), so the bar is
not the members' fence: it may drop below it to the *far fences* of both sides
(:func:`carrier_bar`), measured in Fisher z, where correlations that crowd below 1 are spread
evenly — above the rest's (Q3 + ``peak_far_iqr`` × IQR, far enough out for the long upper tail
of a best match, the most of many correlations) and within the members' (Q1 − the same ×
IQR: members that all match alike, a one-pixel line, leave no room for look-alikes below
their fence). Measured in docs/verdict-eval.md, "Results: carriers below the members' fence".

A stamp that moves with the object (a colour patch) is matched there by a cosine over the
whole window, diluted by the object around the stamp: stamped samples outside a window cut
matched at 0.63–0.98, samples without it up to 0.77, and a third of the stamped samples stayed
outside. With ``aligned_agreement`` a last step (:func:`align_members`) reads only the values
the members agree on in their aligned windows where the model looks — the stamp's pixels, one
colour in every stamped image — and looks for them anywhere in every image
(:meth:`~spray.verdict.patterns.InputPatterns.aligned_agreement`): the samples outside as close
to them as each value had to be to count as agreed join, and members of a window cut far from
them leave, under the guard of the agreement steps. Measured in docs/verdict-eval.md,
"Results: members by what they agree on where the model looks".
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from spray.config.presets import FlagsSection
from spray.verdict.evidence import auc, difference, hot_spot_side, top_cells
from spray.verdict.patterns import AlignedAgreement, InputPatterns
from spray.verdict.result import ClusterEvidence, resize_entries

#: correlations are clipped to ±this before their Fisher z (1 has none)
_Z_CLIP = 1 - 1e-6


def lower_fence(values: np.ndarray, reach: float) -> float:
    """The lower fence of ``values``: Q1 − ``reach`` × IQR (Tukey's fences use 1.5 and 3)."""
    q1, q3 = np.percentile(values, [25, 75])
    return float(q1 - reach * (q3 - q1))


def upper_fence(values: np.ndarray, reach: float) -> float:
    """The upper fence of ``values``: Q3 + ``reach`` × IQR."""
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 + reach * (q3 - q1))


def core_auc(side: np.ndarray, mask: np.ndarray, core: np.ndarray) -> float:
    """How well ``side`` tells the ``core`` of the group ``mask`` from the rest of the class
    (ROC AUC, rounded; 0 for an empty core or when nothing is outside ``mask``)."""
    if not core.any() or mask.all():
        return 0.0
    judged = core | ~mask
    return round(auc(side[judged], core[judged]), 4)


def trim_suspects(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                  W: sp.csr_matrix, input_features: np.ndarray, features: np.ndarray | None,
                  area: float, min_auc: float, fence_iqr: float) -> np.ndarray:
    """Move the members of every suspect cluster that do not carry its hot-spot pattern to the
    non-suspect cluster their edges in ``W`` weigh most (the largest one without edges).

    Fills in ``hot_spot_auc`` and ``trimmed`` on each suspect's entry and updates the ``size``
    and ``fraction`` of the clusters that change. Nothing moves without relevance features,
    with ``area`` 0, or when every cluster is a suspect.

    Returns
    -------
    numpy.ndarray
        The labels after the moves (a new array when anything moved).
    """
    keep = [c.id for c in clusters if c.id is not None and c.id not in suspects and c.size]
    if features is None or area <= 0 or not keep:
        return labels
    labels = np.array(labels, copy=True)
    for entry, mask in _suspect_groups(labels, clusters, suspects):
        side = hot_spot_side(input_features, features, mask, area)
        if side is None:
            continue
        core = mask & (side > 0)
        entry.hot_spot_auc = core_auc(side, mask, core)
        carried = entry.hot_spot_auc >= min_auc and 2 * core.sum() >= mask.sum()
        out = (np.flatnonzero(mask & ~core & (side < lower_fence(side[core], fence_iqr)))
               if carried else np.empty(0, dtype=np.intp))
        entry.trimmed = int(len(out))
        if entry.trimmed:
            labels[out] = _nearest_cluster(W, out, labels, keep)
    resize_entries(clusters, labels)
    return labels


def decide_members(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                   W: sp.csr_matrix, input_features: np.ndarray, features: np.ndarray | None,
                   area: float, flags: FlagsSection,
                   patterns: InputPatterns | None = None) -> np.ndarray:
    """Who of the suspects is reported: :func:`join_suspects`, then :func:`trim_suspects` (the
    samples outside that carry the pattern would lower the AUC that decides the trim), then
    with the raw inputs :func:`trim_by_pattern`, :func:`join_by_pattern` (from the members
    the trims kept), :func:`join_by_agreement`, with ``agreement_anywhere``
    :func:`join_anywhere` and, with the relevance maps too, :func:`join_where_looked` and,
    with ``aligned_agreement``, :func:`align_members`.

    The member flags come from ``flags`` (their one definition): ``trim_min_auc``,
    ``trim_fence_iqr``, ``pattern_trim_iqr``, ``agreement_trim_spread``, ``pattern_join_iqr``,
    ``pattern_join_gap``, ``agreement_spread``,
    ``peak_guard_iqr``, ``peak_window_doublings``, ``peak_carrier_gap``, ``peak_far_iqr``,
    ``peak_place_share``, ``peak_place_carriers``, and ``score_max_samples`` as the most
    members a template is taken from.

    A suspect promoted as carried (``carried``, :mod:`~spray.verdict.carried`: the samples
    that carry what a window cut's members agree on where the model looks, or the cluster
    that matched them) is a group by that agreement, not by a place: it goes through
    :func:`align_members` only (at the window cuts' window; on the whole class after a
    subsample), and the steps that read a hot spot at a place neither trim it nor take its
    members for another suspect."""
    carried = [c.id for c in clusters if c.carried and c.id in suspects]
    placed = [s for s in suspects if s not in carried]
    held = np.isin(labels, carried)
    before = labels
    labels = _placed_members(labels, clusters, placed, W, input_features, features, area,
                             flags, patterns)
    if held.any() and (labels[held] != before[held]).any():
        labels = np.array(labels, copy=True)
        labels[held] = before[held]
        resize_entries(clusters, labels)
    if not flags.aligned_agreement:
        return labels
    return align_members(labels, clusters, suspects, W, features, patterns,
                         flags.score_max_samples, flags.agreement_spread,
                         flags.pattern_join_iqr, flags.window_side, flags.peak_place_share,
                         flags.peak_place_carriers)


def _placed_members(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                    W: sp.csr_matrix, input_features: np.ndarray, features: np.ndarray | None,
                    area: float, flags: FlagsSection,
                    patterns: InputPatterns | None) -> np.ndarray:
    """:func:`decide_members`' steps before :func:`align_members`."""
    min_auc, fence = flags.trim_min_auc, flags.trim_fence_iqr
    labels = join_suspects(labels, clusters, suspects, input_features, features, area, min_auc,
                           fence)
    labels = trim_suspects(labels, clusters, suspects, W, input_features, features, area,
                           min_auc, fence)
    labels = trim_by_pattern(labels, clusters, suspects, W, features, area, fence,
                             flags.pattern_trim_iqr, patterns, flags.score_max_samples,
                             flags.agreement_trim_spread)
    labels = join_by_pattern(labels, clusters, suspects, features, area, fence, patterns,
                             flags.score_max_samples, flags.pattern_join_iqr,
                             flags.pattern_join_gap)
    labels = join_by_agreement(labels, clusters, suspects, features, area, patterns,
                               flags.score_max_samples, flags.agreement_spread,
                               flags.pattern_join_iqr)
    if flags.agreement_anywhere:
        labels = join_anywhere(labels, clusters, suspects, features, area, patterns,
                               flags.score_max_samples, flags.agreement_spread,
                               flags.pattern_join_iqr, flags.peak_place_carriers)
    labels = join_where_looked(labels, clusters, suspects, features, fence,
                               flags.peak_guard_iqr, patterns, flags.score_max_samples,
                               flags.peak_window_doublings, flags.peak_carrier_gap,
                               flags.peak_far_iqr, flags.window_side, flags.peak_place_share,
                               flags.peak_place_carriers)
    return labels


def align_members(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                  W: sp.csr_matrix, features: np.ndarray | None,
                  patterns: InputPatterns | None, max_template: int, spread: float | None,
                  reach: float | None, window_side: float | None = None,
                  place_share: float = 2.0, place_carriers: int = 1) -> np.ndarray:
    """Members by what they agree on where the model looks, found anywhere: the samples
    outside every suspect that carry it join, the members that do not leave.

    The distance is :meth:`~spray.verdict.patterns.InputPatterns.aligned_agreement` (a window
    cut's window at ``window_side`` of the maps' shorter side, as in
    :func:`join_where_looked`). Its guard is that of :func:`join_anywhere`
    (:func:`_close_carriers`, with the carriers — the better half of the members, whose windows
    made the template — as the members: their upper fence at most ``spread``, candidates fewer
    than the other samples outside, and those others' lower fence above the bar); a sample
    outside joins at a distance of at most ``spread`` (as close as each value had to be for the
    carriers to agree on it: the carriers' own distances are in-sample, and their fence is
    rounding noise for a pixel-identical stamp), and, when the members match at fixed places,
    only near such a place or where ``place_carriers`` − 1 other candidates match too
    (:func:`at_places`, ``place_share``: a look-alike of a flat stamp, an overexposed region,
    matches at a place of its own). When it passes and the suspect is a window cut
    (``cut_graph`` ``"windows"``) or carried (:mod:`~spray.verdict.carried`), the members
    farther from the template than that bar, the carriers' upper fence and the midpoint
    between the carriers' median distance and the others' (nearer the rest than the
    carriers) leave for the non-suspect cluster their edges in ``W`` weigh most — at
    most the half the template was not taken from. Other suspects are trimmed by what they
    agree on at their hot spot (:func:`trim_by_pattern`); a stamp at a fixed place aligns with
    what surrounds it there, and on the design rounds this trim took stamped members of a
    white square whose garments reach its corner out of such a suspect. A stamp
    that moves with the object (a colour patch) has one value per pixel and channel in every
    stamped image; the window cut that finds it holds a part of them (and, where the graph
    cut them together, look-alikes), and the cosine of :func:`join_where_looked` is diluted by
    the object around the stamp. Fills in ``aligned_joined`` and ``aligned_trimmed``; nothing
    moves without ``patterns`` with relevance maps, relevance features, ``spread`` or
    ``reach``.

    Returns
    -------
    numpy.ndarray
        The labels after the moves (a new array when anything moved).
    """
    if (patterns is None or patterns.relevance is None or features is None or not suspects
            or not spread or reach is None):
        return labels
    labels = np.array(labels, copy=True)
    for entry, mask in _suspect_groups(labels, clusters, suspects):
        entry.aligned_joined = entry.aligned_trimmed = 0
        outside = ~np.isin(labels, suspects)
        if not outside.any():
            continue
        share = window_side if entry.cut_graph == "windows" or entry.carried else None
        aligned = aligned_join(mask, outside, features, patterns, max_template, spread, reach,
                               share, place_share, place_carriers)
        if aligned is None:
            continue
        found, join = aligned
        # a window cut only: the other suspects are trimmed by what they agree on at their hot
        # spot (trim_by_pattern), and a stamp at a fixed place aligns with its surroundings
        leave = (_far_members(found.distance, mask, found.carriers, outside & ~join, reach,
                              spread)
                 if share is not None else np.empty(0, dtype=np.intp))
        keep = [c.id for c in clusters if c.id is not None and c.id not in suspects and c.size]
        if len(leave) and keep:
            labels[leave] = _nearest_cluster(W, leave, labels, keep)
            entry.aligned_trimmed = int(len(leave))
        labels[join] = entry.id
        entry.aligned_joined = int(join.sum())
    resize_entries(clusters, labels)
    return labels


def aligned_join(mask: np.ndarray, outside: np.ndarray, features: np.ndarray,
                 patterns: InputPatterns, max_template: int, spread: float, reach: float,
                 window_side: float | None, place_share: float, place_carriers: int
                 ) -> tuple[AlignedAgreement, np.ndarray] | None:
    """What the members ``mask`` agree on where the model looks
    (:meth:`~spray.verdict.patterns.InputPatterns.aligned_agreement`, the window at
    ``window_side`` or, None, at the members' hot region) and the samples ``outside`` that
    carry it: :func:`align_members`' guard and bar (:func:`_close_carriers` on the carriers,
    at ``spread``) and place rule (:func:`at_places`). None where the members agree on nothing
    or the guard refuses."""
    found = patterns.aligned_agreement(difference(features, mask), mask, spread, max_template,
                                       window_side)
    join = (None if found is None else
            _close_carriers(found.distance, found.carriers, outside, spread, reach, True,
                            bar_at_spread=True))
    if join is None:
        return None
    join = at_places(join, found.places, mask & np.isfinite(found.distance), found.side,
                     place_share, place_carriers)
    return found, join


def _far_members(d: np.ndarray, mask: np.ndarray, carriers: np.ndarray, rest: np.ndarray,
                 reach: float, spread: float) -> np.ndarray:
    """Indices of the members (``mask``, not ``carriers``) whose distance ``d`` lies above
    ``spread`` (the join's bar), the carriers' upper fence (Q3 + ``reach`` × IQR) and the
    midpoint between the carriers' median and that of the samples ``rest``; a NaN never
    leaves."""
    finite = np.isfinite(d)
    if not (carriers & finite).any() or not (rest & finite).any():
        return np.empty(0, dtype=np.intp)
    near, far = np.median(d[carriers & finite]), np.median(d[rest & finite])
    bar = max(spread, upper_fence(d[carriers & finite], reach), (near + far) / 2)
    return np.flatnonzero(mask & ~carriers & finite & (d > bar))


def join_where_looked(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                      features: np.ndarray | None, fence_iqr: float, guard_iqr: float,
                      patterns: InputPatterns | None, max_template: int,
                      doublings: int, gap: float, far_iqr: float | None,
                      window_side: float | None = None, place_share: float = 2.0,
                      place_carriers: int = 1) -> np.ndarray:
    """Move the samples outside every suspect that carry its members' pattern, taken where the
    model looks at the members and found anywhere in their own image, into that suspect.

    A sample joins when its best match
    (:meth:`~spray.verdict.patterns.InputPatterns.peak_correlation`) is at or above
    :func:`carrier_bar`: the lower fence of the members' (reach ``fence_iqr``) or, lower, the
    far fences at ``far_iqr`` (None: the members' fence). Its guard is the one of
    :func:`join_by_pattern` with a longer reach for the samples outside: that fence lies at or
    above their upper fence Q3 + ``guard_iqr`` × IQR (a match anywhere lifts every sample's
    correlation, and a weak template's members pass at equality). While the guard refuses (or
    the window's pattern is flat), the window's side is doubled, at most ``doublings`` times
    (0: one window): a hot spot of one cell (a sharp relevance peak, as a ViT's on one patch)
    gives a window smaller than the stamp, whose pattern a few pixels of any image match. With
    ``gap`` above 0 a refused guard still lets the candidates in when they stand apart
    (:func:`carriers_apart`; 0: never). Fills in ``peak_joined`` and, where a window passed,
    ``peak_window`` (its side in pixels as compared) and ``peak_guard`` (``"fences"`` or
    ``"apart"``, how it passed); updates sizes and fractions. Nothing moves (and nothing is
    read) without relevance maps in ``patterns``, relevance features or samples outside.
    A window cut (``cut_graph`` ``"windows"``) is a group by its peak windows, not by a place:
    its window starts at the peak windows' side (``window_side``, a share of the shorter side
    of the maps) instead of its hot region's, only at the members' peaks, and its guard passes
    too when fewer than half of the samples outside reach the members' fence (``"median"``:
    most carriers of a window cut are outside it, see :func:`_guard`).
    A suspect whose members match at fixed places takes a candidate in only at such a place
    (:func:`at_places`, with ``place_share`` and ``place_carriers``; above 1, the default:
    anywhere); ``peak_off_place`` counts the candidates it leaves out.

    Returns
    -------
    numpy.ndarray
        The labels after the moves (a new array when anything moved).
    """
    if patterns is None or patterns.relevance is None or features is None or not suspects:
        return labels

    def carriers(entry: ClusterEvidence, mask: np.ndarray,
                 outside: np.ndarray) -> np.ndarray | None:
        entry.peak_window = entry.peak_guard = entry.peak_at = entry.peak_off_place = None
        diff = difference(features, mask)
        share = window_side if entry.cut_graph == "windows" else None
        for at in ("peak",) if share is not None else ("peak", "region"):
            for step in range(int(doublings) + 1):
                found = patterns.peak_correlation(diff, mask, max_template, scale=2 ** step,
                                                  at=at, side_share=share, places=True)
                r = None if found is None else found.r
                # at the region: matched anywhere (the guard, the bar), and away from the
                # members' place (who joins)
                r, r_join = (r, r) if r is None or at == "peak" else (r[0], r[1])
                passed = None if r is None else _guard(r, mask, outside, fence_iqr, guard_iqr,
                                                       gap, median=share is not None)
                if passed is not None:
                    entry.peak_window = patterns.peak_window(diff, 2 ** step, share)
                    entry.peak_guard, entry.peak_at = passed[1], at
                    bar = carrier_bar(r, mask, outside, passed[0], far_iqr)
                    join = outside & np.isfinite(r_join) & (r_join >= bar)
                    kept = at_places(join, found.places, mask & np.isfinite(r_join),
                                     found.side, place_share, place_carriers)
                    entry.peak_off_place = int((join & ~kept).sum())
                    return kept
        return None

    return _join_carriers(labels, clusters, suspects, "peak_joined", carriers)


def at_places(join: np.ndarray, places: np.ndarray, members: np.ndarray, side: int,
              share: float, carriers: int) -> np.ndarray:
    """The candidates ``join`` that match at a place of the artefact, when its members match
    at fixed places; all of them otherwise.

    ``places`` are the samples' best-match places (top-left corners in blocks, ``(n, 2)``) and
    ``side`` the window's side in blocks. The members (``members``, those with a finite
    correlation) match at fixed places (:func:`fixed_places`) when at least ``share`` of them
    match at exactly the place of another member's best match and those coincidences are not
    chance; ``share`` above 1: never. Then a candidate stays only where its own best match
    lies within half a window of a place two members share, or within a quarter window (at
    least a block) of the best matches of at least ``carriers`` − 1 other candidates (another
    place of the artefact: a logo in another corner). A look-alike of a fixed-place artefact
    (an edge on the object like a frame's border, a bright fold like a square) matches at a
    place of its own, where no other candidate does. Measured in docs/verdict-eval.md,
    "Results: carriers at a place".
    """
    if share > 1 or not join.any():
        return join
    shared = fixed_places(places[members], share)
    if shared is None:
        return join
    candidates = np.flatnonzero(join)
    at = places[candidates]
    near_members = _within(at, shared, side // 2)
    near_others = _within(at, at, max(1, side // 4), counts=True) - 1 >= carriers - 1
    kept = np.zeros_like(join)
    kept[candidates[near_members | near_others]] = True
    return kept


#: members match at fixed places only when their pairs at one place are at least this many
#: times their pairs one block apart (along the axis with fewer): a pattern that moves has as
#: many of those as of these, whatever the number of members (on the design rounds fixed-place
#: artefacts 4–1 485 times, colour patches at most 2)
PLACE_EXCESS = 4


def fixed_places(places: np.ndarray, share: float) -> np.ndarray | None:
    """The places (``(k, 2)``) at least two of the members' best matches ``places`` share, when
    the members match at fixed places; None otherwise.

    Fixed: at least ``share`` of the members at a shared place, and their pairs at one place
    at least :data:`PLACE_EXCESS` times their pairs one block apart along the axis with fewer
    (at least once). Shared places alone are no proof: with more members than places a moving
    pattern covers (a large class, a disc that moves a few pixels, windows on blocks), most
    members share one by chance, but as many pairs then lie a block apart; a frame's members
    slide along a border and have pairs a block apart along it, not across it."""
    if len(places) < 2:
        return None
    here, counts = np.unique(places, axis=0, return_counts=True)
    if counts[counts >= 2].sum() < share * len(places):
        return None
    same = int((counts * (counts - 1) // 2).sum())
    apart = min(_pairs_apart(here, counts, (1, 0)), _pairs_apart(here, counts, (0, 1)))
    if same < PLACE_EXCESS * max(1, apart):
        return None
    return here[counts >= 2]


def _pairs_apart(here: np.ndarray, counts: np.ndarray, step: tuple[int, int]) -> int:
    """Pairs of members at places ``step`` apart (``here``: distinct places in the lexical
    order of :func:`numpy.unique`, ``counts`` members at each)."""
    low = here.min(axis=0)
    width = int(here[:, 1].max() - low[1]) + 2
    keys = (here[:, 0] - low[0]) * width + (here[:, 1] - low[1])
    wanted = keys + step[0] * width + step[1]
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    found = keys[at] == wanted
    return int((counts[found] * counts[at[found]]).sum())


def _within(points: np.ndarray, places: np.ndarray, reach: int,
            counts: bool = False) -> np.ndarray:
    """For each of ``points`` (``(m, 2)`` integers): whether any of ``places`` lies within
    ``reach`` in both coordinates, or with ``counts`` how many do; by a grid of the places'
    counts over their span and its box sums (no m × len(places) table)."""
    if not len(places) or not len(points):
        return np.zeros(len(points), dtype=np.intp if counts else bool)
    low = np.minimum(points.min(axis=0), places.min(axis=0)) - reach
    high = np.maximum(points.max(axis=0), places.max(axis=0)) + reach
    grid = np.zeros(tuple(high - low + 2), dtype=np.intp)
    np.add.at(grid, tuple((places - low + 1).T), 1)
    sums = grid.cumsum(axis=0).cumsum(axis=1)
    y, x = (points - low + 1).T
    y0, y1, x0, x1 = y - reach - 1, y + reach, x - reach - 1, x + reach
    total = sums[y1, x1] - sums[y0, x1] - sums[y1, x0] + sums[y0, x0]
    return total if counts else total > 0


def carrier_bar(r: np.ndarray, mask: np.ndarray, outside: np.ndarray, fence: float,
                far_iqr: float | None) -> float:
    """The correlation from which a sample ``outside`` joins, once the guard passed: the
    members' lower ``fence``, or lower, down to the far fences of both sides in Fisher z
    (artanh), back in correlation — above the rest's (Q3 + ``far_iqr`` × IQR of the samples
    outside below ``fence``) and within the members' (``mask``; Q1 − ``far_iqr`` × IQR).

    Carriers of the stamp elsewhere (another corner, another crop around it, another border
    beside it) match the members' template less crisply than the members at their own place,
    and fall below the members' fence while still far above the rest. Correlations crowd
    below 1 (a ViT's template matches every image at 0.7), so both spreads are measured where
    they are even: in z. Samples that match as well as the members are left out of the rest
    (they would lift its fence); members that all match alike (a one-pixel line, every one at
    1) leave no room below their fence for a look-alike. The members' fence with ``far_iqr``
    None, fewer than 4 of the rest or no finite member's correlation, and where the far fences
    reach it."""
    finite = np.isfinite(r)
    rest = r[outside & finite & (r < fence)]
    if far_iqr is None or len(rest) < 4 or not (mask & finite).any():
        return fence
    z = _fisher_z(rest)
    rest_far = upper_fence(z, far_iqr)
    members_far = lower_fence(_fisher_z(r[mask & finite]), far_iqr)
    if max(rest_far, members_far) >= _fisher_z(np.float64(fence)):
        return fence                     # also members all at 1, whose z the clip sets
    # strictly above every sample of the rest within its far fence (a rest of ties has the
    # fence at its own value, which tanh(artanh(·)) may round either way)
    within = float(max(np.tanh(rest_far), rest[z <= rest_far].max(initial=-1.0)))
    bar = max(float(np.nextafter(within, np.inf)), float(np.tanh(members_far)))
    return min(fence, bar)


def _fisher_z(r: np.ndarray) -> np.ndarray:
    """The Fisher z (artanh) of correlations, clipped to ±``_Z_CLIP`` first."""
    return np.arctanh(np.clip(r, -_Z_CLIP, _Z_CLIP))


def _guard(r: np.ndarray, mask: np.ndarray, outside: np.ndarray, reach: float,
           outside_reach: float | None = None, gap: float = 0.0,
           median: bool = False) -> tuple[float, str] | None:
    """The lower fence of the members' ``r`` (``mask``, at ``reach``) and how the guard let it
    pass: ``"fences"`` when it lies at or above the upper fence of the samples ``outside`` (at
    ``outside_reach``, by default ``reach``), ``"apart"`` when it does not but the candidates
    stand apart from the rest (:func:`carriers_apart`, with ``gap`` above 0), ``"median"``
    (with ``median``) when neither but fewer than half of the samples outside reach it. None
    when it refuses (the members share no pattern that sets them apart) or no finite value is
    left on either side. NaNs (an input with a NaN) are left out: they must not disable the
    guard.

    ``median`` is for a window cut, a core of the stamped samples cut from the peak windows'
    graph (``cut_graph`` ``"windows"``): most carriers are still outside, and they lift the
    upper fence of the samples outside above any member's (on the design draws of a colour
    patch, 21–38 % of the samples outside carried it). Its flag already says that the members'
    windows are a group the rest's are not; the guard keeps a pattern most of the class
    carries out."""
    finite = np.isfinite(r)
    if not (mask & finite).any() or not (outside & finite).any():
        return None
    fence = lower_fence(r[mask & finite], reach)
    reach_out = reach if outside_reach is None else outside_reach
    if fence >= upper_fence(r[outside & finite], reach_out):
        return fence, "fences"
    if carriers_apart(r[outside & finite], fence, reach_out, gap):
        return fence, "apart"
    if median and 2 * int((r[outside & finite] >= fence).sum()) < int((outside & finite).sum()):
        return fence, "median"
    return None


def _guarded_join(r: np.ndarray, mask: np.ndarray, outside: np.ndarray, reach: float,
                  outside_reach: float | None = None, gap: float = 0.0) -> np.ndarray | None:
    """The samples ``outside`` whose ``r`` is at or above the lower fence of the members'
    (``mask``, at ``reach``); None when :func:`_guard` refuses."""
    passed = _guard(r, mask, outside, reach, outside_reach, gap)
    return None if passed is None else outside & np.isfinite(r) & (r >= passed[0])


def carriers_apart(r: np.ndarray, fence: float, reach: float, gap: float) -> bool:
    """Whether the samples outside at or above ``fence`` (the candidates) stand apart from the
    rest as a group of their own: fewer than half of them, the rest's upper fence (Q3 +
    ``reach`` × IQR) at or below ``fence``, and fewer of the rest within ``gap`` below the fence
    than half the candidates (a gap in the density under the fence, where a pattern the rest
    shares by degrees has its bulk). Carriers outside lift the upper fence of all samples
    outside; they are left out of it here. False with ``gap`` 0."""
    above = r >= fence
    rest = r[~above]
    if gap <= 0 or 2 * above.sum() >= len(r) or len(rest) < 4:
        return False
    near = int((rest >= fence - gap).sum())
    return upper_fence(rest, reach) <= fence and 2 * near < above.sum()


def apart_bar(r: np.ndarray, mask: np.ndarray, outside: np.ndarray, reach: float,
              gap: float, floor_reach: float | None = None) -> float | None:
    """The lowest correlation from the members' lower fence (``mask``, Q1 − ``floor_reach`` ×
    IQR; None: ``reach``) up to their median at which the samples ``outside`` at or above it
    stand apart from the rest (:func:`carriers_apart` at ``reach`` and ``gap``), or None (also
    with ``gap`` 0).

    For a suspect that holds a part of the stamped samples only: the carriers outside are many
    then, they lift the outside's upper fence above the members' lower fence and the guard of
    :func:`join_by_pattern` refuses; and members whose stamp barely shows (a half-transparent
    stamp over a background of its own colour) drag their lower fence into the rest's bulk.
    The candidates stand apart at a bar between the two: the correlations outside are a group
    of carriers above a gap and the rest below it. Every value outside in that range is tried
    as the bar (sorted once; the counts and the rest's quartiles of every bar at once)."""
    finite = np.isfinite(r)
    members = r[mask & finite]
    if not len(members):
        return None
    low = lower_fence(members, reach if floor_reach is None else floor_reach)
    return lowest_apart(r[outside & finite], low, float(np.median(members)), reach, gap)


def lowest_apart(r: np.ndarray, low: float, high: float, reach: float, gap: float
                 ) -> float | None:
    """The lowest value of ``r`` (finite) from ``low`` up to ``high`` at which the values at
    or above it stand apart from the rest (:func:`carriers_apart` at ``reach`` and ``gap``),
    or None (also with ``gap`` 0). Every value in that range is tried as the bar (sorted once;
    the counts and the rest's quartiles of every bar at once)."""
    rest = np.sort(r)
    if gap <= 0 or len(rest) < 4:
        return None
    bars = np.unique(rest[(rest >= low) & (rest <= high)])
    below = np.searchsorted(rest, bars, side="left")          # the rest under each bar
    above = len(rest) - below
    near = below - np.searchsorted(rest, bars - gap, side="left")
    ok = (2 * above < len(rest)) & (below >= 4) & (2 * near < above)
    bars, below = bars[ok], below[ok]
    # the rest's fence below each bar, read off the sorted values (linear interpolation, as
    # numpy's percentile up to rounding), sifts the bars; carriers_apart, the one definition,
    # decides each one left (a tie in the last digit decides as there)
    q1, q3 = _prefix_quantile(rest, below, 0.25), _prefix_quantile(rest, below, 0.75)
    close = q3 + reach * (q3 - q1) <= bars + 1e-9 * (1.0 + np.abs(bars))
    return next((float(bar) for bar in bars[close] if carriers_apart(rest, bar, reach, gap)),
                None)


def _prefix_quantile(values: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile of each prefix ``values[:k]`` of sorted ``values``, ``k`` in
    ``counts`` (each at least 1), by linear interpolation."""
    at = (counts - 1) * q
    i = np.floor(at).astype(np.intp)
    j = np.minimum(i + 1, counts - 1)
    return values[i] + (at - i) * (values[j] - values[i])


def _join_carriers(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                   field: str, carriers) -> np.ndarray:
    """For each suspect in turn, move the samples outside every suspect that
    ``carriers(entry, members, outside)`` returns (a mask, or None for none) into it; its count
    goes to the entry's ``field``. Sizes and fractions are updated."""
    labels = np.array(labels, copy=True)
    for entry, mask in _suspect_groups(labels, clusters, suspects):
        setattr(entry, field, 0)
        outside = ~np.isin(labels, suspects)
        if not outside.any():
            continue
        join = carriers(entry, mask, outside)
        if join is None:
            continue
        setattr(entry, field, int(join.sum()))
        labels[join] = entry.id
    resize_entries(clusters, labels)
    return labels


def trim_by_pattern(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                    W: sp.csr_matrix, features: np.ndarray | None, area: float,
                    fence_iqr: float, outside_iqr: float | None,
                    patterns: InputPatterns | None, max_template: int,
                    spread: float | None = None) -> np.ndarray:
    """Move the members of every suspect whose raw inputs at its hot spot do not carry its
    members' pattern to the non-suspect cluster their edges in ``W`` weigh most.

    With the pattern correlations of :meth:`~spray.verdict.patterns.InputPatterns.correlation`
    (the template from at most ``max_template`` members), the *carriers* are the members at
    or above the upper fence (Q3 + ``outside_iqr`` × IQR) of the samples outside every
    suspect. When they are at least half the members, the others that also lie below the
    carriers' lower fence (Q1 − ``fence_iqr`` × IQR) and below the midpoint between the
    outside's median and the carriers' leave (:func:`pattern_outliers`; stamped samples outside
    lift the outside's upper fence, and without the midpoint a ViT's weakest stamped members
    left). A suspect the relevance graph cut with look-alikes (a quarter of its members
    without the stamp) has a lower fence below the outside's upper fence, and the joins after
    this step take no one in; the trim of :func:`trim_suspects` needs an AUC a stamp over
    photographs does not reach with pooled inputs. Fills in ``pattern_trimmed`` and updates
    sizes and fractions. Nothing moves with ``outside_iqr`` None, without ``patterns`` or
    relevance features, with ``area`` 0, or when every cluster is a suspect.

    With ``spread`` (``agreement_trim_spread``), a suspect whose members agree on something
    there (:meth:`~spray.verdict.patterns.InputPatterns.agreement` at that spread) is trimmed
    by that distance instead (:func:`agreement_outliers`; not a window cut, whose pattern need
    not be at one place): a half-transparent stamp over a dark
    background has little contrast for the centred correlation (stamped members of fine
    stripes fell to the outside's correlations and left), yet its pixels are still nearer the
    members' values than the photographs of samples without it.

    Returns
    -------
    numpy.ndarray
        The labels after the moves (a new array when anything moved).
    """
    keep = [c.id for c in clusters if c.id is not None and c.id not in suspects and c.size]
    if outside_iqr is None or patterns is None or features is None or area <= 0 or not keep:
        return labels
    labels = np.array(labels, copy=True)
    for entry, mask in _suspect_groups(labels, clusters, suspects):
        entry.pattern_trimmed = 0
        outside = ~np.isin(labels, suspects)
        if not outside.any():
            continue
        cells = top_cells(np.abs(difference(features, mask)), area)
        # a window cut's pattern need not be at one place (its score has no place terms):
        # its members are not trimmed by what they agree on at one
        by_place = spread is not None and entry.cut_graph != "windows"
        d = patterns.agreement(cells, mask, spread, max_template) if by_place else None
        if d is not None:
            out = agreement_outliers(d, mask, outside)
        else:
            r = patterns.correlation(cells, mask, max_template)
            if r is None:
                continue
            out = pattern_outliers(r, mask, outside, fence_iqr, outside_iqr)
        entry.pattern_trimmed = int(len(out))
        if len(out):
            labels[out] = _nearest_cluster(W, out, labels, keep)
    resize_entries(clusters, labels)
    return labels


def agreement_outliers(d: np.ndarray, mask: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Indices of the members (``mask``) farther from what the members agree on (distance
    ``d``) than the midpoint between the members' median distance and that of the samples
    ``outside``: nearer the outside's than the members' typical value. None leave unless the
    members' median lies below the outside's and those that stay are at least half the
    members. A NaN is never left."""
    finite = np.isfinite(d)
    none = np.empty(0, dtype=np.intp)
    if not (mask & finite).any() or not (outside & finite).any():
        return none
    inside, rest = float(np.median(d[mask & finite])), float(np.median(d[outside & finite]))
    if not inside < rest:
        return none
    out = mask & finite & (d > (inside + rest) / 2)
    return none if 2 * out.sum() > mask.sum() else np.flatnonzero(out)


def pattern_outliers(r: np.ndarray, mask: np.ndarray, outside: np.ndarray, reach: float,
                     outside_reach: float) -> np.ndarray:
    """Indices of the members (``mask``) that do not carry the pattern ``r`` measures: below
    the upper fence of the samples ``outside`` (at ``outside_reach``), below the lower fence
    of the members above it, the carriers (at ``reach``), and below the midpoint between the
    medians of the outside and of the carriers (closer to the rest than to the carriers);
    none unless the carriers are at least half the members. A NaN (an input with a NaN) is
    neither a carrier nor left."""
    finite = np.isfinite(r)
    none = np.empty(0, dtype=np.intp)
    if not (outside & finite).any():
        return none
    carriers = mask & finite & (r >= upper_fence(r[outside & finite], outside_reach))
    if not carriers.any() or 2 * carriers.sum() < mask.sum():
        return none
    below = np.minimum(lower_fence(r[carriers], reach),
                       (np.median(r[outside & finite]) + np.median(r[carriers])) / 2)
    return np.flatnonzero(mask & ~carriers & finite & (r < below))


def join_by_pattern(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                    features: np.ndarray | None, area: float, fence_iqr: float,
                    patterns: InputPatterns | None, max_template: int,
                    outside_iqr: float | None = None, gap: float = 0.0) -> np.ndarray:
    """Move the samples outside every suspect whose raw inputs at its hot spot carry its
    members' pattern as closely as the members do into that suspect.

    A sample joins when its pattern correlation
    (:meth:`~spray.verdict.patterns.InputPatterns.correlation`, template from at most
    ``max_template`` members) is at or above the lower fence (Q1 − ``fence_iqr`` × IQR) of the
    members' correlations. Only for a suspect whose pattern sets its members apart:
    that lower fence must lie at or above the upper fence (Q3 + ``fence_iqr`` × IQR) of the
    correlations of the samples outside every suspect (members without a common pattern
    correlate about as little as the rest, and their fence falls below 0). With
    ``outside_iqr``, a sample joins from the lower :func:`join_bar` instead (down to the
    outside's upper fence at that reach, or the midpoint between the outside's median and the
    members'). With ``gap`` above 0 (``pattern_join_gap``), a guard that refuses still lets
    in the samples outside that stand apart from the rest above a bar between the members'
    lower fence (at ``outside_iqr`` when given, the reach the join's bar may go down to) and
    their median (:func:`apart_bar`; the bar is then that one): a suspect that holds a part of
    a half-transparent stamp's carriers. Fills in ``pattern_joined`` and
    updates sizes and fractions. Nothing moves (and nothing is read) without ``patterns``,
    relevance features, with ``area`` 0 or without samples outside.

    Returns
    -------
    numpy.ndarray
        The labels after the moves (a new array when anything moved).
    """
    if patterns is None or features is None or area <= 0 or not suspects:
        return labels

    def carriers(entry: ClusterEvidence, mask: np.ndarray,
                 outside: np.ndarray) -> np.ndarray | None:
        cells = top_cells(np.abs(difference(features, mask)), area)
        r = patterns.correlation(cells, mask, max_template)
        if r is None:
            return None
        passed = _guard(r, mask, outside, fence_iqr)
        if passed is None:
            bar = apart_bar(r, mask, outside, fence_iqr, gap, outside_iqr)
        elif outside_iqr is None:
            bar = passed[0]
        else:
            bar = join_bar(r, mask, outside, passed[0], outside_iqr)
        return None if bar is None else outside & np.isfinite(r) & (r >= bar)

    return _join_carriers(labels, clusters, suspects, "pattern_joined", carriers)


def join_by_agreement(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                      features: np.ndarray | None, area: float, patterns: InputPatterns | None,
                      max_template: int, spread: float | None,
                      reach: float | None) -> np.ndarray:
    """Move the samples outside every suspect that carry, pixel for pixel, what its members
    agree on at its hot spot into that suspect.

    The distance is :meth:`~spray.verdict.patterns.InputPatterns.agreement` (pixels where the
    members' deviation is at most ``spread`` times the outside's). The candidates are the
    samples outside at or below the upper fence (Q3 + ``reach`` × IQR) of the members'
    distances; they join when that fence is at most ``spread`` (the members are as close to
    their values there as a whole as each pixel had to be: an opaque stamp, not a
    half-transparent one whose members vary with the background and whose values a bright
    background matches — the correlation of :func:`join_by_pattern` reads those by their
    shape), when they are fewer than the members, and when that fence lies below the lower
    fence (Q1 − ``reach`` × IQR) of the other samples outside: the members' pattern sets them
    apart, and the candidates are no tail of a pattern the class shares by degrees. A stamp
    the relevance graph split (stamped samples whose relevance lies on the object) is joined
    whatever their relevance, and whatever the other pixels of the hot spot show (the
    correlation of :func:`join_by_pattern` is diluted by them, and a flat stamp has no
    centred pattern at all). Fills in ``agreed_joined``; nothing moves without ``patterns``,
    relevance features, ``spread`` or ``reach``, or with ``area`` 0.

    Returns
    -------
    numpy.ndarray
        The labels after the moves (a new array when anything moved).
    """
    def carriers(cells: np.ndarray, mask: np.ndarray, outside: np.ndarray):
        d = patterns.agreement(cells, mask, spread, max_template)
        return None if d is None else _close_carriers(d, mask, outside, spread, reach, False)

    return _join_agreeing(labels, clusters, suspects, features, area, patterns, spread, reach,
                          "agreed_joined", carriers)


def _close_carriers(d: np.ndarray, mask: np.ndarray, outside: np.ndarray, spread: float,
                    reach: float, beyond_members: bool,
                    bar_at_spread: bool = False) -> np.ndarray | None:
    """The samples ``outside`` whose distance ``d`` to what the members agree on lies at or
    below the members' upper fence (Q3 + ``reach`` × IQR; with ``bar_at_spread``, at or below
    ``spread``), or None when that fence exceeds ``spread``, fewer than 4 others are left, the
    candidates are as many as the members (as many as the others, with ``beyond_members``) or
    the others' lower fence is not above the bar (:func:`join_by_agreement`)."""
    finite = np.isfinite(d)
    if not (mask & finite).any():
        return None
    fence = upper_fence(d[mask & finite], reach)
    bar = spread if bar_at_spread else fence
    join = outside & finite & (d <= bar)
    rest = outside & finite & ~join
    most = rest.sum() if beyond_members else mask.sum()
    if (fence > spread or rest.sum() < 4 or join.sum() >= most
            or lower_fence(d[rest], reach) <= bar):
        return None
    return join


def join_anywhere(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                  features: np.ndarray | None, area: float, patterns: InputPatterns | None,
                  max_template: int, spread: float | None, reach: float | None,
                  least: int) -> np.ndarray:
    """Move the samples outside every suspect that carry what its members agree on at its hot
    spot, *somewhere else* in their images, into that suspect (``agreement_anywhere``).

    A logo in one of four corners makes a suspect of one corner: what its members agree on
    there (the logo's pixels, not the photograph around them) is the template, and every
    sample's distance is that of its best place
    (:meth:`~spray.verdict.patterns.InputPatterns.agreement_anywhere`). The candidates, the
    bar and the guard are those of :func:`join_by_agreement` (at or below the members' upper
    fence, which is at most ``spread``; below the lower fence of the other samples outside;
    :func:`_close_carriers`), except that the candidates may outnumber the members (three
    corners besides theirs), not the other samples outside; and a candidate joins only at a
    place (its best, to the pixel) that at least ``least`` candidates share, or at the
    members' own while fewer than the members match there (the agreement step's guard: an
    artefact sits at a few fixed places; a look-alike of a flat stamp, a bright region, at a
    place of its own). Fills in ``anywhere_joined``; nothing moves without ``patterns``,
    relevance features, ``spread`` or ``reach``, or with ``area`` 0.

    Returns
    -------
    numpy.ndarray
        The labels after the moves (a new array when anything moved).
    """
    def carriers(cells: np.ndarray, mask: np.ndarray, outside: np.ndarray):
        found = patterns.agreement_anywhere(cells, mask, spread, max_template)
        join = (None if found is None else
                _close_carriers(found.distance, mask, outside, spread, reach, True))
        return None if join is None else _at_shared_places(join, found, mask, least)

    return _join_agreeing(labels, clusters, suspects, features, area, patterns, spread, reach,
                          "anywhere_joined", carriers)


def _join_agreeing(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                   features: np.ndarray | None, area: float, patterns: InputPatterns | None,
                   spread: float | None, reach: float | None, field: str,
                   carriers) -> np.ndarray:
    """:func:`_join_carriers` of ``carriers(cells, members, outside)`` at each suspect's hot
    spot (its ``area`` share of feature cells), for the steps by what the members agree on;
    nothing moves without ``patterns``, relevance features, ``spread`` or ``reach``, or with
    ``area`` 0."""
    if (patterns is None or features is None or area <= 0 or not suspects or not spread
            or reach is None):
        return labels

    def at_hot_spot(entry: ClusterEvidence, mask: np.ndarray,
                    outside: np.ndarray) -> np.ndarray | None:
        return carriers(top_cells(np.abs(difference(features, mask)), area), mask, outside)

    return _join_carriers(labels, clusters, suspects, field, at_hot_spot)


def _at_shared_places(join: np.ndarray, found, mask: np.ndarray, least: int) -> np.ndarray:
    """The candidates ``join`` whose best place (:class:`~spray.verdict.patterns.AgreedPlaces`
    ``found``) at least ``least`` of them share, or the members' own while fewer than the
    members match there (the agreement step's guard)."""
    places = found.places
    spots, counts = np.unique(places[join], axis=0, return_counts=True)
    at = {tuple(p) for p, k in zip(spots.tolist(), counts) if k >= least}
    home = join & (places == np.asarray(found.home)).all(axis=1)
    if home.sum() < mask.sum():
        at.add(found.home)
    else:
        at.discard(found.home)
    return join & np.array([tuple(p) in at for p in places.tolist()])


def join_bar(r: np.ndarray, mask: np.ndarray, outside: np.ndarray, fence: float,
             outside_reach: float) -> float:
    """The correlation from which a sample outside joins once the guard has passed: the
    members' lower ``fence``, or lower, down to the larger of the outside's upper fence (at
    ``outside_reach``) and the midpoint between the outside's median and the members' (a
    sample closer to the members than to the rest, and beyond the rest's bulk). Members that
    all carry a crisp pattern have a fence above stamped samples outside whose stamp is
    fainter (text over bright backgrounds)."""
    finite = np.isfinite(r)
    rest, members = r[outside & finite], r[mask & finite]
    return min(fence, max(upper_fence(rest, outside_reach),
                          (float(np.median(rest)) + float(np.median(members))) / 2))


def join_suspects(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int],
                  input_features: np.ndarray, features: np.ndarray | None, area: float,
                  min_auc: float, fence_iqr: float) -> np.ndarray:
    """Move the samples outside every suspect that carry a suspect's hot-spot pattern, and
    whose relevance there is like its members', into that suspect.

    A sample joins when its inputs and its relevance at the hot spot, each projected onto the
    line from the rest's median to the group's (:func:`~spray.verdict.evidence.hot_spot_side`),
    are on the group's side and at or above the lower fence of the core's projections. Only
    for a suspect whose core holds at least half the group and whose inputs tell the core from
    the samples outside that the model does *not* look at that way with ROC AUC at least
    ``min_auc`` (the samples that may join are left out of that test: they would lower it).
    Fills in ``joined`` and updates sizes and fractions. Nothing moves without relevance
    features or with ``area`` 0.

    Returns
    -------
    numpy.ndarray
        The labels after the moves (a new array when anything moved).
    """
    if features is None or area <= 0 or not suspects:
        return labels
    labels = np.array(labels, copy=True)
    for entry, mask in _suspect_groups(labels, clusters, suspects):
        side = hot_spot_side(input_features, features, mask, area)
        look = hot_spot_side(features, features, mask, area)
        if side is None or look is None:
            continue
        core = mask & (side > 0)
        entry.joined = 0
        if 2 * core.sum() < mask.sum():
            continue
        alike = ~mask & _inside(look, core, fence_iqr)     # the model looks there the same way
        if core_auc(side, mask | alike, core) < min_auc:
            continue
        join = ~np.isin(labels, suspects) & alike & _inside(side, core, fence_iqr)
        entry.joined = int(join.sum())
        labels[join] = entry.id
    resize_entries(clusters, labels)
    return labels


def _suspect_groups(labels: np.ndarray, clusters: list[ClusterEvidence], suspects: list[int]):
    """Each suspect's entry and members (read from ``labels`` as they are when it comes up),
    leaving out a suspect with no members or with every sample of the class."""
    for entry in (c for c in clusters if c.id in suspects):
        mask = labels == entry.id
        if mask.any() and not mask.all():
            yield entry, mask


def _inside(side: np.ndarray, core: np.ndarray, reach: float) -> np.ndarray:
    """On the group's side (above 0) and at or above the lower fence of the core's values."""
    return (side > 0) & (side >= lower_fence(side[core], reach))


def _nearest_cluster(W: sp.csr_matrix, rows: np.ndarray, labels: np.ndarray,
                     keep: list[int]) -> np.ndarray:
    """For each of ``rows``, the cluster of ``keep`` its edges in ``W`` weigh most (rows without
    such edges: the largest of them)."""
    order = np.sort(np.asarray(keep))
    column = np.full(len(labels), -1)
    for j, c in enumerate(order):
        column[labels == c] = j
    inside = np.flatnonzero(column >= 0)
    onehot = sp.csr_matrix((np.ones(len(inside)), (inside, column[inside])),
                           shape=(len(labels), len(order)))
    weight = np.asarray((W[rows] @ onehot).todense(), dtype=np.float64)
    sizes = np.bincount(column[inside], minlength=len(order)).astype(np.float64)
    best = np.where(weight.max(axis=1) > 0, np.argmax(weight, axis=1), np.argmax(sizes))
    return order[best]
