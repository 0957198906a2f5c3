"""`attribution: {precomputed: PATH}`: analysing attributions made elsewhere, with no model."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import zarr
from conftest import write_config

from spray.config.run_config import load_config
from spray.data.precomputed import AttributionFile
from spray.errors import ConfigError, DataError
from spray.run.execute import run

FAST_PIPELINE = {"preset": "spray-default", "embedding": {"method": "none"}}


def _model(small_problem):
    import importlib.util

    spec = importlib.util.spec_from_file_location("smallnet_pre",
                                                  small_problem["root"] / "smallnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build()
    model.load_state_dict(torch.load(small_problem["root"] / "weights.pt", weights_only=True))
    return model.eval()


def _attribute(model, x: torch.Tensor, y: torch.Tensor):
    """LRP epsilon-plus-flat maps and outputs: with Zennit when installed, else with spray.lrp."""
    try:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat
    except ImportError:
        from spray import lrp

        with torch.no_grad():
            out = model(x)
        return out, lrp.attribute(model, x, y, composite="epsilon-plus-flat")
    with Gradient(model=model, composite=EpsilonPlusFlat()) as attributor:
        out, rel = attributor(x, torch.eye(3)[y])
    return out, rel


@pytest.fixture(scope="module")
def zennit_h5(small_problem, tmp_path_factory):
    """An attribution database written the way Zennit-based scripts do (ViRelAy's format):
    ``attribution`` float32 (N, C, H, W), ``prediction`` float32 (N, K), ``label`` uint16 (N,),
    filled batch by batch into preallocated datasets."""
    root = tmp_path_factory.mktemp("zennit")
    x, y = small_problem["x"], small_problem["y"]
    model = _model(small_problem)
    path = root / "attributions.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("attribution", shape=(len(x),) + x.shape[1:], dtype="float32")
        fh.create_dataset("prediction", shape=(len(x), 3), dtype="float32")
        fh.create_dataset("label", shape=(len(x),), dtype="uint16")
        for start in range(0, len(x), 64):
            xb = torch.as_tensor(x[start:start + 64])
            yb = torch.as_tensor(y[start:start + 64])
            out, rel = _attribute(model, xb, yb)
            fh["attribution"][start:start + len(xb)] = rel.detach().numpy()
            fh["prediction"][start:start + len(xb)] = out.detach().numpy()
            fh["label"][start:start + len(xb)] = yb.numpy()
    with h5py.File(path, "r") as fh:
        arrays = {k: fh[k][...] for k in fh}
    return path, arrays


def _config(small_problem, root, precomputed, **extra):
    config = {
        "data": {"source": "npz", "path": str(small_problem["root"] / "data.npz")},
        "attribution": {"precomputed": str(precomputed), "chunk_size": 64},
        "class_names": ["zero", "one", "two"],
        "pipeline": FAST_PIPELINE,
        "cluster": {"scheduler": "threads", "n_workers": 2, "progress": False},
        "output": "run",
    }
    config.update(extra)
    return write_config(root, "config.yaml", config)


def _direct_eigenvalues(maps: np.ndarray, labels: np.ndarray, pipeline) -> dict:
    """spray's analysis on the same arrays, without the pipeline around it."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline

    pipe = load_pipeline("spray-default", overrides={"embedding": {"method": "none"}})
    result = {}
    for c in np.unique(labels):
        features = preprocess(maps[labels == c], pipe["preprocess"])
        result[int(c)] = analyze(features, pipeline=pipe, embed=False).eigenvalues
    return result


@pytest.fixture(scope="module")
def precomputed_run(small_problem, zennit_h5, tmp_path_factory):
    path, _ = zennit_h5
    root = tmp_path_factory.mktemp("pre_run")
    cfg, base = load_config(_config(small_problem, root, path))
    info = run(cfg, base, output=str(root / "run"), quiet=True)
    return root / "run", info


def test_same_eigenvalues_as_direct_analysis(zennit_h5, precomputed_run):
    _, arrays = zennit_h5
    run_dir, info = precomputed_run
    assert info["chunks_computed"] == info["chunks_total"] > 0
    group = zarr.open_group(str(run_dir / "spray.zarr"), mode="r")
    labels = arrays["label"].astype(np.int64)
    direct = _direct_eigenvalues(arrays["attribution"], labels, FAST_PIPELINE)
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    by_class = {e["class"]: e for e in summary["classes"]}
    for c, lam in direct.items():
        cg = group["classes"][str(c)]
        np.testing.assert_array_equal(cg["index"][:], np.flatnonzero(labels == c))
        np.testing.assert_allclose(cg["relevance"][:], arrays["attribution"][labels == c].sum(1),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(cg["eigenvalues"][:], lam, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(by_class[c]["eigenvalues"], lam, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(cg["logits"][:], arrays["prediction"][labels == c])
    assert (run_dir / "report" / "index.html").is_file()
    assert group.attrs["fingerprints"]["model"].startswith("precomputed-")


def test_accuracy_in_the_report_with_and_without_predictions(small_problem, zennit_h5,
                                                            precomputed_run, tmp_path):
    """With predictions the report gives each class's accuracy; without, it says it is unknown
    (not 0)."""
    _, arrays = zennit_h5
    run_dir, _ = precomputed_run
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    labels = arrays["label"].astype(np.int64)
    predicted = arrays["prediction"].argmax(1)
    for entry in summary["classes"]:
        c = entry["class"]
        assert entry["accuracy"] == pytest.approx(np.mean(predicted[labels == c] == c))
    path = tmp_path / "no_prediction.h5"
    with h5py.File(path, "w") as fh:
        fh["attribution"] = arrays["attribution"]
        fh["label"] = arrays["label"]
    cfg, base = load_config(_config(small_problem, tmp_path, path, classes=[1],
                                    class_names=["zero", "one", "two"]))
    run(cfg, base, output=str(tmp_path / "run"), quiet=True)
    summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
    assert [e["accuracy"] for e in summary["classes"]] == [None]
    page = next((tmp_path / "run" / "report").glob("class_*.html")).read_text()
    assert "model accuracy on them unknown (no predictions)" in page


def test_fingerprint_is_stable_and_follows_the_file(zennit_h5, tmp_path):
    """Resuming compares this fingerprint: same file, same hash; other maps, another hash."""
    path, arrays = zennit_h5
    first, second = AttributionFile(str(path)), AttributionFile(str(path))
    assert first.fingerprint() == second.fingerprint()
    changed = tmp_path / "changed.h5"
    with h5py.File(changed, "w") as fh:
        for key, value in arrays.items():
            fh[key] = value
        fh["attribution"][0] = fh["attribution"][0] * 2
    assert AttributionFile(str(changed)).fingerprint() != first.fingerprint()
    first.close()
    second.close()


def _write(kind: str, arrays: dict, tmp_path):
    att, lab, pred = arrays["attribution"], arrays["label"], arrays["prediction"]
    if kind == "npz":
        path = tmp_path / "att.npz"
        np.savez(path, relevance=att[:, 0], labels=lab.astype(np.int64), logits=pred)
    elif kind == "npy":
        path = tmp_path / "att.npy"
        np.save(path, att)
    else:
        path = tmp_path / "att.zarr"
        g = zarr.open_group(str(path), mode="w")
        for key, value in arrays.items():
            g.create_array(key, data=value)
    return path


@pytest.mark.parametrize("kind", ["npz", "npy", "zarr"])
def test_other_containers_read_the_same(kind, small_problem, zennit_h5, tmp_path):
    """.npz (3-D maps, other key names), a bare .npy, a Zarr group: same plan, same rows."""
    from types import SimpleNamespace

    from spray.data.precomputed import class_rows, plan_run
    from spray.data.sources import open_source

    path, arrays = zennit_h5
    source = open_source({"source": "npz", "path": str(small_problem["root"] / "data.npz")})
    ref = AttributionFile(str(path))
    other = AttributionFile(str(_write(kind, arrays, tmp_path)))
    cfg = SimpleNamespace(attribution=SimpleNamespace(precomputed=other.path), classes="all",
                          class_names=["zero", "one", "two"])
    plan = plan_run(cfg, source)
    assert plan.n_outputs == 3 and plan.sample_shape == small_problem["x"].shape[1:]
    labels = small_problem["y"]
    for c in range(3):
        np.testing.assert_array_equal(plan.parts[c], np.flatnonzero(labels == c))
        rows = class_rows(other, c, labels)
        np.testing.assert_array_equal(other.maps(rows), ref.maps(rows))
        if kind != "npy":
            np.testing.assert_array_equal(other.logits(rows, 3)[0], ref.logits(rows, 3)[0])
    ref.close()
    other.close()


def test_rows_in_another_order_with_an_index(small_problem, zennit_h5, precomputed_run,
                                             tmp_path):
    """An HDF5 whose rows are shuffled and carry an ``index``: the same maps per sample."""
    _, arrays = zennit_h5
    ref = zarr.open_group(str(precomputed_run[0] / "spray.zarr"), mode="r")
    path = tmp_path / "shuffled.h5"
    order = np.random.default_rng(0).permutation(len(arrays["label"]))
    with h5py.File(path, "w") as fh:
        for key in ("attribution", "prediction", "label"):
            fh[key] = arrays[key][order]
        fh["index"] = order.astype(np.uint32)
    cfg, base = load_config(_config(small_problem, tmp_path, path, classes=[1]))
    run(cfg, base, output=str(tmp_path / "run"), quiet=True)
    group = zarr.open_group(str(tmp_path / "run" / "spray.zarr"), mode="r")
    assert sorted(group["classes"]) == ["1"]
    for c in [1]:
        cg, rg = group["classes"][str(c)], ref["classes"][str(c)]
        np.testing.assert_array_equal(cg["index"][:], order[arrays["label"][order] == c])
        back = np.argsort(cg["index"][:])
        np.testing.assert_array_equal(cg["index"][:][back], rg["index"][:])
        np.testing.assert_allclose(cg["relevance"][:][back], rg["relevance"][:], rtol=1e-6)
        assert cg.attrs["analysis"] is not None


def test_group_form_and_one_hot_labels(zennit_h5, tmp_path):
    """The per-sample group form of ViRelAy's format, with one-hot labels."""
    _, arrays = zennit_h5
    path = tmp_path / "groups.h5"
    n = 12
    with h5py.File(path, "w") as fh:
        g = fh.create_group("attribution")
        for i in range(n):
            g[f"s{i:03d}"] = arrays["attribution"][i]
        fh["label"] = np.eye(3, dtype=bool)[arrays["label"][:n]]
        fh["prediction"] = arrays["prediction"][:n].argmax(1).astype(np.uint16)  # class indices
    f = AttributionFile(str(path))
    assert f.n_rows == n and f.sample_shape == arrays["attribution"].shape[1:]
    np.testing.assert_array_equal(f.labels(), arrays["label"][:n])
    np.testing.assert_array_equal(f.maps(np.array([2, 5])), arrays["attribution"][[2, 5]])
    assert f.n_outputs() is None
    logits, prediction = f.logits(np.arange(n), 3)
    np.testing.assert_array_equal(prediction, arrays["prediction"][:n].argmax(1))
    np.testing.assert_array_equal(logits, np.eye(3, dtype=np.float32)[prediction])
    f.close()


def test_bad_files_are_named(small_problem, zennit_h5, tmp_path, capsys):
    from spray.cli.main import main

    _, arrays = zennit_h5
    multi = tmp_path / "multi.h5"
    with h5py.File(multi, "w") as fh:
        fh["attribution"] = arrays["attribution"][:4]
        fh["label"] = np.ones((4, 3), dtype=bool)
    with pytest.raises(DataError, match="multi-label"):
        AttributionFile(str(multi))

    small = tmp_path / "small.npy"
    np.save(small, arrays["attribution"][:, :, :8, :8])
    assert main(["run", str(_config(small_problem, tmp_path, small)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "small.npy" in err and "height and width" in err

    far = tmp_path / "far.h5"
    with h5py.File(far, "w") as fh:
        fh["attribution"] = arrays["attribution"][:5]
        fh["label"] = arrays["label"][:5]
        fh["index"] = np.array([0, 1, 2, 3, 10 ** 6])
    cfg, base = load_config(_config(small_problem, tmp_path, far))
    with pytest.raises(DataError, match="dataset index 1000000"):
        run(cfg, base, output=str(tmp_path / "far-run"), quiet=True)


def test_model_optional_only_with_precomputed(small_problem, tmp_path):
    config = {"data": {"source": "npz", "path": str(small_problem["root"] / "data.npz")}}
    path = write_config(tmp_path, "nomodel.yaml", config)
    with pytest.raises(ConfigError, match="'model'"):
        load_config(path)
    config["attribution"] = {"precomputed": "missing.h5"}
    path = write_config(tmp_path, "nomodel.yaml", config)
    with pytest.raises(ConfigError, match="attribution.precomputed"):
        load_config(path)


@pytest.mark.peers
def test_export_of_a_precomputed_run_opens_in_virelay(precomputed_run, tmp_path):
    pytest.importorskip("virelay")
    from virelay.model import Workspace
    from virelay.server import Server

    from spray.export.virelay import ANALYSIS_METHOD, SPRAY_CLUSTERING, export_virelay

    run_dir, _ = precomputed_run
    info = export_virelay(run_dir, tmp_path / "virelay")
    assert info["classes"] == [0, 1, 2]
    workspace = Workspace()
    workspace.add_project(info["project"])
    try:
        client = Server(workspace).app.test_client()
        assert client.get("/api/projects/0").status_code == 200
        group = zarr.open_group(str(run_dir / "spray.zarr"), mode="r")
        for c in range(3):
            i = int(group["classes"][str(c)]["index"][0])
            for url in (f"/api/projects/0/dataset/{i}/image",
                        f"/api/projects/0/attributions/{i}/heatmap?superimpose=true",
                        f"/api/projects/0/analyses/{ANALYSIS_METHOD.replace('_', '-')}?category={c}"
                        f"&clustering={SPRAY_CLUSTERING}&embedding=spectral"):
                assert client.get(url).status_code == 200, url
    finally:
        workspace.close()
