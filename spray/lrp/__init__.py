"""Layer-wise Relevance Propagation (LRP) for PyTorch classifiers.

``spray.lrp.attribute(model, inputs, targets, composite="epsilon-plus-flat")`` returns one
relevance map per sample (same shape as ``inputs``) for the *logit* of the target class: the
relevance at the output is ``logit × one-hot(target)``.

Why an engine of our own instead of depending on Zennit
-------------------------------------------------------
Relevance maps are the expensive stage of a dataset-scale analysis, so the engine is built for
throughput.  Zennit (the reference LRP library) attaches forward/backward *hooks* to every layer
and, in every backward pass, re-runs each layer once per weight variant with temporarily
swapped parameters (four extra forwards per convolution for the γ and αβ rules).  Here:

* the modified weights (BatchNorm-folded, positive/negative parts, γ-weights) are prepared
  **once per model** and cached, not per batch;
* the positive and negative parts of a layer are computed in **one stacked convolution** (weight
  variants concatenated along the output channels) and propagated back in one stacked
  transposed convolution;
* there are **no hooks**: the model is traced once (:mod:`torch.fx`) and every rule is a small
  autograd function whose backward is the rule, so one forward and one backward give the map;
* there is no dependency on torchvision, and Zennit (LGPL-3.0) stays an optional *test peer*.

Faithfulness is proven, not assumed: ``tests/test_lrp_zennit.py`` compares every composite with
Zennit on an MLP, a VGG-style CNN with BatchNorm and max pooling and a ResNet-style model with
residual blocks (per-sample relative L2 error ≤ 1e-5 in float32), and ``tests/test_lrp.py``
checks relevance conservation.  ``docs/lrp.md`` records speed and accuracy.

Transformers
------------
``composite="attn-lrp"`` (AttnLRP) or ``"cp-lrp"`` (CP-LRP) explain vision transformers such as
torchvision's ``VisionTransformer``: ``nn.MultiheadAttention`` is exposed as traceable
projections, products and softmax (:mod:`spray.lrp.transformer`), LayerNorm keeps its scale
constant, GELU passes relevance through, and the patch convolution takes the relevance back to
the pixels, so the maps have the input's shape ``(n, C, H, W)`` as for CNNs.
``tests/test_lrp_vit.py`` compares both with LXT, the reference implementation.

Eval mode
---------
LRP explains the function the model computes at inference.  A model in training mode is
switched to eval mode (``model.eval()``) with a warning before it is explained.
"""

from __future__ import annotations

import torch

from spray.errors import ConfigError, DataError
from spray.lrp.composites import COMPOSITES, Composite
from spray.lrp.engine import Program, prepare, run, tune_allocator
from spray.lrp.health import relevance_health, summarize_health
from spray.lrp.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Norm,
    Pass,
    Rule,
    WSquare,
    ZBox,
    ZPlus,
)
from spray.lrp.transformer import LayerNormRule, ProductRule, SoftmaxRule

__all__ = ["attribute", "prepare", "Program", "tune_allocator", "Composite", "COMPOSITES",
           "Rule", "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "Flat", "WSquare", "ZBox", "Pass",
           "Norm", "Gradient", "relevance_health", "summarize_health", "LayerNormRule",
           "ProductRule", "SoftmaxRule"]


def attribute(model, inputs, targets, composite="epsilon-plus-flat", *, batch_size=None,
              return_logits=False, **kwargs):
    """Relevance maps of ``inputs`` for the logits of ``targets``.

    Parameters
    ----------
    model:
        a ``torch.nn.Module`` classifier returning logits ``(batch, classes)``; a final
        softmax/sigmoid is dropped (the logit is explained).  Switched to eval mode if needed.
    inputs:
        tensor ``(batch, ...)``; cast to the model's dtype and device.
    targets:
        class index per sample (the true labels, or any class), a single class index for all
        samples, or ``"prediction"`` for the predicted class.
    composite:
        a composite name (see :mod:`spray.lrp.composites`), a :class:`Composite`, a mapping
        ``{module name or layer type: rule}``, or ``"zennit:<Name>"`` to run a Zennit composite
        (Zennit must be installed; ``canonizers=`` may be given).
    batch_size:
        process the inputs in chunks of this many samples (default: all at once).
    return_logits:
        also return the model's logits.
    **kwargs:
        composite parameters, e.g. ``epsilon=``, ``gamma=``, ``low=``, ``high=``.

    Returns
    -------
    relevance (same shape as ``inputs``, the model's dtype), or ``(relevance, logits)``.
    """
    inputs = _check_inputs(inputs)
    if isinstance(composite, str) and composite.lower().startswith("zennit:"):
        from spray.lrp.zennit_adapter import attribute_zennit

        run_batch = attribute_zennit(model, composite.split(":", 1)[1], **kwargs)
    else:
        program = prepare(model, composite, **kwargs)
        _check_shape(program, inputs)

        def run_batch(batch, batch_targets, offset):
            return run(program, batch, batch_targets, offset)

    size = batch_size or max(len(inputs), 1)
    if size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    relevances, logits = [], []
    for start in range(0, len(inputs), size):
        batch_targets = _slice_targets(targets, start, start + size, len(inputs))
        relevance, batch_logits = run_batch(inputs[start:start + size], batch_targets, start)
        relevances.append(relevance.detach())
        logits.append(batch_logits)
    relevance = torch.cat(relevances) if len(relevances) != 1 else relevances[0]
    if return_logits:
        return relevance, (torch.cat(logits) if len(logits) != 1 else logits[0])
    return relevance


def _check_inputs(inputs) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise DataError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise DataError(f"inputs must be a non-empty batch (batch, ...), got shape "
                        f"{tuple(inputs.shape)}")
    if not (inputs.is_floating_point() or inputs.dtype in (torch.uint8, torch.int8)):
        raise DataError(f"inputs must be floating point, got dtype {inputs.dtype}")
    if not bool(torch.isfinite(inputs).all()):
        raise DataError("inputs contain NaN or Inf values")
    return inputs


def _check_shape(program: Program, inputs: torch.Tensor) -> None:
    """Catch the commonest mismatch (channels/features of the first layer) with a clear error."""
    first = program.first_affine
    if first is None:
        return
    if isinstance(first, torch.nn.Linear) and inputs.ndim == 2 and inputs.shape[1] != first.in_features:
        raise DataError(f"inputs have {inputs.shape[1]} features but the model's first dense layer "
                        f"expects {first.in_features} (inputs of shape {tuple(inputs.shape)})")
    if isinstance(first, torch.nn.modules.conv._ConvNd):
        expected = first.weight.ndim
        if inputs.ndim != expected or inputs.shape[1] != first.in_channels:
            raise DataError(
                f"inputs of shape {tuple(inputs.shape)} do not fit the model's first convolution "
                f"{type(first).__name__}({first.in_channels}, ...): expected shape "
                f"(batch, {first.in_channels}, ...) with {expected} dimensions")


def _slice_targets(targets, start, stop, total):
    if isinstance(targets, (str, int)) and not isinstance(targets, bool):
        return targets
    tensor = torch.as_tensor(targets)
    if tensor.ndim != 1 or tensor.shape[0] != total:
        raise DataError(f"targets must hold one class index per sample: {total} samples, "
                        f"targets of shape {tuple(tensor.shape)}")
    return tensor[start:stop]

