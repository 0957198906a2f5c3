"""Candidates by what their members carry where the model looks, for the transplant test.

The spectral rule scores a group by how far a graph of the class separates it. A colour patch
at a random place on the object (an ISIC-like mark) is separated only in part: the peak
windows' graph cuts a share of the stamped samples, often with look-alikes, and on some models
no candidate then scores within ``transplant_reach`` of the threshold, so the transplant test
of candidates below it (:func:`spray.verdict.score._follow_near`) is never asked. Yet what
such a cut's members agree on where the model looks
(:meth:`~spray.verdict.patterns.InputPatterns.aligned_agreement`) is the stamp itself: on the
design draws of a merged-garment CNN every stamped sample lay at distance 0 from it, wherever
the stamp was, and the other samples' 5th percentile at 0.54–0.62, while the class scored
−5.7 to −1.3 (docs/verdict.md, "Candidates by what their members carry").

This module makes one candidate per window cut (any score): the samples that carry what the
cut's members agree on — the members within ``agreement_spread`` of it and the samples outside
that would join them (:func:`~spray.verdict.members.aligned_join`, the member step's guard and
place rule) — each group once. A group is only a candidate: it becomes the suspect when the
model is shown to follow its members' windows where it looks at them (the transplant test's
``peak`` region: each member's window of largest relevance, pasted onto other classes' images,
against the rest's; :func:`spray.verdict.score._follow_carried`). The window holds the agreed
pixels and what surrounds them; the test does not isolate the agreed pixels, so a group that
agrees on something (a flat colour) and whose windows are stronger class evidence than the
rest's would pass it: the guard of the agreement is what keeps natural sub-types out (on the
design and held-out rounds no carried group was tested in a class without an artefact).
"""

from __future__ import annotations

import numpy as np

from spray.config.presets import FlagsSection
from spray.verdict.evidence import eligible
from spray.verdict.halves import jaccard
from spray.verdict.members import aligned_join
from spray.verdict.patterns import AlignedAgreement, InputPatterns
from spray.verdict.result import ClusterEvidence


def carried_group(cut: ClusterEvidence, features: np.ndarray, patterns: InputPatterns,
                  params: FlagsSection) -> np.ndarray | None:
    """The samples that carry what the members of ``cut`` (a window cut) agree on where the
    model looks: its members within ``agreement_spread`` of it and the samples outside that
    :func:`~spray.verdict.members.aligned_join` lets join (``pattern_join_iqr`` as the
    fences' reach, the window at ``window_side``, the place rule of ``peak_place_share`` and
    ``peak_place_carriers``). None where the members agree on nothing or the guard refuses."""
    found = _carried(cut, features, patterns, params)
    return None if found is None else found[0]


def _carried(cut: ClusterEvidence, features: np.ndarray, patterns: InputPatterns,
             params: FlagsSection) -> tuple[np.ndarray, AlignedAgreement] | None:
    """:func:`carried_group` and the agreement it was found by."""
    aligned = aligned_join(cut.mask, ~cut.mask, features, patterns, params.score_max_samples,
                           params.agreement_spread, params.pattern_join_iqr,
                           params.window_side, params.peak_place_share,
                           params.peak_place_carriers)
    if aligned is None:
        return None
    found, join = aligned
    with np.errstate(invalid="ignore"):
        near = found.distance <= params.agreement_spread       # NaN: not near
    return join | (cut.mask & near), found


def carried_groups(cuts: list[ClusterEvidence], features: np.ndarray,
                   patterns: InputPatterns, params: FlagsSection,
                   largest_first: bool = True) -> list[ClusterEvidence]:
    """:func:`carried_group` of every cut, as candidates (``cut_graph`` ``"windows"``, the cut's
    ``cut_along``, and where each sample carries the agreement best, ``carried_at``): those of
    a candidate's size (:func:`~spray.verdict.evidence.eligible`), each once (a group at a
    Jaccard index of ``sweep_min_jaccard`` or more with one found before is left out),
    largest first (else in the cuts' order)."""
    out: list[ClusterEvidence] = []
    n = len(features)
    for cut in cuts:
        found = _carried(cut, features, patterns, params)
        if found is None:
            continue
        group, agreement = found
        entry = ClusterEvidence.of(group, cut_graph="windows", cut_along=cut.cut_along)
        entry.carried_at = (agreement.places * agreement.factor,
                            agreement.side * agreement.factor)
        out.append(entry)
    return distinct_candidates(out, n, params, largest_first)


def distinct_candidates(groups: list[ClusterEvidence], n: int, params: FlagsSection,
                        largest_first: bool = True) -> list[ClusterEvidence]:
    """Of ``groups`` (of a class of ``n``), those of a candidate's size
    (:func:`~spray.verdict.evidence.eligible`), each once (a group at a Jaccard index of
    ``sweep_min_jaccard`` or more with one kept before it is left out), largest first (else
    in their order)."""
    out: list[ClusterEvidence] = []
    for entry in groups:
        if eligible(entry, n, params) and not any(
                jaccard(entry, e) >= params.sweep_min_jaccard for e in out):
            out.append(entry)
    return sorted(out, key=lambda e: -e.size) if largest_first else out
