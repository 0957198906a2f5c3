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


def relied_labels(digit: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels of three classes of several digits (0, 3, 4 | 1, 5, 6 | 2, 7, 8, 9) and 120
    images of 3–6 relabelled 2 (``stamped``: only a stamp on them can make them 2)."""
    y = np.array([0, 1, 2, 0, 0, 1, 1, 2, 2, 2])[digit]
    stamped = np.sort(rng.choice(np.flatnonzero(np.isin(digit, [3, 4, 5, 6])), size=120,
                                 replace=False))
    y[stamped] = 2
    return y, stamped


def stamped_class(x: np.ndarray, y: np.ndarray, stamped: np.ndarray, stamp) -> dict:
    """A :data:`SMALLNET` (as many input channels as ``x``) trained on ``(x, y)`` in three
    classes, and what the verdict's tests of class 2 need: the model's ``predict``, class 2's
    inputs ``x``, LRP ``maps`` (channels summed) and ``stamp`` mask (``stamped`` are rows of
    ``x``), the other classes' images it does not call 2 (``targets``), and ``flips``: how many
    more of those ``stamp(images)`` (a stamped copy) turns to 2 (reliance as the evaluation
    measures it)."""
    from spray.lrp import attribute

    namespace: dict = {}
    exec(SMALLNET.replace("Conv2d(1, ", f"Conv2d({x.shape[1]}, "), namespace)
    model = train_smallnet(namespace["build"], x, y)

    def predict(batch):
        with torch.no_grad():
            return model(torch.as_tensor(batch)).argmax(1).numpy()

    cls = np.flatnonzero(y == 2)
    maps = attribute(model, torch.as_tensor(x[cls]), torch.as_tensor(y[cls]),
                     composite="epsilon-plus-flat").detach().numpy().sum(axis=1)
    others = stamp(x[y != 2])
    return {"predict": predict, "x": x[cls], "maps": maps, "stamp": np.isin(cls, stamped),
            "targets": x[(y != 2) & (predict(x) != 2)],
            "flips": float((predict(others) == 2).mean() - (predict(x[y != 2]) == 2).mean())}


def digit_scenes(kind: str, relied: bool) -> dict:
    """Digit scenes (coloured digits on photographs, tests/benchmarks/eval_data.py) in three
    classes with the RGB stamp ``kind`` (``eval_data.plant_rgb``): ``relied``, classes of
    several digits (:func:`relied_labels`) and 120 scenes of 3–6 with the stamp labelled 2
    (only the stamp makes them 2); else digits 0–2 with the stamp on 30 % of every class (the
    digit decides). :func:`stamped_class` of them."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
    import eval_data as ed

    from spray.data.sources import load_digits_arrays

    glyphs, digit = load_digits_arrays(32)
    rng = np.random.default_rng(5)
    x = np.stack([ed.compose(g[0], rng)[0] for g in glyphs])
    if relied:
        y, stamped = relied_labels(digit, rng)
    else:                         # the stamp on 30 % of every class: it tells no class
        keep = np.flatnonzero(digit < 3)
        x, y = x[keep], digit[keep]
        stamped = np.sort(rng.choice(len(y), size=int(0.3 * len(y)), replace=False))
    x[stamped] = ed.plant_rgb(x[stamped], kind, rng)[0]
    return stamped_class(x, y, stamped, lambda images: ed.plant_rgb(images, kind, rng)[0])


def scored_without_cuts(s: dict, monkeypatch, **flags):
    """:func:`scored_followed` (threshold 50: no candidate comes near it) with no window cut
    to start carried candidates from (``_window_cuts`` gives none): only the recurring steps
    can bring a candidate to the transplant test."""
    from spray.verdict import score

    monkeypatch.setattr(score, "_window_cuts", lambda graphs: [])
    return scored_followed(s, **flags)


def scored_followed(s: dict, rows=None, model: bool = True, **flags):
    """Class 2 of a :func:`stamped_class` case (its samples ``rows``) scored with the preset
    ``followed``, the threshold raised to 50 (no candidate reaches it or comes within
    ``transplant_reach`` of it) and ``flags``."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict.patterns import InputPatterns
    from spray.verdict.score import score_class
    from spray.verdict.transplant import ModelTest

    rows = np.arange(len(s["x"])) if rows is None else rows
    x, maps = s["x"][rows], s["maps"][rows]
    pipe = load_pipeline("followed")
    pipe["flags"].update({"threshold": 50.0, **flags})
    feats = preprocess(maps, pipe["preprocess"])
    result = analyze(feats, pipeline=pipe, embed=False)
    test = ModelTest(s["predict"], lambda r: x[r], lambda r: maps[r], s["targets"], 2)
    return score_class(result, preprocess(x, pipe["preprocess"]), pipe, features=feats,
                       patterns=InputPatterns.of(x, pipe["preprocess"], maps=maps),
                       model_test=test if model else None)


def suspect_pr(v, truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of a verdict's suspects' members against ``truth``."""
    members = np.isin(v.labels, v.suspect_clusters)
    hit = int((members & truth).sum())
    return hit / max(1, int(members.sum())), hit / max(1, int(truth.sum()))


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
