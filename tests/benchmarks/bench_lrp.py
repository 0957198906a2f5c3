"""Benchmark: LRP cost relative to a forward pass, spray against Zennit, in one run.

Run from the repository root (Zennit needed for its columns: ``pip install -e '.[peers]'``)::

    python tests/benchmarks/bench_lrp.py                 # both models, all composites
    python tests/benchmarks/bench_lrp.py --quick         # small CNN only, fewer repeats
    python tests/benchmarks/bench_lrp.py --threads 2 --vgg-batch 4 --repeats 3
    python tests/benchmarks/bench_lrp.py --channels-last  # model and inputs channels-last
    python tests/benchmarks/bench_lrp.py --tune-allocator # glibc keeps large buffers (all methods)

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


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
    except Exception:  # noqa: BLE001
        model = platform.processor() or "unknown CPU"
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def table(rows, batch_of) -> str:
    ms = lambda seconds, label: f"{1000 * seconds / batch_of[label]:.2f}"  # noqa: E731
    lines = ["| model | composite | forward ms/sample | grad×input ms/sample | Zennit ms/sample "
             "| spray ms/sample | spray/forward | Zennit/spray | max rel. L2 vs Zennit |",
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
    parser.add_argument("--quick", action="store_true", help="small CNN only")
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
    torch.manual_seed(0)
    rows = benchmark("CNN 28×28", small_cnn().eval(), (1, 28, 28), args.cnn_batch,
                     args.repeats, zennit, args.channels_last)
    batch_of = {"CNN 28×28": args.cnn_batch}
    print(table(rows, batch_of), flush=True)
    if not args.quick:
        torch.manual_seed(0)
        vgg = randomise_batchnorm(vgg16_bn())
        rows += benchmark("VGG-16-BN 224×224", vgg, (3, 224, 224), args.vgg_batch,
                          max(1, args.repeats - 1), zennit, args.channels_last)
        batch_of["VGG-16-BN 224×224"] = args.vgg_batch
        print(flush=True)
        print(table(rows, batch_of), flush=True)


if __name__ == "__main__":
    main()
