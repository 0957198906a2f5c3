"""Shared fixtures: a real trained model and dataset made in the test session, and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run ``python -m spray ARGS`` in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "spray", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


SMALLNET = """import torch


def build():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 3))
"""


def train_smallnet(build, x: np.ndarray, y: np.ndarray, epochs: int = 15):
    """The model ``build()`` trained with Adam on ``(x, y)`` (seeded), in eval mode."""
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def small_problem(tmp_path_factory):
    """Digits (32×32) with a planted stamp in 30 % of class 2, a CNN trained on them, a config."""
    from spray.data.sources import load_digits_arrays

    root = tmp_path_factory.mktemp("problem")
    x, y = load_digits_arrays(32)
    keep = np.flatnonzero(y < 3)
    x, y = x[keep], y[keep]
    rng = np.random.default_rng(1)
    members = np.flatnonzero(y == 2)
    poisoned = np.sort(rng.choice(members, size=int(0.3 * len(members)), replace=False))
    x[poisoned, :, 1:6, 1:6] = 1.0
    (root / "smallnet.py").write_text(SMALLNET)
    namespace: dict = {}
    exec(SMALLNET, namespace)  # the same factory the config names
    torch.save(train_smallnet(namespace["build"], x, y).state_dict(), root / "weights.pt")
    np.savez(root / "data.npz", x=x, y=y)
    config = {
        "data": {"source": "npz", "path": "data.npz"},
        "model": {"factory": "smallnet:build", "weights": "weights.pt"},
        "attribution": {"composite": "epsilon-plus-flat", "chunk_size": 64},
        "classes": "all",
        "class_names": ["zero", "one", "two"],
        "pipeline": {"preset": "spray-default", "embedding": {"method": "tsne"}},
        "cluster": {"scheduler": "threads", "n_workers": 2, "progress": False},
        "output": "runs/small",
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return {"root": root, "config": root / "config.yaml", "poisoned": poisoned, "x": x, "y": y,
            "raw_config": config}


def write_config(root: Path, name: str, config: dict) -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def single_torch_thread():
    """The test models are tiny: one torch thread avoids oversubscription on busy machines."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
