"""`spray export virelay`: a spray run written as a ViRelAy project and opened by ViRelAy itself."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
import zarr
from conftest import write_config

from spray.config.run_config import load_config
from spray.export.virelay import ANALYSIS_METHOD, SPRAY_CLUSTERING, export_virelay, pixel_range
from spray.run.execute import run


@pytest.fixture(scope="module")
def exported_run(small_problem, tmp_path_factory):
    """A small spray run (3 classes, t-SNE, threads) and its ViRelAy export."""
    root = tmp_path_factory.mktemp("export")
    cfg, base = load_config(small_problem["config"])
    run(cfg, base, output=str(root / "run"), quiet=True)
    info = export_virelay(root / "run", root / "virelay", chunk_rows=50)
    return root / "run", root / "virelay", info


def _store(run_dir: Path):
    return zarr.open_group(str(run_dir / "spray.zarr"), mode="r")


def test_files_follow_the_loader(exported_run, small_problem):
    run_dir, out, info = exported_run
    group = _store(run_dir)
    classes = sorted(int(c) for c in group["classes"])
    assert info["classes"] == classes and not info["skipped"]
    project = yaml.safe_load((out / "project.yaml").read_text())["project"]
    assert project["dataset"]["type"] == "hdf5"
    assert "-" not in project["analyses"][0]["analysis_method"]
    labels = json.loads((out / "label-map.json").read_text())
    assert [e["word_net_id"] for e in labels] == ["0", "1", "2"]
    assert [e["name"] for e in labels] == ["zero", "one", "two"]

    x, y = small_problem["x"], small_problem["y"]
    with h5py.File(out / "dataset.h5", "r") as fh:
        assert fh["data"].dtype == np.uint8 and fh["data"].shape == (len(y), 3) + x.shape[2:]
        np.testing.assert_array_equal(fh["label"][:], y)
        np.testing.assert_array_equal(fh["data"][5, 0], np.rint(x[5, 0] * 255).astype(np.uint8))
        np.testing.assert_array_equal(fh["data"][5, 0], fh["data"][5, 2])

    with h5py.File(out / "attribution.h5", "r") as fh:
        att, index, lab = fh["attribution"], fh["index"][:], fh["label"][:]
        assert att.dtype == np.float32 and att.ndim == 4 and att.shape[1] > 1
        assert fh["prediction"].shape == (len(y), 3) and fh["prediction"].dtype == np.float32
        assert sorted(index.tolist()) == list(range(len(y)))
        for c in classes:
            cg = group["classes"][str(c)]
            rows = np.flatnonzero(lab == c)
            np.testing.assert_array_equal(index[rows], cg["index"][:])
            np.testing.assert_allclose(att[rows[0]:rows[-1] + 1].sum(axis=1), cg["relevance"][:],
                                       rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(fh["prediction"][rows[0]:rows[-1] + 1], cg["logits"][:])

    with h5py.File(out / "analysis.h5", "r") as fh:
        assert sorted(fh.keys()) == [str(c) for c in classes]
        for c in classes:
            cg, grp = group["classes"][str(c)], fh[str(c)]
            np.testing.assert_array_equal(grp["index"][:], cg["index"][:])
            spectral = grp["embedding"]["spectral"]
            lam = cg["eigenvalues"][:]
            np.testing.assert_allclose(spectral.attrs["eigenvalue"], lam[::-1], rtol=1e-6)
            np.testing.assert_allclose(spectral[:, -1], cg["eigenvectors"][:, 0], rtol=1e-6)
            assert grp["embedding"]["tsne"].shape == (cg.attrs["n_samples"], 2)
            np.testing.assert_array_equal(grp["cluster"][SPRAY_CLUSTERING][:], cg["labels"][:])
            k = cg.attrs["analysis"]["n_clusters"]
            assert f"kmeans-{max(k, 2)}" in grp["cluster"]
        names = [sorted(fh[str(c)]["cluster"]) for c in classes]
        assert all(n == names[0] for n in names), "every class needs the same clusterings"


def test_chunk_size_does_not_change_the_files(exported_run, tmp_path):
    run_dir, out, _ = exported_run
    export_virelay(run_dir, tmp_path / "big", chunk_rows=10_000)
    for name in ("dataset.h5", "attribution.h5"):
        with h5py.File(out / name, "r") as a, h5py.File(tmp_path / "big" / name, "r") as b:
            for key in a:
                np.testing.assert_array_equal(a[key][...], b[key][...])


def test_round_trip_through_precomputed(exported_run, tmp_path):
    """The exported files read back as a spray run (dataset.h5 as data, attribution.h5 as
    precomputed attributions) give the original run's classes and eigenvalues."""
    run_dir, out, _ = exported_run
    config = {
        "data": {"source": "hdf5", "path": str(out / "dataset.h5"), "x_key": "data",
                 "y_key": "label", "scale": 1 / 255},
        "attribution": {"precomputed": str(out / "attribution.h5"), "chunk_size": 64},
        "classes": [1], "class_names": ["zero", "one", "two"],
        "pipeline": {"preset": "spray-default", "embedding": {"method": "none"}},
        "cluster": {"scheduler": "threads", "n_workers": 2, "progress": False},
    }
    cfg, base = load_config(write_config(tmp_path, "back.yaml", config))
    run(cfg, base, output=str(tmp_path / "back"), quiet=True)
    original, back = _store(run_dir), _store(tmp_path / "back")
    assert sorted(back["classes"]) == ["1"]
    for c in ["1"]:
        a, b = original["classes"][c], back["classes"][c]
        np.testing.assert_array_equal(a["index"][:], b["index"][:])
        np.testing.assert_allclose(b["relevance"][:], a["relevance"][:], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b["eigenvalues"][:], a["eigenvalues"][:], rtol=1e-4, atol=1e-7)


