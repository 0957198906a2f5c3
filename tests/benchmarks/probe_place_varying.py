"""Probe artefacts whose place varies per sample (a logo in one of four corners, a colour patch
on the object): does the model look at them, and which representation of a class keeps the
stamped samples together (docs/verdict-eval.md, "Artefacts at varying places")?

    python tests/benchmarks/probe_place_varying.py CACHE.npz … [--draws 0,1,2] [--k 10]
        [--json F]

``CACHE.npz`` is a planted setting's cache of ``eval_clever_hans.py`` (relevance, inputs,
ground truth and the artefact's footprint per sample); draws of 300 per class as ``--draws``
takes them. For the planted class of every draw it measures, over the stamped samples:

- ``peak_on_artefact``: the share whose relevance peak (|relevance| summed over the channels,
  averaged over 3 × 3 pixels) lies within one pixel of the footprint;
- ``relevance_share`` / ``area_share``: the median share of a stamped sample's |relevance| on
  the footprint, and the footprint's share of the image (their ratio: how much more the model
  looks there than at an average pixel);
- the *kNN purity* (the share of stamped samples among each stamped sample's ``k`` nearest
  neighbours; ``base``: the stamped share of the class, what a graph that ignores the stamp
  gives) in the relevance features the analysis graphs (``relevance``: spray-default's
  preprocessing), in the inputs preprocessed the same way (``inputs``), and in the 9 × 9 raw
  input windows at each sample's relevance peak, each colour channel centred and the window
  scaled to unit norm (``peak_window``: a representation that does not depend on where the
  model looks, only on what it sees there).

A stamp the relevance features do not keep together (purity near ``base``) cannot become a
candidate of the analysis' graph, whatever the score does with it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_clever_hans import draw  # noqa: E402

log = logging.getLogger("probe_place_varying")
WINDOW = 9


def peak_windows(inputs: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit, per-channel centred ``WINDOW``² input windows at each sample's relevance peak
    (edge pixels repeated beyond the border), and the peaks ``(n, 2)``."""
    from scipy.ndimage import uniform_filter

    R = np.abs(maps).sum(axis=1) if maps.ndim == 4 else np.abs(maps)
    R = uniform_filter(R.astype(np.float64), size=(1, 3, 3))
    x = inputs if inputs.ndim == 4 else inputs[:, None]
    h = WINDOW // 2
    pad = np.pad(x, ((0, 0), (0, 0), (h, h), (h, h)), mode="edge")
    peaks = np.array([np.unravel_index(np.argmax(r), r.shape) for r in R])
    out = np.stack([pad[i, :, y:y + WINDOW, c:c + WINDOW] for i, (y, c) in enumerate(peaks)])
    out = out - out.mean(axis=(2, 3), keepdims=True)
    out = out.reshape(len(out), -1)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12), peaks


def purity(X: np.ndarray, truth: np.ndarray, k: int) -> float:
    """The share of stamped samples among the ``k`` nearest neighbours of each stamped one."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X[truth])[1][:, 1:]
    return float(truth[idx].mean())


def probe_class(inputs: np.ndarray, maps: np.ndarray, truth: np.ndarray, footprint: np.ndarray,
                k: int, preprocess_section: dict) -> dict:
    """The measures of the module notes for one class (``footprint``: ``(n, H, W)``)."""
    from spray.analysis.preprocess import preprocess

    windows, peaks = peak_windows(inputs, maps)
    R = np.abs(maps).sum(axis=1) if maps.ndim == 4 else np.abs(maps)
    on, share = [], []
    for i in np.flatnonzero(truth):
        y, c = peaks[i]
        on.append(bool(footprint[i, max(0, y - 1):y + 2, max(0, c - 1):c + 2].any()))
        share.append(float(R[i][footprint[i]].sum() / max(R[i].sum(), 1e-12)))
    area = float(np.mean([footprint[i].mean() for i in np.flatnonzero(truth)]))
    return {"n": int(len(truth)), "stamped": int(truth.sum()),
            "peak_on_artefact": round(float(np.mean(on)), 3),
            "relevance_share": round(float(np.median(share)), 4), "area_share": round(area, 4),
            "base": round(float(truth.mean()), 3),
            "relevance": round(purity(preprocess(maps, preprocess_section), truth, k), 3),
            "inputs": round(purity(preprocess(inputs, preprocess_section), truth, k), 3),
            "peak_window": round(purity(windows, truth, k), 3)}


def probe_setting(path: Path, draws: list[int], k: int) -> list[dict]:
    """:func:`probe_class` for the planted class of each draw of one cache."""
    from spray.config.presets import load_pipeline

    pre = load_pipeline("spray-default")["preprocess"]
    data = dict(np.load(path))
    rows = []
    for d in draws:
        dd = draw(data, 300, 10000 + d)
        planted = np.unique(dd["labels"][dd["poisoned"].astype(bool)])
        for c in planted:
            sel = np.flatnonzero(dd["labels"] == c)
            fp = np.asarray(dd["artefact_mask"][sel], dtype=bool)
            fp = fp.any(axis=1) if fp.ndim == 4 else fp
            row = probe_class(dd["inputs"][sel].astype(np.float32),
                              dd["relevance"][sel].astype(np.float32),
                              dd["poisoned"][sel].astype(bool), fp, k, pre)
            rows.append({"setting": path.stem, "draw": d, "class": int(c), **row})
            log.info("%s", rows[-1])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("caches", nargs="+", type=Path)
    ap.add_argument("--draws", default="0,1,2")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    draws = [int(d) for d in args.draws.split(",")]
    rows = [r for path in args.caches for r in probe_setting(path, draws, args.k)]
    if args.json:
        command = ("python tests/benchmarks/probe_place_varying.py "
                   + " ".join(f"runs/…/{p.name}" for p in args.caches)
                   + f" --draws {args.draws} --k {args.k} --json F")
        args.json.write_text(json.dumps({"rows": rows, "command": command}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
