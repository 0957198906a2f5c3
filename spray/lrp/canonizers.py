"""Canonizers: bring a model into a form on which LRP rules are well defined.

The model is traced once with :mod:`torch.fx` into a graph of module calls and tensor
operations.  On that graph:

* **BatchNorm folding** — an eval-mode BatchNorm whose input is the output of a dense or
  convolution layer (and of nothing else) is merged into that layer's weights and bias; the
  BatchNorm node disappears.
* **Residual additions** — ``a + b`` of two computed tensors (``out += identity`` in ResNet
  blocks, ``torch.add``) becomes a proportional split of the relevance between the branches.
* **In-place ReLU** and functional activations (``F.relu(x, inplace=True)``, ``x.relu_()``)
  become out-of-place pass-through nodes.
* **Flatten/view** in ``forward`` (``torch.flatten``, ``x.view(x.size(0), -1)``) keep their
  gradient, which routes relevance back unchanged.
* A final **softmax / log-softmax / sigmoid** is dropped: the explained output is the logit.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from spray.errors import ModelError, SprayError
from spray.lrp.functional_attention import (
    ATTENTION_FUNCTIONS,
    ATTENTION_METHODS,
    attention_node_owner,
)
from spray.lrp.layers import AFFINE, BATCH_NORMS
from spray.lrp.transformer import LEAF_MODULES, expose_attention

#: modules whose plain gradient is the LRP backward pass (routing or identity layers)
GRADIENT_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity, nn.ZeroPad1d,
    nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
)
OUTPUT_SQUASHERS = (nn.Softmax, nn.LogSoftmax, nn.Sigmoid, nn.Softmin)

_SQUASH_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
                     torch.sigmoid, F.sigmoid}
_SQUASH_METHODS = {"softmax", "log_softmax", "sigmoid"}

ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_", "__add__", "__iadd__"}
RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.elu,
                  F.gelu, F.silu, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid}
RELU_METHODS = {"relu", "relu_", "tanh", "sigmoid"}
POOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                  F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.mean}
POOL_METHODS = {"mean"}
#: functions and methods whose plain gradient is the LRP backward pass
GRADIENT_FUNCTIONS = {
    operator.getitem, getattr, torch.flatten, torch.reshape, torch.cat, torch.concat,
    torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute, torch.chunk, torch.split,
    torch.unbind,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.pad,
    operator.floordiv,
}
GRADIENT_METHODS = {
    "view", "reshape", "flatten", "size", "dim", "permute", "transpose", "contiguous",
    "squeeze", "unsqueeze", "chunk", "split", "expand", "expand_as", "view_as", "reshape_as",
    "float", "double", "to", "type_as", "clone", "detach_", "max_pool2d", "unbind",
}
#: multiplication/division of a tensor by a constant number: plain gradient
SCALE_FUNCTIONS = {operator.mul, operator.truediv, torch.mul, torch.div}
SCALE_METHODS = {"mul", "div", "__mul__", "__truediv__", "mul_", "div_"}


class _Tracer(fx.Tracer):
    """fx tracer that keeps spray's attention pieces as leaves (rule-carrying nodes)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LEAF_MODULES) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` into an fx graph of leaf-module calls and tensor operations.

    ``nn.MultiheadAttention`` modules are first exposed (:func:`spray.lrp.transformer.
    expose_attention`) on a structural copy of the model, so that their projections, products
    and softmax become nodes of the graph; the model itself is not modified.
    """
    root = expose_attention(model)
    try:
        graph = _Tracer().trace(root)
    except SprayError:
        raise
    except Exception as exc:  # noqa: BLE001 - any tracing failure is a model problem
        raise ModelError(
            f"spray.lrp cannot trace the forward of {type(model).__name__} with torch.fx "
            f"({type(exc).__name__}: {exc}). LRP needs a forward without data-dependent "
            "Python control flow; wrap such logic in a submodule or simplify the forward."
        ) from exc
    return fx.GraphModule(root, graph, class_name=type(model).__name__)


def module_of(gm: fx.GraphModule, node: fx.Node):
    """The module a ``call_module`` node calls (``None`` for other nodes)."""
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def drop_output_squasher(gm: fx.GraphModule) -> str | None:
    """Remove a softmax/sigmoid producing the model output; return what was removed."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, fx.Node):
        raise ModelError("the model must return a single tensor of logits for LRP; it returns "
                         f"{type(result).__name__}")
    if not _is_squasher(gm, result):
        return None
    source = result.args[0]
    output.replace_input_with(result, source)
    if not result.users:
        gm.graph.erase_node(result)
    return str(result.target)


def _is_squasher(gm, node) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), OUTPUT_SQUASHERS)
    if node.op == "call_function":
        return node.target in _SQUASH_FUNCTIONS
    return node.op == "call_method" and node.target in _SQUASH_METHODS


def batchnorm_folds(gm: fx.GraphModule) -> dict:
    """Find BatchNorm nodes that can be folded: ``{bn_node: affine_node}``.

    A BatchNorm folds when its only input is the output of a dense/convolution layer that feeds
    nothing else, and it has running statistics (eval mode).
    """
    folds = {}
    for node in gm.graph.nodes:
        bn = module_of(gm, node)
        if not isinstance(bn, BATCH_NORMS) or not node.args:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or len(source.users) != 1:
            continue
        affine = module_of(gm, source)
        if isinstance(affine, AFFINE) and bn.running_var is not None and _bn_matches(affine, bn):
            folds[node] = source
    return folds


def _bn_matches(affine: nn.Module, bn: nn.Module) -> bool:
    out_units = affine.out_features if isinstance(affine, nn.Linear) else affine.out_channels
    if isinstance(affine, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
        return False
    return bn.num_features == out_units


def tensor_args(node: fx.Node) -> list:
    """The arguments of ``node`` that are graph values (tensors computed by the model)."""
    return [a for a in node.args if isinstance(a, fx.Node)]


def check_attention(gm: fx.GraphModule) -> None:
    """Refuse products of computed tensors and softmaxes outside the exposed attention modules.

    Raises :class:`~spray.errors.ModelError` naming the module (path and type) whose forward
    computes them: a custom attention spray cannot decompose is found when the model is
    prepared, before any relevance is computed.
    """
    for node in gm.graph.nodes:
        hit = ((node.op == "call_function" and node.target in ATTENTION_FUNCTIONS)
               or (node.op == "call_method" and node.target in ATTENTION_METHODS)
               or (node.op == "call_function" and node.target is operator.matmul))
        if not hit:
            continue
        path, kind = attention_node_owner(node)
        name = getattr(node.target, "__name__", str(node.target))
        raise ModelError(
            f"spray.lrp does not support the attention (or product) '{name}' computed in "
            f"module '{path}' ({kind}): LRP rules exist for torch.nn.MultiheadAttention "
            "without masks, F.scaled_dot_product_attention without mask, dropout or causal "
            "flag, and softmax(q @ k.transpose(-2, -1) * c, dim=-1) @ v written out.")
