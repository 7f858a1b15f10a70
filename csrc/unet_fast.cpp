// Every op schema of the unet_fast library, and the Python module's build information.
// Kernels register themselves per backend in ops/cpu/*_kernel.cpp and ops/cuda/*_kernel.cu.
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
