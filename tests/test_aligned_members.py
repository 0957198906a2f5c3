"""Members by what they agree on where the model looks, found anywhere
(``flags.aligned_agreement``; :func:`spray.verdict.members.align_members`,
:meth:`spray.verdict.patterns.InputPatterns.aligned_agreement`)."""

from __future__ import annotations

import numpy as np
import pytest
from test_window_cuts import _moving_patch_class, _pipe

from spray.analysis.preprocess import preprocess
from spray.verdict.members import align_members, decide_members
from spray.verdict.patterns import InputPatterns, _nearest_place
from spray.verdict.result import ClusterEvidence


def _aligned(x, maps, core, graph="windows", **flags):
    """``align_members`` of a suspect ``core`` (id 1) against the rest (id 0, one cluster)."""
    pipe = _pipe(window_sweep_eigenvectors=10, aligned_agreement=True, **flags)
    f = pipe["flags"]
    feats = preprocess(maps, pipe["preprocess"])
    patterns = InputPatterns.of(x, pipe["preprocess"], maps=maps)
    labels = np.where(core, 1, 0)
    entry = ClusterEvidence.of(core.copy(), id=1, cut_along=1, cut_graph=graph)
    rest = ClusterEvidence.of(~core, id=0)
    n = len(core)
    W = _ring(n)
    after = align_members(labels, [rest, entry], [1], W, feats, patterns, 2000,
                          f["agreement_spread"], f["pattern_join_iqr"], f["window_side"],
                          f["peak_place_share"], f["peak_place_carriers"])
    return after == 1, entry


def _ring(n: int):
    """A graph where each sample's edges go to its two index neighbours."""
    import scipy.sparse as sp

    i = np.arange(n)
    return sp.csr_matrix((np.ones(2 * n), (np.r_[i, i], np.r_[(i + 1) % n, (i - 1) % n])),
                         shape=(n, n))


def test_an_opaque_stamp_that_moves_joins_wherever_it_is():
    """A window cut holding 20 of 60 opaque stamps at random places on their objects takes in
    every other stamped sample and no other, whatever its relevance."""
    x, maps, group = _moving_patch_class(41, True, 0.5, stamped=60)
    core = np.zeros(len(group), dtype=bool)
    core[np.flatnonzero(group)[:20]] = True
    members, entry = _aligned(x, maps, core)
    assert entry.aligned_joined == 40 and entry.aligned_trimmed == 0
    assert (members == group).all()


def test_look_alikes_the_graph_cut_with_the_stamp_leave():
    """A window cut of 30 stamped and 12 unstamped samples (the better half by the best cosine
    holds the stamp): the 12 leave, the other 30 stamped samples join."""
    x, maps, group = _moving_patch_class(42, True, 0.5, stamped=60)
    core = np.zeros(len(group), dtype=bool)
    core[np.flatnonzero(group)[:30]] = True
    core[np.flatnonzero(~group)[:12]] = True
    members, entry = _aligned(x, maps, core)
    assert entry.aligned_trimmed == 12 and entry.aligned_joined == 30
    assert (members == group).all()
    # a suspect of the relevance graph is trimmed at its hot spot, not here: only joins
    members, entry = _aligned(x, maps, core, graph=None)
    assert entry.aligned_trimmed == 0 and (members[core]).all()


def test_a_blended_stamp_is_not_agreed_on():
    """A stamp blended over the object at opacities 0.4–1 has no one value per pixel: the
    members agree on nothing and nobody moves (the cosine of ``join_where_looked`` reads it)."""
    x, maps, group = _moving_patch_class(43, True, 0.5, stamped=60, faintest=0.4)
    core = np.zeros(len(group), dtype=bool)
    core[np.flatnonzero(group)[:20]] = True
    members, entry = _aligned(x, maps, core)
    assert (members == core).all() and not entry.aligned_joined


