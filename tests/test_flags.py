"""The Clever-Hans score on synthetic classes: artefact vs. natural sub-group, thresholds, evidence."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spray.analysis.analyze import analyze
from spray.config.presets import load_pipeline
from spray.errors import ConfigError
from spray.verdict.evidence import masked_inputs, size_penalty, touched_regions
from spray.verdict.graphs import conductance
from spray.verdict.score import clever_hans_score, flag_params
from spray.verdict.subsample import extend_labels, stratified_sample

GRID = 10


def _pipe(**flags):
    return load_pipeline("spray-default", overrides={
        "preprocess": {"pool": [GRID, GRID]}, "embedding": {"method": "none"},
        "flags": flags or None})


def _inputs(rng, n):
    """Blurry random 'objects': smooth positive images, one population."""
    centres = rng.uniform(3, 7, size=(n, 2))
    yy, xx = np.mgrid[0:GRID, 0:GRID]
    img = np.exp(-((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2)
                 / (2 * 2.0 ** 2))
    img += 0.05 * rng.random((n, GRID, GRID))
    return img


def _normalize(x):
    flat = x.reshape(len(x), -1)
    return flat / np.abs(flat).sum(axis=1, keepdims=True)


def _class_with_group(seed: int, size: int, mark_inputs, mark_relevance=None, n: int = 300):
    """A class of ``n`` blurry objects; ``size`` of them form a group marked in the inputs by
    ``mark_inputs(x, group)`` and in the relevance (noisy copy of the inputs) by
    ``mark_relevance(rel, group, rng)``. Returns (relevance, inputs, group), l1-normalized."""
    rng = np.random.default_rng(seed)
    x = _inputs(rng, n)
    group = np.zeros(n, dtype=bool)
    group[rng.choice(n, size=size, replace=False)] = True
    mark_inputs(x, group)
    rel = x * (1 + 0.3 * rng.standard_normal(x.shape))
    if mark_relevance is not None:
        mark_relevance(rel, group, rng)
    return _normalize(rel), _normalize(x), group


@pytest.fixture(scope="module")
def artefact_class():
    """20 % of the class: relevance dominated by one corner cell the inputs barely show."""
    def inputs(x, g):
        x[g, 0, 0] += 0.3                                   # faint in the inputs

    def relevance(rel, g, rng):
        rel[g] *= 0.3
        rel[g, 0, 0] = 6.0 + rng.random(g.sum())             # dominant in the relevance

    return _class_with_group(0, 60, inputs, relevance)


@pytest.fixture(scope="module")
def natural_class():
    """30 % of the class has an extra 'handle' in the inputs and the relevance follows it."""
    def inputs(x, g):
        x[g, 0:3, 3:7] += 1.5

    return _class_with_group(1, 90, inputs)


@pytest.fixture(scope="module")
def visible_artefact_class():
    """15 % of the class: a bright top row that dominates the inputs as much as the relevance."""
    def inputs(x, g):
        x[g, 0, :] += 1.0

    def relevance(rel, g, rng):
        rel[g, 0, :] += 0.5

    return _class_with_group(2, 45, inputs, relevance)


def _score(features, inputs, pipe):
    result = analyze(features, pipeline=pipe, embed=False)
    return result, clever_hans_score(result, inputs, pipe, features=features)


def test_artefact_is_flagged_with_evidence(artefact_class):
    feats, inputs, planted = artefact_class
    result, v = _score(feats, inputs, _pipe())
    assert v["flagged"] and v["score"] >= v["threshold"] == 1.7
    for key in ("rule", "score", "threshold", "flagged", "suspect_cluster", "candidate_cluster",
                "clusters", "params"):
        assert key in v
    members = v["labels"] == v["suspect_cluster"]
    assert (members & planted).sum() / members.sum() >= 0.9
    assert (members & planted).sum() / planted.sum() >= 0.9
    cl = next(c for c in v["clusters"] if c["id"] == v["suspect_cluster"])
    assert cl["conductance_relevance"] < cl["conductance_input"]
    assert cl["contrast_stable"] <= cl["contrast"]
    assert cl["score"] == pytest.approx(cl["contrast_stable"] - cl["size_penalty"]
                                        - cl["randomness_penalty"] - cl["colocation_penalty"])
    assert cl["peak"] == [0, 0] and cl["concentration"] > 0.5
    assert sum(c["size"] for c in v["clusters"]) == len(feats)


def test_natural_subgroup_is_not_flagged(natural_class):
    feats, inputs, group = natural_class
    result, v = _score(feats, inputs, _pipe())
    assert not v["flagged"] and v["suspect_cluster"] is None
    assert v["score"] < 1.0
    # the sub-group is found, it is just not a Clever-Hans candidate
    assert result.n_clusters >= 2


def test_artefact_visible_in_the_inputs_needs_the_input_mask(visible_artefact_class):
    """Whole inputs separate the group as well as the relevance does (contrast 0); without the
    cells where the group's relevance differs, its inputs look like the rest's."""
    feats, inputs, planted = visible_artefact_class
    result = analyze(feats, pipeline=_pipe(), embed=False)
    whole = clever_hans_score(result, inputs, _pipe(input_mask_area=0.0), features=feats)
    masked = clever_hans_score(result, inputs, _pipe(), features=feats)
    assert not whole["flagged"] and whole["score"] < 1.0
    assert masked["flagged"] and masked["params"]["input_mask_area"] == 0.1
    members = masked["labels"] == masked["suspect_cluster"]
    assert (members & planted).sum() / members.sum() >= 0.9
    assert (members & planted).sum() / planted.sum() >= 0.9
    cl = next(c for c in masked["clusters"] if c["id"] == masked["suspect_cluster"])
    assert cl["conductance_input"] > 0.5 and cl["peak"][0] == 0


def test_masked_inputs_drop_the_difference_cells():
    rng = np.random.default_rng(3)
    feats = rng.random((40, 20))
    mask = np.arange(40) < 10
    feats[mask, 3] += 5.0            # the group differs most in cells 3 and 7
    feats[mask, 7] -= 2.0
    inputs = _normalize(rng.random((40, 20)))
    out = masked_inputs(inputs, feats, mask, area=0.1, normalize="l1")
    assert np.all(out[:, [3, 7]] == 0) and np.count_nonzero(out == 0) == 80
    np.testing.assert_allclose(np.abs(out).sum(axis=1), 1.0, rtol=1e-6)
    out = masked_inputs(inputs, feats, mask, area=0.05, normalize="l2")
    assert np.all(out[:, 3] == 0) and np.all(out[:, 7] != 0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    raw = masked_inputs(inputs, feats, mask, area=0.1, normalize="none")
    np.testing.assert_array_equal(np.delete(raw, [3, 7], axis=1),
                                  np.delete(inputs, [3, 7], axis=1).astype(np.float32))


def test_thresholds_come_from_the_preset(artefact_class):
    feats, inputs, _ = artefact_class
    result = analyze(feats, pipeline=_pipe(), embed=False)

    def score(**flags):
        return clever_hans_score(result, inputs, _pipe(**flags), features=feats)

    v = score(threshold=50.0)
    assert not v["flagged"] and v["candidate_cluster"] is not None
    assert v["params"]["threshold"] == 50.0
    # a sweep cut of 17 stamped samples may remain; as cut (nobody joins) it is within the limit
    v = score(max_cluster_fraction=0.1, trim_min_auc=1.01)
    assert all(c["fraction"] <= 0.1 for c in v["clusters"] if c.get("score") is not None)
    # the stamped samples the limit kept out of it join it
    v = score(max_cluster_fraction=0.1)
    assert v["suspect_clusters"] and all(c["joined"] > 0 for c in v["clusters"]
                                        if c["id"] in v["suspect_clusters"])
    v = score(max_cluster_fraction=0.1, candidates="analysis", sweep_eigenvectors=0)
    assert not v["flagged"] and all("score" not in c for c in v["clusters"])
    v = score(min_concentration=0.99)
    assert not v["flagged"] and any("excluded" in c for c in v["clusters"])
    v = score(bootstrap=0)
    assert all(c["contrast_stable"] == c["contrast"] for c in v["clusters"] if "contrast" in c)
    # without the relevance features: plain contrast, no concentration
    v = clever_hans_score(result, inputs, _pipe())
    cand = [c for c in v["clusters"] if "contrast" in c]
    assert cand and all(c["contrast_stable"] == c["contrast"] and "concentration" not in c
                        for c in cand)
    assert v["flagged"]
    with pytest.raises(ConfigError, match="flags.score"):
        clever_hans_score(result, inputs, _pipe(score="largest-gap"), features=feats)
    with pytest.raises(ConfigError, match="flags.candidates"):
        clever_hans_score(result, inputs, _pipe(candidates="every"), features=feats)
    with pytest.raises(ConfigError, match="flags.input_mask_area"):
        _pipe(input_mask_area=1.5)


def test_candidates_from_other_k(artefact_class):
    """all-k also scores the clusters of every other K; the suspect stays an analysis cluster."""
    feats, inputs, planted = artefact_class
    result = analyze(feats, pipeline=_pipe(), embed=False)
    only = clever_hans_score(result, inputs, _pipe(candidates="analysis"), features=feats)
    allk = clever_hans_score(result, inputs, _pipe(candidates="all-k"), features=feats)
    for v in (only, allk):
        ids = set(np.unique(v["labels"]).tolist())
        assert {c["id"] for c in v["clusters"]} == ids
        assert v["suspect_cluster"] in ids
    assert only["other_k"] == [] and not any("score_from_k" in c for c in only["clusters"])
    assert allk["other_k"], "max_clusters 10 gives candidates at other K"
    for c in allk["other_k"]:
        assert 2 <= c["n_clusters"] <= 10 and c["n_clusters"] != result.n_clusters
        assert "contrast" in c
    scores = [c["score"] for c in allk["other_k"] if "score" in c]
    assert scores == sorted(scores, reverse=True)
    by_id = {c["id"]: c for c in only["clusters"]}
    for c in allk["clusters"]:
        if "score" not in c:
            continue
        own = by_id[c["id"]]["score"]
        src = c.get("score_from_k")
        if src is None:
            assert c["score"] == own
        else:   # lifted by a group of another K that overlaps it enough
            assert c["score"] == src["score"] > own and src["jaccard"] >= 0.5
    assert allk["score"] >= only["score"] and allk["flagged"] and only["flagged"]
    # requiring identical groups turns the other K off (identical groups are dropped as duplicates)
    strict = clever_hans_score(result, inputs, _pipe(candidates="all-k", other_k_min_jaccard=1.0),
                               features=feats)
    assert strict["score"] == only["score"]


def test_conductance_and_size_prior():
    # two triangles joined by one edge: cut 1, volumes 7 and 7
    edges = [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (2, 3)]
    W = sp.lil_matrix((6, 6))
    for i, j in edges:
        W[i, j] = W[j, i] = 1.0
    W = W.tocsr()
    assert conductance(W, np.array([0, 1, 2])) == pytest.approx(1 / 7)
    assert conductance(W, np.arange(6)) == 0.0
    params = flag_params({"flags": {"size_prior_knee": 0.3, "size_prior_weight": 2.0}})
    assert size_penalty(0.2, params) == 0.0
    assert size_penalty(0.4, params) == pytest.approx(1.0)
    assert size_penalty(0.5, params) == pytest.approx(2.0)


@pytest.mark.parametrize("halves", [False, True])
def test_resampling_skips_only_candidates_that_cannot_win(natural_class, halves):
    """Candidates whose plain score is below the best stable score are not resampled; resampling
    them anyway gives stable scores below the class score, so the verdict is the same."""
    from spray.verdict.bootstrap import Resamples

    feats, inputs, _ = natural_class
    pipe = load_pipeline("spray-default", overrides={
        "preprocess": {"pool": [GRID, GRID]}, "embedding": {"method": "none"},
        "clustering": {"n_clusters": 8}, "flags": {"bisect_clusters": halves}})
    result = analyze(feats, pipeline=pipe, embed=False)
    v = clever_hans_score(result, inputs, pipe, features=feats)
    cand = [c for c in v["clusters"] if "contrast" in c]
    skipped = [c for c in cand if c.get("resampled") is False]
    assert skipped and len(skipped) < len(cand)
    params = flag_params(pipe)
    resamples = Resamples(feats.astype(np.float32), pipe, int(result.k), params)
    for c in skipped:
        mask = v["labels"] == c["id"]
        penalty = sum(c.get(k) or 0.0 for k in (
            "size_penalty", "randomness_penalty", "colocation_penalty", "edge_penalty",
            "hot_spot_penalty", "hot_spot_mass_penalty"))
        assert c["score"] == pytest.approx(c["contrast"] - penalty)
        X = masked_inputs(inputs, feats, mask, params.input_mask_area, "l1")
        stable = min(np.quantile(resamples.contrasts(X, mask), params.bootstrap_quantile),
                     c["contrast"])
        assert stable - penalty <= v["score"] + 1e-9


def test_random_conductance_matches_random_subsets():
    """Random subsets of a real kNN graph have the conductance max(s, n − s)/(n − 1) on average."""
    from spray.analysis.knn import knn_affinity
    from spray.verdict.graphs import random_conductance

    rng = np.random.default_rng(5)
    X = rng.standard_normal((400, 8))
    X[:200] += 3.0                                           # two blobs: structure does not matter
    W = knn_affinity(X, {**_pipe()["affinity"], "k": 6})
    for size in (20, 80, 200, 320):
        values = [conductance(W, rng.choice(400, size=size, replace=False)) for _ in range(200)]
        assert np.mean(values) == pytest.approx(random_conductance(size, 400), rel=0.03)
    # a blob is far from random
    assert conductance(W, np.arange(200)) < 0.2 * random_conductance(200, 400)


def _local_mark_class(shift: int):
    """20 % of the class carry a local bar that the relevance amplifies; with ``shift`` > 0 the
    same objects also sit ``shift`` cells lower (a style of the class, like a crossed 7), with 0
    the bar is stamped on random objects (an artefact)."""
    def inputs(x, g):
        x[g] = np.roll(x[g], shift, axis=1)
        x[g, 5, 3:7] += 0.3

    def relevance(rel, g, rng):
        rel[g, 5, 3:7] *= 3.0
        rel += rng.standard_normal(rel.shape) * np.abs(rel).mean()

    return _class_with_group(4, 60, inputs, relevance)


def test_group_whose_inputs_are_grouped_beyond_the_mask_is_natural():
    """The inputs of a natural sub-group stay grouped without the cells where they differ most
    (input randomness well below 1); an artefact's look like a random subset (≈ 1)."""
    weight = flag_params(_pipe()).input_randomness_weight
    assert weight > 0
    natural, artefact = _local_mark_class(2), _local_mark_class(0)
    feats, inputs, group = natural
    result = analyze(feats, pipeline=_pipe(), embed=False)
    without = clever_hans_score(result, inputs, _pipe(input_randomness_weight=0.0,
                                                      colocation_weight=0.0), features=feats)
    v = clever_hans_score(result, inputs, _pipe(), features=feats)
    assert without["flagged"], "contrast alone takes the style for an artefact"
    assert not v["flagged"] and v["score"] < 1.0
    cl = next(c for c in v["clusters"] if c["id"] == v["candidate_cluster"])
    members = v["labels"] == cl["id"]
    assert (members & group).sum() / members.sum() >= 0.9
    assert cl["input_randomness"] < 0.6
    assert cl["randomness_penalty"] == pytest.approx(weight * (0.9 - cl["input_randomness"]),
                                                     abs=1e-3)
    assert cl["score"] == pytest.approx(cl["contrast_stable"] - cl["size_penalty"]
                                        - cl["randomness_penalty"] - cl["colocation_penalty"],
                                        abs=1e-3)
    feats, inputs, group = artefact
    result, v = _score(feats, inputs, _pipe())
    assert v["flagged"]
    cl = next(c for c in v["clusters"] if c["id"] == v["suspect_cluster"])
    assert cl["input_randomness"] > 0.9 and cl["randomness_penalty"] == 0.0
    members = v["labels"] == cl["id"]
    assert (members & group).sum() / group.sum() >= 0.9


