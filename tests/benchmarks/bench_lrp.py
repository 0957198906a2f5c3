"""Benchmark: LRP cost relative to a forward pass, spray against Zennit, in one run.

Run from the repository root (Zennit needed for its columns: ``pip install -e '.[peers]'``)::

    python tests/benchmarks/bench_lrp.py                 # both models, all composites
    python tests/benchmarks/bench_lrp.py --quick         # small CNN only, fewer repeats
    python tests/benchmarks/bench_lrp.py --threads 2 --vgg-batch 4 --repeats 3
    python tests/benchmarks/bench_lrp.py --channels-last  # model and inputs channels-last
    python tests/benchmarks/bench_lrp.py --tune-allocator # glibc keeps large buffers (all methods)
    python tests/benchmarks/bench_lrp.py --vit-only --json vit.json  # vision transformers only

The ViT section (``--vit`` or ``--vit-only``; LXT needed for its columns:
``pip install --no-deps lxt==2.1`` with ``transformers<5``) times spray's ``cp-lrp`` and
``attn-lrp`` against LXT's CP-LRP (its torchvision-ViT path, Zennit rules on dense and
convolution layers) on a small ViT (28×28, patch 7, 4 layers, width 64) and on ViT-B/16
(224×224), both with random weights, with the same rules on both sides and the per-sample
relative L2 difference of the maps.  ``--json PATH`` writes every row.

For each model it measures, per sample: a plain forward pass (no autograd), gradient × input
(forward + backward), and for each composite Zennit's and spray's relevance computation
(forward + modified backward).  Methods are timed round-robin (one repetition of every method,
then the next round) and the best time of the rounds is kept, so background load affects all
columns alike.  It prints a Markdown table with the ratios spray/forward and Zennit/spray and
the per-sample relative L2 difference between spray's and Zennit's maps.

Models: a small CNN on 28×28 inputs (batch 256) and VGG-16 (configuration D with BatchNorm,
224×224, small batch), both randomly initialised; BatchNorm statistics are randomised and its
``eps`` set to 0 so that Zennit's BatchNorm merge is exact (see tests/test_lrp_zennit.py).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import spray.lrp as lrp  # noqa: E402

LOW, HIGH = -3.0, 3.0
COMPOSITES = {
    # name: (spray parameters, Zennit class name, Zennit parameters)
    "epsilon-plus-flat": ({}, "EpsilonPlusFlat", {}),
    "epsilon-plus": ({}, "EpsilonPlus", {}),
    "epsilon-alpha2-beta1-flat": ({}, "EpsilonAlpha2Beta1Flat", {}),
    "epsilon-alpha2-beta1": ({}, "EpsilonAlpha2Beta1", {}),
    "epsilon-gamma-box": ({"low": LOW, "high": HIGH}, "EpsilonGammaBox",
                          {"low": LOW, "high": HIGH}),
}


def small_cnn() -> nn.Module:
    """A small MNIST-style CNN (28×28 grey inputs, 10 classes)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Dropout(),
        nn.Linear(256, 10))


def vgg16_bn() -> nn.Module:
    """VGG-16 (configuration D) with BatchNorm, as in torchvision, without depending on it."""
    config = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]
    layers, channels = [], 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item),
                       nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(512 * 49, 4096), nn.ReLU(True),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
            module.eps = 0.0
            del n
    return model.eval()


def forward_only(model, x, targets):
    with torch.no_grad():
        model(x)


def gradient_times_input(model, x, targets):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), x)
    return grad * x


def spray_method(name, params):
    def run(model, x, targets):
        return lrp.attribute(model, x, targets, name, **params)
    return run


def zennit_method(class_name, params):
    import zennit.composites
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm

    def run(model, x, targets):
        composite = getattr(zennit.composites, class_name)(
            canonizers=[SequentialMergeBatchNorm()], **params)
        with Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(x.clone(), lambda out: out * nn.functional.one_hot(
                targets, out.shape[1]).to(out.dtype))
        return relevance
    return run


