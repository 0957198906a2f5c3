"""spray.lrp against Zennit, the reference LRP implementation (peers extra).

Every composite, on an MLP, a VGG-style CNN with BatchNorm and max pooling, and a ResNet-style
model with residual blocks: per-sample relative L2 error ≤ 1e-5 in float32, ≤ 1e-10 in float64.

Zennit's BatchNorm merge leaves the merged BatchNorm computing ``x / sqrt(1 + eps)`` (it resets
the running variance to 1 but keeps ``eps``), a relative change of ~5e-6 per BatchNorm layer.
spray folds exactly, so the comparisons merge with :class:`ExactMergeBatchNorm`, which is
Zennit's merge plus ``eps = 0`` on the merged layer; ``test_zennit_merge_keeps_eps_scaling``
pins the difference.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spray.lrp as lrp
from spray.lrp.layers import AFFINE, CONVOLUTIONS, DENSE

zennit = pytest.importorskip("zennit")

from test_lrp import MODELS, Block, inputs_for, make_vgg, relative_error  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit import types as zt  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    SpecialFirstLayerMapComposite,
    layer_map_base,
)
from zennit.layer import Sum  # noqa: E402

pytestmark = [pytest.mark.peers, pytest.mark.usefixtures("single_torch_thread")]

LOW, HIGH = -3.0, 3.0


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """Zennit's sequential BatchNorm merge, leaving the merged BatchNorm an exact identity."""

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self.saved_eps, batch_norm.eps = batch_norm.eps, 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.saved_eps


def _summed_block_forward(self, x):
    """``Block.forward`` with the residual addition as a Zennit ``Sum`` layer."""
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
        identity = self.downsample(x)
    out = self.canonizer_sum(torch.stack([identity, out], dim=-1))
    return self.relu(out)


class BlockCanonizer(AttributeCanonizer):
    """Zennit canonizer for the test ResNet blocks (like its torchvision ResNet canonizer)."""

    def __init__(self):
        super().__init__(self._attributes)

    @staticmethod
    def _attributes(name, module):
        if isinstance(module, Block):
            return {"forward": _summed_block_forward.__get__(module), "canonizer_sum": Sum()}
        return None


def canonizers():
    return [ExactMergeBatchNorm(), BlockCanonizer()]


def zennit_thesis_dnn(canonizers):
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(zt.Convolution, zr.AlphaBeta(2.0, 1.0)),
                                      (nn.Linear, zr.Epsilon(0.01))],
        first_map=[(zt.Linear, zr.ZBox(LOW, HIGH))], canonizers=canonizers)


def zennit_custom_signed(canonizers):
    """γ on the (signed) input layer, α3β2 on convolutions, ε=0.1 on dense layers."""
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(zt.Convolution, zr.AlphaBeta(3.0, 2.0)),
                                      (nn.Linear, zr.Epsilon(0.1))],
        first_map=[(zt.Linear, zr.Gamma(0.5))], canonizers=canonizers)


def zennit_custom_wsquare(canonizers):
    """w² on the input layer, γ=1 on convolutions, z⁺ on dense layers."""
    return SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(zt.Convolution, zr.Gamma(1.0)),
                                      (nn.Linear, zr.ZPlus())],
        first_map=[(zt.Linear, zr.WSquare())], canonizers=canonizers)


CUSTOM_SIGNED = lrp.Composite(
    layer_map=[(CONVOLUTIONS, lrp.AlphaBeta(3.0, 2.0)), (DENSE, lrp.Epsilon(0.1))],
    first_map=[(AFFINE, lrp.Gamma(0.5))])
CUSTOM_WSQUARE = lrp.Composite(
    layer_map=[(CONVOLUTIONS, lrp.Gamma(1.0)), (DENSE, lrp.ZPlus())],
    first_map=[(AFFINE, lrp.WSquare())])

#: (our composite, its parameters, a factory of the equivalent Zennit composite)
CASES = {
    "epsilon-plus-flat": ("epsilon-plus-flat", {}, lambda c: EpsilonPlusFlat(canonizers=c)),
    "epsilon-plus": ("epsilon-plus", {}, lambda c: EpsilonPlus(canonizers=c)),
    "epsilon-alpha2-beta1-flat": ("epsilon-alpha2-beta1-flat", {},
                                  lambda c: EpsilonAlpha2Beta1Flat(canonizers=c)),
    "epsilon-alpha2-beta1": ("epsilon-alpha2-beta1", {},
                             lambda c: EpsilonAlpha2Beta1(canonizers=c)),
    "epsilon-gamma-box": ("epsilon-gamma-box", {"low": LOW, "high": HIGH},
                          lambda c: EpsilonGammaBox(low=LOW, high=HIGH, canonizers=c)),
    "thesis-dnn": ("thesis-dnn", {"low": LOW, "high": HIGH}, zennit_thesis_dnn),
    "custom-signed-gamma": (CUSTOM_SIGNED, {}, zennit_custom_signed),
    "custom-wsquare": (CUSTOM_WSQUARE, {}, zennit_custom_wsquare),
}


