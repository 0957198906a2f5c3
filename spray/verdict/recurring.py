"""Candidates by a pattern that recurs where the model looks, for the transplant test.

A pixel-identical stamp at one of several places (a logo in one of four corners) is separated
by no graph of the class as one group: the relevance graph and the peak windows' graph cut it
one corner at a time, with look-alikes, and the carried candidates
(:mod:`~spray.verdict.carried`) take the agreement of a cut's members, which is not the stamp
when most of them do not carry it. On the four missed draws of a corner logo on a garment CNN
(10 % of a class, reliance 0.18) the window cuts held 11–19 % stamped samples, while the
stamped group itself agreed exactly (every stamped sample at aligned distance 0) and the model
followed its place (docs/verdict.md, "Candidates by a pattern that recurs").

What such a stamp does show is recurrence: a stamped sample whose relevance peaks on the stamp
finds it, at any place, in every other stamped image
(:meth:`~spray.verdict.patterns.InputPatterns.recurrence`). Of ``recurrence_samples`` samples
of the class (evenly spaced), each pair's similarity is the better of the two ways round (the
one whose window holds the stamp finds it in the other, wherever the other's relevance peaks).
A pair's similarity counts above the two samples' usual (median) similarity, and a sample's
*recurrence* is the mean of its ``2 · HALF_MIN − 1`` highest (a flat or common pattern, which
many windows match about as well as its best, recurs little). The seeds, most recurring first,
each with those most similar samples and none already in an earlier seed's group, are at most
``recurrence_seeds`` groups; each is handed to :func:`~spray.verdict.carried.carried_group` as
a cut would be: the samples of the class that carry what the group's members agree on where the
model looks. A group is only a candidate: the transplant test decides
(:func:`spray.verdict.score._follow_carried`).

A stamp blended over the image (fine stripes at 70 %: ``0.3 · photograph + 0.7 · colour`` on
the lines) recurs by its lines, not by its values, and the samples carrying it agree on no value
within ``agreement_spread`` (their pixels follow the photograph under them): no carried group
forms. With ``recurring_detail`` the seeds are found again in the images' *fine detail* (each
pixel less its 3 × 3 neighbourhood's mean: the photograph's shading goes, the lines stay) and
each seed group is grown by the cosine with its pattern there (:func:`detail_groups`); those
groups are tested at their place, where their pieces must be alike as for any candidate below
the threshold (docs/verdict.md, "Candidates by a recurring fine detail").
"""

from __future__ import annotations

import logging

import numpy as np

from spray.config.presets import FlagsSection
from spray.verdict.carried import distinct_candidates
from spray.verdict.members import fixed_places, lowest_apart
from spray.verdict.patterns import HALF_MIN, InputPatterns, PeakMatches, _evenly
from spray.verdict.result import ClusterEvidence

log = logging.getLogger(__name__)

#: a seed group's size: the seed and its most similar samples, so that its better half (the
#: carriers of :meth:`~spray.verdict.patterns.InputPatterns.aligned_agreement`) holds
#: ``HALF_MIN`` samples
SEED_SIZE = 2 * HALF_MIN


def recurring_seeds(similar: np.ndarray, size: int, most: int) -> list[np.ndarray]:
    """Groups of ``size`` samples around the most recurring ones.

    ``similar`` ``(m, m)``: the cosines of :meth:`~spray.verdict.patterns.InputPatterns.
    recurrence` (NaN where not measured). Each pair counts the better of its two cosines
    (a NaN pair −1), less the mean of the two samples' median similarity to the others: how
    much more alike the pair is than either usually is (a flat or common pattern matches
    every image about as well as its best). A sample's recurrence is the mean of its
    ``size − 1`` highest such values. Seeds go most recurring first, skipping a sample
    already in a group; each group is the seed and those ``size − 1`` samples, as indices
    into ``similar``'s rows. At most ``most`` groups; none when fewer than
    ``size`` samples are compared or no pair was measured."""
    m = len(similar)
    if m < size or most <= 0 or not np.isfinite(similar).any():
        return []
    both = np.fmax(similar, similar.T)
    both = np.where(np.isnan(both), -1.0, both)
    usual = np.median(both[~np.eye(m, dtype=bool)].reshape(m, m - 1), axis=1)
    above = both - (usual[:, None] + usual[None, :]) / 2
    np.fill_diagonal(above, -np.inf)
    nearest = np.argsort(-above, axis=1, kind="stable")[:, :size - 1]
    recurrence = np.take_along_axis(above, nearest, axis=1).mean(axis=1)
    used = np.zeros(m, dtype=bool)
    groups: list[np.ndarray] = []
    for seed in np.argsort(-recurrence, kind="stable"):
        if used[seed]:
            continue
        group = np.concatenate([[seed], nearest[seed]])
        used[group] = True
        groups.append(group)
        if len(groups) == most:
            break
    return groups


