// The CUDA kernels of sfc::topk_window_neighbours and their launch plan.
//
// Kept apart from the op's registration (topk_window_match_cuda.cu) so that
// the tests can also compile them for the CPU with a SIMT emulation
// (tests/test_ops/csrc/simt_emulation.h): the launch plan takes the launcher
// as a parameter, and nothing here names the CUDA runtime.
//
// One block serves a tile of query positions (TileShape: its rows and
// columns) over one group of its keys: consecutive key frames, or a share
// of every frame's key chunks (groups_of_chunks_asked). It lists the keys
// those queries may see in increasing flat index (an unrestricted frame
// whole; in a restricted frame, row by row, the union of the tile's
// windows, packed without gaps) and scores them in chunks of keys: on CUDA
// cores (TileConfig, score_chunk_cuda_cores) kChunkChannels channels at a
// time from shared-memory tiles stored channel-major, each thread
// accumulating a micro-tile of queries × keys in registers (16-byte loads,
// four values each); or, for float16/bfloat16 features, on tensor cores
// (TensorCoreConfig, score_chunk_tensor_cores), and float32 features on
// tensor cores too, each value split into two TF32 parts
// (Tf32TensorCoreConfig, score_chunk_split_tf32). The scores are then
// offered to each query's running top-k, kept sorted in shared memory, if
// the key is in that query's own window. A score must beat the current
// k-th strictly, so among equal affinities the lower index wins, as on
// CPU. On CUDA cores every score is the same sequence of FMAs over the
// channels, whichever configuration, slot or thread computes it, so equal
// keys tie exactly and every CUDA-core configuration returns the same
// neighbours; on tensor cores (either kind) equal keys still tie exactly.
//
// The tiles alone give too few blocks to fill a GPU (480p: 210 tiles of
// 4 × 8), so the keys are split into groups until the device holds a
// full wave of blocks, each block keeping its group's top-k;
// merge_groups_kernel then merges the groups' sorted lists (on equal
// affinities the lower index first) and takes the softmax. With one group
// the first kernel writes the softmax itself.
//
// Accumulation is in float for float/half/bfloat16 features and in double
// for double, and the softmax weights are written in that type
// (neighbour_weights_type). Non-finite affinities below +inf are never
// selected; unlike the CPU kernel there is no host-side check (it would
// stall the stream).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "../topk_window_match.h"

#ifndef SFC_DYNAMIC_SHARED_MEMORY
#define SFC_DYNAMIC_SHARED_MEMORY(name) \
  extern __shared__ __align__(16) unsigned char name[]
#endif

namespace sfc_plugin {
namespace ops {
namespace cuda_kernels {

// Channels per shared-memory slice of the queries and keys.
constexpr int kChunkChannels = 32;
// Key rows per batch of the union's table in shared memory.
constexpr int kMaxUnionRows = 128;
// Row padding of the channel-major tiles: a multiple of 4 keeps every row
// 16-byte aligned for the vector loads, and the transposing stores then fall
// on 8 banks instead of 1.
constexpr int kPad = 4;
constexpr int kMergeThreads = 128;
// Top-k state per query lives in shared memory; larger k is clamped to the
// number of keys a query can see, and beyond this the CPU kernel serves.
constexpr int64_t kMaxTopk = 256;
// Groups per batch item (the merge keeps one list head per group).
constexpr int64_t kMaxGroups = 64;
// Row tiles and batch items × groups go in the launch grid's y and z.
constexpr int64_t kMaxGridYZ = 65535;

// What every configuration of the matching kernel has: a tile of
// TileRows × TileCols query positions scored against ChunkKeys keys at a
// time (larger tiles load each key for more queries, less memory traffic,
// but their windows' union holds more keys outside any one window, more
// scores computed), and MinBlocks, the blocks a multiprocessor must be
// able to hold at once, which caps the registers a thread may use. The
// name says them as "{rows}x{cols}-keys{chunk}-{scoring}-min{blocks}".
template <int TileRows, int TileCols, int ChunkKeys, int MinBlocks>
struct TileShape {
  static constexpr int kTileRows = TileRows;
  static constexpr int kTileCols = TileCols;
  static constexpr int kTileQueries = TileRows * TileCols;
  static constexpr int kChunkKeys = ChunkKeys;
  static constexpr int kMinBlocks = MinBlocks;
  // Float32 features split into two TF32 parts (Tf32TensorCoreConfig).
  static constexpr bool kSplitTf32 = false;

  static_assert(ChunkKeys % 32 == 0,
                "a chunk is offered one warp's 32 keys at a time");

  static std::string shape_name(const std::string& scoring) {
    return std::to_string(TileRows) + "x" + std::to_string(TileCols) +
           "-keys" + std::to_string(ChunkKeys) + "-" + scoring + "-min" +
           std::to_string(MinBlocks);
  }
};

// Scores on CUDA cores, each thread computing MicroQueries × MicroKeys of
// them. Prefetch: each thread loads the next channel slice into registers
// while the block computes the current one.
template <int TileRows, int TileCols, int ChunkKeys, int MicroQueries,
          int MicroKeys, bool Prefetch, int MinBlocks>
struct TileConfig : TileShape<TileRows, TileCols, ChunkKeys, MinBlocks> {
  using Shape = TileShape<TileRows, TileCols, ChunkKeys, MinBlocks>;
  static constexpr bool kTensorCores = false;
  static constexpr int kMicroQueries = MicroQueries;
  static constexpr int kMicroKeys = MicroKeys;
  static constexpr bool kPrefetch = Prefetch;
  // Channels per shared-memory slice (SlicePieces).
  static constexpr int kSliceChannels = kChunkChannels;
  // Threads along the tile's queries and along the chunk's keys.
  static constexpr int kQueryThreads = Shape::kTileQueries / MicroQueries;
  static constexpr int kKeyThreads = ChunkKeys / MicroKeys;
  static constexpr int kThreads = kQueryThreads * kKeyThreads;

  static_assert(MicroQueries % 4 == 0 && MicroKeys % 4 == 0,
                "micro-tiles are read four values at a time");
  static_assert(Shape::kTileQueries % MicroQueries == 0 &&
                    ChunkKeys % MicroKeys == 0,
                "micro-tiles must divide the tile and the chunk");
  static_assert(kThreads % 32 == 0 && kThreads <= 1024,
                "a block is whole warps, at most 1024 threads");

  static std::string name() {
    return Shape::shape_name("micro" + std::to_string(MicroQueries) + "x" +
                             std::to_string(MicroKeys) +
                             (Prefetch ? "-prefetch" : ""));
  }
};

// What the tensor-core configurations share: each warp computes a
// 16-query × 32-key block of a chunk's scores with mma.sync (float32
// accumulation; sm_80 and later), KStep channels per instruction, from
// position-major tiles of SliceChannels channels per shared-memory slice
// (more: fewer barriers and more loads in flight per slice). Prefetch: the
// next slice is loaded into registers while the block computes the
// current one. A score's channel sums are grouped as the tensor cores add
// them rather than one FMA at a time, so near-ties may order differently
// from the CUDA-core kernel; equal keys still tie exactly (a score depends
// only on its query's and key's values).
template <int TileRows, int TileCols, int ChunkKeys, int SliceChannels,
          int MinBlocks, bool Prefetch, int KStep>
struct MmaTileConfig : TileShape<TileRows, TileCols, ChunkKeys, MinBlocks> {
  using Shape = TileShape<TileRows, TileCols, ChunkKeys, MinBlocks>;
  static constexpr bool kTensorCores = true;
  static constexpr int kSliceChannels = SliceChannels;
  static constexpr bool kPrefetch = Prefetch;
  // Warps along the tile's queries (16 each) and the chunk's keys (32).
  static constexpr int kQueryWarps = Shape::kTileQueries / 16;
  static constexpr int kKeyWarps = ChunkKeys / 32;
  static constexpr int kThreads = 32 * kQueryWarps * kKeyWarps;

  static_assert(Shape::kTileQueries % 16 == 0,
                "tiles are whole 16-query warp blocks");
  static_assert(SliceChannels % KStep == 0,
                "slices are whole steps of the instruction");
  static_assert(kThreads <= 1024, "at most 1024 threads");

