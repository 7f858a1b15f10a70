// CPU kernel of relu_pool_backward: the gradient at a 3x3 conv's pre-activation, in one pass.
//
//   grad = y <= 0 ? 0 : grad_y + max_pool2d_backward(grad_pooled, y)
//
// for y = relu(conv(...)) and, when given, pooled = max_pool2d(y, 2). The pool's argmax is found
// again from y with PyTorch's CPU rule (the first maximum in row-major window order; a NaN beats any
// number, a later NaN an earlier one), so nothing but y is kept from the forward. The mask is ReLU's
// backward rule (threshold_backward: zero where y <= 0, so a NaN passes its gradient). This replaces
// the composite's five passes (zeros, max-pool indices, their backward, add, ReLU mask) by one read
// of y, grad_y and grad_pooled and one write. Any memory format; the output has y's. Rows outside
// the 2x2 windows (an odd height or width) get no pool gradient, as max_pool2d's floor rule gives.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>

namespace unet_fast {
namespace {

struct Plane {  // element strides of one (h, w) plane, and where (n, c) starts
  int64_t n, c, h, w;
};

Plane plane_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

template <typename T>
struct Views {
  const T* y;
  const T* grad_y;       // nullptr: no incoming gradient on y itself
  const T* grad_pooled;  // nullptr: y was not pooled
  T* out;
  Plane sy, sg, sp, so;
};

// True when `value` replaces `best` as a window's maximum (PyTorch's max_pool2d CPU rule).
template <typename T>
inline bool takes_max(T value, T best) {
  return value > best || std::isnan(static_cast<float>(value));
}

template <typename T>
void relu_pool_backward_plane(const Views<T>& v, int64_t n, int64_t c, int64_t height, int64_t width,
                              int64_t pooled_height, int64_t pooled_width) {
  using Acc = at::opmath_type<T>;
  const T* y = v.y + n * v.sy.n + c * v.sy.c;
  const T* gy = v.grad_y ? v.grad_y + n * v.sg.n + c * v.sg.c : nullptr;
  const T* gp = v.grad_pooled ? v.grad_pooled + n * v.sp.n + c * v.sp.c : nullptr;
  T* out = v.out + n * v.so.n + c * v.so.c;
  // The mask and the incoming gradient, everywhere: the pool routes only add to this.
  for (int64_t h = 0; h < height; ++h) {
    const T* y_row = y + h * v.sy.h;
    T* out_row = out + h * v.so.h;
    if (gy) {
      const T* g_row = gy + h * v.sg.h;
      for (int64_t w = 0; w < width; ++w) {
        out_row[w * v.so.w] = y_row[w * v.sy.w] <= T(0) ? T(0) : g_row[w * v.sg.w];
      }
    } else {
      for (int64_t w = 0; w < width; ++w) out_row[w * v.so.w] = T(0);
    }
  }
  if (!gp) return;
  for (int64_t ph = 0; ph < pooled_height; ++ph) {
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      int64_t best_h = 2 * ph, best_w = 2 * pw;
      T best = y[best_h * v.sy.h + best_w * v.sy.w];
      for (int64_t dh = 0; dh < 2; ++dh) {
        for (int64_t dw = 0; dw < 2; ++dw) {
          const int64_t h = 2 * ph + dh, w = 2 * pw + dw;
          const T value = y[h * v.sy.h + w * v.sy.w];
          if ((dh | dw) && takes_max(value, best)) {
            best = value;
            best_h = h;
            best_w = w;
          }
        }
      }
      if (!(best <= T(0))) {  // the ReLU mask at the argmax
        T& slot = out[best_h * v.so.h + best_w * v.so.w];
        slot = static_cast<T>(static_cast<Acc>(slot) + static_cast<Acc>(gp[ph * v.sp.h + pw * v.sp.w]));
      }
    }
  }
}

// The same for planes whose rows are contiguous (unit width strides: NCHW tensors), per pair of
// rows: first the mask over both rows (a loop the compiler vectorizes), then each window's
// gradient added at its argmax. The argmax is computed without
// branches (the first of the four values equal to their maximum), so that the random pattern of
// a ReLU's output costs no mispredictions; windows holding a NaN take PyTorch's rule instead.
template <typename T>
void relu_pool_backward_rows(const T* __restrict__ y, const T* __restrict__ gy, const T* __restrict__ gp,
                             T* __restrict__ out, int64_t height, int64_t width, const Plane& sy, const Plane& sg,
                             const Plane& sp, const Plane& so, int64_t pooled_height, int64_t pooled_width) {
  using Acc = at::opmath_type<T>;
  const T zero(0);
  auto mask_row = [&](const T* __restrict__ y_row, const T* __restrict__ g_row, T* __restrict__ out_row) {
    if (g_row) {
      for (int64_t w = 0; w < width; ++w) {
        const T g = g_row[w];  // loaded unconditionally, so that the choice is a select, not a branch
        out_row[w] = y_row[w] <= zero ? zero : g;
      }
    } else {
      for (int64_t w = 0; w < width; ++w) out_row[w] = zero;
    }
  };
  for (int64_t h = 0; h < height; ++h) {
    const T* y0 = y + h * sy.h;
    T* o0 = out + h * so.h;
    mask_row(y0, gy ? gy + h * sg.h : nullptr, o0);
    if (h % 2 == 0 || h / 2 >= pooled_height) continue;
    // rows h - 1 and h are complete: route the pooled gradient of their windows
    const T* top = y0 - sy.h;
    T* out_top = o0 - so.h;
    const T* p = gp + (h / 2) * sp.h;
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      const int64_t w = 2 * pw;
      const T a = top[w], b = top[w + 1], c = y0[w], d = y0[w + 1];
      int64_t index;  // the argmax, 0..3 in window order
      if ((a != a) | (b != b) | (c != c) | (d != d)) {
        // PyTorch's scan lets a NaN win and a later NaN win again; a NaN also passes the ReLU mask
        index = d != d ? 3 : c != c ? 2 : b != b ? 1 : 0;
      } else {
        const T best = std::max(std::max(a, b), std::max(c, d));
        if (!(best > zero)) continue;  // the ReLU mask at the argmax
        const int64_t not_a = a != best, not_b = b != best, not_c = c != best;
        index = not_a * (1 + not_b * (1 + not_c));
      }
      T& slot = (index >> 1 ? o0 : out_top)[w + (index & 1)];
      slot = static_cast<T>(static_cast<Acc>(slot) + static_cast<Acc>(p[pw]));
    }
  }
}

