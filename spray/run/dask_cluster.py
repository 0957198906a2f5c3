"""The Dask cluster of a run: embedded local, threaded, an existing scheduler, or SLURM.

Embedded schedulers, workers and dashboards bind to ``cluster.host`` (127.0.0.1 unless the config
says otherwise); ``cluster.dashboard: false`` starts none. SLURM workers are dask-jobqueue jobs.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from spray.config.cluster import check_scheduler
from spray.errors import ConfigError
from spray.run.signals import raise_pending, signals_deferred


def _walltime_seconds(walltime: str) -> int:
    """Seconds of a SLURM time limit ``[D-]HH:MM:SS`` / ``MM:SS`` / ``MM`` (as validated)."""
    days, _, clock = walltime.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:  # minutes
        parts = [0, parts[0], 0]
    elif len(parts) == 2:  # minutes:seconds
        parts = [0, *parts]
    hours, minutes, seconds = parts
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def worker_lifetime(slurm_cfg: dict) -> int | None:
    """Seconds a worker runs before it retires gracefully: ``lifetime_margin`` before the job's
    walltime (at least half the walltime), or ``None`` if ``worker_extra_args`` sets one."""
    from dask.utils import parse_timedelta

    if any(a.startswith("--lifetime") and not a.startswith("--lifetime-")
           for a in slurm_cfg["worker_extra_args"]):
        return None
    walltime = _walltime_seconds(slurm_cfg["walltime"])
    margin = parse_timedelta(slurm_cfg["lifetime_margin"], default="s")
    return max(walltime - int(margin), walltime // 2, 1)


def slurm_jobs(cluster_cfg: dict) -> tuple[int, int]:
    """(minimum, maximum) worker jobs: ``slurm.minimum_jobs`` / ``slurm.maximum_jobs``, by
    default enough jobs for ``n_workers`` workers of ``slurm.processes`` each."""
    s = cluster_cfg["slurm"]
    needed = -(-int(cluster_cfg["n_workers"]) // int(s["processes"]))
    low = needed if s["minimum_jobs"] is None else int(s["minimum_jobs"])
    high = max(low, needed) if s["maximum_jobs"] is None else int(s["maximum_jobs"])
    return low, high


def slurm_cluster_kwargs(cluster_cfg: dict) -> dict:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for a ``cluster`` config section."""
    s = cluster_cfg["slurm"]
    extra = list(s["worker_extra_args"])
    lifetime = worker_lifetime(s)
    if lifetime is not None:  # retire before SLURM ends the job; adapt() starts a new one
        extra += ["--lifetime", f"{lifetime}s"]
    if cluster_cfg.get("lrp_resources"):
        extra += ["--resources", ",".join(f"{k}={v:g}" for k, v in
                                          cluster_cfg["lrp_resources"].items())]
    # SLURM gets `slurm.cores` CPUs per job; Dask runs `threads_per_worker` threads in each of
    # the job's `processes` workers, and torch uses the remaining cores inside each task.
    kwargs = {
        "queue": s["queue"], "account": s["account"], "walltime": s["walltime"],
        "cores": int(cluster_cfg["threads_per_worker"]) * int(s["processes"]),
        "job_cpu": s["cores"], "processes": s["processes"], "memory": s["memory"],
        "job_name": s["job_name"], "job_extra_directives": list(s["job_extra_directives"]),
        "job_script_prologue": list(s["job_script_prologue"]), "worker_extra_args": extra,
        "local_directory": s["local_directory"], "log_directory": s["log_directory"],
        "interface": s["interface"], "python": s["python"] or sys.executable,
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def make_slurm_cluster(cluster_cfg: dict):
    """A ``dask_jobqueue.SLURMCluster`` (the ``slurm`` extra) of worker jobs.

    Adaptive by default: between ``slurm_jobs(cluster_cfg)`` jobs, so a job that is cancelled,
    preempted, fails or reaches its walltime is replaced (``scale`` would not resubmit it).
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ConfigError("key 'cluster.scheduler': 'slurm' needs dask-jobqueue; install it with "
                          "pip install 'spray-xai[slurm]'") from None
    import shutil as _shutil

    if _shutil.which("sbatch") is None:
        raise ConfigError("key 'cluster.scheduler': 'slurm' submits worker jobs with sbatch, which "
                          "is not on this machine's PATH; run spray on a SLURM login node or in "
                          "a job (see workflows/slurm-run.sbatch)")
    try:
        cluster = SLURMCluster(**slurm_cluster_kwargs(cluster_cfg))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"key 'cluster.slurm': {err}") from None
    import logging

    log = logging.getLogger(__name__)
    low, high = slurm_jobs(cluster_cfg)
    if cluster_cfg["slurm"]["adapt"]:
        cluster.adapt(minimum_jobs=low, maximum_jobs=high)
        log.info("SLURM worker jobs: adaptive, %d to %d jobs", low, high)
    else:
        cluster.scale(jobs=high)
        log.info("SLURM worker jobs: %d (not replaced when they end)", high)
    return cluster


def _wait_for_workers(client, address: str, timeout: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError) as err:
        raise ConfigError(f"key 'cluster.scheduler': the Dask scheduler at {address} has no "
                          f"worker after {timeout:g} s (cluster.worker_timeout): "
                          f"{type(err).__name__}") from None


@contextlib.contextmanager
def dask_client(cluster_cfg: dict, scheduler: str | None = None):
    """Yield a ``distributed.Client`` for the configured cluster, closing what we started.

    ``local``: an embedded ``LocalCluster`` of ``n_workers`` processes; ``threads``: one process
    with ``n_workers`` threads; ``slurm``: a dask-jobqueue ``SLURMCluster``; an address
    (``tcp://HOST:PORT``): a running scheduler (its workers must see the run folder, the data
    and the config folder at the same paths).
    """
    from distributed import Client, LocalCluster

    address = scheduler or cluster_cfg["scheduler"]
    try:
        check_scheduler(address)
    except ValueError as err:
        raise ConfigError(f"--scheduler / key 'cluster.scheduler': {err}") from None
    if "://" in address:
        try:
            client = Client(address, timeout=f"{cluster_cfg['connect_timeout']}s")
        except (OSError, TimeoutError) as err:
            raise ConfigError(f"key 'cluster.scheduler': cannot reach the Dask scheduler at "
                              f"{address}: {err}") from None
        with client:
            _wait_for_workers(client, address, cluster_cfg["worker_timeout"])
            yield client
        return
    if address == "slurm":
        with make_slurm_cluster(cluster_cfg) as cluster, Client(cluster) as client:
            _wait_for_workers(client, "slurm", cluster_cfg["worker_timeout"])
            yield client
        return
    with signals_deferred():
        cluster = LocalCluster(**local_cluster_kwargs(cluster_cfg, processes=address == "local"))
    cluster.spray_dashboard = bool(cluster_cfg.get("dashboard", True))
    with quiet_shutdown(), cluster:
        raise_pending()
        with Client(cluster) as client:
            yield client


def local_cluster_kwargs(cluster_cfg: dict, processes: bool) -> dict:
    """Keyword arguments of the embedded ``distributed.LocalCluster``.

    The scheduler, the workers and every HTTP endpoint (dashboard, worker pages) listen on
    ``cluster.host`` (loopback by default) at ports the system chooses, so concurrent runs never
    collide and a shared machine does not expose the run; ``cluster.dashboard: false`` starts
    no dashboard. The threaded cluster talks in-process and has no scheduler port at all.
    """
    host = cluster_cfg.get("host") or "127.0.0.1"
    http = f"{host}:0"
    return {
        "n_workers": cluster_cfg["n_workers"] if processes else 1,
        "threads_per_worker": (cluster_cfg["threads_per_worker"] if processes
                               else cluster_cfg["n_workers"]),
        "processes": processes, "memory_limit": cluster_cfg["memory_limit"],
        "host": host if processes else None,  # in-process transport: no host to bind
        "dashboard_address": http,
        "scheduler_kwargs": {"dashboard": bool(cluster_cfg.get("dashboard", True))},
        # in-process workers would otherwise serve their HTTP pages on every interface
        "worker_dashboard_address": None if processes else http,
        "resources": cluster_cfg.get("lrp_resources") or None,
        # worker processes log on their own: the same shutdown filter is installed there
        **({"preload": ["spray.run.worker_logging"]} if processes else {}),
    }


class _DropShutdownNoise(logging.Filter):
    """Drop the messages ``distributed`` logs while a cluster we started is closed: the nanny
    killing a worker process that is still tearing down, and tasks cancelled on Ctrl-C.

    ``sync.<locals>.cancel`` is the callback ``distributed.utils.sync`` schedules on Ctrl-C to
    cancel the call it waits for; when the interrupt arrives before that call has started, the
    callback fails with a ``NameError`` (distributed 2026.8) that says nothing about the run.
    """

    NOISE = ("still alive after", "CancelledError", "Cancelled", "cancelled",
             "Failed to communicate with scheduler during heartbeat", "sync.<locals>.cancel")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            text += record.exc_info[0].__name__
        return not any(word in text for word in self.NOISE)


#: the loggers of ``distributed`` (and what it runs on) that report a cluster's shutdown
NOISY_LOGGERS = ("distributed.nanny", "distributed.worker", "distributed.worker.state_machine",
                 "distributed.scheduler", "distributed.client", "distributed.core",
                 "distributed.process", "distributed.deploy.spec", "tornado.application",
                 "asyncio")


def add_shutdown_filter() -> _DropShutdownNoise:
    """Install the shutdown-noise filter on :data:`NOISY_LOGGERS`; returns it."""
    noise = _DropShutdownNoise()
    for name in NOISY_LOGGERS:
        logging.getLogger(name).addFilter(noise)
    return noise


@contextlib.contextmanager
def quiet_shutdown():
    """Filter shutdown noise from ``distributed``'s loggers while an embedded cluster runs."""
    noise = add_shutdown_filter()
    try:
        yield
    finally:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).removeFilter(noise)


