// CPU kernel of elastic_warp: parallel over output rows, each in passes over row arrays
// (displacement, source points, sampling; bilinear sampling in further passes of its own). A
// coarse displacement grid is interpolated separably: per row along y for each grid column (as the
// CUDA kernel does), then along x with weights precomputed once per call.
//
// The row loops are compiled twice: portable (SSE2 on x86-64) and, chosen at run time, for AVX2.
// Under AVX2 a float32 bilinear row is one pass of 8-pixel steps written with intrinsics (padding,
// taps, gathers of every channel, weight and label), and nearest labels and integer images are
// gathered too (an integer image: one pass for the nearest indices, then a copy per channel). Both
// compute the header's operations in the same order (no FMA contraction: the AVX2 target does not
// enable FMA), so their results are bitwise equal (tests/ops/test_elastic_warp_isa.py);
// ATEN_CPU_CAPABILITY=default, which turns off torch's own AVX2 kernels, selects the portable loops.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "ops/elastic_warp_checks.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define UF_ELASTIC_AVX2 1
#define UF_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define UF_ELASTIC_AVX2 0
#endif

namespace unet_fast {
namespace elastic {
namespace {

// Coarse grids with at most this many columns are interpolated along x through a dense
// (grid_width x out_width) weight table: a multiply-add loop over the row that the compiler
// vectorizes. Wider grids gather their 4 taps per pixel.
constexpr int64_t kMaxTableColumns = 16;

// Clamps a row of source coordinates to +-kCoordinateLimit (NaN to -kCoordinateLimit) and applies
// padding P (into `padded`), as axis_taps does per pixel. The loops vectorize: reflection mirrors at
// most once there (equal to reflect_coordinate's result whenever that lands inside), and only
// coordinates still outside (farther than one image size beyond an edge) take reflect_coordinate
// afterwards.
template <Padding P, typename acc_t>
UF_WARP_INLINE void pad_row(const acc_t* x, acc_t* padded, int64_t count, int64_t size) {
  const acc_t limit = acc_t(kCoordinateLimit), span = acc_t(size - 1);
  for (int64_t j = 0; j < count; ++j) {
    const acc_t v = uf_clamp(x[j], -limit, limit);
    padded[j] = P == Padding::kBorder ? pad_coordinate<P>(v, size) : v;
  }
  if constexpr (P == Padding::kReflection) {
    int outside = 0;
    for (int64_t j = 0; j < count; ++j) {  // a separate loop: fused with the clamp it does not vectorize
      const acc_t v = padded[j];
      // Mirrored about size - 1 only when above it, written as a minimum (the mirror image is >= v
      // exactly when v <= size - 1): a conditional subtraction would not vectorize.
      const acc_t mirrored_above = span - (v - span);
      const acc_t mirrored = v < mirrored_above ? v : mirrored_above;
      padded[j] = v < acc_t(0) ? -v : mirrored;
      outside |= int(!(padded[j] >= acc_t(0))) | int(!(padded[j] <= span));
    }
    if (outside) {
      for (int64_t j = 0; j < count; ++j) {
        if (!(padded[j] >= acc_t(0) && padded[j] <= span))
          padded[j] = reflect_coordinate(uf_clamp(x[j], -limit, limit), size);
      }
    }
  }
}

// The bilinear taps of a row of padded coordinates as arrays: floors and both weights.
template <typename acc_t>
UF_WARP_INLINE void bilinear_row(const acc_t* x, int64_t count, int32_t* floors, acc_t* w0, acc_t* w1) {
  for (int64_t j = 0; j < count; ++j) {
    floors[j] = floor_index<int32_t>(x[j]);
    bilinear_weights(x[j], acc_t(floors[j]), w0[j], w1[j]);
  }
}

#if UF_ELASTIC_AVX2
#define UF_AVX2_INLINE UF_TARGET_AVX2 inline __attribute__((always_inline))

// Whether the sizes and element offsets (h, w) of a height x width plane fit in int32 (AVX2 lanes
// and gather indices).
inline bool offsets_fit_int32(int64_t height, int64_t width, int64_t stride_h, int64_t stride_w) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  return height <= kMax && width <= kMax && stride_h >= 0 && stride_w >= 0 &&
         (height - 1) * stride_h + (width - 1) * stride_w <= kMax;
}

// Whether each index i lies in [0, size); kNonNegative: the indices are known to be >= 0.
template <bool kNonNegative>
UF_AVX2_INLINE __m256i inside_avx2(__m256i i, __m256i size) {
  const __m256i below_size = _mm256_cmpgt_epi32(size, i);
  if (kNonNegative) return below_size;
  return _mm256_and_si256(below_size, _mm256_cmpgt_epi32(i, _mm256_set1_epi32(-1)));
}

UF_AVX2_INLINE __m256i clamp_avx2(__m256i i, __m256i last) {
  return _mm256_min_epi32(_mm256_max_epi32(i, _mm256_setzero_si256()), last);
}

// w * v where the mask `inside` is set, +0 elsewhere.
UF_AVX2_INLINE __m256 masked_product_avx2(__m256 w, __m256 v, __m256i inside) {
  return _mm256_and_ps(_mm256_mul_ps(w, v), _mm256_castsi256_ps(inside));
}

// Bilinear interpolation of a float32 plane at 8 pixels: floors y0, x0 and weights as bilinear_row
// gives them. The products and sums are sample_plane's, in its order: a tap outside the image, which
// sample_plane skips, adds +0 here instead (the sum it would be added to is never -0, being
// 0 + something, so the result is bitwise the same), and its load reads a clamped index.
template <Padding P>
UF_AVX2_INLINE __m256 sample_bilinear_avx2(const float* plane, __m256i row_stride, __m256i column_stride,
                                           __m256i rows, __m256i columns, __m256i y0, __m256 wy0, __m256 wy1,
                                           __m256i x0, __m256 wx0, __m256 wx1) {
  constexpr bool kPadded = P != Padding::kZeros;  // padded floors are >= 0 and < size
  const __m256i one = _mm256_set1_epi32(1), all = _mm256_set1_epi32(-1);
  const __m256i last_row = _mm256_sub_epi32(rows, one), last_column = _mm256_sub_epi32(columns, one);
  const __m256 zero = _mm256_setzero_ps();
  const __m256i y1 = _mm256_add_epi32(y0, one), x1 = _mm256_add_epi32(x0, one);
  const __m256i in_y0 = kPadded ? all : inside_avx2<false>(y0, rows), in_y1 = inside_avx2<kPadded>(y1, rows);
  const __m256i in_x0 = kPadded ? all : inside_avx2<false>(x0, columns);
  const __m256i in_x1 = inside_avx2<kPadded>(x1, columns);
  const __m256i row0 = _mm256_mullo_epi32(clamp_avx2(y0, last_row), row_stride);
  const __m256i row1 = _mm256_mullo_epi32(clamp_avx2(y1, last_row), row_stride);
  const __m256i column0 = _mm256_mullo_epi32(clamp_avx2(x0, last_column), column_stride);
  const __m256i column1 = _mm256_mullo_epi32(clamp_avx2(x1, last_column), column_stride);
  const __m256 v00 = _mm256_i32gather_ps(plane, _mm256_add_epi32(row0, column0), 4);
  const __m256 v01 = _mm256_i32gather_ps(plane, _mm256_add_epi32(row0, column1), 4);
  const __m256 v10 = _mm256_i32gather_ps(plane, _mm256_add_epi32(row1, column0), 4);
  const __m256 v11 = _mm256_i32gather_ps(plane, _mm256_add_epi32(row1, column1), 4);
  const __m256 along0 =
      _mm256_add_ps(_mm256_add_ps(zero, masked_product_avx2(wx0, v00, in_x0)), masked_product_avx2(wx1, v01, in_x1));
  const __m256 along1 =
      _mm256_add_ps(_mm256_add_ps(zero, masked_product_avx2(wx0, v10, in_x0)), masked_product_avx2(wx1, v11, in_x1));
  return _mm256_add_ps(_mm256_add_ps(zero, masked_product_avx2(wy0, along0, in_y0)),
                       masked_product_avx2(wy1, along1, in_y1));
}

// uf_clamp(x, lo, hi) lane by lane, NaN included: !(x >= lo) ? lo : (x > hi ? hi : x), NaN -> lo.
UF_AVX2_INLINE __m256 clamp_ps_avx2(__m256 x, __m256 lo, __m256 hi) {
  const __m256 upper = _mm256_blendv_ps(x, hi, _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(upper, lo, _mm256_cmp_ps(x, lo, _CMP_NGE_UQ));
}

// pad_row then bilinear_row for 8 coordinates x on an axis of `size` pixels: the same operations.
template <Padding P>
UF_AVX2_INLINE void bilinear_axis_avx2(__m256 x, int64_t size, __m256i& floor, __m256& w0, __m256& w1) {
  const __m256 limit = _mm256_set1_ps(float(kCoordinateLimit)), span = _mm256_set1_ps(float(size - 1));
  const __m256 zero = _mm256_setzero_ps();
  __m256 v = clamp_ps_avx2(x, _mm256_sub_ps(zero, limit), limit);
  if constexpr (P == Padding::kBorder) v = clamp_ps_avx2(v, zero, span);
  if constexpr (P == Padding::kReflection) {
    const __m256 mirrored_above = _mm256_sub_ps(span, _mm256_sub_ps(v, span));
    const __m256 mirrored = _mm256_blendv_ps(mirrored_above, v, _mm256_cmp_ps(v, mirrored_above, _CMP_LT_OQ));
    const __m256 negated = _mm256_xor_ps(v, _mm256_set1_ps(-0.0f));
    __m256 padded = _mm256_blendv_ps(mirrored, negated, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    const __m256 outside =
        _mm256_or_ps(_mm256_cmp_ps(padded, zero, _CMP_NGE_UQ), _mm256_cmp_ps(padded, span, _CMP_NLE_UQ));
    if (_mm256_movemask_ps(outside) != 0) {  // farther than one image size beyond an edge: rare
      alignas(32) float clamped[8], lanes[8];
      _mm256_store_ps(clamped, v);
      _mm256_store_ps(lanes, padded);
      for (int k = 0; k < 8; ++k)
        if (!(lanes[k] >= 0.0f && lanes[k] <= float(size - 1))) lanes[k] = reflect_coordinate(clamped[k], size);
      padded = _mm256_load_ps(lanes);
    }
    v = padded;
  }
  const __m256i truncated = _mm256_cvttps_epi32(v);  // floor_index<int32_t>: toward zero, then down
  floor = _mm256_add_epi32(truncated, _mm256_castps_si256(_mm256_cmp_ps(_mm256_cvtepi32_ps(truncated), v, _CMP_GT_OQ)));
  const __m256 below = _mm256_cvtepi32_ps(floor);
  w0 = _mm256_sub_ps(_mm256_add_ps(below, _mm256_set1_ps(1.0f)), v);
  w1 = _mm256_sub_ps(v, below);
}

// round_padded(floor, fraction) for 8 padded coordinates: + 1 above one half, + (floor & 1) at it.
UF_AVX2_INLINE __m256i round_padded_avx2(__m256i floor, __m256 fraction) {
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256i above = _mm256_castps_si256(_mm256_cmp_ps(fraction, half, _CMP_GT_OQ));  // -1 where true
  const __m256i tie = _mm256_castps_si256(_mm256_cmp_ps(fraction, half, _CMP_EQ_OQ));
  return _mm256_add_epi32(_mm256_sub_epi32(floor, above),
                          _mm256_and_si256(_mm256_and_si256(tie, floor), _mm256_set1_epi32(1)));
}

// sample_row_bilinear of a float32 plane, 8 pixels per step with AVX2 gathers; returns how many
// leading pixels it did (a multiple of 8). Element offsets must fit in int32 (the caller checks).
template <Padding P>
UF_TARGET_AVX2 int64_t sample_row_bilinear_avx2(const float* plane, int32_t stride_h, int32_t stride_w,
                                                int32_t height, int32_t width, const int32_t* iy, const float* wy0,
                                                const float* wy1, const int32_t* ix, const float* wx0,
                                                const float* wx1, int64_t count, float* values) {
  const __m256i rows = _mm256_set1_epi32(height), columns = _mm256_set1_epi32(width);
  const __m256i row_stride = _mm256_set1_epi32(stride_h), column_stride = _mm256_set1_epi32(stride_w);
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) {
    const __m256i y0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(iy + j));
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ix + j));
    _mm256_storeu_ps(values + j, sample_bilinear_avx2<P>(plane, row_stride, column_stride, rows, columns, y0,
                                                         _mm256_loadu_ps(wy0 + j), _mm256_loadu_ps(wy1 + j), x0,
                                                         _mm256_loadu_ps(wx0 + j), _mm256_loadu_ps(wx1 + j)));
  }
  return j;
}
#endif