def test_every_cluster_above_the_threshold_is_a_suspect(artefact_class):
    feats, inputs, _ = artefact_class
    result = analyze(feats, pipeline=_pipe(), embed=False)

    def verdict(threshold):
        return clever_hans_score(result, inputs, _pipe(threshold=threshold), features=feats)

    v = verdict(2.0)
    assert v["suspect_clusters"][0] == v["suspect_cluster"]
    scores = {c["id"]: c["score"] for c in v["clusters"] if "score" in c}
    assert all(scores[c] >= 2.0 for c in v["suspect_clusters"])
    assert [c for c in scores if scores[c] >= 2.0] == sorted(v["suspect_clusters"])
    low = verdict(-100.0)      # every cluster a suspect (and split where a half beats it)
    low_scores = {c["id"]: c["score"] for c in low["clusters"] if "score" in c}
    assert low["suspect_clusters"] == sorted(low_scores, key=lambda c: -low_scores[c])
    high = verdict(50.0)
    assert high["suspect_clusters"] == [] and not high["flagged"]


def test_bisect_splits_two_joined_blobs():
    from spray.analysis.knn import knn_affinity
    from spray.verdict.graphs import bisect

    rng = np.random.default_rng(7)
    X = np.concatenate([rng.standard_normal((60, 4)), rng.standard_normal((40, 4)) + 6.0])
    W = knn_affinity(X, {**_pipe()["affinity"], "k": 5})
    members = np.ones(100, dtype=bool)
    members[:10] = False                          # bisect a cluster, not the whole graph
    side = bisect(W, members)
    assert side is not None and not side[:10].any()
    blob = np.arange(100) >= 60
    assert np.array_equal(side, blob) or np.array_equal(side, members & ~blob)
    assert bisect(W, np.arange(100) < 3) is None   # too small to split


def test_suspect_half_of_a_cluster_is_split_off(artefact_class):
    """A cluster that holds the artefact group and samples from elsewhere (as when the eigengap's
    K merges them): its spectral bisection gives the artefact half, which becomes the suspect
    cluster under a new id; the cluster keeps its other half."""
    from dataclasses import replace

    feats, inputs, planted = artefact_class
    result = analyze(feats, pipeline=_pipe(), embed=False)
    art = np.bincount(result.labels[planted]).argmax()
    merged = np.array(result.labels)
    others = np.flatnonzero(merged != art)[:25]
    merged[others] = art                          # 60 artefact samples + 25 from other clusters
    result = replace(result, labels=merged)
    split = clever_hans_score(result, inputs, _pipe(), features=feats)
    whole = clever_hans_score(result, inputs, _pipe(bisect_clusters=False, sweep_eigenvectors=0),
                              features=feats)
    new_id = int(merged.max()) + 1
    assert split["splits"] == [{"cluster": new_id, "from": int(art)}]
    assert split["flagged"] and split["suspect_cluster"] == new_id
    assert split["score"] > whole["score"]
    labels = split["labels"]
    members = labels == new_id
    assert (members & planted).sum() / members.sum() >= 0.95
    assert (members & planted).sum() / planted.sum() >= 0.9
    assert np.array_equal(labels == art, (merged == art) & ~members)     # it keeps the rest
    assert np.array_equal(labels[merged != art], merged[merged != art])  # others untouched
    entries = {c["id"]: c for c in split["clusters"]}
    assert entries[new_id]["split_from"] == art and entries[new_id]["size"] == members.sum()
    assert entries[art]["size"] == int((labels == art).sum())
    assert sum(c["size"] for c in split["clusters"]) == len(feats)
    # without the bisection the merged cluster is all there is: the labels stay the analysis'
    assert whole["splits"] == [] and np.array_equal(whole["labels"], merged)
    w = np.isin(whole["labels"], whole["suspect_clusters"])
    assert not whole["flagged"] or (w & planted).sum() / w.sum() < 0.75


def test_every_candidate_that_reaches_the_threshold_is_resampled(natural_class):
    """Candidates below the best stable score but at or above the threshold are suspects, so
    they must carry a bootstrap score, not the plain upper bound."""
    feats, inputs, _ = natural_class
    pipe = load_pipeline("spray-default", overrides={
        "preprocess": {"pool": [GRID, GRID]}, "embedding": {"method": "none"},
        "clustering": {"n_clusters": 8}, "flags": {"threshold": -100.0}})
    result = analyze(feats, pipeline=pipe, embed=False)
    v = clever_hans_score(result, inputs, pipe, features=feats)
    assert len(v["suspect_clusters"]) >= 4
    for c in v["clusters"]:
        if "score" in c:
            assert "contrast_stable" in c, "a suspect must carry its bootstrap score"


def test_sweep_cut_is_the_prefix_of_least_conductance():
    from spray.verdict.graphs import mask_conductance, sweep_cut, with_degree

    rng = np.random.default_rng(8)
    A = sp.random(40, 40, density=0.15, random_state=2)
    W, degree = with_degree(A + A.T)
    for _ in range(5):
        order = rng.permutation(40)
        phi = [mask_conductance(W, degree, np.isin(np.arange(40), order[:i]))
               for i in range(1, 40)]
        assert sweep_cut(W, degree, order) == int(np.argmin(phi)) + 1


def test_unassigned_samples_are_not_bisected(artefact_class):
    """Label −1 (unassigned, e.g. by hdbscan) stays one entry and is never split."""
    from dataclasses import replace

    feats, inputs, _ = artefact_class
    result = analyze(feats, pipeline=_pipe(), embed=False)
    labels = np.array(result.labels)
    labels[np.flatnonzero(labels == 0)[:40]] = -1
    v = clever_hans_score(replace(result, labels=labels), inputs, _pipe(threshold=-100.0),
                          features=feats)
    assert -1 in {c["id"] for c in v["clusters"]}
    assert all(s["from"] != -1 for s in v["splits"])
    assert np.array_equal(v["labels"] == -1, labels == -1)
    assert sum(c["size"] for c in v["clusters"]) == len(feats)


