"""``composite="zennit:<Name>"``: run any Zennit composite through the same interface.

Zennit is an optional peer (``pip install spray-xai[peers]``); spray's own engine stays the default.
The explained quantity is the same: the output gradient is ``logit × one-hot(target)``.
BatchNorm layers are merged with Zennit's canonizers (``SequentialMergeBatchNorm`` and, when
torchvision ResNet blocks are present, ``ResNetCanonizer``) unless ``canonizers=`` is given.
"""

from __future__ import annotations

import torch

from spray.errors import ConfigError, DataError
from spray.lrp.engine import ensure_eval, resolve_targets


def _zennit():
    try:
        import zennit.attribution
        import zennit.canonizers
        import zennit.composites
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("composite 'zennit:...' needs Zennit: pip install 'spray-xai[peers]'") from exc
    return zennit


def zennit_composite_class(name: str):
    """Find a Zennit composite class by registry name or class name (``EpsilonPlusFlat``)."""
    zennit = _zennit()
    registry = zennit.composites.COMPOSITES
    key = name.strip()
    for candidate in (key, key.lower().replace("-", "_")):
        if candidate in registry:
            return registry[candidate]
    cls = getattr(zennit.composites, key, None)
    if isinstance(cls, type):
        return cls
    raise ConfigError(f"Zennit has no composite {name!r}; known: {sorted(registry)}")


def default_canonizers(model):
    """Zennit canonizers that merge BatchNorm (and handle torchvision ResNets)."""
    zennit = _zennit()
    canonizers = [zennit.canonizers.SequentialMergeBatchNorm()]
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        if any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules()):
            from zennit.torchvision import ResNetCanonizer

            canonizers = [ResNetCanonizer()]
    except ImportError:  # pragma: no cover
        pass
    return canonizers


def attribute_zennit(model, name: str, canonizers=None, **kwargs):
    """Return a batch function ``(inputs, targets, offset) -> (relevance, logits)`` using Zennit."""
    zennit = _zennit()
    ensure_eval(model)
    cls = zennit_composite_class(name)
    if canonizers is None:
        canonizers = default_canonizers(model)
    try:
        composite = cls(canonizers=canonizers, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"Zennit composite {name!r}: {exc}") from exc
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device

    def run_batch(inputs, targets, offset):
        x = inputs.detach().to(device=device, dtype=dtype)
        chosen = {}

        def seed(logits):
            index = resolve_targets(targets, logits.detach(), offset)
            chosen["logits"] = logits.detach()
            one_hot = torch.zeros_like(logits).scatter_(1, index[:, None], 1.0)
            return logits.detach() * one_hot

        with torch.inference_mode(False), torch.enable_grad(), \
                zennit.attribution.Gradient(model=model, composite=composite) as attributor:
                try:
                    _, relevance = attributor(x, seed)
                except RuntimeError as exc:
                    raise DataError(f"inputs of shape {tuple(x.shape)} do not fit the model: "
                                    f"{str(exc).splitlines()[0]}") from exc
        return relevance, chosen["logits"]

    return run_batch
