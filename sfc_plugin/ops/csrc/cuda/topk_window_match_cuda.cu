// CUDA implementation of sfc::topk_window_neighbours: the kernels and their
// launch plan are in topk_window_match_kernel.cuh (shared with the tests'
// CPU emulation); this file launches them on the current stream of the
// query's device, sized to that device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "topk_window_match_kernel.cuh"

namespace sfc_plugin {
namespace ops {
namespace {

// Blocks per multiprocessor that make a full wave: a block holds 4 warps
// and about 30 KiB of shared memory in float32 at k = 15.
constexpr int64_t kBlocksPerMultiprocessor = 8;

struct CudaLaunch {
  cudaStream_t stream;

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block,
                  size_t shared, Args... args) const {
    C10_CUDA_CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(shared)));
    kernel<<<grid, block, shared, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

int device_attribute(cudaDeviceAttr attribute, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_cuda(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys) {
  const c10::cuda::CUDAGuard guard(query.device());
  const int device = query.device().index();
  const int64_t multiprocessors =
      device_attribute(cudaDevAttrMultiProcessorCount, device);
  const int64_t max_shared =
      device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return cuda_kernels::topk_window_neighbours_tiled(
      query, keys, topk, radius, temperature, unrestricted_keys,
      kBlocksPerMultiprocessor * multiprocessors, max_shared,
      CudaLaunch{c10::cuda::getCurrentCUDAStream()});
}

TORCH_LIBRARY_IMPL(sfc, CUDA, m) {
  m.impl("topk_window_neighbours", &topk_window_neighbours_cuda);
}

}  // namespace ops
}  // namespace sfc_plugin