def test_bisect_cuts_a_connected_cluster_along_its_fiedler_vector():
    """One connected cluster of two touching blobs: the sweep over the Fiedler order finds them."""
    from scipy.sparse.csgraph import connected_components

    from spray.analysis.knn import knn_affinity
    from spray.verdict.graphs import bisect

    rng = np.random.default_rng(9)
    X = np.concatenate([rng.standard_normal((150, 2)), rng.standard_normal((100, 2)) + [4.0, 0]])
    W = knn_affinity(X, {**_pipe()["affinity"], "k": 8})
    assert connected_components(W, directed=False)[0] == 1
    side = bisect(W, np.ones(250, dtype=bool))
    blob = np.arange(250) >= 150
    assert side.sum() <= 125 and (side == blob).mean() >= 0.95


@pytest.mark.parametrize("flags, key", [
    ({"bootstrp": 50}, "flags.bootstrp': unknown key"),
    ({"score": "input-contrats"}, "flags.score'"),
    ({"bootstrap_fraction": 7}, "flags.bootstrap_fraction'"),
    ({"bootstrap": -1}, "flags.bootstrap'"),
    ({"min_cluster_size": 0}, "flags.min_cluster_size'"),
    ({"bootstrap_quantile": 1.5}, "flags.bootstrap_quantile'"),
])
def test_flags_section_is_validated_when_the_pipeline_loads(flags, key):
    """A typo or an out-of-range value in ``flags:`` fails at load time, naming the key, not
    per class on a worker after the LRP work."""
    with pytest.raises(ConfigError, match=key):
        _pipe(**flags)


def test_flags_defaults_have_one_home():
    """The preset does not repeat the defaults: the loaded section is the model's defaults."""
    from spray.config.presets import FlagsSection

    assert _pipe()["flags"] == FlagsSection().model_dump()
    assert flag_params({}) == FlagsSection()


def test_sweep_cut_finds_a_group_the_eigengap_merged_into_a_majority(artefact_class):
    """K = 2 with the artefact group inside a cluster of more than half the class (no
    candidate, halves off): a sweep cut along a leading eigenvector still isolates it, and it is
    split off as a new cluster with its evidence; without sweeps it is missed."""
    from dataclasses import replace

    feats, inputs, planted = artefact_class
    result = analyze(feats, pipeline=_pipe(), embed=False)
    merged = np.where(planted, 0, 1)
    merged[np.flatnonzero(~planted)[:120]] = 0        # 60 planted + 120 others: 60 % of 300
    result = replace(result, labels=merged, n_clusters=2)
    off = clever_hans_score(result, inputs, _pipe(bisect_clusters=False, sweep_eigenvectors=0),
                            features=feats)
    on = clever_hans_score(result, inputs, _pipe(bisect_clusters=False), features=feats)
    assert not off["flagged"]
    assert on["flagged"] and on["splits"] == [{"cluster": 2, "from": 0}]
    members = on["labels"] == on["suspect_cluster"]
    assert (members & planted).sum() / members.sum() >= 0.9
    assert (members & planted).sum() / planted.sum() >= 0.9
    entry = next(c for c in on["clusters"] if c["id"] == 2)
    assert entry["split_from"] == 0 and entry["cut_along"] != 0 and "contrast_stable" in entry
    assert sum(c["size"] for c in on["clusters"]) == len(feats)
    rest = next(c for c in on["clusters"] if c["id"] == 0)
    assert rest["size"] == int((on["labels"] == 0).sum())


def test_sweep_cuts_leave_a_natural_subgroup_alone(natural_class):
    feats, inputs, _ = natural_class
    result, v = _score(feats, inputs, _pipe())
    assert not v["flagged"] and v["splits"] == [] and v["score"] < 1.0


def test_sweep_split_keeps_every_cluster(artefact_class):
    """With every candidate a suspect, a sweep cut that would hold a whole cluster is not split
    off: every split names a cluster that still exists, and labels and entries agree."""
    feats, inputs, _ = artefact_class
    pipe = load_pipeline("spray-default", overrides={
        "preprocess": {"pool": [GRID, GRID]}, "embedding": {"method": "none"},
        "clustering": {"n_clusters": 6}, "flags": {"threshold": -100.0}})
    result = analyze(feats, pipeline=pipe, embed=False)
    v = clever_hans_score(result, inputs, pipe, features=feats)
    sizes = {c["id"]: c["size"] for c in v["clusters"]}
    assert set(np.unique(v["labels"]).tolist()) == set(sizes)
    assert all(int((v["labels"] == cid).sum()) == size for cid, size in sizes.items())
    for s in v["splits"]:
        assert s["cluster"] in sizes and s["from"] in sizes


