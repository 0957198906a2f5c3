"""The LRP engine: a traced model whose backward pass is the relevance backward pass.

``prepare(model, composite)`` traces the model once (:mod:`spray.lrp.canonizers`), folds
BatchNorm, assigns a rule to every layer and derives the modified weights.  Each rule-carrying
node becomes a small :class:`torch.autograd.Function` (:mod:`spray.lrp.nodes`) whose forward
computes the layer output and what the rule needs, and whose backward *is* the rule; every
other node (max pooling, flatten, dropout, ...) keeps its ordinary gradient.  One forward and
one ``torch.autograd.grad`` call then yield the relevance of the input.  Prepared programs are
cached per model and composite and rebuilt when a parameter or buffer of the model changes.
"""

from __future__ import annotations

import itertools
import warnings
import weakref

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from spray.errors import ConfigError, DataError, ModelError
from spray.lrp import canonizers as canon
from spray.lrp.composites import Composite, resolve
from spray.lrp.functional_attention import expose_functional_attention
from spray.lrp.layers import ACTIVATIONS, AFFINE, AVG_POOLS, BATCH_NORMS
from spray.lrp.nodes import (
    AffineNode,
    GradientAffineNode,
    GuardNode,
    NormNode,
    PassNode,
    PreparedAffine,
    ScaleNode,
    SumNode,
    scale_node,
)
from spray.lrp.ops import AffineOp, fold_batchnorm
from spray.lrp.rules import Gradient, Norm, Pass
from spray.lrp.transformer import ModuleRule

# ---------------------------------------------------------------------------------------------
# building the program
# ---------------------------------------------------------------------------------------------