def test_pixel_range():
    assert pixel_range(0.0, 0.3) == (0.0, 1.0)
    assert pixel_range(-0.8, 0.9) == (-1.0, 1.0)
    assert pixel_range(0.0, 200.0) == (0.0, 255.0)
    assert pixel_range(-2.1, 2.6) == (-2.1, 2.6)


def test_cli_export_and_errors(exported_run, tmp_path, capsys):
    from spray.cli.main import main

    run_dir, _, _ = exported_run
    assert main(["export", "virelay", str(run_dir), str(tmp_path / "cli"), "--no-index"]) == 0
    assert (tmp_path / "cli" / "project.yaml").is_file()
    assert "virelay " in capsys.readouterr().out
    assert main(["export", "virelay", str(tmp_path / "nothing"), str(tmp_path / "out2")]) == 2
    assert "no spray store" in capsys.readouterr().err
    assert main(["export", "virelay", str(run_dir), str(run_dir / "spray.zarr" / "x")]) == 2
    assert "choose another folder" in capsys.readouterr().err


@pytest.mark.peers
def test_virelay_opens_the_export(exported_run):
    """ViRelAy's own loader and web API serve every class of the exported run."""
    pytest.importorskip("virelay")
    run_dir, out, _ = exported_run
    _check_with_virelay(run_dir, out)


