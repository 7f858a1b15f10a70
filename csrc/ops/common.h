// Qualifiers for math shared by the CPU kernels and their CUDA twins.
#pragma once

#if defined(__CUDACC__)
#define UF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define UF_HOST_DEVICE inline
#endif
