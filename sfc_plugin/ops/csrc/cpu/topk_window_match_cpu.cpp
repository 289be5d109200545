// CPU kernel of sfc::topk_window_neighbours.
//
// Each task is one query row. Its queries go in groups of kQueries adjacent
// positions; a group is scored against the keys its members may see, in a
// register-blocked micro-kernel (kQueries x kKeys dot products over C, in
// SIMD vectors), and every score goes straight into its query's running
// top-k. No affinity matrix is ever stored.
//
// - Unrestricted frames: the whole frame, in blocks of keys small enough to
//   stay in L2 while the groups of the row sweep over them.
// - Restricted frames: on each key row the window reaches, the union of the
//   group members' intervals, so a group wastes only kQueries - 1 keys per
//   row; the key row stays in cache while the groups sweep along it.
//
// Keys are visited in increasing flat index for every query and a score
// must beat the current k-th strictly, so among equal affinities the key
// with the lower (t, y, x) index wins.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iomanip>
#include <limits>
#include <sstream>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../topk_window_match.h"

namespace sfc_plugin {
namespace ops {
namespace {

constexpr int kQueries = 4;
constexpr int kKeys = 4;
// Bytes of keys scored together against one query row (L2-resident).
constexpr int64_t kKeyBlockBytes = 256 * 1024;

// GNU vector extensions (GCC, Clang): 64-byte SIMD vectors (one AVX-512 register, two AVX2 ones, ...).
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int kLanes = 64 / sizeof(T);

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}


// Horizontal sums of the kQueries x kKeys accumulators into
// out[j * kQueries + m] (key-major: one query's scores come in key order).
template <typename T, typename V>
inline void reduce_accumulators(const V acc[kQueries][kKeys], T* out) {
  for (int m = 0; m < kQueries; ++m)
    for (int j = 0; j < kKeys; ++j) {
      T sum = 0;
      for (int l = 0; l < kLanes<T>; ++l) sum += acc[m][j][l];
      out[j * kQueries + m] = sum;
    }
}

#if defined(__AVX512F__)
// The 16 float accumulators (as 4 x 4) transposed and summed in a tree of
// 45 shuffles and adds instead of 16 separate horizontal sums: at C = 256
// the separate sums would cost as much as the dot products themselves.
template <>
inline void reduce_accumulators<float, Vec<float>>(
    const Vec<float> acc[kQueries][kKeys], float* out) {
  static_assert(kQueries == 4 && kKeys == 4, "tree assumes 4 x 4");
  __m512 v[16];
  for (int m = 0; m < 4; ++m)
    for (int j = 0; j < 4; ++j) v[m * 4 + j] = (__m512)acc[m][j];
  __m512 half[8];  // 128-bit chunks: [a, a, b, b] partial sums
  for (int i = 0; i < 8; ++i)
    half[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                            _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  __m512 quad[4];  // chunks: [a, b, c, d], four partial sums each
  for (int i = 0; i < 4; ++i)
    quad[i] = _mm512_add_ps(
        _mm512_shuffle_f32x4(half[2 * i], half[2 * i + 1], 0x88),
        _mm512_shuffle_f32x4(half[2 * i], half[2 * i + 1], 0xDD));
  // 4 x 4 transpose within each chunk: element 4c + i sums chunk c of
  // quad[i], i.e. accumulator (m = i, j = c).
  const __m512 u0 = _mm512_add_ps(_mm512_unpacklo_ps(quad[0], quad[1]),
                                  _mm512_unpackhi_ps(quad[0], quad[1]));
  const __m512 u1 = _mm512_add_ps(_mm512_unpacklo_ps(quad[2], quad[3]),
                                  _mm512_unpackhi_ps(quad[2], quad[3]));
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_ps(u0, u1, 0x44),
                                      _mm512_shuffle_ps(u0, u1, 0xEE)));
}
#endif

// out[j * kQueries + m] = <q[m], k[j]> over C channels.
template <typename T>
inline void dot_block(const T* const* q, const T* const* k, int64_t channels,
                      T* out) {
  int64_t c = 0;
  Vec<T> acc[kQueries][kKeys];
  for (int m = 0; m < kQueries; ++m)
    for (int j = 0; j < kKeys; ++j) acc[m][j] = Vec<T>{};
#pragma GCC unroll 4
  for (; c + kLanes<T> <= channels; c += kLanes<T>) {
    Vec<T> kv[kKeys];
    for (int j = 0; j < kKeys; ++j) kv[j] = load<T>(k[j] + c);
    for (int m = 0; m < kQueries; ++m) {
      const Vec<T> qv = load<T>(q[m] + c);
      for (int j = 0; j < kKeys; ++j) acc[m][j] += qv * kv[j];
    }
  }
  reduce_accumulators<T, Vec<T>>(acc, out);
  for (; c < channels; ++c)
    for (int m = 0; m < kQueries; ++m)
      for (int j = 0; j < kKeys; ++j)
        out[j * kQueries + m] += q[m][c] * k[j][c];
}

// Bit j * kQueries + m set where score > threshold[m]: the few scores that
// can enter a top-k. Clears `finite` on NaN or infinite scores.
template <typename T>
inline uint32_t candidates(const T* scores, const T* threshold,
                           bool& finite) {
  uint32_t mask = 0;
  bool ok = true;
  for (int i = 0; i < kQueries * kKeys; ++i) {
    const T s = scores[i];
    ok &= std::isfinite(s);
    mask |= static_cast<uint32_t>(s > threshold[i % kQueries]) << i;
  }
  finite &= ok;
  return mask;
}

#if defined(__AVX512F__)
template <>
inline uint32_t candidates<float>(const float* scores, const float* threshold,
                                  bool& finite) {
  const __m512 s = _mm512_loadu_ps(scores);
  // QNaN | SNaN | +inf | -inf
  finite &= _mm512_fpclass_ps_mask(s, 0x99) == 0;
  return _mm512_cmp_ps_mask(s, _mm512_broadcast_f32x4(_mm_loadu_ps(threshold)),
                            _CMP_GT_OQ);
}
#endif

// Running top-k of one query, sorted in decreasing order.
template <typename T>
struct TopK {
  T* values;
  int64_t* indices;
  int64_t k;
  int64_t count;
  T threshold;  // the k-th value once full: only larger scores enter