def have_zennit() -> bool:
    try:
        import zennit  # noqa: F401
    except ImportError:
        return False
    return True


def time_methods(methods: dict, model, x, targets, repeats: int) -> dict:
    """Best wall time of each method over ``repeats`` round-robin rounds (after one warm-up)."""
    best = {name: float("inf") for name in methods}
    for method in methods.values():
        method(model, x, targets)  # warm-up: allocations, weight preparation, tracing
    for _ in range(repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            method(model, x, targets)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def relative_difference(a, b) -> float:
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


def benchmark(label, model, shape, batch, repeats, zennit, channels_last=False):
    torch.manual_seed(0)
    x = torch.randn((batch,) + shape).clamp(LOW, HIGH)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (batch,))
    methods = {"forward": forward_only, "gradient×input": gradient_times_input}
    for name, (params, zennit_class, zennit_params) in COMPOSITES.items():
        methods[f"spray {name}"] = spray_method(name, params)
        if zennit:
            methods[f"zennit {name}"] = zennit_method(zennit_class, zennit_params)
    times = time_methods(methods, model, x, targets, repeats)
    rows = []
    forward = times["forward"]
    for name in COMPOSITES:
        ours = times[f"spray {name}"]
        theirs = times.get(f"zennit {name}")
        error = None
        if zennit:
            error = relative_difference(methods[f"spray {name}"](model, x, targets),
                                        methods[f"zennit {name}"](model, x, targets))
        rows.append((label, name, forward, times["gradient×input"], theirs, ours, error))
    return rows


# ---------------------------------------------------------------------------------------------
# vision transformers: spray against LXT
# ---------------------------------------------------------------------------------------------


def small_vit() -> nn.Module:
    """torchvision ViT on 28×28 inputs (patch 7, 4 layers, width 64), random weights."""
    from torchvision.models import VisionTransformer

    return _randomise_vit(VisionTransformer(image_size=28, patch_size=7, num_layers=4,
                                            num_heads=4, hidden_dim=64, mlp_dim=128,
                                            num_classes=10))


def vit_b_16() -> nn.Module:
    """torchvision ViT-B/16 (224×224), random weights (nothing is downloaded)."""
    from torchvision.models import vit_b_16 as build

    return _randomise_vit(build(weights=None))


def _randomise_vit(model: nn.Module) -> nn.Module:
    """torchvision zero-initialises the head, class token and biases: give them values."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "heads" in name or "class_token" in name or name.endswith("bias"):
                param.normal_(0, 0.1)
    return model.eval()


def have_lxt() -> bool:
    try:
        import lxt.efficient  # noqa: F401
        import zennit  # noqa: F401
    except ImportError:
        return False
    return True


class LxtPatched:
    """LXT's torchvision-ViT and Zennit patches applied for one call, then undone (LXT patches
    classes process-wide; the other methods must run unpatched)."""

    def __enter__(self):
        import zennit.core
        from lxt.efficient import monkey_patch, monkey_patch_zennit
        from torchvision.models import vision_transformer

        classes = [nn.GELU, nn.LayerNorm, nn.MultiheadAttention, zennit.core.BasicHook]
        self.saved = [(cls, dict(vars(cls))) for cls in classes]
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monkey_patch(vision_transformer)
            monkey_patch_zennit()
        return self

    def __exit__(self, *exc):
        for cls, attributes in self.saved:
            for name in [n for n in vars(cls) if n not in attributes]:
                delattr(cls, name)
            for name in ("forward", "backward"):
                if name in attributes:
                    setattr(cls, name, attributes[name])
        return False


def lxt_method(rule, value):
    def run(model, x, targets):
        import zennit.rules
        from zennit.composites import LayerMapComposite

        make = getattr(zennit.rules, rule)
        with LxtPatched():
            composite = LayerMapComposite([(nn.Linear, make(value)), (nn.Conv2d, make(value))])
            x = x.clone().requires_grad_(True)
            with composite.context(model) as modified:
                modified(x).gather(1, targets[:, None]).sum().backward()
        return x * x.grad
    return run


def spray_lxt_rules(rule, value):
    """spray with LXT's CP-LRP rules on the same layers (fused attention projections: LRP-0)."""
    from spray.lrp.composites import transformer_composite

    composite = transformer_composite(getattr(lrp, rule)(value), projections=lrp.Epsilon(0.0),
                                      softmax="constant", stabilizer=1e-12,
                                      name=f"lxt-{rule}-{value}")

    def run(model, x, targets):
        return lrp.attribute(model, x, targets, composite)
    return run


