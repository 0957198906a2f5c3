"""Resume, faults and refusals: a killed `spray run` resumes with only the missing chunks; a failing
chunk is reported with its class and rows and the rest is kept; SIGTERM stops a run cleanly; a
second run on the same output, and a store of another model or dataset, are refused (exit 2).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import run_cli
from scale_support import (
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

from spray.config.run_config import load_config
from spray.errors import SprayError, StoreError
from spray.run.execute import run
from spray.store import LOCK_NAME, RunLock


@pytest.fixture(scope="module")
def reference(small_problem, tmp_path_factory):
    return reference_run(small_problem, tmp_path_factory.getbasetemp())


@pytest.mark.slow
def test_killed_run_resumes_with_the_missing_chunks_only(small_problem, reference, tmp_path):
    config = scale_config(small_problem)
    out = tmp_path / "killed"
    proc = spray_process("run", config, "--output", out, env={"SPRAY_TEST_DELAY": "0.02"})
    try:
        wait_until(lambda: chunks_done(out)[0] >= 3, timeout=120, what="3 finished chunks")
        os.killpg(proc.pid, signal.SIGKILL)  # no clean-up at all: the lock file stays behind
        proc.wait(30)
    finally:
        stop(proc)
    finished, total = chunks_done(out)
    assert 3 <= finished < total, (finished, total)
    assert (out / LOCK_NAME).exists()
    assert not (out / "run.json").exists()
    gate = run_cli("check", out, timeout=120)  # the gate never passes a run that did not finish
    assert gate.returncode == 3, (gate.stdout, gate.stderr)
    assert "did not finish" in gate.stderr and "Traceback" not in gate.stderr

    again = run_cli("run", config, "--output", out, "--quiet", timeout=300)
    assert again.returncode == 0, again.stderr
    info = run_info(out)
    assert info["chunks_total"] == total
    assert info["chunks_reused"] == finished
    assert info["chunks_computed"] == total - finished
    assert not (out / LOCK_NAME).exists()
    assert_same_results(out, reference, atol=1e-6)


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_a_concurrent_run_is_refused(small_problem, tmp_path):
    config = scale_config(small_problem)
    out = tmp_path / "busy"
    # the default embedded LocalCluster: worker processes must go away with the run
    first = spray_process("run", config, "--output", out, "--scheduler", "local", "--workers", "2",
                          env={"SPRAY_TEST_DELAY": "0.2"})
    try:
        wait_until(lambda: (out / LOCK_NAME).exists() or first.poll() is not None,
                   timeout=120, what="the first run to take the lock")
        assert first.poll() is None, first.communicate()[1]
        second = run_cli("run", config, "--output", out, timeout=300)
        assert second.returncode == 2, second.stderr
        assert "in use by another spray run" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first run was disturbed by the refused one"
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        stop(first)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not (out / LOCK_NAME).exists(), "the lock must be released on SIGTERM"

    def group_gone():
        try:
            os.killpg(first.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(group_gone, timeout=30, what="the Dask worker processes to exit")


def test_failing_chunk_is_reported_and_finished_chunks_stay(small_problem, reference, tmp_path,
                                                            monkeypatch):
    config = scale_config(small_problem)
    cfg, base = load_config(config)
    y = small_problem["y"]
    rows = np.flatnonzero(y == 2)
    row = 20
    monkeypatch.setenv("SPRAY_TEST_FAIL_INDEX", str(int(rows[row])))
    out = tmp_path / "failing"
    with pytest.raises(SprayError) as err:
        run(cfg, base, output=str(out), quiet=True)
    message = str(err.value)
    assert f"class 2, rows 16..31 (dataset indices {int(rows[16])}..{int(rows[31])})" in message
    assert "simulated read error" in message
    info = run_info(out)
    assert info["chunks_failed"] == 1 and list(info["failed"]) == ["2"]
    done = zarr.open_group(str(out / "spray.zarr"), mode="r")["classes"]["2"]["done"][:]
    assert not done[1] and done.sum() == len(done) - 1  # the other chunks are kept
    entries = {e["class"]: e for e in summary(out)["classes"]}
    assert entries[1]["status"] == "ok"

    monkeypatch.delenv("SPRAY_TEST_FAIL_INDEX")
    info = run(cfg, base, output=str(out), quiet=True)
    assert info["chunks_computed"] == 1 and info["chunks_reused"] == info["chunks_total"] - 1
    assert_same_results(out, reference, atol=1e-6)


def test_store_of_another_model_or_dataset_is_refused(small_problem, reference, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(reference, out)
    before = zarr.open_group(str(out / "spray.zarr"), mode="r").attrs["fingerprints"]
    root = small_problem["root"]
    state = torch.load(root / "weights.pt", weights_only=True)
    torch.save({k: v * 1.01 for k, v in state.items()}, tmp_path / "other.pt")
    raw = yaml.safe_load(scale_config(small_problem).read_text())
    raw["model"]["weights"] = str(tmp_path / "other.pt")
    (root / "scale-other-model.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli("run", root / "scale-other-model.yaml", "--output", out, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "different model" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr

    x, y = small_problem["x"].copy(), small_problem["y"]
    x[:, :, -3:, -3:] = 1.0  # another dataset: same shapes and labels, other pixels
    np.savez(tmp_path / "other.npz", x=x, y=y)
    cfg, base = load_config(scale_config(small_problem))
    cfg.data.kwargs = {"path": str(tmp_path / "other.npz")}
    with pytest.raises(StoreError, match="different data"):
        run(cfg, base, output=str(out), quiet=True)
    after = zarr.open_group(str(out / "spray.zarr"), mode="r").attrs["fingerprints"]
    assert after == before  # nothing was mixed in
    assert not (out / LOCK_NAME).exists()


def test_overwrite_starts_over(small_problem, reference, tmp_path):
    out = tmp_path / "over"
    shutil.copytree(reference, out)
    cfg, base = load_config(scale_config(small_problem))
    info = run(cfg, base, output=str(out), quiet=True, overwrite=True)
    assert info["chunks_reused"] == 0 and info["chunks_computed"] == info["chunks_total"]


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / LOCK_NAME).write_text(f"{socket.gethostname()} {dead.pid}\n")
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().split()[1] == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text("")  # an empty lock file is taken over too
    with RunLock(tmp_path):
        pass
    holder = subprocess.Popen(  # a live holder in another process: refused
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from spray.store import RunLock\nRunLock(Path(sys.argv[1])).acquire()\n"
         "print('held', flush=True)\ntime.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match="in use by another spray run"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # released by the kernel when its holder died
        pass


def test_a_signal_while_the_cluster_starts_is_held_until_it_can_be_closed():
    """SIGTERM inside signals_deferred (the local cluster's start) is raised by raise_pending,
    not where it arrives; outside it is raised at once."""
    from spray.run.signals import (
        RunInterrupted,
        interrupt_on_signals,
        raise_pending,
        signals_deferred,
    )

    reached = []
    with pytest.raises(RunInterrupted) as err, interrupt_on_signals():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("after the signal")
        reached.append("after the deferred block")
        raise_pending()
        reached.append("never")
    assert reached == ["after the signal", "after the deferred block"]
    assert err.value.exit_code == 128 + signal.SIGTERM
    raise_pending()   # nothing held any more
    with pytest.raises(RunInterrupted), interrupt_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append("never")
    assert reached[-1] != "never"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
