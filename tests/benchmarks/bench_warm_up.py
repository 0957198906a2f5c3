"""Does a worker's kNN warm-up slow the LRP tasks it runs meanwhile?

    python tests/benchmarks/bench_warm_up.py --out /tmp/warm-up.json

One fresh process, a stand-in for a new Dask worker: the demo's VGG-style CNN, LRP batches of
128 1×32×32 inputs, torch with ``--torch-threads`` threads (one worker on the machine's
cores). It computes LRP batches without a break for ``--seconds`` (*before*), then while
:func:`spray.analysis.knn.warm_up` runs in a background thread (as
:class:`spray.run.warm_up.KnnWarmUp` does; *during*), then again for ``--seconds``
(*after*). Adjacent windows of one process, so a shared machine's load drifts little between
them. Recorded per window: LRP maps/s (wall) and the process's CPU seconds; the warm-up's
wall seconds; the first chunk (program + 256 maps). ``lrp_thread_cpu_seconds``: CPU time of
the thread that runs the LRP batches (with ``--torch-threads 1`` all of their work).
Writes one JSON object to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def lrp_window(step, until) -> dict:
    """LRP batches (``step()`` computes one, returns its maps) until ``until(elapsed)``."""
    t, c, own, maps = time.perf_counter(), cpu_seconds(), time.thread_time(), 0
    load = os.getloadavg()[0]
    while True:
        maps += step()
        elapsed = time.perf_counter() - t
        if until(elapsed):
            break
    return {"seconds": round(elapsed, 2), "maps": maps,
            "maps_per_second": round(maps / elapsed, 1),
            "cpu_seconds": round(cpu_seconds() - c, 2),
            "lrp_thread_cpu_seconds": round(time.thread_time() - own, 2),
            "load_average_before": round(load, 2)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="length of the windows before and after the warm-up")
    ap.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    import torch

    from spray.analysis.knn import warm_up
    from spray.cli.demo import build_model
    from spray.lrp.engine import prepare
    from spray.lrp.engine import run as lrp

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    x = torch.rand(128, 1, 32, 32)
    t0 = time.perf_counter()
    program = prepare(build_model().eval())

    def step() -> int:
        lrp(program, x, "predicted")
        return len(x)

    step()
    step()
    out: dict = {"torch_threads": args.torch_threads,
                 "first_chunk_seconds": round(time.perf_counter() - t0, 2)}
    out["before"] = lrp_window(step, lambda s: s >= args.seconds)
    done = threading.Event()

    def warm():
        t = time.perf_counter()
        out["warm_up_parts"] = {k: round(v, 2) for k, v in warm_up().items()}
        out["warm_up_seconds"] = round(time.perf_counter() - t, 2)
        done.set()

    threading.Thread(target=warm, daemon=True).start()
    out["during"] = lrp_window(step, lambda s: done.is_set())
    out["after"] = lrp_window(step, lambda s: s >= args.seconds)
    quiet = (out["before"]["maps_per_second"] + out["after"]["maps_per_second"]) / 2
    out["slowdown"] = round(quiet / out["during"]["maps_per_second"], 2)
    out["time"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
