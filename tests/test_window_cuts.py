"""Window cuts: a pattern that moves with the object, found by what lies under each sample's
relevance peak (``flags.window_sweep_eigenvectors``, docs/verdict-eval.md, "Window cuts")."""

from __future__ import annotations

import numpy as np
import pytest

from spray.analysis.analyze import analyze
from spray.analysis.preprocess import preprocess
from spray.config.presets import load_pipeline
from spray.verdict.patterns import InputPatterns
from spray.verdict.score import clever_hans_score

SIDE = 32
GRID = 10


def _pipe(**flags):
    return load_pipeline("spray-default", overrides={
        "preprocess": {"pool": [GRID, GRID]}, "embedding": {"method": "none"},
        "flags": flags or None})


def _moving_patch_class(seed: int, patch: bool, attention: float, n: int = 300,
                        stamped: int = 60, faintest: float = 1.0, opaque: int = 0):
    """``n`` RGB images of a blurry object of random colour at a random place on a noisy
    background; ``stamped`` of them carry a 5 × 5 pattern (a blue square with a white centre)
    at a random place on their object when ``patch``. The relevance follows each object, and
    for the ``stamped`` samples the model puts ``attention`` of their relevance on the 5 × 5
    place (with or without the pattern there). The pattern is blended over the image with an
    opacity drawn from ``faintest`` … 1, but on the first ``opaque`` stamped samples (in index
    order) it is opaque. Returns (inputs, maps, group)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    centres = rng.uniform(10, 22, size=(n, 2))
    blob = np.exp(-((yy[None] - centres[:, :1, None]) ** 2
                    + (xx[None] - centres[:, 1:, None]) ** 2) / (2 * 5.0 ** 2))
    colour = rng.uniform(0.3, 1.0, size=(n, 3, 1, 1))
    x = 0.15 * rng.random((n, 3, SIDE, SIDE)) + colour * blob[:, None]
    maps = blob * (1 + 0.3 * rng.standard_normal(blob.shape))
    group = np.zeros(n, dtype=bool)
    group[rng.choice(n, size=stamped, replace=False)] = True
    for j, i in enumerate(np.flatnonzero(group)):
        cy, cx = (np.round(centres[i]) + rng.integers(-3, 4, size=2)).astype(int)
        y, c = cy - 2, cx - 2
        if patch:
            stamp = np.broadcast_to(np.array([0.1, 0.2, 0.9])[:, None, None], (3, 5, 5)).copy()
            stamp[:, 2, 2] = 1.0
            alpha = rng.uniform(faintest, 1.0) if faintest < 1.0 and j >= opaque else 1.0
            x[i, :, y:y + 5, c:c + 5] = (1 - alpha) * x[i, :, y:y + 5, c:c + 5] + alpha * stamp
        total = maps[i].sum()
        maps[i, y:y + 5, c:c + 5] += attention * total / 25
    return x.astype(np.float32), maps.astype(np.float32), group


def _verdicts(x, maps, counts=(0, 10)):
    pipe = _pipe()
    feats = preprocess(maps, pipe["preprocess"])
    inputs = preprocess(x, pipe["preprocess"])
    result = analyze(feats, pipeline=pipe, embed=False)
    patterns = InputPatterns.of(x, pipe["preprocess"], maps=maps)
    return {k: clever_hans_score(result, inputs, _pipe(window_sweep_eigenvectors=k),
                                 features=feats, patterns=patterns) for k in counts}


@pytest.mark.parametrize("patch, attention, found", [
    (True, 0.5, True),      # a pattern the model looks at, wherever it is: a window cut
    (True, 0.0, False),     # a pattern the model ignores: its peaks lie elsewhere
    (False, 0.5, False),    # the model looks at a place of unmarked objects: no common pattern
])
def test_window_cuts_find_a_pattern_that_moves_with_the_object(patch, attention, found):
    x, maps, group = _moving_patch_class(31, patch, attention)
    verdicts = _verdicts(x, maps)
    off, on = verdicts[0], verdicts[10]
    assert not off["flagged"]
    assert all(c.get("cut_graph") != "windows" for c in off["clusters"])
    assert on["flagged"] is found
    if not found:
        assert on["score"] == off["score"]
        return
    cl = next(c for c in on["clusters"] if c["id"] == on["suspect_cluster"])
    assert cl["cut_graph"] == "windows" and cl["split_from"] is not None
    assert cl["conductance_windows"] < cl["conductance_relevance"]
    assert cl["contrast"] == pytest.approx(
        np.log(cl["conductance_input"] / max(cl["conductance_windows"], 1e-3)), abs=1e-3)
    # the place-bound terms give way to the window mass
    assert cl["window_mass"] > 0.1 and cl["window_mass_penalty"] == 0
    assert all(cl.get(k) is None for k in ("colocation", "hot_spot_separation",
                                           "hot_spot_mass", "edge_randomness"))
    members = on["labels"] == cl["id"]
    assert (members & group).sum() / members.sum() >= 0.9
    assert (members & group).sum() / group.sum() >= 0.9
    # what the class page and the CI reason say of it
    from spray.ci.evidence import _reason
    from spray.report.class_page import _cluster_rows, _evidence

    page = _evidence(on)
    assert "(peak windows)" in _cluster_rows(on)
    assert "log(φ_input/φ_windows)" in page and "window_sweep_eigenvectors" in page
    assert "window mass" in page
    on = {**on, "name": "Bag", "class": 0,
          "clusters": [{**c, "suspect": c["id"] in on["suspect_clusters"]}
                       for c in on["clusters"]]}
    reason = _reason(on)
    assert "of the peak windows' graph" in reason and "conductance peak windows" in reason


def test_window_cut_members_are_matched_with_the_windows_side():
    """The member step matches a window cut's pattern with the peak windows' side
    (``window_side`` of the shorter side), not its hot region's: the mean relevance
    difference of a pattern at varying places spreads over the object."""
    x, maps, group = _moving_patch_class(32, True, 0.5, stamped=90)
    on = _verdicts(x, maps, counts=(10,))[10]
    assert on["flagged"]
    cl = next(c for c in on["clusters"] if c["id"] == on["suspect_cluster"])
    members = on["labels"] == cl["id"]
    assert cl["peak_window"] == round(0.22 * SIDE) and cl["peak_at"] == "peak"
    assert (members & group).sum() / group.sum() >= 0.9
    assert (members & group).sum() / members.sum() >= 0.9


def _core_and_carriers(seed: int, carriers: float):
    """Best-match correlations shaped like a colour patch's window cut on the design draws
    (docs/verdict-eval.md, "Window cuts"): 35 members at 0.7–0.97; outside, a share
    ``carriers`` of 265 samples at 0.64–0.94 (the stamped samples the cut left out) and the
    rest at 0.2–0.62."""
    rng = np.random.default_rng(seed)
    n_out = 265
    k = int(round(carriers * n_out))
    r = np.concatenate([rng.uniform(0.7, 0.97, 35), rng.uniform(0.64, 0.94, k),
                        rng.uniform(0.2, 0.62, n_out - k)])
    mask = np.zeros(len(r), dtype=bool)
    mask[:35] = True
    return r, mask


def test_window_cut_guard_passes_when_most_carriers_are_outside():
    """The fences' guard refuses a core whose carriers are mostly outside (they lift the upper
    fence of the samples outside), and so does the gap between them and the rest; the
    ``median`` guard of a window cut lets them in — but not a pattern most of the class
    carries."""
    from spray.config.presets import FlagsSection
    from spray.verdict.members import _guard, lower_fence

    flags = FlagsSection()
    reach, outside_reach, gap = flags.trim_fence_iqr, flags.peak_guard_iqr, flags.peak_carrier_gap
    r, mask = _core_and_carriers(0, 0.25)
    assert _guard(r, mask, ~mask, reach, outside_reach, gap) is None
    passed = _guard(r, mask, ~mask, reach, outside_reach, gap, median=True)
    assert passed == (lower_fence(r[mask], reach), "median")
    join = ~mask & (r >= passed[0])
    assert join[35:35 + 66].mean() >= 0.9 and not join[35 + 66:].any()
    # a pattern most of the samples outside reach: refused all the same
    r, mask = _core_and_carriers(1, 0.6)
    assert _guard(r, mask, ~mask, reach, outside_reach, gap, median=True) is None


def test_window_cuts_are_off_by_default_and_need_the_maps():
    """Off by default (the clean-score reference was scored without them: a run with them gets
    no clean rate; their other flags change no score while they are off, so the reference
    serves whatever those are), and none without the relevance maps at the inputs'
    resolution."""
    x, maps, group = _moving_patch_class(31, True, 0.5)
    assert load_pipeline("spray-default")["flags"]["window_sweep_eigenvectors"] == 0
    pipe = _pipe()
    feats = preprocess(maps, pipe["preprocess"])
    inputs = preprocess(x, pipe["preprocess"])
    result = analyze(feats, pipeline=pipe, embed=False)
    no_maps = InputPatterns.of(x, pipe["preprocess"])
    v = clever_hans_score(result, inputs, _pipe(window_sweep_eigenvectors=10), features=feats,
                          patterns=no_maps)
    assert not v["flagged"]
    assert all(c.get("cut_graph") != "windows" for c in v["clusters"])
    from spray.verdict.calibration import clean_rate
    from spray.verdict.score import flag_params

    for flags, applies in (({}, True), ({"window_sweep_eigenvectors": 10}, False),
                           ({"window_side": 0.3, "window_mass_weight": 5.0}, True)):
        preset = load_pipeline("spray-default", overrides={"flags": flags or None})
        rate = clean_rate(1.0, flag_params(preset).model_dump(), preset)
        assert (rate is not None) is applies


def test_a_window_cuts_carriers_outside_join_it():
    """A window cut holding a third of the stamped samples (those whose pattern is opaque; the
    others' is blended at 0.4–1): the samples outside that carry the pattern at their own
    peaks join it, matched with the windows' side. The same members as a suspect of the
    relevance graph are matched at their hot region's side, which spreads over the objects:
    nobody joins."""
    from spray.verdict.members import join_where_looked
    from spray.verdict.result import ClusterEvidence

    x, maps, group = _moving_patch_class(33, True, 0.5, stamped=120, faintest=0.4, opaque=40)
    pipe = _pipe(window_sweep_eigenvectors=10)
    flags = pipe["flags"]
    feats = preprocess(maps, pipe["preprocess"])
    patterns = InputPatterns.of(x, pipe["preprocess"], maps=maps)
    core = np.zeros(len(group), dtype=bool)
    core[np.flatnonzero(group)[:40]] = True
    out = {}
    for graph in ("windows", None):
        labels = np.where(core, 1, 0)
        entry = ClusterEvidence.of(core.copy(), id=1, cut_along=1, cut_graph=graph)
        rest = ClusterEvidence.of(~core, id=0)
        after = join_where_looked(labels, [rest, entry], [1], feats, flags["trim_fence_iqr"],
                                  flags["peak_guard_iqr"], patterns, 2000,
                                  flags["peak_window_doublings"], flags["peak_carrier_gap"],
                                  flags["peak_far_iqr"], flags["window_side"])
        out[graph] = (after == 1, entry)
    members, entry = out["windows"]
    assert entry.peak_window == round(0.22 * SIDE) and entry.peak_joined >= 60
    assert (members & group).sum() / group.sum() >= 0.9
    assert (members & group).sum() / members.sum() >= 0.9
    members, entry = out[None]
    assert not entry.peak_joined and (members == core).all()


def test_window_cuts_on_a_subsample_and_without_flat_windows():
    """A class above ``score_max_samples`` is scored on a subsample with its samples' windows;
    samples whose window holds no pattern (zeros: flat, or non-finite) are in no window cut."""
    from spray.verdict.evidence import ClassGraphs
    from spray.verdict.score import _window_cuts, flag_params

    x, maps, group = _moving_patch_class(31, True, 0.5)
    v = _verdicts(x, maps, counts=(10,))[10]
    pipe = _pipe(window_sweep_eigenvectors=10, score_max_samples=200)
    feats = preprocess(maps, pipe["preprocess"])
    result = analyze(feats, pipeline=pipe, embed=False)
    patterns = InputPatterns.of(x, pipe["preprocess"], maps=maps)
    sub = clever_hans_score(result, preprocess(x, pipe["preprocess"]), pipe, features=feats,
                            patterns=patterns)
    assert v["flagged"] and sub["flagged"] and sub["scored_on"] == 200
    cl = next(c for c in sub["clusters"] if c["id"] == sub["suspect_cluster"])
    assert cl["cut_graph"] == "windows"
    members = sub["labels"] == cl["id"]
    assert (members & group).sum() / members.sum() >= 0.9
    windows, share = patterns.peak_windows(0.22)
    flat = group & (np.arange(len(group)) % 2 == 0)          # half the stamped: no pattern
    windows[flat], share[flat] = 0.0, 0.0
    graphs = ClassGraphs.build(result, preprocess(x, pipe["preprocess"]), pipe,
                               flag_params(pipe), feats, windows=(windows, share))
    cuts = _window_cuts(graphs)
    assert cuts and not any((c.mask & flat).any() for c in cuts)