def _tied_rows(seed: int, n: int, d: int) -> np.ndarray:
    """Rows on a coarse lattice (many exactly equal distances) with a few duplicate rows,
    normalized to unit sum."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 4, size=(n, d)).astype(np.float32) + 0.25
    X[n // 2:n // 2 + 5] = X[:5]
    return X / X.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("weighting", ["binary", "gaussian", "local-scaling"])
def test_subsample_graphs_from_one_search_equal_their_own_search(weighting):
    """The kNN graph of a subsample taken from the whole array's longer lists is the graph a
    search of the subsample builds, also with lists too short for some rows (searched again).
    (Exact ties are not compared: scikit-learn's own order of tied neighbours changes with the
    number of neighbours asked for.)"""
    from spray.verdict.graphs import NeighbourLists, extended_k, knn_graph

    X = np.random.default_rng(0).random((400, 12)).astype(np.float32)
    aff = {**_pipe()["affinity"], "weighting": weighting, "k": 6}
    rng = np.random.default_rng(1)
    for k_ext, m in ((extended_k(6, 400, 320, 10), 320), (8, 220)):
        lists = NeighbourLists(X, aff, k_ext)
        assert lists.derive
        assert abs(lists.whole()[0] - knn_graph(X, aff)[0]).max() == 0
        for _ in range(3):
            idx = np.sort(rng.choice(400, size=m, replace=False))
            want, got = knn_graph(X[idx], aff)[0], lists.subsample(idx, 6)[0]
            assert want.nnz == got.nnz and abs(want - got).max() < 1e-6


def test_extended_k_searches_anew_when_lists_cannot_serve():
    from spray.verdict.graphs import extended_k

    assert extended_k(8, 1000, 800, 10) == 20
    assert extended_k(8, 1000, 800, 0) == 8          # no resamples
    assert extended_k(8, 100_000, 20_000, 10) == 8   # small subsamples: their own searches


@pytest.mark.parametrize("normalize", ["l1", "l2", "none"])
def test_masked_search_equals_the_exact_search(normalize):
    """Neighbours of the inputs without some cells, from the Gram matrix, are the exact
    search's (on rows with exact ties and duplicates: the same distances, the tied members
    may differ)."""
    from spray.analysis.knn import exact_knn
    from spray.verdict.evidence import without_cells
    from spray.verdict.graphs import MaskedSearch

    rng = np.random.default_rng(2)
    for tied, X in ((False, rng.random((500, 64)).astype(np.float32)),
                    (True, _tied_rows(3, 500, 64))):
        search = MaskedSearch(X)
        for _ in range(2):
            cells = rng.choice(64, size=7, replace=False)
            Xm, scale = without_cells(X, cells, normalize)
            assert np.array_equal(Xm, masked_inputs_of(X, cells, normalize))
            want_i, want_d = exact_knn(Xm, 15)
            got_i, got_d = search.neighbours(Xm, cells, scale, 15)
            assert tied or np.array_equal(want_i, got_i)
            assert np.allclose(want_d, got_d, atol=1e-5)


@pytest.mark.parametrize("normalize", ["l1", "none"])
def test_guided_masked_search_equals_the_unguided_one(normalize):
    """A search that selects each row's shortlist below the bound of an earlier search's
    columns returns the very lists (indices and distances, ties included) of a search over
    the whole rows."""
    from spray.verdict.evidence import without_cells
    from spray.verdict.graphs import MaskedSearch

    rng = np.random.default_rng(5)
    for X in (rng.random((700, 48)).astype(np.float32), _tied_rows(3, 700, 48)):
        guided = MaskedSearch(X)
        for _ in range(4):
            cells = rng.choice(48, size=5, replace=False)
            Xm, scale = without_cells(X, cells, normalize)
            got = guided.neighbours(Xm, cells, scale, 12)
            assert guided._guide                    # the first search leaves its shortlists
            want = MaskedSearch(X).neighbours(Xm, cells, scale, 12)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_candidates_with_the_same_cells_share_one_search(natural_class):
    """Two groups whose relevance differs most in the same cells get the same masked inputs,
    searched once."""
    from spray.verdict.evidence import ClassGraphs, top_cells

    feats, inputs, _ = natural_class
    pipe = _pipe()
    result = analyze(feats, pipeline=pipe, embed=False)
    graphs = ClassGraphs.build(result, inputs, pipe, flag_params(pipe), feats)
    mask = np.asarray(result.labels) == np.asarray(result.labels)[0]
    fewer = mask.copy()
    fewer[np.flatnonzero(mask)[0]] = False
    cells = [top_cells(np.abs(graphs.difference(feats, m)), graphs.mask_area)
             for m in (mask, fewer)]
    assert np.array_equal(*cells)
    assert graphs._masked(graphs.hot_spot(mask)) is graphs._masked(graphs.hot_spot(fewer))
    assert graphs.inputs_for(mask) is graphs.inputs_for(fewer)


def masked_inputs_of(X, cells, normalize):
    """The inputs without ``cells`` as :func:`masked_inputs` makes them (its cells are the
    largest relevance differences: a relevance that differs only there)."""
    feats = np.zeros_like(X)
    mask = np.zeros(len(X), dtype=bool)
    mask[: len(X) // 3] = True
    feats[np.ix_(mask, cells)] = 1.0 + np.arange(len(cells))
    return masked_inputs(X, feats, mask, len(cells) / X.shape[1], normalize)


def test_shared_searches_leave_the_verdict_unchanged(natural_class):
    """The class's verdict with the bootstrap graphs taken from shared lists is the verdict
    with every resample searched on its own."""
    from spray.verdict.bootstrap import Resamples
    from spray.verdict.graphs import GraphCache

    feats, inputs, _ = natural_class
    pipe = _pipe()
    result = analyze(feats, pipeline=pipe, embed=False)
    v = clever_hans_score(result, inputs, pipe, features=feats)
    params = flag_params(pipe)
    own = Resamples(feats.astype(np.float32), pipe, int(result.k), params,
                    GraphCache({**pipe["affinity"], "k": int(result.k)}, int(result.k)))
    shared = Resamples(feats.astype(np.float32), pipe, int(result.k), params)
    for c in (c for c in v["clusters"] if "contrast" in c):
        mask = v["labels"] == c["id"]
        X = masked_inputs(inputs, feats, mask, params.input_mask_area, "l1")
        assert shared.contrasts(X, mask) == pytest.approx(own.contrasts(X, mask), abs=1e-12)


def _elsewhere_class():
    """20 % of the class differ in their inputs at one place (a faint mark low on the object,
    like a sleeve) while the model looks differently at another place (top right): a
    sub-group the model treats apart, whose inputs do not differ where its relevance does."""
    def inputs(x, g):
        x[g, 8, 2:6] += 0.3

    def relevance(rel, g, rng):
        rel[g, 1, 6:9] = 3.0 + rng.random((g.sum(), 3))

    return _class_with_group(5, 60, inputs, relevance)


def test_colocation_separates_an_artefact_from_a_group_the_model_sees_elsewhere():
    """An artefact's inputs differ where its relevance differs (colocation above the knee, no
    penalty); a group whose inputs differ somewhere else is lowered by the colocation penalty."""
    params = flag_params(_pipe())
    assert params.colocation_weight > 0 and params.colocation_knee == 0.5
    feats, inputs, group = _elsewhere_class()
    result = analyze(feats, pipeline=_pipe(), embed=False)
    without = clever_hans_score(result, inputs, _pipe(colocation_weight=0.0), features=feats)
    v = clever_hans_score(result, inputs, _pipe(), features=feats)
    cl = next(c for c in v["clusters"] if c["id"] == v["candidate_cluster"])
    members = v["labels"] == cl["id"]
    assert (members & group).sum() / members.sum() >= 0.9
    assert cl["colocation"] < 0.3
    assert cl["colocation_penalty"] == pytest.approx(
        params.colocation_weight * (params.colocation_knee - cl["colocation"]), abs=1e-3)
    assert v["score"] == pytest.approx(without["score"] - cl["colocation_penalty"], abs=1e-3)
    feats, inputs, group = _local_mark_class(0)
    result, v = _score(feats, inputs, _pipe())
    cl = next(c for c in v["clusters"] if c["id"] == v["suspect_cluster"])
    assert v["flagged"] and cl["colocation"] > 0.5 and cl["colocation_penalty"] == 0.0


def test_input_excess_ignores_chance_differences():
    """Cells where a random subset differs only by chance have no excess; a stamped cell has."""
    from spray.verdict.evidence import input_excess

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 50))
    mask = np.zeros(400, dtype=bool)
    mask[rng.choice(400, 40, replace=False)] = True
    assert (input_excess(X, mask, 2.0) > 0).sum() <= 5
    X[mask, 7] += 3.0
    excess = input_excess(X, mask, 2.0)
    assert np.argmax(excess) == 7 and excess[7] > 10 * np.delete(excess, 7).max(initial=0.1)
    assert np.allclose(input_excess(X, mask, 0.0), np.abs(X[mask].mean(0) - X[~mask].mean(0)))


def _same_verdict(a: dict, b: dict) -> bool:
    """Two verdict dicts equal key by key (arrays element by element)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_verdict(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_verdict(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b and type(a) is type(b)


def test_sweep_cuts_below_the_bar_skip_their_randomness_graph(artefact_class, natural_class,
                                                              monkeypatch):
    """A sweep cut whose score stays below the bar whatever its randomness gets no randomness
    graph, and the verdict is the one with every cut measured in full."""
    from dataclasses import replace

    import spray.verdict.evidence as evidence

    below = evidence._below
    skipped = []
    cases = []
    for feats, inputs, planted in (artefact_class, natural_class):
        result = analyze(feats, pipeline=_pipe(), embed=False)
        cases.append((result, feats, inputs))
        merged = np.where(planted, 0, 1)
        merged[np.flatnonzero(~planted)[:120]] = 0
        cases.append((replace(result, labels=merged, n_clusters=2), feats, inputs))
    for result, feats, inputs in cases:
        monkeypatch.setattr(evidence, "_below", lambda *a: skipped.append(below(*a)) or skipped[-1])
        fast = clever_hans_score(result, inputs, _pipe(), features=feats)
        monkeypatch.setattr(evidence, "_below", lambda *a: False)
        full = clever_hans_score(result, inputs, _pipe(), features=feats)
        assert _same_verdict(fast, full)
    assert any(skipped) and not all(skipped), skipped


def _edge_classes():
    """Two classes whose relevance singles out 20 % of the samples at the top-left corner: in
    the first the group's inputs carry a stamp there (a bright 2×2 block: new edges), in the
    second its inputs are like the rest's (the model looks differently at objects that are not
    marked at all). Returns, per class, (relevance, inputs, raw images, group)."""
    out = []
    for seed, stamp in ((11, True), (12, False)):
        rng = np.random.default_rng(seed)
        x = _inputs(rng, 300)
        group = np.zeros(300, dtype=bool)
        group[rng.choice(300, size=60, replace=False)] = True
        if stamp:
            x[group, 0:2, 0:2] += 1.0
        rel = x * (1 + 0.3 * rng.standard_normal(x.shape))
        rel[group] *= 0.3
        rel[group, 0, 0] = 6.0 + rng.random(group.sum())
        out.append((_normalize(rel), _normalize(x), x, group))
    return out


def test_edge_randomness_lowers_a_group_the_inputs_edges_do_not_tell_apart():
    """Without the edge term both groups are flagged; with it the stamped group keeps its score
    (its edges separate it: edge randomness well below the knee) and the unmarked group is
    lowered by ``edge_randomness_weight`` per unit of edge randomness above the knee."""
    from spray.analysis.preprocess import edge_energy, preprocess

    params = flag_params(_pipe())
    assert params.edge_randomness_knee == 0.6 and params.edge_randomness_weight == 10.0
    (stamped, unmarked) = _edge_classes()
    with_edges = _pipe()
    for i, (feats, inputs, raw, group) in enumerate((stamped, unmarked)):
        edges = preprocess(edge_energy(raw), with_edges["preprocess"])
        result = analyze(feats, pipeline=_pipe(), embed=False)
        # without the edge term the colocation of the regions its hot spot touches lifts a
        # half of the unmarked group (objects at the corner: random without their footprint)
        # to 2.4; with it the class scores as with the hot spot alone
        off = clever_hans_score(result, inputs, _pipe(edge_randomness_weight=0.0,
                                                      colocation_region_share=0.0),
                                features=feats, edge_features=edges)
        alone = clever_hans_score(result, inputs, _pipe(colocation_region_share=0.0),
                                  features=feats, edge_features=edges)
        on = clever_hans_score(result, inputs, with_edges, features=feats, edge_features=edges)
        assert off["flagged"] and on["score"] == alone["score"]
        assert all("edge_randomness" not in c for c in off["clusters"])   # weight 0: unmeasured
        cl = next(c for c in on["clusters"] if c["id"] == on["candidate_cluster"])
        members = on["labels"] == cl["id"]
        assert (members & group).sum() / members.sum() >= 0.9
        if i == 0:
            assert on["flagged"] and cl["edge_randomness"] < 0.5 and cl["edge_penalty"] == 0.0
            assert on["score"] == pytest.approx(off["score"], abs=1e-3)
        else:
            assert cl["edge_randomness"] > 0.85
            assert cl["edge_penalty"] == pytest.approx(
                10.0 * (cl["edge_randomness"] - 0.6), abs=1e-3)
            assert on["score"] == pytest.approx(off["score"] - cl["edge_penalty"], abs=1e-3)


def test_sweep_cuts_pruned_by_their_edge_penalty_leave_the_verdict_unchanged(monkeypatch):
    """With edge features, a sweep cut whose size, colocation and edge penalties keep it below
    the bar even with φ_input = 1 gets no input graph at all, and the verdict is the one with
    every cut measured in full; the edge graph from blocks of E Eᵀ is the affinity's graph."""
    import spray.verdict.evidence as evidence
    from spray.analysis.preprocess import edge_energy, preprocess
    from spray.verdict.evidence import ClassGraphs
    from spray.verdict.graphs import knn_graph

    below, searched = evidence._below, []
    inputs_for = ClassGraphs.inputs_for
    monkeypatch.setattr(ClassGraphs, "inputs_for",
                        lambda self, m: searched.append(1) or inputs_for(self, m))
    pruned, counts = [], []
    for feats, inputs, raw, _ in _edge_classes():
        pipe = _pipe()
        edges = preprocess(edge_energy(raw), pipe["preprocess"])
        result = analyze(feats, pipeline=pipe, embed=False)
        graphs = ClassGraphs.build(result, inputs, pipe, flag_params(pipe), feats, edges)
        want = knn_graph(edges, {**pipe["affinity"], "k": int(result.k)})
        assert (graphs.edges[0] != want[0]).nnz == 0
        searched.clear()
        monkeypatch.setattr(evidence, "_below",
                            lambda *a: pruned.append(bool(a[-1]) and below(*a)) or below(*a))
        fast = clever_hans_score(result, inputs, pipe, features=feats, edge_features=edges)
        fast_searches = len(searched)
        searched.clear()
        monkeypatch.setattr(evidence, "_below", lambda *a: False)
        full = clever_hans_score(result, inputs, pipe, features=feats, edge_features=edges)
        assert _same_verdict(fast, full)
        counts.append((fast_searches, len(searched)))
    assert any(pruned)
    assert all(f <= s for f, s in counts) and any(f < s for f, s in counts), counts


def test_edge_energy_sums_the_channels_gradient_magnitudes():
    from spray.analysis.preprocess import edge_energy

    x = np.zeros((1, 3, 6, 6), dtype=np.float32)
    x[0, 0, :, 3:] = 1.0              # a vertical edge in red
    x[0, 2, 3:, :] = 2.0              # a horizontal edge in blue, twice as strong
    e = edge_energy(x)
    assert e.shape == (1, 6, 6)
    # the pixels beside an edge: the mean squared step to their two neighbours, 1/2 and 4/2
    assert e[0, 0, 2] == pytest.approx(np.sqrt(0.5)) and e[0, 0, 0] == 0.0
    assert e[0, 2, 0] == pytest.approx(np.sqrt(2.0))
    assert e[0, 2, 2] == pytest.approx(np.sqrt(0.5) + np.sqrt(2.0))
    assert np.array_equal(edge_energy(x[:, 0]), edge_energy(x[:, :1]))
    ramp = np.tile(np.arange(8, dtype=np.float32) * 0.1, (8, 1))[None]
    assert np.allclose(edge_energy(ramp), 0.1)            # a smooth image: its gradient magnitude


def test_edge_energy_sees_a_checkerboard_inside():
    """A texture of period two pixels has no central difference inside it (np.gradient sees only
    its outline); its edge energy is the same in every pixel inside it, as strong as its steps."""
    from spray.analysis.preprocess import edge_energy

    yy, xx = np.mgrid[0:8, 0:8]
    x = np.zeros((1, 12, 12), dtype=np.float32)
    x[0, 2:10, 2:10] = ((yy + xx) % 2) * 0.6
    e = edge_energy(x)[0]
    assert np.allclose(e[3:9, 3:9], 0.6 * np.sqrt(2.0))
    assert e[0, 0] == 0.0


def _class_with_lookalikes(n: int, stamped: int, lookalikes: int):
    """``stamped`` samples as in ``artefact_class``, and ``lookalikes`` unstamped ones whose
    relevance falls on the same cell (the model looks there for another reason): the relevance
    graph cannot tell them apart, the inputs at the hot spot can. Returns (relevance, inputs,
    stamped, look-alikes)."""
    rng = np.random.default_rng(5)
    lookalike = np.zeros(n, dtype=bool)

    def inputs(x, g):
        x[g, 0, 0] += 0.3

    def relevance(rel, g, rng_):
        lookalike[rng.choice(np.flatnonzero(~g), size=lookalikes, replace=False)] = True
        both = g | lookalike
        rel[both] *= 0.3
        rel[both, 0, 0] = 6.0 + rng_.random(both.sum())

    feats, x, planted = _class_with_group(0, stamped, inputs, relevance, n=n)
    return feats, x, planted, lookalike


@pytest.fixture(scope="module")
def artefact_with_lookalikes():
    """60 stamped samples and 10 look-alikes in a class of 300."""
    return _class_with_lookalikes(300, 60, 10)


def test_suspect_keeps_the_members_that_carry_its_pattern(artefact_with_lookalikes):
    """The suspect's members without the stamp at its hot spot leave it for another cluster;
    the score does not change, and with ``trim_min_auc`` above 1 nobody moves."""
    feats, inputs, planted, lookalike = artefact_with_lookalikes
    result = analyze(feats, pipeline=_pipe(), embed=False)
    on = clever_hans_score(result, inputs, _pipe(), features=feats)
    off = clever_hans_score(result, inputs, _pipe(trim_min_auc=1.01), features=feats)
    assert on["flagged"] and on["score"] == off["score"]
    kept = np.isin(off["labels"], off["suspect_clusters"])
    assert kept[lookalike].mean() >= 0.9                # the graph puts them in the suspect
    members = np.isin(on["labels"], on["suspect_clusters"])
    assert (members & planted).sum() / members.sum() >= 0.97
    assert (members & planted).sum() / planted.sum() >= 0.97
    assert not members[lookalike].any()
    cl = next(c for c in on["clusters"] if c["id"] == on["suspect_cluster"])
    assert cl["hot_spot_auc"] >= 0.99 and cl["trimmed"] == int(kept[~planted].sum())
    assert sorted(c["size"] for c in on["clusters"]) == sorted(
        np.bincount(on["labels"][on["labels"] >= 0]).tolist())
    cl_off = next(c for c in off["clusters"] if c["id"] == off["suspect_cluster"])
    assert cl_off["trimmed"] == 0 and cl_off["hot_spot_auc"] == cl["hot_spot_auc"]
    from spray.report.class_page import _evidence

    assert f"{cl['trimmed']} samples the relevance graph put in this group" in _evidence(on)
    assert "relevance graph put in this group" not in _evidence(off)


def test_suspect_without_a_pattern_at_its_hot_spot_is_kept_whole(artefact_class):
    """A group whose inputs at the hot spot do not tell it from the rest (the relevance moves
    there, the inputs do not) keeps every member."""
    feats, inputs, planted = artefact_class
    flat = inputs.copy()
    flat[:, 0] = flat[:, 0].mean()          # cell (0, 0): the same in every input
    result = analyze(feats, pipeline=_pipe(), embed=False)
    v = clever_hans_score(result, flat, _pipe(), features=feats)
    off = clever_hans_score(result, flat, _pipe(trim_min_auc=1.01), features=feats)
    assert (v["labels"] == off["labels"]).all()
    for c in v["clusters"]:
        if c["id"] in v["suspect_clusters"]:
            assert c["trimmed"] == 0 and c["hot_spot_auc"] < 0.99


def _split_suspect(planted: np.ndarray, outside: int):
    """Labels with the suspect (cluster 1) holding all but ``outside`` of ``planted``, and
    the entries of both clusters."""
    from spray.verdict.result import ClusterEvidence

    labels = planted.astype(int)
    labels[np.flatnonzero(planted)[:outside]] = 0
    return labels, [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]


def test_samples_that_carry_the_pattern_and_its_relevance_join_the_suspect(artefact_class):
    """Stamped samples the cut left outside join the suspect; unstamped ones whose relevance
    falls there do not, nor stamped ones the model does not look at there; with
    ``trim_min_auc`` above 1 nobody moves."""
    from spray.verdict.members import join_suspects

    feats, inputs, planted = artefact_class
    labels, clusters = _split_suspect(planted, 15)
    out = join_suspects(labels, clusters, [1], inputs, feats, 0.1, 0.99, 1.0)
    assert ((out == 1) == planted).all() and clusters[1].joined == 15
    assert clusters[1].size == int(planted.sum()) and clusters[0].size == int((~planted).sum())
    left = np.flatnonzero(planted)[:15]
    unstamped = inputs.copy()
    unstamped[left] = inputs[~planted][:15]          # the relevance stays, the stamp goes
    labels, clusters = _split_suspect(planted, 15)
    out = join_suspects(labels, clusters, [1], unstamped, feats, 0.1, 0.99, 1.0)
    assert (out == labels).all() and clusters[1].joined == 0
    unseen = feats.copy()
    unseen[left[:5]] = feats[~planted][:5]           # the stamp stays, the model looks elsewhere
    labels, clusters = _split_suspect(planted, 15)
    out = join_suspects(labels, clusters, [1], inputs, unseen, 0.1, 0.97, 1.0)
    assert (out[left[5:]] == 1).all() and (out[left[:5]] == 0).all() and clusters[1].joined == 10
    from spray.report.class_page import _evidence

    verdict = clever_hans_score(analyze(feats, pipeline=_pipe(), embed=False), inputs, _pipe(),
                                features=feats)
    text = "samples the relevance graph put elsewhere carry its pattern"
    assert verdict["flagged"] and text not in _evidence(verdict)
    next(c for c in verdict["clusters"] if c["id"] == verdict["suspect_cluster"])["joined"] = 10
    assert "10 " + text in _evidence(verdict)
    labels, clusters = _split_suspect(planted, 15)
    assert (join_suspects(labels, clusters, [1], inputs, feats, 0.1, 1.01, 1.0) == labels).all()
    assert clusters[1].joined == 0


def test_stamped_samples_outside_do_not_keep_look_alikes_in_the_suspect(
        artefact_with_lookalikes):
    """A few stamped samples the cut left outside lower the AUC that decides the trim: they join
    first, so the look-alikes inside still leave."""
    from spray.config.presets import FlagsSection
    from spray.verdict.members import decide_members
    from spray.verdict.result import ClusterEvidence

    feats, inputs, planted, lookalike = artefact_with_lookalikes
    labels = (planted | lookalike).astype(int)
    labels[np.flatnonzero(planted)[:5]] = 0
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    W = sp.csr_matrix(analyze(feats, pipeline=_pipe(), embed=False).affinity)
    flags = FlagsSection(trim_min_auc=0.99, trim_fence_iqr=1.0, peak_guard_iqr=1.5)
    out = decide_members(labels, clusters, [1], W, inputs, feats, 0.1, flags)
    assert ((out == 1) == planted).all()
    assert clusters[1].joined == 5 and clusters[1].trimmed == int(lookalike.sum())


def _empty_core_class():
    """Relevance features, inputs, labels and entries of a class of 40 whose suspect (cluster
    1, 3 members) has every member below the midpoint at its hot spot: an empty core."""
    from spray.verdict.result import ClusterEvidence

    feats = np.zeros((40, 3))
    feats[:3] = 1.0
    inputs = np.random.default_rng(0).normal(0, 1, (40, 3))
    inputs[:3] = 5 * np.array([[1, 1, -10], [1, -10, 1], [-10, 1, 1]])   # every member below 0
    labels = (np.arange(40) < 3).astype(int)
    return feats, inputs, labels, [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]


def _trim_first(inputs, feats, size: int, area: float):
    """:func:`trim_suspects` on a class whose first ``size`` samples are the suspect (cluster
    1; ``trim_min_auc`` 0.99, fence reach 1, no graph edges). Returns (labels, entries)."""
    from spray.verdict.members import trim_suspects
    from spray.verdict.result import ClusterEvidence

    n = len(inputs)
    labels = (np.arange(n) < size).astype(int)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    return trim_suspects(labels, clusters, [1], sp.eye(n, format="csr"), inputs, feats, area,
                         0.99, 1.0), clusters


def test_joining_edge_cases():
    """No crash on an empty core, and no join when every sample outside is alike (no AUC)."""
    from spray.verdict.members import join_suspects
    from spray.verdict.result import ClusterEvidence

    rng = np.random.default_rng(0)
    feats, inputs, labels, clusters = _empty_core_class()
    assert (join_suspects(labels, clusters, [1], inputs, feats, 1.0, 0.9, 1.0) == labels).all()
    group = np.ones((10, 3)) + rng.normal(0, 0.05, (10, 3))
    rest = np.array([[-1, -1, 10], [-1, 10, -1], [10, -1, -1]], float)  # all on its side
    X, labels = np.vstack([group, rest]), np.array([1] * 10 + [0] * 3)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    assert (join_suspects(labels, clusters, [1], X, X, 1.0, 0.99, 1.0) == labels).all()
    assert clusters[1].joined == 0 and clusters[0].size == 3


def test_trim_takes_the_look_alikes_and_keeps_varied_stamps():
    """One hot-spot cell: 20 stamped members (inputs 9–10 there), one stamped member of a
    fainter stamp (6: in the core, below the core's fence) and 8 look-alikes (inputs like the
    rest's). The look-alikes leave; the faint stamp stays. The fence is the core's: the
    look-alikes (over a quarter of the group) would pull a fence of the whole group below
    themselves."""
    rng = np.random.default_rng(1)
    n = 200
    inputs = rng.normal(0, 1, (n, 4))
    inputs[:20, 0] = rng.uniform(9, 10, 20)
    inputs[20, 0] = 6.0
    inputs[21:29, 0] = rng.normal(0, 0.3, 8)
    feats = rng.normal(0, 0.01, (n, 4))
    feats[:29, 0] += 1.0                      # the model looks at cell 0 in the whole group
    out, clusters = _trim_first(inputs, feats, 29, 0.01)
    assert clusters[1].hot_spot_auc == 1.0 and clusters[1].trimmed == 8
    assert (out[:21] == 1).all() and (out[21:] == 0).all()
    assert clusters[1].size == 21 and clusters[0].size == n - 21


def test_trim_keeps_a_group_whose_core_is_under_half():
    """Two hot-spot cells, a group of two patterns (one cell bright and the other dark, or
    the reverse) and one sample with both cells bright: only that one is on the group's side
    of the line between the medians, so the core is under half the group and nothing is
    trimmed, although the core is told from the rest perfectly."""
    rng = np.random.default_rng(2)
    n = 200
    inputs = rng.normal(0, 1, (n, 4))
    inputs[:10, :2] = [10.0, -10.0]
    inputs[10:20, :2] = [-10.0, 10.0]
    inputs[20, :2] = [10.0, 10.0]
    feats = rng.normal(0, 0.01, (n, 4))
    feats[:21, :2] += 1.0
    out, clusters = _trim_first(inputs, feats, 21, 0.5)
    assert clusters[1].hot_spot_auc == 1.0
    assert (out == (np.arange(n) < 21)).all() and clusters[1].trimmed == 0


def test_fences_of_the_core():
    """The fence follows its reach; a core of identical values takes a sample of that value
    in; a fence below 0 does not take samples on the rest's side of the midpoint."""
    from spray.verdict.members import _inside, lower_fence

    values = np.arange(1.0, 6.0)                          # Q1 2, IQR 2
    assert [lower_fence(values, r) for r in (0, 1, 2)] == [2.0, 0.0, -2.0]
    core = np.array([True, True, True, False, False])
    assert _inside(np.array([1.0, 1.0, 1.0, 1.0, 0.5]), core, 1.0).tolist() == [
        True, True, True, True, False]
    wide = np.array([1.0, 10.0, 0.5, 20.0, -0.2, 0.3])
    assert lower_fence(wide[:4], 1.0) < -0.2
    assert _inside(wide, np.array([True] * 4 + [False] * 2), 1.0).tolist() == [
        True, True, True, True, False, True]
    # an empty core (every member below the midpoint): an AUC of 0, nothing trimmed
    feats, inputs, labels, _ = _empty_core_class()
    out, clusters = _trim_first(inputs, feats, 3, 1.0)
    assert (out == labels).all()
    assert clusters[1].hot_spot_auc == 0.0 and clusters[1].trimmed == 0


def test_a_suspect_does_not_take_the_members_of_another(artefact_class):
    """Samples of another suspect that carry the pattern stay in it."""
    from spray.verdict.members import join_suspects
    from spray.verdict.result import ClusterEvidence

    feats, inputs, planted = artefact_class
    labels = planted.astype(int)
    labels[np.flatnonzero(planted)[:15]] = 0
    labels[np.flatnonzero(planted)[15:30]] = 2
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1, 2)]
    out = join_suspects(labels, clusters, [1, 2], inputs, feats, 0.1, 0.99, 1.0)
    assert (out[labels == 2] == 2).all() and clusters[1].joined == 15