  static std::string mma_name(const std::string& scoring) {
    return Shape::shape_name(scoring + "-c" + std::to_string(SliceChannels) +
                             (Prefetch ? "-prefetch" : ""));
  }
};

// Scores float16 and bfloat16 features on tensor cores
// (mma.sync.m16n8k16), from tiles of their 16-bit values as they are.
template <int TileRows, int TileCols, int ChunkKeys, int SliceChannels,
          int MinBlocks, bool Prefetch = false>
struct TensorCoreConfig : MmaTileConfig<TileRows, TileCols, ChunkKeys,
                                        SliceChannels, MinBlocks, Prefetch,
                                        16> {
  static std::string name() {
    return TensorCoreConfig::mma_name("tensorcores");
  }
};

// Scores float32 features on tensor cores with float32 accuracy ("3xTF32"):
// each value x is split into big = tf32(x), its top 11 significant bits,
// and small = tf32(x - big), the next 11, and q·k is summed from
// q_small·k_big + q_big·k_small + q_big·k_big by mma.sync.m16n8k8 with TF32
// inputs. The term dropped, q_small·k_small, and small's rounding are
// about 2^-21 of each product, against the 2^-24 of one FMA. The tiles keep
// both parts, each value split once as its tile is filled. (Keeping the
// float32 values alone and splitting them as each warp reads its fragments
// halves the shared memory and its traffic, but was no faster on an H200:
// BENCHMARKS.md, "GPU check on an H200, third run".)
template <int TileRows, int TileCols, int ChunkKeys, int SliceChannels,
          int MinBlocks, bool Prefetch = false>
struct Tf32TensorCoreConfig : MmaTileConfig<TileRows, TileCols, ChunkKeys,
                                            SliceChannels, MinBlocks,
                                            Prefetch, 8> {
  static constexpr bool kSplitTf32 = true;
  static std::string name() {
    return Tf32TensorCoreConfig::mma_name("tf32x3");
  }
};

// What the op runs (op_config_name): on CUDA cores, for every feature type
// on any device; on tensor cores (sm_80 and later, unless
// SFC_PLUGIN_TENSOR_CORES=0), for float16/bfloat16 features, and for
// float32 ones in 3xTF32. Each is the fastest of its kind on an H200 over
// the four cases timed (both DAVIS settings, C = 256 and 1280: the
// geometric mean of its speed-ups; BENCHMARKS.md, "GPU check on an H200,
// second run"); every CUDA-core configuration returns the same neighbours.
using DefaultConfig = TileConfig<4, 8, 64, 4, 4, true, 3>;
using TensorCoreDefaultConfig = TensorCoreConfig<4, 8, 64, 64, 4, true>;
using Tf32TensorCoreDefaultConfig = Tf32TensorCoreConfig<4, 8, 64, 32, 3, true>;
// The others that sfc::_topk_window_neighbours_config offers, so that a
// benchmark can time them against the defaults on one GPU in one run:
// 3xTF32 ones for float32 features, 16-bit tensor-core ones for float16
// and bfloat16 (only those types, to bound the build). The
// 3xTF32 ones without prefetch, slower than those with it on the H200 and
// the H100 (1.2-1.6× the CUDA-core default against 2.4×), were dropped; so
// were the CUDA-core ones that lost to the default on every case on the
// H100 (0.58-0.90× it: 4x8-micro4x4 without prefetch, the 4x8-keys128 and
// 8x8-keys128 tiles) and the 16-bit tensor-core ones without prefetch (up
// to 1.6× slower than those with it at C = 1280, never faster):
// BENCHMARKS.md, "GPU check on an H100". And the four 3xTF32 ones that
// split in registers: 0.88-1.02× the speed of the 3xTF32 default at
// C = 1280 and 0.81-0.97× at C = 256 on an H200 (BENCHMARKS.md, "GPU check
// on an H200, third run"). And the last CUDA-core alternatives, the 8x8
// tile (micro 8x4) and the 8x16 one (keys 128, micro 8x8): 0.74-0.93× the
// default in seven of the eight cases on an H200, 1.02× in the eighth, and
// 0.85-1.05× on the H100 (BENCHMARKS.md, "GPU check on an H200, fourth
// run"); the CUDA-core path is what sm_70/75 GPUs and float64 run, and
// the default's tiling is the one timed best.
using AlternativeConfigs =
    std::tuple<TensorCoreDefaultConfig,
               TensorCoreConfig<8, 8, 64, 64, 2, true>,
               Tf32TensorCoreDefaultConfig,
               Tf32TensorCoreConfig<8, 8, 64, 32, 2, true>>;

// Whether SFC_PLUGIN_TENSOR_CORES lets the op use tensor cores: unset or
// 1, yes; 0, no (every type on CUDA cores). Read at every call, so that a
// process may switch it.
inline bool tensor_cores_allowed() {
  const char* value = std::getenv("SFC_PLUGIN_TENSOR_CORES");
  const std::string text = value ? value : "";
  TORCH_CHECK_VALUE(text.empty() || text == "0" || text == "1",
                    "SFC_PLUGIN_TENSOR_CORES must be 0 or 1, got '", text,
                    "'");
  return text != "0";
}

// SFC_PLUGIN_FRAME_GROUPS: unset, empty or 0, the launch plan's number of
// groups (launch_tiled); N, N groups (at most the frames where groups are
// of frames, see groups_of_chunks_asked), so that a
// benchmark can time the plan against the alternatives on one GPU (on an
// H200 the plan's 2 groups at 480p made 420 blocks for 396 places, a
// second wave of 24: BENCHMARKS.md, "GPU check on an H200, third run").
// Read at every call.
inline int64_t frame_groups_asked() {
  const char* value = std::getenv("SFC_PLUGIN_FRAME_GROUPS");
  const std::string text = value ? value : "";
  if (text.empty()) return 0;
  const bool digits = text.size() <= 2 &&
                      std::all_of(text.begin(), text.end(), [](char c) {
                        return c >= '0' && c <= '9';
                      });
  const int64_t groups = digits ? std::stoll(text) : -1;
  TORCH_CHECK_VALUE(groups >= 0 && groups <= kMaxGroups,
                    "SFC_PLUGIN_FRAME_GROUPS must be an integer from 0 (the "
                    "launch plan's) to ", kMaxGroups, ", got '", text, "'");
  return groups;
}

// SFC_PLUGIN_GROUP_BY: how the keys of a query tile are split into groups.
// Unset, empty or "frames": group g holds the g-th share of the frames,
// whole (the first group the unrestricted frame, the longest). "chunks":
// group g takes the g-th share of every frame's key chunks, so that the
// groups' blocks are equally long and, running side by side, read the same
// frame at once: one frame's features in the L2 cache where groups of
// frames read one frame each (at 480p and C = 1280, 33 MB a frame in
// float32 against an H200's 60 MB of L2; Nsight Compute found the float32
// kernel's L2 hit rate at 34%: BENCHMARKS.md, "GPU check on an H200,
// fourth run"). The neighbours are the same; benchmarks/cuda_frame_groups.py
// times one against the other. Read at every call.
inline bool groups_of_chunks_asked() {
  const char* value = std::getenv("SFC_PLUGIN_GROUP_BY");
  const std::string text = value ? value : "";
  TORCH_CHECK_VALUE(text.empty() || text == "frames" || text == "chunks",
                    "SFC_PLUGIN_GROUP_BY must be 'frames' or 'chunks', got '",
                    text, "'");
  return text == "chunks";
}

// The configuration the op runs for features of `type` on a device of
// compute capability `compute_major`.x: tensor cores where the device has
// them (mma.sync in bfloat16 and TF32 needs sm_80) and `tensor_cores` (see
// tensor_cores_allowed); float64 features always on CUDA cores.
inline std::string op_config_name(at::ScalarType type, int64_t compute_major,
                                  bool tensor_cores) {
  if (tensor_cores && compute_major >= 8) {
    if (type == at::kHalf || type == at::kBFloat16)
      return TensorCoreDefaultConfig::name();
    if (type == at::kFloat) return Tf32TensorCoreDefaultConfig::name();
  }
  return DefaultConfig::name();
}

// The configurations' names, the default first.
inline std::vector<std::string> kernel_config_names() {
  std::vector<std::string> names{DefaultConfig::name()};
  std::apply([&](auto... config) {
    (names.push_back(decltype(config)::name()), ...);
  }, AlternativeConfigs{});
  return names;
}

// Row padding of the tensor cores' position-major tiles, in 16-bit values:
// rows 16 bytes more than a multiple of 64 bytes apart (80, 144, 272) put
// the eight rows a fragment load reads on distinct banks, and keep every
// row 16-byte aligned.
constexpr int kMmaPad = 8;
// And in float32 values (3xTF32): rows 4 floats longer than a multiple of
// 8 likewise.
constexpr int kTf32Pad = 4;

// A channel slice of the tile's queries and of the chunk's keys. CUDA
// cores: channel-major in the accumulation type (row c holds channel c of
// every query, or key). Tensor cores: position-major (row q holds the
// slice's channels of query q), the features' 16-bit values as they are,
// or for 3xTF32 both TF32 parts of each float32 value.
template <typename Config, typename acc_t,
          bool tensor_cores = Config::kTensorCores,
          bool split_tf32 = Config::kSplitTf32>
struct ChannelTiles {
  alignas(16) acc_t queries[kChunkChannels][Config::kTileQueries + kPad];
  alignas(16) acc_t keys[kChunkChannels][Config::kChunkKeys + kPad];
};

template <typename Config, typename T, int Pad>
struct PositionMajorTiles {
  alignas(16) T queries[Config::kTileQueries][Config::kSliceChannels + Pad];
  alignas(16) T keys[Config::kChunkKeys][Config::kSliceChannels + Pad];
};

template <typename Config, typename acc_t>
struct ChannelTiles<Config, acc_t, true, false>
    : PositionMajorTiles<Config, uint16_t, kMmaPad> {};

template <typename Config, typename acc_t>
struct ChannelTiles<Config, acc_t, true, true> {
  alignas(16) float queries_big[Config::kTileQueries]
                               [Config::kSliceChannels + kTf32Pad];
  alignas(16) float queries_small[Config::kTileQueries]
                                 [Config::kSliceChannels + kTf32Pad];
  alignas(16) float keys_big[Config::kChunkKeys]
                            [Config::kSliceChannels + kTf32Pad];
  alignas(16) float keys_small[Config::kChunkKeys]
                              [Config::kSliceChannels + kTf32Pad];
};

template <typename Config, typename acc_t>
struct SharedLayout {
  static constexpr int kTileQueries = Config::kTileQueries;
  static constexpr int kChunkKeys = Config::kChunkKeys;
  // The channel slice's tiles while a chunk's scores are computed, then the
  // scores while they are offered: never both at once.
  union {
    ChannelTiles<Config, acc_t> tiles;
    alignas(16) acc_t scores[kTileQueries][kChunkKeys];
  };
  // Where each query's features start in `query` (-1: outside the map).
  int64_t query_offset[kTileQueries];
  // The chunk's keys: flat index, row (-1: no window) and column.
  int64_t key_flat[kChunkKeys];
  int key_y[kChunkKeys];
  int key_x[kChunkKeys];
  // The union of the tile's windows on a batch of key rows: each row's y,
  // first x and offset in the batch's key list (one more: the list's end).
  int row_y[kMaxUnionRows];
  int row_x[kMaxUnionRows];
  int row_start[kMaxUnionRows + 1];
  int num_rows;
  int count[kTileQueries];
};

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) {
  return a < b ? a : b;
}

__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) {
  return a > b ? a : b;
}

// Four consecutive values of a 16-byte aligned shared-memory row.
template <typename T>
__device__ __forceinline__ void load4(const T* p, T* v) {
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = p[i];
}

template <typename T>
__device__ __forceinline__ void store4(T* p, const T* v) {
#pragma unroll
  for (int i = 0; i < 4; ++i) p[i] = v[i];
}

#if defined(__CUDACC__)
template <>
__device__ __forceinline__ void load4<float>(const float* p, float* v) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x;
  v[1] = f.y;
  v[2] = f.z;
  v[3] = f.w;
}

