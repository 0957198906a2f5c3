"""Candidates by a recurring fine detail (``flags.recurring_detail``;
:func:`spray.verdict.recurring.detail_groups`): the images' fine detail, the correlation at
fixed places (also on block-averaged images), the bar at which a group stands apart, and the
whole path on CNNs trained here on digit scenes (coloured digits on photographs,
tests/benchmarks/eval_data.py) with fine stripes blended at 70 % into the lower right corner
of each stamped image."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import digit_scenes, scored_without_cuts, suspect_pr

from spray.config.presets import load_pipeline


def _patterns(x, maps):
    from spray.verdict.patterns import InputPatterns

    return InputPatterns.of(x, load_pipeline("followed")["preprocess"], maps=maps)


@pytest.mark.parametrize("shape", [(3, 2, 7, 9), (4, 6, 5)])
def test_fine_detail_is_each_pixel_less_its_neighbourhood_mean(shape):
    """Each pixel of each channel less the mean of its 3 × 3 neighbourhood, the border's
    pixels repeated past it; a flat image has none."""
    from spray.verdict.patterns import fine_detail

    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(np.float32)
    got = fine_detail(x)
    assert got.shape == x.shape and got.dtype == np.float32
    pad = [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(x.astype(np.float64), pad, mode="edge")
    H, W = x.shape[-2:]
    mean = sum(p[..., i:i + H, j:j + W] for i in range(3) for j in range(3)) / 9
    assert np.allclose(got, x - mean, atol=1e-6)
    assert np.allclose(fine_detail(np.full(shape, 0.3, np.float32)), 0, atol=1e-7)


def test_a_fixed_stamp_is_found_at_its_place_on_block_averaged_images():
    """On images wider than a window compared pixel by pixel (96 × 96: blocks of 2), the
    seeds' best matches and :meth:`place_correlation` read the same window: a stamp at one
    place in 12 of 40 photographs-like noise images correlates there at about 1 in every
    stamped image (the seeds and the rest), about 0.1 in the others."""
    from spray.verdict.members import fixed_places
    from spray.verdict.patterns import _PeakWindows, _share_side

    rng = np.random.default_rng(6)
    n, H = 40, 96
    x = rng.random((n, 3, H, H)).astype(np.float32)
    stamp = rng.random((3, 20, 20)).astype(np.float32)
    stamped = np.arange(n) < 12
    x[stamped, :, 60:80, 10:30] = stamp
    maps = rng.random((n, H, H)).astype(np.float32) * 0.01
    maps[stamped, 60:80, 10:30] = 1.0
    p = _patterns(x, maps)
    assert _PeakWindows(_share_side(0.22, H, H), H, H).factor == 2
    seeds = np.zeros(n, dtype=bool)
    seeds[:6] = True
    found = p.peak_correlation(None, seeds, 64, side_share=0.22, places=True)
    fixed = fixed_places(found.places[seeds], 0.5)
    assert fixed is not None and found.factor == 2
    r = p.place_correlation(seeds, found, fixed, 64, 0.22)
    assert r[stamped].min() > 0.95 and r[~stamped].max() < 0.5


def test_place_correlation_is_each_samples_best_absolute_cosine_at_the_places():
    """At each place, the cosine of every sample's unit, per-channel centred window with the
    median of those of the members matched there, unit and centred; the largest absolute
    value over the places; NaN for a non-finite image."""
    from spray.verdict.patterns import PeakMatches, _PeakWindows, _share_side

    rng = np.random.default_rng(2)
    n, H = 30, 24
    x = rng.random((n, 3, H, H)).astype(np.float32)
    x[5, 1, 3, 3] = np.nan
    maps = rng.random((n, H, H)).astype(np.float32)
    p = _patterns(x, maps)
    side = _share_side(0.22, H, H)
    places = np.array([[2, 3], [15, 11]])
    found = PeakMatches(np.zeros(n), np.repeat(places, n // 2, axis=0), side)
    mask = np.zeros(n, dtype=bool)
    mask[[0, 1, 2, 20, 21]] = True
    got = p.place_correlation(mask, found, places, 64, 0.22)
    window = _PeakWindows(side, H, H)
    want = np.full(n, -np.inf)
    for k, (y, x0) in enumerate(places):
        members = np.flatnonzero(mask & (found.places == places[k]).all(axis=1))
        w = window.at_place(x, y, x0).astype(np.float64)
        t = np.median(w[members], axis=0).reshape(3, -1)
        t = (t - t.mean(axis=1, keepdims=True)).ravel()
        want = np.maximum(want, np.abs(w @ (t / np.linalg.norm(t))))
    want[~np.isfinite(want)] = np.nan
    assert np.isnan(got[5]) and np.allclose(got, want, atol=1e-5, equal_nan=True)


def test_lowest_apart_is_the_lowest_bar_a_loop_over_carriers_apart_finds():
    """:func:`~spray.verdict.members.lowest_apart` is the lowest value in its range at which
    :func:`~spray.verdict.members.carriers_apart` holds (one definition; the sift only
    skips bars it refuses); None without a gap or a group apart."""
    from spray.verdict.members import carriers_apart, lowest_apart

    rng = np.random.default_rng(3)
    for case in range(60):
        rest = rng.normal(0.1, 0.08, rng.integers(20, 120))
        carriers = rng.normal(rng.uniform(0.2, 0.8), 0.1, rng.integers(0, 40))
        r = np.round(np.concatenate([rest, carriers]), 2 if case % 2 else 6)
        high = float(rng.uniform(0.3, 1.0))
        low = -np.inf if case % 3 else float(rng.uniform(-0.2, 0.4))
        want = next((float(b) for b in np.unique(r[(r >= low) & (r <= high)])
                     if carriers_apart(r, b, 1.0, 0.1)), None)
        assert lowest_apart(r, low, high, 1.0, 0.1) == want
    assert lowest_apart(r, -np.inf, 1.0, 1.0, 0.0) is None


@pytest.fixture(scope="module")
def stripes_relied(single_torch_thread):
    return digit_scenes("stripes", True)


@pytest.fixture(scope="module")
def stripes_ignored(single_torch_thread):
    return digit_scenes("stripes", False)


def test_the_stripes_models_are_what_the_cases_need(stripes_relied, stripes_ignored):
    """The stripes turn many other-class scenes to 2 in the first model, few in the second."""
    assert stripes_relied["flips"] > 0.3 and abs(stripes_ignored["flips"]) < 0.05


def test_blended_stripes_the_model_follows_are_flagged(stripes_relied, monkeypatch):
    """What the stamped samples agree on in their pixel values is not the stripes (they are
    70 % of the photograph's own colour), so no recurring group by value forms; their fine
    detail recurs, the group that stands apart by it is the stamped samples, and the model
    follows their pieces at the place: flagged below the threshold, the suspect is the
    stamped group. Without the flag nothing is tested."""
    s = stripes_relied
    v = scored_without_cuts(s, monkeypatch)
    assert v.flagged and v.score < v.threshold
    assert min(suspect_pr(v, s["stamp"])) >= 0.9
    suspect = v.cluster(v.suspect_cluster)
    assert suspect.carried and suspect.recurring and suspect.followed_below
    assert suspect.detail and suspect.carried_at is not None
    record = v.near_tested[-1]
    assert record["recurring"] and record["detail"] and record["decision"] == "followed"
    place = next(t for t in record["tests"] if t["region"] == "place")
    assert place["effect"] >= 0.2 and place["agreed"] >= 0.15
    off = scored_without_cuts(s, monkeypatch, recurring_detail=False)
    assert not off.flagged and not off.near_tested


def test_blended_stripes_the_model_ignores_stay_unflagged(stripes_ignored, monkeypatch):
    """The same stripes on 30 % of every class of a model that reads the digit: unflagged."""
    v = scored_without_cuts(stripes_ignored, monkeypatch)
    assert not v.flagged
    assert all(t["decision"] != "followed" for t in v.near_tested or [])