def test_auc_and_nearest_cluster():
    from sklearn.metrics import roc_auc_score

    from spray.verdict.members import _nearest_cluster, auc

    rng = np.random.default_rng(0)
    s, m = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.3
    assert auc(s, m) == pytest.approx(roc_auc_score(m, s))
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    W = sp.lil_matrix((7, 7))
    W[5, 0], W[5, 2], W[5, 3] = 0.1, 0.3, 0.3      # row 5 weighs cluster 1 most
    assert _nearest_cluster(W.tocsr(), np.array([5, 6]), labels, [0, 1]).tolist() == [1, 1]
    W[5, 0] = 1.0
    assert _nearest_cluster(W.tocsr(), np.array([5]), labels, [0, 1]).tolist() == [0]


# --- the score of a large class on a stratified subsample (score_max_samples) ---


def test_stratified_sample_keeps_every_cluster_in_proportion():
    labels = np.repeat([0, 1, 2, 3], [700, 250, 48, 2])
    rows = stratified_sample(labels, 100, seed=0)
    assert len(rows) == 100 and (np.diff(rows) > 0).all()
    counts = np.bincount(labels[rows], minlength=4)
    assert counts.tolist() == [70, 25, 4, 1]                  # largest remainders, ≥ 1 each
    assert (stratified_sample(labels, 100, seed=0) == rows).all()
    assert not (stratified_sample(labels, 100, seed=1) == rows).all()
    assert (stratified_sample(labels, 5000, seed=0) == np.arange(1000)).all()