// Bilinear sampling of one plane along a row with per-pixel taps from bilinear_row (rows iy with
// weights wy0, wy1; columns ix with wx0, wx1); values[j] receives pixel j's interpolated value.
template <typename T, typename acc_t, Padding P, bool kAvx2>
UF_WARP_INLINE void sample_row_bilinear(const T* plane, int64_t stride_h, int64_t stride_w, int64_t height, int64_t width,
                         const int32_t* iy, const acc_t* wy0, const acc_t* wy1, const int32_t* ix,
                         const acc_t* wx0, const acc_t* wx1, int64_t count, acc_t* values) {
  int64_t j = 0;
#if UF_ELASTIC_AVX2
  if constexpr (kAvx2 && std::is_same_v<T, float> && std::is_same_v<acc_t, float>) {
    if (offsets_fit_int32(height, width, stride_h, stride_w)) {
      j = sample_row_bilinear_avx2<P>(plane, int32_t(stride_h), int32_t(stride_w), int32_t(height), int32_t(width),
                                      iy, wy0, wy1, ix, wx0, wx1, count, values);
    }
  }
#endif
  for (; j < count; ++j) {
    AxisTaps<acc_t> ty, tx;
    bilinear_taps_at<P>(iy[j], wy0[j], wy1[j], height, ty);
    bilinear_taps_at<P>(ix[j], wx0[j], wx1[j], width, tx);
    values[j] = sample_plane<Interp::kBilinear>(plane, stride_h, stride_w, ty, tx);
  }
}

