"""The colocation in the pixels (``flags.colocation_pixels``): stripes whose colour sums to the
photographs' brightness vanish from the channel-summed, pooled inputs, so the excess of the
stamped group over the rest lies wherever chance puts it; in the pixels it lies at the
stripes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from test_patterns import PRE, _hot_spot

from spray.analysis.preprocess import preprocess
from spray.config.presets import FlagsSection, load_pipeline
from spray.verdict.evidence import ClassGraphs, input_excess
from spray.verdict.patterns import InputPatterns

N, STAMPED = 240, 60
REGION = (slice(3, 15), slice(3, 15))          # 12 × 12 px, the stripes' square
#: red and blue lines whose channel sum (1.35) is the fields' mean brightness (3 × 0.45)
COLOUR = (0.9, 0.0, 0.45)


def _class(seed: int = 0, subtype: bool = False):
    """RGB 32 × 32 textured colour fields; the first ``STAMPED`` carry diagonal stripes (one
    line in three at 70 %) of :data:`COLOUR` over ``REGION`` — or, with ``subtype``, no stripes
    but a brighter right half (a sub-type that differs where the model does not look
    differently). Relevance sits on the square for those samples. Returns inputs, relevance
    features and the group."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.8, (N, 3, 1, 1)) + gaussian_filter(
        rng.normal(0, 2.0, (N, 3, 32, 32)), (0, 0, 1.5, 1.5))
    x = np.clip(x, 0, 1).astype(np.float32)
    group = np.arange(N) < STAMPED
    if subtype:
        x[group, :, :, 16:] = np.clip(x[group, :, :, 16:] + 0.3, 0, 1)
    else:
        yy, xx = np.mgrid[0:12, 0:12]
        lines = ((yy + xx) % 3 == 0) * 0.7
        colour = np.array(COLOUR, np.float32)[:, None, None]
        box = x[group, :, REGION[0], REGION[1]]
        x[group, :, REGION[0], REGION[1]] = box * (1 - lines) + lines * colour
    rel = rng.uniform(0, 0.2, (N, 32, 32)).astype(np.float32)
    rel[group, REGION[0], REGION[1]] += 1.0
    return x, preprocess(rel, PRE), group