def recurring_cuts(patterns: InputPatterns, params: FlagsSection) -> list[ClusterEvidence]:
    """The seed groups of :func:`recurring_seeds` among ``recurrence_samples`` samples of the
    class (evenly spaced; windows at ``window_side``), as cuts of the class (``cut_graph``
    ``"windows"``, no eigenvector) for :func:`~spray.verdict.carried.carried_groups`; none
    without relevance maps."""
    cuts = [ClusterEvidence.of(mask, cut_graph="windows")
             for mask in _seed_masks(patterns, params)]
    log.debug("recurring seeds: %d groups of %d", len(cuts), SEED_SIZE)
    return cuts


def _seed_masks(patterns: InputPatterns, params: FlagsSection) -> list[np.ndarray]:
    """The seed groups of :func:`recurring_seeds` among ``recurrence_samples`` samples of
    ``patterns``' class (evenly spaced; windows at ``window_side``), as masks of the class;
    none without relevance maps."""
    rows = _evenly(np.arange(patterns.n), params.recurrence_samples)
    similar = patterns.recurrence(rows, params.window_side)
    if similar is None:
        return []
    masks = []
    for group in recurring_seeds(similar, SEED_SIZE, params.recurrence_seeds):
        mask = np.zeros(patterns.n, dtype=bool)
        mask[rows[group]] = True
        masks.append(mask)
    return masks


def detail_groups(patterns: InputPatterns, params: FlagsSection) -> list[ClusterEvidence]:
    """Candidates by a fine detail that recurs where the model looks: a stamp blended over
    the image (fine stripes at 70 %), whose pixel values follow what lies under it, so that
    what its samples agree on value by value (:func:`~spray.verdict.carried.carried_group`)
    is not the stamp.

    The seed groups of :func:`recurring_seeds` in the images' fine detail
    (:meth:`~spray.verdict.patterns.InputPatterns.detail`: a photograph's smooth shading
    is gone there, the stripes' lines stay), each grown by :func:`_grown`: the samples whose
    cosine with the seeds' pattern where the model looks stands apart from the rest's join
    them. Each group with where every sample of the class carries the pattern
    (``carried_at``: a window of twice ``window_side`` around it, what the stamp is seen with):
    those of a candidate's size, each once (``sweep_min_jaccard``), largest first (a seed
    group of samples over one kind of photograph grows less far than one over several)."""
    if params.pattern_join_gap <= 0:          # no bar stands apart without a gap
        return []
    detail = patterns.detail()
    out: list[ClusterEvidence] = []
    for seeds in _seed_masks(detail, params):
        grown = _grown(detail, seeds, params)
        if grown is None:
            continue
        mask, places, found = grown
        entry = ClusterEvidence.of(mask, cut_graph="windows")
        side = found.side * found.factor
        entry.carried_at = (places * found.factor - side // 2, 2 * side)
        out.append(entry)
    out = distinct_candidates(out, patterns.n, params)
    log.debug("recurring fine detail: %d groups", len(out))
    return out


def _grown(detail: InputPatterns, seeds: np.ndarray, params: FlagsSection
           ) -> tuple[np.ndarray, np.ndarray, PeakMatches] | None:
    """The group of :func:`detail_groups` grown from ``seeds``, where each sample of the
    class carries their pattern (``(n, 2)`` top-left corners in blocks) and the matches.

    Every sample's best cosine anywhere with the seeds' pattern where the model looks
    (:meth:`~spray.verdict.patterns.InputPatterns.peak_correlation` at ``window_side``); where
    the seeds match at fixed places (:func:`~spray.verdict.members.fixed_places` at
    ``peak_place_share``), the absolute cosine there instead
    (:meth:`~spray.verdict.patterns.InputPatterns.place_correlation`: a photograph's best
    window anywhere comes close by chance) and every sample's place is the seeds' most shared
    one. The samples outside at or above the lowest bar up to the seeds' median at which they
    stand apart from the rest (:func:`~spray.verdict.members.lowest_apart` at
    ``trim_fence_iqr`` and ``pattern_join_gap``) join; None where there is no such bar."""
    found = detail.peak_correlation(None, seeds, params.score_max_samples, places=True,
                                    side_share=params.window_side)
    if found is None:
        return None
    r, places = found.r, found.places
    fixed = fixed_places(found.places[seeds], params.peak_place_share)
    if fixed is not None:          # a stamp at fixed places: compared and moved there
        r = detail.place_correlation(seeds, found, fixed, params.score_max_samples,
                                      params.window_side)
        shared = [(found.places[seeds] == p).all(axis=1).sum() for p in fixed]
        places = np.broadcast_to(fixed[int(np.argmax(shared))], found.places.shape)
    inside = r[seeds & np.isfinite(r)]
    outside = ~seeds & np.isfinite(r)
    bar = None if not len(inside) else lowest_apart(
        r[outside], -np.inf, float(np.median(inside)), params.trim_fence_iqr,
        params.pattern_join_gap)
    return None if bar is None else (seeds | (outside & (r >= bar)), places, found)
