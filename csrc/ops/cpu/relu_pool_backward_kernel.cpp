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

// The same for planes whose rows are contiguous (unit width strides; NCHW, as the fused CPU
// training path runs), per pair of rows: first the mask over both rows (a loop the compiler
// vectorizes), then each window's gradient added at its argmax. The argmax is computed without
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
