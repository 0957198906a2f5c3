"""``spray validate CONFIG``: everything a run would check and do, without writing anything.

The config is loaded, the data opened, the model built and probed, one batch of relevance maps
computed and timed, the preset validated; the result says what a run would do (classes,
samples, chunks, workers) and estimates its LRP time and its store size. Nothing is written,
no Dask cluster is started.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spray.config.run_config import RunConfig
from spray.run.plan import RunPlan, plan_run


@dataclass
class Validation:
    """What a run of a config would do, as measured by :func:`validate_run`."""

    run_dir: str
    classes: dict[int, dict]
    skipped: list[int]
    samples: int
    chunks: int
    workers: int
    threads_per_worker: int
    maps_per_second: float | None
    lrp_seconds_estimate: float | None
    store_bytes_estimate: int
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The human-readable report, one line each."""
        out = [f"run folder {self.run_dir} (nothing was written)",
               f"{len(self.classes)} classes to analyse, {self.samples} samples, "
               f"{self.chunks} LRP chunks on {self.workers} worker(s) × "
               f"{self.threads_per_worker} thread(s)"]
        if self.skipped:
            out.append(f"skipped (fewer than 3 samples): classes {self.skipped}")
        for c, info in sorted(self.classes.items()):
            out.append(f"  class {c} ({info['name']}): {info['samples']} samples, "
                       f"{info['chunks']} chunk(s)")
        if self.maps_per_second:
            out.append(f"LRP: {self.maps_per_second:.1f} maps/s measured on one batch in this "
                       f"process; about {_duration(self.lrp_seconds_estimate)} for the run")
        out.append(f"store: about {self.store_bytes_estimate / 2**20:.1f} MiB of relevance maps")
        return out + self.notes


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _time_lrp(plan: RunPlan, model) -> float | None:
    """Maps per second of one batch of the largest class (after one warm-up sample)."""
    from spray import lrp

    cfg = plan.cfg
    if model is None or not plan.parts:
        return None
    c = max(plan.parts, key=lambda k: len(plan.parts[k]))
    rows = plan.parts[c][:cfg.attribution.batch_size]
    if len(rows) == 0:
        return None
    x = torch.as_tensor(plan.source.load(np.asarray(rows)))
    target = cfg.attribution.target
    targets = torch.full((len(rows),), target if isinstance(target, int) else c, dtype=torch.long)
    params = dict(composite=cfg.attribution.composite, **cfg.attribution.params)
    lrp.attribute(model, x[:1], targets[:1], **params)  # weight preparation, tracing
    start = time.perf_counter()
    lrp.attribute(model, x, targets, **params)
    return len(rows) / max(time.perf_counter() - start, 1e-9)


def validate_run(cfg: RunConfig, base_dir: Path, output: str | None = None) -> Validation:
    """Check everything a run of ``cfg`` needs and estimate its cost; write nothing."""
    from spray.data.models import load_model

    plan = plan_run(cfg, base_dir, output)
    size = cfg.attribution.chunk_size
    analysed = {c: idx for c, idx in plan.parts.items() if len(idx) >= 3}
    classes = {c: {"name": plan.names[c], "samples": len(idx), "chunks": -(-len(idx) // size)}
               for c, idx in analysed.items()}
    samples = sum(len(idx) for idx in analysed.values())
    workers, threads = cfg.cluster.n_workers, cfg.cluster.threads_per_worker  # auto resolved
    model = None if cfg.attribution.precomputed else load_model(cfg.model.model_dump(),
                                                                 str(base_dir))
    rate = _time_lrp(plan, model)
    # one worker process per core group: the measured single-process rate scales with workers
    estimate = samples / (rate * int(workers)) if rate else None
    h, w = plan.sample_shape[-2:]
    itemsize = 2 if cfg.attribution.store_dtype == "float16" else 4
    channels = plan.sample_shape[0] if cfg.attribution.store_channels else 0
    store = samples * h * w * itemsize * (1 + channels)
    notes = []
    if Path(plan.run_dir).exists():
        notes.append(f"note: {plan.run_dir} exists; a run resumes there (or refuses files spray "
                     f"did not write)")
    return Validation(run_dir=str(plan.run_dir), classes=classes,
                      skipped=sorted(set(plan.parts) - set(analysed)), samples=samples,
                      chunks=sum(v["chunks"] for v in classes.values()), workers=int(workers),
                      threads_per_worker=int(threads), maps_per_second=rate,
                      lrp_seconds_estimate=estimate, store_bytes_estimate=int(store), notes=notes)
