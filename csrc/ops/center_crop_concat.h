// center_crop_concat: out = cat([center_crop(skip, x.shape[-2:]), x], dim=1).
// Index math shared by the CPU kernel and the CUDA kernel.
#pragma once

#include <cstdint>

#include "ops/common.h"

namespace unet_fast {

// Element strides of an NCHW-indexed 4-d tensor, in whatever memory format it has.
struct Strides4 {
  int64_t n, c, h, w;
};

struct CropConcatGeometry {
  int64_t skip_channels;  // C0
  int64_t x_channels;     // C1
  int64_t height, width;  // of x and of the output
  int64_t crop_top, crop_left;  // (Hs - H) / 2, (Ws - W) / 2
  Strides4 skip, x;
};

// Reads output element (n, c, h, w): channels [0, C0) come from skip at the crop offset,
// channels [C0, C0 + C1) from x.
template <typename T>
UF_HOST_DEVICE T crop_concat_value(const T* skip, const T* x, const CropConcatGeometry& g,
                                   int64_t n, int64_t c, int64_t h, int64_t w) {
  if (c < g.skip_channels) {
    return skip[n * g.skip.n + c * g.skip.c + (h + g.crop_top) * g.skip.h +
                (w + g.crop_left) * g.skip.w];
  }
  return x[n * g.x.n + (c - g.skip_channels) * g.x.c + h * g.x.h + w * g.x.w];
}

}  // namespace unet_fast
