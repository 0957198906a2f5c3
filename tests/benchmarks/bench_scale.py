"""Scale benchmark: LRP throughput for 1 vs 2 Dask workers, and peak memory per worker for two
dataset sizes 10× apart.

    python tests/benchmarks/bench_scale.py [--sizes 2000 20000] [--workers 1 2] [--out DIR]

For every dataset size a synthetic 10-class dataset of 32×32 images is written as a Zarr array
(read chunk by chunk by the tasks, like HDF5 or an image folder) and explained with the demo's
VGG-style CNN through the whole pipeline (``spray.run.execute.run``: LRP chunks, class analyses,
report). Each configuration gets a fresh ``LocalCluster`` of N worker processes (1 Dask thread
and 1 torch thread each, so N workers use N cores); the benchmark connects ``run`` to it like
``spray run --scheduler tcp://…`` and afterwards asks every worker for its peak resident memory
(``ru_maxrss``: the high-water mark of the whole worker process over the run, imports and model
included). LRP throughput is ``lrp_rows / lrp_wall`` from ``run.json``: maps written per second
from submitting the graph to the last LRP chunk finishing (here all tasks go to the workers at
once, ``worker-saturation: inf``, so each worker runs its LRP chunks before the analyses).

Writes ``bench_scale.json`` and a Markdown table (``bench_scale.md``) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_dataset(root: Path, n: int, chunk: int, seed: int = 0) -> Path:
    """``n`` images (1×32×32) of 10 classes in a Zarr group (x chunked by ``chunk`` samples)."""
    import zarr

    path = root / f"data-{n}.zarr"
    if (path / "zarr.json").is_file():
        return path
    rng = np.random.default_rng(seed)
    group = zarr.open_group(str(path), mode="w")
    x = group.create_array("x", shape=(n, 1, 32, 32), chunks=(chunk, 1, 32, 32), dtype="float32")
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x[start:stop] = rng.random((stop - start, 1, 32, 32), dtype=np.float32)
    # samples stored class by class, as in an image folder (a class's chunk is contiguous)
    group.create_array("y", data=np.repeat(np.arange(10), -(-n // 10))[:n].astype(np.int64))
    return path


def make_config(root: Path, data: Path, chunk: int, batch: int) -> Path:
    from spray.cli.demo import build_model

    torch.manual_seed(0)
    weights = root / "cnn.pt"
    if not weights.exists():
        torch.save(build_model(10, 1).state_dict(), weights)
    cfg = {
        "data": {"source": "zarr", "path": str(data)},
        "model": {"factory": "spray.cli.demo:build_model", "weights": str(weights),
                  "kwargs": {"n_classes": 10, "channels": 1}},
        "attribution": {"composite": "epsilon-plus-flat", "chunk_size": chunk,
                        "batch_size": batch},
        "classes": "all",
        "pipeline": {"preset": "spray-default", "embedding": {"method": "none"}},
        "cluster": {"scheduler": "local", "torch_threads": 1, "progress": False},
        "output": str(root / "run"),
    }
    path = root / f"config-{data.stem}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def bench_one(config: Path, out: Path, workers: int) -> dict:
    import dask
    from distributed import Client, LocalCluster

    from spray.config.run_config import load_config
    from spray.run.execute import run

    cfg, base = load_config(config)
    # send every task to the workers at once, so each worker's own priority order runs all LRP
    # chunks (priority 1) before the class analyses and lrp_wall measures LRP alone
    dask.config.set({"distributed.scheduler.worker-saturation": float("inf")})
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=0, dashboard_address=":0", host="127.0.0.1") as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("spray.run.tasks") and None)  # imports before the clock
        base_rss = client.run(_peak_rss_mib)
        t0 = time.perf_counter()
        info = run(cfg, base, output=str(out), scheduler=cluster.scheduler_address, quiet=True,
                   overwrite=True)
        wall = time.perf_counter() - t0
        peaks = client.run(_peak_rss_mib)
    return {"workers": workers, "samples": info["lrp_rows"], "chunks": info["chunks_computed"],
            "lrp_wall_s": info["stage_seconds"]["lrp_wall"],
            "maps_per_s": info["lrp_maps_per_second"],
            "lrp_task_s": info["stage_seconds"]["lrp_task_sum"],
            "run_wall_s": round(wall, 2),
            "worker_rss_after_import_mib": round(max(base_rss.values()), 1),
            "peak_rss_per_worker_mib": round(max(peaks.values()), 1),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--chunk", type=int, default=256, help="samples per task / Zarr chunk")
    p.add_argument("--batch", type=int, default=128, help="samples per LRP pass")
    p.add_argument("--out", default="runs/bench-scale")
    args = p.parse_args(argv)
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = {"python": sys.version.split()[0], "torch": torch.__version__,
           "cpus": os.cpu_count(), "machine": platform.machine(),
           "load_avg_at_start": [round(v, 2) for v in os.getloadavg()]}
    rows = []
    for n in args.sizes:
        data = make_dataset(root, n, args.chunk)
        config = make_config(root, data, args.chunk, args.batch)
        for w in args.workers:
            row = {"dataset": n, **bench_one(config, root / f"run-{n}-{w}", w)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (root / "bench_scale.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    lines = ["| samples | workers | LRP maps/s | LRP wall (s) | run wall (s) | peak RSS per worker (MiB) | "
             "RSS after imports (MiB) | load avg |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['workers']} | {r['maps_per_s']} | {r['lrp_wall_s']} | "
                     f"{r['run_wall_s']} | {r['peak_rss_per_worker_mib']} | "
                     f"{r['worker_rss_after_import_mib']} | {r['load_avg_1min']} |")
    table = "\n".join(lines)
    (root / "bench_scale.md").write_text(table + "\n")
    print(f"\n{env}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
