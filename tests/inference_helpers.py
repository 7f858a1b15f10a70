"""Shared by the inference tests: U-Nets with non-trivial weights.

Kaiming-initialised weights and random biases make every output pixel depend on its whole receptive
field (a default-initialised tiny net is nearly constant and would hide tiling errors).
"""
import pytest
import torch

import unet_fast
from unet_fast.reference import UNet


def kaiming_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                fan_in = parameter[0].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def kaiming_unet(seed=0, **kwargs) -> UNet:
    """The reference U-Net (depth 3, 4 channels, 3 classes unless overridden), Kaiming-initialised."""
    config = dict(in_channels=1, num_classes=3, base_channels=4, depth=3)
    config.update(kwargs)
    torch.manual_seed(seed)
    return kaiming_init(UNet(**config), seed)


def kaiming_fast_unet(seed=0, **kwargs) -> unet_fast.UNet:
    """The fast U-Net on its plain-torch backend, configured and initialised like :func:`kaiming_unet`."""
    config = dict(in_channels=1, num_classes=3, base_channels=4, depth=3)
    config.update(kwargs)
    return kaiming_init(unet_fast.UNet(backend="torch", **config), seed)


@pytest.fixture(autouse=False)
def one_thread():
    """Run torch on one thread: the tiny convolutions of these tests are 100x slower with two OpenMP
    threads on an oversubscribed CI machine (measured: 0.9 s vs 9 ms per 60 px tile) and no faster
    on an idle one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
