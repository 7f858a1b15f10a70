// CUDA kernel of elastic_warp: one thread per output pixel, blocks along output rows so that reads
// and writes of neighbouring threads are neighbours in memory. For a coarse displacement grid the
// block first interpolates every grid column along y for its row into shared memory (the CPU
// kernel's per-row step); each thread then interpolates along x with the same weights.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/elastic_warp_checks.h"

namespace unet_fast {
namespace elastic {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxSharedColumns = 1024;  // 2 x 1024 x 8 bytes of shared memory at most
constexpr int64_t kMaxGridRows = 65535;

template <typename T, typename acc_t, Interp I, Padding P, bool kFloatImage>
__global__ void __launch_bounds__(kThreads)
    warp_kernel(const WarpPointers<acc_t> p, const WarpGeometry g, bool shared_columns) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  acc_t* columns = reinterpret_cast<acc_t*>(shared_bytes);  // (dy, dx) per grid column
  const int64_t gw = g.grid_width;
  const int64_t rows = g.batch * g.out_height;
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t n = row / g.out_height, i = row % g.out_height;
    const int64_t y = uf_clamp<int64_t>(i + g.offset_y, 0, g.height - 1);
    acc_t dy = acc_t(0), dx = acc_t(0);
    if (g.dense) {
      if (j < g.out_width)
        dense_displacement(p.displacement, g.displacement, n, y,
                           uf_clamp<int64_t>(j + g.offset_x, 0, g.width - 1), dy, dx);
    } else {
      AxisTaps<acc_t> y_taps;
      coarse_axis_taps(y, g.height, g.grid_height, y_taps);
      const acc_t* grid = p.displacement + n * g.displacement.n;
      const int64_t sh = g.displacement.h, sw = g.displacement.w, sc = g.displacement.c;
      if (shared_columns) {
        __syncthreads();  // the previous row's columns are no longer read
        for (int64_t c = threadIdx.x; c < 2 * gw; c += kThreads)
          columns[c] = coarse_column(grid + (c < gw ? 0 : sc), sh, sw, y_taps, c < gw ? c : c - gw);
        __syncthreads();
      }
      if (j < g.out_width) {
        AxisTaps<acc_t> x_taps;
        coarse_axis_taps(uf_clamp<int64_t>(j + g.offset_x, 0, g.width - 1), g.width, gw, x_taps);
        if (shared_columns) {
          dy = coarse_along_x(columns, x_taps);
          dx = coarse_along_x(columns + gw, x_taps);
        } else {
          acc_t local[8];  // the four columns this pixel needs, same sums as the shared path
          AxisTaps<acc_t> local_taps = x_taps;
          UF_UNROLL
          for (int k = 0; k < 4; ++k) {
            local[k] = coarse_column(grid, sh, sw, y_taps, x_taps.index[k]);
            local[4 + k] = coarse_column(grid + sc, sh, sw, y_taps, x_taps.index[k]);
            local_taps.index[k] = k;
          }
          dy = coarse_along_x(local, local_taps);
          dx = coarse_along_x(local + 4, local_taps);
        }
      }
    }
    if (j < g.out_width) {
      acc_t sy, sx;
      source_point(acc_t(i + g.offset_y), acc_t(j + g.offset_x), dy, dx, p.affine ? p.affine + 6 * n : nullptr,
                   g.height, g.width, sy, sx);
      warp_pixel<T, acc_t, I, P, kFloatImage>(p, g, n, i, j, sy, sx);
    }
  }
}

template <typename T, typename acc_t, bool kFloatImage>
void launch(const PreparedWarp& w, const WarpPointers<acc_t>& p, Interp interpolation) {
  const WarpGeometry& g = w.geometry;
  const bool shared_columns = !g.dense && g.grid_width <= kMaxSharedColumns;
  const size_t shared = shared_columns ? 2 * g.grid_width * sizeof(acc_t) : 0;
  const dim3 blocks(static_cast<unsigned>((g.out_width + kThreads - 1) / kThreads),
                    static_cast<unsigned>(std::min(g.batch * g.out_height, kMaxGridRows)));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if constexpr (kFloatImage) {
    dispatch_modes(interpolation, w.padding, [&](auto interp, auto pad) {
      warp_kernel<T, acc_t, decltype(interp)::value, decltype(pad)::value, true>
          <<<blocks, kThreads, shared, stream>>>(p, g, shared_columns);
    });
  } else {  // integer images are always sampled nearest
    dispatch_padding(w.padding, [&](auto pad) {
      warp_kernel<T, acc_t, Interp::kNearest, decltype(pad)::value, false>
          <<<blocks, kThreads, shared, stream>>>(p, g, shared_columns);
    });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_warp_cuda(
    const at::Tensor& image, const at::Tensor& displacement, const std::optional<at::Tensor>& label,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& affine,
    const std::optional<at::Tensor>& intensity, c10::string_view interpolation, c10::string_view padding_mode,
    at::IntArrayRef out_size, at::IntArrayRef offset) {
  const c10::cuda::CUDAGuard guard(image.device());
  PreparedWarp w = prepare_elastic_warp(image, displacement, label, weight, affine, intensity, interpolation,
                                        padding_mode, out_size, offset);
  if (w.out.numel() == 0 && w.label_out.numel() == 0 && w.weight_out.numel() == 0) {
    return {w.out, w.label_out, w.weight_out};
  }
  if (is_integer_dtype(image.scalar_type())) {
    const auto p = warp_pointers<float>(w, image, displacement, label, weight);
    dispatch_raw(image.element_size(), [&](auto raw) {
      launch<decltype(raw), float, false>(w, p, Interp::kNearest);
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "elastic_warp_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch<scalar_t, acc_t, true>(w, warp_pointers<acc_t>(w, image, displacement, label, weight),
                                    w.interpolation);
    });
  }
  return {w.out, w.label_out, w.weight_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("elastic_warp", &elastic_warp_cuda);
}

}  // namespace elastic
}  // namespace unet_fast
