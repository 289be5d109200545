// sfc_emulation::topk_window_neighbours: the CUDA kernels of
// sfc::topk_window_neighbours, launch plan included, run on CPU tensors by
// the SIMT emulation, so that machines without a GPU test them.
#include <torch/library.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "simt_emulation.h"

// mma.sync.m16n8k16 with float32 accumulators, as the PTX ISA lays out its
// fragments: every lane's A (four registers, two 16-bit values each) and B
// (two) gathered, then each lane's four outputs summed one product at a
// time in channel order. The products of 16-bit values are exact in
// float32, so this gives what the CUDA-core kernel gives; a GPU's tensor
// cores may group the sums differently.
template <typename T>
float mma_value(uint32_t reg, int high) {
  const auto bits = static_cast<uint16_t>(high ? reg >> 16 : reg & 0xffff);
  if constexpr (std::is_same_v<T, c10::BFloat16>)
    return static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
  else
    return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

template <typename T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                  const uint32_t (&b)[2], T) {
  uint32_t all_a[simt::kWarpSize][4], all_b[simt::kWarpSize][2];
  simt::warp_gather(a, all_a);
  simt::warp_gather(b, all_b);
  // A(row, k): lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) +
  // 2 (k >= 8); B(k, col): lane col * 4 + (k % 8) / 2, register k >= 8;
  // the lower k of a pair in the low half.
  auto A = [&](int row, int k) {
    return mma_value<T>(all_a[(row % 8) * 4 + (k % 8) / 2]
                             [(row >= 8) + 2 * (k >= 8)],
                        k % 2);
  };
  auto B = [&](int k, int col) {
    return mma_value<T>(all_b[col * 4 + (k % 8) / 2][k >= 8], k % 2);
  };
  const int lane = threadIdx.x % simt::kWarpSize;
  for (int i = 0; i < 4; ++i) {
    // D(row, col): rows lane / 4 and lane / 4 + 8, columns 2 (lane % 4)
    // and the next.
    const int row = lane / 4 + (i >= 2 ? 8 : 0), col = (lane % 4) * 2 + i % 2;
    float sum = d[i];
    for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    d[i] = sum;
  }
}

// mma.sync.m16n8k8 with TF32 inputs and float32 accumulators, laid out as
// the PTX ISA lays out its fragments, summed as mma_m16n8k16 is: each
// lane's four outputs one product at a time in channel order. TF32 values
// have 11 significant bits, so the products are exact in float32.
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4],
                             const uint32_t (&b)[2]) {
  uint32_t all_a[simt::kWarpSize][4], all_b[simt::kWarpSize][2];
  simt::warp_gather(a, all_a);
  simt::warp_gather(b, all_b);
  // The hardware reads a TF32 operand's top 19 bits.
  auto tf32 = [](uint32_t bits) {
    float x;
    bits &= 0xffffe000u;
    std::memcpy(&x, &bits, sizeof(x));
    return x;
  };
  // A(row, k): lane (row % 8) * 4 + k % 4, register (row >= 8) + 2 (k >=
  // 4); B(k, col): lane col * 4 + k % 4, register k >= 4.
  auto A = [&](int row, int k) {
    return tf32(all_a[(row % 8) * 4 + k % 4][(row >= 8) + 2 * (k >= 4)]);
  };
  auto B = [&](int k, int col) {
    return tf32(all_b[col * 4 + k % 4][k >= 4]);
  };
  const int lane = threadIdx.x % simt::kWarpSize;
  for (int i = 0; i < 4; ++i) {
    // D(row, col) as for m16n8k16.
    const int row = lane / 4 + (i >= 2 ? 8 : 0), col = (lane % 4) * 2 + i % 2;
    float sum = d[i];
    for (int k = 0; k < 8; ++k) sum += A(row, k) * B(k, col);
    d[i] = sum;
  }
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: every lane's row address
// gathered (lane l's is row l % 8 of matrix l / 8), then register i of
// lane l gets bytes 4 (l % 4) to 4 (l % 4) + 3 of row l / 4 of matrix i.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  const unsigned char* mine[1] = {static_cast<const unsigned char*>(row)};
  const unsigned char* all[simt::kWarpSize][1];
  simt::warp_gather(mine, all);
  const int lane = threadIdx.x % simt::kWarpSize;
  for (int i = 0; i < 4; ++i)
    std::memcpy(&r[i], all[i * 8 + lane / 4][0] + 4 * (lane % 4),
                sizeof(r[i]));
}

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

  bool has_tensor_cores() const { return true; }

  at::Tensor to_device(const at::Tensor& host) const { return host; }
};

// An H100's shared memory per block (227 KiB opt-in).
constexpr int64_t kSharedBytes = 227 * 1024;

std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_emulated(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys,
    int64_t target_blocks, c10::string_view config, bool fallback,
    int64_t shared_bytes) {
  return sfc_plugin::ops::cuda_kernels::topk_window_neighbours_tiled(
      query, keys, topk, radius, temperature, unrestricted_keys,
      std::string(config), fallback,
      shared_bytes > 0 ? shared_bytes : kSharedBytes,
      EmulatedLaunch{target_blocks});
}

}  // namespace

TORCH_LIBRARY(sfc_emulation, m) {
  m.def(
      "topk_window_neighbours(Tensor query, Tensor keys, int topk, "
      "float radius, float temperature, int unrestricted_keys, "
      "int target_blocks, str config='', bool fallback=False, "
      "int shared_bytes=0) -> (Tensor, Tensor)");
  // A block's shared memory in a configuration (empty: the default) at a
  // number of kept neighbours.
  m.def("config_shared_bytes(str config, int stored_topk) -> int",
        [](c10::string_view config, int64_t stored_topk) {
          return sfc_plugin::ops::cuda_kernels::config_shared_bytes(
              std::string(config), stored_topk);
        });
  // The launch plan's groups before its caps (launch_tiled).
  m.def("planned_groups(int tiles, int resident, bool of_chunks) -> int",
        &sfc_plugin::ops::cuda_kernels::planned_groups);
  m.def("kernel_configs() -> str[]", [] {
    return sfc_plugin::ops::cuda_kernels::kernel_config_names();
  });
  // What the CUDA op runs for `dtype` features on an sm_{compute_major}x
  // device, SFC_PLUGIN_TENSOR_CORES as it is now.
  m.def("op_config(ScalarType dtype, int compute_major) -> str",
        [](c10::ScalarType dtype, int64_t compute_major) {
          namespace kernels = sfc_plugin::ops::cuda_kernels;
          return kernels::op_config_name(dtype, compute_major,
                                         kernels::tensor_cores_allowed());
        });
}

TORCH_LIBRARY_IMPL(sfc_emulation, CPU, m) {
  m.impl("topk_window_neighbours", &topk_window_neighbours_emulated);
}