#if UF_ELASTIC_AVX2
// copy_row_nearest of 1-, 4- or 8-byte elements with AVX2 gathers; returns how many leading
// pixels it did. Offsets are those of copy_row_nearest, in [0, largest_offset] (which fits in
// int32; the caller checks). A byte is gathered as the 4-byte word ending at it (starting at
// offset 0 for the first three bytes), so that no load reaches past the plane's last element.
template <typename L>
UF_TARGET_AVX2 int64_t copy_row_nearest_avx2(const L* source, int32_t stride_h, int32_t stride_w,
                                             int32_t largest_offset, const int32_t* ny, const int32_t* nx,
                                             int64_t count, L* target) {
  static_assert(sizeof(L) == 1 || sizeof(L) == 4 || sizeof(L) == 8, "1-, 4- or 8-byte elements");
  const __m256i row_stride = _mm256_set1_epi32(stride_h), column_stride = _mm256_set1_epi32(stride_w);
  int64_t j = 0;
  if constexpr (sizeof(L) == 1) {
    if (largest_offset < 3) return 0;  // planes of fewer than 4 bytes: no word fits
    const __m256i three = _mm256_set1_epi32(3), zero = _mm256_setzero_si256();
    // Byte 0 of every 32-bit lane to the front of its 128-bit half.
    const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                               0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (; j + 8 <= count; j += 8) {
      const __m256i offset = _mm256_add_epi32(
          _mm256_mullo_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ny + j)), row_stride),
          _mm256_mullo_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(nx + j)), column_stride));
      const __m256i start = _mm256_max_epi32(_mm256_sub_epi32(offset, three), zero);
      const __m256i words = _mm256_i32gather_epi32(reinterpret_cast<const int*>(source), start, 1);
      const __m256i shift = _mm256_slli_epi32(_mm256_sub_epi32(offset, start), 3);
      const __m256i bytes = _mm256_shuffle_epi8(_mm256_srlv_epi32(words, shift), low_bytes);
      const uint32_t low = uint32_t(_mm256_cvtsi256_si32(bytes));
      const uint32_t high = uint32_t(_mm_cvtsi128_si32(_mm256_extracti128_si256(bytes, 1)));
      const uint64_t eight = uint64_t(low) | (uint64_t(high) << 32);
      __builtin_memcpy(target + j, &eight, 8);
    }
  } else if constexpr (sizeof(L) == 4) {
    for (; j + 8 <= count; j += 8) {
      const __m256i offset = _mm256_add_epi32(
          _mm256_mullo_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ny + j)), row_stride),
          _mm256_mullo_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(nx + j)), column_stride));
      const __m256i values = _mm256_i32gather_epi32(reinterpret_cast<const int*>(source), offset, 4);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(target + j), values);
    }
  } else {
    for (; j + 4 <= count; j += 4) {
      const __m128i offset = _mm_add_epi32(
          _mm_mullo_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ny + j)), _mm256_castsi256_si128(row_stride)),
          _mm_mullo_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(nx + j)),
                          _mm256_castsi256_si128(column_stride)));
      const __m256i values = _mm256_i32gather_epi64(reinterpret_cast<const long long*>(source), offset, 8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(target + j), values);
    }
  }
  return j;
}
#endif