template <>
__device__ __forceinline__ void store4<float>(float* p, const float* v) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
#endif

// Slot (query of the tile, or key of the chunk) of value i of a thread's
// micro-tile, m its index along that side among `threads` threads. The
// micro-tile is groups of four consecutive slots, its groups threads * 4
// apart, so that one group's 16-byte loads by consecutive threads cover a
// contiguous span of shared memory (no bank conflicts).
template <int threads>
__device__ __forceinline__ int micro_slot(int m, int i) {
  return (i / 4) * (threads * 4) + m * 4 + i % 4;
}

// Registers holding a 16-byte piece of a slice: 8 channels of 16-bit
// features, 4 of float32 or 2 of float64.
template <typename T>
struct Piece {
  static constexpr int kChannels = 16 / sizeof(T);
  alignas(16) T values[kChannels];
};

// A chunk's loop over its channel slices, the same for every way of
// scoring: the block fills the slice's tiles, kVectors pieces of kThreads
// at a time (load(i, ch) reads piece v = tid + i * kThreads of the slice
// at channel ch from global memory into Registers, store(v, registers)
// puts it in the tiles), waits, runs compute(), and waits again before the
// tiles are refilled. With Prefetch the next slice's loads are issued
// right after the first barrier, into registers, so they are in flight
// while the block computes.
template <int kThreads, int kVectors, bool Prefetch, typename Registers,
          typename Load, typename Store, typename Compute>
__device__ __forceinline__ void for_each_slice(int64_t channels, int slice,
                                               Load&& load, Store&& store,
                                               Compute&& compute) {
  constexpr int kLoads = (kVectors + kThreads - 1) / kThreads;
  const int tid = threadIdx.x;
#if defined(__CUDA_ARCH__)
  // Lets the compiler tell, for each staged piece, which part of the slice
  // (which branch of `load`) it is: pieces of one kind stay in registers.
  __builtin_assume(tid < kThreads);
#endif
  Registers staged[Prefetch ? kLoads : 1];
  auto stage = [&](int64_t ch) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int v = tid + i * kThreads;
      if (v < kVectors) staged[i] = load(i, ch);
    }
  };
  if constexpr (Prefetch) stage(0);
  for (int64_t ch = 0; ch < channels; ch += slice) {
    if constexpr (Prefetch) {
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int v = tid + i * kThreads;
        if (v < kVectors) store(v, staged[i]);
      }
      __syncthreads();
      // Into registers: the tiles are rewritten after the barrier below.
      if (ch + slice < channels) stage(ch + slice);
    } else {
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int v = tid + i * kThreads;
        if (v < kVectors) store(v, load(i, ch));
      }
      __syncthreads();
    }
    compute();
    __syncthreads();
  }
}

// 16 bytes, 16-byte aligned at both ends.
template <typename T>
__device__ __forceinline__ void copy16(T* dst, const T* src) {
#if defined(__CUDACC__)
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#else
  std::memcpy(dst, src, 16);
#endif
}

// 16 bytes of read-only global memory (the features), 16-byte aligned at
// both ends.
template <typename T>
__device__ __forceinline__ void read16(T* dst, const T* src) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(dst) = __ldg(reinterpret_cast<const uint4*>(src));
#else
  std::memcpy(dst, src, 16);
#endif
}

// Where a thread's pieces of a chunk's slices come from, whichever the
// scoring (T: the features' type, or uint16_t for their bits on tensor
// cores). Piece v of a slice is Piece<T>::kChannels channels of row v /
// (slice / kChannels), the tile's queries first, then the chunk's first nk
// keys; a thread's piece i is v = tid + i * kThreads, of the same row in
// every slice. So each piece's source (its row's features, from its first
// channel in a slice) is found once per chunk, and a slice's piece is then
// one 16-byte load where every position's channels start 16-byte aligned and
// the slice is whole, else value by value with channels past C read as zeros
// (a 16-bit type's zero bits are +0: they add nothing). A row outside the
// map or past nk reads the tile's first query instead, which is always in
// the map: its scores are never offered, and so every piece is a load, with
// no branch and no zeros to write. (Looking the row up at every slice took
// about 30 instructions a piece, more than the warp's mma and fragment loads
// of the slice; on CUDA cores, whose pieces were single values, it spilled:
// BENCHMARKS.md, "Instructions per slice".)
template <typename Config, typename T>
struct SlicePieces {
  static constexpr int kChannels = Piece<T>::kChannels;
  static constexpr int kRowPieces = Config::kSliceChannels / kChannels;
  static constexpr int kPieces =
      (Config::kTileQueries + Config::kChunkKeys) * kRowPieces;
  static constexpr int kLoads =
      (kPieces + Config::kThreads - 1) / Config::kThreads;
  static_assert(Config::kSliceChannels % kChannels == 0,
                "slices are whole pieces");

  const T* source[kLoads];
  int64_t channels;
  // Every slice is whole and every position's channels start 16-byte
  // aligned, so that load_whole serves every slice.
  bool whole_slices;

