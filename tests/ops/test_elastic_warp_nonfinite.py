"""elastic_warp at NaN and infinite source coordinates, under both CPU loop variants (and on CUDA).

Documented semantics: a source coordinate is clamped to +-2^22 pixels and a NaN one to -2^22, so NaN
samples what -infinity does: zeros padding reads 0 (image, label and weight), border padding reads
pixel 0 of that axis (as F.grid_sample's bilinear and nearest do), reflection padding reads -2^22
reflected. Such coordinates once crashed the CPU kernel, so the cases run in a subprocess: a crash
fails the test instead of killing pytest. The subprocess runs under ATEN_CPU_CAPABILITY=default
(portable loops) and with this CPU's own capability (AVX2 loops where available), and on a GPU when
there is one.
"""

import pytest
import torch

from tests.ops.cpu_capability import run_with_capability

COORDINATE_LIMIT = 2.0 ** 22
PADDINGS = ("zeros", "border", "reflection")

CASES_SCRIPT = r"""
import sys
import torch
from unet_fast.ops import elastic_warp
from unet_fast.ops.elastic_warp import warp

def run(case, interpolation, padding, displacement, affine, public):
    # The public function refuses non-finite displacements: the augmentation's entry (check_finite=False)
    # and torch.compile are where those reach the kernel.
    kwargs = dict(label=case["label"], weight=case["weight"], affine=affine, interpolation=interpolation,
                  padding_mode=padding)
    if public:
        outputs = list(elastic_warp(case["image"], displacement, **kwargs))
    else:
        outputs = list(warp(case["image"], displacement, intensity=None, out_size=None, offset=(0, 0),
                            check_finite=False, always_tuple=True, **kwargs))
    outputs.append(warp(case["image"], displacement, label=case["label"].long(), weight=None, affine=affine,
                        interpolation=interpolation, padding_mode=padding, intensity=None, out_size=None,
                        offset=(0, 0), check_finite=False, always_tuple=True)[1])
    outputs.append(warp(case["integer_image"], displacement, label=None, weight=None, affine=affine,
                        interpolation=interpolation, padding_mode=padding, intensity=None, out_size=None,
                        offset=(0, 0), check_finite=False, always_tuple=True)[0])
    return outputs

device = sys.argv[3]
cases = {name: {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}
         for name, case in torch.load(sys.argv[1]).items()}
results, augmented = {}, {}
for name, case in cases.items():
    for interpolation in ("nearest", "bilinear", "bicubic"):
        for padding in ("zeros", "border", "reflection"):
            results[name, interpolation, padding] = (
                run(case, interpolation, padding, case["displacement"], case["affine"], case["public"]),
                run(case, interpolation, padding, case["reference_displacement"], None, False),
            )
# The augmentation's entry, which skips the finiteness checks: NaN drawn parameters.
from unet_fast.augment import ElasticParameters, apply_parameters
coarse = cases["coarse"]
for padding in ("zeros", "border", "reflection"):
    parameters = ElasticParameters(coarse["displacement"], None, None)
    augmented[padding] = list(apply_parameters(coarse["image"], parameters, coarse["label"], coarse["weight"],
                                               padding_mode=padding))
to_cpu = lambda outputs: [t.cpu() for t in outputs]
torch.save(({key: (to_cpu(got), to_cpu(reference)) for key, (got, reference) in results.items()},
            {padding: to_cpu(outputs) for padding, outputs in augmented.items()}), sys.argv[2])
"""


def _source_points(displacement, affine, height, width):
    """float32 source coordinates (sy, sx), (N, H, W), computed in the kernel's order (source_point)."""
    if displacement.shape[-2:] != (height, width):  # coarse: only all-equal planes are used here
        assert all(bool((plane.isnan().all()) or (plane == plane.flatten()[0]).all())
                   for plane in displacement.flatten(0, 1))
        displacement = displacement[:, :, :1, :1].expand(-1, -1, height, width)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    dy, dx = displacement[:, 0], displacement[:, 1]
    if affine is None:
        return ys + dy, xs + dx
    cy, cx = torch.tensor((height - 1) / 2), torch.tensor((width - 1) / 2)
    px, py = xs - cx, ys - cy
    a = affine[:, :, :, None, None]
    sx = cx + (a[:, 0, 0] * px + a[:, 0, 1] * py) + a[:, 0, 2] + dx
    sy = cy + (a[:, 1, 0] * px + a[:, 1, 1] * py) + a[:, 1, 2] + dy
    return sy, sx