// Nearest copy of an integer plane of height x width elements along a row, from per-pixel row
// and column indices (inside the plane).
template <typename L, bool kAvx2>
UF_WARP_INLINE void copy_row_nearest(const void* plane, int64_t stride_h, int64_t stride_w, int64_t height,
                                     int64_t width, const int32_t* ny, const int32_t* nx, int64_t count, void* out) {
  const L* source = static_cast<const L*>(plane);
  L* target = static_cast<L*>(out);
  int64_t j = 0;
#if UF_ELASTIC_AVX2
  if constexpr (kAvx2 && sizeof(L) != 2) {
    const int64_t largest_offset = (height - 1) * stride_h + (width - 1) * stride_w;
    if (offsets_fit_int32(height, width, stride_h, stride_w))
      j = copy_row_nearest_avx2<L>(source, int32_t(stride_h), int32_t(stride_w), int32_t(largest_offset), ny, nx,
                                   count, target);
  }
#endif
  for (; j < count; ++j) target[j] = source[ny[j] * stride_h + nx[j] * stride_w];
}

// Per-thread row buffers of the CPU kernel.
template <typename acc_t>
struct RowBuffers {
  // Source points and label indices get room for whole 8-pixel steps: the fused AVX2 row reads
  // the source points past the row's end (left 0: harmless in-image coordinates) and discards them.
  explicit RowBuffers(int64_t width, int64_t grid_width)
      : columns(2 * grid_width), dy(width), dx(width), sy(whole_steps(width)), sx(whole_steps(width)), py(width),
        px(width), wy0(width), wy1(width), wx0(width), wx1(width), values(width), iy(whole_steps(width)),
        ix(whole_steps(width)) {}
  static int64_t whole_steps(int64_t width) { return (width + 7) / 8 * 8; }
  std::vector<acc_t> columns;  // per grid column: (dy, dx) interpolated along y for this row
  std::vector<acc_t> dy, dx;   // displacement
  std::vector<acc_t> sy, sx;   // source point
  std::vector<acc_t> py, px;   // source point after padding
  std::vector<acc_t> wy0, wy1, wx0, wx1, values;
  std::vector<int32_t> iy, ix;  // floors of py, px; then nearest indices for the label
};

// The label along a row, nearest: for padded coordinates from the rounded taps in b.iy, b.ix; with
// zeros padding per pixel from the source points (taps outside read 0), as warp_pixel does.
template <typename acc_t, Padding P, bool kAvx2>
UF_WARP_INLINE void warp_row_label(const WarpPointers<acc_t>& p, const WarpGeometry& g, int64_t n, int64_t plain_row,
                                   const RowBuffers<acc_t>& b) {
  const int64_t count = g.out_width;
  const void* label = static_cast<const char*>(p.label) + n * g.label.n * g.label_bytes;
  void* label_out = static_cast<char*>(p.label_out) + plain_row * g.label_bytes;
  if constexpr (P != Padding::kZeros) {
    const int32_t* iy = b.iy.data();
    const int32_t* ix = b.ix.data();
    const int64_t sh = g.label.h, sw = g.label.w;
    switch (g.label_bytes) {
      case 1: copy_row_nearest<uint8_t, kAvx2>(label, sh, sw, g.height, g.width, iy, ix, count, label_out); break;
      case 2: copy_row_nearest<uint16_t, kAvx2>(label, sh, sw, g.height, g.width, iy, ix, count, label_out); break;
      case 4: copy_row_nearest<uint32_t, kAvx2>(label, sh, sw, g.height, g.width, iy, ix, count, label_out); break;
      default: copy_row_nearest<uint64_t, kAvx2>(label, sh, sw, g.height, g.width, iy, ix, count, label_out); break;
    }
  } else {
    for (int64_t j = 0; j < count; ++j) {
      AxisTaps<acc_t> ly, lx;
      axis_taps<Interp::kNearest, P>(b.sy[j], g.height, ly);
      axis_taps<Interp::kNearest, P>(b.sx[j], g.width, lx);
      copy_element(label, ly.index[0] * g.label.h + lx.index[0] * g.label.w, label_out, j, g.label_bytes,
                   ly.inside[0] && lx.inside[0]);
    }
  }
}

