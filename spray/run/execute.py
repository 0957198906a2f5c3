"""A run in three steps: :func:`~spray.run.plan.plan_run` (checks, no Dask), :func:`prepare_store`
(Zarr arrays, missing chunks) and :func:`execute` (Dask tasks), recorded in ``run.json``.

Per class: chunks of samples → LRP (:func:`spray.run.tasks.lrp_chunk`, one task per Zarr chunk,
retried on a lost worker) → analysis of the class (:func:`spray.run.tasks.analyze_class`, depends on
that class's chunks) → report in the client. The cluster is an embedded
``distributed.LocalCluster`` (default), a single-process threaded one, or an existing scheduler.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spray import __version__
from spray.config.run_config import (
    RunConfig,
    config_hash,
    dump_config,
)
from spray.errors import (
    IncompleteRunError,
    SprayError,
)
from spray.run import warm_up
from spray.run.dask_cluster import dashboard_text, dask_client, runtime_settings, workers_info
from spray.run.plan import RunPlan, _clear_run_dir, plan_run
from spray.run.signals import interrupt_on_signals
from spray.run.tasks import analysis_current, analyze_class, lrp_chunk
from spray.skill import model_skill
from spray.store import (
    OwnedFiles,
    RunLock,
    class_samples_hash,
    create_or_check_store,
    damaged_class,
    mark_run,
    open_store,
    prepare_class,
)

log = logging.getLogger(__name__)

def _submit(client, cfg: RunConfig, base_dir: Path, run_dir: Path, pipeline: dict, plan: dict,
            reuse: frozenset = frozenset()):
    """Submit one task per LRP chunk (a finished chunk is only checked against its samples) and
    one analysis task per class."""
    runtime = runtime_settings(client, cfg.cluster.model_dump())
    token = uuid.uuid4().hex[:8]  # keys unique per invocation on a shared scheduler
    lrp_resources = cfg.cluster.lrp_resources or None
    data_cfg, model_cfg = cfg.data.model_dump(), cfg.model.model_dump() if cfg.model else None
    attr_cfg = cfg.attribution.model_dump()
    data_cfg = {**data_cfg, "base_dir": str(base_dir)}
    chunk_task, tested_model = lrp_chunk, model_cfg   # the model the transplant test asks
    if cfg.attribution.precomputed:  # attributions made elsewhere: copy them instead of LRP
        from spray.run.tasks import precomputed_chunk as chunk_task
        tested_model = None
    chunk_futures, analysis_futures = {}, {}
    for c, todo in plan.items():
        futures = [client.submit(chunk_task, str(run_dir), c, chunk, data_cfg, model_cfg, attr_cfg,
                                 str(base_dir), runtime, key=f"lrp-c{c}-chunk{chunk}-{token}",
                                 retries=cfg.cluster.retries, pure=False,
                                 resources=lrp_resources, priority=1)  # maps before analyses
                   for chunk in todo]
        chunk_futures[c] = futures
        if c in reuse:  # maps unchanged and analysed with this pipeline already: keep it
            continue
        analysis_futures[c] = client.submit(analyze_class, str(run_dir), c, pipeline, data_cfg,
                                            futures, runtime, tested_model, attr_cfg,
                                            key=f"analysis-c{c}-{token}",
                                            retries=min(1, cfg.cluster.retries), pure=False)
    return chunk_futures, analysis_futures


def _show_progress(chunk_futures: dict, analysis_futures: dict, rows_per_chunk: int,
                   enabled: bool) -> None:
    """Wait for the tasks showing each stage: LRP in maps (rate, ETA) and analyses in classes,
    as bars on a terminal and as periodic plain lines in a log (:mod:`spray.progress`)."""
    if not enabled:
        return
    from distributed import as_completed

    from spray.progress import StageProgress

    lrp = [f for fs in chunk_futures.values() for f in fs]
    kind = {f.key: "lrp" for f in lrp} | {f.key: "analysis" for f in analysis_futures.values()}
    if not kind:
        return
    maps = StageProgress("LRP", rows_per_chunk * len(lrp), "maps", position=0)
    classes = StageProgress("analyses", len(analysis_futures), "classes", position=1)
    try:
        for fut in as_completed(lrp + list(analysis_futures.values())):
            if kind[fut.key] == "analysis":
                classes.update()
                continue
            rows = rows_per_chunk
            if fut.status == "finished":
                rows = int(fut.result().get("rows", rows_per_chunk))
            maps.add_total(rows - rows_per_chunk)  # the last chunk of a class is shorter
            maps.update(rows)
    finally:
        maps.close()
        classes.close()


def _failure(c: int, msg: str) -> str:
    return msg if msg.startswith(f"class {c}") else f"class {c}: {msg}"


def _collect(futures_by_class: dict) -> tuple[dict, dict]:
    """Results and failure messages per class; a task reports a data error as its result
    (``{"error": ...}``), anything else by raising."""
    done, failed = {}, {}
    for c, futures in futures_by_class.items():
        for fut in futures if isinstance(futures, list) else [futures]:
            try:
                result = fut.result()
            except Exception as err:  # noqa: BLE001 - recorded and reported per class
                msg = str(err) if isinstance(err, SprayError) else f"{type(err).__name__}: {err}"
                failed.setdefault(c, []).append(_failure(c, msg))
                continue
            if isinstance(result, dict) and result.get("error"):
                if not result.get("dependency"):  # reported by the chunk that failed
                    failed.setdefault(c, []).append(_failure(c, result["error"]))
                continue
            done.setdefault(c, []).append(result)
    return done, failed


@dataclass
class StorePlan:
    """The store side of a run: the chunk tasks to submit per class and what is reused.

    LRP chunks already in the store are submitted too: their task reads the samples again and
    recomputes the chunk only when their hash changed. ``missing`` counts chunks not in the store.
    """

    todo: dict[int, list[int]]
    skipped: dict[int, str]
    chunks_total: int
    reuse: frozenset
    missing: int = 0

    @property
    def chunks_todo(self) -> int:
        return self.missing


@dataclass
class RunRecord:
    """The run's record, written to ``RUN_DIR/run.json`` (schema in docs/outputs.md)."""

    spray_version: str
    run_dir: str
    config_dir: str  # factories are imported from there (export re-opens)
    classes: list[int]
    chunks_total: int
    chunks_computed: int
    chunks_reused: int
    chunks_failed: int
    analyses_reused: int
    skipped: dict[str, str]
    failed: dict[str, list[str]]
    scheduler: str
    workers: int
    lrp_rows: int
    lrp_maps_per_second: float | None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # the SLURM jobs whose workers computed this run's LRP chunks and analyses (on SLURM only)
    slurm_jobs: dict[str, list[str]] = field(default_factory=dict)


