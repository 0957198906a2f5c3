"""The embedded demo: a Clever-Hans model made on the spot, then the full pipeline.

scikit-learn's handwritten ``digits`` (8×8) are upsampled to 32×32 so that a small stamp is a
localized feature; a stamp is put into a fraction of one class (train and test), a small CNN is
trained on the train split in seconds (or, with ``model="vit"``, a small torchvision
VisionTransformer in under a minute, explained with ``attn-lrp``), and ``spray run`` analyses the
test split of all classes.

The CNN picks the stamp up when it marks 30 % of the class's training samples; the small ViT,
trained from scratch on 900 digits, mostly learns the digit's shape instead and relies on a stamp
on 30 % of the class only for some seeds.  Its training split therefore carries the stamp on 80 %
of the class (the test split, which is analysed, on 30 % as for the CNN): a model that really
relies on the stamp, as the reliance recorded in the ground truth shows.
``RUN_DIR/demo/ground_truth.json`` names the planted class, the poisoned dataset indices and the
model's reliance on the stamp (``stamp_flip_rate``: the share of the other classes' test samples
predicted as the planted class once stamped; ``stamp_logit_gain``: the mean rise of the planted
class's logit when its unstamped test samples are stamped).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from spray.data.sources import load_digits_arrays

log = logging.getLogger(__name__)

#: what the demo writes into its output folder (besides the run's own files)

SIZE = 32
PLANTED_CLASS = 3
FRACTION = 0.3
SEED = 0


def build_model(n_classes: int = 10, channels: int = 1) -> nn.Module:
    """A small VGG-style CNN for 32×32 inputs (the demo's model factory)."""
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(64, n_classes),
    )


def build_vit(n_classes: int = 10, channels: int = 1) -> nn.Module:
    """A small torchvision VisionTransformer for 32×32 inputs (the ViT demo's model factory):
    4×4 patches, 2 encoder layers of width 64, 4 heads, a patch convolution for ``channels``."""
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=SIZE, patch_size=4, num_layers=2, num_heads=4,
                              hidden_dim=64, mlp_dim=128, num_classes=n_classes)
    model.conv_proj = nn.Conv2d(channels, 64, kernel_size=4, stride=4)
    return model


#: the demo's models: factory, training epochs, peak learning rate, composite, the fraction of the
#: planted class stamped in the training split
MODELS = {
    "cnn": {"factory": "build_model", "epochs": 12, "lr": 2e-3, "one_cycle": False,
            "composite": "epsilon-plus-flat", "label": "CNN", "train_fraction": FRACTION},
    "vit": {"factory": "build_vit", "epochs": 15, "lr": 3e-3, "one_cycle": True,
            "composite": "attn-lrp", "label": "ViT", "train_fraction": 0.8},
}


def stamp(images: np.ndarray) -> np.ndarray:
    """Put a bright 5×5 square into the top-left corner (a watermark-like artefact)."""
    out = images.copy()
    out[:, :, 1:6, 1:6] = 1.0
    return out


