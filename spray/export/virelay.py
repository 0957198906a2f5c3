"""Export a spray run as a ViRelAy project (``spray export virelay RUN_DIR OUT_DIR``).

Writes, with h5py, reading the run's store and dataset a chunk of samples at a time (memory
stays bounded by ``chunk_rows`` samples, whatever the size of the run)::

    OUT_DIR/project.yaml        the ViRelAy project (open it with ``virelay OUT_DIR/project.yaml``)
    OUT_DIR/label-map.json      [{index, word_net_id, name}], one entry per class
    OUT_DIR/dataset.h5          data  uint8 (N, 3, H, W) the samples before normalization,
                                      rescaled to 0..255, gray repeated to RGB; only the samples
                                      of the run are written (other rows stay unallocated zeros)
                                label uint16 (N,)   (row = dataset index, N = dataset size)
    OUT_DIR/attribution.h5      attribution float32 (n, C, H, W) with C > 1: the stored
                                      per-channel maps, or the channel-summed map spread evenly
                                      over 3 channels (its channel sum is spray's map)
                                prediction float32 (n, K)  the model's outputs
                                label uint16 (n,)          the class the row was analysed in
                                index uint32 (n,)          dataset index of the row
    OUT_DIR/analysis.h5         one group per analysed class, named by its label-map id
                                (``word_net_id`` = the class index as text):
                                  index (n_c,)                     dataset indices
                                  embedding/spectral (n_c, m)      eigenvectors of L_sym, with
                                      attribute ``eigenvalue`` (m,) in descending order (the
                                      order CoRelAy writes and ViRelAy's plot expects; the
                                      columns follow the same order)
                                  embedding/tsne (n_c, 2)          when the run computed t-SNE
                                  cluster/kmeans-<k> (n_c,)        k-means on the eigenvectors for
                                      every k in 2..max chosen K, the same k in every class
                                      (ViRelAy lists the clusterings of the first class only)
                                  cluster/spray-eigengap (n_c,)    spray's own clustering
                                      (its K from the eigengap), attribute ``n_clusters``

What ViRelAy's loader requires (and its format description does not say): embeddings and
clusterings are plain datasets (not groups with a ``root`` member), the clustering group is
called ``cluster``, the eigenvalues are an attribute ``eigenvalue`` of the spectral dataset,
analysis group names are looked up as WordNet ids in the label map, the analysis ``index`` holds
the attribution file's ``index`` values (dataset indices), attributions need more than one
channel to render, single-channel images cannot be served (so gray is repeated to RGB), and an
analysis method name must not contain ``-`` (the web API swaps ``-`` and ``_``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from spray.errors import DataError, SprayError, StoreError

ANALYSIS_METHOD = "spectral_analysis"
FILES = {"project": "project.yaml", "label_map": "label-map.json", "dataset": "dataset.h5",
         "attribution": "attribution.h5", "analysis": "analysis.h5"}
SPRAY_CLUSTERING = "spray-eigengap"
CHUNK_BYTES = 1 << 20


def _rows_per_chunk(row_shape: tuple, itemsize: int, n: int) -> int:
    """HDF5 chunk rows so one chunk is about 1 MiB (ViRelAy reads one sample at a time)."""
    per_row = max(1, int(np.prod(row_shape)) * itemsize)
    return int(max(1, min(n, CHUNK_BYTES // per_row)))


def _label_dtype(top: int):
    return np.uint16 if top < 2 ** 16 else np.uint32


def _to_rgb(batch: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> (n, 3, H, W): gray repeated, RGB kept, other channel counts averaged."""
    c = batch.shape[1]
    if c == 3:
        return batch
    if c > 3:
        return batch[:, :3]
    gray = batch.mean(axis=1, keepdims=True)
    return np.repeat(gray, 3, axis=1)


