// The schemas of the unet_fast library's C++ ops (center_crop_concat, elastic_warp,
// border_distances, simple_point_warp, and the fused CPU path's relu_pool_backward and
// max_pool2x2), and the Python module's build information. Kernels register themselves per
// backend in ops/cpu/<op>_kernel.cpp and ops/cuda/<op>_kernel.cu; each op's Python wrapper, fake
// kernel and autograd are in unet_fast/ops/<op>.py. The Triton-backed ops (conv3x3_relu,
// upconv2x2, conv1x1) and the model's block ops are defined in Python (torch.library.custom_op in
// unet_fast/ops/ and unet_fast/blocks.py), not here.
// The same sources build the Python extension (setup.py, which defines TORCH_EXTENSION_NAME) and a
// plain shared library for C++ consumers (CMakeLists.txt), which has no Python module.
#include <torch/library.h>
#ifdef TORCH_EXTENSION_NAME
#include <torch/extension.h>
#endif

TORCH_LIBRARY(unet_fast, m) {
  // cat([center_crop(skip, x.shape[-2:]), x], dim=1) in one pass. skip (N, C0, Hs, Ws),
  // x (N, C1, H, W) with Hs - H and Ws - W even and >= 0; the output (N, C0 + C1, H, W) has
  // x's memory format. Differentiable through the Python autograd registration.
  m.def("center_crop_concat(Tensor skip, Tensor x) -> Tensor");
  // Elastic + affine warp of image (N, C, H, W), and optionally label (N, H, W) integer (nearest)
  // and weight (N, H, W) float (bilinear), with one displacement field (N, 2, gh, gw) in pixels
  // (dy, dx): dense when (gh, gw) == (H, W), else a coarse grid upsampled bicubically on the fly
  // (align_corners=True). affine (N, 2, 3) acts on (x, y) about the image centre; intensity (N, 3)
  // is per-sample (contrast, brightness, gamma). interpolation: nearest | bilinear | bicubic
  // (integer images: nearest); padding_mode: zeros | border | reflection, as grid_sample with
  // align_corners=True. Returns the out_size window at offset of (image, label, weight); absent
  // label/weight give 0-element tensors. No gradient exists: the Python wrapper refuses inputs
  // that require grad.
  m.def(
      "elastic_warp(Tensor image, Tensor displacement, Tensor? label, Tensor? weight, Tensor? affine, "
      "Tensor? intensity, str interpolation, str padding_mode, int[2] out_size, int[2] offset) "
      "-> (Tensor, Tensor, Tensor)");
  // Distances from every pixel to the nearest and the second-nearest distinct instance of an
  // instance map (N, H, W) int32/int64, 0 = no instance: two float32 (N, H, W) tensors, +inf
  // beyond max_distance (or where fewer instances exist). CPU only; the border weight map's input.
  m.def("border_distances(Tensor instances, float max_distance) -> (Tensor, Tensor)");
  // The warping step of the warping error (Jain et al. 2010): target and prediction (N, H, W) uint8
  // cell maps (0 = boundary) -> (warped, classes), both (N, H, W) uint8: the target with every simple
  // pixel that disagrees with the prediction flipped (cells 4-, boundary 8-connected), and per pixel
  // 0 where they agree, else what flipping it would do: 1 split, 2 merge, 3 cell addition,
  // 4 cell deletion, 5 hole addition, 6 hole deletion. CPU only.
  m.def("simple_point_warp(Tensor target, Tensor prediction) -> (Tensor, Tensor)");
  // The gradient at a conv's pre-activation for y = relu(conv(...)) and, when grad_pooled is given,
  // pooled = max_pool2d(y, 2): y <= 0 ? 0 : grad_y + max_pool2d_backward(grad_pooled, y), the
  // pool's argmax found again from y (PyTorch's tie and NaN rule). y (N, C, H, W), grad_y like y,
  // grad_pooled (N, C, H / 2, W / 2); the output has y's shape and memory format. CPU only: the
  // CUDA path runs the fused Triton backward instead.
  m.def("relu_pool_backward(Tensor y, Tensor? grad_y, Tensor? grad_pooled) -> Tensor");
  // max_pool2d(y, 2) without indices: (N, C, H, W) -> (N, C, H / 2, W / 2) in y's memory format, a
  // NaN winning its window as in max_pool2d. CPU only (ATen's NCHW max-pool is the slow case there).
  m.def("max_pool2x2(Tensor y) -> Tensor");
}

#ifdef TORCH_EXTENSION_NAME
namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = UNET_FAST_TORCH_VERSION;
#ifdef WITH_CUDA
  info["cuda_kernels"] = true;
  info["cuda_version"] = UNET_FAST_CUDA_VERSION;
  info["cuda_archs"] = std::string(UNET_FAST_CUDA_ARCHS);
#else
  info["cuda_kernels"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs"] = pybind11::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "unet_fast C++/CUDA kernels; ops live under torch.ops.unet_fast";
  m.def("build_info", &build_info, "How this extension was built: torch and CUDA versions, CUDA archs.");
}
#endif  // TORCH_EXTENSION_NAME