def make_data(rng: np.random.Generator, train_fraction: float = FRACTION) -> dict:
    """Split digits 50/50 (stratified) and stamp a fraction of the planted class in both:
    ``train_fraction`` of it in the training split, :data:`FRACTION` in the test split."""
    x, y = load_digits_arrays(SIZE)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        half = len(idx) // 2
        train.append(idx[:half])
        test.append(idx[half:])
    train, test = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    poisoned = {}
    for name, xs, ys, fraction in (("train", x_train, y_train, train_fraction),
                                   ("test", x_test, y_test, FRACTION)):
        members = np.flatnonzero(ys == PLANTED_CLASS)
        chosen = np.sort(rng.choice(members, size=int(round(fraction * len(members))),
                                    replace=False))
        xs[chosen] = stamp(xs[chosen])
        poisoned[name] = chosen
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "poisoned_test": poisoned["test"]}


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
        batch: int = 64, lr: float = 2e-3, one_cycle: bool = False,
        on_epoch: Callable[[int, float, float], None] | None = None) -> nn.Module:
    """Train ``model`` with Adam (batches shuffled by ``seed``); eval mode after.

    ``one_cycle`` runs a one-cycle schedule peaking at ``lr`` (converges in a few epochs).
    ``on_epoch(epoch, mean loss, train accuracy)`` is called after each epoch.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    sched = (torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * ((len(xt) + batch - 1) // batch))
        if one_cycle else None)
    model.train()
    for epoch in range(1, epochs + 1):
        loss_sum, correct = 0.0, 0
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            opt.zero_grad()
            logits = model(xt[idx])
            loss = nn.functional.cross_entropy(logits, yt[idx])
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yt[idx]).sum())
        if on_epoch is not None:
            on_epoch(epoch, loss_sum / len(xt), correct / len(xt))
    return model.eval()


def train_model(x: np.ndarray, y: np.ndarray, epochs: int | None = None, seed: int = SEED,
                model: str = "cnn") -> nn.Module:
    """Train the demo's ``model`` (``cnn``: seconds to a minute on two cores, ``vit``: about a
    minute), showing each epoch."""
    from spray.progress import StageProgress

    spec = MODELS[model]
    epochs = spec["epochs"] if epochs is None else epochs
    torch.manual_seed(seed)
    with StageProgress(f"training the demo {spec['label']}", epochs, "epochs",
                       enabled=log.isEnabledFor(logging.INFO), every=0.0) as bar:
        return fit(globals()[spec["factory"]](), x, y, epochs, seed, lr=spec["lr"],
                   one_cycle=spec["one_cycle"],
                   on_epoch=lambda e, loss, acc: bar.update(
                       1, note=f"loss {loss:.3f}, train accuracy {acc:.3f}"))


def stamp_reliance(model: nn.Module, x: np.ndarray, y: np.ndarray,
                   poisoned: np.ndarray) -> dict:
    """How much ``model`` relies on the stamp, on the test split ``x``, ``y`` (``poisoned``: the
    stamped indices): ``stamp_flip_rate``, the share of the other classes' samples predicted as
    the planted class once stamped, and ``stamp_logit_gain``, the mean rise of the planted
    class's logit when its unstamped samples are stamped."""
    other = y != PLANTED_CLASS
    clean = np.setdiff1d(np.flatnonzero(y == PLANTED_CLASS), poisoned)
    with torch.no_grad():
        flipped = model(torch.as_tensor(stamp(x[other]))).argmax(1).numpy() == PLANTED_CLASS
        gain = (model(torch.as_tensor(stamp(x[clean])))[:, PLANTED_CLASS]
                - model(torch.as_tensor(x[clean]))[:, PLANTED_CLASS])
    return {"stamp_flip_rate": round(float(flipped.mean()), 4),
            "stamp_logit_gain": round(float(gain.mean()), 4)}


def prepare(out_dir: Path, model: str = "cnn") -> Path:
    """Write the demo's data, weights, config and ground truth; returns the config path.

    ``model``: ``cnn`` (the default) or ``vit`` (see :data:`MODELS`).

    The caller checks the output folder first (``spray demo`` refuses a folder holding files
    spray did not write before anything is trained or written).
    """
    demo = out_dir / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    t0 = time.perf_counter()
    spec = MODELS[model]
    data = make_data(rng, spec["train_fraction"])
    net = train_model(data["x_train"], data["y_train"], model=model)
    with torch.no_grad():
        acc = float((net(torch.as_tensor(data["x_test"])).argmax(1).numpy() == data["y_test"]).mean())
    torch.save(net.state_dict(), demo / "model.pt")
    np.savez(demo / "data.npz", x=data["x_test"], y=data["y_test"])
    reliance = stamp_reliance(net, data["x_test"], data["y_test"], data["poisoned_test"])
    truth = {"model": model, "planted_class": PLANTED_CLASS, "fraction": FRACTION,
             "train_fraction": spec["train_fraction"],
             "artefact": "bright 5x5 square, top-left",
             "poisoned_indices": [int(i) for i in data["poisoned_test"]],
             "test_accuracy": round(acc, 4), **reliance,
             "train_seconds": round(time.perf_counter() - t0, 2)}
    (demo / "ground_truth.json").write_text(json.dumps(truth, indent=2))
    config = {
        "data": {"source": "npz", "path": "data.npz"},
        "model": {"factory": f"spray.cli.demo:{spec['factory']}", "weights": "model.pt"},
        "attribution": {"composite": spec["composite"], "target": "label", "batch_size": 256,
                        "chunk_size": 128},
        "classes": "all",
        "class_names": [f"digit {i}" for i in range(10)],
        "pipeline": "spray-default",
        "cluster": {"scheduler": "local", "n_workers": 2},
        "output": "..",
    }
    path = demo / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"spray demo: trained the demo {spec['label']} (test accuracy {acc:.3f}) on digits with a "
          f"stamp on {spec['train_fraction']:.0%} of class {PLANTED_CLASS}; planted the stamp into "
          f"{len(truth['poisoned_indices'])} test samples of class {PLANTED_CLASS}")
    print(f"spray demo: the stamp turns {reliance['stamp_flip_rate']:.0%} of the other classes' test "
          f"samples into class {PLANTED_CLASS} and raises its logit by "
          f"{reliance['stamp_logit_gain']:.2f} on its unstamped test samples")
    return path