def prepare_store(plan: RunPlan) -> StorePlan:
    """Create (or check) the store and its class arrays; list the chunk tasks to submit."""
    cfg = plan.cfg
    OwnedFiles(plan.run_dir).claim_store()
    group = create_or_check_store(plan.run_dir, plan.fingerprints, config_hash(cfg),
                                  sorted(plan.parts))
    mark_run(group, "running")
    todo, skipped, chunks_total, reuse, missing = {}, {}, 0, set(), 0
    for c, idx in sorted(plan.parts.items()):
        if len(idx) < 3:
            skipped[c] = (f"class {c} ({plan.names[c]}) has {len(idx)} sample(s); the analysis "
                          f"needs at least 3")
            continue
        try:
            cg = prepare_class(group, c, plan.names[c], idx, plan.sample_shape, plan.n_outputs,
                               cfg.attribution.chunk_size, cfg.attribution.store_dtype,
                               cfg.attribution.store_channels)
            done = cg["done"][:]
        except SprayError:
            raise
        except Exception as err:  # noqa: BLE001 - codec/JSON errors of a damaged store
            raise damaged_class(plan.run_dir, c, err) from None
        chunks_total += len(done)
        missing += int((~done).sum())
        if cfg.attribution.precomputed:  # copied, not computed from samples: resume by marker
            todo[c] = [i for i, ok in enumerate(done) if not ok]
            previous = cg.attrs.get("analysis") or {}
            if not todo[c] and analysis_current(previous, plan.pipeline):
                reuse.add(c)
        else:
            todo[c] = list(range(len(done)))
    group.attrs["skipped"] = {str(c): why for c, why in skipped.items()}
    group.attrs["health_limits"] = dict(plan.pipeline["health"])  # read by the gate
    OwnedFiles(plan.run_dir).write_text("config.yaml",
                                        dump_config(cfg, plan.base_dir, plan.pipeline))
    return StorePlan(todo=todo, skipped=skipped, chunks_total=chunks_total,
                     reuse=frozenset(reuse), missing=missing)


