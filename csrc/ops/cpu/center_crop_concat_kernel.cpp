// CPU kernel of center_crop_concat: one pass over the output, parallel over (n, h) rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/center_crop_concat_checks.h"

namespace unet_fast {
namespace {

template <typename T>
void crop_concat_rows(const T* skip, const T* x, T* out, const CropConcatGeometry& g,
                      const Strides4& o, int64_t batch) {
  const int64_t channels = g.skip_channels + g.x_channels;
  const bool channels_inner = o.c == 1;  // channels_last output: walk channels innermost
  at::parallel_for(0, batch * g.height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.height, h = row % g.height;
      T* out_row = out + n * o.n + h * o.h;
      if (channels_inner) {
        for (int64_t w = 0; w < g.width; ++w)
          for (int64_t c = 0; c < channels; ++c)
            out_row[w * o.w + c] = crop_concat_value(skip, x, g, n, c, h, w);
      } else {
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t w = 0; w < g.width; ++w)
            out_row[c * o.c + w * o.w] = crop_concat_value(skip, x, g, n, c, h, w);
      }
    }
  });
}

at::Tensor center_crop_concat_cpu(const at::Tensor& skip, const at::Tensor& x) {
  const CropConcatGeometry g = check_crop_concat(skip, x);
  at::Tensor out = empty_crop_concat_output(skip, x);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "center_crop_concat_cpu", [&] {
    crop_concat_rows(skip.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                     out.mutable_data_ptr<scalar_t>(), g, strides4(out), x.size(0));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("center_crop_concat", &center_crop_concat_cpu);
}

}  // namespace unet_fast
