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
                        stamped: int = 60):
    """``n`` RGB images of a blurry object of random colour at a random place on a noisy
    background; ``stamped`` of them carry a 5 × 5 pattern (a blue square with a white centre)
    at a random place on their object when ``patch``. The relevance follows each object, and
    for the ``stamped`` samples the model puts ``attention`` of their relevance on the 5 × 5
    place (with or without the pattern there). Returns (inputs, maps, group)."""
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
    for i in np.flatnonzero(group):
        cy, cx = (np.round(centres[i]) + rng.integers(-3, 4, size=2)).astype(int)
        y, c = cy - 2, cx - 2
        if patch:
            x[i, :, y:y + 5, c:c + 5] = np.array([0.1, 0.2, 0.9])[:, None, None]
            x[i, :, y + 2, c + 2] = 1.0
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
    no clean rate), and none without the relevance maps at the inputs' resolution."""
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

    for flags, applies in (({}, True), ({"window_sweep_eigenvectors": 10}, False)):
        preset = load_pipeline("spray-default", overrides={"flags": flags or None})
        rate = clean_rate(1.0, flag_params(preset).model_dump(), preset)
        assert (rate is not None) is applies
