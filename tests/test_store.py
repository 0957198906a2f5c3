"""The run's Zarr store: creation, class arrays, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from spray.errors import StoreError
from spray.store import create_or_check_store, prepare_class


def test_a_class_with_other_samples_names_the_runs_own_store(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "fashion"
    group = create_or_check_store(run_dir, {"model": "m", "data": "d", "attribution": "a"},
                                  "h", [0])
    prepare_class(group, 0, "zero", np.arange(10), (1, 4, 4), 2, 4)
    monkeypatch.chdir(tmp_path)  # the error must not name a store relative to the cwd
    with pytest.raises(StoreError) as err:
        prepare_class(group, 0, "zero", np.arange(12), (1, 4, 4), 2, 4)
    assert str(run_dir / "spray.zarr") in str(err.value)
    assert "class 0" in str(err.value) and "--overwrite" in str(err.value)