#if UF_ELASTIC_AVX2
// Whether warp_row_bilinear_avx2 can do a float32 call: output rows contiguous, gather offsets of
// the image and weight planes in int32.
inline bool fused_avx2_row_fits(const WarpPointers<float>& p, const WarpGeometry& g) {
  return g.out.w == 1 && offsets_fit_int32(g.height, g.width, g.image.h, g.image.w) &&
         (p.weight == nullptr || offsets_fit_int32(g.height, g.width, g.weight.h, g.weight.w));
}

// warp_row_bilinear of a float32 image in one pass of 8-pixel steps (padding, taps, every channel,
// weight, label indices), its row arrays never written: bitwise the same results (see
// bilinear_axis_avx2, sample_bilinear_avx2, round_padded_avx2). The last step's lanes past the row
// read the 0 source points there and are not stored.
template <Padding P>
UF_TARGET_AVX2 void warp_row_bilinear_avx2(const WarpPointers<float>& p, const WarpGeometry& g, int64_t n, int64_t i,
                                           RowBuffers<float>& b) {
  const int64_t count = g.out_width;
  const float* image = static_cast<const float*>(p.image) + n * g.image.n;
  float* out = static_cast<float*>(p.out) + n * g.out.n + i * g.out.h;
  const float* vary = p.intensity ? p.intensity + 3 * n : nullptr;
  const int64_t plain_row = (n * g.out_height + i) * count;  // label / weight outputs: contiguous (N, h, w)
  const float* weight = p.weight ? static_cast<const float*>(p.weight) + n * g.weight.n : nullptr;
  float* weight_out = p.weight ? static_cast<float*>(p.weight_out) + plain_row : nullptr;
  const bool label_taps = p.label != nullptr && P != Padding::kZeros;
  const __m256i rows = _mm256_set1_epi32(int32_t(g.height)), columns = _mm256_set1_epi32(int32_t(g.width));
  const __m256i image_h = _mm256_set1_epi32(int32_t(g.image.h)), image_w = _mm256_set1_epi32(int32_t(g.image.w));
  const __m256i weight_h = _mm256_set1_epi32(int32_t(g.weight.h)), weight_w = _mm256_set1_epi32(int32_t(g.weight.w));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j = 0; j < count; j += 8) {
    const __m256i stored = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(std::min<int64_t>(count - j, 8))), lane);
    __m256i y0, x0;
    __m256 wy0, wy1, wx0, wx1;
    bilinear_axis_avx2<P>(_mm256_loadu_ps(b.sy.data() + j), g.height, y0, wy0, wy1);
    bilinear_axis_avx2<P>(_mm256_loadu_ps(b.sx.data() + j), g.width, x0, wx0, wx1);
    for (int64_t c = 0; c < g.channels; ++c) {
      _mm256_maskstore_ps(out + c * g.out.c + j, stored,
                          sample_bilinear_avx2<P>(image + c * g.image.c, image_h, image_w, rows, columns, y0, wy0,
                                                  wy1, x0, wx0, wx1));
    }
    if (weight != nullptr) {
      _mm256_maskstore_ps(weight_out + j, stored,
                          sample_bilinear_avx2<P>(weight, weight_h, weight_w, rows, columns, y0, wy0, wy1, x0, wx0, wx1));
    }
    if (label_taps) {  // room for whole steps: see RowBuffers
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.iy.data() + j), round_padded_avx2(y0, wy1));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.ix.data() + j), round_padded_avx2(x0, wx1));
    }
  }
  if (vary != nullptr) {  // a pass of its own: pow calls interleaved with the gathers run slower
    const float contrast = vary[0], brightness = vary[1], gamma = vary[2];
    for (int64_t c = 0; c < g.channels; ++c) {
      float* out_row = out + c * g.out.c;
      for (int64_t j = 0; j < count; ++j) out_row[j] = vary_intensity(out_row[j], contrast, brightness, gamma);
    }
  }
  if (p.label != nullptr) warp_row_label<float, P, true>(p, g, n, plain_row, b);
}
#endif

