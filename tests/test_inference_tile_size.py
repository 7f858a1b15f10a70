"""predict_tiled's default tile size: the activation-memory estimate and the fit to free device memory.

The free-memory query is monkeypatched, so the CUDA branch is exercised without a GPU. The estimate
is checked against the peak of live tensor storage of a real no-grad forward pass, measured by a
dispatch mode that counts every storage an op allocates until its tensor is freed.
"""
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from unet_fast import shapes
from unet_fast.inference import tiling as inference  # where default_tile_size looks up the free memory
from unet_fast.inference import default_tile_size, predict_tiled, tile_activation_bytes
from unet_fast.reference import UNet


class PeakStorage(TorchDispatchMode):
    """Peak bytes of op-allocated storages alive at once while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if storage.nbytes() and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(tensor, self._release, key)
        self.peak = max(self.peak, self.current)
        return out


@pytest.mark.parametrize("depth, base_channels, size", [(3, 8, 140), (4, 8, 188), (5, 4, 188)])
def test_estimate_bounds_the_measured_peak(depth, base_channels, size):
    model = UNet(in_channels=1, num_classes=2, base_channels=base_channels, depth=depth).eval()
    tiles = torch.randn(2, 1, size, size)
    with torch.no_grad(), PeakStorage() as meter:
        model(tiles).softmax(dim=1)
    estimate = tile_activation_bytes(size, 2, base_channels=base_channels, depth=depth)
    # An upper estimate, but not a wildly loose one (observed ratios 1.5 to 2.7).
    assert meter.peak <= estimate <= 4 * meter.peak


def test_estimate_scales_with_batch_size_and_element_size():
    config = dict(base_channels=64, depth=5)
    one = tile_activation_bytes(572, 1, **config)
    assert tile_activation_bytes(572, 4, **config) == 4 * one
    assert tile_activation_bytes(380, 1, **config) < one
    half = tile_activation_bytes(572, 1, dtype=torch.float16, **config)
    assert one / 2 < half < one  # feature maps halve, the float32 output does not
    with pytest.raises(ValueError, match="571"):
        tile_activation_bytes(571, 1, **config)


def _model(depth=5, base_channels=64):
    return UNet(in_channels=1, num_classes=2, base_channels=base_channels, depth=depth)


def test_without_a_memory_query_the_default_is_the_size_cap():
    assert default_tile_size(_model()) == 572  # CPU parameters: no device memory limit
    assert default_tile_size(_model(depth=3)) == shapes.largest_valid_input_size(572, 3)


@pytest.mark.parametrize("free_mib", [600, 1500, 3000, 100_000])
def test_largest_tile_whose_estimate_fits_the_free_memory(monkeypatch, free_mib):
    free = free_mib * 2**20
    monkeypatch.setattr(inference, "free_device_memory", lambda device: free)
    model = _model()
    size = default_tile_size(model, batch_size=4, device=torch.device("cuda"))

    def fits(s):
        return tile_activation_bytes(s, 4, base_channels=64, depth=5) <= inference.MEMORY_FRACTION * free

    assert shapes.is_valid_input_size(size, 5) and fits(size)
    larger = [s for s in range(size + 1, 573) if shapes.is_valid_input_size(s, 5)]
    assert not any(fits(s) for s in larger)
    if free_mib == 100_000:
        assert size == 572


def test_no_memory_gives_the_smallest_usable_tile(monkeypatch):
    monkeypatch.setattr(inference, "free_device_memory", lambda device: 0)
    model = _model(depth=3, base_channels=4)
    smallest = inference._smallest_tile(3, "valid", inference.context_margin(3))
    assert default_tile_size(model, device=torch.device("cuda")) == smallest


def test_predict_tiled_uses_the_memory_fitted_default(monkeypatch):
    model = _model(depth=3, base_channels=4)
    seen = []
    monkeypatch.setattr(inference, "default_tile_size", lambda m, batch_size: seen.append(batch_size) or 44)
    image = torch.randn(1, 100, 90)
    reference, _ = predict_tiled(model, image, tile_size=44)
    probs, _ = predict_tiled(model, image, batch_size=3)
    assert seen == [3]
    torch.testing.assert_close(probs, reference)


@pytest.mark.parametrize("free_gib", [40, 1000])
def test_streamed_default_tile_grows_past_572_on_cuda_only(monkeypatch, free_gib):
    from unet_fast.inference import streaming

    free = free_gib * 2**30
    monkeypatch.setattr(inference, "free_device_memory", lambda device: free)
    model = _model()
    config = inference._model_config(model)

    def fits(s):
        return tile_activation_bytes(s, 4, base_channels=64, depth=5) <= inference.MEMORY_FRACTION * free

    size = streaming._tile_cap(model, config, None, 4, torch.device("cuda"))
    assert 572 < size <= streaming.CUDA_TILE_CAP and shapes.is_valid_input_size(size, 5) and fits(size)
    larger = [s for s in range(size + 1, streaming.CUDA_TILE_CAP + 1) if shapes.is_valid_input_size(s, 5)]
    assert not any(fits(s) for s in larger)
    assert streaming._tile_cap(model, config, None, 4, torch.device("cpu")) == 572
