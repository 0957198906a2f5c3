"""The kNN warm-up of the Dask workers (``cluster.warm_up``).

pynndescent compiles its NN-descent kernels in every new process (~30 s of one core; numba
cannot cache them on disk, see :func:`spray.analysis.knn.warm_up`), so without a warm-up a
worker's first class above ``affinity.approximate_above`` samples pays for it. The run
registers :class:`KnnWarmUp` with its cluster before it submits any task: every worker,
including those that join later (SLURM jobs that replace others), compiles the kernels in a
background thread right after it starts, while it already runs LRP tasks. A class analysis that
reaches the large-class search before the warm-up has finished waits for it (the kernels are
compiled once either way). A failed warm-up is logged and leaves the worker running; its first
large class then compiles the kernels itself.

Each worker reports the outcome as a Dask event of topic :data:`TOPIC` (``state``,
``seconds``, ``error``), which the run logs.
"""

from __future__ import annotations

import logging
import threading
import time

from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger(__name__)

#: the topic of the workers' warm-up events (``client.get_events(TOPIC)``)
TOPIC = "spray-knn-warm-up"


class KnnWarmUp(WorkerPlugin):
    """Compile the large-class kNN kernels in a background thread when a worker starts.

    Parameters
    ----------
    affinity
        the run pipeline's ``affinity`` section (its search and pynndescent settings).
    """

    name = TOPIC

    def __init__(self, affinity: dict):
        self.affinity = dict(affinity)

    def setup(self, worker) -> None:
        """Start the warm-up thread (the worker's event loop must not wait for it)."""
        threading.Thread(target=self.run, args=(worker,), name=TOPIC, daemon=True).start()

    def run(self, worker) -> dict:
        """Warm up, log the outcome and report it as an event; returns the event."""
        from spray.analysis.knn import warm_up

        start = time.perf_counter()
        try:
            parts = warm_up(self.affinity)
        except Exception as err:  # noqa: BLE001 - the worker must keep running
            event = {"state": "failed", "seconds": round(time.perf_counter() - start, 2),
                     "error": f"{type(err).__name__}: {err}"}
            log.warning("kNN warm-up of worker %s failed after %.1f s (%s); its first class "
                        "above affinity.approximate_above compiles the kernels instead",
                        worker.address, event["seconds"], event["error"])
        else:
            event = {"state": "done", "seconds": round(time.perf_counter() - start, 2),
                     **{f"{k}_seconds": round(v, 2) for k, v in parts.items()}}
            log.info("kNN warm-up of worker %s: %s in %.1f s", worker.address,
                     ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()), event["seconds"])
        try:
            worker.log_event(TOPIC, event)
        except Exception as err:  # noqa: BLE001 - a worker closing meanwhile
            log.debug("kNN warm-up event not sent: %s", err)
        return event


def wanted(setting: bool | str, pipeline: dict, class_sizes) -> bool:
    """Whether the run's workers warm up: ``cluster.warm_up`` ``true`` / ``false``, or
    ``auto``: when a class to analyse has more than ``affinity.approximate_above`` samples
    (only those use the compiled kNN search)."""
    if setting != "auto":
        return bool(setting)
    above = int(pipeline["affinity"]["approximate_above"])
    return any(int(n) > above for n in class_sizes)


def start(client, pipeline: dict) -> None:
    """Register :class:`KnnWarmUp` with the cluster of ``client`` (its running workers start
    at once; workers that join later start when they join)."""
    client.register_plugin(KnnWarmUp(pipeline["affinity"]))
    log.debug("kNN warm-up registered with the Dask workers")


def log_outcomes(client) -> list[dict]:
    """Log the warm-ups the workers reported (``client.get_events``); returns the events."""
    try:
        events = [e for _, e in client.get_events(TOPIC)]
    except Exception as err:  # noqa: BLE001 - a scheduler that went away: nothing to add
        log.debug("kNN warm-up events not read: %s", err)
        return []
    done = [e["seconds"] for e in events if e.get("state") == "done"]
    if done:
        log.info("kNN warm-up: %d worker(s), %s s each", len(done),
                 " / ".join(f"{s:.1f}" for s in done))
    return events
