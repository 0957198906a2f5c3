"""What tells a window cut of a planted patch from one of a class without it? A probe.

For every draw of every cached setting (the draws of ``eval_clever_hans.py --draws``) the
class is scored with window cuts on (``--pipeline``, e.g. ``flags:
{window_sweep_eigenvectors: 10}``), and every window cut the rule measures
(``spray.verdict.evidence.measure`` with ``cut_graph == "windows"``) is recorded with its
plain score (contrast less penalties, an upper bound of its stable score) and candidate
evidence that the rule does not use:

* ``likeness``: the median correlation between two members' peak windows (unit, per-channel
  centred), the better of the two with one window moved by up to one pixel: an artefact puts
  a near-identical pattern under each stamped sample's peak;
* ``phi_second``: the cut's conductance in the kNN graph of each sample's window at its second
  relevance peak (the largest window beside the first): a sub-type of the object looks
  different there too, a patch does not;
* ``phi_ring``: its conductance in the kNN graph of the mean colours of the eight windows
  around each peak window: what surrounds the pattern;

besides the rule's own ``window_mass``, ``conductance_input`` and ``conductance_windows``.
A cut is *planted* when at least half of it carries the planted artefact, *false* when it
lies in a class without one (a clean model's, or another class of a planted model's).

    python tests/benchmarks/probe_window_cuts.py --cache-from OUT --pipeline PIPE.yaml \
        --draws 10 --json CUTS.json --table-json TABLE.json [SETTING-NAME ...]

``--json`` holds every cut; ``--table-json`` the quartiles of each measure over the cuts of
plain score ≥ ``--min-score`` (1.0), planted against false (docs/verdict-eval.md, "Results:
window cuts on rebuilt models").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_clever_hans import draw, edge_features  # noqa: E402

MEASURES = ("plain_score", "size", "window_mass", "likeness", "conductance_input",
            "conductance_windows", "phi_second", "phi_ring")


def _windows_at(inputs: np.ndarray, maps: np.ndarray, side: float, second: bool = False,
                shift: int = 0):
    """Unit per-channel centred peak windows (``side`` of the shorter side, as the rule's
    ``window_side``) of every sample, at its first or second relevance peak, moved by
    ``shift`` pixels in every direction (``(n, (2·shift + 1)², d)``), and the peaks' corners.
    Full-resolution windows: for images whose windows the rule averages over blocks (wider
    than ``patterns.MAX_SIDE``) the probe's measures are not the rule's."""
    from spray.verdict.patterns import _share_side, _unit

    H, W = maps.shape[-2:]
    S = _share_side(side, H, W)
    a = np.abs(maps).astype(np.float64)
    if a.ndim == 4:
        a = a.sum(axis=1)
    c = np.zeros((len(a), H + 1, W + 1))
    c[:, 1:, 1:] = a.cumsum(1).cumsum(2)
    sums = c[:, S:, S:] - c[:, :-S, S:] - c[:, S:, :-S] + c[:, :-S, :-S]
    py, px = np.unravel_index(sums.reshape(len(a), -1).argmax(1), sums.shape[1:])
    if second:
        ys, xs = np.arange(sums.shape[1]), np.arange(sums.shape[2])
        near = ((np.abs(ys[None, :, None] - py[:, None, None]) < S)
                & (np.abs(xs[None, None, :] - px[:, None, None]) < S))
        py, px = np.unravel_index(np.where(near, -np.inf, sums).reshape(len(a), -1).argmax(1),
                                  sums.shape[1:])
    x = inputs if inputs.ndim == 4 else inputs[:, None]
    out = []
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            ys, xs = np.clip(py + dy, 0, H - S), np.clip(px + dx, 0, W - S)
            out.append(_unit(np.stack([x[i, :, ys[i]:ys[i] + S, xs[i]:xs[i] + S]
                                       for i in range(len(x))]).astype(np.float64)))
    return np.stack(out, axis=1), (py, px), S


def _likeness(moved: np.ndarray, mask: np.ndarray) -> float:
    """Median over pairs of members of their windows' best correlation with one of them moved
    (``moved`` from :func:`_windows_at`); NaN for fewer than two members."""
    centre = moved[:, moved.shape[1] // 2]
    rows = np.flatnonzero(mask)
    if len(rows) < 2:
        return float("nan")
    C = np.einsum("id,jkd->ijk", centre[rows], moved[rows]).max(axis=2)
    C = np.maximum(C, C.T)
    return float(np.median(C[np.triu_indices(len(rows), 1)]))


def _ring(inputs: np.ndarray, peaks, S: int) -> np.ndarray:
    """Mean colour of the eight windows around each peak window, standardized."""
    py, px = peaks
    H, W = inputs.shape[-2:]
    x = inputs if inputs.ndim == 4 else inputs[:, None]
    parts = []
    for dy in (-S, 0, S):
        for dx in (-S, 0, S):
            if dy or dx:
                ys, xs = np.clip(py + dy, 0, H - S), np.clip(px + dx, 0, W - S)
                parts.append(np.stack([x[i, :, ys[i]:ys[i] + S, xs[i]:xs[i] + S].mean((1, 2))
                                       for i in range(len(x))]))
    F = np.concatenate(parts, axis=1)
    return ((F - F.mean(0)) / (F.std(0) + 1e-6)).astype(np.float32)


def scored_recording(maps, inputs, pipe: dict, record) -> tuple[dict, object]:
    """Score one class with ``pipe`` as the evaluation does, calling ``record(entry)`` with
    every candidate the rule measures; returns the verdict's dict and the analysis result."""
    import spray.verdict.score as score
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.verdict.patterns import InputPatterns

    plain_measure = score.measure

    def recording(entry, graphs, bar=None):
        out = plain_measure(entry, graphs, bar)
        if out.measured:
            record(out)
        return out

    feats = preprocess(maps, pipe["preprocess"])
    in_feats = preprocess(inputs, pipe["preprocess"])
    edges = edge_features(inputs, pipe)
    result = analyze(feats, pipeline=pipe, embed=False)
    score.measure = recording
    try:
        verdict = score.clever_hans_score(
            result, in_feats, pipe, features=feats,
            **({} if edges is None else {"edge_features": edges}),
            patterns=InputPatterns.of(inputs, pipe["preprocess"], maps=maps))
    finally:
        score.measure = plain_measure
    return verdict, result