  void reset() {
    count = 0;
    threshold = -std::numeric_limits<T>::infinity();
  }

  inline void offer(T value, int64_t index) {
    if (!(value > threshold)) return;
    int64_t pos = count < k ? count++ : k - 1;
    // Equal values stay in front: the earlier (lower-index) key wins.
    while (pos > 0 && values[pos - 1] < value) {
      values[pos] = values[pos - 1];
      indices[pos] = indices[pos - 1];
      --pos;
    }
    values[pos] = value;
    indices[pos] = index;
    if (count == k) threshold = values[k - 1];
  }
};

template <typename T>
struct Problem {
  const T* query;  // (B, C, H, W) with the strides below
  int64_t query_strides[4];
  const T* keys;   // (B, T, H, W, C)
  int64_t frames, channels, height, width, topk, unrestricted;
  double temperature;
  std::vector<int64_t> half_widths;
  T* weights;        // (B, H, W, k)
  int64_t* indices;  // (B, H, W, k)
};

// Scores query row (b, y) against all its eligible keys and writes its
// weights and indices. Returns false if a non-finite affinity was seen.
template <typename T>
bool match_row(const Problem<T>& p, int64_t b, int64_t y,
               std::vector<TopK<T>>& tops, std::vector<T>& row_buffer) {
  const int64_t C = p.channels, H = p.height, W = p.width, HW = H * W;
  // The row's queries as (W, C): read in place when the query is stored
  // channels-last, else gathered into this thread's buffer. Copying one
  // row at a time keeps the extra memory at W·C per thread.
  const int64_t* st = p.query_strides;
  const T* row_start = p.query + b * st[0] + y * st[2];
  const T* row_query = row_start;
  if (st[1] != 1 || st[3] != C) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t x = 0; x < W; ++x)
        row_buffer[x * C + c] = row_start[c * st[1] + x * st[3]];
    row_query = row_buffer.data();
  }
  const T* batch_keys = p.keys + b * p.frames * HW * C;
  bool finite = true;
  alignas(64) T scores[kQueries * kKeys];
  alignas(16) T thresholds[kQueries];
  const T* q[kQueries];
  const T* k[kKeys];
  int64_t x0 = 0, nq = 0;
  for (auto& top : tops) top.reset();

  auto start_group = [&](int64_t x) {
    x0 = x;
    nq = std::min<int64_t>(kQueries, W - x0);
    // Short groups repeat their last query; its extra scores are dropped.
    for (int m = 0; m < kQueries; ++m) {
      q[m] = row_query + (x0 + std::min<int64_t>(m, nq - 1)) * C;
      thresholds[m] = m < nq ? tops[x0 + m].threshold
                             : std::numeric_limits<T>::infinity();
    }
  };
  // Scores the group against keys base[0..nk) (flat index first_index...)
  // and offers them to the top-k of the queries that may see them.
  auto score = [&](const T* base, int64_t nk, int64_t first_index,
                   int64_t first_x, int64_t half_width) {
    for (int j = 0; j < kKeys; ++j)
      k[j] = base + std::min<int64_t>(j, nk - 1) * C;
    dot_block(q, k, C, scores);
    // `thresholds` mirrors the group's top-k thresholds and is refreshed
    // only when one changes: rebuilding it per block costs a store-to-load
    // forwarding stall on every block.
    uint32_t mask = candidates(scores, thresholds, finite) &
                    ((1u << (nk * kQueries)) - 1);
    while (mask) {
      const int bit = __builtin_ctz(mask);
      mask &= mask - 1;
      const int64_t m = bit % kQueries, j = bit / kQueries;
      if (half_width >= 0) {
        const int64_t dx = first_x + j - (x0 + m);
        if (dx > half_width || -dx > half_width) continue;
      }
      tops[x0 + m].offer(scores[bit], first_index + j);
      thresholds[m] = tops[x0 + m].threshold;
    }
  };

  // Unrestricted frames: every position, in blocks of keys that stay in
  // L2 while the groups of the row sweep over them.
  const int64_t block = std::max<int64_t>(
      kKeys, kKeyBlockBytes / (C * static_cast<int64_t>(sizeof(T))));
  for (int64_t t = 0; t < p.unrestricted; ++t) {
    const T* frame = batch_keys + t * HW * C;
    for (int64_t k0 = 0; k0 < HW; k0 += block) {
      const int64_t k1 = std::min(k0 + block, HW);
      for (int64_t x = 0; x < W; x += kQueries) {
        start_group(x);
        for (int64_t j0 = k0; j0 < k1; j0 += kKeys)
          score(frame + j0 * C, std::min<int64_t>(kKeys, k1 - j0),
                t * HW + j0, 0, -1);
      }
    }
  }

  // Restricted frames: the window rows around y.
  for (int64_t t = p.unrestricted; t < p.frames; ++t) {
    for (int64_t ky = 0; ky < H; ++ky) {
      const int64_t hw = p.half_widths[ky > y ? ky - y : y - ky];
      if (hw < 0) continue;
      const T* key_row = batch_keys + (t * HW + ky * W) * C;
      const int64_t row_base = t * HW + ky * W;
      for (int64_t x = 0; x < W; x += kQueries) {
        start_group(x);
        const int64_t lo = std::max<int64_t>(0, x0 - hw);
        const int64_t hi = std::min<int64_t>(W - 1, x0 + nq - 1 + hw);
        for (int64_t kx = lo; kx <= hi; kx += kKeys)
          score(key_row + kx * C, std::min<int64_t>(kKeys, hi - kx + 1),
                row_base + kx, kx, hw);
      }
    }
  }

  for (int64_t x = 0; x < W; ++x) {
    const int64_t out = ((b * H + y) * W + x) * p.topk;
    write_topk_softmax<double>(tops[x].values, tops[x].indices,
                               tops[x].count, p.topk, p.temperature,
                               p.weights + out, p.indices + out);
  }
  return finite;
}

