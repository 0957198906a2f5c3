"""The Dask cluster of a run: embedded local, threaded, an existing scheduler, or SLURM.

Local schedulers and workers bind to 127.0.0.1; SLURM workers are dask-jobqueue jobs.
"""

from __future__ import annotations

import contextlib
import sys

from spray.config.run_config import check_scheduler
from spray.errors import ConfigError
from spray.run.signals import raise_pending, signals_deferred


def slurm_cluster_kwargs(cluster_cfg: dict) -> dict:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for a ``cluster`` config section."""
    s = cluster_cfg["slurm"]
    extra = list(s["worker_extra_args"])
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
    """A ``dask_jobqueue.SLURMCluster`` (the ``slurm`` extra) scaled to ``n_workers`` workers."""
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
    n = int(cluster_cfg["n_workers"])
    if cluster_cfg["slurm"]["adapt"]:
        cluster.adapt(minimum=1, maximum=n)
    else:
        cluster.scale(n=n)
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
    processes = address == "local"
    with signals_deferred():
        cluster = LocalCluster(
            n_workers=cluster_cfg["n_workers"] if processes else 1,
            threads_per_worker=(cluster_cfg["threads_per_worker"] if processes
                                else cluster_cfg["n_workers"]),
            processes=processes, memory_limit=cluster_cfg["memory_limit"],
            dashboard_address=":0", host="127.0.0.1" if processes else None,  # inproc: no host
            resources=cluster_cfg.get("lrp_resources") or None,
        )
    with cluster:
        raise_pending()
        with Client(cluster) as client:
            yield client


def dashboard_text(client) -> str:
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        return "no dashboard (pip install bokeh for the Dask dashboard)"
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