  template <typename Layout>
  __device__ __forceinline__ SlicePieces(const Layout& smem, const T* query,
                                         const T* batch_keys,
                                         int64_t channels, int64_t nk)
      : channels(channels),
        whole_slices(channels % Config::kSliceChannels == 0 &&
                     (reinterpret_cast<uintptr_t>(query) |
                      reinterpret_cast<uintptr_t>(batch_keys)) % 16 == 0) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int v = threadIdx.x + i * Config::kThreads;
      const int row = v / kRowPieces, k = row - Config::kTileQueries;
      const bool is_query = row < Config::kTileQueries;
      const int64_t offset =
          v >= kPieces ? -1
          : is_query   ? smem.query_offset[row]
                       : (k < nk ? smem.key_flat[k] * channels : -1);
      source[i] = (offset >= 0 ? (is_query ? query : batch_keys) + offset
                               : query + smem.query_offset[0]) +
                  column(v);
    }
  }

  // The first channel of piece v in its slice.
  static __device__ __forceinline__ int column(int v) {
    return (v % kRowPieces) * kChannels;
  }

  // The thread's piece i of the slice starting at channel ch, where
  // whole_slices: one 16-byte load.
  __device__ __forceinline__ Piece<T> load_whole(int i, int64_t ch) const {
    Piece<T> piece;
    read16(piece.values, source[i] + ch);
    return piece;
  }

  // The same for any slice: value by value, channels past C read as zeros.
  __device__ __forceinline__ Piece<T> load(int i, int64_t ch) const {
    Piece<T> piece{};
    const T* src = source[i];
    const int64_t first = ch + column(threadIdx.x + i * Config::kThreads);
    for (int j = 0; j < kChannels; ++j)
      if (first + j < channels) piece.values[j] = src[ch + j];
    return piece;
  }
};

// for_each_slice with the tiles' pieces read from `pieces`: the loop is
// compiled twice, so that where every slice is whole and aligned (as at
// C = 256 or 1280) each piece is one load, not a branch between two ways
// of reading it.
template <typename Config, typename T, typename Store, typename Compute>
__device__ __forceinline__ void for_each_piece_source(
    const SlicePieces<Config, T>& pieces, int64_t channels, Store&& store,
    Compute&& compute) {
  auto run = [&](auto load) {
    for_each_slice<Config::kThreads, SlicePieces<Config, T>::kPieces,
                   Config::kPrefetch, Piece<T>>(
        channels, Config::kSliceChannels, load, store, compute);
  };
  if (pieces.whole_slices)
    run([&](int i, int64_t ch) { return pieces.load_whole(i, ch); });
  else
    run([&](int i, int64_t ch) { return pieces.load(i, ch); });
}

// The scores of the tile's queries against the chunk's first nk keys
// (smem.key_flat), on CUDA cores, into smem.scores; ends at a barrier.
// Each score is one FMA per channel in channel order.
template <typename Config, typename scalar_t, typename acc_t>
__device__ __forceinline__ void score_chunk_cuda_cores(
    SharedLayout<Config, acc_t>& smem, const scalar_t* __restrict__ query,
    const scalar_t* __restrict__ batch_keys, int64_t channels, int64_t nk) {
  constexpr int kMicroQueries = Config::kMicroQueries;
  constexpr int kMicroKeys = Config::kMicroKeys;
  const int tid = threadIdx.x;
  // Thread -> micro-tile of queries along mq, keys along mk.
  const int mq = tid / Config::kKeyThreads;
  const int mk = tid % Config::kKeyThreads;

  // The slice's pieces (SlicePieces: four or more consecutive channels of
  // a query or key) go down the columns of the channel-major tiles, each
  // value converted to acc_t.
  using Pieces = SlicePieces<Config, scalar_t>;
  const Pieces pieces(smem, query, batch_keys, channels, nk);
  auto store = [&](int v, const Piece<scalar_t>& piece) {
    const int row = v / Pieces::kRowPieces, c = Pieces::column(v);
#pragma unroll
    for (int m = 0; m < Pieces::kChannels; ++m) {
      const acc_t value = static_cast<acc_t>(piece.values[m]);
      if (row < Config::kTileQueries)
        smem.tiles.queries[c + m][row] = value;
      else
        smem.tiles.keys[c + m][row - Config::kTileQueries] = value;
    }
  };

  acc_t acc[kMicroQueries][kMicroKeys];
#pragma unroll
  for (int i = 0; i < kMicroQueries; ++i)
#pragma unroll
    for (int j = 0; j < kMicroKeys; ++j) acc[i][j] = 0;
  auto compute = [&] {
#pragma unroll 4
    for (int c = 0; c < kChunkChannels; ++c) {
      acc_t qv[kMicroQueries], kv[kMicroKeys];
#pragma unroll
      for (int i = 0; i < kMicroQueries; i += 4)
        load4(&smem.tiles.queries[c][micro_slot<Config::kQueryThreads>(mq, i)],
              qv + i);
#pragma unroll
      for (int j = 0; j < kMicroKeys; j += 4)
        load4(&smem.tiles.keys[c][micro_slot<Config::kKeyThreads>(mk, j)],
              kv + j);
#pragma unroll
      for (int i = 0; i < kMicroQueries; ++i)
#pragma unroll
        for (int j = 0; j < kMicroKeys; ++j) acc[i][j] += qv[i] * kv[j];
    }
  };
  for_each_piece_source(pieces, channels, store, compute);
  // The scores take the tiles' place: every thread is past the last
  // slice's barrier.
#pragma unroll
  for (int i = 0; i < kMicroQueries; ++i)
#pragma unroll
    for (int j = 0; j < kMicroKeys; j += 4)
      store4(&smem.scores[micro_slot<Config::kQueryThreads>(mq, i)]
                         [micro_slot<Config::kKeyThreads>(mk, j)],
             &acc[i][j]);
  __syncthreads();
}

#if defined(__CUDACC__)
// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8 × 16-byte matrices of
// shared memory, lane l giving the address of row l % 8 of matrix l / 8;
// register i of lane l receives bytes 4 (l % 4) to 4 (l % 4) + 3 of row
// l / 4 of matrix i, the layout of an mma operand's fragments (two 16-bit
// values, or one TF32). The tests' CPU emulation provides its own before
// including this header.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4],
                                            const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto address =
      static_cast<unsigned>(__cvta_generic_to_shared(row));
  // "memory": never moved across the barrier after the tiles are filled.
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(address)
      : "memory");
#elif defined(__CUDA_ARCH__)
  // The host refuses tensor-core configurations below sm_80.
  __trap();
#endif
}
#endif

// The row a lane hands ldmatrix_x4 for an mma's operand, from a
// position-major tile of T (a row: one query, or key; its values: the
// slice's channels), from channel k0 of the slice; 16 bytes are kBlock
// values. a_fragment_row: A of queries m0 + [0, 16), whose registers
// a0..a3 are the matrices at (m0, k0), (m0 + 8, k0), (m0, k0 + kBlock) and
// (m0 + 8, k0 + kBlock). b_fragment_row: B of keys n0 + [0, 8) and of keys
// n0 + [8, 16), b0 and b1 of each, the matrices at (n0, k0),
// (n0, k0 + kBlock), (n0 + 8, k0) and (n0 + 8, k0 + kBlock).
template <typename T, int Pitch>
__device__ __forceinline__ const T* a_fragment_row(const T (*tile)[Pitch],
                                                   int m0, int k0,
                                                   int lane) {
  constexpr int kBlock = 16 / sizeof(T);
  return &tile[m0 + (lane / 8) % 2 * 8 + lane % 8][k0 + lane / 16 * kBlock];
}

template <typename T, int Pitch>
__device__ __forceinline__ const T* b_fragment_row(const T (*tile)[Pitch],
                                                   int n0, int k0,
                                                   int lane) {
  constexpr int kBlock = 16 / sizeof(T);
  return &tile[n0 + lane / 16 * 8 + lane % 8][k0 + (lane / 8) % 2 * kBlock];
}

#if defined(__CUDACC__)
// d += a · b for one 16 × 8 × 16 block (PTX fragment layouts of
// mma.m16n8k16 with .f16/.bf16 inputs, ptx_type, and .f32 accumulators),
// in a function with d, a and b as below. The tests' CPU emulation
// provides its own mma_m16n8k16 before including this header.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define SFC_MMA_M16N8K16(ptx_type)                                         \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." ptx_type          \
               "." ptx_type ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "   \
               "{%8, %9}, {%0, %1, %2, %3};\n"                             \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])            \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]),    \
                 "r"(b[1]))
#elif defined(__CUDA_ARCH__)
// The host refuses tensor-core configurations below sm_80.
#define SFC_MMA_M16N8K16(ptx_type) __trap()
#else
#define SFC_MMA_M16N8K16(ptx_type)
#endif

__device__ __forceinline__ void mma_m16n8k16(float (&d)[4],
                                             const uint32_t (&a)[4],
                                             const uint32_t (&b)[2],
                                             c10::BFloat16) {
  SFC_MMA_M16N8K16("bf16");
}

__device__ __forceinline__ void mma_m16n8k16(float (&d)[4],
                                             const uint32_t (&a)[4],
                                             const uint32_t (&b)[2],
                                             c10::Half) {
  SFC_MMA_M16N8K16("f16");
}
#undef SFC_MMA_M16N8K16
#endif