@pytest.mark.parametrize("counts, size", [([1000] + [1] * 150, 100), ([5000, 5000, 1], 10000),
                                           ([700, 250, 48, 2], 999), ([3] * 300, 300)])
def test_stratified_sample_has_exactly_its_size(counts, size):
    labels = np.repeat(np.arange(len(counts)), counts)
    rows = stratified_sample(labels, size, seed=0)
    assert len(rows) == size == len(np.unique(rows))
    drawn = np.bincount(labels[rows], minlength=len(counts))
    assert (drawn <= np.asarray(counts)).all()
    if size >= len(counts):
        assert (drawn >= 1).all()


def test_restricted_eigenvectors_keep_the_whole_class_sweep_order(large_artefact_class):
    from spray.verdict.graphs import with_degree
    from spray.verdict.subsample import restrict

    feats, _, _ = large_artefact_class
    result = analyze(feats, pipeline=_pipe(), embed=False)
    rows = stratified_sample(result.labels, 300, seed=0)
    sub = restrict(result, rows, feats, _pipe())
    _, whole = with_degree(result.affinity)
    _, part = with_degree(sub.affinity)
    assert not np.allclose(whole[rows], part)          # another graph, other degrees
    expect = (result.eigenvectors / np.sqrt(whole)[:, None])[rows]
    assert np.allclose(sub.eigenvectors / np.sqrt(part)[:, None], expect)


def test_extended_labels_follow_the_nearest_drawn_members():
    rng = np.random.default_rng(0)
    # one analysis cluster (label 0) of two blobs; the score split the drawn members of the
    # second blob off as cluster 5; cluster 1 was left alone
    a, b, c = (rng.normal(m, 0.1, size=(200, 3)) for m in (0.0, 3.0, -3.0))
    features = np.vstack([a, b, c])
    labels = np.repeat([0, 0, 1], 200)
    rows = np.sort(rng.choice(600, size=150, replace=False))
    sub = labels[rows].copy()
    sub[(rows >= 200) & (rows < 400)] = 5
    from sklearn.neighbors import kneighbors_graph

    W = kneighbors_graph(features, 5, mode="connectivity")
    out = extend_labels(labels, rows, sub, W.maximum(W.T))
    assert (out[:200] == 0).all() and (out[200:400] == 5).all() and (out[400:] == 1).all()


@pytest.fixture(scope="module")
def large_artefact_class():
    """900 samples, 15 % of them with relevance on a corner cell the inputs barely show."""
    def inputs(x, g):
        x[g, 0, 0] += 0.3

    def relevance(rel, g, rng):
        rel[g] *= 0.3
        rel[g, 0, 0] = 6.0 + rng.random(g.sum())

    return _class_with_group(5, 135, inputs, relevance, n=900)


def test_large_class_is_scored_on_a_subsample(large_artefact_class):
    feats, inputs, planted = large_artefact_class
    result = analyze(feats, pipeline=_pipe(), embed=False)
    whole = clever_hans_score(result, inputs, _pipe(), features=feats)
    part = clever_hans_score(result, inputs, _pipe(score_max_samples=300), features=feats)
    assert "scored_on" not in whole and part["scored_on"] == 300
    assert whole["flagged"] and part["flagged"]
    assert len(part["labels"]) == len(feats)
    assert sum(c["size"] for c in part["clusters"]) == len(feats)
    for v in (whole, part):
        members = np.isin(v["labels"], v["suspect_clusters"])
        assert (members & planted).sum() / members.sum() >= 0.9
        assert (members & planted).sum() / planted.sum() >= 0.9
    # the evidence is the subsample's: another relevance graph, other conductances
    best = next(c for c in part["clusters"] if c["id"] == part["suspect_cluster"])
    assert best["fraction"] == pytest.approx(best["size"] / len(feats), abs=1e-4)
    from spray.report.class_page import _evidence

    assert "stratified random subsample of 300 samples" in _evidence(part)
    assert "subsample" not in _evidence(whole)


def test_class_above_the_default_cap_is_scored_on_a_subsample():
    """A class of 2 400 samples is scored on a subsample by default (the cap is the largest
    class the rule was designed on, so that the score costs less than the analysis), and its
    planted group is still the suspect over the whole class."""
    def inputs(x, g):
        x[g, 0, 0] += 0.3

    def relevance(rel, g, rng):
        rel[g] *= 0.3
        rel[g, 0, 0] = 6.0 + rng.random(g.sum())

    feats, x, planted = _class_with_group(6, 360, inputs, relevance, n=2400)
    result = analyze(feats, pipeline=_pipe(), embed=False)
    v = clever_hans_score(result, x, _pipe(), features=feats)
    cap = flag_params(_pipe()).score_max_samples
    assert cap < len(feats) and v["scored_on"] == cap
    assert v["flagged"] and len(v["labels"]) == len(feats)
    members = np.isin(v["labels"], v["suspect_clusters"])
    assert (members & planted).sum() / members.sum() >= 0.9
    assert (members & planted).sum() / planted.sum() >= 0.9


def test_class_at_the_cap_is_scored_whole(large_artefact_class):
    feats, inputs, _ = large_artefact_class
    result = analyze(feats[:300], pipeline=_pipe(), embed=False)
    a = clever_hans_score(result, inputs[:300], _pipe(), features=feats[:300])
    b = clever_hans_score(result, inputs[:300], _pipe(score_max_samples=300), features=feats[:300])
    assert "scored_on" not in b and a["score"] == b["score"]
    assert (a["labels"] == b["labels"]).all()


def _hot_spot_classes():
    """Three classes whose relevance singles out 20 % of the samples at the top-left corner:
    the group's inputs carry a stamp there (a bright 2×2 block), carry nothing there, or carry
    an 'object' there whose brightness varies from member to member (scaled by 0.2–1.8, like an
    object of random colour on varied photographs). Returns, per class, (relevance, inputs,
    group)."""
    out = []
    for seed, kind in ((21, "stamp"), (22, "nothing"), (23, "varied")):
        rng = np.random.default_rng(seed)
        x = _inputs(rng, 300)
        group = np.zeros(300, dtype=bool)
        group[rng.choice(300, size=60, replace=False)] = True
        if kind == "stamp":
            x[group, 0:2, 0:2] += 1.0
        elif kind == "varied":
            x[group, 0:3, 0:3] *= rng.uniform(0.2, 1.8, size=(group.sum(), 1, 1))
        rel = x * (1 + 0.3 * rng.standard_normal(x.shape))
        rel[group] *= 0.3
        rel[group, 0, 0] = 6.0 + rng.random(group.sum())
        out.append((_normalize(rel), _normalize(x), group))
    return out


def test_hot_spot_separation_lowers_a_group_whose_inputs_there_are_no_group():
    """All three groups are flagged without the hot-spot term. With it the stamped group keeps
    its score (its inputs at the hot spot tell it from the rest: separation near 1), and the
    groups whose inputs there are no more alike than a random subset's (nothing there, or an
    object of varied brightness) are lowered by ``hot_spot_weight`` per unit of separation
    below the knee."""
    params = flag_params(_pipe())
    assert params.hot_spot_knee == 0.75 and params.hot_spot_weight == 10.0
    for i, (feats, inputs, group) in enumerate(_hot_spot_classes()):
        result = analyze(feats, pipeline=_pipe(), embed=False)
        off = clever_hans_score(result, inputs, _pipe(hot_spot_weight=0.0), features=feats)
        on = clever_hans_score(result, inputs, _pipe(), features=feats)
        assert off["flagged"]
        assert all("hot_spot_separation" not in c for c in off["clusters"])   # weight 0
        cl = next(c for c in on["clusters"] if c["id"] == on["candidate_cluster"])
        members = on["labels"] == cl["id"]
        assert (members & group).sum() / members.sum() >= 0.9
        if i == 0:
            assert on["flagged"] and cl["hot_spot_separation"] > 0.95
            assert cl["hot_spot_penalty"] == 0.0
            assert on["score"] == pytest.approx(off["score"], abs=1e-3)
        else:
            assert cl["hot_spot_separation"] < 0.7
            assert cl["hot_spot_penalty"] == pytest.approx(
                10.0 * (0.75 - cl["hot_spot_separation"]), abs=1e-3)
            assert on["score"] == pytest.approx(off["score"] - cl["hot_spot_penalty"], abs=1e-3)
            assert on["score"] < off["score"] - 0.5