// Largest L2 norm over the channels (dimension `dim`) of finite features.
// Scaled by the largest |x| first: the squares of large features overflow
// even in double.
double max_norm(const at::Tensor& features, int64_t dim) {
  const auto x = features.to(at::kDouble);
  const double scale = x.abs().max().item<double>();
  if (scale == 0) return 0;
  return scale * x.div(scale).norm(2, {dim}).max().item<double>();
}

// Names the cause of a non-finite affinity: non-finite features, or finite
// ones too large for their dot products to fit the dtype. Only runs on
// that error path, so it may read the inputs again.
[[noreturn]] void report_non_finite(const at::Tensor& query,
                                    const at::Tensor& keys_hwc) {
  TORCH_CHECK_VALUE(at::isfinite(query).all().item<bool>(),
                    "topk_window_match: query contain NaN or infinite values");
  TORCH_CHECK_VALUE(at::isfinite(keys_hwc).all().item<bool>(),
                    "topk_window_match: keys contain NaN or infinite values");
  const double norm = std::max(max_norm(query, 1), max_norm(keys_hwc, 4));
  std::ostringstream shown;
  shown << std::scientific << std::setprecision(1) << norm;
  TORCH_CHECK_VALUE(false, "topk_window_match: the affinities overflow ",
                    query.scalar_type() == at::kFloat ? "float32" : "float64",
                    " (features of norm up to ", shown.str(),
                    "; the op expects unit-norm features)");
}

