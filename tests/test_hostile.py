"""The hostile-input matrix: every row is a faulty or hostile situation, run through the real
``spray`` command in a subprocess (so worker logs on stderr are seen).

Each row asserts the exit code, that the message names the key, file, sample or module at fault,
that no traceback is printed, that nothing outside the output folder is written and nothing of
the user's is changed or deleted, and that a refusal (exit 2) of a new output folder creates
nothing. ``docs/errors.md`` is generated from :data:`CASES`
(``python tests/test_hostile.py > docs/errors.md``); a test keeps the two equal.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ setups

def _cfg(p: Path) -> dict:
    return yaml.safe_load((p / "config.yaml").read_text())


def _save_cfg(p: Path, cfg: dict) -> None:
    (p / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))


def edit(**changes) -> Callable[[Path], None]:
    """Set dotted keys of the config (``data__scale=...`` sets ``data.scale``)."""
    def setup(p: Path) -> None:
        cfg = _cfg(p)
        for dotted, value in changes.items():
            node, keys = cfg, dotted.split("__")
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
        _save_cfg(p, cfg)
    return setup


def text(body: str | bytes, name: str = "config.yaml") -> Callable[[Path], None]:
    def setup(p: Path) -> None:
        (p / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    return setup


def arrays(fn: Callable[[np.ndarray, np.ndarray], tuple]) -> Callable[[Path], None]:
    """Rewrite data.npz from (x, y) → fn(x, y) = (x', y') or a dict of arrays."""
    def setup(p: Path) -> None:
        data = np.load(p / "data.npz")
        out = fn(data["x"].copy(), data["y"].copy())
        if isinstance(out, dict):
            np.savez(p / "data.npz", **out)
        else:
            np.savez(p / "data.npz", x=out[0], y=out[1])
    return setup


def source(kind: str, make: Callable[[Path, np.ndarray, np.ndarray], str], **keys):
    """Write a data file of another source kind (``make`` returns its file name) and point the
    config at it."""
    def setup(p: Path) -> None:
        data = np.load(p / "data.npz")
        name = make(p, data["x"], data["y"])
        cfg = _cfg(p)
        cfg["data"] = {"source": kind, "path": name, **keys}
        _save_cfg(p, cfg)
    return setup


def _h5(build):
    def make(p, x, y):
        import h5py

        with h5py.File(p / "d.h5", "w") as fh:
            build(fh, p, x, y)
        return "d.h5"
    return make


def _h5_external_link(fh, p, x, y):
    import h5py

    with h5py.File(p / "other.h5", "w") as other:
        other["x"] = x
    fh["x"] = h5py.ExternalLink("other.h5", "x")
    fh["y"] = y


def _h5_virtual(fh, p, x, y):
    import h5py

    layout = h5py.VirtualLayout(shape=x.shape, dtype="f4")
    layout[:] = h5py.VirtualSource("missing.h5", "x", shape=x.shape)
    fh.create_virtual_dataset("x", layout, fillvalue=0)
    fh["y"] = y


def _h5_external_raw(fh, p, x, y):
    (p / "raw.bin").write_bytes(x.astype("f4").tobytes())
    fh.create_dataset("x", shape=x.shape, dtype="f4",
                      external=[(str(p / "raw.bin"), 0, x.astype("f4").nbytes)])
    fh["y"] = y


def _zarr(build):
    def make(p, x, y):
        import zarr

        g = zarr.open_group(str(p / "d.zarr"), mode="w")
        build(g, x, y)
        return "d.zarr"
    return make


def _idx(images: bytes, labels: bytes):
    def make(p, x, y):
        (p / "images.idx").write_bytes(images)
        (p / "labels.idx").write_bytes(labels)
        return "images.idx"
    return make


IDX_LABELS = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([0, 1, 2])


def imagefolder(build) -> Callable[[Path], None]:
    def setup(p: Path) -> None:
        root = p / "images"
        root.mkdir()
        build(root)
        cfg = _cfg(p)
        cfg["data"] = {"source": "imagefolder", "path": "images", "mode": "L"}
        _save_cfg(p, cfg)
    return setup


def module(name: str, code: str, **changes) -> Callable[[Path], None]:
    """Write a Python module next to the config and edit the config."""
    def setup(p: Path) -> None:
        (p / f"{name}.py").write_text(code)
        edit(**changes)(p)
    return setup


def both(*setups) -> Callable[[Path], None]:
    def setup(p: Path) -> None:
        for s in setups:
            s(p)
    return setup


def in_run(fn: Callable[[Path], None]) -> Callable[[Path], None]:
    """Apply ``fn`` to the finished run folder ``out``."""
    return lambda p: fn(p / "out")


def _truncate(rel: str):
    def fn(out: Path) -> None:
        target = out / rel
        if target.is_dir():
            target = next(f for f in sorted(target.rglob("*")) if f.is_file()
                          and f.name != "zarr.json")
        target.write_bytes(target.read_bytes()[: max(1, len(target.read_bytes()) // 3)])
    return fn


def _no_report(out: Path) -> None:
    """Remove the report, so nothing of it is reused and every class is read again."""
    shutil.rmtree(out / "report")


def _summary_edit(fn):
    def setup(out: Path) -> None:
        path = out / "report" / "summary.json"
        path.write_text(fn(json.loads(path.read_text())))
    return setup


def _store_attr(**attrs):
    def fn(out: Path) -> None:
        import zarr

        zarr.open_group(str(out / "spray.zarr"), mode="a").attrs.update(attrs)
    return fn


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))

TUPLE_NET = """import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 3))

    def forward(self, x):
        return self.body(x), x

