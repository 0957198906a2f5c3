"""The ``cluster`` section of a run config: where the Dask graph runs, and with how many workers.

``local`` (an embedded ``LocalCluster``), ``threads`` (one process), ``slurm`` (worker jobs of
dask-jobqueue) or the address of a running scheduler; ``auto`` worker counts are chosen from
the machine (:func:`auto_workers`).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from spray.config.base import _Strict

logger = logging.getLogger(__name__)

#: smallest ``cluster.memory_limit`` accepted (below, workers are restarted over and over)
MIN_WORKER_MEMORY = 256 * 2**20


class SlurmConfig(_Strict):
    """SLURM jobs of Dask workers (passed to ``dask_jobqueue.SLURMCluster``).

    Each job asks for ``cores`` cores and ``memory`` and runs ``processes`` workers.
    ``job_extra_directives`` become extra ``#SBATCH`` lines (e.g. ``--gres=gpu:1``),
    ``job_script_prologue`` shell lines run before the worker starts (e.g.
    ``source /path/venv/bin/activate``).

    The cluster is adaptive (``adapt``): it keeps between ``minimum_jobs`` and ``maximum_jobs``
    jobs (default for both: enough jobs for ``cluster.n_workers`` workers), so a job that dies,
    is cancelled, preempted or reaches its walltime is replaced by a new one. Workers retire
    gracefully ``lifetime_margin`` before the walltime (``--lifetime``, unless
    ``worker_extra_args`` sets one), so their finished results move to the other workers before
    SLURM ends the job. ``adapt: false`` submits a fixed set of jobs that are not replaced.
    """

    queue: str | None = None
    account: str | None = None
    walltime: str = "01:00:00"
    cores: int = Field(default=4, gt=0)
    processes: int = Field(default=1, gt=0)
    memory: str = "16GB"
    job_name: str = "spray-worker"
    job_extra_directives: list[str] = Field(default_factory=list)
    job_script_prologue: list[str] = Field(default_factory=list)
    worker_extra_args: list[str] = Field(default_factory=list)
    local_directory: str | None = None
    log_directory: str | None = None
    interface: str | None = None
    python: str | None = None
    adapt: bool = True
    minimum_jobs: int | None = Field(default=None, ge=0)
    maximum_jobs: int | None = Field(default=None, gt=0)
    lifetime_margin: str = "5m"

    @field_validator("walltime")
    @classmethod
    def _walltime_form(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", value):
            raise ValueError(f"must look like 'HH:MM:SS' or 'D-HH:MM:SS', got {value!r}")
        return value

    @field_validator("lifetime_margin")
    @classmethod
    def _margin_form(cls, value: str) -> str:
        from dask.utils import parse_timedelta

        try:
            seconds = parse_timedelta(value, default="s")
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"must be a duration like '5m' or '30s', got {value!r}") from None
        if seconds is None or seconds < 0:
            raise ValueError(f"must be a duration >= 0 like '5m' or '30s', got {value!r}")
        return value

    @model_validator(mode="after")
    def _jobs_order(self):
        if (self.minimum_jobs is not None and self.maximum_jobs is not None
                and self.minimum_jobs > self.maximum_jobs):
            raise ValueError(f"minimum_jobs ({self.minimum_jobs}) is larger than maximum_jobs "
                             f"({self.maximum_jobs})")
        return self


class ClusterConfig(_Strict):
    """Where the Dask graph runs.

    ``scheduler``: ``local`` (an embedded ``distributed.LocalCluster`` of ``n_workers``
    processes), ``threads`` (one process, ``n_workers`` threads), ``slurm`` (workers as SLURM jobs
    through dask-jobqueue, settings in ``slurm``) or the address of a running scheduler
    (``tcp://HOST:PORT``). ``torch_threads`` is the number of intra-op threads a task may use
    (``auto``: the worker host's cores divided among the Dask threads on that host).
    ``lrp_resources`` annotates LRP tasks (e.g. ``{GPU: 1}``) so only workers started with
    ``--resources GPU=1`` run them; ``device`` is where those tasks put the model.
    ``host`` is the interface an embedded scheduler, its workers and the Dask dashboard listen
    on (loopback by default, so a shared machine does not expose the run); ``dashboard: false``
    starts no dashboard at all (CI).
    ``n_workers`` and ``threads_per_worker`` default to ``auto``, chosen from the machine by
    :func:`auto_workers` and logged.
    ``warm_up``: each worker compiles the large-class kNN kernels in a background thread when
    it starts (pynndescent's take ~30 s of one core in every new process), so its first class
    above ``affinity.approximate_above`` samples does not; ``auto`` when the run has such a
    class (:mod:`spray.run.warm_up`).
    """

    scheduler: str = "local"
    n_workers: int | Literal["auto"] = "auto"
    threads_per_worker: int | Literal["auto"] = "auto"
    memory_limit: str = "auto"
    progress: bool = True
    host: str = "127.0.0.1"
    dashboard: bool = True
    torch_threads: int | Literal["auto"] = "auto"
    lrp_resources: dict[str, float] | None = None
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    retries: int = Field(default=2, ge=0)
    connect_timeout: float = Field(default=20.0, gt=0)
    worker_timeout: float = Field(default=600.0, gt=0)
    warm_up: bool | Literal["auto"] = "auto"
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @field_validator("scheduler")
    @classmethod
    def _scheduler_form(cls, value: str) -> str:
        return check_scheduler(value)

    @field_validator("memory_limit")
    @classmethod
    def _memory_form(cls, value: str) -> str:
        if value == "auto":
            return value
        from dask.utils import parse_bytes

        try:
            size = parse_bytes(value)
        except (ValueError, TypeError):
            raise ValueError(f"must be 'auto' or a size like '4GB', got {value!r}") from None
        if size < MIN_WORKER_MEMORY:
            raise ValueError(f"{value!r} is too small for a Dask worker holding a model (at "
                             f"least {MIN_WORKER_MEMORY // 2**20} MiB)")
        return value

    @field_validator("torch_threads", "n_workers", "threads_per_worker")
    @classmethod
    def _threads_positive(cls, value):
        if value != "auto" and value < 1:
            raise ValueError(f"must be a positive integer or 'auto', got {value!r}")
        return value

    @model_validator(mode="after")
    def _resolve_auto_workers(self):
        if "auto" in (self.n_workers, self.threads_per_worker):
            workers, threads, why = auto_workers(self.scheduler, self.slurm.processes)
            chosen = []
            if self.n_workers == "auto":
                self.n_workers = workers
                chosen.append(f"n_workers {workers}")
            if self.threads_per_worker == "auto":
                self.threads_per_worker = threads
                chosen.append(f"threads_per_worker {threads}")
            logger.info("cluster: %s (auto: %s)", ", ".join(chosen), why)
        return self


#: ``cluster.n_workers: auto`` starts one worker process per this many cores (at least one)
CORES_PER_WORKER = 4


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which SLURM and containers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def auto_workers(scheduler: str, slurm_processes: int = 1) -> tuple[int, int, str]:
    """``(n_workers, threads_per_worker, reason)`` for ``auto``.

    ``local`` / ``threads``: one worker per :data:`CORES_PER_WORKER` cores of this machine
    (at least one) with one Dask thread each; a task's torch threads (``torch_threads: auto``)
    then share the cores among the workers. On 2 cores one LRP worker with 2 torch threads was
    1.45× faster than two workers with one each (docs/scale.md). ``slurm``: one job of
    ``slurm.processes`` workers. An existing scheduler (``tcp://…``) brings its own workers.
    """
    if scheduler == "slurm":
        return slurm_processes, 1, f"one SLURM job of slurm.processes = {slurm_processes}"
    if "://" in scheduler:
        return 1, 1, "the scheduler at the address brings its own workers"
    cores = available_cores()
    workers = max(1, cores // CORES_PER_WORKER)
    return workers, 1, (f"{cores} cores available, one worker per {CORES_PER_WORKER} cores "
                        f"(at least one), torch threads share the cores")


SCHEDULER_KINDS = ("local", "threads", "slurm")


def check_scheduler(value: str) -> str:
    """Accept ``local``, ``threads``, ``slurm`` or a scheduler address ``PROTOCOL://HOST:PORT``."""
    if value in SCHEDULER_KINDS:
        return value
    proto, sep, rest = value.partition("://")
    if sep and proto in ("tcp", "tls", "ucx", "inproc", "ws", "wss") and rest:
        return value
    raise ValueError(f"must be 'local', 'threads', 'slurm' or a scheduler address like "
                     f"'tcp://HOST:PORT', got {value!r}")
