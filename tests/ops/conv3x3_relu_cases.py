"""Inputs, runs and the plain reference shared by the conv3x3_relu test modules."""
import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops import conv3x3_relu
from unet_fast.reference.functional import center_crop_concat

# (batch, skip channels, x channels, out channels, H, W, crop difference, relu, pool, bias)
CASES = [
    pytest.param(2, 3, 5, 7, 8, 10, (2, 4), True, True, True, id="skip-crop-pool"),
    pytest.param(2, 0, 5, 6, 7, 9, (0, 0), True, False, False, id="odd-size-no-bias"),
    pytest.param(1, 4, 17, 6, 10, 8, (0, 0), False, True, True, id="crop0-no-relu-pool"),
    pytest.param(3, 0, 1, 40, 6, 6, (0, 0), True, True, True, id="one-channel-two-out-tiles"),
    pytest.param(2, 35, 3, 5, 5, 7, (2, 2), True, False, True, id="two-skip-channel-tiles"),
]


def make_inputs(batch, c0, c1, c_out, height, width, crop, bias, dtype, device, channels_last=False):
    generator = torch.Generator().manual_seed(batch * 1000 + c0 * 100 + c1 * 10 + c_out)
    scale = (9 * (c0 + c1)) ** -0.5  # unit-variance outputs, so tolerances mean the same for every shape

    def rand(*shape, std=1.0):
        return (torch.randn(*shape, generator=generator) * std).to(dtype=dtype, device=device)

    x = rand(batch, c1, height, width)
    skip = rand(batch, c0, height + crop[0], width + crop[1]) if c0 else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    inputs = {
        "x": x,
        "weight": rand(c_out, c0 + c1, 3, 3, std=scale),
        "bias": rand(c_out) if bias else None,
        "skip": skip,
    }
    return {name: t.requires_grad_() if t is not None else None for name, t in inputs.items()}


def plain_reference(x, weight, bias, skip, relu, pool):
    """Straight from torch.nn.functional, independent of the op's code."""
    inputs = x if skip is None else center_crop_concat(skip, x)
    y = F.conv2d(inputs, weight, bias)
    y = F.relu(y) if relu else y
    return (y, F.max_pool2d(y, 2)) if pool else (y,)


def run(inputs, relu, pool, backend):
    """Outputs as a tuple, and the gradients of a random linear function of them for every input."""
    out = conv3x3_relu(inputs["x"], inputs["weight"], inputs["bias"], skip=inputs["skip"], relu=relu, pool=pool, backend=backend)
    out = out if pool else (out,)
    return out, grads_of(out, inputs)


def grads_of(out, inputs):
    generator = torch.Generator().manual_seed(7)
    loss = sum((o.float() * torch.randn(o.shape, generator=generator).to(o.device)).sum() for o in out)
    names = [name for name, t in inputs.items() if t is not None]
    grads = torch.autograd.grad(loss, [inputs[name] for name in names])
    return dict(zip(names, grads))


def as_float(inputs):
    return {k: None if t is None else t.detach().float().requires_grad_() for k, t in inputs.items()}


def call_args(inputs):
    return {"x": inputs["x"], "weight": inputs["weight"], "bias": inputs["bias"], "skip": inputs["skip"]}