// One 2x2 window across its channels: the four pixels' runs of values (ya..yd), incoming
// gradients (ga..gd, unused without kGradY), the pooled gradient p and the outputs (oa..od). Each
// output is its masked incoming gradient, plus p where the pixel is the window's argmax: the first
// maximum in window order where the ReLU passes it, or under PyTorch's NaN rule the last NaN. No
// branches and distinct restrict pointers, so that the compiler vectorizes the loop (fp32, fp64).
template <typename T, bool kGradY>
inline void window_lanes(const T* __restrict__ ya, const T* __restrict__ yb, const T* __restrict__ yc,
                         const T* __restrict__ yd, const T* __restrict__ ga, const T* __restrict__ gb,
                         const T* __restrict__ gc, const T* __restrict__ gd, const T* __restrict__ p,
                         T* __restrict__ oa, T* __restrict__ ob, T* __restrict__ oc, T* __restrict__ od,
                         int64_t channels) {
  using Acc = at::opmath_type<T>;
  const T zero(0);
  for (int64_t k = 0; k < channels; ++k) {
    // every load unconditional: a conditional load would stop the vectorizer
    const T a = ya[k], b = yb[k], c = yc[k], d = yd[k];
    const T va = kGradY ? ga[k] : zero, vb = kGradY ? gb[k] : zero, vc = kGradY ? gc[k] : zero,
            vd = kGradY ? gd[k] : zero;
    const Acc routed = static_cast<Acc>(p[k]);
    const bool nan_a = a != a, nan_b = b != b, nan_c = c != c, nan_d = d != d;
    const bool any_nan = nan_a | nan_b | nan_c | nan_d;
    const T top = a < b ? b : a, bottom = c < d ? d : c;
    const T best = top < bottom ? bottom : top;
    const bool route = !any_nan & (best > zero);
    const bool max_a = a == best, max_b = !max_a & (b == best), max_c = !max_a & !max_b & (c == best);
    const bool max_d = !max_a & !max_b & !max_c;
    const bool at_a = (route & max_a) | (any_nan & !nan_b & !nan_c & !nan_d);
    const bool at_b = (route & max_b) | (nan_b & !nan_c & !nan_d);
    const bool at_c = (route & max_c) | (nan_c & !nan_d);
    const bool at_d = (route & max_d) | nan_d;
    // + 0 off the argmax, as autograd's sum of the incoming and the pool's (zero) gradient gives
    oa[k] = static_cast<T>(static_cast<Acc>(a <= zero ? zero : va) + (at_a ? routed : Acc(0)));
    ob[k] = static_cast<T>(static_cast<Acc>(b <= zero ? zero : vb) + (at_b ? routed : Acc(0)));
    oc[k] = static_cast<T>(static_cast<Acc>(c <= zero ? zero : vc) + (at_c ? routed : Acc(0)));
    od[k] = static_cast<T>(static_cast<Acc>(d <= zero ? zero : vd) + (at_d ? routed : Acc(0)));
  }
}

