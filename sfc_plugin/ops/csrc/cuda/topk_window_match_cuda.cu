// CUDA kernel of sfc::topk_window_neighbours.
//
// One block serves a tile of kTileQueries consecutive query positions of
// one row. It walks the keys those queries may see as contiguous segments
// (each unrestricted frame whole; in each restricted frame, on every key
// row the window reaches, the union of the tile's intervals), in chunks of
// kChunkKeys keys. A chunk's scores are computed from shared-memory tiles
// of queries and keys, kChunkChannels channels at a time, and then offered
// to each query's running top-k, kept sorted in shared memory. Segments are
// visited in increasing flat key index and a score must beat the current
// k-th strictly, so among equal affinities the lower index wins, as on CPU.
//
// Accumulation is in float for float/half/bfloat16 features and in double
// for double, and the softmax weights are written in that type
// (neighbour_weights_type). Non-finite affinities are never selected;
// unlike the CPU kernel there is no host-side check (it would stall the
// stream).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cfloat>

#include "../topk_window_match.h"

namespace sfc_plugin {
namespace ops {
namespace {

constexpr int kTileQueries = 32;
constexpr int kChunkKeys = 64;
constexpr int kChunkChannels = 32;
constexpr int kThreads = 256;
constexpr int kKeysPerThread = kTileQueries * kChunkKeys / kThreads;  // 8
// Top-k state per query lives in shared memory; larger k is clamped to the
// number of keys a query can see, and beyond this the CPU kernel serves.
constexpr int64_t kMaxTopk = 256;
// Rows and batch items go in the launch grid's y and z: at most this many.
constexpr int64_t kMaxGridYZ = 65535;

template <typename acc_t>
struct SharedLayout {
  // Padded rows avoid bank conflicts when threads walk channels.
  acc_t queries[kTileQueries][kChunkChannels + 1];
  acc_t keys[kChunkKeys][kChunkChannels + 1];
  acc_t scores[kTileQueries][kChunkKeys];
  int count[kTileQueries];
};

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) {
  return a < b ? a : b;
}

__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) {
  return a > b ? a : b;
}

template <typename acc_t>
__device__ __forceinline__ acc_t lowest() {
  return -INFINITY;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    topk_window_kernel(const scalar_t* __restrict__ query,  // (B, H, W, C)
                       const scalar_t* __restrict__ keys,   // (B, T, H, W, C)
                       const int64_t* __restrict__ half_widths,  // (H)
                       int64_t frames, int64_t channels, int64_t height,
                       int64_t width, int64_t topk, int64_t stored_topk,
                       int64_t unrestricted, double temperature,
                       acc_t* __restrict__ weights,  // (B, H, W, topk)
                       int64_t* __restrict__ indices) {
  extern __shared__ unsigned char smem_raw[];
  auto& smem = *reinterpret_cast<SharedLayout<acc_t>*>(smem_raw);
  // Sorted top-k of each query of the tile: values, then indices.
  acc_t* top_values = reinterpret_cast<acc_t*>(smem_raw + sizeof(smem));
  int64_t* top_indices = reinterpret_cast<int64_t*>(
      top_values + kTileQueries * stored_topk);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t x0 = static_cast<int64_t>(blockIdx.x) * kTileQueries;
  const int64_t y = blockIdx.y, b = blockIdx.z;
  const int64_t hw = height * width;
  const int64_t tile = imin(kTileQueries, width - x0);
  const scalar_t* row_query = query + ((b * height + y) * width + x0) *
                                          channels;
  const scalar_t* batch_keys = keys + b * frames * hw * channels;
  if (tid < kTileQueries) smem.count[tid] = 0;
  __syncthreads();

  // Thread -> (query, 8 keys) of the score tile.
  const int my_query = tid / (kThreads / kTileQueries);
  const int my_key0 = tid % (kThreads / kTileQueries);

  // Scores keys [first, first + n) (consecutive flat indices, all in frame
  // t) and offers them. `half` < 0: unrestricted; else key (ky, kx) is
  // eligible for query x iff |kx - x| <= half.
  auto process_segment = [&](int64_t first, int64_t n, int64_t key_x0,
                             int64_t half) {
    for (int64_t c0 = 0; c0 < n; c0 += kChunkKeys) {
      const int64_t nk = imin(kChunkKeys, n - c0);
      acc_t acc[kKeysPerThread];
#pragma unroll
      for (int i = 0; i < kKeysPerThread; ++i) acc[i] = 0;
      for (int64_t ch = 0; ch < channels; ch += kChunkChannels) {
        const int64_t nc = imin(kChunkChannels, channels - ch);
        for (int e = tid; e < kTileQueries * kChunkChannels; e += kThreads) {
          const int q = e / kChunkChannels, c = e % kChunkChannels;
          smem.queries[q][c] =
              (q < tile && c < nc)
                  ? static_cast<acc_t>(row_query[q * channels + ch + c])
                  : acc_t(0);
        }
        for (int e = tid; e < kChunkKeys * kChunkChannels; e += kThreads) {
          const int k = e / kChunkChannels, c = e % kChunkChannels;
          smem.keys[k][c] =
              (k < nk && c < nc)
                  ? static_cast<acc_t>(
                        batch_keys[(first + c0 + k) * channels + ch + c])
                  : acc_t(0);
        }
        __syncthreads();
#pragma unroll 8
        for (int c = 0; c < kChunkChannels; ++c) {
          const acc_t qv = smem.queries[my_query][c];
#pragma unroll
          for (int i = 0; i < kKeysPerThread; ++i)
            acc[i] += qv * smem.keys[my_key0 + i * (kThreads / kTileQueries)][c];
        }
        __syncthreads();
      }
#pragma unroll
      for (int i = 0; i < kKeysPerThread; ++i)
        smem.scores[my_query][my_key0 + i * (kThreads / kTileQueries)] = acc[i];
      __syncthreads();

      // Offer: each warp serves kTileQueries / 8 queries; lane 0 inserts
      // the candidates above the threshold in key order.
      for (int q = warp; q < tile; q += kThreads / 32) {
        acc_t* values = top_values + q * stored_topk;
        int64_t* slots = top_indices + q * stored_topk;
        for (int half_chunk = 0; half_chunk < kChunkKeys; half_chunk += 32) {
          const int j = half_chunk + lane;
          const acc_t s = smem.scores[q][j];
          const int count = smem.count[q];
          const acc_t threshold =
              count < stored_topk ? lowest<acc_t>() : values[stored_topk - 1];
          const int64_t dx = key_x0 + c0 + j - (x0 + q);
          const bool eligible =
              j < nk && (half < 0 || (dx <= half && -dx <= half));
          unsigned mask = __ballot_sync(0xffffffffu, eligible && s > threshold);
          if (lane == 0) {
            while (mask) {
              const int bit = __ffs(mask) - 1;
              mask &= mask - 1;
              const acc_t v = smem.scores[q][half_chunk + bit];
              int n_top = smem.count[q];
              if (n_top == stored_topk && !(v > values[stored_topk - 1]))
                continue;
              int pos = n_top < stored_topk ? n_top++ : stored_topk - 1;
              while (pos > 0 && values[pos - 1] < v) {
                values[pos] = values[pos - 1];
                slots[pos] = slots[pos - 1];
                --pos;
              }
              values[pos] = v;
              slots[pos] = first + c0 + half_chunk + bit;
              smem.count[q] = n_top;
            }
          }
          __syncwarp();
        }
      }
      __syncthreads();
    }
  };

  for (int64_t t = 0; t < unrestricted; ++t)
    process_segment(t * hw, hw, 0, -1);
  for (int64_t t = unrestricted; t < frames; ++t) {
    for (int64_t ky = 0; ky < height; ++ky) {
      const int64_t half = half_widths[ky > y ? ky - y : y - ky];
      if (half < 0) continue;
      const int64_t lo = imax(0, x0 - half);
      const int64_t hi = imin(width - 1, x0 + tile - 1 + half);
      process_segment(t * hw + ky * width + lo, hi - lo + 1, lo, half);
    }
  }

  if (tid < tile) {
    const int64_t out = ((b * height + y) * width + x0 + tid) * topk;
    write_topk_softmax<acc_t>(top_values + tid * stored_topk,
                              top_indices + tid * stored_topk,
                              smem.count[tid], topk, temperature,
                              weights + out, indices + out);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_cuda(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys) {
  check_neighbours_args(query, keys, topk, radius, temperature,
                        unrestricted_keys);
  const c10::cuda::CUDAGuard guard(query.device());
  const int64_t batch = keys.size(0), frames = keys.size(1),
                channels = keys.size(2), height = keys.size(3),
                width = keys.size(4);
  const auto half = window_half_widths(radius, height, width);
  // The most keys one query can see: beyond that, slots are padding.
  int64_t window = 0;
  for (int64_t dy = 0; dy < height; ++dy)
    if (half[dy] >= 0)
      window += (dy == 0 ? 1 : 2) * std::min(2 * half[dy] + 1, width);
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
  const auto q = query.permute({0, 2, 3, 1}).contiguous();
  const auto k = keys_channels_last(keys);
  const auto half_widths =
      at::tensor(half, at::TensorOptions().dtype(at::kLong))
          .to(query.device());
  const dim3 grid((width + kTileQueries - 1) / kTileQueries, height, batch);
  auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "topk_window_neighbours_cuda",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const size_t shared =
            sizeof(SharedLayout<acc_t>) +
            kTileQueries * stored_topk * (sizeof(acc_t) + sizeof(int64_t));
        // Checked here rather than left to the launch, whose error names
        // neither the cause nor the way out.
        int optin = 0;
        C10_CUDA_CHECK(cudaDeviceGetAttribute(
            &optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
            query.device().index()));
        const size_t available = static_cast<size_t>(optin);
        TORCH_CHECK_VALUE(
            shared <= available, "topk_window_match: topk=", topk, " in ",
            q.scalar_type(), " needs ", shared / 1024,
            " KiB of shared memory per block; this GPU offers ",
            available / 1024, " KiB. Use a smaller topk or float32 features");
        auto kernel = topk_window_kernel<scalar_t, acc_t>;
        C10_CUDA_CHECK(cudaFuncSetAttribute(
            kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
            static_cast<int>(shared)));
        kernel<<<grid, kThreads, shared, stream>>>(
            q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
            half_widths.data_ptr<int64_t>(), frames, channels, height, width,
            topk, stored_topk, unrestricted_keys, temperature,
            weights.data_ptr<acc_t>(), indices.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {weights, indices};
}

TORCH_LIBRARY_IMPL(sfc, CUDA, m) {
  m.impl("topk_window_neighbours", &topk_window_neighbours_cuda);
}

}  // namespace ops
}  // namespace sfc_plugin