class Program:
    """A model prepared for LRP with one composite: call it like the model, then backpropagate."""

    def __init__(self, model: nn.Module, composite: Composite):
        self.composite = composite
        self.fingerprint = fingerprint(model)
        self.dtype, self.device = _model_dtype_device(model)
        self.gm = canon.trace(model)
        self.dropped_output = canon.drop_output_squasher(self.gm)
        expose_functional_attention(self.gm)
        canon.check_attention(self.gm)
        self.first_affine = None
        self._build()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x)

    def _build(self):
        gm = self.gm
        folds = canon.batchnorm_folds(gm)
        folded_into = {affine: bn for bn, affine in folds.items()}
        layers = [(node.name, node.target, canon.module_of(gm, node))
                  for node in gm.graph.nodes if node.op == "call_module"
                  and node not in folds]
        rules = self.composite.assign(layers)
        self.nonneg = _nonnegative_nodes(gm.graph)
        for index, node in enumerate(list(gm.graph.nodes)):
            replacement = self._replace(node, rules.get(node.name), folded_into.get(node), folds)
            if replacement is not None:
                name = f"_lrp_{index}"
                gm.add_submodule(name, replacement)
                node.op, node.target = "call_module", name
                if not isinstance(replacement, (GuardNode, ScaleNode)):
                    node.kwargs = {}
        for bn_node, affine_node in folds.items():
            bn_node.replace_all_uses_with(affine_node)
            gm.graph.erase_node(bn_node)
        gm.graph.lint()
        gm.recompile()

    def _replace(self, node, rule, bn, folds):
        """The module replacing ``node``, ``None`` to keep it as it is."""
        if node in folds:
            return None
        if node.op == "call_module":
            return self._replace_module(node, canon.module_of(self.gm, node), rule, bn)
        if node.op in ("call_function", "call_method"):
            return self._replace_operation(node)
        return None

    def _replace_module(self, node, module, rule, bn):
        where = f"layer '{node.target}' ({type(module).__name__})"
        if isinstance(module, AFFINE):
            return self._affine_node(node, module, rule, bn, where)
        if isinstance(rule, ModuleRule):
            return rule.node(module, where)
        if rule is not None and not isinstance(rule, (Pass, Norm, Gradient)):
            raise ConfigError(f"rule {type(rule).__name__} cannot be applied to {where}: it needs "
                              "a dense or convolution layer")
        if isinstance(rule, Pass):
            return PassNode(module)
        if isinstance(rule, Norm):
            return NormNode(module, rule.stabilizer)
        if isinstance(rule, Gradient) or isinstance(module, canon.GRADIENT_MODULES):
            return None
        if isinstance(module, ACTIVATIONS + AVG_POOLS + BATCH_NORMS):
            return None  # unmapped by a user composite: plain gradient, as in Zennit
        raise ModelError(
            f"spray.lrp does not support {where}: no LRP rule is defined for "
            f"{type(module).__module__}.{type(module).__qualname__}. Supported layers: dense, "
            "convolution, pooling, BatchNorm, LayerNorm, activations, flatten, dropout, "
            "nn.MultiheadAttention; map the layer to "
            "a rule explicitly (composite={'" + str(node.target) + "': 'pass'}) if appropriate.")

    def _affine_node(self, node, module, rule, bn, where):
        if getattr(module, "padding_mode", "zeros") != "zeros":
            raise ModelError(f"spray.lrp supports only zero padding; {where} uses "
                             f"padding_mode={module.padding_mode!r}")
        weight = module.weight.detach()
        bias = module.bias.detach() if module.bias is not None else None
        if bn is not None:
            bn_module = canon.module_of(self.gm, bn)
            weight, bias = fold_batchnorm(weight, bias, bn_module)
        op = AffineOp(module, weight, bias)
        if self.first_affine is None:
            self.first_affine = module
        if rule is None or isinstance(rule, Gradient):
            return GradientAffineNode(op) if bn is not None else None
        if isinstance(rule, Pass):
            raise ConfigError(f"rule Pass cannot be applied to {where}")
        if isinstance(rule, Norm):
            return NormNode(lambda x, op=op: op.apply(x, op.weight, op.bias), rule.stabilizer)
        layer = PreparedAffine(rule, op)
        source = node.args[0] if node.args else None
        if source in self.nonneg:
            layer.params["nonnegative_input"] = True
        return AffineNode(layer)

    def _replace_operation(self, node):
        target, is_method = node.target, node.op == "call_method"
        args = canon.tensor_args(node)
        name = target if is_method else getattr(target, "__name__", str(target))
        if (target in canon.ADD_METHODS) if is_method else (target in canon.ADD_FUNCTIONS):
            if len(args) == 2 and not node.kwargs:
                node.args = tuple(args)
                return SumNode(self.composite.sum_rule.stabilizer)
            return None  # adding a constant: plain gradient
        if (target in canon.RELU_METHODS) if is_method else (target in canon.RELU_FUNCTIONS):
            return self._unary(node, PassNode, is_method)
        if (target in canon.POOL_METHODS) if is_method else (target in canon.POOL_FUNCTIONS):
            stabilizer = self.composite.sum_rule.stabilizer
            return self._unary(node, lambda fn: NormNode(fn, stabilizer), is_method)
        if (target in canon.GRADIENT_METHODS) if is_method else (target in canon.GRADIENT_FUNCTIONS):
            return None
        scale = (target in canon.SCALE_METHODS) if is_method else (target in canon.SCALE_FUNCTIONS)
        if scale and len(args) <= 1:
            return scale_node(node, is_method)
        description = (
            f"spray.lrp does not support the operation '{name}' on tensors in the model's "
            f"forward (graph node '{node.name}'); supported are dense/convolution layers, "
            "pooling, BatchNorm, activations, residual additions, flatten/view/reshape, "
            "concatenation and scaling by constants.")
        if is_method:
            def fn(obj, *rest, **kwargs):
                return getattr(obj, target)(*rest, **kwargs)
        else:
            fn = target
        return GuardNode(fn, description, scale)

    @staticmethod
    def _unary(node, make, is_method):
        """Wrap a unary function/method call (tensor first argument) into a module node."""
        source, rest, kwargs = node.args[0], node.args[1:], dict(node.kwargs)
        if any(isinstance(a, fx.Node) for a in rest) or any(
                isinstance(v, fx.Node) for v in kwargs.values()):
            raise ModelError(f"spray.lrp cannot handle node '{node.name}': its parameters are "
                             "computed in the forward pass")
        kwargs.pop("inplace", None)
        target = node.target
        if is_method:
            in_place = target.endswith("_") and not target.endswith("__")
            method = target[:-1] if in_place else target

            def fn(x):
                return getattr(x, method)(*rest, **kwargs)
        else:
            function = {torch.relu_: torch.relu}.get(target, target)

            def fn(x):
                return function(x, *rest, **kwargs)
        node.args = (source,)
        return make(fn)


_NONNEG_MODULES = (nn.ReLU, nn.ReLU6)
_NONNEG_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6}
_NONNEG_METHODS = {"relu", "relu_"}
# operations that keep a non-negative input non-negative (first argument)
_KEEP_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Dropout, nn.Dropout1d,
                 nn.Dropout2d, nn.Dropout3d, nn.Identity) + AVG_POOLS
_KEEP_FUNCTIONS = {torch.flatten, F.max_pool1d, F.max_pool2d, F.max_pool3d,
                   F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
                   F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                   F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.dropout, torch.reshape}
_KEEP_METHODS = {"view", "reshape", "flatten", "contiguous"}