def execute(plan: RunPlan, store: StorePlan, client, quiet: bool = False) -> dict:
    """Submit the missing LRP chunks and the class analyses to ``client`` and wait for them.

    Returns the finished and failed task results per stage, the submission time and the
    number of workers.
    """
    n_workers = len(workers_info(client))
    log.info("%d classes, %d/%d LRP chunks to compute (finished ones are checked against their "
             "samples) on %d Dask worker(s); %s", len(store.todo), store.chunks_todo,
             store.chunks_total, n_workers, dashboard_text(client))
    sizes = [len(plan.parts[c]) for c in store.todo if c not in store.reuse]
    if warm_up.wanted(plan.cfg.cluster.warm_up, plan.pipeline, sizes):
        warm_up.start(client, plan.pipeline)
    t_submit = time.time()
    chunk_futures, analysis_futures = _submit(client, plan.cfg, plan.base_dir, plan.run_dir,
                                              plan.pipeline, store.todo, store.reuse)
    every = [f for fs in chunk_futures.values() for f in fs] + list(analysis_futures.values())
    try:
        _show_progress(chunk_futures, analysis_futures, plan.cfg.attribution.chunk_size,
                       plan.cfg.cluster.progress and not quiet)
        lrp_done, lrp_failed = _collect(chunk_futures)
        analysis_done, analysis_failed = _collect(analysis_futures)
        warm_up.log_outcomes(client)
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(every)  # do not leave our tasks running on a shared cluster
        raise
    return {"lrp_done": lrp_done, "lrp_failed": lrp_failed, "analysis_done": analysis_done,
            "analysis_failed": analysis_failed, "t_submit": t_submit, "workers": n_workers}


def _record(plan: RunPlan, store: StorePlan, results: dict, failures: dict,
            times: dict) -> RunRecord:
    lrp_done = results["lrp_done"]
    computed = [r for v in lrp_done.values() for r in v if not r.get("reused")]
    lrp_rows = sum(int(r.get("rows", 0)) for r in computed)
    t_submit = results["t_submit"]
    lrp_wall = max((r["t_end"] for r in computed if "t_end" in r), default=t_submit) - t_submit
    finished = sum(len(v) for v in lrp_done.values())
    task_sum = {stage: round(sum(r["seconds"] for v in results[key].values() for r in v), 3)
                for stage, key in (("lrp_task_sum", "lrp_done"),
                                   ("analysis_task_sum", "analysis_done"))}
    return RunRecord(
        spray_version=__version__, run_dir=str(plan.run_dir), config_dir=str(plan.base_dir),
        classes=sorted(plan.parts), chunks_total=store.chunks_total,
        chunks_computed=len(computed),
        chunks_reused=(store.chunks_total - sum(len(v) for v in store.todo.values())
                       + (finished - len(computed))),
        chunks_failed=sum(len(v) for v in results["lrp_failed"].values()),
        analyses_reused=len(store.reuse) + sum(bool(r.get("reused")) for v in
                                               results["analysis_done"].values() for r in v),
        skipped={str(c): why for c, why in store.skipped.items()},
        failed={str(c): msgs for c, msgs in failures.items()},
        scheduler=plan.scheduler or plan.cfg.cluster.scheduler, workers=results["workers"],
        lrp_rows=lrp_rows,
        lrp_maps_per_second=round(lrp_rows / lrp_wall, 3) if lrp_rows and lrp_wall > 0 else None,
        stage_seconds={"setup": round(times["graph"] - times["start"], 3),
                       "lrp_wall": round(lrp_wall, 3),
                       "graph_wall": round(times["report"] - times["graph"], 3),
                       **task_sum,
                       "report": round(times["end"] - times["report"], 3),
                       "total": round(times["end"] - times["start"], 3)},
        slurm_jobs=_slurm_jobs(results))


