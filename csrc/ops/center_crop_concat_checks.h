// Input checks and output allocation for center_crop_concat, shared by its CPU and CUDA kernels.
// The Python wrapper raises friendlier errors first; these guard direct torch.ops calls.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "ops/center_crop_concat.h"

namespace unet_fast {

inline Strides4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

inline CropConcatGeometry check_crop_concat(const at::Tensor& skip, const at::Tensor& x) {
  TORCH_CHECK(skip.dim() == 4 && x.dim() == 4, "center_crop_concat: skip and x must be 4-d (N, C, H, W)");
  TORCH_CHECK(skip.scalar_type() == x.scalar_type(), "center_crop_concat: skip and x dtypes differ");
  TORCH_CHECK(skip.device() == x.device(), "center_crop_concat: skip and x devices differ");
  TORCH_CHECK(skip.size(0) == x.size(0), "center_crop_concat: batch sizes differ");
  const int64_t dh = skip.size(2) - x.size(2), dw = skip.size(3) - x.size(3);
  TORCH_CHECK(dh >= 0 && dw >= 0 && dh % 2 == 0 && dw % 2 == 0,
              "center_crop_concat: skip must be larger than x by an even, non-negative amount per axis");
  return {skip.size(1), x.size(1), x.size(2), x.size(3), dh / 2, dw / 2, strides4(skip), strides4(x)};
}

// The output is channels_last exactly when x is channels_last and not also NCHW-contiguous
// (the rule unet_fast/ops/_layout.py extension_memory_format repeats for the fake kernels).
inline at::Tensor empty_crop_concat_output(const at::Tensor& skip, const at::Tensor& x) {
  const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  return at::empty({x.size(0), skip.size(1) + x.size(1), x.size(2), x.size(3)},
                   x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                           : at::MemoryFormat::Contiguous));
}

}  // namespace unet_fast