def test_hot_spot_mass_is_the_extra_share_of_relevance_at_the_hot_spot():
    """A group that puts 20 % more of its relevance at a stamp's cells has a hot-spot mass
    of at most 0.2/1.2 (its share there minus the rest's), one that draws 1 % there near 0.01, one
    set apart by having less relevance somewhere a negative mass, and a random subset about 0;
    with weight 0 no penalty, with a weight the penalty is linear below the knee."""
    from spray.config.presets import FlagsSection
    from spray.verdict.evidence import ClassGraphs, hot_spot_mass_penalty

    rng = np.random.default_rng(5)
    x = _normalize(_inputs(rng, 300)).astype(np.float32)
    base = _inputs(rng, 300)
    group = np.zeros(300, dtype=bool)
    group[rng.choice(300, 60, replace=False)] = True

    def mass(extra: float, cells=(slice(0, 2), slice(0, 2))) -> float:
        rel = base.copy()
        rel[group, cells[0], cells[1]] += extra * rel[group].sum(axis=(1, 2))[:, None, None] / 4
        rel = np.clip(rel, 0, None)
        graphs = ClassGraphs(sp.csr_matrix((300, 300)), np.ones(300), x, _normalize(rel), {},
                             FlagsSection(), "l1", [GRID, GRID])
        return graphs.hot_spot_mass(group)

    # at most 0.2/1.2 (less what the rest already puts there, diluted by the group's gain)
    assert 0.1 < mass(0.2) <= 0.2 / 1.2
    assert 0.0 < mass(0.01) < 0.02
    assert abs(mass(0.0)) < 0.02                            # a random subset
    centre = (slice(GRID // 2 - 2, GRID // 2 + 2), slice(GRID // 2 - 2, GRID // 2 + 2))
    assert mass(-0.5, centre) < -0.05                        # less relevance at the centre
    off, on = FlagsSection(hot_spot_mass_weight=0.0), FlagsSection(hot_spot_mass_knee=0.03)
    assert hot_spot_mass_penalty(-0.2, off) == 0.0 and on.hot_spot_mass_weight == 50.0
    assert hot_spot_mass_penalty(0.01, on) == pytest.approx(1.0)
    assert hot_spot_mass_penalty(0.05, on) == 0.0


@pytest.mark.parametrize("seed, attention, lowered", [
    (21, 0.01, True),    # an edge cut of a stamp the model barely looks at: lowered
    (23, 0.1, False),    # a stamp that draws a tenth of the relevance: left as it is
])
def test_hot_spot_mass_lowers_a_stamp_the_model_barely_looks_at(seed, attention, lowered):
    """By default a candidate whose hot spot draws less extra relevance than
    ``hot_spot_mass_knee`` loses ``hot_spot_mass_weight`` per unit below it; weight 0 leaves
    the score as it was (the term measured, not scored)."""
    feats, inputs, edges, _ = _edge_cut_class(seed, True, attention)
    result = analyze(feats, pipeline=_pipe(), embed=False)
    params = flag_params(_pipe())
    assert params.hot_spot_mass_knee == 0.05 and params.hot_spot_mass_weight == 50.0
    on = clever_hans_score(result, inputs, _pipe(edge_sweep_eigenvectors=10), features=feats,
                           edge_features=edges)
    off = clever_hans_score(result, inputs, _pipe(edge_sweep_eigenvectors=10,
                                                  hot_spot_mass_weight=0.0),
                            features=feats, edge_features=edges)
    cl = next(c for c in on["clusters"] if c["id"] == on["candidate_cluster"])
    assert cl["hot_spot_mass_penalty"] == pytest.approx(
        50.0 * max(0.0, 0.05 - cl["hot_spot_mass"]), abs=1e-3)
    if lowered:
        assert cl["hot_spot_mass"] < 0.02 and cl["hot_spot_mass_penalty"] > 1.5
        assert on["score"] < off["score"] - 1.5
    else:
        assert cl["hot_spot_mass"] > 0.05 and cl["hot_spot_mass_penalty"] == 0.0
        assert on["flagged"] and on["score"] == pytest.approx(off["score"], abs=1e-3)


def test_hot_spot_separation_of_a_random_subset_is_chance():
    """The separation of random subsets of a class with one population is near that of chance
    (0.5; the projection's line is fitted to the group, so a little above it), and a stamp at
    the hot spot gives 1."""
    from spray.config.presets import FlagsSection
    from spray.verdict.evidence import ClassGraphs

    rng = np.random.default_rng(3)
    x = _normalize(_inputs(rng, 300))
    rel = _normalize(_inputs(rng, 300))
    graphs = ClassGraphs(sp.csr_matrix((300, 300)), np.ones(300), x.astype(np.float32), rel,
                         {}, FlagsSection(), "l1", [GRID, GRID])
    values = []
    for _ in range(20):
        mask = np.zeros(300, dtype=bool)
        mask[rng.choice(300, 60, replace=False)] = True
        values.append(graphs.hot_spot_separation(mask))
    assert 0.5 <= np.median(values) < 0.65 and max(values) < 0.75
    stamped = x.reshape(300, GRID, GRID).copy()
    stamped[mask, 0, 0] += 0.05
    rel2 = rel.reshape(300, GRID, GRID).copy()
    rel2[mask, 0, 0] += 1.0
    graphs = ClassGraphs(sp.csr_matrix((300, 300)), np.ones(300),
                         _normalize(stamped).astype(np.float32), _normalize(rel2), {},
                         FlagsSection(), "l1", [GRID, GRID])
    assert graphs.hot_spot_separation(mask) > 0.99


def test_suspect_members_of_a_large_class_are_decided_on_the_whole_class():
    """Look-alikes leave the suspect of a class scored on a subsample as they do when it is
    scored whole: the labels are extended before the members are decided."""
    feats, x, planted, lookalike = _class_with_lookalikes(900, 180, 30)
    result = analyze(feats, pipeline=_pipe(), embed=False)
    v = clever_hans_score(result, x, _pipe(score_max_samples=300), features=feats)
    assert v["flagged"] and v["scored_on"] == 300
    members = np.isin(v["labels"], v["suspect_clusters"])
    assert members[lookalike].sum() <= 3
    assert (members & planted).sum() / planted.sum() >= 0.97
    cl = next(c for c in v["clusters"] if c["id"] == v["suspect_cluster"])
    assert cl["size"] == int((v["labels"] == cl["id"]).sum())
    assert cl["trimmed"] >= 27                     # counted over the whole class



def _frame_class(style: float):
    """15 % of the class carry a faint frame on three sides (28 % of the cells, more than
    ``input_mask_area``) and the model looks differently at its top side only; with ``style``
    above 0 they are also brighter in the middle of the object (a natural difference beyond the
    frame, fainter than it)."""
    def inputs(x, g):
        x[np.ix_(g, [0, GRID - 1], range(GRID))] += 0.2
        x[np.ix_(g, range(1, GRID - 1), [0])] += 0.2
        x[np.ix_(g, range(3, 7), range(3, 7))] += style

    def relevance(rel, g, rng):
        rel[np.ix_(g, [0], range(GRID))] += 1.0 + 0.2 * rng.random((g.sum(), 1, GRID))

    return _class_with_group(7, 45, inputs, relevance)


def test_artefact_larger_than_the_mask_is_flagged():
    """A frame covers more cells than ``input_mask_area``: without only the 10 % of the cells
    where the group's inputs differ most, the rest of the frame keeps it a group (randomness
    0.3, the rule before: not flagged). Its input footprint (the cells within
    ``input_mask_share`` of the largest difference, up to ``input_mask_max_area``) is the whole
    frame: without it the group is a random subset, and the colocation counts the whole frame,
    whose top side the model looks at. A group that also differs beyond the frame keeps a
    randomness below 1 and the colocation of its hot spot alone."""
    from spray.verdict.evidence import footprint, touched_regions

    feats, inputs, planted = _frame_class(0.0)
    pipe = _pipe()
    params = flag_params(pipe)
    assert params.input_mask_max_area >= 0.28 > params.input_mask_area
    result = analyze(feats, pipeline=pipe, embed=False)
    before = clever_hans_score(result, inputs, _pipe(input_mask_max_area=0.1,
                                                     colocation_region_share=0.0),
                               features=feats)
    v = clever_hans_score(result, inputs, pipe, features=feats)
    assert not before["flagged"]
    old = next(c for c in before["clusters"] if c["id"] == before["candidate_cluster"])
    assert old["input_randomness"] < 0.5 and old["colocation"] < 0.5
    assert v["flagged"]
    members = v["labels"] == v["suspect_cluster"]
    assert (members & planted).sum() / members.sum() >= 0.9
    assert (members & planted).sum() / planted.sum() >= 0.9
    cl = next(c for c in v["clusters"] if c["id"] == v["suspect_cluster"])
    assert cl["input_randomness"] >= 0.9 and cl["randomness_penalty"] == 0.0
    assert cl["colocation"] > old["colocation"] and cl["colocation_penalty"] == 0.0
    # the footprint holds the frame (28 cells); the hot spot (top row) touches all of it
    diff = np.abs(inputs[planted].mean(0) - inputs[~planted].mean(0))
    frame = np.zeros((GRID, GRID), dtype=bool)
    frame[[0, -1], :] = frame[:, 0] = True
    cells = footprint(diff, params.input_mask_share, 0.1, 0.3)
    assert set(np.flatnonzero(frame)) <= set(cells) and len(cells) <= 30
    assert set(np.flatnonzero(frame)) <= set(touched_regions(diff, np.arange(GRID),
                                                             (GRID, GRID), 0.3))
    assert len(footprint(diff, 0.5, 0.1, 0.1)) == 10          # max ≤ low: the old top 10 %
    # a look-alike that differs beyond the frame too stays a group without its footprint
    feats, inputs, planted = _frame_class(0.3)
    result = analyze(feats, pipeline=pipe, embed=False)
    v = clever_hans_score(result, inputs, pipe, features=feats)
    cl = next(c for c in v["clusters"] if c["id"] == v["candidate_cluster"])
    members = v["labels"] == cl["id"]
    assert (members & planted).sum() / members.sum() >= 0.9
    assert cl["input_randomness"] < 0.7 and not v["flagged"]
    # and the regions its hot spot touches are part of its shape: colocation in the hot spot
    alone = clever_hans_score(result, inputs, _pipe(colocation_region_share=0.0),
                              features=feats)
    assert cl["colocation"] == next(c["colocation"] for c in alone["clusters"]
                                    if c["id"] == cl["id"])


def test_colocation_counts_touched_regions_only_for_a_random_group():
    from spray.verdict.evidence import colocation_of

    params = flag_params(_pipe())
    knee = params.input_randomness_knee
    assert colocation_of((0.2, 0.8), knee, params) == 0.8
    assert colocation_of((0.2, 0.8), knee - 0.01, params) == 0.2


def test_touched_regions_are_8_connected_without_wrapping():
    grid = (5, 20)
    excess = np.zeros(100)
    excess[[0, 21, 42]] = 1.0           # a diagonal chain from the corner: one region
    excess[[79, 80]] = 1.0               # last of row 3 and first of row 4: not neighbours
    got = set(touched_regions(excess, np.array([0]), grid, 0.3))
    assert got == {0, 21, 42}
    assert set(touched_regions(excess, np.array([79]), grid, 0.3)) == {79}
    assert set(touched_regions(excess, np.array([80]), grid, 0.3)) == {80}
    excess[60] = 1.0                     # above 80: joins it
    assert set(touched_regions(excess, np.array([80]), grid, 0.3)) == {60, 80}
    # a grid that does not match, no excess, or share 0: the cells alone
    assert list(touched_regions(excess, np.array([0]), (10, 20), 0.3)) == [0]
    assert list(touched_regions(np.zeros(100), np.array([0]), grid, 0.3)) == [0]
    assert list(touched_regions(excess, np.array([0]), grid, 0.0)) == [0]


def test_class_above_the_cap_by_one_is_scored_on_the_cap(large_artefact_class):
    feats, inputs, _ = large_artefact_class
    result = analyze(feats[:301], pipeline=_pipe(), embed=False)
    v = clever_hans_score(result, inputs[:301], _pipe(score_max_samples=300),
                          features=feats[:301])
    assert v["scored_on"] == 300 and len(v["labels"]) == 301


def test_class_page_says_the_regions_only_where_they_counted():
    from spray.report.class_page import _regions_counted

    params = {"input_randomness_knee": 0.9, "colocation_region_share": 0.3}
    assert _regions_counted({"input_randomness": 0.95}, params)
    assert not _regions_counted({"input_randomness": 0.5}, params)
    assert not _regions_counted({"input_randomness": 0.95},
                                {**params, "colocation_region_share": 0.0})
    assert not _regions_counted({"input_randomness": 0.95}, {})    # a verdict of the rule before


def test_cluster_views_have_a_row_per_verdict_cluster(tmp_path):
    """The report indexes the mean relevance by the verdict's clusters: a cluster whose members
    all joined a suspect keeps its (zero) row, so the rows after it stay with their clusters."""
    import zarr

    from spray.data.arrays import ArraySource
    from spray.run.tasks import _write_cluster_views
    from spray.store import write_array

    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 2, 2)).astype(np.float32)
    cg = zarr.open_group(str(tmp_path / "class.zarr"), mode="w")
    write_array(cg, "relevance", x[:, 0])
    labels = np.array([0, 0, 2, 2, 2, 0])                 # cluster 1 emptied by joining
    _write_cluster_views(cg, ArraySource(x, np.zeros(6, int), "x"), np.arange(6), labels,
                         [0, 1, 2])
    means = np.asarray(cg["cluster_mean_relevance"][:])
    assert means.shape[0] == 3 and not means[1].any()
    assert np.allclose(means[2], x[[2, 3, 4], 0].mean(axis=0))
    assert sorted(np.asarray(cg["example_rows"][:]).tolist()) == list(range(6))


