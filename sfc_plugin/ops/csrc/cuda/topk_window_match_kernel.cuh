// The CUDA kernels of sfc::topk_window_neighbours and their launch plan.
//
// Kept apart from the op's registration (topk_window_match_cuda.cu) so that
// the tests can also compile them for the CPU with a SIMT emulation
// (tests/test_ops/csrc/simt_emulation.h): the launch plan takes the launcher
// as a parameter, and nothing here names the CUDA runtime.
//
// One block serves a tile of kTileRows × kTileCols query positions over
// one group of consecutive key frames. It lists the keys those queries may
// see in increasing flat index (an unrestricted frame whole; in a
// restricted frame, row by row, the union of the tile's windows, packed
// without gaps) and scores them in chunks of kChunkKeys keys. A chunk's
// scores are computed kChunkChannels channels at a time from shared-memory
// tiles stored channel-major, each thread accumulating a kMicroQueries ×
// kMicroKeys block of scores in registers (two vector loads per 16 FMAs),
// and then offered to each query's running top-k, kept sorted in shared
// memory, if the key is in that query's own window. A score must beat the
// current k-th strictly, so among equal affinities the lower index wins,
// as on CPU. Every score is the same sequence of FMAs over the channels,
// whichever slot its query and key take, so equal keys tie exactly.
//
// The tiles alone give too few blocks to fill a GPU (480p: 14 × 15), so
// the frames are split into groups, each block keeping its group's top-k;
// merge_groups_kernel then merges the groups' sorted lists (on equal
// affinities the earlier group, of lower indices, first) and takes the
// softmax. With one group the first kernel writes the softmax itself.
//
// Accumulation is in float for float/half/bfloat16 features and in double
// for double, and the softmax weights are written in that type
// (neighbour_weights_type). Non-finite affinities below +inf are never
// selected; unlike the CPU kernel there is no host-side check (it would
// stall the stream).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "../topk_window_match.h"

#ifndef SFC_DYNAMIC_SHARED_MEMORY
#define SFC_DYNAMIC_SHARED_MEMORY(name) \
  extern __shared__ __align__(16) unsigned char name[]
#endif

