"""Architectures and training recipes of the Clever-Hans evaluation (``eval_clever_hans.py``).

Architectures (32×32 inputs, any channel count), each with the LRP composite it is explained with:

* ``cnn``: a plain CNN (3 conv + 2 dense layers, no normalization), ``epsilon-plus-flat``;
* ``resnet``: a ResNet-style model (stem, three basic blocks with BatchNorm and skip
  connections, two with projection shortcuts, global average pooling), ``epsilon-plus-flat``;
* ``vit``: the demo's small torchvision VisionTransformer (``spray.cli.demo.build_vit``),
  ``attn-lrp``; its 4×4 patch embedding does not learn the scenes (test accuracy 0.11–0.31);
* ``vitc``: the same transformer (2 encoder layers of width 64, 4 heads, 8×8 tokens) with a
  convolutional stem instead of the patch embedding (two 3×3 stride-2 convolutions with
  BatchNorm and ReLU and a 1×1 projection: torchvision's ``ConvStemConfig``; Xiao et al.,
  "Early convolutions help transformers see better", 2021), ``attn-lrp``.

Recipes:

* ``adam``: Adam with a one-cycle learning rate, no augmentation;
* ``sgd``: SGD with Nesterov momentum and weight decay, a one-cycle learning rate, label
  smoothing 0.1, random horizontal flips and random crops (2-px zero padding).

A trained model is a function of its architecture, recipe, data and seed (and the torch thread
count).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

COMPOSITES = {"cnn": "epsilon-plus-flat", "resnet": "epsilon-plus-flat", "vit": "attn-lrp",
              "vitc": "attn-lrp"}
#: epochs and peak learning rate per (architecture, recipe). The plain CNN (no normalization,
#: default initialization) does not learn the scenes with ``sgd`` in 10 epochs (test accuracy
#: ≈ chance at peak rates 0.01, 0.05 and 0.15): it is trained with ``adam`` only.
SCHEDULES = {
    ("cnn", "adam"): (8, 3e-3),
    ("resnet", "adam"): (6, 4e-3), ("resnet", "sgd"): (8, 0.1),
    ("vit", "adam"): (12, 2e-3), ("vit", "sgd"): (14, 0.03),
    ("vitc", "adam"): (12, 2e-3),
}


def plain_cnn(n_classes: int, channels: int = 3) -> nn.Module:
    """3 conv + 2 dense layers with ReLU and max pooling, no normalization."""
    return nn.Sequential(
        nn.Conv2d(channels, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(24, 48, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(48, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, n_classes))


class Block(nn.Module):
    """A ResNet basic block: two 3×3 convolutions with BatchNorm, ``out += shortcut``."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out = out + identity
        return self.relu(out)


class ResNetStyle(nn.Module):
    """Stem (conv, BatchNorm, ReLU, max pooling), three basic blocks (24 → 48 → 64 channels,
    strides 1, 2, 2), global average pooling, a dense head."""

    def __init__(self, n_classes: int, channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 24, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2))
        self.layer1 = Block(24, 24)
        self.layer2 = Block(24, 48, 2)
        self.layer3 = Block(48, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def conv_stem_vit(n_classes: int, channels: int = 3) -> nn.Module:
    """The ``vitc`` transformer: a convolutional stem (32 → 64 channels, stride 4 in all) and
    two encoder layers of width 64 over the 8×8 tokens."""
    from torchvision.models import VisionTransformer
    from torchvision.models.vision_transformer import ConvStemConfig

    model = VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4,
                              hidden_dim=64, mlp_dim=128, num_classes=n_classes,
                              conv_stem_configs=[ConvStemConfig(32, 3, 2),
                                                 ConvStemConfig(64, 3, 2)])
    if channels != 3:
        raise ValueError(f"vitc takes RGB inputs, not {channels} channels")
    return model


def build(arch: str, n_classes: int, channels: int, seed: int) -> nn.Module:
    """The untrained model, its initialization seeded by ``seed`` alone."""
    torch.manual_seed(seed)
    if arch == "cnn":
        return plain_cnn(n_classes, channels)
    if arch == "resnet":
        return ResNetStyle(n_classes, channels)
    if arch == "vit":
        from spray.cli.demo import build_vit

        return build_vit(n_classes, channels)
    if arch == "vitc":
        return conv_stem_vit(n_classes, channels)
    raise ValueError(f"unknown architecture {arch!r}")


