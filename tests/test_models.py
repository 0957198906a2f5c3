"""Model loading: factories, weights and the per-process model cache."""

from __future__ import annotations

import torch

from spray.data.models import load_model

FACTORY = '''import torch


def build():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)
'''


def test_rewritten_weights_file_is_loaded_again_in_the_same_process(tmp_path):
    """A persistent worker must not keep explaining the old model after weights.pt changes."""
    (tmp_path / "cache_factory.py").write_text(FACTORY)
    weights = tmp_path / "weights.pt"
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, 1.0)
    torch.save(model.state_dict(), weights)
    cfg = {"factory": "cache_factory:build", "weights": str(weights)}
    first = load_model(cfg, str(tmp_path))
    assert torch.all(first.weight == 1.0)
    torch.nn.init.constant_(model.weight, 2.0)
    torch.save(model.state_dict(), weights)
    second = load_model(cfg, str(tmp_path))
    assert torch.all(second.weight == 2.0)
    assert load_model(cfg, str(tmp_path)) is second  # unchanged file: cached per process
