"""Nothing exposed, nothing obscure: the sockets of a real run, the pickled-checkpoint refusal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
from conftest import write_config

LOOPBACK = {"127.0.0.1", "::1"}


def _listening(proc: psutil.Process) -> set[tuple[str, int]]:
    """(ip, port) of every listening TCP socket of ``proc`` and its children."""
    found = set()
    for p in [proc, *proc.children(recursive=True)]:
        try:
            found |= {(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # a worker process that just ended
            continue
    return found


def _serves_dashboard(port: int) -> bool | None:
    """Whether ``port`` answers ``GET /status`` with 200 (True), is a Dask comm port (False:
    it speaks first, its handshake, and is left alone, so the probe never feeds a scheduler
    bytes it cannot parse), or gave no answer yet (None: a server still starting)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            # a comm speaks within milliseconds on loopback; a longer wait per port left a
            # short run's dashboard unprobed before the run ended (the test failed on an idle
            # machine with a 1 s wait)
            sock.settimeout(0.3)
            try:
                if sock.recv(1):
                    return False  # a Dask comm handshake
            except TimeoutError:
                pass
            sock.settimeout(5.0)
            sock.sendall(b"GET /status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return sock.recv(64).split(b"\r\n")[0].split()[1:2] == [b"200"] or None
    except (OSError, IndexError):
        return None


def _watch_run(config, scheduler: str) -> tuple[set, set, str]:
    """Run ``spray run`` and sample its listening sockets until it ends; returns the sockets,
    the ports that served a Dask dashboard page, and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "spray", "run", str(config), "--scheduler",
                             scheduler], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    ps, sockets, dashboards, comms = psutil.Process(proc.pid), set(), set(), set()
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        with_sockets = _listening(ps)
        sockets |= with_sockets
        # a port is probed until it answers: a dashboard that listens before it serves is
        # asked again on the next round
        for port in {port for _, port in with_sockets} - dashboards - comms:
            answer = _serves_dashboard(port)
            if answer is not None:
                (dashboards if answer else comms).add(port)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return sockets, dashboards, err


@pytest.mark.distributed
@pytest.mark.parametrize(("scheduler", "dashboard"), [("threads", True), ("local", False),
                                                    ("local", True)])
def test_run_listens_on_loopback_only(small_problem, tmp_path, scheduler, dashboard):
    """Every socket of an embedded cluster (scheduler, workers, dashboard) is bound to the
    loopback interface; ``cluster.dashboard: false`` serves no dashboard page."""
    raw = dict(small_problem["raw_config"])
    raw.update({"classes": [0, 1],
                "data": {**raw["data"], "path": str(small_problem["root"] / "data.npz")},
                "model": {**raw["model"], "weights": str(small_problem["root"] / "weights.pt")},
                "cluster": {"scheduler": "local", "n_workers": 1, "progress": False,
                            "dashboard": dashboard},
                "output": str(tmp_path / "run")})
    (tmp_path / "smallnet.py").write_text((small_problem["root"] / "smallnet.py").read_text())
    config = write_config(tmp_path, "config.yaml", raw)
    sockets, dashboards, err = _watch_run(config, scheduler)
    assert sockets, "the run was over before a socket was seen"
    exposed = {s for s in sockets if s[0] not in LOOPBACK}
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert bool(dashboards) == dashboard, (dashboards, err)
    if not dashboard:
        assert "no dashboard (cluster.dashboard: false)" in err
    assert "still alive" not in err and "CancelledError" not in err, err


def test_pickled_checkpoint_gets_a_plain_message(tmp_path):
    """A whole pickled model is refused with spray's own message: no escape codes, no cut
    sentence from PyTorch, the offending object and both ways out."""
    from spray.data.models import load_model
    from spray.errors import ModelError

    (tmp_path / "tiny.py").write_text("import torch\n\n\ndef build():\n"
                                      "    return torch.nn.Sequential(torch.nn.Linear(4, 2))\n")
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), tmp_path / "whole.pt")
    with pytest.raises(ModelError) as info:
        load_model({"factory": "tiny:build", "weights": str(tmp_path / "whole.pt")},
                   str(tmp_path))
    msg = str(info.value)
    assert "\x1b" not in msg and "PyTorch 2.6" not in msg and "add_safe_globals" not in msg
    assert "torch.nn.modules.container.Sequential" in msg
    assert "state_dict" in msg and "model.trust_pickle: true" in msg
    assert msg.rstrip().endswith(".")


@pytest.mark.distributed
def test_ctrl_c_prints_one_clean_message(small_problem, tmp_path):
    """Ctrl-C during the LRP stage: the clean 'interrupted' message and exit code 130, without
    CancelledError warnings or the nanny's 'still alive' lines before it."""
    import signal

    raw = dict(small_problem["raw_config"])
    raw.update({"data": {**raw["data"], "path": str(small_problem["root"] / "data.npz")},
                "model": {**raw["model"], "weights": str(small_problem["root"] / "weights.pt")},
                "attribution": {**raw["attribution"], "chunk_size": 16, "batch_size": 4},
                "cluster": {"scheduler": "local", "n_workers": 2, "progress": True},
                "output": str(tmp_path / "run")})
    (tmp_path / "smallnet.py").write_text((small_problem["root"] / "smallnet.py").read_text())
    config = write_config(tmp_path, "config.yaml", raw)
    proc = subprocess.Popen([sys.executable, "-m", "spray", "run", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    lines = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "Dask worker(s)" in line:
            time.sleep(3)
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "interrupted" in err, err
    for noise in ("CancelledError", "still alive", "Traceback"):
        assert noise not in err, err


def _interrupt_sync_before_it_starts() -> None:
    """Ctrl-C while ``distributed.utils.sync`` waits for a call its (busy) loop has not started:
    the real sequence behind the ``sync.<locals>.cancel`` NameError of distributed 2026.8."""
    import asyncio
    import signal
    import threading

    from distributed.utils import LoopRunner, sync

    # Ctrl-C raises KeyboardInterrupt whatever the test runner inherited: a shell's background
    # job starts with SIGINT ignored, and Python then installs no handler of its own
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    runner = LoopRunner(asynchronous=False)
    runner.start()
    busy, main = threading.Event(), threading.get_ident()
    runner.loop.add_callback(busy.wait, 20)  # the loop is held, so sync's call cannot start
    threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT)).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            sync(runner.loop, asyncio.sleep, 0)
    finally:
        busy.set()  # the loop now runs sync's call and its cancel callback
        sync(runner.loop, asyncio.sleep, 0)  # queued after them: returns once they have run
        runner.stop()
        signal.signal(signal.SIGINT, inherited)


def test_ctrl_c_before_a_dask_call_starts_logs_nothing(caplog):
    """The shutdown filter drops distributed's failing cancel callback on Ctrl-C: without the
    filter the same sequence does log the error (so this test can fail)."""
    import logging

    from spray.run.dask_cluster import quiet_shutdown

    caplog.set_level(logging.ERROR, logger="tornado.application")
    _interrupt_sync_before_it_starts()
    unfiltered = [r for r in caplog.records if r.name == "tornado.application"]
    caplog.clear()
    with quiet_shutdown():
        _interrupt_sync_before_it_starts()
    assert [r.getMessage() for r in caplog.records if r.name == "tornado.application"] == []
    assert any("sync.<locals>.cancel" in r.getMessage() for r in unfiltered)
