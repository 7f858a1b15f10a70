// CPU kernel of max_pool2x2: max_pool2d(y, 2) (stride 2, no padding, floor) without indices.
//
// ATen's CPU max-pool walks NCHW tensors one window at a time through a generic kernel and also
// writes indices: on the U-Net's 2x2 pools it costs about as much as one of the 3x3 convolutions.
// This one reads two input rows per output row and keeps no indices (the fused conv's backward
// finds the argmax again from y, see relu_pool_backward_kernel.cpp). A window holding a NaN gives
// NaN, as max_pool2d does. Any memory format; the output has the input's.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace unet_fast {
namespace {

// max_pool2d's rule: a NaN wins, else the larger value.
template <typename T>
inline T max_or_nan(T a, T b) {
  return (b > a || std::isnan(static_cast<float>(b))) ? b : a;
}

template <typename T>
void pool_plane(const T* in, T* out, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                int64_t pooled_height, int64_t pooled_width) {  // in_*/out_*: element strides of rows and columns
  for (int64_t ph = 0; ph < pooled_height; ++ph) {
    const T* top = in + 2 * ph * in_h;
    const T* bottom = top + in_h;
    T* out_row = out + ph * out_h;
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      const int64_t w = 2 * pw * in_w;
      T best = max_or_nan(max_or_nan(top[w], top[w + in_w]), bottom[w]);
      out_row[pw * out_w] = max_or_nan(best, bottom[w + in_w]);
    }
  }
}

at::Tensor max_pool2x2_cpu(const at::Tensor& y) {
  TORCH_CHECK(y.dim() == 4, "max_pool2x2: y must be 4-d (N, C, H, W), got ", y.dim(), "-d");
  const int64_t batch = y.size(0), channels = y.size(1);
  const int64_t pooled_height = y.size(2) / 2, pooled_width = y.size(3) / 2;
  at::Tensor out = at::empty({batch, channels, pooled_height, pooled_width},
                             y.options().memory_format(y.suggest_memory_format()));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "max_pool2x2_cpu", [&] {
    const scalar_t* in = y.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / channels, c = i % channels;
        pool_plane(in + n * y.stride(0) + c * y.stride(1), o + n * out.stride(0) + c * out.stride(1), y.stride(2),
                   y.stride(3), out.stride(2), out.stride(3), pooled_height, pooled_width);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("max_pool2x2", &max_pool2x2_cpu);
}

}  // namespace unet_fast
