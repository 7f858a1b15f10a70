// CPU kernel of elastic_warp: parallel over output rows, each in three passes (displacement,
// source points, sampling). A coarse displacement grid is interpolated separably: per row along y
// for each grid column (as the CUDA kernel does), then along x with weights precomputed once per
// call.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/elastic_warp_checks.h"

namespace unet_fast {
namespace elastic {
namespace {

// Coarse grids with at most this many columns are interpolated along x through a dense
// (grid_width x out_width) weight table: a multiply-add loop over the row that the compiler
// vectorizes. Wider grids gather their 4 taps per pixel.
constexpr int64_t kMaxTableColumns = 16;

template <typename T, typename acc_t, Interp I, Padding P, bool kFloatImage>
void warp_cpu(const WarpPointers<acc_t>& pointers, const WarpGeometry& geometry) {
  const int64_t gw = geometry.grid_width, out_width = geometry.out_width;
  const bool use_table = !geometry.dense && gw <= kMaxTableColumns;
  std::vector<AxisTaps<acc_t>> x_taps;
  std::vector<acc_t> table;  // table[c * out_width + j]: weight of grid column c at output column j
  if (!geometry.dense) {
    x_taps.resize(out_width);
    for (int64_t j = 0; j < out_width; ++j) {
      const int64_t x = uf_clamp<int64_t>(j + geometry.offset_x, 0, geometry.width - 1);
      coarse_axis_taps(x, geometry.width, gw, x_taps[j]);
    }
    if (use_table) {
      table.assign(gw * out_width, acc_t(0));
      for (int64_t j = 0; j < out_width; ++j)
        for (int k = 0; k < 4; ++k) table[x_taps[j].index[k] * out_width + j] += x_taps[j].weight[k];
    }
  }
  const int64_t rows = geometry.batch * geometry.out_height;
  const int64_t grain = std::max<int64_t>(1, 16384 / out_width);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    // Local copies: label stores through char-sized pointers could alias the originals and force
    // reloads of every field per pixel.
    const WarpGeometry g = geometry;
    const WarpPointers<acc_t> p = pointers;
    std::vector<acc_t> columns(2 * gw);  // per grid column: (dy, dx) interpolated along y for this row
    std::vector<acc_t> dy(out_width), dx(out_width), sy(out_width), sx(out_width);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.out_height, i = row % g.out_height;
      const int64_t y = uf_clamp<int64_t>(i + g.offset_y, 0, g.height - 1);
      // 1. The displacement of every pixel of the row.
      if (g.dense) {
        for (int64_t j = 0; j < out_width; ++j) {
          const int64_t x = uf_clamp<int64_t>(j + g.offset_x, 0, g.width - 1);
          dense_displacement(p.displacement, g.displacement, n, y, x, dy[j], dx[j]);
        }
      } else {
        AxisTaps<acc_t> y_taps;
        coarse_axis_taps(y, g.height, g.grid_height, y_taps);
        const acc_t* grid = p.displacement + n * g.displacement.n;
        for (int64_t c = 0; c < gw; ++c) {
          columns[c] = coarse_column(grid, g.displacement.h, g.displacement.w, y_taps, c);
          columns[gw + c] = coarse_column(grid + g.displacement.c, g.displacement.h, g.displacement.w, y_taps, c);
        }
        if (use_table) {
          std::fill(dy.begin(), dy.end(), acc_t(0));
          std::fill(dx.begin(), dx.end(), acc_t(0));
          for (int64_t c = 0; c < gw; ++c) {
            const acc_t* weights = table.data() + c * out_width;
            const acc_t column_dy = columns[c], column_dx = columns[gw + c];
            for (int64_t j = 0; j < out_width; ++j) {
              dy[j] += weights[j] * column_dy;
              dx[j] += weights[j] * column_dx;
            }
          }
        } else {
          for (int64_t j = 0; j < out_width; ++j) {
            dy[j] = coarse_along_x(columns.data(), x_taps[j]);
            dx[j] = coarse_along_x(columns.data() + gw, x_taps[j]);
          }
        }
      }
      // 2. Where every pixel samples the input.
      const acc_t* affine = p.affine ? p.affine + 6 * n : nullptr;
      for (int64_t j = 0; j < out_width; ++j)
        source_point(i + g.offset_y, j + g.offset_x, dy[j], dx[j], affine, g.height, g.width, sy[j], sx[j]);
      // 3. Sampling.
      for (int64_t j = 0; j < out_width; ++j) warp_pixel<T, acc_t, I, P, kFloatImage>(p, g, n, i, j, sy[j], sx[j]);
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