def test_the_pipelines_peak_guard_reaches_the_member_step(artefact_class, monkeypatch):
    """``flags.peak_guard_iqr`` is what the last member step's guard gets (not the trim's
    fence), and ``flags.peak_window_doublings`` its doublings, on a class scored whole and on
    one scored on a subsample."""
    import spray.verdict.score as score

    seen = []
    real = score.decide_members

    def spy(*args, **kwargs):
        flags = args[7]
        seen.append((flags.peak_guard_iqr, flags.peak_window_doublings, flags.peak_carrier_gap,
                     flags.pattern_trim_iqr, flags.pattern_join_iqr))
        return real(*args, **kwargs)

    monkeypatch.setattr(score, "decide_members", spy)
    feats, inputs, _ = artefact_class
    given = {"peak_guard_iqr": 2.5, "peak_window_doublings": 3, "peak_carrier_gap": 0.3,
             "pattern_trim_iqr": 0.7, "pattern_join_iqr": 2.5}
    for flags in (given, {**given, "score_max_samples": 200}):
        result = analyze(feats, pipeline=_pipe(**flags), embed=False)
        clever_hans_score(result, inputs, _pipe(**flags), features=feats)
    assert seen == [(2.5, 3, 0.3, 0.7, 2.5), (2.5, 3, 0.3, 0.7, 2.5)]


def _edge_cut_class(seed: int, stamp: bool, attention: float):
    """300 blurry objects; 60 of them carry a stamp (a bright 2×2 block at the top-left: new
    edges) when ``stamp``. The relevance follows each object as it was before the stamp, and
    the model adds ``attention`` of a sample's total relevance at the stamp's place for the 60
    (0: the model ignores it). The object's relevance dominates: the relevance graph does not
    separate the 60. Returns (relevance, inputs, edge energy, group)."""
    from spray.analysis.preprocess import edge_energy, preprocess

    rng = np.random.default_rng(seed)
    x = _inputs(rng, 300)
    group = np.zeros(300, dtype=bool)
    group[rng.choice(300, size=60, replace=False)] = True
    rel = x * (1 + 0.3 * rng.standard_normal(x.shape))
    rel[group, 0:2, 0:2] += attention * rel[group].sum(axis=(1, 2))[:, None, None] / 4
    if stamp:
        x[group, 0:2, 0:2] += 1.0
    edges = preprocess(edge_energy(x), _pipe()["preprocess"])
    return _normalize(rel), _normalize(x), edges, group


@pytest.mark.parametrize("stamp, attention, found", [
    (True, 0.05, True),      # a stamp the model attends to: found only by the edge graph
    (True, 0.0, False),      # a stamp the model ignores: its relevance has no hot spot there
    (False, 0.05, False),    # the model looks at the corner of unmarked samples: no edges
])
def test_edge_cuts_find_a_stamp_the_relevance_graph_does_not_separate(stamp, attention, found):
    feats, inputs, edges, group = _edge_cut_class(21 if stamp else 22, stamp, attention)
    result = analyze(feats, pipeline=_pipe(), embed=False)
    verdicts = {n: clever_hans_score(result, inputs, _pipe(edge_sweep_eigenvectors=n),
                                     features=feats, edge_features=edges) for n in (0, 10)}
    assert not verdicts[0]["flagged"]
    on = verdicts[10]
    assert on["flagged"] is found
    if not found:
        assert on["score"] == verdicts[0]["score"]
        return
    cl = next(c for c in on["clusters"] if c["id"] == on["suspect_cluster"])
    members = on["labels"] == cl["id"]
    assert (members & group).sum() / members.sum() >= 0.9
    assert (members & group).sum() / group.sum() >= 0.9
    # the contrast is the edge graph's: the relevance graph barely separates the group
    assert cl["cut_graph"] == "edges" and cl["split_from"] is not None
    assert cl["conductance_edges"] < 0.1 < cl["conductance_relevance"]
    assert cl["contrast"] == pytest.approx(
        np.log(cl["conductance_input"] / max(cl["conductance_edges"], 1e-3)), abs=1e-3)
    # what the class page and the CI reason say of it
    from spray.ci.evidence import _reason
    from spray.report.class_page import _cluster_rows, _evidence

    page = _evidence(on)
    assert "(edge graph)" in _cluster_rows(on)
    on = {**on, "name": "T-shirt", "class": 0,            # as summary.json lists the class
          "clusters": [{**c, "suspect": c["id"] in on["suspect_clusters"]}
                       for c in on["clusters"]]}
    assert "log(φ_input/φ_edges)" in page and "edge_sweep_eigenvectors" in page
    reason = _reason(on)
    assert "of the edge graph" in reason and "conductance edges" in reason


def test_edge_lift_scores_a_cluster_an_edge_cut_matches_by_the_edge_graph():
    """The analysis' own cluster is the stamped group (the model attends to the stamp enough),
    below a threshold of 3; the edge cut that matches it cannot split off. ``edge_lift``
    measures the cluster against the edge graph: same members, the edge graph's score."""
    feats, inputs, edges, group = _edge_cut_class(23, True, 0.1)
    result = analyze(feats, pipeline=_pipe(), embed=False)
    off, on = (clever_hans_score(result, inputs, _pipe(threshold=3.0, edge_lift=lift),
                                 features=feats, edge_features=edges) for lift in (False, True))
    assert not off["flagged"] and on["flagged"]
    assert (on["labels"] == off["labels"]).all() and not on["splits"]     # nobody moves
    cl = next(c for c in on["clusters"] if c["id"] == on["suspect_cluster"])
    assert (on["labels"] == cl["id"]).sum() == (on["labels"] == cl["id"])[group].sum() == 60
    assert cl["cut_graph"] == "edges" and cl.get("split_from") is None
    assert cl["conductance_edges"] < cl["conductance_relevance"]
    before = next(c for c in off["clusters"] if c["id"] == cl["id"])
    assert before.get("cut_graph") is None and before["score"] < 3.0 <= cl["score"]


def test_edge_cuts_need_the_edge_graph():
    """Without the edge graph (``edge_randomness_weight`` 0, or no edge features) there are no
    edge cuts: the stamp the relevance graph does not separate stays unflagged."""
    feats, inputs, edges, group = _edge_cut_class(21, True, 0.05)
    result = analyze(feats, pipeline=_pipe(), embed=False)
    for pipe, more in ((_pipe(edge_sweep_eigenvectors=10, edge_randomness_weight=0.0),
                        {"edge_features": edges}), (_pipe(edge_sweep_eigenvectors=10), {})):
        v = clever_hans_score(result, inputs, pipe, features=feats, **more)
        assert not v["flagged"] and all(c.get("cut_graph") is None for c in v["clusters"])


def test_edge_cuts_leave_a_suspect_of_the_relevance_graph_alone(monkeypatch):
    """A stamp the model attends to strongly enough for the relevance graph to flag it: the
    edge graph's cuts are not tried (its suspect keeps its members and score), and the
    verdict is the one without them but for the flags it names (an edge cut would score
    5.1 here, the relevance graph's suspect 2.3)."""
    import spray.verdict.score as score

    tried, cuts = [], score._edge_cuts
    monkeypatch.setattr(score, "_edge_cuts", lambda graphs: tried.append(1) or cuts(graphs))
    feats, inputs, edges, group = _edge_cut_class(23, True, 0.1)
    result = analyze(feats, pipeline=_pipe(), embed=False)
    off, on = (clever_hans_score(result, inputs, _pipe(edge_sweep_eigenvectors=n),
                                 features=feats, edge_features=edges) for n in (0, 10))
    assert off["flagged"] and not tried
    assert all(c.get("cut_graph") is None for c in on["clusters"])
    assert _same_verdict({**off, "params": None}, {**on, "params": None})


def test_edge_cuts_are_resampled_on_the_edge_graphs_of_the_subsamples():
    """The bootstrap of an edge cut rebuilds, on every subsample, the input graph and the edge
    graph (not the relevance graph) as a kNN search of that subsample alone would."""
    from spray.verdict.evidence import ClassGraphs, contrast
    from spray.verdict.graphs import knn_graph, mask_conductance
    from spray.verdict.score import _edge_resamples

    feats, inputs, edges, group = _edge_cut_class(21, True, 0.05)
    pipe = _pipe(edge_sweep_eigenvectors=10)
    params = flag_params(pipe)
    result = analyze(feats, pipeline=pipe, embed=False)
    graphs = ClassGraphs.build(result, inputs, pipe, params, feats, edges)
    X = graphs.inputs_for(group)
    resamples = _edge_resamples(result, graphs, pipe)
    got = resamples.contrasts(X, group)
    aff = {**pipe["affinity"], "k": resamples.k}

    def by_hand(separating):
        return [contrast(mask_conductance(*knn_graph(X[idx], aff), group[idx]),
                         mask_conductance(*knn_graph(separating[idx], aff), group[idx]),
                         params.conductance_floor) for idx in resamples.subsets]

    assert len(got) == params.bootstrap == len(resamples.subsets)
    assert np.allclose(got, by_hand(edges)) and not np.allclose(got, by_hand(feats))