// A warp's 16 × 32 block of scores from its four m16n8 accumulator
// fragments (rows lane / 4 and lane / 4 + 8, columns 2 (lane % 4) + {0, 1}
// of each 8 columns) into smem.scores, rows from m0 and columns from n0;
// ends at a barrier.
template <typename Config>
__device__ __forceinline__ void store_mma_scores(
    SharedLayout<Config, float>& smem, const float (&acc)[4][4], int m0,
    int n0) {
  const int lane = threadIdx.x % 32;
  const int row = m0 + lane / 4, col = n0 + (lane % 4) * 2;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    float* upper = &smem.scores[row][col + nt * 8];
    float* lower = &smem.scores[row + 8][col + nt * 8];
    upper[0] = acc[nt][0];
    upper[1] = acc[nt][1];
    lower[0] = acc[nt][2];
    lower[1] = acc[nt][3];
  }
  __syncthreads();
}

// As score_chunk_cuda_cores, on tensor cores (TensorCoreConfig; float16 and
// bfloat16 features). Warp w computes queries m0 + [0, 16) against keys
// n0 + [0, 32): four m16n8k16 blocks per 16 channels, their operands read
// by ldmatrix.
template <typename Config, typename scalar_t>
__device__ __forceinline__ void score_chunk_tensor_cores(
    SharedLayout<Config, float>& smem, const scalar_t* __restrict__ query,
    const scalar_t* __restrict__ batch_keys, int64_t channels, int64_t nk) {
  using Pieces = SlicePieces<Config, uint16_t>;
  constexpr int kRowPieces = Pieces::kRowPieces;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int m0 = (warp % Config::kQueryWarps) * 16;
  const int n0 = (warp / Config::kQueryWarps) * 32;
  const Pieces pieces(
      smem, reinterpret_cast<const uint16_t*>(query),
      reinterpret_cast<const uint16_t*>(batch_keys), channels, nk);
  auto store = [&](int v, const Piece<uint16_t>& piece) {
    const int row = v / kRowPieces, c = (v % kRowPieces) * 8;
    copy16(row < Config::kTileQueries
               ? &smem.tiles.queries[row][c]
               : &smem.tiles.keys[row - Config::kTileQueries][c],
           piece.values);
  };
  float acc[4][4] = {};
  auto compute = [&] {
#pragma unroll
    for (int k0 = 0; k0 < Config::kSliceChannels; k0 += 16) {
      uint32_t a[4], b[2][4];
      ldmatrix_x4(a, a_fragment_row(smem.tiles.queries, m0, k0, lane));
#pragma unroll
      for (int pair = 0; pair < 2; ++pair)
        ldmatrix_x4(b[pair], b_fragment_row(smem.tiles.keys,
                                            n0 + pair * 16, k0, lane));
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const uint32_t b_nt[2] = {b[nt / 2][nt % 2 * 2],
                                  b[nt / 2][nt % 2 * 2 + 1]};
        mma_m16n8k16(acc[nt], a, b_nt, scalar_t());
      }
    }
  };
  for_each_piece_source(pieces, channels, store, compute);
  store_mma_scores(smem, acc, m0, n0);
}

// The bits of x as a To (TF32 values are floats whose 13 lowest mantissa
// bits are 0, passed to mma as their bits).
template <typename To, typename From>
__device__ __forceinline__ To bit_cast(From x) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: sizes differ");
  To y;
  std::memcpy(&y, &x, sizeof(y));
  return y;
}

// x rounded to TF32 (its 13 lowest mantissa bits cleared) to nearest, ties
// away from zero, as cvt.rna.tf32.f32 rounds, for x finite or infinite
// (a finite x may round to an infinity); a NaN may not stay one. In C++
// rather than PTX, so that the tests' emulation splits as the GPU does.
__device__ __forceinline__ float round_to_tf32(float x) {
  return bit_cast<float>((bit_cast<uint32_t>(x) + 0x1000u) & 0xffffe000u);
}

// The two TF32 parts of x (Tf32TensorCoreConfig): big = tf32(x), small =
// tf32(x - big). An infinite or NaN x is its own big part (its small part
// is then NaN), so that its scores are NaN. One test of x serves both
// parts: x - big is finite, or infinite where big rounded to an infinity.
__device__ __forceinline__ void tf32_parts(float x, float& big,
                                           float& small) {
  const bool finite = fabsf(x) < INFINITY;
  big = finite ? round_to_tf32(x) : x;
  small = finite ? round_to_tf32(x - big) : x - big;
}

#if defined(__CUDACC__)
// d += a · b for one 16 × 8 × 8 block of TF32 values (PTX fragment layouts
// of mma.m16n8k8 with .tf32 inputs and .f32 accumulators). The tests' CPU
// emulation provides its own before including this header.
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4],
                                                 const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
  // The host refuses tensor-core configurations below sm_80.
  __trap();
#endif
}
#endif

// As score_chunk_cuda_cores, in 3xTF32 on tensor cores
// (Tf32TensorCoreConfig; float32 features). Each value of a slice is split
// once, as its tile is filled; warp w then computes queries m0 + [0, 16)
// against keys n0 + [0, 32): three m16n8k8 blocks per 8 channels and 8
// keys.
template <typename Config>
__device__ __forceinline__ void score_chunk_split_tf32(
    SharedLayout<Config, float>& smem, const float* __restrict__ query,
    const float* __restrict__ batch_keys, int64_t channels, int64_t nk) {
  constexpr int kTileQueries = Config::kTileQueries;
  constexpr int kSlice = Config::kSliceChannels;
  using Pieces = SlicePieces<Config, float>;
  constexpr int kRowPieces = Pieces::kRowPieces;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int m0 = (warp % Config::kQueryWarps) * 16;
  const int n0 = (warp / Config::kQueryWarps) * 32;
  auto& tiles = smem.tiles;
  const Pieces pieces(smem, query, batch_keys, channels, nk);
  auto store = [&](int v, const Piece<float>& piece) {
    const int row = v / kRowPieces, c = (v % kRowPieces) * 4;
    const int k = row - kTileQueries;
    float big[4], small[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) tf32_parts(piece.values[i], big[i], small[i]);
    store4(row < kTileQueries ? &tiles.queries_big[row][c]
                              : &tiles.keys_big[k][c],
           big);
    store4(row < kTileQueries ? &tiles.queries_small[row][c]
                              : &tiles.keys_small[k][c],
           small);
  };
  float acc[4][4] = {};
  auto compute = [&] {
#pragma unroll
    for (int k0 = 0; k0 < kSlice; k0 += 8) {
      uint32_t a_big[4], a_small[4], b_big[2][4], b_small[2][4];
      ldmatrix_x4(a_big, a_fragment_row(tiles.queries_big, m0, k0, lane));
      ldmatrix_x4(a_small,
                  a_fragment_row(tiles.queries_small, m0, k0, lane));
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        ldmatrix_x4(b_big[pair], b_fragment_row(tiles.keys_big,
                                                n0 + pair * 16, k0, lane));
        ldmatrix_x4(b_small[pair], b_fragment_row(tiles.keys_small,
                                                  n0 + pair * 16, k0, lane));
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int j = nt % 2 * 2;
        const uint32_t big[2] = {b_big[nt / 2][j], b_big[nt / 2][j + 1]};
        const uint32_t small[2] = {b_small[nt / 2][j],
                                   b_small[nt / 2][j + 1]};
        // The small terms first, while the sum is small.
        mma_m16n8k8_tf32(acc[nt], a_small, big);
        mma_m16n8k8_tf32(acc[nt], a_big, small);
        mma_m16n8k8_tf32(acc[nt], a_big, big);
      }
    }
  };
  for_each_piece_source(pieces, channels, store, compute);
  store_mma_scores(smem, acc, m0, n0);
}

