"""The verdict of a class as typed records: :class:`ClusterEvidence` and :class:`Verdict`.

``Verdict.to_dict()`` is what the run stores in a class's ``analysis`` attribute and what
``summary.json`` is read from (keys documented in docs/outputs.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

# the keys of a cluster entry, in the order they are written (None = not written)
_EVIDENCE_KEYS = ("id", "half_of", "cut_along", "cut_graph", "n_clusters", "cluster", "size", "fraction",
                  "conductance_relevance", "conductance_edges", "conductance_windows",
                  "conductance_input", "contrast",
                  "input_randomness", "randomness_penalty", "colocation", "colocation_penalty",
                  "edge_randomness", "edge_penalty", "hot_spot_separation", "hot_spot_penalty",
                  "hot_spot_mass", "hot_spot_mass_penalty", "window_mass", "window_mass_penalty",
                  "concentration", "peak", "peak_sign",
                  "size_penalty", "excluded", "resampled",
                  "contrast_stable", "score", "split_from", "hot_spot_auc", "trimmed", "pattern_trimmed",
                  "joined", "pattern_joined", "agreed_joined", "anywhere_joined", "peak_joined",
                  "aligned_joined", "aligned_trimmed",
                  "peak_window", "peak_guard", "peak_at", "peak_off_place", "transplant", "decision",
                  "followed_below", "carried", "recurring", "detail", "followed_margin")


@dataclass
class ClusterEvidence:
    """One group of a class (an analysis cluster, a half of one, or a cluster of another K) and
    the evidence measured on it.

    Attributes
    ----------
    mask : boolean membership over the class's samples (not serialized).
    id : the cluster id (analysis clusters and split-off halves).
    half_of : for a half, the cluster it was cut from.
    cut_along : for a sweep cut, the eigenvector of the class graph it was cut along (1 = the
        Fiedler vector; negative: the cut from the other end).
    cut_graph : ``"edges"`` for a sweep cut of the kNN graph of the inputs' edge energy
        (``edge_sweep_eigenvectors``), whose contrast is measured against that graph
        (``conductance_edges``) instead of the relevance graph; ``"windows"`` for one of the
        kNN graph of the samples' peak windows (``window_sweep_eigenvectors``,
        ``conductance_windows``; scored with ``window_mass`` in place of the colocation, edge
        and hot-spot terms, which measure a fixed place); None: the relevance graph.
    n_clusters, cluster : for a group of another K, that K and its cluster id there.
    size, fraction : members and their share of the class.
    conductance_relevance, conductance_input, contrast, input_randomness, randomness_penalty,
    colocation, colocation_penalty, edge_randomness, edge_penalty, hot_spot_separation,
    hot_spot_penalty, hot_spot_mass, hot_spot_mass_penalty, concentration, peak, peak_sign,
        size_penalty : the evidence (candidates only; the edge terms with edge features and
        ``edge_randomness_weight`` above 0, the hot-spot separation with relevance features and
        ``hot_spot_weight`` above 0, the hot-spot mass with relevance features).
    window_mass, window_mass_penalty : for a window cut, the members' median share of
        |relevance| in their peak windows minus the rest's, and its penalty.
    excluded : why a candidate was not scored (``min_concentration``).
    resampled : False when the bootstrap was skipped because it could not change the verdict.
    contrast_stable, score : the bootstrap's stable contrast and the candidate's score.
    split_from : for a half split off as a new cluster, the cluster it came from.
    transplant, decision : for a suspect with the transplant test on (``transplant_pairs``),
        the test's results per region (:class:`~spray.verdict.transplant.TransplantResult` as
        dicts, of its last run) and what they show (:func:`~spray.verdict.transplant.decide`):
        "followed", "ignored" (then it is no suspect), "undecided" or "untested" (both stay
        suspects).
    followed_below : True for a suspect scored below the threshold whose pieces the model
        follows (``transplant_reach``: :func:`~spray.verdict.score.score_class`).
    carried : True for such a suspect made of the samples that carry what a window cut's
        members agree on where the model looks, whose peak windows the model follows
        (``carried_candidates``: :mod:`~spray.verdict.carried`).
    recurring : True for a carried suspect whose members' group was a seed group of a pattern
        that recurs where the model looks, and whose windows where they carry what they agree
        on the model follows (``recurring_candidates``: :mod:`~spray.verdict.recurring`).
    detail : True for a recurring suspect grown from a seed group of the images' fine detail
        by the cosine with its pattern (``recurring_detail``:
        :func:`~spray.verdict.recurring.detail_groups`), whose pieces at their place the model
        follows (its margin is the ``place`` region's).
    followed_margin : for a suspect the model is shown to follow, by how many of the transplant
        test's errors the effect lies past the bar that holds it
        (:func:`~spray.verdict.transplant.shown_margin`: the ``place`` or, for a carried
        suspect, the ``peak`` region (``agreed`` for a recurring one) at
        ``transplant_near_effect`` for one below the threshold; both regions at the stricter
        of the two bars for one above it); what
        :attr:`Verdict.gate_score` adds to the threshold.
    hot_spot_auc, trimmed : for a suspect, how well its inputs at its relevance hot spot tell
        it from the rest (ROC AUC) and how many members left it for not carrying that pattern
        (:mod:`~spray.verdict.members`; ``size`` counts the members reported).
    pattern_trimmed : for a suspect, the members that left it because their raw inputs at its
        hot spot do not carry the pattern the others do (with the raw inputs only).
    joined : for a suspect, the samples from outside that carry its pattern and joined it.
    pattern_joined : for a suspect, the samples from outside whose raw inputs at its hot spot
        carry its members' pattern and joined it (with the raw inputs only).
    agreed_joined : for a suspect, the samples from outside whose raw inputs equal its members'
        where the members agree, at its hot spot, and joined it (with the raw inputs only).
    anywhere_joined : with ``agreement_anywhere``, for a suspect, the samples from outside
        whose raw inputs equal its members' where they agree, at a place of their image that
        several such samples share (or the members' own), and joined it.
    peak_joined : for a suspect, the samples from outside that carry, anywhere in their image,
        its members' pattern where the members' relevance peaks, and joined it (with the raw
        inputs and relevance maps only).
    peak_window, peak_guard : for a suspect where a window passed that step's guard (whether or
        not anyone outside reached the members' fence), the side in pixels of the window it
        compared (widened from the hot spot's while the guard refused,
        ``peak_window_doublings``) and how the guard passed: ``"fences"`` (the members' lower
        fence at or above the upper fence of the samples outside), ``"apart"`` (the
        candidates stand apart from the rest outside, ``peak_carrier_gap``) or, for a window
        cut only, ``"median"`` (fewer than half of the samples outside reach the fence).
    peak_at : where that step took the members' first template: ``"peak"`` (at each member's
        relevance peak) or ``"region"`` (at the hot region's place, tried when no window at
        the peaks passed).
    peak_off_place : for a suspect whose members match at fixed places, the samples outside
        that reached the bar of that step but matched at no place of the artefact, left out
        (``peak_place_share``, ``peak_place_carriers``).
    aligned_joined, aligned_trimmed : with ``aligned_agreement``, for a suspect, the samples
        from outside that carry, anywhere in their image, what its members agree on where the
        model looks (aligned on their best match), and joined it; and the members far from it
        that left (:func:`~spray.verdict.members.align_members`).
    score_from_k : the group of another K whose score this cluster took, with ``jaccard``.
    inputs : the input features the contrast was measured on (not serialized).
    carried_at : for a group made of the samples that carry what a group's members agree on
        (:mod:`~spray.verdict.carried`), where each sample of the class carries it best:
        ``(places, side)``, top-left corners ``(n, 2)`` and the window's side, in pixels
        (not serialized).
    """

    mask: np.ndarray = field(repr=False, compare=False)
    id: int | None = None
    half_of: int | None = None
    cut_along: int | None = None
    cut_graph: str | None = None
    n_clusters: int | None = None
    cluster: int | None = None
    size: int = 0
    fraction: float = 0.0
    conductance_relevance: float | None = None
    conductance_edges: float | None = None
    conductance_windows: float | None = None
    conductance_input: float | None = None
    contrast: float | None = None
    input_randomness: float | None = None
    randomness_penalty: float | None = None
    colocation: float | None = None
    colocation_penalty: float | None = None
    edge_randomness: float | None = None
    edge_penalty: float | None = None
    hot_spot_separation: float | None = None
    hot_spot_penalty: float | None = None
    hot_spot_mass: float | None = None
    hot_spot_mass_penalty: float | None = None
    window_mass: float | None = None
    window_mass_penalty: float | None = None
    concentration: float | None = None
    peak: list | None = None
    peak_sign: int | None = None
    size_penalty: float | None = None
    excluded: str | None = None
    resampled: bool | None = None
    contrast_stable: float | None = None
    score: float | None = None
    split_from: int | None = None
    hot_spot_auc: float | None = None
    trimmed: int | None = None
    pattern_trimmed: int | None = None
    joined: int | None = None
    pattern_joined: int | None = None
    agreed_joined: int | None = None
    anywhere_joined: int | None = None
    peak_joined: int | None = None
    peak_window: int | None = None
    peak_guard: str | None = None
    peak_at: str | None = None
    peak_off_place: int | None = None
    aligned_joined: int | None = None
    aligned_trimmed: int | None = None
    transplant: list | None = None
    decision: str | None = None
    followed_below: bool | None = None
    carried: bool | None = None
    recurring: bool | None = None
    detail: bool | None = None
    followed_margin: float | None = None
    score_from_k: ClusterEvidence | None = field(default=None, repr=False)
    jaccard: float | None = None
    inputs: np.ndarray | None = field(default=None, repr=False, compare=False)
    carried_at: tuple | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, mask: np.ndarray, **ids) -> ClusterEvidence:
        """An entry for the group ``mask`` (size and fraction filled in)."""
        size = int(mask.sum())
        return cls(mask=mask, size=size, fraction=round(size / len(mask), 4), **ids)

    @property
    def measured(self) -> bool:
        """Whether it is a candidate whose evidence was measured."""
        return self.contrast is not None

    @property
    def split_only(self) -> bool:
        """A half or a sweep cut: it counts only as a suspect that outscores the clusters."""
        return self.half_of is not None or self.cut_along is not None

    @property
    def penalty(self) -> float:
        return (self.size_penalty + self.randomness_penalty + (self.colocation_penalty or 0.0)
                + (self.edge_penalty or 0.0) + (self.hot_spot_penalty or 0.0)
                + (self.hot_spot_mass_penalty or 0.0) + (self.window_mass_penalty or 0.0))

    def to_dict(self) -> dict:
        """The JSON-ready entry: the keys that were measured, nothing private."""
        out = {}
        for key in _EVIDENCE_KEYS:
            value = getattr(self, key)
            if value is not None or (key == "peak" and self.concentration is not None):
                out[key] = value
        if self.score_from_k is not None:
            out["score_from_k"] = {**self.score_from_k.to_dict(), "jaccard": self.jaccard}
        return out


@dataclass
class Verdict:
    """The Clever-Hans verdict of one class.

    Attributes
    ----------
    score : the class score (best analysis candidate; 0 without candidates).
    threshold, flagged : the threshold and whether a suspect is left: ``score >= threshold``,
        or a cluster below it the model is shown to follow (``transplant_reach``), and not
        cleared by the transplant test.
    suspect_cluster : the first suspect when flagged; ``suspect_clusters`` every cluster at or
        above the threshold, best first, then one followed below it.
    candidate_cluster : the best-scoring cluster, flagged or not.
    clusters : one entry per cluster of ``labels``.
    splits : halves split off as new clusters (``{"cluster": new id, "from": old id}``; with
        ``"absorbed"``: the ids of clusters whose members all went to it, a recurring
        candidate's, :func:`~spray.verdict.halves.split_cut`).
    labels : the analysis' labels with those splits.
    other_k : the best ten groups of other K (``candidates: all-k``).
    params : the flags section used.
    scored_on : the number of samples the evidence was measured on, when the class was scored
        on a subsample (``score_max_samples``); None: on all of them.
    clean_rate : how unusual the score is among the evaluation's clean class checks
        (:func:`spray.verdict.calibration.clean_rate`); None where that reference does not
        apply to ``params``.
    not_followed : with the transplant test, the clusters at or above the threshold whose
        pieces the model is shown to ignore (no suspects; the class is watched, not flagged);
        None without the test.
    near_tested : with ``transplant_reach``, the candidates below the threshold the transplant
        test was run on, in order: ``score``, ``size``, ``id`` (a cluster) or ``cut_graph``
        and ``cut_along`` (a cut), ``decision`` ("followed": the suspect; "unlike": the model
        follows the pieces but they are not alike at their place, class evidence rather than
        a pattern; "undecided" or "ignored"), ``tests`` (the ``place`` test with the
        members' ``agreed`` share) and ``members`` (row positions); ``carried``,
        ``recurring`` and ``detail`` name a group's source (:mod:`~spray.verdict.carried`,
        :mod:`~spray.verdict.recurring`); None when none was.
    gate_score : with the transplant test (``transplant_pairs``), the score the gate acts on
        (:func:`spray.verdict.score.gate_score`): at or above the threshold exactly when the
        class is flagged, with the transplant test's margin for a suspect the model follows;
        None without the test (``transplant_pairs`` 0).
    """

    score: float
    threshold: float
    flagged: bool
    suspect_cluster: int | None
    suspect_clusters: list[int]
    candidate_cluster: int | None
    clusters: list[ClusterEvidence]
    splits: list[dict]
    labels: np.ndarray
    other_k: list[ClusterEvidence]
    params: dict
    rule: str = "input-contrast"
    scored_on: int | None = None
    clean_rate: dict | None = None
    not_followed: list[int] | None = None
    near_tested: list[dict] | None = None
    gate_score: float | None = None

    def cluster(self, cid: int) -> ClusterEvidence:
        """The entry of cluster ``cid``."""
        return next(c for c in self.clusters if c.id == cid)

    def to_dict(self) -> dict:
        """The verdict as the run stores it (``labels`` stays an array; the run pops it)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["clusters"] = [c.to_dict() for c in self.clusters]
        out["other_k"] = [c.to_dict() for c in self.other_k]
        order = ("rule", "score", "threshold", "flagged", "suspect_cluster", "suspect_clusters",
                 "candidate_cluster", "clusters", "splits", "labels", "other_k", "params")
        optional = {k: out[k] for k in ("scored_on", "clean_rate", "not_followed",
                                         "near_tested", "gate_score")
                    if out[k] is not None}
        return {**{k: out[k] for k in order}, **optional}


def resize_entries(clusters: list[ClusterEvidence], labels: np.ndarray) -> None:
    """Bring the ``size`` and ``fraction`` of every cluster entry in line with ``labels``."""
    for entry in clusters:
        if entry.id is None:
            continue
        size = int((labels == entry.id).sum())
        if size != entry.size or entry.fraction != round(size / len(labels), 4):
            entry.size, entry.fraction = size, round(size / len(labels), 4)
