"""elastic_warp's CPU kernel: the AVX2 row loops (gathers) give bitwise the results of the portable ones.

The portable loops run in a subprocess under ATEN_CPU_CAPABILITY=default (which the kernel honours
like torch's own CPU kernels); this process runs whichever its CPU selects.
"""

import pytest
import torch

from tests.ops.cpu_capability import run_with_capability
from unet_fast.ops import elastic_warp

CASES_SCRIPT = r"""
import sys
import torch
from unet_fast.ops import elastic_warp

outputs = []
for inputs in torch.load(sys.argv[1]):
    for interpolation in ("bilinear", "nearest", "bicubic"):
        for padding in ("zeros", "border", "reflection"):
            outputs += elastic_warp(inputs["image"], inputs["dense"], label=inputs["label"], weight=inputs["weight"],
                                    interpolation=interpolation, padding_mode=padding)
            outputs += elastic_warp(inputs["image"], inputs["dense"], label=inputs["label"].long(),
                                    interpolation=interpolation, padding_mode=padding)[1:2]
            height, width = inputs["image"].shape[-2:]
            outputs += elastic_warp(inputs["image"].abs().to(memory_format=torch.channels_last), inputs["coarse"],
                                    label=inputs["label"], affine=inputs["affine"], intensity=inputs["intensity"],
                                    interpolation=interpolation, padding_mode=padding,
                                    out_size=(height + 3, width + 5), offset=(-2, -1))[:2]
    for padding in ("zeros", "border", "reflection"):  # integer images: always nearest, copied
        for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            values = inputs["label"].to(dtype) * 37 - 50
            outputs += elastic_warp(values, inputs["dense"], label=inputs["label"], weight=inputs["weight"],
                                    padding_mode=padding)
            outputs.append(elastic_warp(values.unsqueeze(1).expand(-1, 2, -1, -1).contiguous(), inputs["coarse"],
                                        affine=inputs["affine"], padding_mode=padding, out_size=(11, 13)))
torch.save(outputs, sys.argv[2])
"""


def _inputs():
    """Generated here once: torch's own random kernels differ between CPU capabilities."""
    g = torch.Generator().manual_seed(7)
    cases = []
    # Widths: a multiple of 8, one with a tail, one below 8 (no full AVX2 step).
    for height, width in ((21, 32), (19, 45), (9, 6)):
        image = torch.randn(2, 3, height, width, generator=g)
        # Taps outside the image must add nothing, not 0 * inf.
        image[0, 0, 0, :3] = torch.tensor([float("inf"), -float("inf"), -0.0])
        image[1, 2, -1, -1] = float("nan")
        # Large displacements: taps far outside (zeros), reflected more than once (reflection).
        dense = torch.randn(2, 2, height, width, generator=g) * (3 * max(height, width))
        dense[0, 0, 1, :] = float(height - 2)  # y = height - 1 exactly: tap i + 1 == size
        dense[0, 1, 2, :] = width - 1 - torch.arange(width, dtype=torch.float32)  # x = width - 1 exactly
        cases.append(dict(
            image=image, dense=dense, coarse=torch.randn(2, 2, 3, 4, generator=g) * 5,
            label=torch.randint(0, 5, (2, height, width), dtype=torch.uint8, generator=g),
            weight=torch.rand(2, height, width, generator=g),
            affine=torch.tensor([[[0.9, -0.3, 1.5], [0.3, 0.9, -2.0]], [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.5]]]),
            intensity=torch.tensor([[1.1, 0.05, 0.8], [0.9, -0.1, 1.0]]),
        ))
    return cases


def _run_cases(directory, capability):
    inputs, outputs = directory / "inputs.pt", directory / f"outputs_{capability}.pt"
    if not inputs.exists():
        torch.save(_inputs(), inputs)
    done = run_with_capability(CASES_SCRIPT, [inputs, outputs], capability)
    assert done.returncode == 0, f"ATEN_CPU_CAPABILITY={capability}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return torch.load(outputs)


def _bits(t):
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t.contiguous()


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="this CPU (or ATEN_CPU_CAPABILITY) selects the portable loops only")
def test_avx2_loops_equal_portable_loops_bitwise(tmp_path):
    portable = _run_cases(tmp_path, "default")
    vectorized = _run_cases(tmp_path, None)
    assert len(portable) == len(vectorized) > 0
    for a, b in zip(portable, vectorized):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(_bits(a), _bits(b))


def test_float32_bilinear_matches_grid_sample_on_wide_rows():
    """Rows wider than one AVX2 step, with taps at the last pixel and outside (zeros padding)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    image = torch.randn(1, 2, 11, 29, generator=g)
    displacement = torch.randn(1, 2, 11, 29, generator=g) * 12
    displacement[0, 1, 4, :] = 28 - torch.arange(29.0)  # x lands exactly on the last column
    for padding in ("zeros", "border", "reflection"):
        out = elastic_warp(image, displacement, padding_mode=padding)
        ys, xs = torch.meshgrid(torch.arange(11.0), torch.arange(29.0), indexing="ij")
        sy, sx = ys + displacement[:, 0].double(), xs + displacement[:, 1].double()
        grid = torch.stack([sx / 28 * 2 - 1, sy / 10 * 2 - 1], dim=-1)
        expected = F.grid_sample(image.double(), grid, mode="bilinear", padding_mode=padding, align_corners=True)
        # fp32 source coordinates round at ~1e-6 px; values are O(1): see FP32_RTOL in test_elastic_warp.
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5 * image.abs().max().item())
