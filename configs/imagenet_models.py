"""Model factories for the ImageNet-scale configs (torchvision architectures).

torchvision is optional: only these factories need it (``pip install torchvision``). spray loads
the weights itself with ``torch.load(weights_only=True)``, so save them once as a plain
``state_dict`` (this downloads torchvision's ImageNet weights)::

    python configs/imagenet_models.py vgg16 configs/vgg16-imagenet.pt
    python configs/imagenet_models.py resnet50 configs/resnet50-imagenet.pt
"""

from __future__ import annotations

import sys


def _torchvision():
    try:
        import torchvision
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("the ImageNet model factories need torchvision: "
                          "pip install torchvision") from None
    return torchvision


def vgg16(num_classes: int = 1000, batch_norm: bool = False):
    """VGG-16 (optionally with BatchNorm, which spray's LRP folds into the convolutions)."""
    models = _torchvision().models
    build = models.vgg16_bn if batch_norm else models.vgg16
    return build(weights=None, num_classes=num_classes)


def resnet50(num_classes: int = 1000):
    """ResNet-50 (residual sums and BatchNorm are handled by spray's LRP canonizers)."""
    return _torchvision().models.resnet50(weights=None, num_classes=num_classes)


WEIGHTS = {"vgg16": "VGG16_Weights.IMAGENET1K_V1", "vgg16_bn": "VGG16_BN_Weights.IMAGENET1K_V1",
           "resnet50": "ResNet50_Weights.IMAGENET1K_V2"}


def save_pretrained(arch: str, path: str) -> None:
    """Download torchvision's ImageNet weights for ``arch`` and save them as a state_dict."""
    import torch

    models = _torchvision().models
    model = getattr(models, arch)(weights=WEIGHTS[arch])
    torch.save(model.state_dict(), path)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in WEIGHTS:
        sys.exit(f"usage: python {sys.argv[0]} {{{','.join(WEIGHTS)}}} OUT.pt")
    save_pretrained(sys.argv[1], sys.argv[2])
