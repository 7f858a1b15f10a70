// CUDA kernel of center_crop_concat: one thread per output element, in the output's memory order
// so that writes are coalesced.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/center_crop_concat_checks.h"

namespace unet_fast {
namespace {

template <typename T>
__global__ void crop_concat_kernel(const T* __restrict__ skip, const T* __restrict__ x,
                                   T* __restrict__ out, CropConcatGeometry g, Strides4 o,
                                   bool channels_last, int64_t numel) {
  const int64_t channels = g.skip_channels + g.x_channels;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, h, w, rest = i;
    if (channels_last) {
      c = rest % channels; rest /= channels;
      w = rest % g.width;  rest /= g.width;
      h = rest % g.height; n = rest / g.height;
    } else {
      w = rest % g.width;  rest /= g.width;
      h = rest % g.height; rest /= g.height;
      c = rest % channels; n = rest / channels;
    }
    out[n * o.n + c * o.c + h * o.h + w * o.w] = crop_concat_value(skip, x, g, n, c, h, w);
  }
}

at::Tensor center_crop_concat_cuda(const at::Tensor& skip, const at::Tensor& x) {
  const CropConcatGeometry g = check_crop_concat(skip, x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = empty_crop_concat_output(skip, x);
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const bool channels_last = out.stride(1) == 1 && out.size(1) > 1;
  constexpr int threads = 256;
  const int64_t blocks = std::min<int64_t>((numel + threads - 1) / threads, int64_t(1) << 20);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "center_crop_concat_cuda", [&] {
    crop_concat_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        skip.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        g, strides4(out), channels_last, numel);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("center_crop_concat", &center_crop_concat_cuda);
}

}  // namespace unet_fast