@pytest.mark.peers
def test_virelay_opens_the_export_without_index(exported_run, tmp_path):
    """Rows aligned with dataset indices, no ``index``: ViRelAy's constant-time lookup path."""
    pytest.importorskip("virelay")
    run_dir, _, _ = exported_run
    export_virelay(run_dir, tmp_path / "dense", with_index=False)
    group = _store(run_dir)
    with h5py.File(tmp_path / "dense" / "attribution.h5", "r") as fh:
        assert "index" not in fh
        for c in group["classes"]:
            cg = group["classes"][c]
            index = cg["index"][:]
            np.testing.assert_allclose(fh["attribution"][index[:20]].sum(axis=1),
                                       cg["relevance"][:20], rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(fh["label"][index], int(c))
    _check_with_virelay(run_dir, tmp_path / "dense")


def _check_with_virelay(run_dir: Path, out: Path):
    from virelay.model import Workspace
    from virelay.server import Server

    group = _store(run_dir)
    classes = sorted(int(c) for c in group["classes"])
    workspace = Workspace()
    workspace.add_project(str(out / "project.yaml"))
    try:
        project = workspace.projects[0]
        assert project.get_analysis_methods() == [ANALYSIS_METHOD]
        assert sorted(c.name for c in project.get_analysis_categories(ANALYSIS_METHOD)) == \
            [str(c) for c in classes]
        embeddings = project.get_analysis_embedding_names(ANALYSIS_METHOD)
        assert set(embeddings) == {"spectral", "tsne"}
        clusterings = project.get_analysis_clustering_names(ANALYSIS_METHOD)
        assert SPRAY_CLUSTERING in clusterings

        client = Server(workspace).app.test_client()
        assert client.get("/api/projects").status_code == 200
        res = client.get("/api/projects/0")
        assert res.status_code == 200
        method = res.get_json()["analysisMethods"][0]
        assert {c["name"] for c in method["categories"]} == {str(c) for c in classes}
        assert {c["humanReadableName"] for c in method["categories"]} == {"zero", "one", "two"}
        for c in classes:
            cg = group["classes"][str(c)]
            index = cg["index"][:]
            for i in (int(index[0]), int(index[-1])):
                for url in (f"/api/projects/0/dataset/{i}", f"/api/projects/0/dataset/{i}/image",
                            f"/api/projects/0/attributions/{i}?imageMode=overlay",
                            f"/api/projects/0/attributions/{i}/heatmap?colorMap=black-fire-red",
                            f"/api/projects/0/attributions/{i}/heatmap?colorMap=gray-red"
                            f"&superimpose=true"):
                    res = client.get(url)
                    assert res.status_code == 200, (url, res.data[:300])
                sample = client.get(f"/api/projects/0/dataset/{i}").get_json()
                assert sample["labels"][0]["index"] == c
                attribution = client.get(f"/api/projects/0/attributions/{i}").get_json()
                assert attribution["labels"][0]["index"] == c
            res = client.get(f"/api/projects/0/attributions?indices="
                             f"{','.join(str(int(i)) for i in index[:5])}&imageMode=attribution")
            assert res.status_code == 200 and len(res.get_json()) == 5
            for embedding in embeddings:
                for clustering in clusterings:
                    url = (f"/api/projects/0/analyses/{ANALYSIS_METHOD.replace('_', '-')}"
                           f"?category={c}&clustering={clustering}&embedding={embedding}")
                    res = client.get(url)
                    assert res.status_code == 200, (url, res.data[:300])
            spectral = client.get(f"/api/projects/0/analyses/{ANALYSIS_METHOD.replace('_', '-')}"
                                  f"?category={c}&clustering={SPRAY_CLUSTERING}"
                                  f"&embedding=spectral").get_json()
            np.testing.assert_allclose(spectral["eigenvalues"][::-1], cg["eigenvalues"][:],
                                       rtol=1e-6, atol=1e-7)
            points = spectral["embedding"]
            assert [p["attributionIndex"] for p in points] == index.tolist()
            assert [p["cluster"] for p in points] == cg["labels"][:].tolist()
    finally:
        workspace.close()


def _synthetic_run(root: Path, n: int, size: int, channels: int = 1) -> Path:
    """A run folder made directly through the store API: two classes of ``n // 2`` samples of
    ``size × size`` pixels (dataset in HDF5, read lazily), analysis arrays included."""
    from spray.store import create_or_check_store, prepare_class, write_array

    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    with h5py.File(root / "data.h5", "w") as fh:
        x = fh.create_dataset("x", shape=(n, channels, size, size), dtype=np.float32,
                              chunks=(min(64, n), channels, size, size))
        for start in range(0, n, 256):
            x[start:start + 256] = rng.random((min(256, n - start), channels, size, size),
                                              np.float32)
        fh["y"] = labels
    run_dir = root / "run"
    group = create_or_check_store(run_dir, {"model": "m", "data": "d", "attribution": "a"},
                                  "h", [0, 1])
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        cg = prepare_class(group, c, f"class {c}", idx, (channels, size, size), 2, 256,
                           store_channels=channels > 1)
        for start in range(0, len(idx), 256):
            rows = min(256, len(idx) - start)
            full = rng.standard_normal((rows, channels, size, size), np.float32)
            cg["relevance"][start:start + rows] = full.sum(axis=1)
            if channels > 1:
                cg["relevance_full"][start:start + rows] = full
        cg["logits"][:] = rng.standard_normal((len(idx), 2)).astype(np.float32)
        cg["done"][:] = True
        write_array(cg, "eigenvalues", np.linspace(0, 0.5, 8))
        write_array(cg, "eigenvectors", rng.standard_normal((len(idx), 8)).astype(np.float32))
        write_array(cg, "labels", (np.arange(len(idx)) % 2).astype(np.int64))
        cg.attrs["analysis"] = {"n_clusters": 2, "k": 5}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "data": {"source": "hdf5", "path": str(root / "data.h5"), "x_key": "x", "y_key": "y"},
        "pipeline": {"clustering": {"method": "kmeans", "seed": 0, "n_init": 1}}}))
    return run_dir