def dashboard_text(client) -> str:
    """Where the Dask dashboard is, as a log line (``no dashboard`` when there is none)."""
    import importlib.util

    cluster = getattr(client, "cluster", None)
    if cluster is not None and not getattr(cluster, "spray_dashboard", True):
        return "no dashboard (cluster.dashboard: false)"
    if importlib.util.find_spec("bokeh") is None:
        return "no dashboard (pip install bokeh for the Dask dashboard)"
    server = getattr(getattr(cluster, "scheduler", None), "http_server", None)
    if getattr(server, "address", None):  # embedded: the address it is bound to
        return f"Dask dashboard: http://{server.address}:{server.port}/status"
    return f"Dask dashboard: {client.dashboard_link}"


def workers_info(client) -> dict:
    """All workers the scheduler knows (newer ``distributed`` lists only a few by default)."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # older distributed: no n_workers argument, lists all
        return client.scheduler_info()["workers"]


def runtime_settings(client, cluster_cfg: dict) -> dict:
    """What each task needs to know about its worker: torch threads, device, host threads."""
    from urllib.parse import urlsplit

    host_threads: dict[str, int] = {}
    for addr, info in workers_info(client).items():
        host = urlsplit(addr).hostname
        host_threads[host] = host_threads.get(host, 0) + int(info.get("nthreads", 1))
    return {"torch_threads": cluster_cfg["torch_threads"], "device": cluster_cfg["device"],
            "host_threads": host_threads}
