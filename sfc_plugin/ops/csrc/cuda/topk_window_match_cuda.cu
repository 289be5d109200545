// CUDA implementation of sfc::topk_window_neighbours: the kernels and their
// launch plan are in topk_window_match_kernel.cuh (shared with the tests'
// CPU emulation); this file launches them on the current stream of the
// query's device, sized to that device.
//
// Features are matched on tensor cores where the device has them (sm_80
// and later): float16 and bfloat16 ones in their type
// (TensorCoreDefaultConfig), float32 ones in 3xTF32
// (Tf32TensorCoreDefaultConfig); float64 ones, older devices, and every
// type under SFC_PLUGIN_TENSOR_CORES=0 run DefaultConfig on CUDA cores
// (cuda_kernels::op_config_name).
//
// Also registers three private ops for benchmarks and tests:
// sfc::_topk_window_kernel_configs() lists the kernel configurations,
// sfc::_topk_window_neighbours_config runs the op with one of them, and
// sfc::_topk_window_op_config(dtype, device) names the one the op runs.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>

#include "topk_window_match_kernel.cuh"

namespace sfc_plugin {
namespace ops {
namespace {

struct CudaLaunch {
  c10::cuda::CUDAStream stream;
  int64_t multiprocessors;
  int compute_major;

  template <typename... Params>
  static void allow_shared(void (*kernel)(Params...), size_t shared) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(shared)));
  }

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block,
                  size_t shared, Args... args) const {
    allow_shared(kernel, shared);
    kernel<<<grid, block, shared, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Blocks of `kernel` the whole device runs at once: its occupancy per
  // multiprocessor (registers, shared memory, threads) times their number.
  template <typename... Params>
  int64_t resident_blocks(void (*kernel)(Params...), int threads,
                          size_t shared) const {
    allow_shared(kernel, shared);
    int per_multiprocessor = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_multiprocessor, kernel, threads, shared));
    return static_cast<int64_t>(per_multiprocessor) * multiprocessors;
  }

  bool has_tensor_cores() const { return compute_major >= 8; }

  // A copy from pageable memory would synchronise the stream (the copy
  // waits for every kernel queued before it); from pinned memory it is
  // queued like a kernel. The caching host allocator keeps the pinned
  // block until the copy has run.
  at::Tensor to_device(const at::Tensor& host) const {
    return host.pin_memory().to(stream.device(), /*non_blocking=*/true);
  }
};

int device_attribute(cudaDeviceAttr attribute, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

std::tuple<at::Tensor, at::Tensor> neighbours_with_config(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys,
    const std::string& config, bool fallback) {
  const c10::cuda::CUDAGuard guard(query.device());
  const int device = query.device().index();
  return cuda_kernels::topk_window_neighbours_tiled(
      query, keys, topk, radius, temperature, unrestricted_keys, config,
      fallback,
      device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
      CudaLaunch{c10::cuda::getCurrentCUDAStream(),
                 device_attribute(cudaDevAttrMultiProcessorCount, device),
                 device_attribute(cudaDevAttrComputeCapabilityMajor, device)});
}

std::tuple<at::Tensor, at::Tensor> neighbours_config_op(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys,
    c10::string_view config) {
  return neighbours_with_config(query, keys, topk, radius, temperature,
                                unrestricted_keys, std::string(config),
                                /*fallback=*/false);
}

std::string op_config(at::ScalarType type, c10::Device device) {
  TORCH_CHECK_VALUE(device.is_cuda(), "topk_window_match: the CUDA kernel "
                    "configurations are for CUDA devices, got ", device);
  const int index =
      device.has_index() ? device.index() : c10::cuda::current_device();
  return cuda_kernels::op_config_name(
      type, device_attribute(cudaDevAttrComputeCapabilityMajor, index),
      cuda_kernels::tensor_cores_allowed());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_cuda(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys) {
  return neighbours_with_config(
      query, keys, topk, radius, temperature, unrestricted_keys,
      op_config(query.scalar_type(), query.device()), /*fallback=*/true);
}

TORCH_LIBRARY_FRAGMENT(sfc, m) {
  m.def("_topk_window_kernel_configs() -> str[]",
        [] { return cuda_kernels::kernel_config_names(); });
  m.def(
      "_topk_window_neighbours_config(Tensor query, Tensor keys, int topk, "
      "float radius, float temperature, int unrestricted_keys, str config) "
      "-> (Tensor weights, Tensor indices)");
  m.def("_topk_window_op_config(ScalarType dtype, Device device) -> str",
        &op_config);
}

TORCH_LIBRARY_IMPL(sfc, CUDA, m) {
  m.impl("topk_window_neighbours", &topk_window_neighbours_cuda);
  m.impl("_topk_window_neighbours_config", &neighbours_config_op);
}

}  // namespace ops
}  // namespace sfc_plugin