def zennit_relevance(model, x, targets, composite):
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.clone(), lambda out: out * nn.functional.one_hot(
            targets, out.shape[1]).to(out.dtype))
    return relevance


def compare(kind, case, dtype, n=6):
    model = MODELS[kind]().to(dtype)
    x = inputs_for(kind, n=n, dtype=dtype).clamp(LOW, HIGH)
    targets = torch.arange(n) % 5
    ours, params, theirs = CASES[case]
    relevance = lrp.attribute(model, x, targets, ours, **params)
    reference = zennit_relevance(model, x, targets, theirs(canonizers()))
    assert relevance.dtype == reference.dtype == dtype
    assert reference.abs().sum() > 0
    return relative_error(relevance, reference)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", ["mlp", "vgg", "resnet"])
def test_matches_zennit_float32(kind, case):
    error = compare(kind, case, torch.float32)
    assert error.max() <= 1e-5, error


@pytest.mark.parametrize("case", ["epsilon-plus-flat", "epsilon-gamma-box", "thesis-dnn",
                                  "custom-signed-gamma"])
@pytest.mark.parametrize("kind", ["mlp", "vgg", "resnet"])
def test_matches_zennit_float64(kind, case):
    error = compare(kind, case, torch.float64)
    assert error.max() <= 1e-10, error


def test_matches_zennit_on_torchvision_resnet():
    """A real torchvision ResNet (basic blocks, ``out += identity``) with Zennit's ResNet canonizer."""
    resnet = pytest.importorskip("torchvision.models.resnet")
    from test_lrp import randomize_batchnorm
    from zennit.canonizers import CompositeCanonizer
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    torch.manual_seed(0)
    model = randomize_batchnorm(resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=10))
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([0, 4, 9])
    canonizer = CompositeCanonizer([ExactMergeBatchNorm(), ResNetBasicBlockCanonizer(),
                                    ResNetBottleneckCanonizer()])
    for name, zennit_composite in (("epsilon-plus-flat", EpsilonPlusFlat),
                                   ("epsilon-alpha2-beta1-flat", EpsilonAlpha2Beta1Flat)):
        ours = lrp.attribute(model, x, targets, name)
        reference = zennit_relevance(model, x, targets, zennit_composite(canonizers=[canonizer]))
        assert relative_error(ours, reference).max() <= 1e-5


def test_zennit_adapter_runs_zennit():
    """``composite="zennit:<Name>"`` gives exactly what Zennit gives, and matches our engine."""
    model = make_vgg(eps=0.0)
    x = inputs_for("vgg")
    targets = torch.arange(8) % 10
    adapted = lrp.attribute(model, x, targets, "zennit:EpsilonGammaBox", low=LOW, high=HIGH)
    direct = zennit_relevance(model, x, targets,
                              EpsilonGammaBox(low=LOW, high=HIGH,
                                              canonizers=[SequentialMergeBatchNorm()]))
    assert torch.equal(adapted, direct)
    by_registry_name = lrp.attribute(model, x, targets, "zennit:epsilon_gamma_box",
                                     low=LOW, high=HIGH)
    assert torch.equal(by_registry_name, direct)
    ours = lrp.attribute(model, x, targets, "epsilon-gamma-box", low=LOW, high=HIGH)
    assert relative_error(ours, direct).max() <= 1e-5
    relevance, logits = lrp.attribute(model, x, "prediction", "zennit:EpsilonPlusFlat",
                                      return_logits=True)
    assert torch.allclose(relevance, lrp.attribute(model, x, logits.argmax(1)), rtol=1e-4,
                          atol=1e-7)


def test_zennit_adapter_errors():
    from spray.errors import ConfigError

    with pytest.raises(ConfigError, match="Zennit has no composite"):
        lrp.attribute(make_vgg(), inputs_for("vgg"), 0, "zennit:NoSuchComposite")


def test_zennit_merge_keeps_eps_scaling():
    """Why the comparisons use ExactMergeBatchNorm: with Zennit's own merge, the merged network
    differs from the original by the leftover 1/sqrt(1 + eps) of each BatchNorm."""
    model = make_vgg()  # BatchNorm eps = 1e-5
    x = inputs_for("vgg")
    targets = torch.arange(8) % 10
    ours = lrp.attribute(model, x, targets, "epsilon-plus-flat")
    plain = zennit_relevance(model, x, targets,
                             EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]))
    exact = zennit_relevance(model, x, targets, EpsilonPlusFlat(canonizers=[ExactMergeBatchNorm()]))
    assert relative_error(ours, exact).max() <= 1e-5
    assert 1e-6 < relative_error(ours, plain).max() < 1e-3
