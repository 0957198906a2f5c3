"""Benchmark of the report: a 1000-class run's report, and a rerun where nothing changed.

    PYTHONPATH=. python tests/benchmarks/bench_report.py --classes 1000 --json bench_report.json

Builds a synthetic store of small classes (``--samples`` 16×16 images each, a bright patch
planted into a third of every fourth class): ``--templates`` classes are analysed for real
(``spray-default`` with t-SNE), every other class is a copy of one of them under its own name
(some in CJK, some with control characters) with its score shifted, so that flagged, watched
and clean classes alternate. Then times ``write_report`` three times: from scratch, a no-op
rerun (nothing changed in the store), and a rerun after one class's analysis changed. Targets:
from scratch < 60 s, no-op < 2 s. Writes the timings as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 16


def _dataset(root: Path, n_classes: int, per_class: int, seed: int = 0) -> Path:
    """Noise images with a smooth blob per class; a bright 4×4 patch in a third of every
    fourth class (the Clever-Hans stand-in)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    x = np.empty((n_classes * per_class, 1, SIZE, SIZE), np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    for c in range(n_classes):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
        rows = slice(c * per_class, (c + 1) * per_class)
        x[rows, 0] = 0.6 * blob + 0.4 * rng.random((per_class, SIZE, SIZE))
        if c % 4 == 0:
            x[c * per_class:c * per_class + per_class // 3, 0, 1:5, 1:5] = 1.0
    path = root / "data.npz"
    np.savez(path, x=x, y=y)
    return path


def _relevance(x: np.ndarray) -> np.ndarray:
    """Relevance stand-in: the bright parts of the input (a patch takes the relevance)."""
    r = np.clip(x[:, 0] - 0.5, 0, None) ** 2
    return (r / (r.sum(axis=(1, 2), keepdims=True) + 1e-6)).astype(np.float32)


def _name(c: int) -> str:
    if c % 50 == 7:
        return f"类别 {c} 猫"
    if c % 50 == 13:
        return f"class\x07 {c}\x1b[31m"
    return f"class {c}"


def build_store(root: Path, n_classes: int, per_class: int, templates: int) -> Path:
    """A run folder whose store holds ``n_classes`` analysed classes (see the module doc)."""
    from spray.config.presets import load_pipeline
    from spray.run.tasks import analyze_class
    from spray.store import create_or_check_store, open_class, prepare_class, write_array

    data = np.load(_dataset(root, n_classes, per_class))
    x = data["x"]
    run_dir = root / "run"
    run_dir.mkdir()
    group = create_or_check_store(run_dir, {"model": "bench", "data": "bench",
                                            "attribution": "bench"}, "bench",
                                  list(range(n_classes)))
    pipeline = load_pipeline("spray-default", overrides={"embedding": {"method": "tsne"}})
    data_cfg = {"source": "npz", "path": str(root / "data.npz"), "base_dir": str(root)}
    done = {}
    for c in range(n_classes):
        idx = np.arange(c * per_class, (c + 1) * per_class)
        cg = prepare_class(group, c, _name(c), idx, (1, SIZE, SIZE), n_classes, per_class)
        cg["relevance"][:] = _relevance(x[idx])
        cg["prediction"][:] = np.full(per_class, c)
        cg["done"][:] = True
        t = c % templates if c % 4 else 0
        if t not in done:  # analysed for real
            analyze_class(str(run_dir), c, pipeline, data_cfg)
            done[t] = c
            continue
        src = open_class(run_dir, done[t])
        for name in ("features", "input_features", "eigenvalues", "eigengaps", "eigenvectors",
                     "tsne", "labels", "cluster_mean_relevance", "example_rows",
                     "example_inputs"):
            write_array(cg, name, src[name][:])
        analysis = json.loads(json.dumps(dict(src.attrs)["analysis"]))
        shift = (c % 7 - 3) * 0.4
        flags = analysis["flags"]
        flags["score"] = float(flags["score"]) + shift
        flags["flagged"] = flags["score"] >= float(flags["threshold"])
        cg.attrs["analysis"] = analysis
    (run_dir / "config.yaml").write_text("data: {source: npz, path: data.npz}\n")
    return run_dir


def _timed(run_dir: Path) -> float:
    from spray.report.html import write_report

    t0 = time.perf_counter()
    write_report(run_dir)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=40, help="samples per class")
    ap.add_argument("--templates", type=int, default=4, help="classes analysed for real")
    ap.add_argument("--json", default="bench_report.json", help="where to write the timings")
    ap.add_argument("--keep", help="keep the synthetic run folder here")
    args = ap.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="spray-bench-report-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        run_dir = build_store(root, args.classes, args.samples, args.templates)
        setup = time.perf_counter() - t0
        first = _timed(run_dir)
        noop = _timed(run_dir)
        from spray.store import open_class

        cg = open_class(run_dir, 1, mode="a")  # one class re-analysed
        analysis = dict(cg.attrs["analysis"])
        analysis["seconds"] = float(analysis.get("seconds", 0)) + 1.0
        cg.attrs["analysis"] = analysis
        one = _timed(run_dir)
        pages = len([p for p in (run_dir / "report").glob("class_*.html")
                     if p.stem.split("_")[1].isdigit() and p.stem.count("_") == 1])
        result = {"classes": args.classes, "samples_per_class": args.samples,
                  "cpu_count": os.cpu_count(), "setup_s": round(setup, 2),
                  "report_s": round(first, 2), "noop_rerun_s": round(noop, 3),
                  "one_class_changed_s": round(one, 3), "class_pages": pages,
                  "targets": {"report_s": 60.0, "noop_rerun_s": 2.0},
                  "meets_targets": first < 60.0 and noop < 2.0}
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