// Bilinear image sampling, row by row in passes over arrays: padding, taps, then sampling per
// channel, weight and label. Same arithmetic as warp_pixel, arranged so that all but the gathers
// vectorize and no per-pixel branch tests which outputs exist.
template <typename T, typename acc_t, Padding P, bool kAvx2>
UF_WARP_INLINE void warp_row_bilinear(const WarpPointers<acc_t>& p, const WarpGeometry& g, int64_t n, int64_t i,
                       RowBuffers<acc_t>& b) {
#if UF_ELASTIC_AVX2
  if constexpr (kAvx2 && std::is_same_v<T, float> && std::is_same_v<acc_t, float>) {
    if (fused_avx2_row_fits(p, g)) {
      warp_row_bilinear_avx2<P>(p, g, n, i, b);
      return;
    }
  }
#endif
  const int64_t count = g.out_width;
  int32_t* iy = b.iy.data();
  int32_t* ix = b.ix.data();
  acc_t *wy0 = b.wy0.data(), *wy1 = b.wy1.data(), *wx0 = b.wx0.data(), *wx1 = b.wx1.data();
  acc_t* values = b.values.data();
  pad_row<P>(b.sy.data(), b.py.data(), count, g.height);
  pad_row<P>(b.sx.data(), b.px.data(), count, g.width);
  bilinear_row(b.py.data(), count, iy, wy0, wy1);
  bilinear_row(b.px.data(), count, ix, wx0, wx1);
  const T* image = static_cast<const T*>(p.image) + n * g.image.n;
  T* out = static_cast<T*>(p.out) + n * g.out.n + i * g.out.h;
  const acc_t* vary = p.intensity ? p.intensity + 3 * n : nullptr;
  for (int64_t c = 0; c < g.channels; ++c) {
    sample_row_bilinear<T, acc_t, P, kAvx2>(image + c * g.image.c, g.image.h, g.image.w, g.height, g.width, iy, wy0, wy1,
                                     ix, wx0, wx1, count, values);
    T* out_row = out + c * g.out.c;
    if (vary != nullptr) {
      const acc_t contrast = vary[0], brightness = vary[1], gamma = vary[2];
      for (int64_t j = 0; j < count; ++j)
        out_row[j * g.out.w] = static_cast<T>(vary_intensity(values[j], contrast, brightness, gamma));
    } else {
      for (int64_t j = 0; j < count; ++j) out_row[j * g.out.w] = static_cast<T>(values[j]);
    }
  }
  const int64_t plain_row = (n * g.out_height + i) * count;  // label / weight outputs: contiguous (N, h, w)
  if (p.weight != nullptr) {
    if (g.weight_is_float) {
      const float* weight = static_cast<const float*>(p.weight) + n * g.weight.n;
      sample_row_bilinear<float, acc_t, P, kAvx2>(weight, g.weight.h, g.weight.w, g.height, g.width, iy, wy0, wy1, ix,
                                           wx0, wx1, count, values);
      float* weight_out = static_cast<float*>(p.weight_out) + plain_row;
      for (int64_t j = 0; j < count; ++j) weight_out[j] = static_cast<float>(values[j]);
    } else {
      const T* weight = static_cast<const T*>(p.weight) + n * g.weight.n;
      sample_row_bilinear<T, acc_t, P, kAvx2>(weight, g.weight.h, g.weight.w, g.height, g.width, iy, wy0, wy1, ix, wx0,
                                       wx1, count, values);
      T* weight_out = static_cast<T*>(p.weight_out) + plain_row;
      for (int64_t j = 0; j < count; ++j) weight_out[j] = static_cast<T>(values[j]);
    }
  }
  if (p.label != nullptr) {
    if constexpr (P != Padding::kZeros) {
      for (int64_t j = 0; j < count; ++j) {  // w1 = x - floor(x): see round_padded
        iy[j] = round_padded(iy[j], wy1[j]);
        ix[j] = round_padded(ix[j], wx1[j]);
      }
    }
    warp_row_label<acc_t, P, kAvx2>(p, g, n, plain_row, b);
  }
}

#if UF_ELASTIC_AVX2
// The nearest indices of a row of padded source points into b.iy, b.ix (and a float32 weight's
// bilinear samples), 8 pixels per step: bilinear_axis_avx2's floors rounded by round_padded_avx2,
// as warp_row_bilinear_avx2 computes the label's. Weight offsets must fit in int32.
template <Padding P>
UF_TARGET_AVX2 void nearest_indices_avx2(const WarpPointers<float>& p, const WarpGeometry& g, int64_t n,
                                         int64_t plain_row, RowBuffers<float>& b) {
  const int64_t count = g.out_width;
  const float* weight = p.weight ? static_cast<const float*>(p.weight) + n * g.weight.n : nullptr;
  float* weight_out = p.weight ? static_cast<float*>(p.weight_out) + plain_row : nullptr;
  const __m256i rows = _mm256_set1_epi32(int32_t(g.height)), columns = _mm256_set1_epi32(int32_t(g.width));
  const __m256i weight_h = _mm256_set1_epi32(int32_t(g.weight.h)), weight_w = _mm256_set1_epi32(int32_t(g.weight.w));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j = 0; j < count; j += 8) {  // whole steps: see RowBuffers
    __m256i y0, x0;
    __m256 wy0, wy1, wx0, wx1;
    bilinear_axis_avx2<P>(_mm256_loadu_ps(b.sy.data() + j), g.height, y0, wy0, wy1);
    bilinear_axis_avx2<P>(_mm256_loadu_ps(b.sx.data() + j), g.width, x0, wx0, wx1);
    if (weight != nullptr) {
      const __m256i stored = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(std::min<int64_t>(count - j, 8))), lane);
      _mm256_maskstore_ps(weight_out + j, stored,
                          sample_bilinear_avx2<P>(weight, weight_h, weight_w, rows, columns, y0, wy0, wy1, x0, wx0, wx1));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.iy.data() + j), round_padded_avx2(y0, wy1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.ix.data() + j), round_padded_avx2(x0, wx1));
  }
}
#endif

