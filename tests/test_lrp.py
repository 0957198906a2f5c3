"""Tests of the LRP engine on its own: conservation, LRP-0 = gradient × input, targets, errors.

The comparison with Zennit is in ``test_lrp_zennit.py``; the test models defined here are shared.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spray.lrp as lrp
from spray.errors import ConfigError, DataError, ModelError
from spray.lrp import Composite, Epsilon, Flat, Gamma, ZPlus
from spray.lrp.layers import AFFINE

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ---------------------------------------------------------------------------------------------
# test models (random weights, realistic BatchNorm statistics)
# ---------------------------------------------------------------------------------------------


def randomize_batchnorm(model: nn.Module, eps: float | None = None) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_((torch.rand(n, generator=generator) - 0.5) * 0.4)
            if eps is not None:
                module.eps = eps
    return model


def make_mlp(bias=True, batchnorm=True, eps=None):
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(24, 32, bias=bias)]
    layers += [nn.BatchNorm1d(32)] if batchnorm else []
    layers += [nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32, bias=bias), nn.ReLU(),
               nn.Linear(32, 5, bias=bias)]
    return randomize_batchnorm(nn.Sequential(*layers), eps).eval()


def make_vgg(bias=True, batchnorm=True, eps=None):
    """VGG-style: conv-BN-ReLU blocks, max and average pooling, a grouped conv, dense head."""
    torch.manual_seed(0)

    def block(cin, cout, groups=1):
        layers = [nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=bias)]
        layers += [nn.BatchNorm2d(cout)] if batchnorm else []
        return layers + [nn.ReLU(inplace=True)]

    model = nn.Sequential(
        *block(3, 8), nn.MaxPool2d(2),
        *block(8, 16), *block(16, 16, groups=2), nn.MaxPool2d(2),
        *block(16, 16), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 32, bias=bias), *([nn.BatchNorm1d(32)] if batchnorm else []), nn.ReLU(),
        nn.Dropout(), nn.Linear(32, 10, bias=bias),
    )
    return randomize_batchnorm(model, eps).eval()


class Block(nn.Module):
    """A ResNet basic block written the usual way: ``out += identity`` in ``forward``."""

    def __init__(self, cin, cout, stride=1, bias=True, batchnorm=True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias), norm(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetStyle(nn.Module):
    """Stem, three residual blocks (two with projection shortcuts), global pooling, dense head."""

    def __init__(self, bias=True, batchnorm=True, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=bias),
                                  nn.BatchNorm2d(8) if batchnorm else nn.Identity(),
                                  nn.ReLU(), nn.MaxPool2d(2))
        self.layer1 = Block(8, 8, bias=bias, batchnorm=batchnorm)
        self.layer2 = Block(8, 16, 2, bias=bias, batchnorm=batchnorm)
        self.layer3 = Block(16, 16, 2, bias=bias, batchnorm=batchnorm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes, bias=bias)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_resnet(bias=True, batchnorm=True, eps=None):
    torch.manual_seed(0)
    return randomize_batchnorm(ResNetStyle(bias, batchnorm), eps).eval()


class FunctionalNet(nn.Module):
    """A forward with functional ReLU (in place), ``view`` and a functional average pool."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = F.relu(self.conv(x), inplace=True)
        x = F.avg_pool2d(x, 2)
        return self.fc(x.view(x.size(0), -1))


def relative_error(a, b):
    """Per-sample relative L2 error of ``a`` against ``b``."""
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-30))


INPUTS = {"mlp": (24,), "vgg": (3, 16, 16), "resnet": (3, 16, 16)}
MODELS = {"mlp": make_mlp, "vgg": make_vgg, "resnet": make_resnet}