def _limited(coordinate):
    """The documented clamp: NaN -> -2^22, then into [-2^22, 2^22]."""
    return torch.nan_to_num(coordinate, nan=-COORDINATE_LIMIT).clamp(-COORDINATE_LIMIT, COORDINATE_LIMIT)


def _case(image, displacement, affine=None, public=False):
    n, _, height, width = image.shape
    g = torch.Generator().manual_seed(height * width)
    sy, sx = _source_points(displacement, affine, height, width)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    # p + (s - p) == s exactly here (s integral or +-2^22, |p| < 64), so this finite dense field
    # reaches the clamped coordinates with no affine.
    reference = torch.stack([_limited(sy) - ys, _limited(sx) - xs], dim=1)
    return dict(
        image=image, displacement=displacement, affine=affine, public=public, reference_displacement=reference,
        label=torch.randint(1, 250, (n, height, width), dtype=torch.uint8, generator=g),
        weight=torch.rand(n, height, width, generator=g) + 0.5,
        integer_image=torch.randint(1, 250, (n, 2, height, width), dtype=torch.uint8, generator=g),
        sources=(sy, sx),
    )


def _cases():
    """Generated here once: torch's own random kernels differ between CPU capabilities."""
    g = torch.Generator().manual_seed(11)
    nan, inf = float("nan"), float("inf")
    # Width 21: one whole AVX2 step and a tail; odd label strides.
    image = torch.rand(1, 2, 13, 21, generator=g) + 0.5
    dense = torch.zeros(1, 2, 13, 21)
    dense[0, 0, 1] = nan                                  # y NaN
    dense[0, 1, 2] = nan                                  # x NaN
    dense[0, :, 3] = nan                                  # both NaN
    dense[0, 0, 4] = inf                                  # y +inf
    dense[0, 1, 5] = -inf                                 # x -inf
    dense[0, 0, 6], dense[0, 1, 6] = -inf, nan
    dense[0, 0, 7], dense[0, 1, 7] = inf, inf
    dense[0, 1, 8] = torch.tensor([nan, inf, -inf, 0.0] * 5 + [nan])  # lanes of one step differ
    dense[0, 0, 9] = torch.tensor([-inf, nan, 0.0, inf] * 5 + [inf])
    coarse = torch.zeros(1, 2, 3, 4)
    coarse[0, 0] = nan  # NaN everywhere after the bicubic upsampling: every y is NaN
    # The reported crash: 1e38 * px - 1e38 * py overflows to inf - inf = NaN (or +-inf, or huge).
    overflow = torch.tensor([[[1e38, -1e38, 0.0], [1e38, -1e38, 0.0]]])
    return {
        "dense": _case(image, dense),
        "coarse": _case(image, coarse),
        "affine_overflow": _case(torch.rand(1, 1, 63, 63, generator=g), torch.zeros(1, 2, 4, 4), overflow,
                                 public=True),
    }


def _run(directory, capability, device):
    cases, outputs = directory / "cases.pt", directory / f"outputs_{capability}_{device}.pt"
    if not cases.exists():
        torch.save({name: {k: v for k, v in case.items() if k != "sources"} for name, case in _CASES.items()},
                   cases)
    done = run_with_capability(CASES_SCRIPT, [cases, outputs, device], capability)
    assert done.returncode == 0, (f"elastic_warp on non-finite coordinates ({device}, "
                                  f"ATEN_CPU_CAPABILITY={capability}) exited with {done.returncode}:\n"
                                  f"{done.stderr[-3000:]}")
    return torch.load(outputs)


def _axis_indices(coordinates, size, padding):
    """The documented source index along one axis, independent of the op, for coordinates that are
    non-finite, beyond the image or integral: (index, -1 for "outside" with zeros padding; whether the
    coordinate is one of those kinds, i.e. whether the index applies)."""
    c = _limited(coordinates).double()
    inside = (c >= 0) & (c <= size - 1)
    if padding == "zeros":
        beyond = torch.full_like(c, -1)
    elif padding == "border":
        beyond = torch.where(c < 0, 0, size - 1).double()
    else:  # reflection about the centres of pixels 0 and size - 1
        period = 2 * (size - 1)
        distance = c.abs() % period if period else torch.zeros_like(c)
        beyond = torch.where(distance <= size - 1, distance, period - distance)
    return torch.where(inside, c, beyond).long(), ~inside | (c == c.round())