// An integer image (with its label and float32 weight), nearest, for padded coordinates: one pass
// for the nearest indices (the weight sampled bilinearly on the way), as warp_row_bilinear computes
// the label's, then one gather-copy per channel. Equal to warp_pixel's per-pixel taps: round_padded
// is nearbyint of a padded coordinate. T is an unsigned type of the image's element size.
template <typename T, Padding P, bool kAvx2>
UF_WARP_INLINE void warp_row_integer(const WarpPointers<float>& p, const WarpGeometry& g, int64_t n, int64_t i,
                                     RowBuffers<float>& b) {
  static_assert(P != Padding::kZeros, "zeros padding has taps outside the image: per pixel");
  const int64_t count = g.out_width;
  const int64_t plain_row = (n * g.out_height + i) * count;  // label / weight outputs: contiguous (N, h, w)
  int32_t* iy = b.iy.data();
  int32_t* ix = b.ix.data();
  bool indexed = false;
#if UF_ELASTIC_AVX2
  if constexpr (kAvx2) {
    if (p.weight == nullptr || offsets_fit_int32(g.height, g.width, g.weight.h, g.weight.w)) {
      nearest_indices_avx2<P>(p, g, n, plain_row, b);
      indexed = true;
    }
  }
#endif
  if (!indexed) {
    float *wy0 = b.wy0.data(), *wy1 = b.wy1.data(), *wx0 = b.wx0.data(), *wx1 = b.wx1.data();
    pad_row<P>(b.sy.data(), b.py.data(), count, g.height);
    pad_row<P>(b.sx.data(), b.px.data(), count, g.width);
    bilinear_row(b.py.data(), count, iy, wy0, wy1);
    bilinear_row(b.px.data(), count, ix, wx0, wx1);
    if (p.weight != nullptr) {
      const float* weight = static_cast<const float*>(p.weight) + n * g.weight.n;
      sample_row_bilinear<float, float, P, kAvx2>(weight, g.weight.h, g.weight.w, g.height, g.width, iy, wy0, wy1, ix,
                                                  wx0, wx1, count, static_cast<float*>(p.weight_out) + plain_row);
    }
    for (int64_t j = 0; j < count; ++j) {  // w1 = x - floor(x): see round_padded
      iy[j] = round_padded(iy[j], wy1[j]);
      ix[j] = round_padded(ix[j], wx1[j]);
    }
  }
  const T* image = static_cast<const T*>(p.image) + n * g.image.n;
  T* out = static_cast<T*>(p.out) + n * g.out.n + i * g.out.h;
  for (int64_t c = 0; c < g.channels; ++c) {
    if (g.out.w == 1) {
      copy_row_nearest<T, kAvx2>(image + c * g.image.c, g.image.h, g.image.w, g.height, g.width, iy, ix, count,
                                 out + c * g.out.c);
    } else {  // channels_last
      for (int64_t j = 0; j < count; ++j)
        out[c * g.out.c + j * g.out.w] = image[c * g.image.c + iy[j] * g.image.h + ix[j] * g.image.w];
    }
  }
  if (p.label != nullptr) warp_row_label<float, P, kAvx2>(p, g, n, plain_row, b);
}

// What every row of one call shares: the coarse grid's taps along x and their weight table.
template <typename acc_t>
struct ColumnTables {
  bool use_table = false;
  std::vector<AxisTaps<acc_t>> x_taps;
  std::vector<acc_t> table;  // table[c * out_width + j]: weight of grid column c at output column j
  std::vector<acc_t> column_coordinates;  // x of each output column in the full warp
};

template <typename acc_t>
ColumnTables<acc_t> column_tables(const WarpGeometry& geometry) {
  const int64_t gw = geometry.grid_width, out_width = geometry.out_width;
  ColumnTables<acc_t> t;
  t.use_table = !geometry.dense && gw <= kMaxTableColumns;
  if (!geometry.dense) {
    t.x_taps.resize(out_width);
    for (int64_t j = 0; j < out_width; ++j) {
      const int64_t x = uf_clamp<int64_t>(j + geometry.offset_x, 0, geometry.width - 1);
      coarse_axis_taps(x, geometry.width, gw, t.x_taps[j]);
    }
    if (t.use_table) {
      t.table.assign(gw * out_width, acc_t(0));
      for (int64_t j = 0; j < out_width; ++j)
        for (int k = 0; k < 4; ++k) t.table[t.x_taps[j].index[k] * out_width + j] += t.x_taps[j].weight[k];
    }
  }
  t.column_coordinates.resize(out_width);
  for (int64_t j = 0; j < out_width; ++j) t.column_coordinates[j] = acc_t(j + geometry.offset_x);
  return t;
}