def _pooled(x, feats, group) -> float:
    excess = input_excess(preprocess(x, PRE), group, 2.0)
    return float(excess[_hot_spot(feats, group)].sum() / excess.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stripes_colocate_in_the_pixels_not_pooled(seed):
    x, feats, stamped = _class(seed)
    pixels = InputPatterns.of(x, PRE).colocation(_hot_spot(feats, stamped), stamped, 2.0)
    assert _pooled(x, feats, stamped) < 0.1 and pixels > 0.6


def test_a_random_subset_and_a_subtype_do_not_colocate_in_the_pixels():
    x, feats, _ = _class()
    patterns = InputPatterns.of(x, PRE)
    rng = np.random.default_rng(3)
    for _ in range(5):
        group = np.zeros(N, bool)
        group[rng.choice(N, STAMPED, replace=False)] = True
        assert patterns.colocation(_hot_spot(feats, group), group, 2.0) < 0.3
    y, feats_s, subtype = _class(subtype=True)
    assert InputPatterns.of(y, PRE).colocation(_hot_spot(feats_s, subtype), subtype, 2.0) < 0.2


def test_the_class_sums_are_read_once_and_small_groups_give_nothing():
    x, feats, stamped = _class()
    reads = []

    def load(rows):
        reads.append(len(rows))
        return x[rows]

    patterns = InputPatterns(load, N, (8, 8), chunk=100)
    cells = _hot_spot(feats, stamped)
    first = patterns.colocation(cells, stamped, 2.0)
    assert first == pytest.approx(InputPatterns.of(x, PRE).colocation(cells, stamped, 2.0))
    # one row for the shape, then the class in chunks, then the members
    assert reads == [1, 100, 100, 40, STAMPED]
    assert patterns.colocation(cells, stamped, 2.0) == first
    assert reads[5:] == [STAMPED]                         # the class's sums and shape kept
    one = np.zeros(N, bool)
    one[0] = True
    assert patterns.colocation(cells, one, 2.0) is None
    assert patterns.colocation(cells, np.ones(N, bool), 2.0) is None
    with pytest.raises(ValueError):
        patterns.colocation(cells, stamped[:-1], 2.0)


def test_no_excess_and_a_nan_measure_nothing():
    """Members that differ nowhere beyond chance give no evidence of a place (None, not the
    best colocation); a NaN input leaves the measure undefined (None), never a silent max."""
    x, feats, stamped = _class()
    cells = _hot_spot(feats, stamped)
    same = np.repeat(x[:1], N, axis=0)
    assert InputPatterns.of(same, PRE).colocation(cells, stamped, 2.0) is None
    x[5, 0, 5, 5] = np.nan
    assert InputPatterns.of(x, PRE).colocation(cells, stamped, 2.0) is None


def _graphs(on: bool, x, feats):
    from spray.analysis.analyze import analyze

    pipe = load_pipeline("spray-default", overrides={
        "preprocess": PRE, "embedding": {"method": "none"},
        "flags": {"colocation_pixels": on, "hot_spot_agreement_spread": 0.5}})
    result = analyze(feats, pipeline=pipe, embed=False)
    params = FlagsSection.coerce(pipe["flags"])
    return ClassGraphs.build(result, preprocess(x, PRE), pipe, params, feats,
                             patterns=InputPatterns.of(x, PRE))


def test_the_flag_lifts_the_colocation_of_stripes_only():
    x, feats, stamped = _class()
    off, on = _graphs(False, x, feats), _graphs(True, x, feats)
    hot, touched = off.colocation(stamped)
    lifted = on.colocation(stamped)
    pixels = InputPatterns.of(x, PRE).colocation(_hot_spot(feats, stamped), stamped, 2.0)
    assert hot < 0.1 and lifted == (pixels, max(touched, pixels)) and pixels > 0.6
    group = np.zeros(N, bool)
    group[np.random.default_rng(4).choice(N, STAMPED, replace=False)] = True
    assert max(on.colocation(group)) < 0.5


def test_the_switch_changes_no_score_while_off():
    from spray.verdict.calibration import scoring_params

    flags = FlagsSection().model_dump()
    assert "colocation_pixels" not in scoring_params(flags)
    assert "colocation_pixels" not in scoring_params({**flags, "colocation_pixels": True})
    on = {**flags, "colocation_pixels": True, "hot_spot_agreement_spread": 0.5}
    assert scoring_params(on)["colocation_pixels"] is True


def test_whole_images_are_summed_within_the_byte_budget(monkeypatch):
    from spray.verdict import patterns as patterns_module

    x, feats, stamped = _class()
    cells = _hot_spot(feats, stamped)
    whole = InputPatterns.of(x, PRE).colocation(cells, stamped, 2.0)
    reads = []

    def load(rows):
        reads.append(len(rows))
        return x[rows]

    monkeypatch.setattr(patterns_module, "SUM_BYTES", 8 * 3 * 32 * 32 * 7)    # 7 images
    small = InputPatterns(load, N, (8, 8)).colocation(cells, stamped, 2.0)
    assert small == pytest.approx(whole) and max(reads) == 7


def test_only_members_that_agree_at_the_hot_spot_colocate_in_the_pixels():
    """Members redder and less green at the square, each over its own texture: the channel sum
    is unchanged (nothing pooled), the pixels differ on average (the members' excess lies
    there), but the members share no pattern value by value — a sub-type's colour, not a mark
    — so the colocation stays the pooled one."""
    x, feats, group = _class(subtype=True)
    y = x.copy()
    y[:, :, :, 16:] = x[0, :, :, 16:]        # no brighter half: the same right half for all
    y[group, 0, REGION[0], REGION[1]] += 0.3
    y[group, 1, REGION[0], REGION[1]] -= 0.3
    cells = _hot_spot(feats, group)
    assert InputPatterns.of(y, PRE).colocation(cells, group, 2.0) > 0.5
    off, on = _graphs(False, y, feats), _graphs(True, y, feats)
    assert off.colocation(group)[0] < on.params.colocation_knee        # the gate is reached
    assert on.pixel_separation(group) < on.params.hot_spot_knee
    assert on.colocation(group) == off.colocation(group)


def test_the_preset_followed_measures_the_colocation_in_the_pixels():
    flags = load_pipeline("followed")["flags"]
    assert flags["colocation_pixels"] is True and flags["hot_spot_agreement_spread"] == 0.5
    assert load_pipeline("spray-default")["flags"]["colocation_pixels"] is False
