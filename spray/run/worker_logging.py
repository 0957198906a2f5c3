"""Preloaded into the worker processes of an embedded cluster (``LocalCluster(preload=…)``).

A worker process logs on its own, so the shutdown filter of :mod:`spray.run.dask_cluster`
is installed there too: a Ctrl-C or SIGTERM, which reaches the workers as well, then ends
with spray's one clean message instead of heartbeat tracebacks and cancelled-task warnings.
"""

from __future__ import annotations


def dask_setup(worker) -> None:
    """Install the filter when the worker starts (Dask calls this for a preload module)."""
    from spray.run.dask_cluster import add_shutdown_filter

    add_shutdown_filter()