def _nonnegative_nodes(graph: fx.Graph) -> set:
    """Nodes whose value is non-negative by construction (a ReLU, then pooling, flattening,
    dropout or reshaping), so that the rules need not check their input's sign at run time."""
    nonneg = set()
    for node in graph.nodes:
        source = node.args[0] if node.args else None
        keeps = False
        if node.op == "call_module":
            assert graph.owning_module is not None  # the graph of a traced GraphModule
            module = canon.module_of(graph.owning_module, node)
            if isinstance(module, _NONNEG_MODULES):
                nonneg.add(node)
            keeps = isinstance(module, _KEEP_MODULES)
        elif node.op == "call_function":
            if node.target in _NONNEG_FUNCTIONS:
                nonneg.add(node)
            keeps = node.target in _KEEP_FUNCTIONS
        elif node.op == "call_method":
            if node.target in _NONNEG_METHODS:
                nonneg.add(node)
            keeps = node.target in _KEEP_METHODS
        if keeps and source in nonneg:
            nonneg.add(node)
    return nonneg


def _model_dtype_device(model: nn.Module):
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    if tensor is None:
        raise ModelError(f"{type(model).__name__} has no parameters; nothing to explain")
    return tensor.dtype, tensor.device


def fingerprint(model: nn.Module) -> tuple:
    """Identity and version of every parameter and buffer: changes when weights change."""
    return tuple((t.data_ptr(), t._version, t.dtype)
                 for t in itertools.chain(model.parameters(), model.buffers()))


_PROGRAMS: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def prepare(model: nn.Module, composite="epsilon-plus-flat", **kwargs) -> Program:
    """Return the (cached) LRP program of ``model`` for ``composite``."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"spray.lrp needs a torch.nn.Module, got {type(model).__name__}")
    ensure_eval(model)
    composite = resolve(composite, **kwargs)
    cache = _PROGRAMS.setdefault(model, {})
    key = composite.key()
    program = cache.get(key)
    if program is None or program.fingerprint != fingerprint(model):
        program = Program(model, composite)
        cache[key] = program
    return program


def ensure_eval(model: nn.Module) -> None:
    """Switch a model in training mode to eval mode, saying so (LRP explains the eval function)."""
    if model.training or any(m.training for m in model.modules()):
        model.eval()
        warnings.warn(
            f"{type(model).__name__} was in training mode; spray.lrp switched it to eval mode "
            "(dropout off, BatchNorm with running statistics) before explaining it.",
            UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------------------------


def tune_allocator(keep_bytes: int = 1 << 30) -> bool:
    """Let glibc keep freed large buffers for reuse instead of returning them to the system.

    By default glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it
    when freed, so each large activation of a batch is page-faulted in again; on CPU this can
    double the cost of the wide stacked convolutions.  This switches ``mmap`` allocation off and
    raises the trim threshold to ``keep_bytes`` (glibc only; a process-wide setting, so it is
    opt-in).  Returns ``True`` when the setting was applied.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, int(keep_bytes)))


def resolve_targets(targets, logits: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Class index per sample from ``targets`` (indices, one int, or "prediction")."""
    n, classes = logits.shape
    if isinstance(targets, str):
        if targets.lower() in ("prediction", "predicted", "pred", "argmax"):
            return logits.argmax(dim=1)
        raise DataError(f"unknown target {targets!r}: give class indices, a class index or "
                        "'prediction'")
    if isinstance(targets, int) and not isinstance(targets, bool):
        index = torch.full((n,), targets, dtype=torch.long, device=logits.device)
    else:
        index = torch.as_tensor(targets, device=logits.device)
        if index.ndim != 1 or index.shape[0] != n:
            raise DataError(f"targets must hold one class index per sample: expected {n}, got "
                            f"shape {tuple(index.shape)}")
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise DataError(f"targets must be integer class indices, got dtype {index.dtype}")
        index = index.long()
    bad = ((index < 0) | (index >= classes)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise DataError(f"target {int(index[i])} of sample {i + offset} is out of range: the "
                        f"model has {classes} output classes (0..{classes - 1})")
    return index


def run(program: Program, inputs: torch.Tensor, targets, offset: int = 0):
    """Relevance and logits for one batch."""
    x = inputs.detach().to(device=program.device, dtype=program.dtype).requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        try:
            logits = program(x)
        except (RuntimeError, AssertionError) as exc:  # torchvision's ViT asserts its size
            raise DataError(f"inputs of shape {tuple(inputs.shape)} do not fit the model: "
                            f"{str(exc).splitlines()[0]}") from exc
        if logits.ndim != 2:
            raise ModelError(f"the model output must be logits of shape (batch, classes), got "
                             f"{tuple(logits.shape)}")
        index = resolve_targets(targets, logits.detach(), offset)
        seed = torch.zeros_like(logits)
        seed.scatter_(1, index[:, None], logits.detach().gather(1, index[:, None]))
        (relevance,) = torch.autograd.grad(logits, x, seed)
    return relevance, logits.detach()