@pytest.mark.parametrize("kind", ["looked-at place", "random subset", "colour family"])
def test_groups_without_a_stamp_move_nobody(kind):
    """Groups without a stamp: samples whose relevance has an extra peak at a place of their
    object (no pattern there), random subsets and objects of one colour family (they agree on
    a colour, not on values beside each other) — nobody joins or leaves."""
    x, maps, group = _moving_patch_class(44, False, 0.5, stamped=60)
    rng = np.random.default_rng(0)
    if kind == "looked-at place":
        core = np.zeros(len(group), dtype=bool)
        core[np.flatnonzero(group)[:30]] = True
    elif kind == "random subset":
        core = np.zeros(len(group), dtype=bool)
        core[rng.choice(len(group), 40, replace=False)] = True
    else:
        pixel = x[:, :, 16, 16]
        core = (pixel[:, 2] > pixel[:, 0] + 0.2) & (pixel[:, 2] > pixel[:, 1] + 0.2)
        assert 10 <= core.sum() <= 100
    members, entry = _aligned(x, maps, core)
    assert (members == core).all()
    assert not entry.aligned_joined and not entry.aligned_trimmed


def test_nearest_place_is_the_best_of_every_window():
    """The FFT distances equal a loop over every place of the weighted squared differences."""
    rng = np.random.default_rng(5)
    X = rng.random((3, 2, 9, 11))
    T = rng.random((2, 4, 3))
    weight = rng.random((2, 4, 3)) * (rng.random((2, 4, 3)) > 0.3)
    X[1, :, 2:6, 5:8] = T                                   # an exact copy: distance 0 there
    distance, places = _nearest_place(X, T, weight)
    for i in range(3):
        d = np.array([[(weight * (X[i, :, a:a + 4, b:b + 3] - T) ** 2).sum()
                       for b in range(11 - 3 + 1)] for a in range(9 - 4 + 1)])
        d = np.sqrt(d / (weight > 0).sum())
        assert distance[i] == pytest.approx(d.min(), abs=1e-6)
        assert tuple(places[i]) == np.unravel_index(d.argmin(), d.shape)
    assert distance[1] == pytest.approx(0.0, abs=1e-6) and tuple(places[1]) == (2, 5)
    X[2, 0, 0, 0] = np.nan
    assert np.isnan(_nearest_place(X, T, weight)[0][2])


def test_the_step_is_off_unless_switched_on():
    """``decide_members`` runs the step (last) only with ``aligned_agreement`` (on in
    ``followed``)."""
    from spray.config.presets import load_pipeline
    from spray.verdict.score import flag_params

    x, maps, group = _moving_patch_class(41, True, 0.5, stamped=60)
    core = np.zeros(len(group), dtype=bool)
    core[np.flatnonzero(group)[:20]] = True
    ran = {}
    for on in (False, True):
        pipe = _pipe(window_sweep_eigenvectors=10, aligned_agreement=on)
        feats = preprocess(maps, pipe["preprocess"])
        entry = ClusterEvidence.of(core.copy(), id=1, cut_along=1, cut_graph="windows")
        labels = decide_members(np.where(core, 1, 0), [ClusterEvidence.of(~core, id=0), entry],
                                [1], _ring(len(core)), preprocess(x, pipe["preprocess"]), feats,
                                0.1, flag_params(pipe),
                                InputPatterns.of(x, pipe["preprocess"], maps=maps))
        ran[on] = entry.aligned_joined
        assert ((labels == 1) == group).all()      # the cosine step took these stamps in
    assert ran == {False: None, True: 0}
    assert flag_params(load_pipeline("followed")).aligned_agreement
    assert not flag_params(load_pipeline("spray-default")).aligned_agreement


def test_a_stamp_most_of_the_class_carries_moves_nobody():
    """The guard: with the stamp on 200 of 300 samples the candidates outnumber the other
    samples outside — no group of its own — and nobody joins or leaves."""
    x, maps, group = _moving_patch_class(45, True, 0.5, stamped=200)
    core = np.zeros(len(group), dtype=bool)
    core[np.flatnonzero(group)[:30]] = True
    members, entry = _aligned(x, maps, core)
    assert (members == core).all() and not entry.aligned_joined and not entry.aligned_trimmed


def test_a_stamp_under_pixel_noise_still_joins():
    """Every pixel of every image carries noise of σ 0.004 (one level in 255): the
    carriers' own distances are in-sample, so the bar is the agreement's ``spread``, not their
    fence, and the stamped samples outside join all the same."""
    x, maps, group = _moving_patch_class(46, True, 0.5, stamped=60)
    x = x + np.random.default_rng(1).normal(0, 0.004, x.shape).astype(np.float32)
    core = np.zeros(len(group), dtype=bool)
    core[np.flatnonzero(group)[:20]] = True
    members, entry = _aligned(x, maps, core)
    # 39 of the 40 (the carriers' own fence as the bar takes 36)
    assert entry.aligned_joined == 39 and (members & ~group).sum() == 0


