"""Does a worker's kNN warm-up slow the LRP tasks it runs meanwhile?

    python tests/benchmarks/bench_warm_up.py --out /tmp/warm-up.json

Two fresh processes, each a stand-in for a new Dask worker (the demo's VGG-style CNN, batches
of 128 1×32×32 inputs, torch with ``--torch-threads`` threads, like one worker on the machine's
cores): *alone* prepares the LRP program and computes LRP batches for ``--seconds``;
*overlap* starts :func:`spray.analysis.knn.warm_up` in a background thread (as
:class:`spray.run.warm_up.KnnWarmUp` does) and computes LRP batches until it has finished.
Recorded: the first chunk (program + 256 maps), LRP maps/s (wall) and the process's CPU
seconds, and the warm-up's wall seconds. Writes one JSON object to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(mode: str, seconds: float, torch_threads: int) -> dict:
    """One fresh process: LRP batches alone or next to the warm-up."""
    import torch

    from spray.cli.demo import build_model
    from spray.lrp.engine import prepare
    from spray.lrp.engine import run as lrp

    torch.set_num_threads(torch_threads)
    torch.manual_seed(0)
    x = torch.rand(128, 1, 32, 32)
    out: dict = {"mode": mode, "torch_threads": torch_threads,
                 "load_average_before": round(os.getloadavg()[0], 2)}
    done = threading.Event()
    if mode == "overlap":
        from spray.analysis.knn import warm_up

        def warm():
            t = time.perf_counter()
            out["warm_up_parts"] = {k: round(v, 2) for k, v in warm_up().items()}
            out["warm_up_seconds"] = round(time.perf_counter() - t, 2)
            done.set()

        threading.Thread(target=warm, daemon=True).start()
    t0, c0 = time.perf_counter(), cpu_seconds()
    program = prepare(build_model().eval())
    maps = 0
    while True:
        lrp(program, x, "predicted")
        maps += len(x)
        if maps == 256:
            out["first_chunk_seconds"] = round(time.perf_counter() - t0, 2)
        elapsed = time.perf_counter() - t0
        if (done.is_set() if mode == "overlap" else elapsed >= seconds) and maps >= 256:
            break
    out.update(lrp_seconds=round(elapsed, 2), maps=maps, maps_per_second=round(maps / elapsed, 1),
               cpu_seconds=round(cpu_seconds() - c0, 2),
               load_average_after=round(os.getloadavg()[0], 2))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=30.0, help="LRP time of the 'alone' run")
    ap.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", choices=["alone", "overlap"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(worker(args.child, args.seconds, args.torch_threads)))
        return
    rows = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for mode in ("overlap", "alone"):
        proc = subprocess.run([sys.executable, __file__, "--out", args.out, "--child", mode,
                               "--seconds", str(args.seconds), "--torch-threads",
                               str(args.torch_threads)], capture_output=True, text=True, env=env,
                              check=True)
        rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(rows[mode]), flush=True)
    rows["slowdown"] = round(rows["alone"]["maps_per_second"]
                             / rows["overlap"]["maps_per_second"], 2)
    rows["time"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"LRP maps/s alone / next to the warm-up: {rows['slowdown']}×")


if __name__ == "__main__":
    main()