template <typename Config, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(Config::kThreads, Config::kMinBlocks)
    topk_window_kernel(
    const scalar_t* __restrict__ query,       // (B, H, W, C)
    const scalar_t* __restrict__ keys,        // (B, T, H, W, C)
    const int64_t* __restrict__ half_widths,  // (H)
    int64_t frames, int64_t channels, int64_t height, int64_t width,
    int64_t reach, int64_t topk, int64_t stored_topk, int64_t unrestricted,
    int64_t groups, bool groups_of_chunks, double temperature,
    acc_t* __restrict__ weights,        // (B, H, W, topk), one group
    int64_t* __restrict__ indices,      // (B, H, W, topk), one group
    acc_t* __restrict__ group_values,   // (B, H, W, groups, stored_topk)
    int64_t* __restrict__ group_slots,  // (B, H, W, groups, stored_topk)
    int* __restrict__ group_counts) {   // (B, H, W, groups)
  constexpr int kTileRows = Config::kTileRows;
  constexpr int kTileCols = Config::kTileCols;
  constexpr int kTileQueries = Config::kTileQueries;
  constexpr int kChunkKeys = Config::kChunkKeys;
  constexpr int kThreads = Config::kThreads;
  SFC_DYNAMIC_SHARED_MEMORY(smem_raw);
  auto& smem = *reinterpret_cast<SharedLayout<Config, acc_t>*>(smem_raw);
  // Sorted top-k of each query of the tile: values, then indices.
  acc_t* top_values = reinterpret_cast<acc_t*>(smem_raw + sizeof(smem));
  int64_t* top_indices = reinterpret_cast<int64_t*>(
      top_values + kTileQueries * stored_topk);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t x0 = static_cast<int64_t>(blockIdx.x) * kTileCols;
  const int64_t y0 = static_cast<int64_t>(blockIdx.y) * kTileRows;
  const int64_t b = blockIdx.z / groups, group = blockIdx.z % groups;
  // A group of whole frames, or the group's share of every frame's chunks
  // (process_keys).
  const int64_t first_frame = groups_of_chunks ? 0 : group * frames / groups;
  const int64_t end_frame =
      groups_of_chunks ? frames : (group + 1) * frames / groups;
  const int64_t hw = height * width;
  const int cols = static_cast<int>(imin(kTileCols, width - x0));
  const int rows = static_cast<int>(imin(kTileRows, height - y0));
  const scalar_t* batch_keys = keys + b * frames * hw * channels;
  // Query q of the tile is at (y0 + q / kTileCols, x0 + q % kTileCols).
  auto query_valid = [&](unsigned q) {
    return static_cast<int>(q / kTileCols) < rows &&
           static_cast<int>(q % kTileCols) < cols;
  };
  auto query_position = [&](int q) {
    return (b * height + y0 + q / kTileCols) * width + x0 + q % kTileCols;
  };
  for (int q = tid; q < kTileQueries; q += kThreads) {
    smem.count[q] = 0;
    smem.query_offset[q] = query_valid(q) ? query_position(q) * channels : -1;
  }
  __syncthreads();
  // The offer's thresholds: warp w serves queries w + i kWarps of the tile
  // (the same ones in every chunk and frame), and lane i holds the value
  // its i-th query's list must beat, the list's k-th once full, -inf
  // until then. One shuffle hands a query's threshold to the warp, rather
  // than lane 0 reading the list at every 32 keys: their scores are
  // compared with it before anything else, and once the lists fill few
  // beat it.
  constexpr int kWarps = kThreads / 32;
  static_assert(kTileQueries <= 32 * kWarps,
                "each lane holds at most one query's threshold");
  const int k_top = static_cast<int>(stored_topk);
  acc_t lane_threshold = -INFINITY;
  // Bit i: the warp's i-th query is in the map (the offer skips the rest).
  unsigned warp_queries = 0;
  for (int q = warp, i = 0; q < kTileQueries; q += kWarps, ++i)
    warp_queries |= static_cast<unsigned>(query_valid(q)) << i;

  // Scores a list of n keys, in increasing flat index, and offers them:
  // all of its chunks, or with groups_of_chunks the group's share of them.
  // describe(v, slot) puts key v of the list in the chunk's slot: its flat
  // index, and its row and column (row -1: eligible for every query).
  auto process_keys = [&](int64_t n, auto describe) {
    const int64_t chunks = (n + kChunkKeys - 1) / kChunkKeys;
    const int64_t first_chunk = groups_of_chunks ? group * chunks / groups : 0;
    const int64_t end_chunk =
        groups_of_chunks ? (group + 1) * chunks / groups : chunks;
    for (int64_t c0 = first_chunk * kChunkKeys; c0 < end_chunk * kChunkKeys;
         c0 += kChunkKeys) {
      const int64_t nk = imin(kChunkKeys, n - c0);
      for (int slot = tid; slot < nk; slot += kThreads)
        describe(c0 + slot, slot);
      __syncthreads();
      if constexpr (Config::kSplitTf32)
        score_chunk_split_tf32<Config>(smem, query, batch_keys, channels,
                                       nk);
      else if constexpr (Config::kTensorCores)
        score_chunk_tensor_cores<Config>(smem, query, batch_keys, channels,
                                         nk);
      else
        score_chunk_cuda_cores<Config>(smem, query, batch_keys, channels,
                                       nk);

      // Offer: lane 0 inserts the candidates above the query's threshold
      // in key order. Lane 0 alone reads and writes the query's list, and
      // hands the new threshold to the warp by shuffle: __ballot_sync
      // orders no memory, so lanes reading the list that lane 0 rewrites
      // after the vote would race with it (compute-sanitizer's racecheck
      // reported it).
      const int n_keys = static_cast<int>(nk);
      for (int q = warp, i = 0; q < kTileQueries; q += kWarps, ++i) {
        if (!(warp_queries >> i & 1u)) continue;
        const int qy = static_cast<int>(y0 + static_cast<unsigned>(q) /
                                                 kTileCols);
        const int qx = static_cast<int>(x0 + static_cast<unsigned>(q) %
                                                 kTileCols);
        acc_t* values = top_values + q * stored_topk;
        int64_t* slots = top_indices + q * stored_topk;
        acc_t threshold = __shfl_sync(0xffffffffu, lane_threshold, i);
        for (int part = 0; part < kChunkKeys; part += 32) {
          const int j = part + lane;
          // The threshold first, so that a warp where no score beats it
          // skips the window test.
          bool candidate = j < n_keys && smem.scores[q][j] > threshold;
          if (candidate && smem.key_y[j] >= 0) {
            const int dy = smem.key_y[j] - qy, dx = smem.key_x[j] - qx;
            const int64_t half = half_widths[dy < 0 ? -dy : dy];
            candidate = half >= 0 && dx <= half && -dx <= half;
          }
          unsigned mask = __ballot_sync(0xffffffffu, candidate);
          if (mask == 0) continue;  // the same for the whole warp
          if (lane == 0) {
            int n_top = smem.count[q];
            while (mask) {
              const int bit = __ffs(mask) - 1;
              mask &= mask - 1;
              const acc_t v = smem.scores[q][part + bit];
              // The threshold rises as the candidates before it enter.
              if (n_top == k_top && !(v > values[k_top - 1])) continue;
              n_top = static_cast<int>(insert_sorted(
                  values, slots, n_top, k_top, v, smem.key_flat[part + bit]));
            }
            smem.count[q] = n_top;
            if (n_top == k_top) threshold = values[k_top - 1];
          }
          threshold = __shfl_sync(0xffffffffu, threshold, 0);
          if (lane == i) lane_threshold = threshold;
        }
      }
      __syncthreads();
    }
  };

  // Key rows a query row of the tile reaches in a restricted frame.
  const int64_t first_row = imax(0, y0 - reach);
  const int64_t last_row = imin(height - 1, y0 + rows - 1 + reach);
  // The first row of the batch whose table is in shared memory (-1: none).
  // The table is the same in every restricted frame: with one batch (a
  // reach up to 62 on 4-row tiles) thread 0 builds it once, not once per
  // frame while the block's other threads wait.
  int64_t table_rows = -1;
  for (int64_t t = first_frame; t < end_frame; ++t) {
    if (t < unrestricted) {
      process_keys(hw, [&](int64_t v, int slot) {
        smem.key_flat[slot] = t * hw + v;
        smem.key_y[slot] = -1;
        smem.key_x[slot] = 0;
      });
      continue;
    }
    // The union of the tile's windows, row by row in batches of at most
    // kMaxUnionRows rows: each row's interval, and where it starts in the
    // batch's list of keys.
    for (int64_t r0 = first_row; reach >= 0 && r0 <= last_row;
         r0 += kMaxUnionRows) {
      if (r0 != table_rows) {
        // Every thread is done with the old table before thread 0
        // rewrites it.
        if (table_rows >= 0) __syncthreads();
        if (tid == 0) {
          int n = 0, start = 0;
          const int64_t batch_end = imin(last_row, r0 + kMaxUnionRows - 1);
          for (int64_t ky = r0; ky <= batch_end; ++ky) {
            int64_t widest = -1;
            for (int64_t qy = y0; qy < y0 + rows; ++qy)
              widest =
                  imax(widest, half_widths[ky > qy ? ky - qy : qy - ky]);
            if (widest < 0) continue;
            const int64_t lo = imax(0, x0 - widest);
            const int64_t hi = imin(width - 1, x0 + cols - 1 + widest);
            smem.row_y[n] = static_cast<int>(ky);
            smem.row_x[n] = static_cast<int>(lo);
            smem.row_start[n] = start;
            start += static_cast<int>(hi - lo + 1);
            ++n;
          }
          smem.row_start[n] = start;
          smem.num_rows = n;
        }
        __syncthreads();
        table_rows = r0;
      }
      const int num_rows = smem.num_rows;
      process_keys(smem.row_start[num_rows], [&](int64_t v, int slot) {
        // The last row starting at or before v.
        int lo = 0, hi = num_rows - 1;
        while (lo < hi) {
          const int mid = (lo + hi + 1) / 2;
          if (smem.row_start[mid] <= v)
            lo = mid;
          else
            hi = mid - 1;
        }
        const int64_t ky = smem.row_y[lo];
        const int64_t kx = smem.row_x[lo] + (v - smem.row_start[lo]);
        smem.key_flat[slot] = t * hw + ky * width + kx;
        smem.key_y[slot] = static_cast<int>(ky);
        smem.key_x[slot] = static_cast<int>(kx);
      });
    }
  }

  for (int q = tid; q < kTileQueries; q += kThreads) {
    if (!query_valid(q)) continue;
    const int64_t position = query_position(q);
    const acc_t* values = top_values + q * stored_topk;
    const int64_t* slots = top_indices + q * stored_topk;
    const int count = smem.count[q];
    if (groups == 1) {
      write_topk_softmax<acc_t>(values, slots, count, topk, temperature,
                                weights + position * topk,
                                indices + position * topk);
    } else {
      const int64_t list = position * groups + group;
      for (int j = 0; j < count; ++j) {
        group_values[list * stored_topk + j] = values[j];
        group_slots[list * stored_topk + j] = slots[j];
      }
      group_counts[list] = count;
    }
  }
}

