"""Affine operators (dense and convolution layers) with the helpers the rules need.

A rule computes one or more modified forward passes of a layer and the matching transposed
passes (the input gradient of the layer for a given output signal).  The helpers here let a rule
run several weight variants as **one** stacked operator: weights are concatenated along the
output units (per convolution group), the result is split back, and the transposed pass takes the
concatenated output signals, so ``W1ᵀ s1 + W2ᵀ s2`` costs one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spray.errors import ConfigError

_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class AffineOp:
    """A dense or convolution layer as a pure function of (input, weight, bias).

    ``weight`` and ``bias`` are the (possibly BatchNorm-folded) parameters of the layer; the
    rules derive their modified weights from them once, when the model is prepared.
    """

    def __init__(self, module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None):
        self.module_type = type(module).__name__
        self.weight = weight
        self.bias = bias
        self.is_conv = isinstance(module, nn.modules.conv._ConvNd)
        self.groups: int = 1
        if isinstance(module, nn.modules.conv._ConvNd):
            self.ndim = weight.ndim - 2
            self.stride: tuple[int, ...] = tuple(module.stride)
            self.padding: tuple[int, ...] = tuple(module.padding)  # type: ignore[arg-type]
            self.dilation: tuple[int, ...] = tuple(module.dilation)
            self.groups = int(module.groups)
            self.out_units = weight.shape[0]
            self._conv = _CONV_FUNCTIONS[self.ndim]
        else:
            self.out_units = weight.shape[0]

    # -- plain operator -------------------------------------------------------------------
    def apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """Forward pass ``weight * x + bias``."""
        if self.is_conv:
            return self._conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, weight, bias)

    def transpose(self, signal: torch.Tensor, weight: torch.Tensor, input_shape) -> torch.Tensor:
        """Transposed pass ``weightᵀ signal``: the input gradient for output gradient ``signal``."""
        if not self.is_conv:
            return signal.matmul(weight)
        if self._patchwise(weight):
            return self._patch_transpose(signal, weight, input_shape)
        flipped = self._flipped(weight)
        if flipped is not None:
            # stride 1: the transposed convolution is a convolution with the flipped, transposed
            # kernel; on CPU this is much faster than convolution_backward for few channels
            out = self._conv(signal, flipped[1], None, 1, flipped[2], self.dilation, self.groups)
            if tuple(out.shape) == tuple(input_shape):
                return out
        dummy = signal.new_empty(1).expand(tuple(input_shape))
        return torch.ops.aten.convolution_backward(
            signal, dummy, weight, None, self.stride, self.padding, self.dilation,
            False, [0] * self.ndim, self.groups, (True, False, False),
        )[0]

    def _patchwise(self, weight: torch.Tensor) -> bool:
        """True for a 2-d patch embedding: non-overlapping kernels (stride = kernel size), no
        padding, dilation or groups, whose transposed pass is one matrix product."""
        return (self.ndim == 2 and self.groups == 1 and tuple(self.stride) == tuple(weight.shape[2:])
                and not any(self.padding) and all(d == 1 for d in self.dilation))

    @staticmethod
    def _patch_transpose(signal: torch.Tensor, weight: torch.Tensor, input_shape) -> torch.Tensor:
        """Transposed pass of a patch embedding: each output position spreads ``Wᵀ s`` over
        its own patch; pixels beyond the last whole patch receive nothing."""
        n, out_channels, rows, cols = signal.shape
        channels, kh, kw = weight.shape[1:]
        patches = signal.permute(0, 2, 3, 1).reshape(-1, out_channels).matmul(
            weight.reshape(out_channels, -1))
        image = patches.reshape(n, rows, cols, channels, kh, kw).permute(0, 3, 1, 4, 2, 5)
        image = image.reshape(n, channels, rows * kh, cols * kw)
        height, width = input_shape[2], input_shape[3]
        if (height, width) != (rows * kh, cols * kw):
            image = torch.nn.functional.pad(image, (0, width - cols * kw, 0, height - rows * kh))
        return image

    def _flipped(self, weight: torch.Tensor):
        """``(weight, flipped kernel, padding)`` for a stride-1 transposed pass, else ``None``
        (cached per weight tensor; the rules' weights are prepared once)."""
        if any(s != 1 for s in self.stride):
            return None
        cache = self.__dict__.setdefault("_flip_cache", {})
        entry = cache.get(id(weight))
        if entry is not None and entry[0] is weight:
            return entry if entry[1] is not None else None
        kernel = weight.shape[2:]
        padding = tuple(d * (k - 1) - p for d, k, p in zip(self.dilation, kernel, self.padding))
        flipped = None
        if min(padding) >= 0:
            g = self.groups
            grouped = weight.reshape(g, weight.shape[0] // g, *weight.shape[1:])
            flipped = grouped.transpose(1, 2).reshape(
                weight.shape[1] * g, weight.shape[0] // g, *kernel)
            flipped = flipped.flip(tuple(range(2, 2 + self.ndim))).contiguous()
        if len(cache) > 16:
            cache.clear()
        entry = cache[id(weight)] = (weight, flipped, padding)
        return entry if flipped is not None else None

    # -- stacking along the output units --------------------------------------------------
    def stack_weights(self, weights: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate weight variants along the output units (group-aware for convolutions)."""
        if self.groups == 1:
            return torch.cat(weights, dim=0)
        parts = [w.reshape(self.groups, -1, *w.shape[1:]) for w in weights]
        stacked = torch.cat(parts, dim=1)
        return stacked.reshape(-1, *weights[0].shape[1:])

    def stack_bias(self, biases: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate bias variants in the same order as :meth:`stack_weights`."""
        if self.groups == 1:
            return torch.cat(biases, dim=0)
        parts = [b.reshape(self.groups, -1) for b in biases]
        return torch.cat(parts, dim=1).reshape(-1)

    def split_output(self, y: torch.Tensor, count: int) -> list[torch.Tensor]:
        """Split the output of a stacked forward pass into its ``count`` variants."""
        dim = 1 if self.is_conv else -1
        if self.groups == 1:
            return list(y.split(self.out_units, dim=dim))
        shape = y.shape
        grouped = y.reshape(shape[0], self.groups, count, self.out_units // self.groups, *shape[2:])
        return [grouped[:, :, i].reshape(shape[0], self.out_units, *shape[2:]) for i in range(count)]

    def join_signals(self, signals: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate output signals for one stacked transposed pass (inverse of the split)."""
        dim = 1 if self.is_conv else -1
        if self.groups == 1:
            return torch.cat(signals, dim=dim)
        shape = signals[0].shape
        parts = [s.reshape(shape[0], self.groups, 1, -1, *shape[2:]) for s in signals]
        return torch.cat(parts, dim=2).reshape(shape[0], -1, *shape[2:])

    def empty_joined(self, like: torch.Tensor, count: int):
        """An uninitialised joined buffer for ``count`` maps shaped like ``like`` and its views
        (one per map), or ``None`` for grouped convolutions (use :meth:`join_signals`)."""
        if self.groups != 1:
            return None
        dim = 1 if self.is_conv else like.ndim - 1
        shape = list(like.shape)
        shape[dim] *= count
        buffer = like.new_empty(shape)
        return buffer, list(buffer.split(like.shape[dim], dim=dim))

    def divide_signal(self, relevance: torch.Tensor, denominators: torch.Tensor,
                      count: int) -> torch.Tensor:
        """``join_signals([R / d_1, ..., R / d_k])`` in one pass, from joined denominators."""
        return self.expand_signal(denominators, relevance, count, torch.div)

    def expand_signal(self, coefficients: torch.Tensor, relevance: torch.Tensor, count: int,
                      combine=torch.mul) -> torch.Tensor:
        """``join_signals([R ⊙ c_1, ..., R ⊙ c_k])`` in one pass, from joined coefficients
        (``combine=torch.div`` divides instead)."""
        if self.is_conv:
            n, c, spatial = relevance.shape[0], relevance.shape[1], relevance.shape[2:]
            g = self.groups
            coef = coefficients.reshape(n, g, count, c // g, *spatial)
            signal = combine(relevance.reshape(n, g, 1, c // g, *spatial), coef)
            return signal.reshape(n, count * c, *spatial)
        lead, c = relevance.shape[:-1], relevance.shape[-1]
        signal = combine(relevance.unsqueeze(-2), coefficients.reshape(*lead, count, c))
        return signal.reshape(*lead, count * c)

    # -- stacking along the input units (inputs of both signs) -----------------------------
    def stack_inputs(self, weights: list[torch.Tensor]):
        """Concatenate weights along the input units, or ``None`` for grouped convolutions."""
        if self.groups != 1:
            return None
        return torch.cat(weights, dim=1)

    def join_inputs(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate inputs along the input units (channels or features)."""
        return torch.cat(inputs, dim=1 if self.is_conv else -1)

    def joined_input_shape(self, shape, count: int) -> tuple:
        """Per-sample shape of ``count`` joined inputs of per-sample-shape ``shape[1:]``."""
        if self.is_conv:
            return (shape[1] * count,) + tuple(shape[2:])
        return tuple(shape[1:-1]) + (shape[-1] * count,)

    def split_inputs(self, grad: torch.Tensor, count: int) -> list[torch.Tensor]:
        """Split a transposed pass over joined inputs back into ``count`` parts."""
        dim = 1 if self.is_conv else -1
        return list(grad.chunk(count, dim=dim))

    def bias_view(self, bias: torch.Tensor) -> torch.Tensor:
        """Reshape a per-unit bias so that it broadcasts against the layer output."""
        if self.is_conv:
            return bias.reshape(1, -1, *([1] * self.ndim))
        return bias


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None,
                   bn: nn.modules.batchnorm._NormBase):
    """Fold an eval-mode BatchNorm that follows a dense/convolution layer into its parameters.

    Returns the new ``(weight, bias)``; the BatchNorm then becomes the identity.
    """
    if bn.running_mean is None or bn.running_var is None:
        return None
    denominator = (bn.running_var + bn.eps) ** 0.5
    scale = bn.weight / denominator if bn.weight is not None else 1.0 / denominator
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    if bias is None:
        bias = torch.zeros_like(bn.running_mean)
    index = (slice(None),) + (None,) * (weight.ndim - 1)
    new_weight = weight * scale[index]
    new_bias = (bias - bn.running_mean) * scale + shift
    return new_weight.detach(), new_bias.detach()


# ---------------------------------------------------------------------------------------------
# numeric helpers of the rules
# ---------------------------------------------------------------------------------------------


def stabilize(z: torch.Tensor, epsilon: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``z + ε·sign(z)`` with sign(+0) = 1, so that the result is never zero.

    ``copysign`` is several times faster than ``torch.where`` or sign arithmetic on CPU; it
    treats an exact -0 as negative, which only matters where all contributions vanish.
    """
    step = torch.tensor(epsilon, dtype=z.dtype, device=z.device)
    if out is None:
        return torch.copysign(step, z).add_(z)
    return torch.copysign(step, z, out=out).add_(z)


def joined_denominators(op, parts, epsilon):
    """Stabilised denominators of ``parts`` written into one joined buffer (no concatenation)."""
    joined = op.empty_joined(parts[0], len(parts))
    if joined is None:
        return op.join_signals([stabilize(p, epsilon) for p in parts])
    buffer, views = joined
    for part, view in zip(parts, views):
        stabilize(part, epsilon, out=view)
    return buffer


def is_nonnegative(x: torch.Tensor) -> bool:
    """True when the layer input has no negative entry (e.g. after a ReLU): x⁻ = 0."""
    return bool(x.min() >= 0) if x.numel() else True


def bound_like(value, x: torch.Tensor) -> torch.Tensor:
    """Broadcast an input bound (scalar, per-sample shape, or batch-shaped) against ``x``.

    The result has batch size 1 (shared by all samples) or the batch size of ``x``.
    """
    tensor = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if tensor.ndim == x.ndim and tensor.shape[0] > x.shape[0]:
        tensor = tensor[: x.shape[0]]
    if tensor.ndim < x.ndim:
        tensor = tensor.unsqueeze(0) if tensor.ndim == x.ndim - 1 else tensor
    try:
        target = (tensor.shape[0] if tensor.ndim == x.ndim else 1,) + tuple(x.shape[1:])
        return torch.broadcast_to(tensor, target)
    except RuntimeError as exc:
        raise ConfigError(
            f"z^B bound of shape {tuple(tensor.shape)} does not broadcast to inputs of shape "
            f"{tuple(x.shape)}") from exc


def signed_apply(op, x, stacked, bias, pair):
    """``w_a x⁺ + w_b x⁻ + bias`` for inputs of both signs (one call when weights stack)."""
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    if stacked is not None:
        return op.apply(op.join_inputs([xp, xn]), stacked, bias)
    return op.apply(xp, pair[0], bias) + op.apply(xn, pair[1])


def signed_transpose(op, x, signal, stacked, pair):
    """``x⁺ ⊙ w_aᵀ s + x⁻ ⊙ w_bᵀ s`` for inputs of both signs (one call when weights stack)."""
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    if stacked is not None:
        shape = (x.shape[0],) + op.joined_input_shape(x.shape, 2)
        grad_pos, grad_neg = op.split_inputs(op.transpose(signal, stacked, shape), 2)
        return xp * grad_pos + xn * grad_neg
    return xp * op.transpose(signal, pair[0], x.shape) + xn * op.transpose(signal, pair[1], x.shape)