def inputs_for(kind, n=8, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = INPUTS[kind]
    x = torch.randn((n,) + shape, generator=generator, dtype=dtype)
    return x.reshape(n, 4, 6) if kind == "mlp" else x


# ---------------------------------------------------------------------------------------------
# conservation and exactness
# ---------------------------------------------------------------------------------------------


CONSERVING = {
    "epsilon-plus-flat": dict(epsilon=0.0, stabilizer=1e-12),
    "epsilon-plus": dict(epsilon=0.0, stabilizer=1e-12),
    "epsilon-gamma-box": dict(epsilon=0.0, stabilizer=1e-12, low=-4.0, high=4.0),
    "thesis-dnn": dict(epsilon=0.0, stabilizer=1e-12, alpha=1.0, beta=0.0),
}


@pytest.mark.parametrize("kind", ["mlp", "vgg", "resnet"])
@pytest.mark.parametrize("composite", sorted(CONSERVING))
def test_conservation_without_biases(kind, composite):
    """Bias-free ReLU models, ε → 0: the relevance of every sample sums to its target logit."""
    model = MODELS[kind](bias=False, batchnorm=False).double()
    x = inputs_for(kind, dtype=torch.float64)
    targets = torch.arange(8) % 5
    relevance, logits = lrp.attribute(model, x, targets, composite, return_logits=True,
                                      **CONSERVING[composite])
    explained = logits.gather(1, targets[:, None]).squeeze(1)
    totals = relevance.flatten(1).sum(1)
    assert torch.allclose(totals, explained, rtol=1e-4, atol=1e-10), (totals, explained)
    assert relevance.abs().sum() > 0


def test_biases_absorb_relevance():
    """With biases the sums differ from the logits (the check above is able to fail)."""
    model = make_vgg(bias=True, batchnorm=False).double()
    x = inputs_for("vgg", dtype=torch.float64)
    relevance, logits = lrp.attribute(model, x, 3, "epsilon-plus", return_logits=True)
    totals = relevance.flatten(1).sum(1)
    assert not torch.allclose(totals, logits[:, 3], rtol=1e-4)


@pytest.mark.parametrize("kind", ["mlp", "vgg", "resnet"])
def test_lrp0_equals_gradient_times_input(kind):
    """Thesis eq. 2.61: LRP-0 everywhere on a bias-free ReLU net is gradient × input."""
    model = MODELS[kind](bias=False, batchnorm=False).double()
    x = inputs_for(kind, dtype=torch.float64)
    targets = torch.arange(8) % 5
    # a stabiliser of 1e-300 only keeps 0/0 (empty pooling windows) at 0
    composite = Composite(layer_map=[(AFFINE, Epsilon(1e-300))], stabilizer=1e-300)
    relevance = lrp.attribute(model, x, targets, composite)
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xg)
    assert torch.allclose(relevance, grad * x, rtol=1e-9, atol=1e-12)


def test_flat_first_layer_spreads_uniformly():
    """The flat rule on a dense first layer gives every input feature the same relevance."""
    model = make_mlp()
    relevance = lrp.attribute(model, inputs_for("mlp"), 1, "epsilon-plus-flat")
    flat = relevance.flatten(1)
    assert torch.allclose(flat, flat[:, :1].expand_as(flat), rtol=1e-6, atol=1e-7)


def test_float64_agrees_with_float32():
    model = make_vgg()
    x = inputs_for("vgg")
    r32 = lrp.attribute(model, x, 2, "epsilon-gamma-box", low=-3.0, high=3.0)
    r64 = lrp.attribute(make_vgg().double(), x.double(), 2, "epsilon-gamma-box",
                        low=-3.0, high=3.0)
    assert r32.dtype == torch.float32 and r64.dtype == torch.float64
    assert relative_error(r32.double(), r64).max() < 1e-4


# ---------------------------------------------------------------------------------------------
# targets and interface
# ---------------------------------------------------------------------------------------------


def test_targets_prediction_label_and_any_class():
    model = make_vgg()
    x = inputs_for("vgg")
    relevance, logits = lrp.attribute(model, x, "prediction", return_logits=True)
    predicted = logits.argmax(1)
    assert torch.equal(relevance, lrp.attribute(model, x, predicted))
    fixed = lrp.attribute(model, x, 7)
    assert torch.equal(fixed, lrp.attribute(model, x, torch.full((8,), 7)))
    assert not torch.allclose(fixed, lrp.attribute(model, x, torch.full((8,), 6)))
    assert torch.equal(lrp.attribute(model, x, [7] * 8), fixed)


def test_channels_last_inputs_give_the_same_maps():
    model = make_vgg()
    x = inputs_for("vgg")
    expected = lrp.attribute(model, x, 2, "epsilon-gamma-box", low=-3.0, high=3.0)
    fast = lrp.attribute(model.to(memory_format=torch.channels_last),
                         x.contiguous(memory_format=torch.channels_last), 2,
                         "epsilon-gamma-box", low=-3.0, high=3.0)
    assert relative_error(fast, expected).max() < 1e-5


def test_output_relevance_is_logit_times_one_hot():
    """Scaling the last layer scales the maps: the explained quantity is the logit."""
    model = make_vgg()
    x = inputs_for("vgg")
    before = lrp.attribute(model, x, 4, "epsilon-plus")
    with torch.no_grad():
        model[-1].weight.mul_(3.0)
        model[-1].bias.mul_(3.0)
    after = lrp.attribute(model, x, 4, "epsilon-plus")
    assert torch.allclose(after, 3.0 * before, rtol=1e-4, atol=1e-7)