def _grey_squares(seed: int, n: int = 240, stamped: int = 48, bright: int = 30, side: int = 28):
    """Grey images of a blob on black (a garment), a white 4 × 4 square at the top left of
    ``stamped`` of them (some blobs reach under it), and ``bright`` unstamped ones whose blob
    is overexposed (white over a 9 × 9 area at its centre). Relevance on the blob, and on the
    square for the stamped samples. Returns (inputs ``(n, 1, side, side)``, maps, stamped,
    bright)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    centres = rng.uniform(7, 21, size=(n, 2))
    blob = np.exp(-((yy[None] - centres[:, :1, None]) ** 2
                    + (xx[None] - centres[:, 1:, None]) ** 2) / (2 * rng.uniform(3, 7, (n, 1, 1)) ** 2))
    x = np.clip(blob * rng.uniform(0.3, 0.6, (n, 1, 1)), 0, 1)
    x[x < 0.05] = 0.0                                           # a black background
    maps = blob * (1 + 0.3 * rng.standard_normal(blob.shape))
    order = rng.permutation(n)
    group, lit = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    group[order[:stamped]], lit[order[stamped:stamped + bright]] = True, True
    x[group, 1:5, 1:5] = 1.0
    maps[group, 1:5, 1:5] += 0.5 * maps[group].sum(axis=(1, 2))[:, None, None] / 16
    for i in np.flatnonzero(lit):
        cy, cx = np.round(centres[i]).astype(int)
        x[i, cy - 4:cy + 5, cx - 4:cx + 5] = 1.0
    return x[:, None].astype(np.float32), maps.astype(np.float32), group, lit


def test_a_fixed_place_stamp_joins_only_at_its_place():
    """Grey images on black, a white square at one corner: a suspect of the relevance graph
    holding 16 of the 48 stamps takes the other 32 in (some under a garment that reaches the
    corner: the black the carriers share there is the background, not the stamp), and none of
    the 12 overexposed blobs whose white matches the flat square elsewhere (the members match
    at one place: ``at_places``; 30 such blobs make places of their own, 9 of them join)."""
    x, maps, group, lit = _grey_squares(47, bright=12)
    core = np.zeros(len(group), dtype=bool)
    core[np.flatnonzero(group)[:16]] = True
    members, entry = _aligned(x, maps, core, graph=None)
    assert (members & group).sum() == 48 and not (members & lit).any()
    assert (members & ~group).sum() == 0 and entry.aligned_trimmed == 0
    # without the place rule the overexposed blobs would join: it is what keeps them out
    members, _ = _aligned(x, maps, core, graph=None, peak_place_share=2.0)
    assert (members & lit).sum() == 12
    # unstamped members of a suspect of the relevance graph stay (its trim is at its hot
    # spot): only a window cut's far members leave
    core[np.flatnonzero(~group & ~lit)[:6]] = True
    members, entry = _aligned(x, maps, core, graph=None)
    assert entry.aligned_trimmed == 0 and members[core].all()
    assert (members & group).sum() == 48


@pytest.mark.parametrize("size", [2, 8])
def test_a_handful_of_carriers_makes_no_template(size):
    """A suspect of 2 or 8 members has 1 or 4 carriers: a single image agrees with itself, a
    few by chance, so nothing is measured — copies of a member outside do not join (with one
    carrier and no such floor the 3 copies joined and the other member left)."""
    x, maps, group = _moving_patch_class(44, False, 0.5, stamped=60)
    core = np.zeros(len(group), dtype=bool)
    core[np.flatnonzero(group)[:size]] = True
    twins = np.flatnonzero(~group)[:3]
    x[twins], maps[twins] = x[np.flatnonzero(core)[0]], maps[np.flatnonzero(core)[0]]
    members, entry = _aligned(x, maps, core)
    assert (members == core).all() and not entry.aligned_joined and not entry.aligned_trimmed