def pixel_range(lo: float, hi: float) -> tuple[float, float]:
    """The value range the samples are in: [0, 1], [-1, 1], [0, 255], or their own min/max."""
    for a, b in ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)):
        if lo >= a and hi <= b:
            return a, b
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def to_uint8(batch: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    a, b = value_range
    scaled = np.array(batch, dtype=np.float32)  # one float32 copy, then in place
    scaled -= np.float32(a)
    scaled *= np.float32(255.0 / (b - a))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _spread_channels(maps: np.ndarray, channels: int = 3) -> np.ndarray:
    """(n, H, W) -> (n, channels, H, W), each channel map / channels (channel sum = map)."""
    return np.repeat((maps / np.float32(channels))[:, None], channels, axis=1)


class _Run:
    """What the export reads from a run folder."""

    def __init__(self, run_dir: Path):
        from spray.store import open_store

        self.dir = run_dir
        self.group = open_store(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise StoreError(f"{run_dir}: config.yaml is missing; the export needs the config the "
                             f"run was made with (its dataset in particular)")
        self.config = yaml.safe_load(cfg_path.read_text()) or {}
        classes = self.group["classes"] if "classes" in self.group else {}  # noqa: SIM401 - a Zarr group
        self.classes = {}
        self.skipped = {}
        for key in sorted(classes, key=int):
            cg = classes[key]
            if not bool(np.all(cg["done"][:])):
                self.skipped[int(key)] = "its relevance maps are incomplete (rerun 'spray run')"
                continue
            self.classes[int(key)] = cg
        if not self.classes:
            raise StoreError(f"{run_dir}: no class with finished relevance maps to export")
        first = next(iter(self.classes.values()))
        self.n_outputs = int(first["logits"].shape[1])
        self.map_shape = tuple(first["relevance"].shape[1:])
        self.full = "relevance_full" in first and first["relevance_full"].shape[1] > 1

    def analysed(self) -> dict:
        return {c: cg for c, cg in self.classes.items() if cg.attrs.get("analysis") is not None
                and "eigenvectors" in cg and "labels" in cg}

    def class_name(self, c: int) -> str:
        if c in self.classes:
            return str(self.classes[c].attrs.get("name", c))
        names = self.config.get("class_names")
        if names and c < len(names):
            return str(names[c])
        return str(c)


def _config_dir(run_dir: Path) -> str | None:
    """The folder of the config the run was made with (``factory`` modules live there)."""
    try:
        return json.loads((run_dir / "run.json").read_text()).get("config_dir")
    except (OSError, ValueError):
        return None


def _open_source(run: _Run):
    from spray.data.sources import open_source

    data_cfg = run.config.get("data")
    if not isinstance(data_cfg, dict):
        raise StoreError(f"{run.dir}/config.yaml has no 'data' section; cannot find the samples")
    try:
        return open_source(data_cfg, _config_dir(run.dir))
    except (OSError, ValueError) as err:
        where = data_cfg.get("path") or data_cfg.get("source")
        raise DataError(f"the dataset of the run ({where}) "
                        f"cannot be opened for the export: {err}") from None


def _display(source, indices: np.ndarray) -> np.ndarray:
    load = getattr(source, "load_display", None) or source.load
    return np.asarray(load(np.asarray(indices, dtype=np.int64)), dtype=np.float32)


def _label_map(run: _Run, labels: np.ndarray) -> list[dict]:
    top = max(run.n_outputs, int(labels.max()) + 1 if len(labels) else 0)
    return [{"index": i, "word_net_id": str(i), "name": run.class_name(i)} for i in range(top)]


def _write_dataset(path: Path, run: _Run, source, chunk_rows: int) -> tuple[int, int]:
    import h5py

    labels = np.asarray(source.labels(), dtype=np.int64)
    n = len(labels)
    shape = tuple(source.sample_shape)
    height, width = shape[-2], shape[-1]
    run_rows = np.sort(np.concatenate([cg["index"][:] for cg in run.classes.values()]))
    lo, hi = np.inf, -np.inf
    for start in range(0, len(run_rows), chunk_rows):  # pass 1: the value range of the samples
        batch = _display(source, run_rows[start:start + chunk_rows])
        lo, hi = min(lo, float(batch.min())), max(hi, float(batch.max()))
    value_range = pixel_range(lo, hi)
    rows = _rows_per_chunk((3, height, width), 1, n)
    with h5py.File(path, "w") as fh:
        data = fh.create_dataset("data", shape=(n, 3, height, width), dtype=np.uint8,
                                 chunks=(rows, 3, height, width), compression="gzip",
                                 compression_opts=4, fillvalue=0)
        fh.create_dataset("label", data=labels.astype(_label_dtype(int(labels.max()) + 1)))
        fh.attrs["value_range"] = np.asarray(value_range, dtype=np.float64)
        fh.attrs["written_by"] = "spray"
        for start in range(0, len(run_rows), chunk_rows):  # pass 2: write, chunk by chunk
            idx = run_rows[start:start + chunk_rows]
            rgb = to_uint8(_to_rgb(_display(source, idx)), value_range)
            for rows, part in _segments(idx):  # consecutive indices: one slice write
                data[rows] = rgb[part]
    return height, width


def _segments(positions: np.ndarray):
    """Split ascending-or-not target rows into runs of consecutive values: (slice, part)."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    for part in np.split(np.arange(len(positions)), breaks):
        yield slice(int(positions[part[0]]), int(positions[part[-1]]) + 1), part


def _write_attribution(path: Path, run: _Run, chunk_rows: int, dataset_labels: np.ndarray,
                       with_index: bool = True) -> None:
    """Rows class by class with an ``index`` dataset; or, without it, row = dataset index."""
    import h5py

    if with_index:
        total = sum(int(cg.attrs["n_samples"]) for cg in run.classes.values())
    else:
        total = len(dataset_labels)
    height, width = run.map_shape
    channels = (run.classes[next(iter(run.classes))]["relevance_full"].shape[1]
                if run.full else 3)
    k = run.n_outputs
    top = max(max(run.classes) + 1, k, int(dataset_labels.max()) + 1)
    max_index = max(int(cg["index"][:].max()) for cg in run.classes.values())
    with h5py.File(path, "w") as fh:
        att = fh.create_dataset(
            "attribution", shape=(total, channels, height, width), dtype=np.float32,
            chunks=(_rows_per_chunk((channels, height, width), 4, total), channels, height, width),
            compression="gzip", compression_opts=4, fillvalue=0.0)
        pred = fh.create_dataset("prediction", shape=(total, k), dtype=np.float32)
        if with_index:
            lab = fh.create_dataset("label", shape=(total,), dtype=_label_dtype(top))
            ind = fh.create_dataset("index", shape=(total,),
                                    dtype=np.uint32 if max_index < 2 ** 32 else np.uint64)
        else:  # rows outside the run keep the dataset's label and zero maps
            lab = fh.create_dataset("label", data=dataset_labels.astype(_label_dtype(top)))
        fh.attrs["written_by"] = "spray"
        offset = 0
        for c, cg in run.classes.items():
            n = int(cg.attrs["n_samples"])
            for start in range(0, n, chunk_rows):
                stop = min(n, start + chunk_rows)
                if run.full:
                    maps = np.asarray(cg["relevance_full"][start:stop], dtype=np.float32)
                else:
                    maps = _spread_channels(np.asarray(cg["relevance"][start:stop], np.float32))
                logits = np.asarray(cg["logits"][start:stop], dtype=np.float32)
                if with_index:
                    rows = slice(offset + start, offset + stop)
                    att[rows], pred[rows], lab[rows] = maps, logits, c
                    ind[rows] = cg["index"][start:stop]
                    continue
                for rows, part in _segments(np.asarray(cg["index"][start:stop])):
                    att[rows], pred[rows], lab[rows] = maps[part], logits[part], c
            offset += n


def _clusterings(run: _Run, analysed: dict) -> tuple[list[int], dict]:
    pipeline = run.config.get("pipeline") if isinstance(run.config.get("pipeline"), dict) else {}
    params = dict(pipeline.get("clustering") or {})
    chosen = {c: int(cg.attrs["analysis"].get("n_clusters", 1)) for c, cg in analysed.items()}
    top = max([2] + list(chosen.values()))
    ks = list(range(2, top + 1))
    return ks, {"params": params, "chosen": chosen, "method": params.get("method", "kmeans")}


def _write_analysis(path: Path, run: _Run, analysed: dict) -> list[str]:
    import h5py

    from spray.analysis.clustering import cluster

    ks, info = _clusterings(run, analysed)
    kmeans_params = {**info["params"], "method": "kmeans"}
    names = []
    with h5py.File(path, "w") as fh:
        fh.attrs["written_by"] = "spray"
        for c, cg in analysed.items():
            grp = fh.create_group(str(c))
            grp.attrs["name"] = run.class_name(c)
            grp.create_dataset("index", data=np.asarray(cg["index"][:]).astype(np.uint32))
            lam = np.asarray(cg["eigenvalues"][:], dtype=np.float64)
            vec = np.asarray(cg["eigenvectors"][:], dtype=np.float32)
            labels = np.asarray(cg["labels"][:], dtype=np.int64)
            if labels.min(initial=0) < 0:  # unassigned samples (noise): a cluster of their own
                labels = np.where(labels < 0, labels.max(initial=0) + 1, labels)
            emb = grp.create_group("embedding")
            spectral = emb.create_dataset("spectral", data=vec[:, ::-1])
            spectral.attrs["eigenvalue"] = lam[::-1].astype(np.float32)
            spectral.attrs["name"] = "eigenvectors of the normalized Laplacian L_sym"
            if "tsne" in cg:
                emb.create_dataset("tsne", data=np.asarray(cg["tsne"][:], dtype=np.float32))
            clu = grp.create_group("cluster")
            chosen = info["chosen"][c]
            for k in ks:
                if k == chosen and info["method"] == "kmeans" and len(np.unique(labels)) == k:
                    lab = labels   # the analysis' own clusters (no suspect split off by the score)
                else:
                    lab = cluster(vec.astype(np.float64), k, kmeans_params)
                ds = clu.create_dataset(f"kmeans-{k}", data=lab.astype(np.uint32))
                ds.attrs["n_clusters"] = int(len(np.unique(lab)))
            ds = clu.create_dataset(SPRAY_CLUSTERING, data=labels.astype(np.uint32))
            ds.attrs["n_clusters"] = int(len(np.unique(labels)))
            ds.attrs["method"] = str(info["method"])
            names.append(str(c))
    return names


def _project_yaml(run: _Run, out: Path, name: str | None, height: int, width: int,
                  with_analysis: bool) -> dict:
    cfg = run.config
    attribution = cfg.get("attribution") or {}
    model = cfg.get("model") or {}
    target = attribution.get("target", "label")
    strategy = {"label": "true_label", "prediction": "predicted_label"}.get(str(target),
                                                                         f"class_{target}")
    if attribution.get("precomputed"):
        method = f"precomputed ({Path(attribution['precomputed']).name})"
        model_name = model.get("factory") or "unknown (precomputed attributions)"
    else:
        method = f"LRP {attribution.get('composite', 'epsilon-plus-flat')}"
        model_name = model.get("factory", "model")
    data = cfg.get("data") or {}
    project = {
        "name": name or f"spray: {run.dir.name}",
        "model": str(model_name),
        "label_map": FILES["label_map"],
        "dataset": {"name": str(data.get("path") and Path(data["path"]).name or data.get("source")),
                    "type": "hdf5", "path": FILES["dataset"], "input_width": int(width),
                    "input_height": int(height), "up_sampling_method": "none",
                    "down_sampling_method": "none"},
        "attributions": {"attribution_method": method, "attribution_strategy": strategy,
                         "sources": [FILES["attribution"]]},
    }
    if with_analysis:
        project["analyses"] = [{"analysis_method": ANALYSIS_METHOD,
                                "sources": [FILES["analysis"]]}]
    return {"project": project}


def _owned_output(out: Path):
    """The export's output folder; refuses (before writing anything) when a file the export
    writes is there and was not written by an earlier export (or was changed since)."""
    from spray.store import OwnedFiles

    files = OwnedFiles(out)
    theirs = files.not_owned(FILES.values())
    if theirs:
        raise StoreError(f"output {out} already holds {', '.join(sorted(theirs))}, not written by "
                         f"'spray export' (or changed since); refusing to overwrite. Choose an "
                         f"empty or new folder")
    return files


def export_virelay(run_dir: str | Path, out_dir: str | Path, name: str | None = None,
                   chunk_rows: int = 256, with_index: bool = True) -> dict:
    """Write a ViRelAy project for the run in ``run_dir`` into ``out_dir``.

    ``with_index=False`` writes one attribution row per dataset sample (row = dataset index,
    zeros outside the run, unallocated on disk) and no ``index`` dataset: ViRelAy then finds an
    attribution in constant time instead of scanning ``index`` on every request.

    Returns a small summary: the project file, the classes written and any skipped.
    """
    run_dir, out = Path(run_dir).resolve(), Path(out_dir).resolve()
    if chunk_rows < 1:
        raise SprayError(f"--chunk-rows must be a positive integer, got {chunk_rows}")
    if out.exists() and not out.is_dir():
        raise StoreError(f"output {out} exists and is not a folder")
    own = (run_dir / "spray.zarr", run_dir / "report")
    if out == run_dir or any(out == p or p in out.parents for p in own):
        raise StoreError(f"output {out} would mix the export with the run's own files; choose "
                         f"another folder (e.g. {run_dir / 'virelay'})")
    run = _Run(run_dir)
    source = _open_source(run)
    labels = np.asarray(source.labels())
    if tuple(source.sample_shape[-2:]) != run.map_shape:
        raise DataError(f"the run's relevance maps are {run.map_shape} but the samples of its "
                        f"dataset are {tuple(source.sample_shape[-2:])}; ViRelAy needs equal sizes")
    files = _owned_output(out)
    out.mkdir(parents=True, exist_ok=True)
    analysed = run.analysed()
    files.write_text(FILES["label_map"], json.dumps(_label_map(run, labels), indent=2))
    height, width = _write_dataset(out / FILES["dataset"], run, source, chunk_rows)
    files.record(FILES["dataset"])
    _write_attribution(out / FILES["attribution"], run, chunk_rows, np.asarray(labels),
                       with_index=with_index)
    files.record(FILES["attribution"])
    if analysed:
        _write_analysis(out / FILES["analysis"], run, analysed)
        files.record(FILES["analysis"])
    else:
        files.remove(FILES["analysis"])
    project = _project_yaml(run, out, name, height, width, bool(analysed))
    files.write_text(FILES["project"], yaml.safe_dump(project, sort_keys=False))
    skipped = dict(run.skipped)
    for c in run.classes:
        if c not in analysed:
            skipped[c] = "it has no finished analysis (attributions exported, no analysis)"
    return {"project": str(out / FILES["project"]), "classes": sorted(analysed),
            "attributions": int(sum(int(cg.attrs["n_samples"]) for cg in run.classes.values())),
            "skipped": {str(c): why for c, why in sorted(skipped.items())}}
