"""The window-cut probe (tests/benchmarks/probe_window_cuts.py): what it measures on a cut and
how it splits planted from false cuts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
import probe_window_cuts as probe  # noqa: E402
from test_window_cuts import _moving_patch_class, _pipe  # noqa: E402


def test_likeness_forgives_a_pixel_of_offset_and_not_unrelated_windows():
    """One pattern a pixel off from one sample to the next is alike (the likeness takes the
    better of the pair with one window moved); windows of noise are not."""
    rng = np.random.default_rng(0)
    n, side = 40, 32
    pattern = rng.random((3, 7, 7))
    x = 0.05 * rng.random((n, 3, side, side))
    maps = np.zeros((n, side, side))
    for i in range(n):
        y, c = 10 + i % 2, 12 + (i // 2) % 2       # the pattern moves by a pixel
        x[i, :, y:y + 7, c:c + 7] += pattern
        maps[i, 10:17, 12:19] = 1.0                  # the peak stays where it was
    moved, _, _ = probe._windows_at(x, maps, 0.22, shift=1)
    everyone = np.ones(n, dtype=bool)
    unmoved = moved[:, moved.shape[1] // 2][:, None]
    assert probe._likeness(moved, everyone) > 0.95
    assert probe._likeness(unmoved, everyone) < probe._likeness(moved, everyone) - 0.1
    noise = rng.random((n, 3, side, side))
    assert abs(probe._likeness(probe._windows_at(noise, maps, 0.22, shift=1)[0], everyone)) < 0.25
    assert np.isnan(probe._likeness(moved, np.arange(n) == 0))


def test_the_second_peak_lies_beside_the_first():
    """The second peak's window is the densest that does not overlap the first: two hot
    squares apart give the other one, two overlapping give the next place beside it."""
    maps = np.zeros((2, 32, 32))
    maps[:, 4:11, 4:11] = 2.0
    maps[0, 20:27, 18:25] = 1.0            # a second hot square, apart
    maps[1, 4:11, 9:16] += 0.5             # overlapping the first
    x = np.random.default_rng(0).random((2, 3, 32, 32))
    _, (py, px), S = probe._windows_at(x, maps, 0.22)
    assert S == 7 and (py[0], px[0]) == (4, 4)
    _, (qy, qx), _ = probe._windows_at(x, maps, 0.22, second=True)
    assert (qy[0], qx[0]) == (20, 18)
    assert max(abs(qy[1] - py[1]), abs(qx[1] - px[1])) >= S


def test_the_table_counts_planted_and_false_cuts_above_the_score():
    cuts = [
        {"n_planted": 30, "planted_in": 20, "size": 25, "plain_score": 2.0},   # planted
        {"n_planted": 30, "planted_in": 5, "size": 25, "plain_score": 2.0},    # neither
        {"n_planted": 30, "planted_in": 9, "size": 20, "plain_score": 2.0},    # neither (< half)
        {"n_planted": 0, "planted_in": 0, "size": 10, "plain_score": 1.5},     # false
        {"n_planted": 0, "planted_in": 0, "size": 10, "plain_score": 0.5},     # below
    ]
    for c in cuts:
        c.update({k: 0.5 for k in probe.MEASURES if k not in c})
    rows = probe.table(cuts, 1.0, "cmd")["rows"]
    assert list(rows[0]) == ["measure", "planted cuts (1)", "false cuts (1)"]
    sizes = next(r for r in rows if r["measure"] == "size")
    assert sizes["planted cuts (1)"].startswith("25 /") and sizes["false cuts (1)"].startswith("10 /")


def test_the_probe_records_the_window_cut_of_a_moving_patch():
    """On a class whose stamped samples carry a pattern the model looks at wherever it is,
    the probe records the window cut the rule measures, mostly stamped, separated by its
    peak windows and not at its second peak (on the object, away from the pattern)."""
    x, maps, group = _moving_patch_class(31, True, 0.5)
    cuts, score = probe.probe_class(maps, x, group, _pipe(window_sweep_eigenvectors=10))
    assert score >= 1.7
    best = max(cuts, key=lambda c: c["plain_score"])
    assert best["planted_in"] >= 0.9 * best["size"]
    assert best["window_mass"] > 0.1
    assert best["phi_second"] > 0.7 and best["conductance_windows"] < 0.5
    assert -1 <= best["likeness"] <= 1 and 0 <= best["phi_ring"] <= 1
    none, _ = probe.probe_class(maps, x, group, _pipe())
    assert none == []