// Output rows [begin, end) of the flattened (N * out_height) rows.
template <typename T, typename acc_t, Interp I, Padding P, bool kFloatImage, bool kAvx2>
UF_WARP_INLINE void warp_rows(const WarpPointers<acc_t>& pointers, const WarpGeometry& geometry,
                              const ColumnTables<acc_t>& tables, int64_t begin, int64_t end) {
  const int64_t gw = geometry.grid_width, out_width = geometry.out_width;
  const bool use_table = tables.use_table;
  const AxisTaps<acc_t>* x_taps = tables.x_taps.data();
  // Local copies: label stores through char-sized pointers could alias the originals and force
  // reloads of every field per pixel.
  const WarpGeometry g = geometry;
  const WarpPointers<acc_t> p = pointers;
  RowBuffers<acc_t> b(out_width, gw);
  acc_t* columns = b.columns.data();
  acc_t* dy = b.dy.data();
  acc_t* dx = b.dx.data();
  acc_t* sy = b.sy.data();
  acc_t* sx = b.sx.data();
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
        std::fill(dy, dy + out_width, acc_t(0));
        std::fill(dx, dx + out_width, acc_t(0));
        for (int64_t c = 0; c < gw; ++c) {
          const acc_t* weights = tables.table.data() + c * out_width;
          const acc_t column_dy = columns[c], column_dx = columns[gw + c];
          for (int64_t j = 0; j < out_width; ++j) {
            dy[j] += weights[j] * column_dy;
            dx[j] += weights[j] * column_dx;
          }
        }
      } else {
        for (int64_t j = 0; j < out_width; ++j) {
          dy[j] = coarse_along_x(columns, x_taps[j]);
          dx[j] = coarse_along_x(columns + gw, x_taps[j]);
        }
      }
    }
    // 2. Where every pixel samples the input.
    const acc_t row_coordinate = acc_t(i + g.offset_y);
    const acc_t* xs = tables.column_coordinates.data();
    if (p.affine != nullptr) {
      // A local copy: through p.affine, which could alias sy and sx, the loop would not vectorize.
      acc_t affine[6];
      std::copy(p.affine + 6 * n, p.affine + 6 * n + 6, affine);
      for (int64_t j = 0; j < out_width; ++j)
        source_point(row_coordinate, xs[j], dy[j], dx[j], affine, g.height, g.width, sy[j], sx[j]);
    } else {
      for (int64_t j = 0; j < out_width; ++j)
        source_point(row_coordinate, xs[j], dy[j], dx[j], static_cast<const acc_t*>(nullptr), g.height, g.width,
                     sy[j], sx[j]);
    }
    // 3. Sampling.
    if constexpr (kFloatImage && I == Interp::kBilinear) {
      warp_row_bilinear<T, acc_t, P, kAvx2>(p, g, n, i, b);
    } else if constexpr (!kFloatImage && P != Padding::kZeros) {
      warp_row_integer<T, P, kAvx2>(p, g, n, i, b);
    } else {
      for (int64_t j = 0; j < out_width; ++j)
        warp_pixel<T, acc_t, I, P, kFloatImage>(p, g, n, i, j, sy[j], sx[j]);
    }
  }
}

template <typename T, typename acc_t, Interp I, Padding P, bool kFloatImage>
void warp_rows_portable(const WarpPointers<acc_t>& p, const WarpGeometry& g, const ColumnTables<acc_t>& tables,
                        int64_t begin, int64_t end) {
  warp_rows<T, acc_t, I, P, kFloatImage, false>(p, g, tables, begin, end);
}

#if UF_ELASTIC_AVX2
// The same loops compiled for AVX2: float32 images (the common case, with gathers written for it)
// and integer images (nearest copies, gathered).
template <typename T, typename acc_t, Interp I, Padding P, bool kFloatImage>
UF_TARGET_AVX2 void warp_rows_avx2(const WarpPointers<acc_t>& p, const WarpGeometry& g,
                                   const ColumnTables<acc_t>& tables, int64_t begin, int64_t end) {
  warp_rows<T, acc_t, I, P, kFloatImage, true>(p, g, tables, begin, end);
}
#endif

// Whether the AVX2 row loops may run: the CPU (and OS) support AVX2 and torch's own CPU kernels
// use AVX2 or AVX-512 (ATEN_CPU_CAPABILITY=default selects the portable loops for both).
bool avx2_enabled() {
#if UF_ELASTIC_AVX2
  static const bool enabled = [] {
    if (!__builtin_cpu_supports("avx2")) return false;
    const std::string capability = at::get_cpu_capability();
    return capability == "AVX2" || capability == "AVX512";
  }();
  return enabled;
#else
  return false;
#endif
}

template <typename T, typename acc_t, Interp I, Padding P, bool kFloatImage>
void warp_cpu(const WarpPointers<acc_t>& pointers, const WarpGeometry& geometry) {
  const ColumnTables<acc_t> tables = column_tables<acc_t>(geometry);
  const int64_t rows = geometry.batch * geometry.out_height;
  const int64_t grain = std::max<int64_t>(1, 16384 / geometry.out_width);
  constexpr bool kHasAvx2Rows = std::is_same_v<T, float> || !kFloatImage;
  bool avx2 = false;
  if constexpr (kHasAvx2Rows) avx2 = avx2_enabled();
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
#if UF_ELASTIC_AVX2
    if constexpr (kHasAvx2Rows) {
      if (avx2) {
        warp_rows_avx2<T, acc_t, I, P, kFloatImage>(pointers, geometry, tables, begin, end);
        return;
      }
    }
#endif
    warp_rows_portable<T, acc_t, I, P, kFloatImage>(pointers, geometry, tables, begin, end);
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
