// sfc_emulation::topk_window_neighbours: the CUDA kernels of
// sfc::topk_window_neighbours, launch plan included, run on CPU tensors by
// the SIMT emulation, so that machines without a GPU test them.
#include <torch/library.h>

#include "simt_emulation.h"
// The kernels as the CUDA build compiles them.
#include "cuda/topk_window_match_kernel.cuh"

namespace {

struct EmulatedLaunch {
  // Stands for the device's capacity: the frames are split into groups
  // until a launch has this many blocks.
  int64_t target_blocks;

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block,
                  size_t shared, Args... args) const {
    simt::launch(grid, block, shared, [&] { kernel(args...); });
  }

  template <typename... Params>
  int64_t resident_blocks(void (*)(Params...), int, size_t) const {
    return target_blocks;
  }
};

// An H100's shared memory per block (227 KiB opt-in).
constexpr int64_t kSharedBytes = 227 * 1024;

std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_emulated(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys,
    int64_t target_blocks, c10::string_view config) {
  return sfc_plugin::ops::cuda_kernels::topk_window_neighbours_tiled(
      query, keys, topk, radius, temperature, unrestricted_keys,
      std::string(config), kSharedBytes, EmulatedLaunch{target_blocks});
}

}  // namespace

TORCH_LIBRARY(sfc_emulation, m) {
  m.def(
      "topk_window_neighbours(Tensor query, Tensor keys, int topk, "
      "float radius, float temperature, int unrestricted_keys, "
      "int target_blocks, str config='') -> (Tensor, Tensor)");
  m.def("kernel_configs() -> str[]", [] {
    return sfc_plugin::ops::cuda_kernels::kernel_config_names();
  });
}

TORCH_LIBRARY_IMPL(sfc_emulation, CPU, m) {
  m.impl("topk_window_neighbours", &topk_window_neighbours_emulated);
}