#: label: (spray method, LXT method or None)
VIT_METHODS = {
    "cp-lrp ε (LXT rules)": (lambda: spray_lxt_rules("Epsilon", 1e-6),
                             lambda: lxt_method("Epsilon", 1e-6)),
    "cp-lrp γ=0.25 (LXT rules)": (lambda: spray_lxt_rules("Gamma", 0.25),
                                  lambda: lxt_method("Gamma", 0.25)),
    "cp-lrp": (lambda: spray_method("cp-lrp", {}), None),
    "attn-lrp": (lambda: spray_method("attn-lrp", {}), None),
    "attn-lrp γ=0.25": (lambda: spray_method("attn-lrp", {"gamma": 0.25}), None),
}


def benchmark_vit(label, model, shape, batch, repeats, lxt, gamma=True):
    """``gamma=False`` leaves out the γ composites (their prepared weight variants take about
    ten copies of the dense weights: 3.5 GB per composite for ViT-B/16)."""
    torch.manual_seed(0)
    x = torch.randn((batch,) + shape)
    targets = torch.randint(0, 10, (batch,))
    methods = {"forward": forward_only, "gradient×input": gradient_times_input}
    names = [name for name in VIT_METHODS if gamma or "γ" not in name]
    for name in names:
        ours, theirs = VIT_METHODS[name]
        methods[f"spray {name}"] = ours()
        if lxt and theirs is not None:
            methods[f"lxt {name}"] = theirs()
    times = time_methods(methods, model, x, targets, repeats)
    rows = []
    for name in names:
        theirs = times.get(f"lxt {name}")
        error = None
        if theirs is not None:
            error = relative_difference(methods[f"spray {name}"](model, x, targets).detach(),
                                        methods[f"lxt {name}"](model, x, targets).detach())
        rows.append((label, name, times["forward"], times["gradient×input"], theirs,
                     times[f"spray {name}"], error))
    return rows


def run_vit(args, lxt) -> tuple[list, dict]:
    torch.manual_seed(0)
    rows = benchmark_vit("ViT 28×28 (4 layers, width 64)", small_vit(), (3, 28, 28),
                         args.vit_batch, args.repeats, lxt)
    batch_of = {"ViT 28×28 (4 layers, width 64)": args.vit_batch}
    print(table(rows, batch_of, "LXT"), flush=True)
    if not args.quick:
        torch.manual_seed(0)
        rows += benchmark_vit("ViT-B/16 224×224", vit_b_16(), (3, 224, 224), args.vitb_batch,
                              max(1, args.repeats - 1), lxt, gamma=args.vitb_gamma)
        batch_of["ViT-B/16 224×224"] = args.vitb_batch
        print(flush=True)
        print(table(rows[-3 - 2 * args.vitb_gamma:], batch_of, "LXT"), flush=True)
    return rows, batch_of


def environment(args) -> dict:
    """Where and how a run was measured (shown under the generated tables)."""
    import os

    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"
    return {"machine": machine(), "date": datetime.date.today().isoformat(),
            "load average": load, "repeats": args.repeats}


COLUMNS = ["model", "composite", "batch", "forward ms/sample", "grad×input ms/sample", "peer",
           "peer ms/sample", "spray ms/sample", "spray/forward", "peer/spray",
           "max rel. L2 vs peer"]


