// CPU kernel of elastic_warp: parallel over output rows. A coarse displacement grid is interpolated
// separably: per row along y for each grid column, then per pixel along x with taps precomputed
// once per call (the CUDA kernel computes the same sums in the same order).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/elastic_warp_checks.h"

namespace unet_fast {
namespace elastic {
namespace {

template <typename T, typename acc_t, Interp I, Padding P, bool kFloatImage>
void warp_cpu(const WarpPointers<acc_t>& pointers, const WarpGeometry& geometry) {
  const int64_t gw = geometry.grid_width;
  std::vector<AxisTaps<acc_t>> x_taps;
  if (!geometry.dense) {
    x_taps.resize(geometry.out_width);
    for (int64_t j = 0; j < geometry.out_width; ++j) {
      const int64_t x = uf_clamp<int64_t>(j + geometry.offset_x, 0, geometry.width - 1);
      coarse_axis_taps(x, geometry.width, gw, x_taps[j]);
    }
  }
  const int64_t rows = geometry.batch * geometry.out_height;
  const int64_t grain = std::max<int64_t>(1, 16384 / geometry.out_width);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    // Local copies: label stores through char-sized pointers could alias the originals and force
    // reloads of every field per pixel.
    const WarpGeometry g = geometry;
    const WarpPointers<acc_t> p = pointers;
    std::vector<acc_t> columns(g.dense ? 0 : 2 * gw);  // per grid column: (dy, dx) along this row
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.out_height, i = row % g.out_height;
      const int64_t y = uf_clamp<int64_t>(i + g.offset_y, 0, g.height - 1);
      if (g.dense) {
        for (int64_t j = 0; j < g.out_width; ++j) {
          acc_t dy, dx;
          dense_displacement(p.displacement, g.displacement, n,
                             y, uf_clamp<int64_t>(j + g.offset_x, 0, g.width - 1), dy, dx);
          warp_pixel<T, acc_t, I, P, kFloatImage>(p, g, n, i, j, dy, dx);
        }
        continue;
      }
      AxisTaps<acc_t> y_taps;
      coarse_axis_taps(y, g.height, g.grid_height, y_taps);
      const acc_t* grid = p.displacement + n * g.displacement.n;
      for (int64_t c = 0; c < gw; ++c) {
        columns[c] = coarse_column(grid, g.displacement.h, g.displacement.w, y_taps, c);
        columns[gw + c] = coarse_column(grid + g.displacement.c, g.displacement.h, g.displacement.w, y_taps, c);
      }
      for (int64_t j = 0; j < g.out_width; ++j) {
        const acc_t dy = coarse_along_x(columns.data(), x_taps[j]);
        const acc_t dx = coarse_along_x(columns.data() + gw, x_taps[j]);
        warp_pixel<T, acc_t, I, P, kFloatImage>(p, g, n, i, j, dy, dx);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_warp_cpu(
    const at::Tensor& image, const at::Tensor& displacement, const std::optional<at::Tensor>& label,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& affine,
    const std::optional<at::Tensor>& intensity, c10::string_view interpolation, c10::string_view padding_mode,
    at::IntArrayRef out_size, at::IntArrayRef offset) {
  PreparedWarp w = prepare_elastic_warp(image, displacement, label, weight, affine, intensity, interpolation,
                                        padding_mode, out_size, offset);
  if (w.out.numel() == 0 && w.label_out.numel() == 0 && w.weight_out.numel() == 0) {
    return {w.out, w.label_out, w.weight_out};
  }
  if (is_integer_dtype(image.scalar_type())) {
    const auto p = warp_pointers<float>(w, image, displacement, label, weight);
    dispatch_raw(image.element_size(), [&](auto raw) {
      using Raw = decltype(raw);
      dispatch_padding(w.padding, [&](auto pad) {
        warp_cpu<Raw, float, Interp::kNearest, decltype(pad)::value, false>(p, w.geometry);
      });
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "elastic_warp_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto p = warp_pointers<acc_t>(w, image, displacement, label, weight);
      dispatch_modes(w.interpolation, w.padding, [&](auto interp, auto pad) {
        warp_cpu<scalar_t, acc_t, decltype(interp)::value, decltype(pad)::value, true>(p, w.geometry);
      });
    });
  }
  return {w.out, w.label_out, w.weight_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("elastic_warp", &elastic_warp_cpu);
}

}  // namespace elastic
}  // namespace unet_fast
