"""Dataset sources: image folders, HDF5, Zarr, IDX, torch Dataset factories; labels without
decoding; normalization with the un-normalized samples kept for reports."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest

from spray.config.run_config import validate_config
from spray.data.sources import ImageFolderSource, _read_idx, class_partitions, open_source
from spray.errors import ConfigError, DataError

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture
def image_folder(tmp_path):
    """class folders 'cat' (3 images) and 'dog' (2), of different sizes and formats."""
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = {"cat": [(40, 30), (32, 32), (50, 60)], "dog": [(30, 45), (64, 40)]}
    for cname, shapes in sizes.items():
        (tmp_path / "imgs" / cname).mkdir(parents=True)
        for i, (w, h) in enumerate(shapes):
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / cname / f"{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("not an image")
    return tmp_path / "imgs"


def test_image_folder_labels_shapes_and_normalization(image_folder):
    cfg = {"source": "imagefolder", "path": str(image_folder), "resize": 24, "crop": 20,
           "mean": MEAN, "std": STD}
    src = open_source(cfg)
    assert src.class_names == ["cat", "dog"]
    assert src.labels().tolist() == [0, 0, 0, 1, 1]
    assert src.sample_shape == (3, 20, 20)
    raw = src.load_display([4, 0, 4])
    assert raw.shape == (3, 3, 20, 20) and raw.dtype == np.float32
    assert raw.min() >= 0.0 and raw.max() <= 1.0
    np.testing.assert_array_equal(raw[0], raw[2])
    model_in = src.load([4, 0, 4])
    expected = (raw - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1))
    np.testing.assert_allclose(model_in, expected, rtol=1e-6, atol=1e-6)
    assert class_partitions(src.labels(), "all") .keys() == {0, 1}


def test_image_folder_labels_need_no_decoding(image_folder, monkeypatch):
    import PIL.Image

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    src = ImageFolderSource(str(image_folder), resize=24, crop=20)
    assert len(src) == 5 and src.sample_shape == (3, 20, 20)
    assert class_partitions(src.labels(), [1])[1].tolist() == [3, 4]


def test_image_folder_class_list_and_grayscale(image_folder, tmp_path):
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    src = ImageFolderSource(str(image_folder), mode="L", resize=[16, 12],
                            class_list=str(tmp_path / "classes.txt"))
    assert src.class_names == ["dog", "cat"]
    assert src.labels().tolist() == [0, 0, 1, 1, 1]
    assert src.load([0]).shape == (1, 1, 16, 12)


def test_image_folder_errors_name_the_file(image_folder):
    (image_folder / "cat" / "3.jpg").write_bytes(b"not a jpeg")
    src = ImageFolderSource(str(image_folder), resize=24, crop=20)
    with pytest.raises(DataError, match=r"cat/3\.jpg \(sample 3\): cannot decode"):
        src.load([3])
    small = ImageFolderSource(str(image_folder), crop=35)
    with pytest.raises(DataError, match="smaller than 'data.crop'"):
        small.load([1])
    unsized = ImageFolderSource(str(image_folder))
    with pytest.raises(DataError, match="set 'data.crop'"):
        unsized.load([0, 1])


def test_hdf5_and_zarr_arrays_match_numpy(tmp_path):
    import h5py
    import zarr

    rng = np.random.default_rng(1)
    x = rng.random((30, 2, 5, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=30)
    with h5py.File(tmp_path / "d.h5", "w") as fh:
        fh["images"], fh["labels"] = x, y
    group = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    group.create_array("x", data=x, chunks=(7, 2, 5, 6))
    group.create_array("y", data=y)
    idx = np.array([29, 3, 4, 5, 3, 17])
    for cfg in ({"source": "hdf5", "path": str(tmp_path / "d.h5"), "x_key": "images",
                 "y_key": "labels", "scale": 2.0},
                {"source": "zarr", "path": str(tmp_path / "d.zarr"), "scale": 2.0}):
        src = open_source(cfg)
        assert src.labels().tolist() == y.tolist()
        assert src.sample_shape == (2, 5, 6)
        np.testing.assert_array_equal(src.load(idx), 2.0 * x[idx])
    with pytest.raises(ConfigError, match="has no dataset 'x'"):
        open_source({"source": "hdf5", "path": str(tmp_path / "d.h5")})


def test_idx_files_plain_and_gzip(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(12, 4, 5), dtype=np.uint8)
    labels = rng.integers(0, 10, size=12).astype(np.uint8)

    def idx_bytes(arr):
        head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        return head + arr.tobytes()

    (tmp_path / "img.idx").write_bytes(idx_bytes(images))
    (tmp_path / "lab.idx.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    mm = _read_idx(str(tmp_path / "img.idx"))
    assert isinstance(mm, np.memmap)  # the images stay on disk
    src = open_source({"source": "idx", "path": str(tmp_path / "img.idx"),
                       "labels": str(tmp_path / "lab.idx.gz")})
    assert src.labels().tolist() == labels.tolist()
    np.testing.assert_allclose(src.load([5, 1]), images[[5, 1]][:, None] / 255.0, rtol=1e-6)
    (tmp_path / "short.idx").write_bytes(idx_bytes(images)[:-7])
    with pytest.raises(DataError, match="truncated"):
        _read_idx(str(tmp_path / "short.idx"))


DATASET = '''
import numpy as np
import torch


class Squares(torch.utils.data.Dataset):
    def __init__(self, n, with_targets=True):
        self.n = n
        if with_targets:
            self.targets = [i % 3 for i in range(n)]
        self.calls = 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i >= self.n:
            raise IndexError(i)
        return torch.full((1, 4, 4), float(i)), i % 3


def build(n=9, with_targets=True):
    return Squares(n, with_targets)
'''


def test_dataset_factory(tmp_path):
    (tmp_path / "squares.py").write_text(DATASET)
    src = open_source({"source": "factory", "factory": "squares:build", "kwargs": {"n": 9}},
                      base_dir=str(tmp_path))
    assert src.labels().tolist() == [0, 1, 2] * 3
    assert src.sample_shape == (1, 4, 4)
    assert src.load([8, 2])[:, 0, 0, 0].tolist() == [8.0, 2.0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slow = open_source({"source": "factory", "factory": "squares:build",
                            "kwargs": {"n": 6, "with_targets": False}}, base_dir=str(tmp_path))
    assert slow.labels().tolist() == [0, 1, 2, 0, 1, 2]
    assert any("no 'targets' attribute" in str(w.message) for w in caught)
    a = open_source({"source": "factory", "factory": "squares:build", "kwargs": {"n": 9}},
                    base_dir=str(tmp_path)).fingerprint()
    b = open_source({"source": "factory", "factory": "squares:build", "kwargs": {"n": 9},
                     "scale": 2.0}, base_dir=str(tmp_path)).fingerprint()
    assert a != b  # scaling changes what the model sees
    with pytest.raises(ConfigError, match="cannot import module 'nosuch'"):
        open_source({"source": "factory", "factory": "nosuch:build"}, base_dir=str(tmp_path))


def test_data_config_validation(tmp_path):
    base = {"model": {"factory": "m:f"}}
    with pytest.raises(ConfigError, match="'data.factory'"):
        validate_config({**base, "data": {"source": "factory"}}, tmp_path)
    with pytest.raises(ConfigError, match="'data.mean' and 'data.std' go together"):
        validate_config({**base, "data": {"source": "digits", "mean": [0.5]}}, tmp_path)
    with pytest.raises(ConfigError, match="data.crop"):
        validate_config({**base, "data": {"source": "digits", "crop": [1, 2, 3]}}, tmp_path)
    with pytest.raises(ConfigError, match="one subfolder per class"):
        (tmp_path / "file.txt").write_text("")
        validate_config({**base, "data": {"source": "imagefolder", "path": "file.txt"}}, tmp_path)
    cfg = validate_config({**base, "data": {"source": "hdf5", "path": "file.txt"}}, tmp_path)
    assert cfg.data.path == str(tmp_path / "file.txt")  # resolved against the config folder


def test_uncompressed_npz_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.random((40, 1, 6, 6)).astype(np.float32), np.arange(40) % 4
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    plain = open_source({"source": "npz", "path": str(tmp_path / "plain.npz")})
    packed = open_source({"source": "npz", "path": str(tmp_path / "packed.npz")})
    assert isinstance(plain.x, np.memmap)  # workers do not hold the whole dataset
    for src in (plain, packed):
        np.testing.assert_array_equal(src.load([7, 0, 39]), x[[7, 0, 39]])
    assert plain.fingerprint() == packed.fingerprint()


def test_rewritten_data_file_is_read_again_in_the_same_process(tmp_path):
    """A long-lived worker must not serve old labels with new pixels after data.npz changes."""
    path = tmp_path / "data.npz"
    x = np.zeros((6, 1, 4, 4), dtype=np.float32)
    np.savez(path, x=x, y=np.array([0, 0, 0, 1, 1, 1]))
    cfg = {"source": "npz", "path": str(path)}
    first = open_source(cfg)
    assert first.labels().tolist() == [0, 0, 0, 1, 1, 1]
    np.savez(path, x=x + 1, y=np.array([1, 1, 1, 0, 0, 0]))
    second = open_source(cfg)
    assert second.labels().tolist() == [1, 1, 1, 0, 0, 0]
    assert float(second.load(np.array([0])).max()) == 1.0
    assert open_source(cfg) is second  # unchanged file: the per-process cache still serves it