namespace sfc_plugin {
namespace ops {
namespace cuda_kernels {

// A tile of kTileRows × kTileCols query positions: the union of its
// windows is close to one window (a one-row tile of 32 would score 2.6×
// the eligible pairs at r' = 15).
constexpr int kTileRows = 4;
constexpr int kTileCols = 8;
constexpr int kTileQueries = kTileRows * kTileCols;
// Key rows per batch of the union's table in shared memory.
constexpr int kMaxUnionRows = 128;
constexpr int kChunkKeys = 64;
constexpr int kChunkChannels = 32;
constexpr int kMicroQueries = 4;
constexpr int kMicroKeys = 4;
constexpr int kThreads =
    (kTileQueries / kMicroQueries) * (kChunkKeys / kMicroKeys);  // 128
// Row padding of the channel-major tiles: a multiple of 4 keeps every row
// 16-byte aligned for the vector loads, and the transposing stores then fall
// on 8 banks instead of 1.
constexpr int kPad = 4;
constexpr int kMergeThreads = 128;
// Top-k state per query lives in shared memory; larger k is clamped to the
// number of keys a query can see, and beyond this the CPU kernel serves.
constexpr int64_t kMaxTopk = 256;
// Frame groups per batch item (the merge keeps one list head per group).
constexpr int64_t kMaxGroups = 64;
// Row tiles and batch items × groups go in the launch grid's y and z.
constexpr int64_t kMaxGridYZ = 65535;

template <typename acc_t>
struct SharedLayout {
  // Channel-major: row c holds channel c of every query (key) of the tile.
  alignas(16) acc_t queries[kChunkChannels][kTileQueries + kPad];
  alignas(16) acc_t keys[kChunkChannels][kChunkKeys + kPad];
  acc_t scores[kTileQueries][kChunkKeys];
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
__device__ __forceinline__ void load4(const T* p, T (&v)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = p[i];
}

#if defined(__CUDACC__)
template <>
__device__ __forceinline__ void load4<float>(const float* p, float (&v)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x;
  v[1] = f.y;
  v[2] = f.z;
  v[3] = f.w;
}
#endif

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) topk_window_kernel(
    const scalar_t* __restrict__ query,       // (B, H, W, C)
    const scalar_t* __restrict__ keys,        // (B, T, H, W, C)
    const int64_t* __restrict__ half_widths,  // (H)
    int64_t frames, int64_t channels, int64_t height, int64_t width,
    int64_t reach, int64_t topk, int64_t stored_topk, int64_t unrestricted,
    int64_t groups, double temperature,
    acc_t* __restrict__ weights,        // (B, H, W, topk), one group
    int64_t* __restrict__ indices,      // (B, H, W, topk), one group
    acc_t* __restrict__ group_values,   // (B, H, W, groups, stored_topk)
    int64_t* __restrict__ group_slots,  // (B, H, W, groups, stored_topk)
    int* __restrict__ group_counts) {   // (B, H, W, groups)
  SFC_DYNAMIC_SHARED_MEMORY(smem_raw);
  auto& smem = *reinterpret_cast<SharedLayout<acc_t>*>(smem_raw);
  // Sorted top-k of each query of the tile: values, then indices.
  acc_t* top_values = reinterpret_cast<acc_t*>(smem_raw + sizeof(smem));
  int64_t* top_indices = reinterpret_cast<int64_t*>(
      top_values + kTileQueries * stored_topk);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t x0 = static_cast<int64_t>(blockIdx.x) * kTileCols;
  const int64_t y0 = static_cast<int64_t>(blockIdx.y) * kTileRows;
  const int64_t b = blockIdx.z / groups, group = blockIdx.z % groups;
  const int64_t first_frame = group * frames / groups;
  const int64_t end_frame = (group + 1) * frames / groups;
  const int64_t hw = height * width;
  const int64_t cols = imin(kTileCols, width - x0);
  const int64_t rows = imin(kTileRows, height - y0);
  const scalar_t* batch_keys = keys + b * frames * hw * channels;
  // Query q of the tile is at (y0 + q / kTileCols, x0 + q % kTileCols).
  auto query_valid = [&](int q) {
    return q / kTileCols < rows && q % kTileCols < cols;
  };
  auto query_position = [&](int q) {
    return (b * height + y0 + q / kTileCols) * width + x0 + q % kTileCols;
  };
  if (tid < kTileQueries) {
    smem.count[tid] = 0;
    smem.query_offset[tid] =
        query_valid(tid) ? query_position(tid) * channels : -1;
  }
  __syncthreads();

  // Thread -> scores of queries mq * 4 + [0, 4) and keys mk * 4 + [0, 4).
  const int mq = tid / (kChunkKeys / kMicroKeys);
  const int mk = tid % (kChunkKeys / kMicroKeys);

  // Scores a list of n keys, in increasing flat index, and offers them.
  // describe(v, slot) puts key v of the list in the chunk's slot: its flat
  // index, and its row and column (row -1: eligible for every query).
  auto process_keys = [&](int64_t n, auto describe) {
    for (int64_t c0 = 0; c0 < n; c0 += kChunkKeys) {
      const int64_t nk = imin(kChunkKeys, n - c0);
      if (tid < nk) describe(c0 + tid, tid);
      __syncthreads();
      acc_t acc[kMicroQueries][kMicroKeys];
#pragma unroll
      for (int i = 0; i < kMicroQueries; ++i)
#pragma unroll
        for (int j = 0; j < kMicroKeys; ++j) acc[i][j] = 0;
      for (int64_t ch = 0; ch < channels; ch += kChunkChannels) {
        const int64_t nc = imin(kChunkChannels, channels - ch);
        // Consecutive threads read consecutive channels of one position
        // (coalesced) and store them down a column of the tile.
        for (int e = tid; e < kTileQueries * kChunkChannels; e += kThreads) {
          const int q = e / kChunkChannels, c = e % kChunkChannels;
          const int64_t offset = smem.query_offset[q];
          smem.queries[c][q] =
              (offset >= 0 && c < nc)
                  ? static_cast<acc_t>(query[offset + ch + c])
                  : acc_t(0);
        }
        for (int e = tid; e < kChunkKeys * kChunkChannels; e += kThreads) {
          const int k = e / kChunkChannels, c = e % kChunkChannels;
          smem.keys[c][k] =
              (k < nk && c < nc)
                  ? static_cast<acc_t>(
                        batch_keys[smem.key_flat[k] * channels + ch + c])
                  : acc_t(0);
        }
        __syncthreads();
#pragma unroll 4
        for (int c = 0; c < kChunkChannels; ++c) {
          acc_t qv[kMicroQueries], kv[kMicroKeys];
          load4(&smem.queries[c][mq * kMicroQueries], qv);
          load4(&smem.keys[c][mk * kMicroKeys], kv);
#pragma unroll
          for (int i = 0; i < kMicroQueries; ++i)
#pragma unroll
            for (int j = 0; j < kMicroKeys; ++j) acc[i][j] += qv[i] * kv[j];
        }
        __syncthreads();
      }
#pragma unroll
      for (int i = 0; i < kMicroQueries; ++i)
#pragma unroll
        for (int j = 0; j < kMicroKeys; ++j)
          smem.scores[mq * kMicroQueries + i][mk * kMicroKeys + j] =
              acc[i][j];
      __syncthreads();

      // Offer: each warp serves every (kThreads / 32)-th query; lane 0
      // inserts the candidates above the threshold in key order.
      for (int q = warp; q < kTileQueries; q += kThreads / 32) {
        if (!query_valid(q)) continue;  // the same for the whole warp
        const int64_t qy = y0 + q / kTileCols, qx = x0 + q % kTileCols;
        acc_t* values = top_values + q * stored_topk;
        int64_t* slots = top_indices + q * stored_topk;
        for (int part = 0; part < kChunkKeys; part += 32) {
          const int j = part + lane;
          const acc_t s = smem.scores[q][j];
          const int count = smem.count[q];
          const acc_t threshold =
              count < stored_topk ? -INFINITY : values[stored_topk - 1];
          bool eligible = j < nk;
          if (eligible && smem.key_y[j] >= 0) {
            const int64_t dy = smem.key_y[j] - qy;
            const int64_t dx = smem.key_x[j] - qx;
            const int64_t half = half_widths[dy < 0 ? -dy : dy];
            eligible = half >= 0 && dx <= half && -dx <= half;
          }
          unsigned mask = __ballot_sync(0xffffffffu, eligible && s > threshold);
          if (lane == 0) {
            while (mask) {
              const int bit = __ffs(mask) - 1;
              mask &= mask - 1;
              const acc_t v = smem.scores[q][part + bit];
              const int n_top = smem.count[q];
              // The threshold rises as the candidates before it enter.
              if (n_top == stored_topk && !(v > values[stored_topk - 1]))
                continue;
              smem.count[q] = static_cast<int>(
                  insert_sorted(values, slots, n_top, stored_topk, v,
                                smem.key_flat[part + bit]));
            }
          }
          __syncwarp();
        }
      }
      __syncthreads();
    }
  };

  // Key rows a query row of the tile reaches in a restricted frame.
  const int64_t first_row = imax(0, y0 - reach);
  const int64_t last_row = imin(height - 1, y0 + rows - 1 + reach);
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
      if (tid == 0) {
        int n = 0, start = 0;
        for (int64_t ky = r0; ky <= imin(last_row, r0 + kMaxUnionRows - 1);
             ++ky) {
          int64_t widest = -1;
          for (int64_t qy = y0; qy < y0 + rows; ++qy)
            widest = imax(widest, half_widths[ky > qy ? ky - qy : qy - ky]);
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
      // Every thread is done with the table before thread 0 rewrites it.
      __syncthreads();
    }
  }

  if (tid < kTileQueries && query_valid(tid)) {
    const int64_t position = query_position(tid);
    const acc_t* values = top_values + tid * stored_topk;
    const int64_t* slots = top_indices + tid * stored_topk;
    const int count = smem.count[tid];
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
    int64_t best = -1;
    acc_t best_value = 0;
    for (int64_t g = 0; g < groups; ++g) {
      if (head[g] >= counts[g]) continue;
      const acc_t v = values[g * stored_topk + head[g]];
      // Strictly greater: on a tie the earlier group (lower indices) stays.
      if (best < 0 || v > best_value) {
        best = g;
        best_value = v;
      }
    }
    if (best < 0) break;
    out_values[n] = best_value;
    out_slots[n] = slots[best * stored_topk + head[best]];
    ++head[best];
  }
  write_topk_softmax<acc_t>(out_values, out_slots, n, topk, temperature,
                            weights + p * topk, indices + p * topk);
}

// The whole op: checks, launch plan and launches. `launch(kernel, grid,
// block, shared_bytes, args...)` runs one kernel (a CUDA launch on the
// current stream, or the tests' emulation); `target_blocks` is how many
// blocks fill the device (frames are split into groups until there are
// that many) and `max_shared_bytes` what one block may have.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_tiled(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys,
    int64_t target_blocks, int64_t max_shared_bytes, Launch&& launch) {
  check_neighbours_args(query, keys, topk, radius, temperature,
                        unrestricted_keys);
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
  const int64_t visible =
      unrestricted_keys * height * width + (frames - unrestricted_keys) * window;
  const int64_t stored_topk = std::max<int64_t>(1, std::min(topk, visible));
  TORCH_CHECK_VALUE(stored_topk <= kMaxTopk,
                    "topk_window_match: the CUDA kernel keeps at most ",
                    kMaxTopk, " neighbours per position, got topk=", topk,
                    "; run this call on CPU");

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
  const int64_t tiles_x = (width + kTileCols - 1) / kTileCols;
  const int64_t tiles_y = (height + kTileRows - 1) / kTileRows;
  const int64_t tiles = tiles_x * tiles_y * batch;
  const int64_t groups = std::max<int64_t>(
      1, std::min({frames, kMaxGroups, kMaxGridYZ / batch,
                   (std::max<int64_t>(target_blocks, 1) + tiles - 1) /
                       tiles}));
  const auto q = query.permute({0, 2, 3, 1}).contiguous();
  const auto k = keys_channels_last(keys);
  const auto half_widths =
      at::tensor(half, at::TensorOptions().dtype(at::kLong))
          .to(query.device());
  const int64_t positions = batch * height * width;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "topk_window_neighbours",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const int64_t shared =
            sizeof(SharedLayout<acc_t>) +
            kTileQueries * stored_topk * (sizeof(acc_t) + sizeof(int64_t));
        // Checked here rather than left to the launch, whose error names
        // neither the cause nor the way out.
        TORCH_CHECK_VALUE(
            shared <= max_shared_bytes, "topk_window_match: topk=", topk,
            " in ", q.scalar_type(), " needs ", shared / 1024,
            " KiB of shared memory per block; this GPU offers ",
            max_shared_bytes / 1024,
            " KiB. Use a smaller topk or float32 features");
        const auto acc_options = weights.options();
        at::Tensor group_values, group_slots, group_counts;
        if (groups > 1) {
          group_values = at::empty({positions, groups, stored_topk},
                                   acc_options);
          group_slots = at::empty({positions, groups, stored_topk},
                                  indices.options());
          group_counts = at::empty({positions, groups},
                                   indices.options().dtype(at::kInt));
        }
        launch(topk_window_kernel<scalar_t, acc_t>,
               dim3(static_cast<unsigned>(tiles_x),
                    static_cast<unsigned>(tiles_y),
                    static_cast<unsigned>(batch * groups)),
               dim3(kThreads), static_cast<size_t>(shared),
               q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
               half_widths.data_ptr<int64_t>(), frames, channels, height,
               width, reach, topk, stored_topk, unrestricted_keys, groups,
               temperature, weights.data_ptr<acc_t>(),
               indices.data_ptr<int64_t>(),
               groups > 1 ? group_values.data_ptr<acc_t>() : nullptr,
               groups > 1 ? group_slots.data_ptr<int64_t>() : nullptr,
               groups > 1 ? group_counts.data_ptr<int>() : nullptr);
        if (groups > 1) {
          auto merged_values = at::empty({positions, stored_topk},
                                         acc_options);
          auto merged_slots = at::empty({positions, stored_topk},
                                        indices.options());
          launch(merge_groups_kernel<acc_t>,
                 dim3(static_cast<unsigned>(
                     (positions + kMergeThreads - 1) / kMergeThreads)),
                 dim3(kMergeThreads), size_t{0},
                 group_values.data_ptr<acc_t>(),
                 group_slots.data_ptr<int64_t>(),
                 group_counts.data_ptr<int>(), positions, groups,
                 stored_topk, topk, temperature,
                 merged_values.data_ptr<acc_t>(),
                 merged_slots.data_ptr<int64_t>(), weights.data_ptr<acc_t>(),
                 indices.data_ptr<int64_t>());
        }
      });
  return {weights, indices};
}

}  // namespace cuda_kernels
}  // namespace ops
}  // namespace sfc_plugin