_CASES = _cases()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """results(capability): the subprocess's outputs under "default" or "native" (CPU), or "cuda", run once each:
    {(case, interpolation, padding): (outputs, reference outputs)}, {padding: augmentation outputs}."""
    directory, runs = tmp_path_factory.mktemp("nonfinite"), {}

    def get(capability):
        if capability == "native" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
            pytest.skip("this CPU selects the portable loops only")
        if capability == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs CUDA")
        if capability not in runs:
            if capability == "default":
                runs[capability] = _run(directory, "default", "cpu")
            else:
                runs[capability] = _run(directory, None, "cuda" if capability == "cuda" else "cpu")
        return runs[capability]

    return get


@pytest.mark.parametrize("capability", ["default", "native"])
def test_nonfinite_coordinates_sample_as_the_clamped_ones(results, capability):
    """NaN -> -2^22 and +-inf -> +-2^22, bitwise: against the op on the clamped, finite coordinates."""
    for key, (outputs, reference) in results(capability)[0].items():
        assert len(outputs) == len(reference)
        for got, expected in zip(outputs, reference):
            assert got.dtype == expected.dtype and got.shape == expected.shape, key
            torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("capability", ["default", "native"])
def test_nonfinite_coordinates_read_the_documented_pixels(results, capability):
    """Independent of the op: zeros -> 0, border -> edge pixel (NaN: pixel 0), reflection -> reflected 2^22."""
    for (name, interpolation, padding), (outputs, _) in results(capability)[0].items():
        case = _CASES[name]
        out, label_out, weight_out, long_label_out, integer_out = outputs
        _, _, height, width = case["image"].shape
        sy, sx = case["sources"]
        iy, known_y = _axis_indices(sy[0], height, padding)
        ix, known_x = _axis_indices(sx[0], width, padding)
        # Every pixel of these cases has an integral, beyond-the-image or non-finite coordinate on both axes.
        assert bool((known_y & known_x).all()), name
        inside = (iy >= 0) & (ix >= 0)
        rows, columns = iy.clamp(min=0), ix.clamp(min=0)

        def expected(plane):  # (..., H, W) read at the documented pixels, 0 outside
            return torch.where(inside, plane[..., rows, columns], torch.zeros((), dtype=plane.dtype))

        key = (name, interpolation, padding)
        # Integral coordinates: every interpolation's weights are exactly (0, 1, 0, ...), so the
        # values are exact copies.
        assert torch.equal(out[0], expected(case["image"][0])), key
        assert torch.equal(integer_out[0], expected(case["integer_image"][0])), key
        assert torch.equal(label_out[0], expected(case["label"][0])), key
        assert torch.equal(long_label_out[0], expected(case["label"][0]).long()), key
        assert torch.equal(weight_out[0], expected(case["weight"][0])), key


def test_avx2_and_portable_loops_agree_bitwise(results):
    portable_runs, vectorized_runs = results("default"), results("native")
    for key, (outputs, _) in portable_runs[0].items():
        for portable, vectorized in zip(outputs, vectorized_runs[0][key][0]):
            assert torch.equal(portable, vectorized), key


@pytest.mark.parametrize("capability", ["default", "native"])
def test_augmentation_with_nan_parameters_samples_like_elastic_warp(results, capability):
    """apply_parameters skips the finiteness checks: NaN parameters reach the kernel, with the same result."""
    warped, augmented = results(capability)
    for padding in PADDINGS:
        for got, expected in zip(augmented[padding], warped["coarse", "bilinear", padding][0][:3]):
            assert torch.equal(got, expected), padding


@pytest.mark.gpu
def test_cuda_agrees_with_the_cpu(results):
    """The CUDA kernel shares the clamp: bitwise the CPU's results where the coordinates are the same (the
    dense and coarse cases; the affine one may differ by FMA contraction on the GPU, so it only has to run)."""
    cpu_runs, cuda_runs = results("default"), results("cuda")
    for key, (outputs, _) in cpu_runs[0].items():
        if key[0] == "affine_overflow":
            continue
        for on_cpu, on_cuda in zip(outputs, cuda_runs[0][key][0]):
            assert torch.equal(on_cpu, on_cuda), key
    for padding in PADDINGS:
        for on_cpu, on_cuda in zip(cpu_runs[1][padding], cuda_runs[1][padding]):
            assert torch.equal(on_cpu, on_cuda), padding