def test_export_memory_is_bounded_by_chunk_rows(tmp_path):
    """The export's peak allocation does not grow with the run: 4× the samples (2 000 maps of
    48×48, ≈ 53 MiB as float32 RGB attributions) in chunks of 100 samples peak about the same."""
    import tracemalloc

    peaks = {}
    for n in (500, 2000):
        (tmp_path / str(n)).mkdir()
        run_dir = _synthetic_run(tmp_path / str(n), n, 48)
        tracemalloc.start()
        try:
            info = export_virelay(run_dir, tmp_path / str(n) / "out", chunk_rows=100)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert info["attributions"] == n and info["classes"] == [0, 1]
    per_sample = 3 * 48 * 48 * 4
    full = 2000 * per_sample
    # per-class analysis arrays (eigenvectors, t-SNE, labels) are O(n) and small; the
    # attributions themselves must not be held: growth per extra sample stays far below one map
    assert (peaks[2000] - peaks[500]) / 1500 < 0.25 * per_sample, peaks
    assert peaks[2000] < full / 3, f"peak {peaks[2000] / 2**20:.1f} MiB"
    group = _store(run_dir)
    with h5py.File(tmp_path / "2000" / "out" / "attribution.h5", "r") as fh:
        np.testing.assert_allclose(fh["attribution"][1000:1010].sum(axis=1),
                                   group["classes"]["1"]["relevance"][:10], rtol=1e-5, atol=1e-6)


def test_rgb_run_with_stored_channels(tmp_path):
    """RGB samples stay RGB; per-channel maps (store_channels) are exported as they are."""
    run_dir = _synthetic_run(tmp_path, 40, 12, channels=3)
    export_virelay(run_dir, tmp_path / "out", chunk_rows=7)
    group = _store(run_dir)
    with h5py.File(tmp_path / "data.h5", "r") as fh:
        x = fh["x"][...]
    with h5py.File(tmp_path / "out" / "dataset.h5", "r") as fh:
        np.testing.assert_array_equal(fh["data"][...], np.rint(x * 255).astype(np.uint8))
    with h5py.File(tmp_path / "out" / "attribution.h5", "r") as fh:
        assert fh["attribution"].shape == (40, 3, 12, 12)
        full = group["classes"]["0"]["relevance_full"][:]
        np.testing.assert_array_equal(fh["attribution"][:20], full)
        np.testing.assert_array_equal(fh["index"][:20], group["classes"]["0"]["index"][:])


def test_export_reopens_a_factory_dataset_from_the_config_folder(small_problem, tmp_path):
    """A ``factory`` data source lives next to the config; ``spray export`` run later, from
    another directory in a fresh process, still finds it (run.json records the config folder)."""
    import shutil

    from conftest import run_cli
    from scale_support import DATASET_MODULE

    project = tmp_path / "project"
    project.mkdir()
    (project / "exportdata.py").write_text(DATASET_MODULE)
    for name in ("smallnet.py", "weights.pt", "data.npz"):
        shutil.copy(Path(small_problem["root"]) / name, project / name)
    config = {
        "data": {"source": "factory", "factory": "exportdata:build",
                 "kwargs": {"path": str(project / "data.npz")}},
        "model": {"factory": "smallnet:build", "weights": "weights.pt"},
        "classes": [1],
        "class_names": ["zero", "one", "two"],
        "pipeline": {"preset": "spray-default", "embedding": {"method": "none"}},
        "cluster": {"scheduler": "threads", "n_workers": 1, "progress": False},
        "output": "run",
    }
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_cli("run", project / "config.yaml", "--output", project / "run", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert json.loads((project / "run" / "run.json").read_text())["config_dir"] == str(project)
    done = run_cli("export", "virelay", project / "run", tmp_path / "virelay", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    x, y = small_problem["x"], small_problem["y"]
    with h5py.File(tmp_path / "virelay" / "dataset.h5", "r") as fh:
        np.testing.assert_array_equal(fh["data"][7, 0], np.rint(x[7, 0] * 255).astype(np.uint8))
        np.testing.assert_array_equal(fh["label"][:], y)
