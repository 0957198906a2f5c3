"""The Dask task graph of a run, and the run itself.

Per class: chunks of samples → LRP (:func:`spray.tasks.lrp_chunk`, one task per Zarr chunk,
retried on a lost worker) → analysis of the class (:func:`spray.tasks.analyze_class`, depends on
that class's chunks) → report in the client. The cluster is an embedded
``distributed.LocalCluster`` (default), a single-process threaded one, or an existing scheduler.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spray import __version__
from spray.config import RunConfig, config_hash, dump_config
from spray.errors import ConfigError, DataError, SprayError, StoreError
from spray.models import load_model, model_fingerprint
from spray.pipeline import load_pipeline
from spray.sources import class_partitions, open_source
from spray.store import RunLock, create_or_check_store, prepare_class, store_path
from spray.tasks import analyze_class, lrp_chunk

RUN_FILES = ("spray.zarr", "report", "run.json", "config.yaml")


@contextlib.contextmanager
def dask_client(cluster_cfg: dict, scheduler: str | None = None):
    """Yield a ``distributed.Client`` for the configured cluster, closing what we started."""
    from distributed import Client, LocalCluster

    address = scheduler or cluster_cfg["scheduler"]
    if address.startswith("tcp://"):
        try:
            client = Client(address, timeout="20s")
        except OSError as err:
            raise ConfigError(f"key 'cluster.scheduler': cannot reach the Dask scheduler at "
                              f"{address}: {err}") from None
        with client:
            yield client
        return
    processes = address == "local"
    cluster = LocalCluster(
        n_workers=cluster_cfg["n_workers"] if processes else 1,
        threads_per_worker=cluster_cfg["threads_per_worker"] if processes else cluster_cfg["n_workers"],
        processes=processes, memory_limit=cluster_cfg["memory_limit"],
        dashboard_address=":0", host="127.0.0.1",
    )
    with cluster, Client(cluster) as client:
        yield client


def _pipeline_spec(cfg: RunConfig):
    if isinstance(cfg.pipeline, dict):
        spec = dict(cfg.pipeline)
        return spec.pop("preset", "spray-default"), spec
    return cfg.pipeline, None


def _class_names(cfg: RunConfig, n_outputs: int) -> list[str]:
    if cfg.class_names is None:
        return [str(i) for i in range(n_outputs)]
    if len(cfg.class_names) != n_outputs:
        raise ConfigError(f"key 'class_names': {len(cfg.class_names)} names for a model with "
                          f"{n_outputs} outputs")
    return list(cfg.class_names)


def _probe_model(cfg: RunConfig, base_dir: Path, source) -> tuple[torch.nn.Module, int]:
    model = load_model(cfg.model.model_dump(), str(base_dir))
    if len(source.labels()) == 0:
        raise DataError(f"{source.name}: the dataset holds no samples")
    x = torch.as_tensor(source.load(np.array([0])))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"the model cannot process a sample of shape {tuple(x.shape[1:])} from "
                        f"{source.name}: {type(err).__name__}: {err}") from None
    if out.ndim != 2:
        raise DataError(f"the model must return logits of shape (batch, classes), got "
                        f"{tuple(out.shape)}")
    return model, int(out.shape[1])


def _clear_run_dir(run_dir: Path) -> None:
    for name in RUN_FILES:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise StoreError(f"output {run_dir} exists and is not a folder")
    if run_dir.is_dir():
        foreign = [p.name for p in run_dir.iterdir()
                   if p.name not in RUN_FILES + (".spray.lock", "demo")]
        if foreign and not store_path(run_dir).exists():
            raise StoreError(f"output {run_dir} already holds other files ({', '.join(sorted(foreign)[:5])}); "
                             f"choose an empty or new folder")


def _submit(client, cfg: RunConfig, base_dir: Path, run_dir: Path, pipeline: dict, plan: dict):
    """Submit the LRP chunk tasks still missing and one analysis task per class."""
    threads = cfg.cluster.threads_per_worker
    data_cfg, model_cfg = cfg.data.model_dump(), cfg.model.model_dump()
    attr_cfg = cfg.attribution.model_dump()
    chunk_futures, analysis_futures = {}, {}
    for c, todo in plan.items():
        futures = [client.submit(lrp_chunk, str(run_dir), c, chunk, data_cfg, model_cfg, attr_cfg,
                                 str(base_dir), threads, key=f"lrp-c{c}-chunk{chunk}-{run_dir.name}",
                                 retries=2, pure=False)
                   for chunk in todo]
        chunk_futures[c] = futures
        analysis_futures[c] = client.submit(analyze_class, str(run_dir), c, pipeline, data_cfg,
                                            futures, threads, key=f"analysis-c{c}-{run_dir.name}",
                                            retries=1, pure=False)
    return chunk_futures, analysis_futures


def _show_progress(futures, enabled: bool) -> None:
    if not enabled or not futures:
        return
    from distributed import progress

    progress(futures)
    print(file=sys.stderr)


def _collect(futures_by_class: dict) -> tuple[dict, dict]:
    done, failed = {}, {}
    for c, futures in futures_by_class.items():
        for fut in futures if isinstance(futures, list) else [futures]:
            try:
                done.setdefault(c, []).append(fut.result())
            except Exception as err:  # noqa: BLE001 - recorded and reported per class
                failed.setdefault(c, []).append(str(err) if isinstance(err, SprayError)
                                                else f"{type(err).__name__}: {err}")
    return done, failed


def run(cfg: RunConfig, base_dir: Path, output: str | None = None, scheduler: str | None = None,
        overwrite: bool = False, quiet: bool = False) -> dict:
    """Run the whole pipeline for a validated config; returns the run summary (``run.json``)."""
    run_dir = Path(output).resolve() if output else Path(cfg.output)
    t_start = time.perf_counter()
    pipeline = load_pipeline(*_pipeline_spec(cfg), base_dir=base_dir)
    source = open_source(cfg.data.model_dump())
    model, n_outputs = _probe_model(cfg, base_dir, source)
    names = _class_names(cfg, n_outputs)
    parts = class_partitions(source.labels(), cfg.classes, n_outputs)
    _check_run_dir(run_dir)
    with RunLock(run_dir):
        if overwrite:
            _clear_run_dir(run_dir)
        fingerprints = {"model": model_fingerprint(model), "data": source.fingerprint(),
                        "attribution": config_hash_attr(cfg)}
        group = create_or_check_store(run_dir, fingerprints, config_hash(cfg), sorted(parts))
        plan, skipped, chunks_total = {}, {}, 0
        for c, idx in sorted(parts.items()):
            if len(idx) < 3:
                skipped[c] = (f"class {c} ({names[c]}) has {len(idx)} sample(s); the analysis "
                              f"needs at least 3")
                continue
            cg = prepare_class(group, c, names[c], idx, source.sample_shape, n_outputs,
                               cfg.attribution.chunk_size, cfg.attribution.store_dtype,
                               cfg.attribution.store_channels)
            done = cg["done"][:]
            chunks_total += len(done)
            plan[c] = [i for i, ok in enumerate(done) if not ok]
        group.attrs["skipped"] = {str(c): why for c, why in skipped.items()}
        (run_dir / "config.yaml").write_text(dump_config(cfg, base_dir, pipeline))
        chunks_todo = sum(len(v) for v in plan.values())
        t_graph = time.perf_counter()
        with dask_client(cfg.cluster.model_dump(), scheduler) as client:
            if not quiet:
                print(f"spray: {len(plan)} classes, {chunks_todo}/{chunks_total} LRP chunks to "
                      f"compute; Dask dashboard: {client.dashboard_link}", file=sys.stderr)
            chunk_futures, analysis_futures = _submit(client, cfg, base_dir, run_dir, pipeline, plan)
            _show_progress([f for fs in chunk_futures.values() for f in fs]
                           + list(analysis_futures.values()), cfg.cluster.progress and not quiet)
            lrp_done, lrp_failed = _collect(chunk_futures)
            analysis_done, analysis_failed = _collect(analysis_futures)
        t_report = time.perf_counter()
        failures = {c: lrp_failed.get(c, []) + analysis_failed.get(c, [])
                    for c in set(lrp_failed) | set(analysis_failed)}
        group.attrs["failed"] = {str(c): msgs[0] for c, msgs in failures.items()}
        from spray.report import write_report

        write_report(run_dir)
        info = {
            "spray_version": __version__,
            "run_dir": str(run_dir),
            "classes": sorted(parts),
            "chunks_total": chunks_total,
            "chunks_computed": sum(len(v) for v in lrp_done.values()),
            "chunks_reused": chunks_total - chunks_todo,
            "chunks_failed": sum(len(v) for v in lrp_failed.values()),
            "skipped": {str(c): why for c, why in skipped.items()},
            "failed": {str(c): msgs for c, msgs in failures.items()},
            "stage_seconds": {
                "setup": round(t_graph - t_start, 3),
                "graph_wall": round(t_report - t_graph, 3),
                "lrp_task_sum": round(sum(r["seconds"] for v in lrp_done.values() for r in v), 3),
                "analysis_task_sum": round(sum(r["seconds"] for v in analysis_done.values() for r in v), 3),
                "report": round(time.perf_counter() - t_report, 3),
                "total": round(time.perf_counter() - t_start, 3),
            },
        }
        (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    if failures:
        lines = "; ".join(msgs[0] for msgs in failures.values())
        raise SprayError(f"{len(failures)} class(es) failed, the others finished and are in "
                         f"{run_dir}: {lines}. Fix the cause and rerun: finished chunks are reused.")
    return info


def config_hash_attr(cfg: RunConfig) -> str:
    """Fingerprint of the attribution settings (a change means other relevance maps)."""
    import hashlib

    payload = json.dumps(cfg.attribution.model_dump(exclude={"batch_size"}), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