def write_json(path, rows, batch_of, args) -> None:
    """All rows as JSON for ``tests/benchmarks/tables.py`` (docs/benchmarks/*.json)."""
    import json

    records = []
    for label, name, forward, grad, theirs, ours, error in rows:
        batch = batch_of[label]
        peer = "LXT" if "ViT" in label else "Zennit"
        records.append({
            "model": label, "composite": name, "batch": batch,
            "forward ms/sample": 1000 * forward / batch,
            "grad×input ms/sample": 1000 * grad / batch, "peer": peer if theirs else None,
            "peer ms/sample": 1000 * theirs / batch if theirs else None,
            "spray ms/sample": 1000 * ours / batch, "spray/forward": ours / forward,
            "peer/spray": theirs / ours if theirs else None, "max rel. L2 vs peer": error})
    command = "python tests/benchmarks/bench_lrp.py " + " ".join(sys.argv[1:])
    Path(path).write_text(json.dumps({"command": command, "env": environment(args),
                                      "columns": COLUMNS, "rows": records}, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# faithfulness: patch flipping on a ViT trained here
# ---------------------------------------------------------------------------------------------


def digits_vit(seconds_budget: float = 120.0):
    """A ViT trained on scikit-learn's digits (upsampled to 32×32, 3 channels, patch 4);
    returns ``(model, test images, test labels, accuracy)``."""
    from sklearn.datasets import load_digits
    from torchvision.models import VisionTransformer

    digits = load_digits()
    images = torch.as_tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    images = nn.functional.interpolate(images, size=32, mode="bilinear", align_corners=False)
    images = images.repeat(1, 3, 1, 1)
    labels = torch.as_tensor(digits.target)
    order = torch.as_tensor(np.random.default_rng(0).permutation(len(labels)))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=4, num_layers=3, num_heads=4,
                              hidden_dim=48, mlp_dim=96, num_classes=10)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    start = time.perf_counter()
    model.train()
    for _epoch in range(30):
        for batch in train[torch.randperm(len(train))].split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimiser.step()
        if time.perf_counter() - start > seconds_budget:
            break
    model.eval()
    with torch.no_grad():
        accuracy = float((model(images[test]).argmax(1) == labels[test]).float().mean())
    return model, images[test], labels[test], accuracy


def attention_rollout(model, x, targets):
    """Attention rollout (Abnar & Zuidema 2020): head-averaged attention plus identity,
    row-normalised and multiplied over the layers; class-token row spread over its patches."""
    captured = []
    hooks = [block.self_attention.register_forward_pre_hook(
        lambda module, args: captured.append((module, args[0].detach())))
        for block in model.encoder.layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    rollout = None
    for module, tokens in captured:
        e, h = module.embed_dim, module.num_heads
        q, k, _ = nn.functional.linear(tokens, module.in_proj_weight,
                                       module.in_proj_bias).split(e, dim=-1)
        q = q.reshape(*q.shape[:2], h, e // h).transpose(1, 2)
        k = k.reshape(*k.shape[:2], h, e // h).transpose(1, 2)
        attention = torch.softmax(q @ k.transpose(-2, -1) * (e // h) ** -0.5, -1).mean(1)
        attention = attention + torch.eye(attention.shape[-1])
        attention = attention / attention.sum(-1, keepdim=True)
        rollout = attention if rollout is None else attention @ rollout
    scores = rollout[:, 0, 1:]
    side = int(scores.shape[1] ** 0.5)
    patch = model.patch_size
    grid = scores.reshape(-1, 1, side, side).repeat_interleave(patch, 2).repeat_interleave(
        patch, 3)
    return grid.expand_as(x) / (3 * patch * patch)


def patch_flipping(model, x, targets, relevance, patch, steps, rng):
    """Target logit while patches are set to 0, most relevant first and in random order;
    returns both curves ``(steps + 1,)`` averaged over the samples."""
    n, _, height, width = x.shape
    rows, cols = height // patch, width // patch
    scores = relevance.sum(1).reshape(n, rows, patch, cols, patch).sum((2, 4)).reshape(n, -1)
    orders = {"relevance": scores.argsort(dim=1, descending=True),
              "random": torch.as_tensor(np.stack([rng.permutation(rows * cols)
                                                  for _ in range(n)]))}
    counts = np.linspace(0, rows * cols, steps + 1).round().astype(int)
    curves = {}
    for name, order in orders.items():
        values = []
        for count in counts:
            mask = torch.ones(n, rows * cols)
            mask.scatter_(1, order[:, :count], 0.0)
            pixels = mask.reshape(n, 1, rows, 1, cols, 1).expand(n, 1, rows, patch, cols, patch)
            flipped = x * pixels.reshape(n, 1, height, width)
            with torch.no_grad():
                values.append(model(flipped).gather(1, targets[:, None])[:, 0])
        curves[name] = torch.stack(values, 1).mean(0)
    return curves


def run_faithfulness(args, lxt) -> list:
    """Area between the random-order and the most-relevant-first curves (higher: the map
    ranks the patches the model relies on first), per method."""
    model, images, labels, accuracy = digits_vit(args.train_seconds)
    x, targets = images[:args.flip_samples], labels[:args.flip_samples]
    methods = {"spray attn-lrp": spray_method("attn-lrp", {}),
               "spray attn-lrp γ=0.25": spray_method("attn-lrp", {"gamma": 0.25}),
               "spray cp-lrp": spray_method("cp-lrp", {}),
               "spray cp-lrp γ=0.25": spray_method("cp-lrp", {"gamma": 0.25}),
               "gradient×input": gradient_times_input, "attention rollout": attention_rollout}
    if lxt:
        methods["LXT cp-lrp ε"] = lxt_method("Epsilon", 1e-6)
        methods["LXT cp-lrp γ=0.25"] = lxt_method("Gamma", 0.25)
    results = []
    for name, method in methods.items():
        relevance = method(model, x, targets).detach()
        curves = patch_flipping(model, x, targets, relevance, model.patch_size, args.flip_steps,
                                np.random.default_rng(0))
        gap = float((curves["random"] - curves["relevance"]).mean())
        results.append({"method": name, "area_between_curves": gap,
                        "first_step_drop": float(curves["relevance"][0] - curves["relevance"][1]),
                        "accuracy": accuracy, "samples": len(x)})
    return results


def faithfulness_table(results) -> str:
    lines = [f"ViT (3 layers, width 48, patch 4) trained on digits 32×32: test accuracy "
             f"{results[0]['accuracy']:.3f}; {results[0]['samples']} test samples, true class",
             "", "| method | area between curves (random − relevance-first) ↑ | logit drop after "
             "the first step |", "|---|---:|---:|"]
    for row in sorted(results, key=lambda r: -r["area_between_curves"]):
        lines.append(f"| {row['method']} | {row['area_between_curves']:.3f} | "
                     f"{row['first_step_drop']:.3f} |")
    return "\n".join(lines)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except Exception:  # noqa: BLE001
        model = platform.processor() or "unknown CPU"
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def table(rows, batch_of, peer="Zennit") -> str:
    ms = lambda seconds, label: f"{1000 * seconds / batch_of[label]:.2f}"  # noqa: E731
    lines = [f"| model | composite | forward ms/sample | grad×input ms/sample | {peer} ms/sample "
             f"| spray ms/sample | spray/forward | {peer}/spray | max rel. L2 vs {peer} |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, name, forward, grad, theirs, ours, error in rows:
        lines.append(
            f"| {label} | {name} | {ms(forward, label)} | {ms(grad, label)} | "
            f"{ms(theirs, label) if theirs else '–'} | {ms(ours, label)} | "
            f"{ours / forward:.2f}× | {f'{theirs / ours:.2f}×' if theirs else '–'} | "
            f"{f'{error:.1e}' if error is not None else '–'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cnn-batch", type=int, default=256)
    parser.add_argument("--vgg-batch", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="small CNN (and small ViT) only")
    parser.add_argument("--vit", action="store_true", help="also the vision transformers")
    parser.add_argument("--vit-only", action="store_true", help="only the vision transformers")
    parser.add_argument("--vit-batch", type=int, default=64)
    parser.add_argument("--vitb-batch", type=int, default=2)
    parser.add_argument("--vitb-gamma", action="store_true",
                        help="also the γ composites on ViT-B/16 (about 3.5 GB each)")
    parser.add_argument("--json", default=None, help="write all rows to this JSON file")
    parser.add_argument("--faithfulness", action="store_true",
                        help="patch flipping on a ViT trained on digits (then exit)")
    parser.add_argument("--train-seconds", type=float, default=120.0)
    parser.add_argument("--flip-samples", type=int, default=200)
    parser.add_argument("--flip-steps", type=int, default=16)
    parser.add_argument("--channels-last", action="store_true",
                        help="model and inputs in channels-last memory format (all methods)")
    parser.add_argument("--tune-allocator", action="store_true",
                        help="keep freed large buffers in the heap (spray.lrp.tune_allocator; "
                             "process-wide, applies to all methods)")
    args = parser.parse_args(argv)
    if args.tune_allocator and not lrp.tune_allocator():
        print("warning: could not tune the allocator (not glibc?)", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    zennit = have_zennit()
    print(f"Machine: {machine()}; date: {datetime.date.today().isoformat()}; "
          f"batches: CNN {args.cnn_batch}, VGG {args.vgg_batch}; best of {args.repeats} rounds "
          f"(VGG: {max(1, args.repeats - 1)}); "
          f"memory format: {'channels-last' if args.channels_last else 'contiguous (NCHW)'}; "
          f"allocator: {'tuned' if args.tune_allocator else 'default'}",
          flush=True)
    if args.faithfulness:
        results = run_faithfulness(args, have_lxt())
        print(faithfulness_table(results), flush=True)
        if args.json:
            import json
            env = {**environment(args), "test accuracy": f"{results[0]['accuracy']:.3f}",
                   "samples": results[0]["samples"]}
            rows = [{"method": r["method"],
                     "area between curves (random − relevance-first) ↑": r["area_between_curves"],
                     "logit drop after the first step": r["first_step_drop"]}
                    for r in sorted(results, key=lambda r: -r["area_between_curves"])]
            command = "python tests/benchmarks/bench_lrp.py " + " ".join(sys.argv[1:])
            Path(args.json).write_text(json.dumps({"command": command, "env": env, "rows": rows},
                                                  indent=2) + "\n")
        return
    rows, batch_of = [], {}
    if args.vit or args.vit_only:
        lxt = have_lxt()
        vit_rows, vit_batches = run_vit(args, lxt)
        rows, batch_of = rows + vit_rows, {**batch_of, **vit_batches}
    if args.vit_only:
        if args.json:
            write_json(args.json, rows, batch_of, args)
        return
    torch.manual_seed(0)
    cnn_rows = benchmark("CNN 28×28", small_cnn().eval(), (1, 28, 28), args.cnn_batch,
                         args.repeats, zennit, args.channels_last)
    batch_of["CNN 28×28"] = args.cnn_batch
    rows += cnn_rows
    print(table(cnn_rows, batch_of), flush=True)
    if not args.quick:
        torch.manual_seed(0)
        vgg = randomise_batchnorm(vgg16_bn())
        cnn_rows += benchmark("VGG-16-BN 224×224", vgg, (3, 224, 224), args.vgg_batch,
                              max(1, args.repeats - 1), zennit, args.channels_last)
        rows += cnn_rows[-len(COMPOSITES):]
        batch_of["VGG-16-BN 224×224"] = args.vgg_batch
        print(flush=True)
        print(table(cnn_rows, batch_of), flush=True)
    if args.json:
        write_json(args.json, rows, batch_of, args)


if __name__ == "__main__":
    main()
