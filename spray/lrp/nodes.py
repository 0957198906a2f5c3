"""The relevance backward pass of each kind of node, as autograd functions and graph modules.

Each rule-carrying node of a prepared model becomes a small :class:`torch.autograd.Function`
whose forward computes the layer output and what its rule needs, and whose backward *is* the
rule (:mod:`spray.lrp.engine` puts them into the traced graph). Written here rather than with
module hooks (as Zennit does) so that one ``torch.autograd.grad`` call runs the whole modified
backward pass with the rules' prepared weights and no per-call hook bookkeeping.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from spray.errors import ModelError
from spray.lrp.ops import AffineOp, stabilize
from spray.lrp.rules import Rule

# ---------------------------------------------------------------------------------------------
# autograd functions: forward = layer, backward = rule
# ---------------------------------------------------------------------------------------------


class _AffineFunction(torch.autograd.Function):
    """Dense/convolution layer whose backward pass is its LRP rule."""

    @staticmethod
    def forward(ctx, x, layer):
        z, ctx.saved = layer.rule.forward(layer.op, layer.params, x)
        ctx.layer = layer
        return z

    @staticmethod
    def backward(ctx, relevance):
        layer, saved = ctx.layer, ctx.saved
        ctx.saved = None
        return layer.rule.backward(layer.op, layer.params, saved, relevance), None


class _PassFunction(torch.autograd.Function):
    """Elementwise layer whose relevance passes through unchanged."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, relevance):
        return relevance, None


class _NormFunction(torch.autograd.Function):
    """Parameter-free linear map (average pooling, mean): proportional split of relevance."""

    @staticmethod
    def forward(ctx, x, fn, stabilizer):
        z = fn(x)
        ctx.fn, ctx.saved = fn, (x, stabilize(z, stabilizer))
        return z

    @staticmethod
    def backward(ctx, relevance):
        (x, denominator), ctx.saved = ctx.saved, None
        with torch.enable_grad():
            probe = torch.zeros_like(x, requires_grad=True)
            out = ctx.fn(probe)
        (grad,) = torch.autograd.grad(out, probe, relevance / denominator)
        return x * grad, None, None


class _SumFunction(torch.autograd.Function):
    """Addition of two branches: relevance split in proportion to each branch's contribution."""

    @staticmethod
    def forward(ctx, a, b, stabilizer):
        z = a + b
        ctx.saved = (a, b, stabilize(z, stabilizer))
        return z

    @staticmethod
    def backward(ctx, relevance):
        (a, b, denominator), ctx.saved = ctx.saved, None
        signal = relevance / denominator
        share_b = _reduce_to(b * signal, b.shape)
        return _reduce_to(signal.mul_(a), a.shape), share_b, None


def _reduce_to(tensor: torch.Tensor, shape) -> torch.Tensor:
    """Sum a broadcast result back to ``shape``."""
    if tensor.shape == shape:
        return tensor
    lead = tensor.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape)
                                      if s == 1 and tensor.shape[i + lead] != 1)
    return tensor.sum(dim=dims, keepdim=True).reshape(shape)


# ---------------------------------------------------------------------------------------------
# graph nodes
# ---------------------------------------------------------------------------------------------


class PreparedAffine:
    """A dense/convolution layer with its rule and the rule's modified weights."""

    def __init__(self, rule: Rule, op: AffineOp):
        self.rule, self.op = rule, op
        self.params = rule.prepare(op)


class AffineNode(nn.Module):
    def __init__(self, layer: PreparedAffine):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return _AffineFunction.apply(x, self.layer)


class GradientAffineNode(nn.Module):
    """A dense/convolution layer (possibly BatchNorm-folded) with its plain gradient."""

    def __init__(self, op: AffineOp):
        super().__init__()
        self.op = op

    def forward(self, x):
        return self.op.apply(x, self.op.weight, self.op.bias)


class PassNode(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return _PassFunction.apply(x, self.fn)


class NormNode(nn.Module):
    def __init__(self, fn, stabilizer: float):
        super().__init__()
        self.fn, self.stabilizer = fn, stabilizer

    def forward(self, x):
        return _NormFunction.apply(x, self.fn, self.stabilizer)


class SumNode(nn.Module):
    def __init__(self, stabilizer: float):
        super().__init__()
        self.stabilizer = stabilizer

    def forward(self, a, b):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return _SumFunction.apply(a, b, self.stabilizer)
        return a + b  # shape arithmetic or a constant offset


class ScaleNode(nn.Module):
    """A tensor multiplied or divided by a constant number: a one-to-one linear map, so the
    relevance passes unchanged (its gradient would scale the relevance by the constant).
    Products of numbers (shape arithmetic) are computed as they are."""

    def __init__(self, fn, position: int):
        super().__init__()
        self.fn, self.position = fn, position

    def forward(self, *args, **kwargs):
        value = args[self.position] if self.position < len(args) else None
        others = [a for i, a in enumerate(args) if i != self.position]
        if not isinstance(value, torch.Tensor) or any(isinstance(a, torch.Tensor) for a in others):
            return self.fn(*args, **kwargs)

        def scaled(tensor):
            call = list(args)
            call[self.position] = tensor
            return self.fn(*call, **kwargs)

        return _PassFunction.apply(value, scaled)


def scale_node(node, is_method: bool):
    """The node of ``tensor * number`` / ``tensor / number`` (``None``: plain gradient when the
    computed value is the divisor, which is not a scaling)."""
    positions = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node)]
    if not positions:
        return None
    position = positions[0]
    divides = node.target in ("div", "__truediv__", "div_", operator.truediv, torch.div)
    if divides and position != 0:
        return None
    target = node.target
    if is_method:
        method = target[:-1] if target.endswith("_") and not target.endswith("__") else target

        def fn(obj, *rest, **kwargs):
            return getattr(obj, method)(*rest, **kwargs)
    else:
        fn = target
    return ScaleNode(fn, position)


class GuardNode(nn.Module):
    """An operation without an LRP rule: computed when it works on shapes and numbers (e.g.
    ``x.size(1) * x.size(2)``), refused when it combines tensors."""

    def __init__(self, fn, description: str, scale_ok: bool):
        super().__init__()
        self.fn, self.description, self.scale_ok = fn, description, scale_ok

    def forward(self, *args, **kwargs):
        values = list(args) + list(kwargs.values())
        tensors = sum(isinstance(v, torch.Tensor) for v in values)
        if tensors and not (self.scale_ok and tensors == 1):
            raise ModelError(self.description)
        return self.fn(*args, **kwargs)