// One thread per query position: merges its groups' sorted top-k lists
// (positions, groups, stored_topk) into `merged` scratch and writes the
// softmax.
template <typename acc_t>
__global__ void __launch_bounds__(kMergeThreads) merge_groups_kernel(
    const acc_t* __restrict__ group_values,
    const int64_t* __restrict__ group_slots,
    const int* __restrict__ group_counts, int64_t positions, int64_t groups,
    int64_t stored_topk, int64_t topk, double temperature,
    acc_t* __restrict__ merged_values, int64_t* __restrict__ merged_slots,
    acc_t* __restrict__ weights, int64_t* __restrict__ indices) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x +
                    threadIdx.x;
  if (p >= positions) return;
  const acc_t* values = group_values + p * groups * stored_topk;
  const int64_t* slots = group_slots + p * groups * stored_topk;
  const int* counts = group_counts + p * groups;
  acc_t* out_values = merged_values + p * stored_topk;
  int64_t* out_slots = merged_slots + p * stored_topk;
  int head[kMaxGroups];
  for (int64_t g = 0; g < groups; ++g) head[g] = 0;
  int64_t n = 0;
  for (; n < stored_topk; ++n) {
    int64_t best = -1, best_slot = 0;
    acc_t best_value = 0;
    for (int64_t g = 0; g < groups; ++g) {
      if (head[g] >= counts[g]) continue;
      const acc_t v = values[g * stored_topk + head[g]];
      const int64_t slot = slots[g * stored_topk + head[g]];
      // On a tie the lower key index, as within a group's list: groups of
      // chunks interleave their keys' indices.
      if (best < 0 || v > best_value ||
          (v == best_value && slot < best_slot)) {
        best = g;
        best_value = v;
        best_slot = slot;
      }
    }
    if (best < 0) break;
    out_values[n] = best_value;
    out_slots[n] = best_slot;
    ++head[best];
  }
  write_topk_softmax<acc_t>(out_values, out_slots, n, topk, temperature,
                            weights + p * topk, indices + p * topk);
}

// The launch plan's number of groups for `tiles` query tiles (of every
// batch item) on a device that holds `resident` blocks at once, before the
// caps of launch_tiled. Groups of frames: the fewest that fill the device
// once (a first group holding the unrestricted frame is the longest, and
// the shorter last groups fill the second wave's places). Groups of
// chunks, whose blocks are equally long: among one to four times that
// many, the count whose last wave leaves the fewest places idle (the time
// taken as whole waves of blocks 1/groups as long as a tile's work; the
// fewer groups on a tie). 480p on an H200: 210 tiles; float32 holds 396
// blocks, 2 groups of frames or 7 of chunks; bfloat16 528, 3 or 5.
inline int64_t planned_groups(int64_t tiles, int64_t resident,
                              bool of_chunks) {
  tiles = std::max<int64_t>(tiles, 1);
  resident = std::max<int64_t>(resident, 1);
  const int64_t fill = (resident + tiles - 1) / tiles;
  if (!of_chunks) return fill;
  auto waves = [&](int64_t g) {
    return (tiles * g + resident - 1) / resident;
  };
  int64_t best = fill;
  for (int64_t g = fill + 1; g <= std::min(4 * fill, kMaxGroups); ++g)
    if (waves(g) * best < waves(best) * g) best = g;  // waves / groups
  return best;
}

// What the launch plan needs beyond the configuration: the checked inputs
// in the kernels' layouts, the sizes, and the outputs to fill.
struct MatchProblem {
  at::Tensor query;        // (B, H, W, C)
  at::Tensor keys;         // (B, T, H, W, C)
  at::Tensor half_widths;  // (H) on the features' device
  int64_t batch, frames, channels, height, width;
  int64_t reach, topk, stored_topk, unrestricted;
  double temperature;
  at::Tensor weights, indices;  // (B, H, W, topk)
};

// Shared memory of one block of Config: its tiles, and the tile's top-k
// lists of `stored_topk` entries.
template <typename Config, typename acc_t>
int64_t block_shared_bytes(int64_t stored_topk) {
  return static_cast<int64_t>(sizeof(SharedLayout<Config, acc_t>)) +
         Config::kTileQueries * stored_topk *
             static_cast<int64_t>(sizeof(acc_t) + sizeof(int64_t));
}

// block_shared_bytes of the configuration named `config` (empty: the
// default) for float, float16 or bfloat16 features (float accumulation).
inline int64_t config_shared_bytes(const std::string& config,
                                   int64_t stored_topk) {
  int64_t bytes = block_shared_bytes<DefaultConfig, float>(stored_topk);
  std::apply([&](auto... alternative) {
    ((config == decltype(alternative)::name()
          ? (void)(bytes = block_shared_bytes<decltype(alternative), float>(
                       stored_topk))
          : void()),
     ...);
  }, AlternativeConfigs{});
  return bytes;
}

