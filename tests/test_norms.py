import pytest
import torch
from torch import nn

from edgead.models.backbone import create_vit
from edgead.models.norms import DyT, convert_to_dyt, norm_layer


def test_dyt_equals_its_formula():
    torch.manual_seed(0)
    dyt = DyT(8)
    with torch.no_grad():
        dyt.alpha.fill_(0.7)
        dyt.weight.copy_(torch.linspace(-1, 2, 8))
        dyt.bias.copy_(torch.linspace(0.5, -0.5, 8))
    x = torch.randn(3, 5, 8) * 4
    expected = dyt.weight * torch.tanh(0.7 * x) + dyt.bias
    torch.testing.assert_close(dyt(x), expected, rtol=0, atol=1e-6)


def test_dyt_initialisation():
    dyt = DyT(16)
    assert dyt.alpha.shape == (1,) and float(dyt.alpha.detach()) == 0.5
    assert torch.equal(dyt.weight, torch.ones(16)) and torch.equal(dyt.bias, torch.zeros(16))


def test_norm_layer_by_name():
    assert isinstance(norm_layer("dyt")(4), DyT)
    ln = norm_layer("layernorm")(4)
    assert isinstance(ln, nn.LayerNorm) and ln.eps == 1e-6
    assert norm_layer("layernorm", eps=1e-8)(4).eps == 1e-8
    with pytest.raises(ValueError, match="norm must be one of layernorm, dyt, found 'batchnorm'"):
        norm_layer("batchnorm")


def test_conversion_replaces_every_layernorm_and_keeps_affine():
    torch.manual_seed(0)
    vit = create_vit("vit_tiny_test_patch14", "layernorm", (28, 28))
    n_ln = sum(isinstance(m, nn.LayerNorm) for m in vit.modules())
    assert n_ln == 2 * 12 + 1
    with torch.no_grad():
        vit.blocks[3].norm1.weight.fill_(1.5)
    convert_to_dyt(vit)
    assert not any(isinstance(m, nn.LayerNorm) for m in vit.modules())
    assert sum(isinstance(m, DyT) for m in vit.modules()) == n_ln
    assert torch.all(vit.blocks[3].norm1.weight == 1.5)
    assert vit(torch.randn(1, 3, 28, 28)).shape == (1, 5, 32)


def test_dyt_model_has_no_layernorm():
    vit = create_vit("vit_tiny_test_patch14_reg4", "dyt", (28, 28))
    assert not any(isinstance(m, nn.LayerNorm) for m in vit.modules())