// The same for channels_last planes (NHWC, each image row W * C contiguous values), per pair of
// rows: each window's four pixels are four runs of C values (window_lanes), and every output value
// is written once.
template <typename T, bool kGradY>
void relu_pool_backward_nhwc_rows(const T* __restrict__ y, const T* __restrict__ gy, const T* __restrict__ gp,
                                  T* __restrict__ out, int64_t channels, int64_t width, int64_t rows,
                                  int64_t pooled_width) {
  const T zero(0);
  const int64_t row_stride = width * channels;
  // the ReLU mask of the incoming gradient (zero without one); g is loaded unconditionally, so that
  // the choice is a select and the loops vectorize
  auto masked = [&](int64_t i) {
    if constexpr (kGradY) {
      const T g = gy[i];
      return y[i] <= zero ? zero : g;
    } else {
      return zero;
    }
  };
  auto mask = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = masked(i);
  };
  if (rows < 2 || !gp) {  // a last odd row, or no pool: the mask alone
    for (int64_t r = 0; r < rows; ++r) mask(r * row_stride, r * row_stride + width * channels);
    return;
  }
  for (int64_t pw = 0; pw < pooled_width; ++pw) {
    // the window's four pixels: top left, top right, bottom left, bottom right (window order)
    const int64_t a0 = 2 * pw * channels, b0 = a0 + channels, c0 = a0 + row_stride, d0 = c0 + channels;
    window_lanes<T, kGradY>(y + a0, y + b0, y + c0, y + d0, kGradY ? gy + a0 : nullptr, kGradY ? gy + b0 : nullptr,
                            kGradY ? gy + c0 : nullptr, kGradY ? gy + d0 : nullptr, gp + pw * channels, out + a0,
                            out + b0, out + c0, out + d0, channels);
  }
  // an odd width's last column belongs to no window
  const int64_t tail = 2 * pooled_width * channels;
  mask(tail, width * channels);
  mask(row_stride + tail, row_stride + width * channels);
}

