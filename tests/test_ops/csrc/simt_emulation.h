// Runs CUDA kernels on the CPU, for tests on machines without a GPU.
//
// A launch runs its blocks one after another; each block's threads are
// real threads (std::thread), so __syncthreads and the warp operations are
// real barriers between them and a kernel that needs one it lacks can fail
// here too. Shared memory is one buffer per block. What is emulated is
// what the project's kernels use: threadIdx, blockIdx, blockDim, dynamic
// shared memory (SFC_DYNAMIC_SHARED_MEMORY), __syncthreads, __syncwarp,
// __ballot_sync and __shfl_sync over a full warp, __ffs, and warp_gather
// (every lane's registers to every lane) for emulating warp-wide
// instructions such as mma. Timing, the memory model's weaker orders and
// vector loads (float4) are not: the kernels' generic paths serve instead.
//
// Include this before a kernel header.
#pragma once

#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__CUDACC__)
#error "simt_emulation.h is for host compilers only"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

namespace simt {

constexpr unsigned kWarpSize = 32;

struct Warp {
  std::barrier<> barrier{kWarpSize};
  int votes[kWarpSize] = {};
  // Each lane's registers, for warp_gather.
  alignas(16) unsigned char registers[kWarpSize][64] = {};
};

struct Block {
  explicit Block(unsigned threads, size_t shared_bytes)
      : barrier(threads),
        warps((threads + kWarpSize - 1) / kWarpSize),
        // 16-byte aligned, as CUDA's dynamic shared memory.
        shared(new (std::align_val_t(16)) unsigned char[shared_bytes + 1]) {
    for (auto& warp : warps) warp = std::make_unique<Warp>();
  }
  ~Block() { operator delete[](shared, std::align_val_t(16)); }

  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  unsigned char* shared;
};

inline thread_local dim3 thread_index, block_index, block_dim;
inline thread_local Block* current_block = nullptr;

inline Warp& my_warp() {
  return *current_block->warps[thread_index.x / kWarpSize];
}

// Runs body() as every thread of every block of `grid` (1-D blocks).
template <typename Body>
void launch(dim3 grid, dim3 block, size_t shared_bytes, Body&& body) {
  const unsigned threads = block.x * block.y * block.z;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block state(threads, shared_bytes);
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            thread_index = dim3(t);
            block_index = dim3(bx, by, bz);
            block_dim = block;
            current_block = &state;
            body();
          });
        for (auto& thread : pool) thread.join();
      }
}

}  // namespace simt

#define threadIdx (::simt::thread_index)
#define blockIdx (::simt::block_index)
#define blockDim (::simt::block_dim)
#define SFC_DYNAMIC_SHARED_MEMORY(name) \
  unsigned char* name = ::simt::current_block->shared

inline void __syncthreads() { simt::current_block->barrier.arrive_and_wait(); }

inline void __syncwarp(unsigned = 0xffffffffu) {
  simt::my_warp().barrier.arrive_and_wait();
}

// Every lane of the warp must call it (the kernels pass the full mask).
inline unsigned __ballot_sync(unsigned, int predicate) {
  auto& warp = simt::my_warp();
  warp.votes[threadIdx.x % simt::kWarpSize] = predicate != 0;
  warp.barrier.arrive_and_wait();
  unsigned ballot = 0;
  for (unsigned lane = 0; lane < simt::kWarpSize; ++lane)
    if (warp.votes[lane]) ballot |= 1u << lane;
  // No lane may vote again before every lane has read this round.
  warp.barrier.arrive_and_wait();
  return ballot;
}

namespace simt {

// Every lane's `mine` into all[lane], on every lane of the warp (all must
// call it): what warp-wide instructions such as mma read.
template <typename T, int N>
void warp_gather(const T (&mine)[N], T (&all)[kWarpSize][N]) {
  static_assert(sizeof(mine) <= sizeof(Warp::registers[0]),
                "warp_gather: at most 64 bytes a lane");
  auto& warp = my_warp();
  std::memcpy(warp.registers[threadIdx.x % kWarpSize], mine, sizeof(mine));
  warp.barrier.arrive_and_wait();
  for (unsigned lane = 0; lane < kWarpSize; ++lane)
    std::memcpy(all[lane], warp.registers[lane], sizeof(mine));
  // No lane may write again before every lane has read this round.
  warp.barrier.arrive_and_wait();
}

}  // namespace simt

// Lane src_lane's value, on every lane of the warp (all must call it).
template <typename T>
T __shfl_sync(unsigned, T value, int src_lane) {
  T all[simt::kWarpSize][1];
  const T mine[1] = {value};
  simt::warp_gather(mine, all);
  return all[src_lane % simt::kWarpSize][0];
}

inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
