// elastic_warp: sampling and displacement math shared by the CPU kernel and the CUDA kernel.
//
// Sampling follows torch.nn.functional.grid_sample(..., align_corners=True) in pixel coordinates:
// "zeros" reads 0 outside the image, "border" clamps the coordinate, "reflection" reflects it about
// the centres of the first and last pixels. Bilinear and nearest apply the padding rule to the
// coordinate; bicubic applies it to each of its 16 taps (as grid_sample does). A coarse
// displacement grid is upsampled like F.interpolate(mode="bicubic", align_corners=True).
#pragma once

#include <cmath>
#include <cstdint>

#include "ops/common.h"

#if defined(__CUDACC__)
#define UF_UNROLL _Pragma("unroll")
#else
#define UF_UNROLL  // gcc unrolls these fixed 4-trip loops itself
#endif

// UF_HOST_DEVICE, but always inlined on the host too: the per-pixel call chain must collapse into
// the row loop (a shared library would otherwise call these through the PLT, one call per pixel).
#if defined(__CUDACC__) || !defined(__GNUC__)
#define UF_WARP_INLINE UF_HOST_DEVICE
#else
#define UF_WARP_INLINE inline __attribute__((always_inline))
#endif

namespace unet_fast {
namespace elastic {

enum class Interp : int { kNearest = 0, kBilinear = 1, kBicubic = 2 };
enum class Padding : int { kZeros = 0, kBorder = 1, kReflection = 2 };

// Source coordinates are clamped to +-2^22 pixels before any float -> integer conversion; that
// changes no result for zeros/border padding and keeps the integer conversions defined. A NaN
// coordinate is clamped to -2^22 (uf_clamp), so it samples what -infinity does: nothing with zeros
// padding (image, label and weight read 0), pixel 0 with border padding, and -2^22 reflected with
// reflection padding.
constexpr double kCoordinateLimit = 4194304.0;

UF_WARP_INLINE float uf_floor(float x) { return ::floorf(x); }
UF_WARP_INLINE double uf_floor(double x) { return ::floor(x); }
UF_WARP_INLINE float uf_fmod(float x, float y) { return ::fmodf(x, y); }
UF_WARP_INLINE double uf_fmod(double x, double y) { return ::fmod(x, y); }
UF_WARP_INLINE float uf_fabs(float x) { return ::fabsf(x); }
UF_WARP_INLINE double uf_fabs(double x) { return ::fabs(x); }
UF_WARP_INLINE float uf_pow(float x, float y) { return ::powf(x, y); }
UF_WARP_INLINE double uf_pow(double x, double y) { return ::pow(x, y); }

// x clamped into [lo, hi], NaN to lo: every comparison with NaN is false, so "not >= lo" holds.
// (The CPU kernel's AVX2 twin, clamp_ps_avx2, uses the same unordered comparison.)
template <typename T>
UF_WARP_INLINE T uf_clamp(T x, T lo, T hi) {
  return !(x >= lo) ? lo : (x > hi ? hi : x);
}

// floor(x) as an integer for |x| <= kCoordinateLimit. On the host without SSE4.1, floorf and
// nearbyintf are library calls that cost more than the rest of a pixel; these are exact instead.
// index_t may be int32_t (|x| <= 2^22 fits), which the CPU kernel's row loops vectorize.
template <typename index_t = int64_t, typename acc_t>
UF_WARP_INLINE index_t floor_index(acc_t x) {
#if defined(__CUDA_ARCH__)
  return static_cast<index_t>(uf_floor(x));
#else
  const index_t truncated = static_cast<index_t>(x);  // toward zero
  return truncated - index_t(acc_t(truncated) > x);  // branch-free, so that row loops vectorize
#endif
}

// nearbyint(x) (round half to even, grid_sample's nearest) as an integer for |x| <= kCoordinateLimit.
UF_WARP_INLINE int64_t round_half_even_index(double x) {
#if defined(__CUDA_ARCH__)
  return __double2ll_rn(x);
#else
  const int64_t below = floor_index(x);
  const double fraction = x - double(below);  // exact: x and below share the binade or below is 0
  // Branch-free: the fraction is random, so a branch here would mispredict half the time.
  return below + int64_t(fraction > 0.5) + (int64_t(fraction == 0.5) & below & 1);
#endif
}

UF_WARP_INLINE int64_t round_half_even_index(float x) {
#if defined(__CUDA_ARCH__)
  return __float2ll_rn(x);
#else
  return round_half_even_index(static_cast<double>(x));  // float -> double and x + 0.5 stay exact
#endif
}

// Keys' cubic convolution weights with A = -0.75 for the taps at offsets -1, 0, 1, 2 of a point
// at fraction t in [0, 1) past tap 0: PyTorch's get_cubic_upsample_coefficients.
template <typename acc_t>
UF_WARP_INLINE void cubic_weights(acc_t t, acc_t w[4]) {
  const acc_t A = acc_t(-0.75);
  const acc_t near1 = t, near2 = acc_t(1) - t;          // |offset| <= 1
  const acc_t far1 = t + acc_t(1), far2 = near2 + acc_t(1);  // 1 < |offset| < 2
  w[0] = ((A * far1 - acc_t(5) * A) * far1 + acc_t(8) * A) * far1 - acc_t(4) * A;
  w[1] = ((A + acc_t(2)) * near1 - (A + acc_t(3))) * near1 * near1 + acc_t(1);
  w[2] = ((A + acc_t(2)) * near2 - (A + acc_t(3))) * near2 * near2 + acc_t(1);
  w[3] = ((A * far2 - acc_t(5) * A) * far2 + acc_t(8) * A) * far2 - acc_t(4) * A;
}

// grid_sample's reflect_coordinates(x, 0, 2 * (size - 1)) followed by its clip: reflection about
// the centres of pixels 0 and size - 1 (scipy.ndimage mode "mirror").
template <typename acc_t>
UF_WARP_INLINE acc_t reflect_coordinate(acc_t x, int64_t size) {
  if (size <= 1) return acc_t(0);
  const acc_t span = acc_t(size - 1);
  if (x >= acc_t(0) && x <= span) return x;  // inside: the general formula returns x unchanged
  const acc_t distance = uf_fabs(x);
  const acc_t extra = uf_fmod(distance, span);
  const int64_t flips = static_cast<int64_t>(uf_floor(distance / span));
  const acc_t reflected = (flips % 2 == 0) ? extra : span - extra;
  return uf_clamp(reflected, acc_t(0), span);
}

// The padding rule applied to a coordinate: zeros leaves it (taps outside read 0), border clamps
// it into [0, size - 1], reflection mirrors it there.
template <Padding P, typename acc_t>
UF_WARP_INLINE acc_t pad_coordinate(acc_t x, int64_t size) {
  if (P == Padding::kBorder) return uf_clamp(x, acc_t(0), acc_t(size - 1));
  if (P == Padding::kReflection) return reflect_coordinate(x, size);
  return x;
}

// The taps of one axis: index, weight and whether the tap lies inside the image (a tap outside
// contributes nothing, which only happens with zeros padding).
template <typename acc_t>
struct AxisTaps {
  int64_t index[4];
  acc_t weight[4];
  bool inside[4];
};

template <Interp I>
struct TapCount {
  static constexpr int value = I == Interp::kNearest ? 1 : (I == Interp::kBilinear ? 2 : 4);
};

// The two bilinear weights of a coordinate x whose floor is x0 (grid_sample's ix_se - ix, ix - ix_nw).
template <typename acc_t>
UF_WARP_INLINE void bilinear_weights(acc_t x, acc_t x0, acc_t& w0, acc_t& w1) {
  w0 = (x0 + acc_t(1)) - x;
  w1 = x - x0;
}

// Bilinear taps i, i + 1 with weights w0, w1 on an axis of `size` pixels, for a coordinate that
// padding P has already been applied to.
template <Padding P, typename acc_t>
UF_WARP_INLINE void bilinear_taps_at(int64_t i, acc_t w0, acc_t w1, int64_t size, AxisTaps<acc_t>& taps) {
  constexpr bool kPadded = P != Padding::kZeros;  // the padded coordinate lies in [0, size - 1]
  taps.index[0] = i;
  taps.index[1] = i + 1;
  taps.weight[0] = w0;
  taps.weight[1] = w1;
  taps.inside[0] = kPadded || (i >= 0 && i < size);
  taps.inside[1] = i + 1 < size && (kPadded || i + 1 >= 0);
}

// nearbyint(x) of a padded (border or reflection) coordinate x from its floor and x - floor(x): x is
// >= 0 there, so that fraction is exact, and rounding it half to even equals nearbyint(x).
template <typename index_t, typename acc_t>
UF_WARP_INLINE index_t round_padded(index_t below, acc_t fraction) {
  return below + index_t(fraction > acc_t(0.5)) + (index_t(fraction == acc_t(0.5)) & below & 1);
}

template <Interp I, Padding P, typename acc_t>
UF_WARP_INLINE void axis_taps(acc_t coordinate, int64_t size, AxisTaps<acc_t>& taps) {
  constexpr bool kPadded = P != Padding::kZeros;  // the padded coordinate lies in [0, size - 1]
  const acc_t limit = acc_t(kCoordinateLimit);
  acc_t x = uf_clamp(coordinate, -limit, limit);
  if (I == Interp::kNearest) {
    x = pad_coordinate<P>(x, size);
    const int64_t i = round_half_even_index(x);  // grid_sample: nearbyint
    taps.index[0] = i;
    taps.weight[0] = acc_t(1);
    taps.inside[0] = kPadded || (i >= 0 && i < size);
  } else if (I == Interp::kBilinear) {
    x = pad_coordinate<P>(x, size);
    const int64_t i = floor_index(x);
    acc_t w0, w1;
    bilinear_weights(x, acc_t(i), w0, w1);
    bilinear_taps_at<P>(i, w0, w1, size, taps);
  } else {
    const int64_t i = floor_index(x);
    cubic_weights(x - acc_t(i), taps.weight);
UF_UNROLL
    for (int k = 0; k < 4; ++k) {
      // Padding applies to each integer tap, so reflected and clamped taps stay integers.
      const int64_t tap = static_cast<int64_t>(pad_coordinate<P>(acc_t(i - 1 + k), size));
      taps.index[k] = tap;
      taps.inside[k] = kPadded || (tap >= 0 && tap < size);
    }
  }
}

// The nearest tap of a padded (border or reflection) coordinate from its bilinear taps, whose
// weight[1] is x - floor(x).
template <typename acc_t>
UF_WARP_INLINE void nearest_from_bilinear(const AxisTaps<acc_t>& bilinear, AxisTaps<acc_t>& nearest) {
  nearest.index[0] = round_padded(bilinear.index[0], bilinear.weight[1]);
  nearest.weight[0] = acc_t(1);
  nearest.inside[0] = true;
}

// Interpolates one channel plane at the taps (rows ty, columns tx); element (h, w) lives at
// plane[h * stride_h + w * stride_w].
template <Interp I, typename T, typename acc_t>
UF_WARP_INLINE acc_t sample_plane(const T* plane, int64_t stride_h, int64_t stride_w,
                                  const AxisTaps<acc_t>& ty, const AxisTaps<acc_t>& tx) {
  constexpr int n = TapCount<I>::value;
  if (n == 1) {
    return (ty.inside[0] && tx.inside[0])
               ? static_cast<acc_t>(plane[ty.index[0] * stride_h + tx.index[0] * stride_w])
               : acc_t(0);
  }
  acc_t result = acc_t(0);
UF_UNROLL
  for (int r = 0; r < n; ++r) {
    if (!ty.inside[r]) continue;
    const T* row = plane + ty.index[r] * stride_h;
    acc_t along_x = acc_t(0);
UF_UNROLL
    for (int c = 0; c < n; ++c) {
      if (tx.inside[c]) along_x += tx.weight[c] * static_cast<acc_t>(row[tx.index[c] * stride_w]);
    }
    result += ty.weight[r] * along_x;
  }
  return result;
}

// Bicubic upsampling of a coarse grid to `out_size` positions with align_corners=True, as in
// F.interpolate: position p maps to p * (grid - 1) / (out - 1); taps are clamped to the grid.
template <typename acc_t>
UF_WARP_INLINE void coarse_axis_taps(int64_t position, int64_t out_size, int64_t grid_size,
                                     AxisTaps<acc_t>& taps) {
  const acc_t scale = out_size > 1 ? acc_t(grid_size - 1) / acc_t(out_size - 1) : acc_t(0);
  const acc_t real = scale * acc_t(position);
  const int64_t i = uf_clamp<int64_t>(floor_index(real), 0, grid_size - 1);
  const acc_t t = uf_clamp(real - acc_t(i), acc_t(0), acc_t(1));
  cubic_weights(t, taps.weight);
UF_UNROLL
  for (int k = 0; k < 4; ++k) {
    taps.index[k] = uf_clamp<int64_t>(i - 1 + k, 0, grid_size - 1);
    taps.inside[k] = true;
  }
}

// One coarse-grid column interpolated along y: sum_k wy[k] * grid[row_k, column].
template <typename acc_t>
UF_WARP_INLINE acc_t coarse_column(const acc_t* grid, int64_t stride_h, int64_t stride_w,
                                   const AxisTaps<acc_t>& ty, int64_t column) {
  acc_t value = acc_t(0);
UF_UNROLL
  for (int k = 0; k < 4; ++k) value += ty.weight[k] * grid[ty.index[k] * stride_h + column * stride_w];
  return value;
}

// Interpolation of per-column values (already interpolated along y) along x.
template <typename acc_t>
UF_WARP_INLINE acc_t coarse_along_x(const acc_t* columns, const AxisTaps<acc_t>& tx) {
  acc_t value = acc_t(0);
UF_UNROLL
  for (int k = 0; k < 4; ++k) value += tx.weight[k] * columns[tx.index[k]];
  return value;
}

// Where output pixel (y, x) of the full warp samples the input, given its displacement (dy, dx).
// Without an affine matrix: (y + dy, x + dx). With one, affine = [M | t] row-major (2 x 3) acting
// on (x, y) about the centre c = ((W - 1) / 2, (H - 1) / 2): c + M (p - c) + t + d.
// y and x are the pixel's integer coordinates, converted to acc_t by the caller.
template <typename acc_t>
UF_WARP_INLINE void source_point(acc_t y, acc_t x, acc_t dy, acc_t dx, const acc_t* affine,
                                 int64_t height, int64_t width, acc_t& sy, acc_t& sx) {
  if (affine == nullptr) {
    sy = y + dy;
    sx = x + dx;
    return;
  }
  const acc_t cy = acc_t(height - 1) / acc_t(2), cx = acc_t(width - 1) / acc_t(2);
  const acc_t px = x - cx, py = y - cy;
  sx = cx + (affine[0] * px + affine[1] * py) + affine[2] + dx;
  sy = cy + (affine[3] * px + affine[4] * py) + affine[5] + dy;
}

// Gray-value variation of one warped intensity v: contrast * sign(v) |v|^gamma + brightness.
// Meant for intensities in [0, 1]; the odd extension keeps negative inputs finite.
template <typename acc_t>
UF_WARP_INLINE acc_t vary_intensity(acc_t v, acc_t contrast, acc_t brightness, acc_t gamma) {
  if (gamma != acc_t(1)) {
    const acc_t magnitude = uf_pow(uf_fabs(v), gamma);
    v = v < acc_t(0) ? -magnitude : magnitude;
  }
  return contrast * v + brightness;
}

// ---------------------------------------------------------------------------------------------
// One output pixel, shared by the CPU loop and the CUDA thread.

struct TensorStrides {
  int64_t n, c, h, w;  // element strides of an (N, C, H, W)-indexed tensor; c unused for 3-d ones
};

struct WarpGeometry {
  int64_t batch, channels, height, width;       // the input image
  int64_t out_height, out_width;                // the window
  int64_t offset_y, offset_x;                   // window origin in the full warp's pixels
  int64_t grid_height, grid_width;              // the displacement grid
  bool dense;                                   // (grid_height, grid_width) == (height, width)
  int label_bytes;                              // element size of the label dtype, 0: no label
  bool weight_is_float;                         // weight dtype float32 rather than the image dtype
  TensorStrides image, out, displacement, label, weight;  // outputs label/weight are contiguous
};

template <typename acc_t>
struct WarpPointers {
  const void* image;
  void* out;
  const acc_t* displacement;  // (N, 2, gh, gw): (dy, dx)
  const acc_t* affine;        // (N, 6) contiguous or nullptr
  const acc_t* intensity;     // (N, 3) contiguous (contrast, brightness, gamma) or nullptr
  const void* label;          // (N, H, W) integer or nullptr
  void* label_out;
  const void* weight;         // (N, H, W) float or nullptr
  void* weight_out;
};

// Copies one integer element of `bytes` bytes, or writes 0 for a tap outside the image.
UF_WARP_INLINE void copy_element(const void* src, int64_t src_index, void* dst, int64_t dst_index,
                                 int bytes, bool inside) {
  switch (bytes) {
    case 1: static_cast<uint8_t*>(dst)[dst_index] = inside ? static_cast<const uint8_t*>(src)[src_index] : 0; break;
    case 2: static_cast<uint16_t*>(dst)[dst_index] = inside ? static_cast<const uint16_t*>(src)[src_index] : 0; break;
    case 4: static_cast<uint32_t*>(dst)[dst_index] = inside ? static_cast<const uint32_t*>(src)[src_index] : 0; break;
    default: static_cast<uint64_t*>(dst)[dst_index] = inside ? static_cast<const uint64_t*>(src)[src_index] : 0; break;
  }
}

template <typename W, typename acc_t, Padding P>
UF_WARP_INLINE void warp_weight(const WarpPointers<acc_t>& p, const WarpGeometry& g, int64_t n,
                                int64_t out_index, const AxisTaps<acc_t>& ty, const AxisTaps<acc_t>& tx) {
  const W* weight = static_cast<const W*>(p.weight) + n * g.weight.n;
  static_cast<W*>(p.weight_out)[out_index] =
      static_cast<W>(sample_plane<Interp::kBilinear>(weight, g.weight.h, g.weight.w, ty, tx));
}

// Warps output pixel (i, j) of sample n, which samples the input at (sy, sx) (see source_point):
// every image channel with interpolation I (integer images: nearest, copied bit-exactly), the
// label with nearest, the weight with bilinear, all with padding P. T is the image element type
// (for integer images an unsigned type of the same size); acc_t is the arithmetic type.
template <typename T, typename acc_t, Interp I, Padding P, bool kFloatImage>
UF_WARP_INLINE void warp_pixel(const WarpPointers<acc_t>& p, const WarpGeometry& g, int64_t n,
                               int64_t i, int64_t j, acc_t sy, acc_t sx) {
  AxisTaps<acc_t> ty, tx;
  axis_taps<I, P>(sy, g.height, ty);
  axis_taps<I, P>(sx, g.width, tx);
  const T* image = static_cast<const T*>(p.image) + n * g.image.n;
  T* out = static_cast<T*>(p.out) + n * g.out.n + i * g.out.h + j * g.out.w;
  if constexpr (kFloatImage) {
    const acc_t* vary = p.intensity ? p.intensity + 3 * n : nullptr;
    for (int64_t c = 0; c < g.channels; ++c) {
      acc_t v = sample_plane<I>(image + c * g.image.c, g.image.h, g.image.w, ty, tx);
      if (vary != nullptr) v = vary_intensity(v, vary[0], vary[1], vary[2]);
      out[c * g.out.c] = static_cast<T>(v);
    }
  } else {
    const bool inside = ty.inside[0] && tx.inside[0];
    const int64_t source = ty.index[0] * g.image.h + tx.index[0] * g.image.w;
    for (int64_t c = 0; c < g.channels; ++c)
      out[c * g.out.c] = inside ? image[c * g.image.c + source] : T(0);
  }
  const int64_t plain_index = (n * g.out_height + i) * g.out_width + j;  // contiguous (N, h, w)
  if (p.label != nullptr) {
    AxisTaps<acc_t> ly = ty, lx = tx;
    if constexpr (I == Interp::kBilinear && P != Padding::kZeros) {
      nearest_from_bilinear(ty, ly);
      nearest_from_bilinear(tx, lx);
    } else if constexpr (I != Interp::kNearest) {
      axis_taps<Interp::kNearest, P>(sy, g.height, ly);
      axis_taps<Interp::kNearest, P>(sx, g.width, lx);
    }
    copy_element(p.label, n * g.label.n + ly.index[0] * g.label.h + lx.index[0] * g.label.w,
                 p.label_out, plain_index, g.label_bytes, ly.inside[0] && lx.inside[0]);
  }
  if (p.weight != nullptr) {
    AxisTaps<acc_t> wy = ty, wx = tx;
    if (I != Interp::kBilinear) {
      axis_taps<Interp::kBilinear, P>(sy, g.height, wy);
      axis_taps<Interp::kBilinear, P>(sx, g.width, wx);
    }
    if constexpr (kFloatImage) {
      if (!g.weight_is_float) {
        warp_weight<T, acc_t, P>(p, g, n, plain_index, wy, wx);
        return;
      }
    }
    warp_weight<float, acc_t, P>(p, g, n, plain_index, wy, wx);
  }
}

// The displacement of output row y (already clamped into the image), for a dense field at column
// x (clamped too).
template <typename acc_t>
UF_WARP_INLINE void dense_displacement(const acc_t* field, const TensorStrides& s, int64_t n,
                                       int64_t y, int64_t x, acc_t& dy, acc_t& dx) {
  const acc_t* at = field + n * s.n + y * s.h + x * s.w;
  dy = at[0];
  dx = at[s.c];
}

}  // namespace elastic
}  // namespace unet_fast