def probe_class(maps, inputs, truth, pipe: dict) -> tuple[list[dict], float]:
    """The measured window cuts of one class (and the class score)."""
    from spray.verdict.graphs import NeighbourLists, mask_conductance, unmasked_search

    measured = []
    verdict, result = scored_recording(
        maps, inputs, pipe, lambda e: measured.append(e) if e.cut_graph == "windows" else None)
    if not measured:
        return [], verdict["score"]
    k = int(result.k)
    affinity = {**pipe["affinity"], "k": k}
    side = float(pipe["flags"]["window_side"])
    moved, peaks, S = _windows_at(inputs, maps, side, shift=1)
    second = _windows_at(inputs, maps, side, second=True)[0][:, 0].astype(np.float32)
    ring_f = _ring(inputs, peaks, S)
    graphs = {name: NeighbourLists(F, affinity, k, unmasked_search(F)).whole()
              for name, F in (("second", second), ("ring", ring_f))}
    cuts = []
    for e in measured:
        m = e.mask
        cuts.append({"plain_score": round(e.contrast - e.penalty, 4), "size": int(m.sum()),
                     "planted_in": int((m & truth).sum()), "window_mass": e.window_mass,
                     "likeness": round(_likeness(moved, m), 4),
                     "conductance_input": e.conductance_input,
                     "conductance_windows": e.conductance_windows,
                     "phi_second": round(float(mask_conductance(*graphs["second"], m)), 4),
                     "phi_ring": round(float(mask_conductance(*graphs["ring"], m)), 4)})
    return cuts, verdict["score"]


def quartiles(cuts: list[dict], key: str) -> str:
    v = np.array([c[key] for c in cuts], dtype=float)
    if not len(v):
        return "—"
    q = np.quantile(v, [0, 0.25, 0.5, 0.75, 1])
    return " / ".join(f"{x:.3g}" for x in q)


def table(cuts: list[dict], min_score: float, command: str) -> dict:
    """Quartiles of each measure, planted against false cuts of plain score ≥ min_score."""
    top = [c for c in cuts if c["plain_score"] >= min_score]
    planted = [c for c in top if c["n_planted"] and c["planted_in"] >= c["size"] / 2]
    false = [c for c in top if not c["n_planted"]]
    rows = [{"measure": key, f"planted cuts ({len(planted)})": quartiles(planted, key),
             f"false cuts ({len(false)})": quartiles(false, key)} for key in MEASURES]
    return {"rows": rows, "command": command}


def main(argv=None) -> int:
    from eval_clever_hans import parse_setting, read_settings, setting_name

    from spray.config.presets import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-from", required=True, metavar="DIR")
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--draw-size", type=int, default=300)
    ap.add_argument("--min-score", type=float, default=1.0)
    ap.add_argument("--json", required=True, metavar="FILE")
    ap.add_argument("--table-json", metavar="FILE")
    ap.add_argument("names", nargs="*", help="setting names (default: every cached one)")
    args = ap.parse_args(argv)
    pipe = load_pipeline(args.pipeline)
    root = Path(args.cache_from)
    names = args.names or [setting_name(parse_setting(s))
                           for s in read_settings(root / "settings.txt")]
    cuts = []
    for name in names:
        data = dict(np.load(root / "cache" / f"{name}.npz"))
        for d in range(args.draws):
            sub = draw(data, args.draw_size, seed=10_000 + d)
            for c in np.unique(sub["labels"]).tolist():
                sel = np.flatnonzero(sub["labels"] == c)
                truth = sub["poisoned"][sel]
                found, _ = probe_class(sub["relevance"][sel].astype(np.float32),
                                       sub["inputs"][sel].astype(np.float32), truth, pipe)
                cuts += [{"setting": name, "class": c, "draw": d, "n_planted": int(truth.sum()),
                          **cut} for cut in found]
        print(f"{name}: {sum(c['setting'] == name for c in cuts)} window cuts measured",
              flush=True)
    Path(args.json).write_text(json.dumps(cuts, indent=1) + "\n")
    if args.table_json:
        command = ("python tests/benchmarks/probe_window_cuts.py --cache-from "
                   f"{args.cache_from} --pipeline {args.pipeline} --draws {args.draws} "
                   "--json F --table-json F")
        Path(args.table_json).write_text(
            json.dumps(table(cuts, args.min_score, command), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