def _slurm_jobs(results: dict) -> dict[str, list[str]]:
    """The SLURM job ids the finished LRP and analysis tasks ran in, per stage."""
    jobs = {stage: sorted({str(r["slurm_job"]) for v in results[key].values() for r in v
                           if r.get("slurm_job")}, key=lambda j: (len(j), j))
            for stage, key in (("lrp", "lrp_done"), ("analysis", "analysis_done"))}
    return {stage: ids for stage, ids in jobs.items() if ids}


def _finish_store(run_dir: Path, failures: dict, incomplete: bool) -> None:
    """Record failures, the hash of every sample the maps come from and the run's end state."""
    group = open_store(run_dir, mode="a")
    group.attrs["failed"] = {str(c): msgs[0] for c, msgs in failures.items()}
    classes = group["classes"] if "classes" in group else {}  # noqa: SIM401 - a Zarr group
    samples = hashlib.sha256()
    for key in sorted(classes, key=int):
        samples.update(f"{key}:{class_samples_hash(classes[key])};".encode())
    group.attrs["fingerprints"] = {**dict(group.attrs.get("fingerprints", {})),
                                   "samples": samples.hexdigest()[:16]}
    group.attrs["model_skill"] = model_skill(classes, group.attrs.get("classes"))
    mark_run(group, "failed" if failures or incomplete else "finished")


def run(cfg: RunConfig, base_dir: Path, output: str | None = None, scheduler: str | None = None,
        overwrite: bool = False, quiet: bool = False, raise_failures: bool = True) -> dict:
    """Run the whole pipeline for a validated config; returns the run record (``run.json``).

    Classes that fail are recorded in the store, the summary and ``run.json``; with
    ``raise_failures`` (the default) the run then raises an
    :class:`~spray.errors.IncompleteRunError` naming them.
    """
    times = {"start": time.perf_counter()}
    plan = plan_run(cfg, base_dir, output, scheduler, quiet)
    run_dir = plan.run_dir
    with interrupt_on_signals(), RunLock(run_dir):
        if overwrite:
            _clear_run_dir(run_dir)
        store = prepare_store(plan)
        times["graph"] = time.perf_counter()
        with dask_client(cfg.cluster.model_dump(), scheduler) as client:
            results = execute(plan, store, client, quiet)
        times["report"] = time.perf_counter()
        failures = {c: list(dict.fromkeys(results["lrp_failed"].get(c, [])
                                          + results["analysis_failed"].get(c, [])))
                    for c in sorted(set(results["lrp_failed"]) | set(results["analysis_failed"]))}
        _finish_store(run_dir, failures, incomplete=False)
        from spray.report.html import write_report

        OwnedFiles(run_dir).claim_folder("report")
        write_report(run_dir)
        times["end"] = time.perf_counter()
        info = asdict(_record(plan, store, results, failures, times))
        OwnedFiles(run_dir).write_text("run.json", json.dumps(info, indent=2))
    if failures and raise_failures:
        raise IncompleteRunError(failure_message(info))
    return info


def failure_message(info: dict) -> str:
    """One paragraph naming the classes of a run that failed, and what to do."""
    lines = "; ".join(msgs[0] for msgs in info["failed"].values())
    return (f"{len(info['failed'])} class(es) failed, the others finished and are in "
            f"{info['run_dir']}: {lines}. Fix the cause and rerun: finished chunks are reused.")