template <typename T>
void neighbours_impl(const at::Tensor& query, const at::Tensor& keys,
                     int64_t topk, double radius, double temperature,
                     int64_t unrestricted, at::Tensor& weights,
                     at::Tensor& indices) {
  const int64_t batch = keys.size(0), height = keys.size(2),
                width = keys.size(3);
  Problem<T> p{query.data_ptr<T>(),
               {query.stride(0), query.stride(1), query.stride(2),
                query.stride(3)},
               keys.data_ptr<T>(),
               keys.size(1),
               keys.size(4),
               height,
               width,
               topk,
               unrestricted,
               temperature,
               window_half_widths(radius, height, width),
               weights.data_ptr<T>(),
               indices.data_ptr<int64_t>()};
  std::atomic<bool> finite{true};
  at::parallel_for(0, batch * height, 1, [&](int64_t begin, int64_t end) {
    // One query row of top-k state per thread.
    std::vector<T> values(width * topk);
    std::vector<int64_t> slots(width * topk);
    std::vector<TopK<T>> tops(width);
    std::vector<T> row_buffer(width * keys.size(4));
    for (int64_t x = 0; x < width; ++x)
      tops[x] = TopK<T>{values.data() + x * topk, slots.data() + x * topk,
                        topk, 0, 0};
    for (int64_t row = begin; row < end; ++row)
      if (!match_row(p, row / height, row % height, tops, row_buffer)) finite = false;
  });
  if (!finite) report_non_finite(query, keys);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_cpu(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys) {
  check_neighbours_args(query, keys, topk, radius, temperature,
                        unrestricted_keys);
  TORCH_CHECK_VALUE(query.scalar_type() == at::kFloat ||
                        query.scalar_type() == at::kDouble,
                    "topk_window_match: the CPU kernel takes float32 or "
                    "float64 features, got ",
                    query.scalar_type(), "; convert with .float()");
  const auto k = keys_channels_last(keys);
  auto weights = at::empty({keys.size(0), keys.size(3), keys.size(4), topk},
                           query.options());
  auto indices = at::empty({keys.size(0), keys.size(3), keys.size(4), topk},
                           query.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "topk_window_neighbours_cpu",
                             [&] {
                               neighbours_impl<scalar_t>(
                                   query, k, topk, radius, temperature,
                                   unrestricted_keys, weights, indices);
                             });
  return {weights, indices};
}

TORCH_LIBRARY_IMPL(sfc, CPU, m) {
  m.impl("topk_window_neighbours", &topk_window_neighbours_cpu);
}

}  // namespace ops
}  // namespace sfc_plugin