// Dense channels_last strides (more than one channel: a single channel takes the NCHW loops).
bool channels_last_dense(const at::Tensor& t) {
  return t.size(1) > 1 && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_like(const char* name, const at::Tensor& t, const at::Tensor& y, at::IntArrayRef shape) {
  TORCH_CHECK(t.scalar_type() == y.scalar_type(), "relu_pool_backward: ", name, " has dtype ", t.scalar_type(),
              " but y has ", y.scalar_type());
  TORCH_CHECK(t.device() == y.device(), "relu_pool_backward: ", name, " and y are on different devices");
  TORCH_CHECK(t.sizes() == shape, "relu_pool_backward: ", name, " must have shape ", shape, ", got ", t.sizes());
}

at::Tensor relu_pool_backward_cpu(const at::Tensor& y, const std::optional<at::Tensor>& grad_y,
                                  const std::optional<at::Tensor>& grad_pooled) {
  TORCH_CHECK(y.dim() == 4, "relu_pool_backward: y must be 4-d (N, C, H, W), got ", y.dim(), "-d");
  const int64_t batch = y.size(0), channels = y.size(1), height = y.size(2), width = y.size(3);
  if (grad_y) check_like("grad_y", *grad_y, y, y.sizes());
  if (grad_pooled) check_like("grad_pooled", *grad_pooled, y, {batch, channels, height / 2, width / 2});
  at::Tensor out = at::empty_like(y);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "relu_pool_backward_cpu", [&] {
    Views<scalar_t> v{y.const_data_ptr<scalar_t>(),
                      grad_y ? grad_y->const_data_ptr<scalar_t>() : nullptr,
                      grad_pooled ? grad_pooled->const_data_ptr<scalar_t>() : nullptr,
                      out.mutable_data_ptr<scalar_t>(),
                      plane_of(y),
                      grad_y ? plane_of(*grad_y) : Plane{},
                      grad_pooled ? plane_of(*grad_pooled) : Plane{},
                      plane_of(out)};
    const int64_t pooled_height = grad_pooled ? height / 2 : 0, pooled_width = grad_pooled ? width / 2 : 0;
    if (channels_last_dense(y) && channels_last_dense(out) && (!grad_y || channels_last_dense(*grad_y)) &&
        (!grad_pooled || channels_last_dense(*grad_pooled))) {
      // One pair of image rows per task: the windows' pixels are contiguous runs of channels.
      const int64_t row = width * channels, row_pairs = (height + 1) / 2;
      at::parallel_for(0, batch * row_pairs, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t n = i / row_pairs, pair = i % row_pairs;
          const int64_t offset = n * v.sy.n + 2 * pair * row, rows = std::min<int64_t>(2, height - 2 * pair);
          const bool pooled = v.grad_pooled && pair < pooled_height;
          const scalar_t* gp = pooled ? v.grad_pooled + n * v.sp.n + pair * pooled_width * channels : nullptr;
          if (v.grad_y) {
            relu_pool_backward_nhwc_rows<scalar_t, true>(v.y + offset, v.grad_y + offset, gp, v.out + offset,
                                                         channels, width, rows, pooled_width);
          } else {
            relu_pool_backward_nhwc_rows<scalar_t, false>(v.y + offset, nullptr, gp, v.out + offset, channels,
                                                          width, rows, pooled_width);
          }
        }
      });
      return;
    }
    const bool unit_width_strides = v.sy.w == 1 && v.so.w == 1 && (!v.grad_y || v.sg.w == 1) &&
                                    (!v.grad_pooled || v.sp.w == 1);
    // One (n, c) plane per task: the window's four values and their gradients stay in cache.
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / channels, c = i % channels;
        if (unit_width_strides) {
          relu_pool_backward_rows(v.y + n * v.sy.n + c * v.sy.c, v.grad_y ? v.grad_y + n * v.sg.n + c * v.sg.c : nullptr,
                                  v.grad_pooled ? v.grad_pooled + n * v.sp.n + c * v.sp.c : nullptr,
                                  v.out + n * v.so.n + c * v.so.c, height, width, v.sy, v.sg, v.sp, v.so,
                                  pooled_height, pooled_width);
        } else {
          relu_pool_backward_plane(v, n, c, height, width, pooled_height, pooled_width);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("relu_pool_backward", &relu_pool_backward_cpu);
}

}  // namespace unet_fast