// Launches one configuration's kernels on `problem`, scalar_t its features'
// type. `launch` runs a kernel (see topk_window_neighbours_tiled) and tells
// how many of its blocks the device holds at once.
template <typename Config, typename scalar_t, typename Launch>
void launch_tiled(const MatchProblem& problem, int64_t max_shared_bytes,
                  Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  TORCH_CHECK_VALUE(!Config::kTensorCores || launch.has_tensor_cores(),
                    "topk_window_match: kernel configuration '",
                    Config::name(), "' needs tensor cores with bfloat16 "
                    "and TF32 (compute capability 8.0 or later)");
  const auto kernel = topk_window_kernel<Config, scalar_t, acc_t>;
  const int64_t shared =
      block_shared_bytes<Config, acc_t>(problem.stored_topk);
  // Checked here rather than left to the launch, whose error names neither
  // the cause nor the way out.
  TORCH_CHECK_VALUE(
      shared <= max_shared_bytes, "topk_window_match: topk=", problem.topk,
      " in ", problem.query.scalar_type(), " needs ", shared / 1024,
      " KiB of shared memory per block; this GPU offers ",
      max_shared_bytes / 1024,
      " KiB. Use a smaller topk or float32 features");
  const int64_t tiles_x =
      (problem.width + Config::kTileCols - 1) / Config::kTileCols;
  const int64_t tiles_y =
      (problem.height + Config::kTileRows - 1) / Config::kTileRows;
  const int64_t tiles = tiles_x * tiles_y * problem.batch;
  const int64_t resident = launch.resident_blocks(
      kernel, Config::kThreads, static_cast<size_t>(shared));
  const int64_t asked = frame_groups_asked();
  // Groups of whole frames are at most the frames; groups of chunks may
  // outnumber them (a group then has a share of each frame's chunks, or
  // none where a frame has fewer chunks than groups).
  const bool of_chunks = groups_of_chunks_asked();
  const int64_t groups = std::max<int64_t>(
      1, std::min({of_chunks ? kMaxGroups : problem.frames, kMaxGroups,
                   kMaxGridYZ / problem.batch,
                   asked ? asked
                         : planned_groups(tiles, resident, of_chunks)}));
  const int64_t positions = problem.batch * problem.height * problem.width;
  const auto acc_options = problem.weights.options();
  at::Tensor group_values, group_slots, group_counts;
  if (groups > 1) {
    group_values =
        at::empty({positions, groups, problem.stored_topk}, acc_options);
    group_slots = at::empty({positions, groups, problem.stored_topk},
                            problem.indices.options());
    group_counts = at::empty({positions, groups},
                             problem.indices.options().dtype(at::kInt));
  }
  launch(kernel,
         dim3(static_cast<unsigned>(tiles_x), static_cast<unsigned>(tiles_y),
              static_cast<unsigned>(problem.batch * groups)),
         dim3(Config::kThreads), static_cast<size_t>(shared),
         problem.query.data_ptr<scalar_t>(), problem.keys.data_ptr<scalar_t>(),
         problem.half_widths.data_ptr<int64_t>(), problem.frames,
         problem.channels, problem.height, problem.width, problem.reach,
         problem.topk, problem.stored_topk, problem.unrestricted, groups,
         of_chunks, problem.temperature, problem.weights.data_ptr<acc_t>(),
         problem.indices.data_ptr<int64_t>(),
         groups > 1 ? group_values.data_ptr<acc_t>() : nullptr,
         groups > 1 ? group_slots.data_ptr<int64_t>() : nullptr,
         groups > 1 ? group_counts.data_ptr<int>() : nullptr);
  if (groups > 1) {
    auto merged_values =
        at::empty({positions, problem.stored_topk}, acc_options);
    auto merged_slots = at::empty({positions, problem.stored_topk},
                                  problem.indices.options());
    launch(merge_groups_kernel<acc_t>,
           dim3(static_cast<unsigned>((positions + kMergeThreads - 1) /
                                      kMergeThreads)),
           dim3(kMergeThreads), size_t{0}, group_values.data_ptr<acc_t>(),
           group_slots.data_ptr<int64_t>(), group_counts.data_ptr<int>(),
           positions, groups, problem.stored_topk, problem.topk,
           problem.temperature, merged_values.data_ptr<acc_t>(),
           merged_slots.data_ptr<int64_t>(),
           problem.weights.data_ptr<acc_t>(),
           problem.indices.data_ptr<int64_t>());
  }
}

// Launches an alternative configuration for the feature types it is built
// for: float32 on CUDA cores and in 3xTF32, float16 and bfloat16 on tensor
// cores.
template <typename Config, typename Launch>
void launch_alternative(const MatchProblem& problem, int64_t max_shared_bytes,
                        Launch& launch) {
  const auto type = problem.query.scalar_type();
  if constexpr (Config::kSplitTf32) {
    TORCH_CHECK_VALUE(type == at::kFloat,
                      "topk_window_match: kernel configuration '",
                      Config::name(), "' is built for float32 features "
                      "only, got ", type);
    launch_tiled<Config, float>(problem, max_shared_bytes, launch);
  } else if constexpr (Config::kTensorCores) {
    TORCH_CHECK_VALUE(type == at::kHalf || type == at::kBFloat16,
                      "topk_window_match: kernel configuration '",
                      Config::name(), "' takes float16 or bfloat16 "
                      "features, got ", type);
    if (type == at::kHalf)
      launch_tiled<Config, at::Half>(problem, max_shared_bytes, launch);
    else
      launch_tiled<Config, at::BFloat16>(problem, max_shared_bytes, launch);
  } else {
    TORCH_CHECK_VALUE(type == at::kFloat,
                      "topk_window_match: kernel configuration '",
                      Config::name(), "' is built for float32 features "
                      "only, got ", type);
    launch_tiled<Config, float>(problem, max_shared_bytes, launch);
  }
}

// The whole op: checks, launch plan and launches. `config` names the
// kernel configuration (empty: DefaultConfig; see launch_alternative for
// the others). `launch(kernel, grid, block, shared_bytes, args...)` runs
// one kernel (a CUDA launch on the current stream, or the tests'
// emulation), `launch.resident_blocks(kernel, threads, shared_bytes)` says
// how many of that kernel's blocks fill the device (the keys are split into
// groups until there are that many), `launch.has_tensor_cores()`
// whether the device runs mma.m16n8k16 in bfloat16 (sm_80+), and
// `launch.to_device(host)` copies a host tensor to the features' device
// without waiting for the stream (a tracker queues its next frame's
// encoder while this one's match runs); `max_shared_bytes` is what one
// block may have. With `fallback`, a `config` whose blocks need more shared
// memory than that at this topk gives way to DefaultConfig (the op's own
// choice, op_config_name); without, it is an error naming the need (a
// configuration asked for by name).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_tiled(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys,
    const std::string& config, bool fallback, int64_t max_shared_bytes,
    Launch&& launch) {
  check_neighbours_args(query, keys, topk, radius, temperature,
                        unrestricted_keys);
  bool default_config = config.empty() || config == DefaultConfig::name();
  const auto names = kernel_config_names();
  if (!default_config &&
      std::find(names.begin(), names.end(), config) == names.end()) {
    std::string known;
    for (const auto& name : names) known += (known.empty() ? "" : ", ") + name;
    TORCH_CHECK_VALUE(false, "topk_window_match: unknown kernel "
                      "configuration '", config, "'; known: ", known);
  }
  const int64_t batch = keys.size(0), frames = keys.size(1),
                channels = keys.size(2), height = keys.size(3),
                width = keys.size(4);
  const auto half = window_half_widths(radius, height, width);
  // The most keys one query can see (beyond that, slots are padding), and
  // the farthest key row a window reaches (-1: none).
  int64_t window = 0, reach = -1;
  for (int64_t dy = 0; dy < height; ++dy) {
    if (half[dy] < 0) continue;
    window += (dy == 0 ? 1 : 2) * std::min(2 * half[dy] + 1, width);
    reach = dy;
  }
  const int64_t visible = unrestricted_keys * height * width +
                          (frames - unrestricted_keys) * window;
  const int64_t stored_topk = std::max<int64_t>(1, std::min(topk, visible));
  TORCH_CHECK_VALUE(stored_topk <= kMaxTopk,
                    "topk_window_match: the CUDA kernel keeps at most ",
                    kMaxTopk, " neighbours per position, got topk=", topk,
                    "; run this call on CPU");
  // The 3xTF32 tiles hold two parts of each value: at a large topk they
  // may not fit beside the top-k lists where the CUDA-core tiles do (99
  // KiB a block on sm_86 and sm_89).
  if (fallback && !default_config &&
      config_shared_bytes(config, stored_topk) > max_shared_bytes)
    default_config = true;

  auto weights = at::empty(
      {batch, height, width, topk},
      query.options().dtype(neighbour_weights_type(query.scalar_type())));
  auto indices = at::empty({batch, height, width, topk},
                           query.options().dtype(at::kLong));
  // An empty grid is an invalid launch configuration.
  if (batch == 0) return {weights, indices};
  TORCH_CHECK_VALUE(height <= kMaxGridYZ && batch <= kMaxGridYZ,
                    "topk_window_match: the CUDA kernel takes at most ",
                    kMaxGridYZ, " feature rows and ", kMaxGridYZ,
                    " batch items per call, got H=", height, ", B=", batch,
                    "; split the call");
  // The union's table counts its keys, rows and columns in int.
  constexpr int64_t kMaxWidth = std::numeric_limits<int>::max() / kMaxUnionRows;
  TORCH_CHECK_VALUE(width <= kMaxWidth,
                    "topk_window_match: the CUDA kernel takes feature maps "
                    "at most ", kMaxWidth, " wide, got W=", width,
                    "; split the call");
  const MatchProblem problem{
      query.permute({0, 2, 3, 1}).contiguous(),
      keys_channels_last(keys),
      launch.to_device(
          at::tensor(half, at::TensorOptions().dtype(at::kLong))),
      batch, frames, channels, height, width,
      reach, topk, stored_topk, unrestricted_keys,
      temperature, weights, indices};
  if (default_config) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, query.scalar_type(),
        "topk_window_neighbours", [&] {
          launch_tiled<DefaultConfig, scalar_t>(problem, max_shared_bytes,
                                                launch);
        });
  } else {
    std::apply([&](auto... alternative) {
      ((config == decltype(alternative)::name()
            ? launch_alternative<decltype(alternative)>(
                  problem, max_shared_bytes, launch)
            : void()),
       ...);
    }, AlternativeConfigs{});
  }
  return {weights, indices};
}

}  // namespace cuda_kernels
}  // namespace ops
}  // namespace sfc_plugin