def build():
    return Net()
"""

RAISING_NET = """import torch

class Net(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom in forward")

def build():
    return Net()
"""

LIST_DATASET = "def build():\n    return [1, 2, 3]\n"


def _foreign_baseline(p: Path) -> None:
    summary = json.loads((p / "out" / "report" / "summary.json").read_text())
    summary["fingerprints"]["pipeline"] = "0" * 16
    (p / "old.json").write_text(json.dumps(summary))


def _set(a: np.ndarray, index, value) -> np.ndarray:
    a[index] = value
    return a


def _pickle(p: Path) -> None:
    import torch

    sys.path.insert(0, str(p))
    try:
        import smallnet

        torch.save(smallnet.build(), p / "weights.pt")
    finally:
        sys.path.remove(str(p))
        sys.modules.pop("smallnet", None)


def _other_weights(p: Path) -> None:
    import torch

    torch.save({"weight": torch.zeros(2, 2)}, p / "weights.pt")


# ------------------------------------------------------------------------------ the matrix

@dataclass(frozen=True)
class Case:
    """One row: ``setup`` edits the project (or, with ``run``, a copy of a finished run),
    ``argv`` is the command (``{cfg}``, ``{out}``, ``{p}`` are filled in)."""

    id: str
    what: str
    setup: Callable[[Path], None] | None
    code: int
    needles: tuple[str, ...]
    argv: tuple[str, ...] = ("run", "{cfg}", "--quiet")
    run: bool = False


RUN = ("run", "{cfg}", "--quiet")
CHECK = ("check", "{out}")

CASES = [
    # -- config: keys, types, ranges -----------------------------------------------------------
    Case("config/unknown-key", "an unknown top-level key", edit(colour="red"), 2, ("colour",)),
    Case("config/misspelled-data-key", "a misspelled data key", edit(data__pth="x.npz"), 2,
         ("data.pth",)),
    Case("config/misspelled-attribution-key", "a misspelled attribution key",
         edit(attribution__chunksize=8), 2, ("attribution.chunksize",)),
    Case("config/misspelled-cluster-key", "a misspelled cluster key", edit(cluster__worker=3), 2,
         ("cluster.worker",)),
    Case("config/misspelled-slurm-key", "a misspelled cluster.slurm key",
         edit(cluster__slurm={"cors": 4}), 2, ("cluster.slurm.cors",)),
    Case("config/nan-scale", "data.scale: .nan", edit(data__scale=float("nan")), 2,
         ("data.scale",)),
    Case("config/inf-mean", "an infinite data.mean", edit(data__mean=[float("inf")],
                                                          data__std=[1.0]), 2, ("data.mean",)),
    Case("config/nan-lrp-param", "a NaN LRP parameter",
         edit(attribution__params={"epsilon": float("nan")}), 2, ("attribution.params.epsilon",)),
    Case("config/nan-threshold", "pipeline flags.threshold: .nan (disabled the gate)",
         edit(pipeline={"preset": "spray-default", "flags": {"threshold": float("nan")}}), 2,
         ("flags.threshold", "finite")),
    Case("config/inf-sigma", "pipeline affinity.sigma: .inf",
         edit(pipeline={"preset": "spray-default", "affinity": {"sigma": float("inf")}}), 2,
         ("affinity.sigma",)),
    Case("config/nan-timeout", "cluster.connect_timeout: .nan",
         edit(cluster__connect_timeout=float("nan")), 2, ("cluster.connect_timeout",)),
    Case("config/bool-class", "classes: [true] (was class 1)", edit(classes=[True]), 2,
         ("classes",)),
    Case("config/repeated-class", "a class listed twice", edit(classes=[0, 0]), 2,
         ("repeat",)),
    Case("config/negative-class", "a negative class index", edit(classes=[-1]), 2,
         ("classes",)),
    Case("config/class-out-of-range", "a class the model does not have", edit(classes=[0, 9]),
         2, ("classes", "9")),
    Case("config/zero-batch", "attribution.batch_size: 0", edit(attribution__batch_size=0), 2,
         ("attribution.batch_size",)),
    Case("config/text-chunk", "attribution.chunk_size: many",
         edit(attribution__chunk_size="many"), 2, ("attribution.chunk_size",)),
    Case("config/target-out-of-range", "attribution.target beyond the model's outputs",
         edit(attribution__target=7), 2, ("attribution.target", "3 outputs")),
    Case("config/target-unknown", "attribution.target: logits",
         edit(attribution__target="logits"), 2, ("attribution.target",)),
    Case("config/memory-text", "cluster.memory_limit: lots", edit(cluster__memory_limit="lots"),
         2, ("cluster.memory_limit",)),
    Case("config/memory-tiny", "cluster.memory_limit of 1 MB (workers restarted forever)",
         edit(cluster__memory_limit="1MB"), 2, ("cluster.memory_limit", "too small")),
    Case("config/bad-scheduler", "cluster.scheduler: ftp://host", edit(cluster__scheduler="ftp://h"),
         2, ("cluster.scheduler",)),
    Case("config/nul-output", "a NUL character in the output path", edit(output="out\0x"), 2,
         ("output", "NUL")),
    Case("config/unknown-preset", "an unknown pipeline preset", edit(pipeline="no-such-preset"), 2,
         ("no-such-preset",)),
    Case("config/unknown-pipeline-key", "a misspelled pipeline key",
         edit(pipeline={"preset": "spray-default", "affinity": {"kk": 5}}), 2, ("affinity.kk",)),
    Case("config/k-too-large", "affinity.k larger than a class",
         edit(pipeline={"preset": "spray-default", "affinity": {"k": 10_000}}), 2,
         ("affinity.k",)),
    Case("config/workers-zero", "--workers 0", None, 2, ("--workers",),
         argv=("run", "{cfg}", "--workers", "0")),
    # -- config files ------------------------------------------------------------------------
    Case("file/binary", "a binary file as config", text(bytes(range(256)) * 4), 2,
         ("config.yaml", "not a text file")),
    Case("file/folder", "a folder as config", None, 2, ("is a folder",), argv=("run", "{p}")),
    Case("file/missing", "a config that does not exist", None, 2, ("not found", "nope.yaml"),
         argv=("run", "{p}/nope.yaml")),
    Case("file/bad-yaml", "invalid YAML", text("data: [unclosed\n"), 2, ("not valid YAML",)),
    Case("file/list", "a YAML list instead of a mapping", text("- 1\n- 2\n"), 2,
         ("YAML mapping",)),
    Case("file/alias-bomb", "a 9-line YAML alias bomb (10^9 values)", text(BOMB), 2,
         ("expands to more than",)),
    # -- models ------------------------------------------------------------------------------
    Case("model/bad-factory-form", "model.factory without ':'", edit(model__factory="smallnet"),
         2, ("model.factory",)),
    Case("model/missing-module", "a factory module that does not exist",
         edit(model__factory="nothing_here:build"), 2, ("nothing_here",)),
    Case("model/missing-function", "a factory function that does not exist",
         edit(model__factory="smallnet:nothing"), 2, ("smallnet", "nothing")),
    Case("model/list-kwargs", "list-valued model.kwargs (was unhashable)",
         edit(model__kwargs={"sizes": [1, 2]}), 2, ("model.factory", "sizes")),
    Case("model/weights-missing", "a weights file that does not exist",
         edit(model__weights="nope.pt"), 2, ("model.weights", "nope.pt")),
    Case("model/weights-folder", "a folder as weights file", both(
        lambda p: (p / "wdir").mkdir(), edit(model__weights="wdir")), 2,
        ("model.weights", "is a folder")),
    Case("model/weights-device", "/dev/zero as weights file",
         edit(model__weights="/dev/zero"), 2, ("model.weights", "not a regular file")),
    Case("model/weights-garbage", "a weights file of random bytes",
         text(os.urandom(64), "weights.pt"), 2, ("model.weights",)),
    Case("model/weights-pickle", "a pickled module as checkpoint", lambda p: _pickle(p), 2,
         ("trust_pickle",)),
    Case("model/weights-other-shape", "weights of another architecture",
         lambda p: _other_weights(p), 2, ("model.weights", "does not match")),
    Case("model/forward-tuple", "a forward returning a tuple",
         module("tuplenet", TUPLE_NET, model__factory="tuplenet:build", model__weights=None), 2,
         ("model.factory", "tuple")),
    Case("model/forward-raises", "a forward that raises",
         module("raisenet", RAISING_NET, model__factory="raisenet:build", model__weights=None),
         2, ("boom in forward",)),
    # -- data: npz ---------------------------------------------------------------------------
    Case("npz/missing-key", "an npz without the 'x' array", edit(data__x_key="images"), 2,
         ("images", "x_key")),
    Case("npz/label-count", "fewer labels than samples", arrays(lambda x, y: (x, y[:-5])), 2,
         ("labels",)),
    Case("npz/text-samples", "samples of text", arrays(lambda x, y: (x.astype("U3"), y)), 2,
         ("numeric",)),
    Case("npz/complex-samples", "complex samples (were truncated)",
         arrays(lambda x, y: (x.astype(np.complex64), y)), 2, ("real numeric", "complex")),
    Case("npz/object-array", "an object (pickle) array",
         arrays(lambda x, y: {"x": np.array([None] * len(y), dtype=object), "y": y}), 2,
         ("data.npz", "allow_pickle")),
    Case("npz/fractional-label", "a label 1.5", arrays(lambda x, y: (x, _set(y.astype(float), 3, 1.5))),
         2, ("sample 3", "1.5")),
    Case("npz/huge-label", "a label 1e30", arrays(lambda x, y: (x, _set(y.astype(float), 4, 1e30))),
         2, ("sample 4",)),
    Case("npz/label-out-of-range", "a label the model does not have",
         arrays(lambda x, y: (x, _set(y, 17, 5))), 2, ("17",)),
    Case("npz/negative-label", "a negative label", arrays(lambda x, y: (x, _set(y, 2, -1))), 2,
         ("sample 2",)),
    Case("npz/garbage", "an npz of random bytes", text(os.urandom(256), "data.npz"), 2,
         ("data.npz",)),
    Case("npz/2d-samples", "samples of shape (N, D)",
         arrays(lambda x, y: (x.reshape(len(x), -1), y)), 2, ("shape",)),
    Case("npz/nan-sample", "a NaN in one sample of the planted class (the class fails)",
         arrays(lambda x, y: (_set(x, (int(np.flatnonzero(y == 2)[3]), 0, 5, 5), np.nan), y)),
         3, ("NaN", "class 2")),
    # -- data: HDF5, Zarr, IDX, image folders, factories --------------------------------------
    Case("hdf5/missing-dataset", "an HDF5 file without 'x'",
         source("hdf5", _h5(lambda fh, p, x, y: fh.create_dataset("y", data=y))), 2,
         ("data.x_key",)),
    Case("hdf5/group", "'x' is a group",
         source("hdf5", _h5(lambda fh, p, x, y: (fh.create_group("x"),
                                                 fh.create_dataset("y", data=y)))), 2,
         ("is a group",)),
    Case("hdf5/external-link", "'x' is an external link to another file",
         source("hdf5", _h5(_h5_external_link)), 2, ("external link",)),
    Case("hdf5/virtual", "'x' is a virtual dataset whose source is missing (read as zeros)",
         source("hdf5", _h5(_h5_virtual)), 2, ("virtual dataset",)),
    Case("hdf5/external-raw", "'x' stored in an external raw file",
         source("hdf5", _h5(_h5_external_raw)), 2, ("external raw",)),
    Case("hdf5/scalar-labels", "'y' is a scalar",
         source("hdf5", _h5(lambda fh, p, x, y: (fh.create_dataset("x", data=x),
                                                 fh.create_dataset("y", data=3)))), 2,
         ("data.y_key", "1-d")),
    Case("hdf5/garbage", "an HDF5 path holding random bytes",
         source("hdf5", lambda p, x, y: (p / "d.h5").write_bytes(os.urandom(64)) and "d.h5"), 2,
         ("d.h5", "HDF5")),
    Case("zarr/group", "Zarr 'x' is a group",
         source("zarr", _zarr(lambda g, x, y: (g.create_group("x"),
                                               g.create_array("y", data=y)))), 2,
         ("is a group",)),
    Case("zarr/missing-array", "a Zarr group without 'y'",
         source("zarr", _zarr(lambda g, x, y: g.create_array("x", data=x))), 2,
         ("data.y_key",)),
    Case("zarr/scalar-labels", "Zarr 'y' is a scalar",
         source("zarr", _zarr(lambda g, x, y: (g.create_array("x", data=x),
                                               g.create_array("y", data=np.array(3))))), 2,
         ("data.y_key", "1-d")),
    Case("zarr/not-zarr", "a Zarr path that is an empty folder",
         source("zarr", lambda p, x, y: (p / "d.zarr").mkdir() or "d.zarr"), 2, ("d.zarr",)),
    Case("idx/bad-magic", "an IDX file with a bad magic number",
         source("idx", _idx(b"\x01\x02\x03\x04", IDX_LABELS), labels="labels.idx"), 2,
         ("bad magic",)),
    Case("idx/truncated", "an IDX file shorter than its header says",
         source("idx", _idx(bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
                            + (4).to_bytes(4, "big") + bytes(10), IDX_LABELS),
                labels="labels.idx"), 2, ("truncated",)),
    Case("idx/huge-dims", "IDX dimensions 2^31 x 2^31 x 2^31",
         source("idx", _idx(bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") * 3, IDX_LABELS),
                labels="labels.idx"), 2, ("truncated",)),
    Case("image/no-classes", "an image folder without class subfolders",
         imagefolder(lambda root: (root / "a.png").write_bytes(b"")), 2, ("no class subfolders",)),
    Case("image/corrupt", "an image that cannot be decoded",
         imagefolder(lambda root: ((root / "cat").mkdir(),
                                   (root / "cat" / "0.png").write_bytes(b"not a png"))), 2,
         ("0.png", "cannot decode")),
    Case("factory/missing-module", "a data factory module that does not exist",
         edit(data={"source": "factory", "factory": "nowhere:build"}), 2, ("data.factory",)),
    Case("factory/not-pairs", "a data factory whose items are not (x, y) pairs",
         module("listdata", LIST_DATASET, data={"source": "factory", "factory": "listdata:build"}),
         2, ("pair",)),
    # -- output folders and user files --------------------------------------------------------
    Case("output/is-a-file", "the output is an existing file", text("mine", "out"), 2,
         ("not a folder",)),
    Case("output/user-files", "the output folder holds the user's files",
         lambda p: ((p / "out").mkdir(), (p / "out" / "thesis.tex").write_text("mine")), 2,
         ("other files",)),
    Case("output/dot", "output: . next to the user's own config.yaml", edit(output="."), 2,
         ("config.yaml", "did not write")),
    Case("output/users-report", "--overwrite with the user's report/ in the run folder",
         in_run(lambda out: (shutil.rmtree(out / "report"), (out / "report").mkdir(),
                             (out / "report" / "notes.md").write_text("mine"))), 2,
         ("report", "did not write"), argv=("run", "{cfg}", "--overwrite"), run=True),
    Case("output/edited-config", "the run folder's config.yaml edited by the user",
         in_run(lambda out: (out / "config.yaml").write_text("# mine\n")), 2,
         ("config.yaml",), run=True),
    Case("demo/over-a-run", "spray demo --output over a finished run", None, 2,
         ("not a demo",), argv=("demo", "--output", "{out}"), run=True),
    Case("demo/over-user-files", "spray demo --output over the user's files",
         lambda p: ((p / "out").mkdir(), (p / "out" / "notes.md").write_text("mine")), 2,
         ("notes.md",), argv=("demo", "--output", "{out}")),
    # -- stores ------------------------------------------------------------------------------
    Case("store/foreign-zarr", "a Zarr store of someone else at out/spray.zarr",
         lambda p: __import__("zarr").open_group(str(p / "out" / "spray.zarr"), mode="w"), 2,
         ("spray.zarr", "did not write")),
    Case("store/other-model-code", "model code changed since the store was made (ReLU → Tanh)",
         lambda p: (p / "smallnet.py").write_text((p / "smallnet.py").read_text()
                                                  .replace("ReLU", "Tanh")), 2,
         ("different model", "--overwrite"), run=True),
    Case("store/truncated-class-json", "a truncated class zarr.json",
         in_run(lambda out: (out / "spray.zarr" / "classes" / "1" / "zarr.json").write_text("{")),
         2, ("classes/1", "corrupt"), run=True),
    Case("store/corrupt-done", "a corrupt 'done' chunk", in_run(_truncate(
        "spray.zarr/classes/1/done")), 2, ("classes/1",), run=True),
    Case("store/corrupt-eigenvalues", "a corrupt analysis chunk (report rebuilt from the store)",
         in_run(both(_truncate("spray.zarr/classes/1/eigenvalues"), _no_report)), 2,
         ("classes/1", "corrupt"), argv=("report", "{out}"), run=True),
    Case("store/corrupt-index", "a corrupt 'index' chunk (report rebuilt from the store)",
         in_run(both(_truncate("spray.zarr/classes/0/index"), _no_report)), 2, ("classes/0",),
         argv=("report", "{out}"), run=True),
    # -- report and check ----------------------------------------------------------------------
    Case("report/no-store", "spray report on a mistyped path (nothing created)", None, 2,
         ("no spray store",), argv=("report", "{p}/typo")),
    Case("report/users-report", "spray report into the user's report/ folder",
         in_run(lambda out: (shutil.rmtree(out / "report"), (out / "report").mkdir())), 2,
         ("report", "not written by spray"), argv=("report", "{out}"), run=True),
    Case("check/no-run", "spray check on a mistyped path (nothing created)", None, 2,
         ("no run summary",), argv=("check", "{p}/typo")),
    Case("check/empty-entry", "summary.json {\"classes\": [{}]}",
         in_run(_summary_edit(lambda s: '{"classes": [{}]}')), 2, ("class entry 0",),
         argv=CHECK, run=True),
    Case("check/nan-score", "a NaN score in summary.json",
         in_run(_summary_edit(lambda s: json.dumps(s).replace('"score": 6', '"score": NaN, "x": 6',
                                                               1))), 2, ("'score'",),
         argv=CHECK, run=True),
    Case("check/binary-summary", "a binary summary.json",
         in_run(lambda out: (out / "report" / "summary.json").write_bytes(b"\xff\xfe\x00")), 2,
         ("summary.json",), argv=CHECK, run=True),
    Case("check/unfinished", "a run that did not finish (state 'running')",
         in_run(_store_attr(run_state="running")), 3, ("did not finish",), argv=CHECK, run=True),
    Case("check/no-run-state", "a summary without a run state (older or foreign)",
         in_run(_summary_edit(lambda s: json.dumps({k: v for k, v in s.items()
                                                    if k != "run_state"}))), 3,
         ("no run state",), argv=CHECK, run=True),
    Case("check/failed-class", "a class whose analysis failed",
         in_run(_summary_edit(lambda s: json.dumps(
             {**s, "classes": [{**e, "status": "failed", "reason": "class 1: LRP failed"}
                               if e["class"] == 1 else e for e in s["classes"]]}))), 3,
         ("class one (1) is failed",), argv=CHECK, run=True),
    Case("check/foreign-baseline", "--baseline of another pipeline", _foreign_baseline, 2,
         ("pipeline", "--baseline-any"), argv=("check", "{out}", "--baseline", "{p}/old.json"),
         run=True),
    Case("check/junit-dir", "--junit into a folder that does not exist", None, 2, ("--junit",),
         argv=("check", "{out}", "--junit", "{p}/no/such/j.xml"), run=True),
    Case("check/control-chars", "control characters in a class name (valid JUnit XML)",
         in_run(_summary_edit(lambda s: json.dumps(
             {**s, "classes": [{**e, "name": "a\x01b\x1b[31m"} for e in s["classes"]]}))), 1,
         ("flagged",), argv=("check", "{out}", "--junit", "{p}/j.xml"), run=True),
    # -- export --------------------------------------------------------------------------------
    Case("export/chunk-rows-0", "export --chunk-rows 0", None, 2, ("--chunk-rows",),
         argv=("export", "virelay", "{out}", "{p}/vr", "--chunk-rows", "0"), run=True),
    Case("export/users-project", "export over the user's project.yaml",
         lambda p: ((p / "vr").mkdir(), (p / "vr" / "project.yaml").write_text("mine")), 2,
         ("project.yaml", "refusing to overwrite"),
         argv=("export", "virelay", "{out}", "{p}/vr"), run=True),
    Case("export/into-run", "export into the run's own store", None, 2, ("would mix",),
         argv=("export", "virelay", "{out}", "{out}/spray.zarr"), run=True),
    Case("export/no-store", "export of a folder without a store", None, 2, ("no spray store",),
         argv=("export", "virelay", "{p}", "{p}/vr")),
]


# ------------------------------------------------------------------------------ the runner

def _files(root: Path, skip: Path) -> dict[str, str]:
    """Content hash of every file under ``root`` outside ``skip``."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and skip not in path.parents and path != skip:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def project_files(small_problem, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-base") / "project"
    root.mkdir()
    for name in ("data.npz", "weights.pt", "smallnet.py"):
        shutil.copy(small_problem["root"] / name, root / name)
    cfg = copy.deepcopy(small_problem["raw_config"])
    cfg["output"] = "out"
    cfg["attribution"]["chunk_size"] = 128
    cfg["pipeline"] = {"preset": "spray-default", "embedding": {"method": "none"}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture(scope="module")
def finished_project(project_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-run") / "project"
    shutil.copytree(project_files, root)
    proc = _spray(root, "run", root / "config.yaml", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return root


def _spray(cwd: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", GITHUB_ACTIONS="")
    return subprocess.run([sys.executable, "-m", "spray", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, project_files, tmp_path, request):
    base = tmp_path / "work"
    base.mkdir()
    p = base / "project"
    shutil.copytree(request.getfixturevalue("finished_project") if case.run else project_files, p)
    if case.setup is not None:
        case.setup(p)
    out = p / "out"
    had_out = out.exists()
    before = _files(p, out)
    argv = [a.format(cfg=p / "config.yaml", out=out, p=p) for a in case.argv]
    proc = _spray(p, *argv)
    said = proc.stdout + proc.stderr
    assert proc.returncode == case.code, said
    assert "Traceback" not in said, said
    for needle in case.needles:
        assert needle in said, (needle, said)
    after = _files(p, out)
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, f"user files changed or deleted: {changed}"
    new = set(after) - set(before) - {"j.xml"}
    assert not new, f"files written outside the output folder: {new}"
    assert sorted(x.name for x in base.iterdir()) == ["project"], "written next to the project"
    if case.code == 2 and not had_out:
        assert not out.exists(), "a refusal created the output folder"


def test_the_matrix_has_60_rows_and_is_documented():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    doc = (REPO / "docs" / "errors.md").read_text()
    assert doc == matrix_markdown(), "regenerate: python tests/test_hostile.py > docs/errors.md"


# ------------------------------------------------------------------------------ docs

#: docs/errors.md: free text above this line, the generated table below it
MARKER = "<!-- the rows below are generated from tests/test_hostile.py -->"
TABLE_HEAD = ("| case | situation | command | exit | the message names |\n"
              "|---|---|---|---|---|\n")


def matrix_markdown(doc: str | None = None) -> str:
    """docs/errors.md with its table regenerated from :data:`CASES` (text above the marker
    kept)."""
    doc = (REPO / "docs" / "errors.md").read_text() if doc is None else doc
    head = doc.split(MARKER)[0] + MARKER + "\n\n" + TABLE_HEAD
    rows = []
    for c in CASES:
        cmd = "spray " + " ".join(a.replace("{cfg}", "CONFIG").replace("{out}", "RUN")
                                  .replace("{p}", ".") for a in c.argv)
        needles = ", ".join(f"`{n}`" for n in c.needles)
        what = c.what.replace("|", "\\|")
        rows.append(f"| {c.id} | {what} | `{cmd}` | {c.code} | {needles} |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(matrix_markdown())
