"""Clever-Hans score of a class: does its relevance split into a group the inputs do not explain?

The rule (``input-contrast``) is described in docs/verdict.md; its parameters are the ``flags``
section of the pipeline (:class:`spray.config.presets.FlagsSection`). The steps live in their
own modules: :mod:`~spray.verdict.candidates` (which groups are scored),
:mod:`~spray.verdict.evidence` (what is measured on each), :mod:`~spray.verdict.bootstrap` (the
stable contrast), :mod:`~spray.verdict.halves` (split-off halves, groups of other K),
:mod:`~spray.verdict.members` (who of a suspect carries its pattern),
:mod:`~spray.verdict.subsample` (large classes) and
:mod:`~spray.verdict.result` (the typed verdict).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from spray.config.presets import FlagsSection
from spray.verdict.bootstrap import Resamples, stabilize, stabilize_cuts, verify
from spray.verdict.calibration import clean_rate, threshold_for
from spray.verdict.candidates import candidate_groups, edge_cuts, mask_key, sweep_cuts
from spray.verdict.carried import carried_groups
from spray.verdict.evidence import ClassGraphs, measure
from spray.verdict.halves import (
    jaccard,
    lift_by_other_k,
    split_cut,
    split_off_sweep,
    split_suspect_halves,
)
from spray.verdict.members import decide_members
from spray.verdict.patterns import InputPatterns
from spray.verdict.recurring import detail_groups, recurring_cuts
from spray.verdict.result import ClusterEvidence, Verdict, resize_entries
from spray.verdict.subsample import extend_labels, restrict, stratified_sample
from spray.verdict.transplant import (
    ModelTest,
    decide,
    decided_test,
    pieces_alike,
    shown_followed,
    shown_margin,
)

log = logging.getLogger(__name__)


def flag_params(pipeline: dict) -> FlagsSection:
    """The ``flags`` section of a pipeline, validated, with its defaults filled in (a
    ``false_flag_rate`` the clean-score reference cannot serve is refused here)."""
    from pydantic import ValidationError

    from spray.config.presets import _format_error
    from spray.errors import ConfigError

    try:
        params = FlagsSection.model_validate(dict(pipeline.get("flags") or {}))
    except ValidationError as exc:
        raise ConfigError(_format_error(exc).replace("pipeline key '", "pipeline key 'flags."))\
            from None
    flag_threshold(params, pipeline)     # a false_flag_rate without its reference fails here
    return params


def flag_threshold(params: FlagsSection, pipeline: dict) -> float:
    """The score at or above which a class is flagged: ``threshold``, or with
    ``false_flag_rate`` the threshold of that rate
    (:func:`~spray.verdict.calibration.threshold_for`).

    ``threshold`` itself stays the bar a split-off half or sweep cut must reach while the class
    is scored, as it was when the reference was scored: a lower bar lets more groups split off
    and raises clean scores the reference never saw (measured: docs/verdict.md,
    "Calibration"). The rate moves the decision only."""
    if params.false_flag_rate is None:
        return params.threshold
    return threshold_for(params.false_flag_rate, params.model_dump(), pipeline)


def score_class(result, input_features: np.ndarray, pipeline: dict,
                features=None, edge_features=None, patterns: InputPatterns | None = None,
                model_test: ModelTest | Callable[[], ModelTest | None] | None = None
                ) -> Verdict:
    """Score a class from its analysis result and the preprocessed raw inputs of its samples.

    Parameters
    ----------
    result : spray.analysis.analyze.AnalysisResult
        The class's analysis (``labels``, ``affinity``, ``k``, ``eigenvectors``).
    input_features : numpy.ndarray
        ``(n, d)`` raw inputs preprocessed like the relevance maps.
    pipeline : dict
        The validated pipeline (its ``affinity``, ``preprocess``, ``clustering`` and ``flags``).
    features : numpy.ndarray, optional
        ``(n, d)`` relevance features the analysis ran on; enables the input mask, the
        bootstrap and the spatial concentration.
    edge_features : numpy.ndarray, optional
        ``(n, d)`` edge energy of the raw inputs
        (:func:`spray.analysis.preprocess.edge_energy`) preprocessed like them; with
        ``edge_randomness_weight`` above 0, the edge randomness of every candidate.
    patterns : spray.verdict.patterns.InputPatterns, optional
        The class's raw inputs, read in chunks: the samples outside a suspect whose inputs at
        its hot spot carry its members' pattern join it
        (:func:`~spray.verdict.members.join_by_pattern`). Who is reported only; the score
        and the flag do not use them — except with ``window_sweep_eigenvectors`` above 0,
        where their windows at the relevance peaks make the graph of window cuts.
    model_test : spray.verdict.transplant.ModelTest or callable, optional
        The model and the class's inputs (or a function making them, called at most once,
        only when the class has a suspect or, with ``transplant_reach``, a candidate within
        reach; it may return None): with ``transplant_pairs`` above 0, every suspect gets the
        transplant test and stays one unless the model is shown to ignore its pieces
        (:func:`follow_suspects`).

    Returns
    -------
    Verdict
        Measured on a stratified subsample of ``score_max_samples`` samples when the class has
        more (:mod:`~spray.verdict.subsample`; ``scored_on`` says how many).
    """
    params = flag_params(pipeline)
    n = len(np.asarray(result.labels))
    test = _once(model_test) if params.transplant_pairs else None
    if features is None or n <= params.score_max_samples:
        verdict = _score(result, input_features, pipeline, params, features, edge_features,
                         patterns=patterns, windows=_windows(patterns, params),
                         model_test=test)
    else:
        verdict = _score_subsample(result, input_features, pipeline, params, features,
                                   edge_features, patterns, test)
    if test is not None and verdict.suspect_clusters and test() is not None:
        follow_suspects(verdict, test(), params)
    if params.transplant_pairs:
        verdict.gate_score = gate_score(verdict)
    return verdict


def gate_score(verdict: Verdict) -> float:
    """The score the gate acts on when the transplant test runs: the best over the clusters
    the model was not shown to ignore of their score and, for a suspect the model is shown to
    follow, the threshold plus the test's margin (``followed_margin``,
    :func:`~spray.verdict.transplant.shown_margin`: errors past the bar that made it one).

    With a positive threshold it reaches the threshold exactly when the class is flagged (a
    suspect at or above it, or one below it the model follows; a cluster at or above it that
    the model is shown to ignore counts for nothing). How far above it lies is how far the
    flag lies from falling, on the scale of the evidence that holds it: a suspect stays one
    while its relevance score stays at the threshold or the model is shown to follow it, so
    its distance is the larger of the two — the score's for one the relevance separates, the
    transplant test's errors for one below the threshold the model follows (a strong stamp on
    many targets lies tens of errors past the bar). 0 without a cluster (as the class score).
    """
    cleared = set(verdict.not_followed or [])
    suspects = set(verdict.suspect_clusters)
    values = [max(-np.inf if c.score is None else c.score,
                  verdict.threshold + c.followed_margin
                  if c.followed_margin is not None and c.id in suspects else -np.inf)
              for c in verdict.clusters if c.id not in cleared]
    values = [v for v in values if np.isfinite(v)]
    return float(max(values)) if values else 0.0


def _once(model_test: ModelTest | Callable[[], ModelTest | None] | None
          ) -> Callable[[], ModelTest | None] | None:
    """The model test as a function that makes it at most once (None without one)."""
    if model_test is None or isinstance(model_test, ModelTest):
        return None if model_test is None else (lambda: model_test)
    return functools.cache(model_test)


def follow_suspects(verdict: Verdict, model_test: ModelTest, params: FlagsSection) -> None:
    """The transplant test of every suspect (:mod:`~spray.verdict.transplant`): a suspect
    whose pieces the model is shown to ignore (``decision`` "ignored") is none
    (``not_followed``); the class is flagged when one is left. A suspect the test cannot
    decide (an effect near the bar even with ``transplant_max_pairs`` pairs: "undecided") or
    cannot run on (no target image left that the model does not already predict as the class:
    "untested") stays one: fail closed. Scores stay as they are; a suspect shown followed
    ("followed") that was not promoted below the threshold gets its ``followed_margin`` when
    candidates below the threshold are asked about (``transplant_reach``; without, a suspect
    whose score fell would not be one): :func:`~spray.verdict.transplant.shown_margin` of
    both regions at :func:`_stricter_bar`, which may lie below 0 (McNemar's z decides here,
    the clustered errors there)."""
    followed_ids, not_followed = [], []
    for cid in verdict.suspect_clusters:
        entry = verdict.cluster(cid)
        members = np.asarray(verdict.labels) == cid
        entry.decision, tests = decided_test(
            model_test, members, side=params.window_side,
            area=params.input_mask_area, pairs=params.transplant_pairs,
            max_pairs=params.transplant_max_pairs, seed=params.seed + cid,
            min_effect=params.transplant_min_effect, min_z=params.transplant_min_z,
            spread=params.transplant_near_spread if entry.followed_below else None,
            confirm=params.transplant_confirm, at=_agreed_at(entry, len(members)))
        entry.transplant = [t.to_dict() for t in tests]
        if entry.followed_margin is None and entry.decision == "followed" \
                and params.transplant_reach > 0:
            entry.followed_margin = _margin(shown_margin(tests, *_stricter_bar(params)))
        if entry.decision == "ignored":
            entry.followed_below = None      # a suspect below the threshold, cleared after all
            entry.followed_margin = None
        (not_followed if entry.decision == "ignored" else followed_ids).append(cid)
        log.info("class %d, suspect %d: transplant %s -> %s", model_test.c, cid,
                 entry.transplant, entry.decision)
    verdict.suspect_clusters = followed_ids
    verdict.suspect_cluster = followed_ids[0] if followed_ids else None
    verdict.flagged = bool(followed_ids)
    verdict.not_followed = not_followed


def _agreed_at(entry: ClusterEvidence, n: int) -> tuple[np.ndarray, int] | None:
    """Where a recurring suspect's members carry what they agree on (``carried_at``), for its
    transplant test's ``agreed`` region, when it covers the ``n`` samples tested (a class
    scored on a subsample found it on the subsample only: its ``peak`` region then)."""
    at = entry.carried_at if entry.recurring else None
    return at if at is not None and len(at[0]) == n else None


def _windows(patterns: InputPatterns | None, params: FlagsSection,
             rows: np.ndarray | None = None) -> tuple | None:
    """The peak windows of ``rows`` of the class and their relevance shares, for window cuts
    (``window_sweep_eigenvectors``; None when off or without the raw inputs and maps)."""
    if params.window_sweep_eigenvectors <= 0 or patterns is None:
        return None
    return patterns.peak_windows(params.window_side, rows)


def _score_subsample(result, input_features, pipeline: dict, params: FlagsSection, features,
                     edge_features, patterns: InputPatterns | None,
                     model_test: Callable[[], ModelTest | None] | None = None) -> Verdict:
    """:func:`_score` on a stratified subsample, its labels extended to the whole class."""
    features = np.asarray(features)
    rows = stratified_sample(np.asarray(result.labels), params.score_max_samples, params.seed)
    sub = restrict(result, rows, features, pipeline)
    edges = None if edge_features is None else np.asarray(edge_features)[rows]
    inputs = np.asarray(input_features, dtype=np.float32)
    verdict = _score(sub, inputs[rows], pipeline, params, features[rows], edges, trim=False,
                     patterns=None if patterns is None else patterns.subset(rows),
                     windows=_windows(patterns, params, rows),
                     model_test=None if model_test is None else
                     _once(lambda: None if model_test() is None else model_test().rows(rows)))
    for record in verdict.near_tested or []:
        record["members"] = rows[record["members"]].tolist()
    labels = extend_labels(np.asarray(result.labels), rows, verdict.labels, result.affinity)
    resize_entries(verdict.clusters, labels)
    # who of a suspect carries its pattern is decided on the whole class: the samples that
    # leave a suspect are near it in the relevance graph, so the labels must be extended first
    verdict.labels = decide_members(labels, verdict.clusters, verdict.suspect_clusters,
                                    sp.csr_matrix(result.affinity), inputs,
                                    np.ascontiguousarray(features, dtype=np.float32),
                                    float(params.input_mask_area), params, patterns)
    verdict.scored_on = int(len(rows))
    log.info("class of %d samples scored on a subsample of %d (score_max_samples)",
             len(verdict.labels), len(rows))
    return verdict


def _score(result, input_features: np.ndarray, pipeline: dict, params: FlagsSection,
           features=None, edge_features=None, trim: bool = True,
           patterns: InputPatterns | None = None, windows: tuple | None = None,
           model_test: Callable[[], ModelTest | None] | None = None) -> Verdict:
    """The rule on the samples of ``result`` (see :func:`score_class`); ``trim``: decide the
    suspects' members (:func:`~spray.verdict.members.decide_members`); ``windows``: the peak
    windows of its samples and their shares (:func:`_windows`); ``model_test``: makes the
    transplant test of its samples, for candidates below the threshold
    (``transplant_reach``)."""
    if features is not None:
        features = np.asarray(features)
        relevance = np.ascontiguousarray(features, dtype=np.float32)   # what is graphed
    graphs = ClassGraphs.build(result, input_features, pipeline, params, features,
                               edge_features, windows, patterns)
    clusters, halves, other_k = candidate_groups(result, pipeline, params, graphs.W)
    for entry in clusters + halves + other_k:
        measure(entry, graphs)
    candidates = [e for e in clusters + halves + other_k if e.measured]
    resamples = (Resamples(relevance, pipeline, int(result.k), params, graphs.cache)
                 if features is not None and candidates else None)
    stabilize(candidates, resamples, params)
    other_k = [o for o in other_k if o.measured]
    lift_by_other_k(clusters, other_k, params.other_k_min_jaccard)
    labels, clusters, splits = split_suspect_halves(np.asarray(result.labels), clusters, halves,
                                                    params.threshold)
    for c in clusters:
        verify(c, resamples, params)
    sweeps = params.sweep_eigenvectors and getattr(result, "eigenvectors", None) is not None
    decide = flag_threshold(params, pipeline)
    low = (decide - params.transplant_reach
           if model_test is not None and params.transplant_reach > 0 else None)
    near: list = []
    if sweeps or (params.edge_sweep_eigenvectors and graphs.edges is not None) \
            or graphs.windows is not None:
        if resamples is None and features is not None:
            resamples = Resamples(relevance, pipeline, int(result.k), params,
                                  graphs.cache)
        labels, clusters, more, near = _split_off_sweep(result, graphs, labels, clusters,
                                                        resamples, pipeline, low)
        splits = splits + more
    suspects = [c.id for c in clusters if c.score is not None and c.score >= decide]
    promoted, tested = None, None
    if not suspects and low is not None:
        labels, clusters, more, promoted, tested = _follow_near(
            labels, clusters, near, graphs, resamples, model_test, (low, decide))
        splits = splits + more
        if promoted is None and params.carried_candidates and patterns is not None \
                and graphs.windows is not None and graphs.features is not None:
            labels, clusters, more, promoted, carried = _follow_carried(
                labels, clusters, graphs, resamples, model_test, patterns, len(tested))
            splits, tested = splits + more, tested + carried
        # a cluster that lost members to the split may reach the threshold now
        suspects = _suspects(clusters, decide, promoted)
    if trim:
        labels = decide_members(labels, clusters, suspects, graphs.W, graphs.input_features,
                                graphs.features, graphs.mask_area, params, patterns)
    verdict = _verdict(clusters, labels, splits, other_k, params, pipeline, decide, promoted)
    verdict.near_tested = tested or None
    return verdict


def _split_off_sweep(result, graphs: ClassGraphs, labels, clusters, resamples, pipeline: dict,
                     low: float | None = None):
    """Score the sweep cuts along the leading eigenvectors of the relevance graph and, when
    neither a cluster nor such a cut reaches the threshold, of the edge graph
    (``edge_sweep_eigenvectors``), and when none of those does either, of the peak windows'
    graph (``window_sweep_eigenvectors``); the best one that outscores every cluster and reaches the
    threshold becomes a cluster (the clusters it takes members from are measured and scored
    again). Cuts holding a whole cluster are left out.

    ``low``: cuts that can reach this score are measured too (candidates below the threshold
    for the transplant test); they are returned as ``near``, ``(cut, its resamples)`` of every
    scored cut."""
    params = graphs.params
    best = max((c.score for c in clusters if c.score is not None), default=-np.inf)
    lift = max(params.threshold, best + 1e-9)    # what a cut must reach to matter
    bar = lift if low is None else min(lift, low)
    found = _scored_cuts(_relevance_cuts(result, graphs), graphs, clusters, resamples, bar)
    near = [(e, resamples) for e in found]
    if max([best] + [e.score for e in found]) < params.threshold:
        # the relevance graph gives no suspect: a stamp it does not separate may still be
        # a group of the edge graph (a suspect it gives keeps its members and score)
        edge_resamples = _edge_resamples(result, graphs, pipeline)
        cuts = _edge_cuts(graphs)
        if params.edge_lift:
            clusters = _lift_by_edge_cut(clusters, cuts, graphs, edge_resamples, lift)
        cuts = _scored_cuts(cuts, graphs, clusters, edge_resamples, bar)
        found += cuts
        near += [(e, edge_resamples) for e in cuts]
    now = max((c.score for c in clusters if c.score is not None), default=-np.inf)
    if graphs.windows is not None and max([now] + [e.score for e in found]) < params.threshold:
        # nor the edge graph (nor a cluster it lifted): a pattern at varying places (a patch
        # on a moving object) may still be a group of the peak windows' graph
        resamples_w = Resamples(graphs.window_features, pipeline, int(result.k), params,
                                graphs.cache)
        cuts = _scored_cuts(_window_cuts(graphs), graphs, clusters, resamples_w, bar)
        found += cuts
        near += [(e, resamples_w) for e in cuts]
    labels, clusters, splits, changed = split_off_sweep(labels, clusters, found,
                                                        params.threshold,
                                                        params.sweep_min_jaccard)
    stabilize([e for e in changed if measure(e, graphs).measured], resamples, params)
    return labels, clusters, splits, near


def _follow_near(labels, clusters: list[ClusterEvidence], near: list, graphs: ClassGraphs,
                 resamples: Resamples | None, model_test: Callable[[], ModelTest | None],
                 band: tuple[float, float]):
    """The transplant test of the candidates scored in ``band`` = [low, threshold): the
    clusters and the cuts of ``near`` (:func:`_split_off_sweep`; none equal to a cluster,
    Jaccard ≥ ``sweep_min_jaccard``, nor holding a whole one), best first by their stable
    score (one that kept its plain score is resampled first; one scored by another graph than
    its resamples', an edge-lifted cluster, is left out then). The first of at most
    ``transplant_near_tries`` tested whose pieces at their place the model is shown to follow
    and are alike there (:func:`_near_test`) becomes the
    suspect: a cluster as it is, a cut split off as a new cluster
    (:func:`~spray.verdict.halves.split_cut`). Returns ``labels,
    clusters, splits, promoted, tested`` (the suspect's id or None; the records of the
    candidates tested, :func:`_near_record`)."""
    params = graphs.params
    low, high = band
    whole = [c for c in clusters if c.size]
    pool = [(c, resamples if c.cut_graph is None else None) for c in whole
            if c.score is not None] + [
        (e, r) for e, r in near if e.score is not None
        and not any(jaccard(c, e) >= params.sweep_min_jaccard
                    or not (c.mask & ~e.mask).any() for c in whole)]
    pool = [p for p in pool if p[0].score >= low]
    test = model_test() if pool else None
    tested: list[dict] = []
    while test is not None and pool and len(tested) < params.transplant_near_tries:
        entry, entry_resamples = pool.pop(max(range(len(pool)), key=lambda i: pool[i][0].score))
        if entry.resampled is False:          # a plain score: resample it, then rank it again
            if entry_resamples is not None:
                verify(entry, entry_resamples, params, low)
                pool.append((entry, None))
            continue
        if entry.score < low:
            break
        if entry.score >= high:
            continue
        decision, tests, margin = _near_test(test, entry.mask, params, len(tested) + 1)
        tested.append(_near_record(entry, decision, tests))
        if decision != "followed":
            continue
        entry.followed_margin = margin
        return (*_promote(labels, clusters, entry, decision, tested[-1], graphs, resamples),
                tested)
    return labels, clusters, [], None, tested


def _promote(labels, clusters: list[ClusterEvidence], entry: ClusterEvidence, decision: str,
             record: dict, graphs: ClassGraphs, resamples: Resamples | None):
    """Make ``entry``, a candidate below the threshold the model is shown to follow, the
    suspect: a cluster as it is, a cut split off as a new cluster
    (:func:`~spray.verdict.halves.split_cut`; the clusters it took members from are measured
    and scored again). Returns ``labels, clusters, splits, promoted`` (the suspect's id)."""
    entry.followed_below, entry.decision = True, decision
    entry.transplant = record["tests"]
    if entry.id is not None:
        return labels, clusters, [], entry.id
    labels, clusters, split, changed = split_cut(labels, clusters, entry)
    stabilize([e for e in changed if measure(e, graphs).measured], resamples, graphs.params)
    return labels, clusters, split, split[0]["cluster"]


def _follow_carried(labels, clusters: list[ClusterEvidence], graphs: ClassGraphs,
                    resamples: Resamples | None,
                    model_test: Callable[[], ModelTest | None], patterns: InputPatterns,
                    attempt: int):
    """``carried_candidates``: when no candidate below the threshold was shown followed
    (:func:`_follow_near`), the groups that carry what a window cut's members agree on
    where the model looks (:func:`~spray.verdict.carried.carried_groups`, any score; a
    group matching a cluster, Jaccard ≥ ``sweep_min_jaccard``, is that cluster, each
    cluster once, and one holding a whole cluster is left out), largest first, at most
    ``transplant_near_tries`` of them: the first whose pieces where the model looks at
    them (the ``peak`` region) the model is shown to follow (:func:`_near_test`) becomes
    the suspect (:func:`_promote`: a cluster as it is, a group split off as a new cluster,
    its evidence measured whatever it scores and its plain score kept, not resampled, so
    that the report shows a score). With ``recurring_candidates``, when none of those is,
    the groups that carry what a seed group of a recurring pattern agrees on
    (:func:`~spray.verdict.recurring.recurring_cuts`, most recurring first; a group
    matching one tested before is not tested again; one holding whole clusters absorbs
    them), at most ``transplant_near_tries`` more, tested where they carry it (the
    ``agreed`` region); with ``recurring_detail``, when none of those is either, the groups
    grown from seed groups of the images' fine detail
    (:func:`~spray.verdict.recurring.detail_groups`, largest first), at most
    ``transplant_near_tries`` more, tested at their ``place`` (their pieces alike).
    ``attempt``: the candidates tested before (the seeds go on from there). Returns ``labels,
    clusters, splits, promoted, tested``."""
    params = graphs.params
    whole = [c for c in clusters if c.size]
    # (groups, the region they are tested in): window cuts' first at their peak windows,
    # recurring seeds' next where they carry what they agree on, then the groups by a
    # recurring fine detail at the place (their pieces alike) and where they carry it
    sources = [(lambda: carried_groups(_window_cuts(graphs), graphs.features, patterns,
                                       params), "peak")]
    if params.recurring_candidates:
        sources.append((lambda: carried_groups(recurring_cuts(patterns, params),
                                               graphs.features, patterns, params,
                                               largest_first=False), "agreed"))
        if params.recurring_detail:
            sources.append((lambda: detail_groups(patterns, params), "place"))
    tested: list[dict] = []
    asked: list[ClusterEvidence] = []
    test = None
    for groups, region in sources:
        of_seeds = region != "peak"
        pool = _carried_pool(groups(), whole, asked, params.sweep_min_jaccard, absorb=of_seeds)
        if pool and test is None:
            test = model_test()
        for entry, at in pool[:params.transplant_near_tries] if test is not None else []:
            # a recurring group is tested where its members carry what they agree on
            recurring = at if of_seeds else None
            if entry.id is None and measure(entry, graphs, -np.inf).measured:
                stabilize_cuts([entry], None, params, np.inf)     # its plain score, to show
            decision, tests, margin = _near_test(
                test, entry.mask, params, attempt + len(tested) + 1, region=region,
                at=recurring)
            tested.append({**_near_record(entry, decision, tests), "carried": True,
                           **({} if recurring is None else {"recurring": True}),
                           **({"detail": True} if region == "place" else {})})
            asked.append(entry)
            if decision == "followed":
                entry.carried, entry.followed_margin = True, margin
                if recurring is not None:
                    entry.recurring, entry.carried_at = True, recurring
                if region == "place":
                    entry.detail = True
                return (*_promote(labels, clusters, entry, decision, tested[-1], graphs,
                                  resamples), tested)
    return labels, clusters, [], None, tested


def _carried_pool(groups: list[ClusterEvidence], whole: list[ClusterEvidence],
                  asked: list[ClusterEvidence], bar: float,
                  absorb: bool = False) -> list[tuple[ClusterEvidence, tuple | None]]:
    """The candidates of :func:`_follow_carried` among ``groups`` (in their order), each with
    where the group's samples carry what it agrees on (its ``carried_at``): a group
    matching a cluster of ``whole`` (Jaccard ≥ ``bar``) is that cluster, each once; one
    holding a whole cluster is left out (with ``absorb``, kept: a recurring stamp in several
    corners the relevance graph cut one corner at a time; promoted, it absorbs them), and so
    is one matching a candidate ``asked`` before."""
    pool: list[tuple[ClusterEvidence, tuple | None]] = []
    for group in groups:
        same = next((c for c in whole if jaccard(c, group) >= bar), None)
        entry = group if same is None else same
        if any(e is entry for e, _ in pool) or any(jaccard(entry, e) >= bar for e in asked):
            continue
        if same is not None or absorb \
                or not any(not (c.mask & ~group.mask).any() for c in whole):
            pool.append((entry, group.carried_at))
    return pool


def _near_test(test: ModelTest, mask: np.ndarray, params: FlagsSection, attempt: int,
               region: str = "place", at: tuple[np.ndarray, int] | None = None):
    """The transplant test of a candidate below the threshold and what it shows:
    "followed" only when the model is shown to follow its pieces at their place
    (:func:`~spray.verdict.transplant.shown_followed` of the ``place`` region) and those
    pieces are alike (:func:`~spray.verdict.transplant.pieces_alike`: a pattern at a fixed
    place, not class evidence the members share; "unlike" when only the first holds, or the
    agreement could not be measured). With ``region`` ``"peak"`` (a group by what its members
    carry where the model looks, :func:`_follow_carried`: alike by how it was made), the
    pieces are each member's peak window and their agreement is not asked; with ``region``
    ``"agreed"`` and ``at`` (a recurring group: ``(places, side)``, where each sample of the
    class carries what the members agree on, in pixels), each member's window there.

    One run of ``transplant_pairs`` pairs; with ``transplant_near_max_pairs`` above that, a
    candidate whose pieces are alike and whose ``place`` effect is neither shown
    (:func:`~spray.verdict.transplant.shown_followed`) nor shown below the bar by three errors
    (:func:`~spray.verdict.transplant.decide` of the ``place`` region: "ignored") is tested
    again with four times the pairs (new draws of targets and donors), up to that many: the
    same bar on a surer estimate (the error is clustered by donor and target, so more pairs of
    the same few donors show no more than they hold). With ``transplant_confirm``, one
    shown followed with fewer pairs is tested again with ``transplant_near_max_pairs`` and
    decided on that run.

    Returns ``decision, tests, margin``: the last run's results and their region's
    :func:`~spray.verdict.transplant.shown_margin` at this bar (:func:`_margin`)."""
    bar, z = params.transplant_near_effect, params.transplant_near_z
    pairs, seed = params.transplant_pairs, params.seed + attempt
    most = max(pairs, params.transplant_near_max_pairs)
    by_place = region == "place"
    while True:
        tests = test.test(mask, side=params.window_side, area=params.input_mask_area,
                          pairs=pairs, seed=seed,
                          spread=params.transplant_near_spread if by_place else None, at=at)
        place = [t for t in tests if t.region == region]
        shown = shown_followed(place, bar, z)
        alike = pieces_alike(tests, params.transplant_near_agreed) if by_place else True
        settled = not alike or pairs >= most or decide(place, bar, z) == "ignored"
        if settled or (shown and not params.transplant_confirm):
            break
        pairs = most if shown else min(max(4 * pairs, 1), most)
        seed = [params.seed + attempt, pairs]
    decision = decide(tests, bar, z)
    if shown:
        decision = "followed" if alike else "unlike"
    elif decision == "followed":
        decision = "undecided"
    log.info("class %d, candidate below the threshold: transplant %s -> %s", test.c,
             [t.to_dict() for t in tests], decision)
    return decision, tests, _margin(shown_margin(place, bar, z))


def _stricter_bar(params: FlagsSection) -> tuple[float, float]:
    """The effect and z a suspect's margin is read at: the stricter of the suspects' bar
    (``transplant_min_effect``, ``transplant_min_z``) and that of the candidates below the
    threshold (``transplant_near_effect``, ``transplant_near_z``) — the bar a suspect would
    have to pass to stay one if its relevance score fell below the threshold."""
    return (max(params.transplant_min_effect, params.transplant_near_effect),
            max(params.transplant_min_z, params.transplant_near_z))


def _margin(value: float) -> float | None:
    """A :func:`~spray.verdict.transplant.shown_margin` as stored (4 places; None when no
    region had a finite error)."""
    return round(float(value), 4) if np.isfinite(value) else None


def _near_record(entry: ClusterEvidence, decision: str, tests: list) -> dict:
    """What :attr:`Verdict.near_tested` keeps of a candidate tested below the threshold."""
    where = ({"id": entry.id} if entry.id is not None else
             {"cut_graph": entry.cut_graph or "relevance", "cut_along": entry.cut_along})
    return {"score": entry.score, "size": entry.size, **where, "decision": decision,
            "tests": [t.to_dict() for t in tests],
            "members": np.flatnonzero(entry.mask).tolist()}


def _lift_by_edge_cut(clusters: list[ClusterEvidence], cuts: list[ClusterEvidence],
                      graphs: ClassGraphs, resamples: Resamples | None,
                      bar: float) -> list[ClusterEvidence]:
    """``edge_lift``: a cluster that an edge cut matches (Jaccard ≥ ``sweep_min_jaccard``: the
    cut could not split off) is measured against the edge graph too, with its own members, and
    keeps the better score. Without it such a group is scored by the relevance graph alone,
    although the same group differing by a few members would be scored by the edge graph."""
    params = graphs.params
    out = list(clusters)
    for i, c in enumerate(out):
        if not c.size or c.cut_graph == "edges" or not any(
                jaccard(c, e) >= params.sweep_min_jaccard for e in cuts):
            continue
        entry = ClusterEvidence.of(c.mask, id=c.id, split_from=c.split_from, cut_graph="edges")
        if measure(entry, graphs, bar).measured:
            stabilize_cuts([entry], resamples, params, bar)
            if c.score is None or entry.score > c.score:
                log.debug("cluster %d scored by the edge graph: %.3f (relevance graph: %s)",
                          c.id, entry.score, c.score)
                out[i] = entry
    return out


def _scored_cuts(cuts: list, graphs: ClassGraphs, clusters, resamples, bar: float) -> list:
    """The cuts that are candidates (none holds a whole cluster: it would remove it from the
    report), measured and scored (resampled while they can reach ``bar``)."""
    cuts = [e for e in cuts if not any(c.size and not (c.mask & ~e.mask).any() for c in clusters)
            and measure(e, graphs, bar).measured]
    stabilize_cuts(cuts, resamples, graphs.params, bar)
    return cuts


def _relevance_cuts(result, graphs: ClassGraphs) -> list:
    """Sweep cuts along the relevance graph's leading eigenvectors (``sweep_eigenvectors``)."""
    params = graphs.params
    if not params.sweep_eigenvectors or getattr(result, "eigenvectors", None) is None:
        return []
    return sweep_cuts(graphs.W, graphs.degree, result.eigenvectors, params.sweep_eigenvectors,
                      params)


def _edge_cuts(graphs: ClassGraphs) -> list:
    """Sweep cuts along the edge graph's leading eigenvectors (``edge_sweep_eigenvectors``)."""
    if graphs.edges is None:
        return []
    return edge_cuts(graphs.edges, graphs.params.edge_sweep_eigenvectors, graphs.params)


def _window_cuts(graphs: ClassGraphs) -> list:
    """Sweep cuts along the peak windows' graph's leading eigenvectors
    (``window_sweep_eigenvectors``), without the samples whose window holds no pattern (flat,
    or read from a non-finite input or map: a window of zeros, which would otherwise join any
    group). Made once per class (``graphs.window_cuts``)."""
    if graphs.window_cuts is None:
        graphs.window_cuts = _patterned_cuts(graphs)
    return graphs.window_cuts


def _patterned_cuts(graphs: ClassGraphs) -> list:
    """:func:`_window_cuts`, made."""
    cuts = edge_cuts(graphs.windows, graphs.params.window_sweep_eigenvectors, graphs.params,
                     graph="windows")
    patterned = np.abs(graphs.window_features).sum(axis=1) > 0
    if patterned.all():
        return cuts
    out, keys = [], set()
    for c in cuts:
        mask = c.mask & patterned
        key = mask_key(mask)
        if mask.any() and key not in keys:
            keys.add(key)
            out.append(ClusterEvidence.of(mask, cut_along=c.cut_along, cut_graph="windows"))
    return out


def _edge_resamples(result, graphs: ClassGraphs, pipeline: dict) -> Resamples | None:
    """The bootstrap's subsamples with the edge graph in place of the relevance graph (the
    contrast of an edge cut is stable when its edge graph separates it in the subsamples too);
    the same subsets as the relevance's (same seed and size)."""
    if graphs.edge_features is None or not graphs.params.edge_sweep_eigenvectors:
        return None
    return Resamples(graphs.edge_features, pipeline, int(result.k), graphs.params, graphs.cache)


def _suspects(clusters: list[ClusterEvidence], threshold: float, promoted: int | None
              ) -> list[int]:
    """The clusters at or above the threshold, best first, then ``promoted`` (a cluster below
    it the model is shown to follow, :func:`_follow_near`) if it is not among them."""
    scored = sorted((c for c in clusters if c.score is not None), key=lambda c: -c.score)
    out = [c.id for c in scored if c.score >= threshold]
    return out + ([promoted] if promoted is not None and promoted not in out else [])


def _verdict(clusters: list[ClusterEvidence], labels, splits, other_k,
             params: FlagsSection, pipeline: dict, threshold: float,
             promoted: int | None = None) -> Verdict:
    """The class score is the best cluster's; every cluster at or above the threshold is a
    suspect (an artefact on two sub-types of a class can come out as two clusters), best first;
    ``threshold`` is :func:`flag_threshold`'s. ``promoted``: a cluster below the threshold
    that is the suspect because the model follows its pieces (:func:`_follow_near`). A class
    without a scored candidate has no clean rate (its 0 is no score)."""
    scored = sorted((c for c in clusters if c.score is not None), key=lambda c: -c.score)
    best = scored[0] if scored else None
    score = best.score if best else 0.0
    suspects = _suspects(clusters, threshold, promoted)
    flagged = bool(suspects)
    return Verdict(score=float(score), threshold=threshold, flagged=flagged,
                   suspect_cluster=suspects[0] if flagged else None,
                   suspect_clusters=suspects,
                   candidate_cluster=best.id if best else None, clusters=clusters,
                   splits=splits, labels=labels,
                   other_k=sorted(other_k, key=lambda c: -c.score if c.score is not None
                                  else np.inf)[:10],
                   params=params.model_dump(), rule=params.score,
                   clean_rate=None if best is None else
                   clean_rate(float(score), params.model_dump(), pipeline))


def clever_hans_score(result, input_features: np.ndarray, pipeline: dict,
                      features=None, edge_features=None,
                      patterns: InputPatterns | None = None,
                      model_test: ModelTest | None = None) -> dict:
    """:func:`score_class` as the dict the run stores (``Verdict.to_dict()``)."""
    return score_class(result, input_features, pipeline, features, edge_features,
                       patterns, model_test).to_dict()
