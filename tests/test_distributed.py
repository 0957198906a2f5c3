"""A real Dask cluster: `dask scheduler` + two `dask worker` processes on 127.0.0.1.

One worker is killed while LRP chunks run; the run must finish with the results of an
uninterrupted single-process run.
"""

from __future__ import annotations

import pytest
from scale_support import (
    DaskCluster,
    assert_same_results,
    chunks_done,
    reference_run,
    run_info,
    scale_config,
    spray_process,
    stop,
    summary,
    wait_until,
)

pytestmark = pytest.mark.distributed


@pytest.fixture
def dask_cluster(tmp_path):
    # items load slowly on the workers (not in the client), so chunks take a while
    cluster = DaskCluster(tmp_path / "cluster", n_workers=2, env={"SPRAY_TEST_DELAY": "0.02"})
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.mark.slow
def test_killed_worker_is_survived(small_problem, dask_cluster, tmp_path, tmp_path_factory):
    config = scale_config(small_problem)
    out = tmp_path / "on-cluster"
    proc = spray_process("run", config, "--scheduler", dask_cluster.address, "--output", out)
    try:
        finished = wait_until(lambda: chunks_done(out)[0] >= 4 and chunks_done(out),
                              timeout=120, what="4 finished LRP chunks")
        assert finished[0] < finished[1], "the job finished before a worker could be killed"
        dask_cluster.kill_worker(1)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        stop(proc)
    assert proc.returncode == 0, stderr + dask_cluster.logs()
    assert dask_cluster.workers[1].returncode is not None  # really gone
    info = run_info(out)
    assert info["scheduler"] == dask_cluster.address
    # a chunk finished just before its worker died is found done when retried (reused)
    assert info["chunks_computed"] + info["chunks_reused"] == info["chunks_total"]
    assert info["chunks_computed"] >= info["chunks_total"] - 1 and not info["failed"]
    reference = reference_run(small_problem, tmp_path_factory.getbasetemp())
    assert_same_results(out, reference, atol=1e-6)
    assert summary(out)["flagged"] == summary(reference)["flagged"]


def test_unreachable_scheduler_is_a_clear_error(small_problem, tmp_path):
    from conftest import run_cli
    from scale_support import free_port

    port = free_port()
    config = scale_config(small_problem, connect_timeout=2)
    proc = run_cli("run", config, "--scheduler", f"tcp://127.0.0.1:{port}",
                   "--output", tmp_path / "out", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach the Dask scheduler" in proc.stderr
    assert "Traceback" not in proc.stderr


class _RecordingClient:
    """Stands in for a distributed.Client: records what would be submitted."""

    def __init__(self):
        self.calls = []

    def submit(self, fn, *args, **kwargs):
        self.calls.append((fn.__name__, args, kwargs))
        return f"future-{len(self.calls)}"

    def scheduler_info(self, n_workers=5):
        return {"workers": {"tcp://10.0.0.5:4001": {"nthreads": 2},
                            "tcp://10.0.0.5:4002": {"nthreads": 2},
                            "tcp://10.0.0.6:4001": {"nthreads": 8}}}


def test_lrp_tasks_carry_the_gpu_annotation_and_worker_settings(small_problem):
    from spray.config.run_config import load_config
    from spray.run.execute import _submit
    from spray.run.tasks import torch_threads_for

    cfg, base = load_config(scale_config(small_problem, lrp_resources={"GPU": 1},
                                         device="cuda", retries=3))
    client = _RecordingClient()
    plan = {1: [0, 2], 2: [1]}
    chunks, analyses = _submit(client, cfg, base, base / "runs" / "x", {"p": 1}, plan,
                               reuse=frozenset({2}))
    lrp = [c for c in client.calls if c[0] == "lrp_chunk"]
    assert [(args[1], args[2]) for _, args, _ in lrp] == [(1, 0), (1, 2), (2, 1)]
    for _, args, kwargs in lrp:
        assert kwargs["resources"] == {"GPU": 1} and kwargs["retries"] == 3
        assert kwargs["priority"] > 0  # maps before analyses
        data_cfg, runtime = args[3], args[7]
        assert data_cfg["base_dir"] == str(base)  # workers import the factory from there
        assert runtime["device"] == "cuda"
        assert runtime["host_threads"] == {"10.0.0.5": 4, "10.0.0.6": 8}
    assert [c[0] for c in client.calls].count("analyze_class") == 1  # class 2 is reused
    assert "resources" not in next(c for c in client.calls if c[0] == "analyze_class")[2]
    assert list(analyses) == [1] and list(chunks) == [1, 2]
    assert torch_threads_for({"torch_threads": 3}) == 3
    assert torch_threads_for(2) == 2