def _augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and random crops with 2-px zero padding (per sample)."""
    n, _, H, W = xb.shape
    flip = torch.rand(n, generator=gen) < 0.5
    xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
    padded = nn.functional.pad(xb, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(n)])


def train(arch: str, recipe: str, x: np.ndarray, y: np.ndarray, seed: int,
          epochs: int | None = None, batch: int = 128) -> nn.Module:
    """Train ``arch`` with ``recipe`` on ``x (n, C, 32, 32)``, ``y``; eval mode after."""
    n_classes = int(y.max()) + 1
    model = build(arch, n_classes, x.shape[1], seed)
    if (arch, recipe) not in SCHEDULES:
        raise ValueError(f"no schedule for {arch!r} with {recipe!r}: {sorted(SCHEDULES)}")
    default_epochs, lr = SCHEDULES[(arch, recipe)]
    epochs = default_epochs if epochs is None else epochs
    if recipe == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        smoothing, augment = 0.0, False
    elif recipe == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        smoothing, augment = 0.1, True
    else:
        raise ValueError(f"unknown recipe {recipe!r}")
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(xt) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            xb = _augment(xt[idx], gen) if augment else xt[idx]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yt[idx], label_smoothing=smoothing)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Predicted labels of ``x``, in batches of 1000."""
    with torch.no_grad():
        return np.concatenate([model(torch.as_tensor(x[i:i + 1000])).argmax(1).numpy()
                               for i in range(0, len(x), 1000)])


def scene_flip_rates(model: nn.Module, x: np.ndarray, y: np.ndarray, obj: np.ndarray,
                     kind: str, seed: int) -> np.ndarray:
    """Reliance on an artefact by intervention: for every label c, the share of the test images
    of the other labels (not predicted as c) that the model predicts as c once ``kind`` is
    stamped on them."""
    from eval_data import plant_rgb

    before = predict(model, x)
    after = predict(model, plant_rgb(x, kind, np.random.default_rng([seed, 7]), obj)[0])
    rates = np.zeros(int(y.max()) + 1)
    for c in range(len(rates)):
        pool = (y != c) & (before != c)
        rates[c] = float((after[pool] == c).mean()) if pool.any() else 0.0
    return rates


def collect_scenes(setting: tuple, args) -> dict:
    """Train the model of an RGB scene setting ``("GEN.ARCH.RECIPE", class, artefact, p, seed)``
    and explain its test scenes: the arrays of the evaluation's cache.

    The artefact is stamped on the fraction ``p`` of the planted class in the training and the
    test scenes alike; relevance is summed over the colour channels (as the pipeline's
    ``preprocess.channel_sum`` does).
    """
    import time

    from eval_data import GENERATORS, GREY_ARTEFACTS, RGB_ARTEFACTS, make_scenes, plant_rgb

    from spray.lrp import attribute

    ds, planted, art, p, seed = setting
    gen, arch, recipe = ds.split(".")
    labels = GENERATORS[gen].n_classes()
    if art is not None and not 0 <= planted < labels:
        raise ValueError(f"{ds}: no label {planted} to stamp (the generator {gen!r} has "
                         f"labels 0–{labels - 1})")
    data = make_scenes(GENERATORS[gen], seed)
    rng = np.random.default_rng([seed, 3])
    x_te_clean = data["x_test"].copy()
    poisoned = {}
    art_mask = np.zeros(data["x_test"].shape[:1] + data["x_test"].shape[2:], dtype=bool)
    for part in ("train", "test"):
        xs, ys, obj = data[f"x_{part}"], data[f"y_{part}"], data[f"obj_{part}"]
        mark = np.zeros(len(ys), dtype=bool)
        if art is not None:
            members = np.flatnonzero(ys == planted)
            chosen = np.sort(rng.choice(members, size=max(1, int(round(p * len(members)))),
                                        replace=False))
            xs[chosen], footprint = plant_rgb(xs[chosen], art, rng, obj[chosen])
            mark[chosen] = True
            if part == "test":
                art_mask[chosen] = footprint
        poisoned[part] = mark
    t0 = time.perf_counter()
    model = train(arch, recipe, data["x_train"], data["y_train"], seed)
    t_train = time.perf_counter() - t0
    x_te, y_te = data["x_test"], data["y_test"]
    t0 = time.perf_counter()
    rel = [attribute(model, torch.as_tensor(x_te[s:s + 250]), torch.as_tensor(y_te[s:s + 250]),
                     composite=COMPOSITES[arch]).detach().numpy().sum(axis=1)
           for s in range(0, len(x_te), 250)]
    t_lrp = time.perf_counter() - t0
    pred = predict(model, x_te)
    flips = np.stack([scene_flip_rates(model, x_te_clean, y_te, data["obj_test"], kind, seed)
                      for kind in RGB_ARTEFACTS + GREY_ARTEFACTS])
    return {"relevance": np.concatenate(rel).astype(np.float32), "inputs": x_te,
            "flip_rates": flips, "flip_kinds": np.array(RGB_ARTEFACTS + GREY_ARTEFACTS), "labels": y_te,
            "prediction": pred, "poisoned": poisoned["test"], "is_test": np.ones(len(y_te), bool),
            "artefact_mask": art_mask, "types": data["type_test"],
            "accuracy": float((pred == y_te).mean()), "train_seconds": t_train,
            "lrp_seconds": t_lrp, "model": model}
