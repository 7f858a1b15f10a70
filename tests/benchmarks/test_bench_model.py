"""Model cases of the suite at CI size: the quick shape (depth 3, 8 channels, 92x92, batch 1), fp32."""
import pytest

from unet_fast.benchmark.cases import QUICK_SHAPES
from unet_fast.benchmark.flops import forward_flops, train_step_flops
from unet_fast.benchmark.providers import Skip, build_model, make_runnable, reference_model

SHAPE = QUICK_SHAPES[0]
FLOPS = {"forward": forward_flops, "train-step": train_step_flops}


@pytest.mark.parametrize("mode", ["forward", "train-step"])
@pytest.mark.parametrize("provider", ["reference", "reference-cl", "unet_fast", "unet_fast-recompute"])
def test_model(timed, benchmark, device, provider, mode):
    try:
        model = build_model(provider, reference_model(SHAPE, device), compile_mode=None, quick=True)
        runnable = make_runnable(mode, provider, model, SHAPE, "fp32", device)
    except Skip as skip:
        pytest.skip(str(skip))
    benchmark.group = f"model {mode} {SHAPE.name}"
    benchmark.extra_info["flops"] = FLOPS[mode](SHAPE.config, SHAPE.size, SHAPE.size, SHAPE.batch)
    timed(runnable.run)
