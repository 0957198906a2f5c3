"""The kNN warm-up of the Dask workers (``cluster.warm_up``), on real process workers."""

from __future__ import annotations

import pytest
from scale_support import scale_config, wait_until

from spray.run.dask_cluster import dask_client
from spray.run.warm_up import TOPIC, KnnWarmUp, wanted

pytestmark = pytest.mark.distributed

CLUSTER = {"scheduler": "local", "n_workers": 1, "threads_per_worker": 1, "progress": False,
           "dashboard": False}


def _cluster_cfg(**extra) -> dict:
    from spray.config.cluster import ClusterConfig

    return ClusterConfig(**{**CLUSTER, **extra}).model_dump()


def _events(client) -> list[dict]:
    return [event for _, event in client.get_events(TOPIC)]


def test_warm_up_is_wanted_when_a_class_uses_the_large_class_search():
    pipeline = {"affinity": {"approximate_above": 50000}}
    assert wanted("auto", pipeline, [180, 50001])
    assert not wanted("auto", pipeline, [180, 50000])
    assert not wanted("auto", pipeline, [])
    assert wanted(True, pipeline, [10]) and not wanted(False, pipeline, [10**6])


def test_a_run_registers_the_warm_up_with_its_workers(small_problem, tmp_path):
    from spray.config.run_config import load_config
    from spray.run.execute import execute, prepare_store
    from spray.run.plan import plan_run

    # classes of ~180 samples: only warm_up: true (not auto) warms up
    cfg, base = load_config(scale_config(small_problem, **CLUSTER, warm_up=True))
    cfg.pipeline["affinity"] = {"search": "exact"}  # the warm-up only loads cached kernels
    plan = plan_run(cfg, base, str(tmp_path / "run"), quiet=True)
    store = prepare_store(plan)
    with dask_client(cfg.cluster.model_dump()) as client:
        execute(plan, store, client, quiet=True)
        assert TOPIC in client.cluster.scheduler.worker_plugins
        event = wait_until(lambda: _events(client), timeout=120, what="the warm-up event")
        assert event[0]["state"] == "done" and "blocked_seconds" in event[0]
        assert "pynndescent_seconds" not in event[0]  # search: exact never uses it


def test_a_failed_warm_up_is_logged_and_the_worker_keeps_working(capfd):
    with dask_client(_cluster_cfg()) as client:
        before = set(client.scheduler_info()["workers"])
        client.register_plugin(KnnWarmUp({"n_jobs": "all of them"}))  # not a valid section
        event = wait_until(lambda: _events(client), timeout=60, what="the warm-up event")[0]
        assert event["state"] == "failed" and "n_jobs" in event["error"]
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        assert set(client.scheduler_info()["workers"]) == before  # not restarted
    assert "kNN warm-up of worker" in capfd.readouterr().err


def _compiled_kernels() -> dict[str, int]:
    """In a worker: how many specializations the kNN kernels have, before and after a search
    of new random features through the large-class path."""
    import numpy as np
    from pynndescent import pynndescent_

    from spray.analysis import _knn_kernels
    from spray.analysis.knn import knn_neighbors, warm_up

    def count():
        return {"nn_descent": len(pynndescent_.nn_descent.signatures),
                "scan_pair": (len(_knn_kernels.scan_pair.signatures)
                              + len(_knn_kernels.scan_pair_int.signatures)),
                "pair_distances": len(_knn_kernels.pair_distances.signatures)}

    before = count()
    X = np.random.default_rng(1).standard_normal((3000, 40)).astype(np.float32)
    found = [knn_neighbors(X, 8, {"approximate_above": 100, "search": search})[0]
             for search in ("approximate", "exact")]
    warm_up()  # again, in this thread: the neighbours found afterwards must not change
    again = knn_neighbors(X, 8, {"approximate_above": 100, "search": "approximate"})[0]
    return {**{f"{k}_before": v for k, v in before.items()}, **count(),
            "same_neighbours": bool(np.array_equal(found[0], again))}


@pytest.mark.slow
def test_workers_compile_the_knn_kernels_of_the_real_search_at_start():
    # pynndescent's kernels take ~30 s of CPU to compile: the one slow part of the warm-up
    from spray.run import warm_up

    with dask_client(_cluster_cfg()) as client:
        warm_up.start(client, {"affinity": {}})
        event = wait_until(lambda: _events(client), timeout=600, interval=0.5,
                           what="the warm-up event")[0]
        assert event["state"] == "done", event
        counts = next(iter(client.run(_compiled_kernels).values()))
    assert counts["nn_descent_before"] >= 1 and counts["pair_distances_before"] >= 1
    # both product kinds' scans (the pinned torch has int8 products): the kind is timed per
    # feature width, so a class may take the kind the warm-up's timing did not pick
    assert counts["scan_pair_before"] >= 2
    # the searches of the analysis found every kernel compiled for their argument types
    compiled_again = {k: (counts[f"{k}_before"], counts[k])
                      for k in ("nn_descent", "scan_pair", "pair_distances")
                      if counts[k] != counts[f"{k}_before"]}
    assert not compiled_again, compiled_again
    assert counts["same_neighbours"]


def test_the_warm_up_leaves_numba_s_thread_count_alone():
    # pynndescent's neighbours depend on it: the blocked search's warm-up ran on one thread
    # and left it at 1, so a new worker's first class found other neighbours than a warm one
    import numba

    from spray.analysis.knn import warm_up

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba runs one thread here")
    numba.set_num_threads(2)
    assert set(warm_up({"search": "exact"})) == {"blocked"}
    assert numba.get_num_threads() == 2


def test_a_search_that_arrives_during_the_warm_up_waits_for_it():
    # the first class must not compile the kernels a second time next to the warm-up
    import threading

    import numpy as np

    from spray.analysis import knn

    X = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    found = []
    with knn._WARMING:  # a warm-up is running
        search = threading.Thread(target=lambda: found.append(
            knn.large_knn(X, 5, {"search": "exact", "n_jobs": 1})))
        search.start()
        search.join(timeout=1.0)
        assert search.is_alive() and not found
    search.join(timeout=120)
    assert found and found[0][2] == "exact-blocked"
