"""The reference U-Net: the paper's architecture, its options and its errors."""
import pytest
import torch
import torch.nn.functional as F

from unet_fast import shapes
from unet_fast.reference import UNet

# Documented in unet_fast/reference/unet.py; other code (checkpoints, unet_fast.UNet) relies on them.
DEPTH2_STATE_KEYS = [
    "encoder.0.conv1.weight", "encoder.0.conv1.bias", "encoder.0.conv2.weight", "encoder.0.conv2.bias",
    "encoder.1.conv1.weight", "encoder.1.conv1.bias", "encoder.1.conv2.weight", "encoder.1.conv2.bias",
    "decoder.0.up.weight", "decoder.0.up.bias",
    "decoder.0.block.conv1.weight", "decoder.0.block.conv1.bias",
    "decoder.0.block.conv2.weight", "decoder.0.block.conv2.bias",
    "head.weight", "head.bias",
]


def test_paper_model_parameters_and_layer_shapes():
    model = UNet()
    assert sum(p.numel() for p in model.parameters()) == 31_030_658
    state = model.state_dict()
    assert state["encoder.0.conv1.weight"].shape == (64, 1, 3, 3)
    assert state["encoder.4.conv2.weight"].shape == (1024, 1024, 3, 3)
    assert state["decoder.0.up.weight"].shape == (1024, 512, 2, 2)  # halves the channels
    assert state["decoder.0.block.conv1.weight"].shape == (512, 1024, 3, 3)  # skip + upsampled
    assert state["decoder.3.block.conv2.weight"].shape == (64, 64, 3, 3)
    assert state["head.weight"].shape == (2, 64, 1, 1)
    assert model.dropout.p == 0.5


def test_state_dict_keys_are_stable():
    assert list(UNet(depth=2, base_channels=4).state_dict()) == DEPTH2_STATE_KEYS
    bilinear = UNet(depth=2, base_channels=4, up_mode="bilinear", norm="batch").state_dict()
    assert "decoder.0.up.conv.weight" in bilinear and "encoder.1.norm2.running_mean" in bilinear


@pytest.mark.parametrize("depth,size", [(2, 20), (3, 60), (4, 92), (5, 188)])
def test_output_size_follows_shapes(depth, size):
    model = UNet(in_channels=3, num_classes=4, base_channels=4, depth=depth).eval()
    out = model(torch.randn(2, 3, size, size + 2 ** (depth - 1)))
    assert out.shape == (2, 4, shapes.output_size(size, depth), shapes.output_size(size + 2 ** (depth - 1), depth))


def test_forward_equals_a_hand_written_unet():
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3).eval()
    x = torch.randn(1, 1, 60, 60)
    p = dict(model.named_parameters())

    def block(t, prefix):
        t = F.relu(F.conv2d(t, p[prefix + "conv1.weight"], p[prefix + "conv1.bias"]))
        return F.relu(F.conv2d(t, p[prefix + "conv2.weight"], p[prefix + "conv2.bias"]))

    s0 = block(x, "encoder.0.")
    s1 = block(F.max_pool2d(s0, 2), "encoder.1.")
    t = block(F.max_pool2d(s1, 2), "encoder.2.")
    for stage, skip in enumerate([s1, s0]):
        t = F.conv_transpose2d(t, p[f"decoder.{stage}.up.weight"], p[f"decoder.{stage}.up.bias"], stride=2)
        off = (skip.shape[-1] - t.shape[-1]) // 2
        crop = skip[..., off : off + t.shape[-2], off : off + t.shape[-1]]
        t = block(torch.cat([crop, t], 1), f"decoder.{stage}.block.")
    expected = F.conv2d(t, p["head.weight"], p["head.bias"])
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "options",
    [dict(padding="same"), dict(up_mode="bilinear"), dict(norm="batch"), dict(norm="instance"),
     dict(skip_connections=False)],
)
def test_options(options):
    model = UNet(base_channels=4, depth=3, **options)
    size = 64 if options.get("padding") == "same" else 60
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 2, *(2 * [shapes.output_size(size, 3, options.get("padding", "valid"))]))
    if not options.get("skip_connections", True):
        assert model.decoder[0].block.conv1.in_channels == 8  # only the upsampled channels


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2, dropout=0.5)
    x = torch.randn(1, 1, 20, 20)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_gradients_reach_every_parameter_and_the_input():
    model = UNet(base_channels=4, depth=3, dropout=0.0)
    x = torch.randn(2, 1, 60, 60, requires_grad=True)
    model(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_torch_compile_and_export_on_cpu():
    model = UNet(base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 36, 36)
    expected = model(x)
    torch.testing.assert_close(torch.compile(model)(x), expected, rtol=1e-4, atol=1e-5)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), expected, rtol=1e-5, atol=1e-6)


def test_bad_sizes_and_channels_raise_clear_errors():
    model = UNet(base_channels=4)
    with pytest.raises(ValueError, match=r"input height: input size 500 .* nearest valid sizes are 492 or 508"):
        model(torch.randn(1, 1, 500, 572))
    with pytest.raises(ValueError, match="input width: .*188 \\+ 16k"):
        model(torch.randn(1, 1, 572, 180))
    with pytest.raises(ValueError, match="expected 1 input channel"):
        model(torch.randn(1, 3, 572, 572))
    with pytest.raises(ValueError, match="4-d"):
        model(torch.randn(1, 572, 572))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 1, 572, 572, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiples of 16"):
        UNet(base_channels=4, padding="same")(torch.randn(1, 1, 100, 96))
    with pytest.raises(ValueError, match="input is on meta but the model's parameters are on cpu"):
        model(torch.randn(1, 1, 572, 572, device="meta"))


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(depth=1), "depth"), (dict(base_channels=0), "base_channels"), (dict(padding="reflect"), "padding"),
     (dict(up_mode="nearest"), "up_mode"), (dict(norm="group"), "norm"), (dict(dropout=1.5), "dropout"),
     (dict(in_channels=2.5), "in_channels")],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)
