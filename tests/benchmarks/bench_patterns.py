"""Benchmark of the members by their pattern: the cost of one suspect's pattern correlation.

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_patterns.py --json bench_patterns.json

(with ``PYTHONPATH=.`` from the repository root, or spray installed). For each case
``N×SIDE`` (default 100000×32 and 10000×224): N random RGB images of SIDE × SIDE pixels in
memory, a suspect of N/10 of them, a hot spot of 40 cells of the 20 × 20 feature grid (the
``input_mask_area`` of 10 %), and
:meth:`spray.verdict.patterns.InputPatterns.correlation` with the template from at most 2 000
members, read in chunks of ``--chunk`` samples. The images are read twice (template, then every
sample) and copied chunk by chunk, as a run reads them from its data source. Prints and writes
CPU and wall seconds.

``peak_cpu_seconds``: the same class with relevance maps (random, the suspect's members with a
hot 3 × 3-cell square) and :meth:`~spray.verdict.patterns.InputPatterns.peak_correlation`, the
members' pattern where their relevance peaks, aligned, matched anywhere in every image (a
window of 3 cells' side in pixels: 5 px at 32, 34 px at 224, compared on 3 × 3 blocks; the
members' inputs read twice and their maps once, every sample's inputs once).
``peak_x2_cpu_seconds`` and ``peak_x4_cpu_seconds``: the same with the window twice and four
times as wide (10 and 20 px at 32, 68 and 136 px at 224), the passes a suspect pays while the
guard refuses (``flags.peak_window_doublings``).

``agreement_cpu_seconds``: :meth:`~spray.verdict.patterns.InputPatterns.agreement` at the same
hot spot, the members' pixels there set to one value (a flat stamp, so that pixels agree and
every sample is read: the members and as many others once, then every sample).

``aligned_cpu_seconds``: :meth:`~spray.verdict.patterns.InputPatterns.aligned_agreement`
(``flags.aligned_agreement``) with the members' hot square holding one random pattern: the
peak correlation at scale 1, the members' and as many others' raw windows at their best
matches, then every sample's distance at every place (FFT).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def measure(n: int, side: int, chunk: int) -> dict:
    """CPU and wall seconds of one suspect's pattern correlation in a class of ``n`` images."""
    from spray.verdict.patterns import InputPatterns

    x = np.random.default_rng(0).random((n, 3, side, side), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    mask[: n // 10] = True
    patterns = InputPatterns.of(x, {"channel_sum": True, "transform": "none", "pool": [20, 20]},
                                chunk)
    cpu, wall = time.process_time(), time.perf_counter()
    patterns.correlation(np.arange(40), mask, 2000)
    row = {"n": n, "side": side, "chunk": chunk,
           "cpu_seconds": round(time.process_time() - cpu, 3),
           "wall_seconds": round(time.perf_counter() - wall, 3)}
    x[: n // 10, :, : (2 * side) // 20 + 1, :] = 1.0        # the hot spot's rows: a flat stamp
    cpu = time.process_time()
    agreed = patterns.agreement(np.arange(40), mask, 0.25, 2000)
    row["agreement_cpu_seconds"] = round(time.process_time() - cpu, 3)
    assert agreed is not None
    maps = np.random.default_rng(1).random((n, side, side), dtype=np.float32)
    hot = slice(0, (3 * side) // 20)
    maps[: n // 10, hot, hot] += 5.0
    diff = np.zeros((20, 20))
    diff[:3, :3] = 1.0
    patterns = InputPatterns.of(x, {"channel_sum": True, "transform": "none", "pool": [20, 20]},
                                chunk, maps=maps)
    cpu, wall = time.process_time(), time.perf_counter()
    patterns.peak_correlation(diff.ravel(), mask, 2000)
    row.update(peak_cpu_seconds=round(time.process_time() - cpu, 3),
               peak_wall_seconds=round(time.perf_counter() - wall, 3))
    for scale in (2, 4):        # the wider windows tried while the guard refuses
        cpu = time.process_time()
        patterns.peak_correlation(diff.ravel(), mask, 2000, scale=scale)
        row[f"peak_x{scale}_cpu_seconds"] = round(time.process_time() - cpu, 3)
    # a stamp that agrees value by value where the members' relevance peaks
    x[: n // 10, :, hot, hot] = np.random.default_rng(2).random((3, hot.stop, hot.stop))
    cpu, wall = time.process_time(), time.perf_counter()
    aligned = patterns.aligned_agreement(diff.ravel(), mask, 0.1, 2000)
    row.update(aligned_cpu_seconds=round(time.process_time() - cpu, 3),
               aligned_wall_seconds=round(time.perf_counter() - wall, 3))
    assert aligned is not None and np.nanmax(aligned.distance[: n // 10]) < 1e-3
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["100000x32", "10000x224"], metavar="NxSIDE")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    for case in args.cases:
        n, side = (int(v) for v in case.split("x"))
        rows.append(measure(n, side, args.chunk))
        print(f"n = {n}, {side}×{side} RGB: {rows[-1]['cpu_seconds']:.2f} CPU s, "
              f"{rows[-1]['wall_seconds']:.2f} s wall; at the peaks "
              f"{rows[-1]['peak_cpu_seconds']:.2f} CPU s, {rows[-1]['peak_wall_seconds']:.2f} s wall"
              f" (widened ×2 / ×4: {rows[-1]['peak_x2_cpu_seconds']:.2f} / "
              f"{rows[-1]['peak_x4_cpu_seconds']:.2f} CPU s; agreement "
              f"{rows[-1]['agreement_cpu_seconds']:.2f} CPU s; aligned agreement "
              f"{rows[-1]['aligned_cpu_seconds']:.2f} CPU s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
