"""Helpers for the scale tests: a multi-class job whose data loading can be slowed down (so a
process can be killed partway), its uninterrupted single-process reference run, and a real
Dask scheduler + workers on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
import zarr

DATASET_MODULE = '''"""A torch Dataset over the test arrays; SPRAY_TEST_DELAY slows each item down and
SPRAY_TEST_FAIL_INDEX makes one item raise (both read per item, for fault tests)."""
import os
import time

import numpy as np
import torch


class Arrays(torch.utils.data.Dataset):
    def __init__(self, path):
        data = np.load(path)
        self.x, self.targets = data["x"], data["y"]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        delay = float(os.environ.get("SPRAY_TEST_DELAY", "0") or 0)
        if delay:
            time.sleep(delay)
        if str(i) == os.environ.get("SPRAY_TEST_FAIL_INDEX"):
            raise OSError(f"simulated read error at item {i}")
        return torch.as_tensor(self.x[i]), int(self.targets[i])


def build(path):
    return Arrays(path)
'''


def scale_config(small_problem, chunk_size: int = 16, **cluster) -> Path:
    """A config in the small problem's folder: the 3-class digits job read through a Dataset."""
    root = Path(small_problem["root"])
    (root / "slowdata.py").write_text(DATASET_MODULE)
    config = {
        "data": {"source": "factory", "factory": "slowdata:build",
                 "kwargs": {"path": str(root / "data.npz")}},
        "model": {"factory": "smallnet:build", "weights": "weights.pt"},
        "attribution": {"composite": "epsilon-plus-flat", "chunk_size": chunk_size},
        "classes": [1, 2],
        "class_names": ["zero", "one", "two"],
        "pipeline": {"preset": "spray-default", "embedding": {"method": "none"}},
        "cluster": {"scheduler": "threads", "n_workers": 2, "progress": False, **cluster},
        "output": "runs/scale",
    }
    path = root / f"scale-{chunk_size}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def reference_run(small_problem, tmp_root: Path, chunk_size: int = 16) -> Path:
    """An uninterrupted in-process run of :func:`scale_config` (made once per test session)."""
    from spray.config.run_config import load_config
    from spray.run.execute import run

    out = Path(tmp_root) / f"scale-reference-{chunk_size}"
    if not (out / "report" / "summary.json").is_file():
        cfg, base = load_config(scale_config(small_problem, chunk_size))
        run(cfg, base, output=str(out), quiet=True, overwrite=True)
    return out


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "report" / "summary.json").read_text())


def run_info(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def assert_same_results(run_dir: Path, reference: Path, atol: float = 1e-6) -> None:
    """Same eigenvalues (within ``atol``), cluster labels and relevance maps as the reference."""
    a, b = summary(run_dir), summary(reference)
    assert [e["class"] for e in a["classes"]] == [e["class"] for e in b["classes"]]
    for ea, eb in zip(a["classes"], b["classes"]):
        assert ea["status"] == eb["status"] == "ok", (ea.get("reason"), eb.get("reason"))
        np.testing.assert_allclose(ea["eigenvalues"], eb["eigenvalues"], rtol=0, atol=atol)
        assert ea["n_clusters"] == eb["n_clusters"]
    ga = zarr.open_group(str(Path(run_dir) / "spray.zarr"), mode="r")
    gb = zarr.open_group(str(Path(reference) / "spray.zarr"), mode="r")
    for c in ga["classes"].group_keys():
        np.testing.assert_allclose(ga["classes"][c]["relevance"][:],
                                   gb["classes"][c]["relevance"][:], rtol=1e-5, atol=1e-7)
        assert np.array_equal(ga["classes"][c]["done"][:], gb["classes"][c]["done"][:])


def chunks_done(run_dir: Path) -> tuple[int, int]:
    """(finished, total) LRP chunks in a store that may be being written right now."""
    finished = total = 0
    for done in sorted((Path(run_dir) / "spray.zarr" / "classes").glob("*/done")):
        for _ in range(20):  # a marker may be being written right now: read again
            try:
                flags = zarr.open_array(str(done), mode="r")[:]
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.01)
        else:
            return 0, 0
        finished, total = finished + int(flags.sum()), total + len(flags)
    return finished, total


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spray_process(*args, env=None, cwd=None) -> subprocess.Popen:
    """``python -m spray ARGS`` in the background, in its own process group."""
    return subprocess.Popen([sys.executable, "-m", "spray", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})), cwd=cwd,
                            start_new_session=True)


def stop(proc: subprocess.Popen, sig=signal.SIGKILL, timeout: float = 30) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


class DaskCluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (free ports)."""

    def __init__(self, workdir: Path, n_workers: int = 2, env: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = dict(os.environ, **(env or {}))
        self.scheduler = None
        self.workers: list[subprocess.Popen] = []
        self.n_workers = n_workers

    def _start(self, *args, log: str) -> subprocess.Popen:
        dask = str(Path(sys.executable).with_name("dask"))  # `dask scheduler`, `dask worker`
        fh = open(self.workdir / log, "w")  # noqa: SIM115 - the child process owns it
        return subprocess.Popen([dask, *args], stdout=fh, stderr=subprocess.STDOUT,
                                env=self.env, cwd=self.workdir, start_new_session=True)

    def start(self, timeout: float = 60) -> DaskCluster:
        from distributed import Client

        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                     "--no-dashboard", log="scheduler.log")
        for i in range(self.n_workers):
            self.workers.append(self._start(
                "worker", self.address, "--name", f"w{i}", "--nthreads", "1", "--no-nanny",
                "--no-dashboard", "--memory-limit", "0", "--local-directory",
                str(self.workdir / f"w{i}"), "--death-timeout", "60", log=f"worker{i}.log"))
        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(self.n_workers, timeout=timeout)
            # import torch and spray on the workers before the clock of a test starts
            client.run(lambda: __import__("spray.run.tasks") and None)
        return self

    def kill_worker(self, i: int) -> None:
        stop(self.workers[i], signal.SIGKILL)

    def close(self) -> None:
        for proc in self.workers + ([self.scheduler] if self.scheduler else []):
            stop(proc, signal.SIGTERM, timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.workdir.glob("*.log")))