def test_batches_and_cache_and_weight_changes():
    model = make_resnet()
    x = inputs_for("resnet", n=10)
    targets = torch.arange(10) % 10
    full = lrp.attribute(model, x, targets)
    chunked = lrp.attribute(model, x, targets, batch_size=3)
    assert torch.allclose(full, chunked, rtol=1e-5, atol=1e-7)
    program = lrp.prepare(model)
    assert lrp.prepare(model) is program
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)
    assert lrp.prepare(model) is not program
    flipped = lrp.attribute(model, x, targets)
    assert not torch.allclose(flipped, full)


def test_final_softmax_is_dropped():
    model = make_vgg()
    x = inputs_for("vgg")
    with_softmax = nn.Sequential(*model, nn.Softmax(dim=1)).eval()
    assert torch.equal(lrp.attribute(with_softmax, x, 3), lrp.attribute(model, x, 3))


def test_functional_forward_inplace_relu_and_view():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.randn(5, 1, 8, 8)
    composite = Composite(layer_map=[(AFFINE, Epsilon(1e-30))], stabilizer=1e-30)
    with_bias = lrp.attribute(model, x, 1, composite)
    xg = x.clone().requires_grad_(True)
    # without biases LRP-0 is gradient × input
    with torch.no_grad():
        model.conv.bias.zero_()
        model.fc.bias.zero_()
    relevance = lrp.attribute(model, x, 1, composite)
    (grad,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    assert torch.allclose(relevance, grad * x, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(with_bias, relevance, rtol=1e-3)


def test_user_mapping_by_name_and_type():
    model = make_vgg(batchnorm=False)
    x = inputs_for("vgg")
    by_name = lrp.attribute(model, x, 0, {"0": Flat(), nn.Conv2d: ZPlus(), nn.Linear: "epsilon"})
    named = lrp.attribute(model, x, 0, "epsilon-plus-flat")
    assert torch.allclose(by_name, named, rtol=1e-6, atol=1e-8)
    gamma = lrp.attribute(model, x, 0, {nn.Conv2d: Gamma(0.5), nn.Linear: Epsilon(0.1)})
    assert not torch.allclose(gamma, named)


def test_training_mode_is_switched_to_eval_with_a_warning():
    model = make_vgg()
    x = inputs_for("vgg")
    expected = lrp.attribute(model, x, 1)
    model.train()
    with pytest.warns(UserWarning, match="eval mode"):
        relevance = lrp.attribute(model, x, 1)
    assert not model.training
    assert torch.equal(relevance, expected)


def test_works_under_no_grad_and_inference_mode():
    model = make_mlp()
    x = inputs_for("mlp")
    expected = lrp.attribute(model, x, 2)
    with torch.no_grad():
        assert torch.equal(lrp.attribute(model, x, 2), expected)
    with torch.inference_mode():
        assert torch.equal(lrp.attribute(model, x, 2), expected)


# ---------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------


def test_target_out_of_range():
    model = make_mlp()
    with pytest.raises(DataError, match="target 5 of sample 2 is out of range"):
        lrp.attribute(model, inputs_for("mlp", n=4), torch.tensor([0, 1, 5, 2]))
    with pytest.raises(DataError, match="out of range"):
        lrp.attribute(model, inputs_for("mlp", n=4), -1)


def test_targets_of_wrong_length_or_type():
    model = make_mlp()
    with pytest.raises(DataError, match="one class index per sample"):
        lrp.attribute(model, inputs_for("mlp", n=4), torch.tensor([0, 1]))
    with pytest.raises(DataError, match="integer class indices"):
        lrp.attribute(model, inputs_for("mlp", n=4), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(DataError, match="unknown target"):
        lrp.attribute(model, inputs_for("mlp", n=4), "label")


def test_input_shape_mismatch():
    with pytest.raises(DataError, match=r"first convolution Conv2d\(3"):
        lrp.attribute(make_vgg(), torch.randn(2, 1, 16, 16), 0)
    with pytest.raises(DataError, match="do not fit the model"):
        lrp.attribute(make_vgg(), torch.randn(2, 3, 5, 5), 0)
    with pytest.raises(DataError, match="non-empty batch"):
        lrp.attribute(make_vgg(), torch.randn(3), 0)
    with pytest.raises(DataError, match="NaN"):
        lrp.attribute(make_mlp(), torch.full((2, 24), float("nan")), 0)


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Linear(6, 6), nn.GroupNorm(2, 6), nn.Linear(6, 2)).eval()
    with pytest.raises(ModelError, match=r"layer '1' \(GroupNorm\)"):
        lrp.attribute(model, torch.randn(2, 6), 0)
    # an explicit mapping makes it usable
    relevance = lrp.attribute(model, torch.randn(2, 6), 0, {"1": "pass", nn.Linear: "epsilon"})
    assert relevance.shape == (2, 6)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.a(x) * self.b(x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class ShapeArithmetic(nn.Module):
    """Older-style forward: ``view`` with sizes multiplied in Python."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.fc = nn.Linear(3 * 4 * 4, 2, bias=False)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.view(-1, x.size(1) * x.size(2) * x.size(3)))


def test_shape_arithmetic_in_forward_is_allowed():
    torch.manual_seed(0)
    model = ShapeArithmetic().eval()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    model.double()
    composite = Composite(layer_map=[(AFFINE, Epsilon(1e-300))], stabilizer=1e-300)
    relevance = lrp.attribute(model, x, 1, composite)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    assert torch.allclose(relevance, grad * x, rtol=1e-9, atol=1e-12)


def test_unsupported_operations_and_untraceable_models():
    with pytest.raises(ModelError, match="operation 'mul'"):
        lrp.attribute(Gated().eval(), torch.randn(2, 4), 0)
    with pytest.raises(ModelError, match="cannot trace the forward of Branchy"):
        lrp.attribute(Branchy().eval(), torch.randn(2, 4), 0)
    with pytest.raises(ModelError, match="torch.nn.Module"):
        lrp.attribute(lambda x: x, torch.randn(2, 4), 0)


def test_bad_composites():
    model, x = make_mlp(), inputs_for("mlp")
    with pytest.raises(ConfigError, match="unknown LRP composite"):
        lrp.attribute(model, x, 0, "epsilon-minus")
    with pytest.raises(ConfigError, match="needs the input bounds"):
        lrp.attribute(model, x, 0, "epsilon-gamma-box")
    with pytest.raises(ConfigError, match="has no parameter"):
        lrp.attribute(model, x, 0, "epsilon-plus", gamma=0.5)
    with pytest.raises(ConfigError, match="alpha - beta = 1"):
        lrp.AlphaBeta(alpha=1.5, beta=1.0)
    with pytest.raises(ConfigError, match="unknown LRP rule"):
        lrp.attribute(model, x, 0, {nn.Linear: "banana"})


def test_no_warning_for_eval_models():
    model = make_resnet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrp.attribute(model, inputs_for("resnet", n=2), 0)


# ---------------------------------------------------------------------------------------------
# property: conservation on random architectures
# ---------------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=10, deadline=None)
@given(widths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
       seed=st.integers(0, 2**16), classes=st.integers(1, 6))
def test_conservation_on_random_bias_free_mlps(widths, seed, classes):
    """z⁺ with flat input layer and ε → 0 conserve relevance on any bias-free ReLU MLP."""
    torch.manual_seed(seed)
    layers, previous = [], 7
    for width in widths:
        layers += [nn.Linear(previous, width, bias=False), nn.ReLU()]
        previous = width
    model = nn.Sequential(*layers, nn.Linear(previous, classes, bias=False)).double().eval()
    x = torch.randn(5, 7, dtype=torch.float64)
    composite = Composite(layer_map=[(AFFINE, ZPlus(1e-300))],
                          first_map=[(AFFINE, Flat(1e-300))], stabilizer=1e-300)
    relevance, logits = lrp.attribute(model, x, "prediction", composite, return_logits=True)
    explained = logits.max(1).values
    totals = relevance.sum(1)
    # z⁺ conserves the positive part: a neuron with no positive input passes nothing on
    assert torch.all(totals <= explained.clamp(min=0) * (1 + 1e-9) + 1e-12)
    alive = (totals.abs() > 1e-12)
    assert torch.allclose(totals[alive], explained[alive], rtol=1e-9)


@pytest.mark.parametrize("stride,padding,dilation,groups,cin", [
    (1, 1, 1, 1, 1), (1, 0, 1, 1, 3), (1, 2, 2, 1, 4), (1, 1, 1, 2, 4), (2, 1, 1, 1, 3),
    (1, 3, 1, 1, 2)])
def test_transposed_pass_matches_convolution_backward(stride, padding, dilation, groups, cin):
    """The stride-1 shortcut (a convolution with the flipped kernel) is the input gradient."""
    from spray.lrp.ops import AffineOp
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, 6, 3, stride=stride, padding=padding, dilation=dilation,
                     groups=groups).double()
    op = AffineOp(conv, conv.weight.detach(), None)
    x = torch.randn(2, cin, 9, 9, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    signal = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, signal)
    assert torch.allclose(op.transpose(signal, op.weight, x.shape), expected, atol=1e-12)


def test_nonnegative_inputs_are_known_from_the_graph():
    """Layers after a ReLU (and pooling/flattening) skip the run-time sign check; the input
    layer does not."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
                          nn.Flatten(), nn.Linear(4, 2)).eval()
    program = lrp.prepare(model, "epsilon-plus")
    layers = [m.layer for m in program.gm.modules() if hasattr(m, "layer")]
    hints = [bool(layer.params.get("nonnegative_input")) for layer in layers]
    assert hints == [False, True, False]
