// CPU kernel of sfc::topk_window_neighbours.
//
// Each task is a run of up to kRows query rows. Their queries go in groups
// of kQueries adjacent positions; a group is scored against the keys its
// members may see, in a register-blocked micro-kernel (kQueries x kKeys dot
// products over C, in SIMD vectors), and the scores that beat a query's
// k-th go into its running top-k. No affinity matrix is ever stored.
//
// - Unrestricted frames: the whole frame, in blocks of keys small enough to
//   stay in L2 while the groups of the rows sweep over them.
// - Restricted frames: on each key row some row's window reaches, the union
//   of the group members' intervals, so a group wastes only kQueries - 1
//   keys per row; the key row comes from memory once for the run of rows
//   and stays in cache while their groups sweep along it.
//
// Keys are visited in increasing flat index for every query and a score
// must beat the current k-th strictly, so among equal affinities the key
// with the lower (t, y, x) index wins.
//
// bfloat16 features are scored with float32 accumulation and give float32
// weights. Where the CPU has AVX512_BF16 a micro-kernel on vdpbf16ps (two
// bf16 products per float32 lane and instruction: twice the float32 FMA
// rate, on half the bytes) scores them; it is compiled with a function-level
// target and chosen at run time, so the library still loads and runs on
// CPUs without it. Elsewhere, or with SFC_PLUGIN_DISABLE_BF16_DOT set (not
// to 0), each key block is widened to float32 once and the float32
// micro-kernel scores it. Products of bf16 values are exact in float32, so
// the two differ only in the order of the float32 additions.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <limits>
#include <sstream>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SFC_X86_TARGETS 1
// The avx512bf16 target and __builtin_cpu_supports("avx512bf16"): GCC 10
// on (built here with GCC 12); Clang only from a version surely past both.
#if defined(__clang__) ? __clang_major__ >= 16 : __GNUC__ >= 10
#define SFC_BF16_DOT 1
#endif
#endif

#include "../topk_window_match.h"

namespace sfc_plugin {
namespace ops {
namespace {

constexpr int kQueries = 4;
constexpr int kKeys = 4;
// Keys scored against a group before their candidates are offered (a
// multiple of kKeys).
constexpr int64_t kBatchKeys = 256;
// Bytes of keys scored together against the query rows (L2-resident).
constexpr int64_t kKeyBlockBytes = 256 * 1024;
// Query rows matched together (see match_rows).
constexpr int64_t kRows = 16;

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

#if defined(SFC_X86_TARGETS)
// The 16 float accumulators (acc[m * 4 + j]) transposed and summed in a
// tree of 45 shuffles and adds into out[j * 4 + m], instead of 16 separate
// horizontal sums: at C = 256 the separate sums would cost as much as the
// dot products themselves. Every sum takes the same path through the tree,
// so a score does not depend on the slot its query and key occupy (equal
// keys tie exactly). Its own target: the bf16 micro-kernel needs it where
// the rest of the library is built without AVX-512.
__attribute__((target("avx512f"), always_inline)) inline void sum_4x4(
    const __m512* v, float* out) {
  static_assert(kQueries == 4 && kKeys == 4, "tree assumes 4 x 4");
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

#if defined(__AVX512F__)
template <>
inline void reduce_accumulators<float, Vec<float>>(
    const Vec<float> acc[kQueries][kKeys], float* out) {
  __m512 v[16];
  for (int m = 0; m < 4; ++m)
    for (int j = 0; j < 4; ++j) v[m * 4 + j] = (__m512)acc[m][j];
  sum_4x4(v, out);
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
      for (int j = 0; j < kKeys; ++j) {
        if constexpr (std::is_same<T, float>::value) {
          // An explicit fma: GCC fused `+= q * k` in some inlined copies
          // of the float kernel and not in others, so with C not a
          // multiple of 16 equal keys in unrestricted and restricted frames
          // scored an ulp apart, against the tie rule. The float64 tail
          // compiles consistently and is left as it was (bit-identical).
          out[j * kQueries + m] =
              std::fma(q[m][c], k[j][c], out[j * kQueries + m]);
        } else {
          out[j * kQueries + m] += q[m][c] * k[j][c];
        }
      }
}

#if defined(SFC_BF16_DOT)
#define SFC_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

// acc[m * kKeys + j] += pairwise products of q[m] and k[j]. A function of
// the target, not a lambda: lambdas do not inherit target attributes.
SFC_TARGET_BF16 __attribute__((always_inline)) inline void accumulate_bf16(
    __m512* acc, const __m512bh* q, const __m512bh* k) {
  for (int m = 0; m < kQueries; ++m)
    for (int j = 0; j < kKeys; ++j)
      acc[m * kKeys + j] = _mm512_dpbf16_ps(acc[m * kKeys + j], q[m], k[j]);
}

// dot_block for bf16 features: vdpbf16ps multiplies 32 adjacent bf16 pairs
// and adds each pair's two products to one float32 lane. Channels-last
// rows already hold adjacent channels side by side, which is the pair
// layout the instruction wants: no repacking. vdpbf16ps flushes denormal
// inputs and results to zero whatever MXCSR says; at the scale of
// unit-norm features that changes no score.
SFC_TARGET_BF16 inline void dot_block_bf16(const c10::BFloat16* const* q,
                                           const c10::BFloat16* const* k,
                                           int64_t channels, float* out) {
  constexpr int kPairLanes = 32;  // bf16 values per 512-bit register
  __m512 acc[kQueries * kKeys];
  for (int i = 0; i < kQueries * kKeys; ++i) acc[i] = _mm512_setzero_ps();
  __m512bh qv[kQueries], kv[kKeys];
  int64_t c = 0;
#pragma GCC unroll 2
  for (; c + kPairLanes <= channels; c += kPairLanes) {
    for (int j = 0; j < kKeys; ++j)
      kv[j] = (__m512bh)_mm512_loadu_si512(k[j] + c);
    for (int m = 0; m < kQueries; ++m)
      qv[m] = (__m512bh)_mm512_loadu_si512(q[m] + c);
    accumulate_bf16(acc, qv, kv);
  }
  if (c < channels) {
    // The tail in one masked step: lanes past C load as +0 and add +0.
    const __mmask32 tail = static_cast<__mmask32>((1u << (channels - c)) - 1);
    for (int j = 0; j < kKeys; ++j)
      kv[j] = (__m512bh)_mm512_maskz_loadu_epi16(tail, k[j] + c);
    for (int m = 0; m < kQueries; ++m)
      qv[m] = (__m512bh)_mm512_maskz_loadu_epi16(tail, q[m] + c);
    accumulate_bf16(acc, qv, kv);
  }
  sum_4x4(acc, out);
}
#endif

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

// Beyond this many neighbours a top-k collects into a binary heap, a
// score costing O(log k) instead of the O(k) of a shift, and is sorted
// once at the end. The two break even at about k = 200 (480p, C = 256,
// T = 21, r' = 12: shifts 13% faster at k = 65, as fast at 200, 2.7× slower
// at 1000); at k = 15 200 (topk=10^8 clamped to a DAVIS window's keys)
// the shifts took 80 s a frame.
constexpr int64_t kHeapTopK = 200;

// Running top-k of one query: sorted in decreasing order, or while
// collecting past kHeapTopK a heap with the worst entry kept first, until
// finish() sorts it. Keys are offered in increasing index order, so of
// equal values the earlier key stays and the later one is the worse.
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
    if (value > threshold) shift_in(value, index);
  }

  // Takes a score above the threshold, dropping the worst of a full list.
  inline void shift_in(T value, int64_t index) {
    if (k > kHeapTopK) {
      if (count < k)
        sift_up(count++, value, index);
      else
        sift_down(0, count, value, index);
      if (count == k) threshold = values[0];
      return;
    }
    count = insert_sorted(values, indices, count, k, value, index);
    if (count == k) threshold = values[k - 1];
  }

  // The list in decreasing order (a heap is sorted; a short list is).
  void finish() {
    if (k <= kHeapTopK) return;
    for (int64_t end = count - 1; end > 0; --end) {
      const T value = values[end];
      const int64_t index = indices[end];
      values[end] = values[0];
      indices[end] = indices[0];
      sift_down(0, end, value, index);
    }
  }

 private:
  // Whether entry a ranks below entry b.
  static bool worse(T a, int64_t a_index, T b, int64_t b_index) {
    return a < b || (a == b && a_index > b_index);
  }

  // Places an entry at `pos` of the heap, moving the better parents down.
  void sift_up(int64_t pos, T value, int64_t index) {
    while (pos > 0) {
      const int64_t parent = (pos - 1) / 2;
      if (!worse(value, index, values[parent], indices[parent])) break;
      values[pos] = values[parent];
      indices[pos] = indices[parent];
      pos = parent;
    }
    values[pos] = value;
    indices[pos] = index;
  }

  // Places an entry at `pos` of a heap of `size`, moving the worse
  // children up.
  void sift_down(int64_t pos, int64_t size, T value, int64_t index) {
    for (int64_t child = 2 * pos + 1; child < size; child = 2 * pos + 1) {
      if (child + 1 < size && worse(values[child + 1], indices[child + 1],
                                    values[child], indices[child]))
        ++child;
      if (!worse(values[child], indices[child], value, index)) break;
      values[pos] = values[child];
      indices[pos] = indices[child];
      pos = child;
    }
    values[pos] = value;
    indices[pos] = index;
  }
};

#if defined(__AVX512F__)
// Float top-k of up to kVectorTopK keys take a score in a few vector
// blends instead of the shifting loop, whose exit a random score
// mispredicts; the order is the same (a score goes before the first
// smaller value, so equal values keep the earlier key in front). values
// and indices hold kVectorTopK slots, sorted in decreasing order over all
// of them: the slots from count on hold -inf or scores pushed out.
constexpr int64_t kVectorTopK = 16;

template <>
inline void TopK<float>::reset() {
  count = 0;
  threshold = -std::numeric_limits<float>::infinity();
  if (k <= kVectorTopK)
    _mm512_storeu_ps(values,
                     _mm512_set1_ps(-std::numeric_limits<float>::infinity()));
}

// Inserts a score into 16 sorted slots: the slots from the first value
// below it on (a suffix: the values are sorted) take the slot before
// them, and the first takes the score. Not inlined: inlined into the row
// loop, it made the float32 step 4% slower (480p, C = 256: 0.133 against
// 0.128 s), and bf16 gained nothing from it.
__attribute__((noinline)) void shift_in_16(float* values, int64_t* indices,
                                           float value, int64_t index) {
  const __m512 v = _mm512_loadu_ps(values);
  const __mmask16 below =
      _mm512_cmp_ps_mask(v, _mm512_set1_ps(value), _CMP_LT_OQ);
  const __mmask16 moved = static_cast<__mmask16>(below << 1);
  const __m512i previous =
      _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0);
  _mm512_storeu_ps(
      values,
      _mm512_mask_blend_ps(
          below, v,
          _mm512_mask_blend_ps(moved, _mm512_set1_ps(value),
                               _mm512_permutexvar_ps(previous, v))));
  const __m512i low = _mm512_loadu_si512(indices);
  const __m512i high = _mm512_loadu_si512(indices + 8);
  const __m512i id = _mm512_set1_epi64(index);
  const __m512i low_previous = _mm512_set_epi64(6, 5, 4, 3, 2, 1, 0, 0);
  // Indices 8-15 of (low, high): slot 8 takes low's 7.
  const __m512i high_previous =
      _mm512_set_epi64(14, 13, 12, 11, 10, 9, 8, 7);
  _mm512_storeu_si512(
      indices,
      _mm512_mask_blend_epi64(
          static_cast<__mmask8>(below), low,
          _mm512_mask_blend_epi64(
              static_cast<__mmask8>(moved), id,
              _mm512_permutexvar_epi64(low_previous, low))));
  _mm512_storeu_si512(
      indices + 8,
      _mm512_mask_blend_epi64(
          static_cast<__mmask8>(below >> 8), high,
          _mm512_mask_blend_epi64(
              static_cast<__mmask8>(moved >> 8), id,
              _mm512_permutex2var_epi64(low, high_previous, high))));
}

template <>
inline void TopK<float>::offer(float value, int64_t index) {
  if (!(value > threshold)) return;
  if (k > kVectorTopK) return shift_in(value, index);
  shift_in_16(values, indices, value, index);
  if (count < k) ++count;
  if (count == k) threshold = values[k - 1];
}
#endif

// How a variant of the kernel reads and scores features. Storage: the
// features' type in memory; In: what its micro-kernel multiplies (keys are
// converted block by block where the two differ); Score: what it
// accumulates, ranks and writes the weights in.
template <typename T>
struct NativeScoring {
  using Storage = T;
  using In = T;
  using Score = T;
  static void dot(const In* const* q, const In* const* k, int64_t channels,
                  Score* out) {
    dot_block(q, k, channels, out);
  }
};

// bf16 through the float32 micro-kernel: the portable path.
struct Bf16ViaFloat32 {
  using Storage = c10::BFloat16;
  using In = float;
  using Score = float;
  static void dot(const In* const* q, const In* const* k, int64_t channels,
                  Score* out) {
    dot_block(q, k, channels, out);
  }
};

#if defined(SFC_BF16_DOT)
// bf16 through vdpbf16ps (dot_block_bf16).
struct Bf16Dot {
  using Storage = c10::BFloat16;
  using In = c10::BFloat16;
  using Score = float;
  SFC_TARGET_BF16 static void dot(const In* const* q, const In* const* k,
                                  int64_t channels, Score* out) {
    dot_block_bf16(q, k, channels, out);
  }
};
#endif

template <typename Scoring>
struct Problem {
  using S = typename Scoring::Storage;
  const S* query;  // (B, C, H, W) with the strides below
  int64_t query_strides[4];
  const S* keys;   // (B, T, H, W, C)
  int64_t frames, channels, height, width, topk, unrestricted;
  double temperature;
  std::vector<int64_t> half_widths;
  typename Scoring::Score* weights;  // (B, H, W, k)
  int64_t* indices;                  // (B, H, W, k)
};

// One thread's working memory for up to kRows query rows of width W.
template <typename Scoring>
struct RowState {
  using In = typename Scoring::In;
  using Score = typename Scoring::Score;
  std::vector<Score> values;
  std::vector<int64_t> slots;
  std::vector<TopK<Score>> tops;  // (kRows, W)
  std::vector<In> row_buffer;     // gathered query rows, (kRows, W, C)
  std::vector<In> key_buffer;     // converted keys; empty if none need it

  // Room for each query's top-k: kVectorTopK slots for TopK<float>'s
  // vector insertion.
  static int64_t slots_per_query(int64_t topk) {
#if defined(__AVX512F__)
    if (std::is_same<Score, float>::value && topk <= kVectorTopK)
      return kVectorTopK;
#endif
    return topk;
  }

  RowState(int64_t width, int64_t channels, int64_t topk, int64_t key_block,
           bool gather_queries)
      : values(kRows * width * slots_per_query(topk)),
        slots(kRows * width * slots_per_query(topk)),
        tops(kRows * width),
        row_buffer(gather_queries ? kRows * width * channels : 0),
        key_buffer(std::is_same<In, typename Scoring::Storage>::value
                       ? 0
                       : std::max(width, key_block) * channels) {
    for (int64_t i = 0; i < kRows * width; ++i)
      tops[i] = TopK<Score>{values.data() + i * slots_per_query(topk),
                            slots.data() + i * slots_per_query(topk), topk,
                            0, 0};
  }
};

// Keys per block of the unrestricted frames: kKeyBlockBytes of what the
// micro-kernel reads.
template <typename Scoring>
int64_t key_block(int64_t channels) {
  const auto bytes = static_cast<int64_t>(sizeof(typename Scoring::In));
  return std::max<int64_t>(kKeys, kKeyBlockBytes / (channels * bytes));
}

// Whether query rows must be copied: stored other than channels-last, or
// in another type than the micro-kernel reads.
template <typename Scoring>
bool gathers_queries(const Problem<Scoring>& p) {
  return !std::is_same<typename Scoring::In,
                       typename Scoring::Storage>::value ||
         p.query_strides[1] != 1 || p.query_strides[3] != p.channels;
}

// n features as the micro-kernel's input type: in place where it reads
// them as stored, else converted into `buffer`.
template <typename In, typename S>
inline const In* as_input(const S* features, int64_t n,
                          std::vector<In>& buffer) {
  if constexpr (std::is_same<In, S>::value) {
    return features;
  } else {
    for (int64_t i = 0; i < n; ++i) buffer[i] = static_cast<In>(features[i]);
    return buffer.data();
  }
}

// Scores query rows [y0, y1) of batch item b (at most kRows) against all
// their eligible keys and writes their weights and indices. Returns false
// if a non-finite affinity was seen.
//
// The rows go together so that each block of keys, and each key row of
// the restricted frames, comes from memory once for all of them. One row
// at a time read its (T-1)·(2r'-1) key rows again for every query row, and
// at 480p with T = 21 and r' = 12 they do not stay in L3 (50 MB at C = 256
// in float32, 25 MB in bf16): runs of 8 rows made the step up to 1.6x
// faster, and runs of 16, which read each key row 2.5 times a step instead
// of 4, took the bf16 step at C = 256 from 0.077 to 0.072 s (float32,
// twice the arithmetic per byte, hardly moved; 24 or 32 gained nothing
// more). Every query still sees its keys in increasing flat index.
template <typename Scoring>
bool match_rows(const Problem<Scoring>& p, int64_t b, int64_t y0, int64_t y1,
                RowState<Scoring>& state) {
  using S = typename Scoring::Storage;
  using In = typename Scoring::In;
  using T = typename Scoring::Score;
  const int64_t C = p.channels, H = p.height, W = p.width, HW = H * W;
  const int64_t rows = y1 - y0;
  // Each row's queries as (W, C): read in place when the query is stored
  // channels-last in the micro-kernel's type, else gathered into this
  // thread's buffer (kRows·W·C values, not a copy of the whole query).
  const int64_t* st = p.query_strides;
  const bool gather = gathers_queries(p);
  const In* row_query[kRows];
  for (int64_t r = 0; r < rows; ++r) {
    const S* row_start = p.query + b * st[0] + (y0 + r) * st[2];
    if (!gather) {
      row_query[r] = reinterpret_cast<const In*>(row_start);
      continue;
    }
    In* buffer = state.row_buffer.data() + r * W * C;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t x = 0; x < W; ++x)
        buffer[x * C + c] = static_cast<In>(row_start[c * st[1] + x * st[3]]);
    row_query[r] = buffer;
  }
  const S* batch_keys = p.keys + b * p.frames * HW * C;
  bool finite = true;
  alignas(64) T scores[kBatchKeys * kQueries];
  uint32_t queued_masks[kBatchKeys / kKeys];
  int32_t queued_blocks[kBatchKeys / kKeys];
  alignas(16) T thresholds[kQueries];
  const In* q[kQueries];
  const In* k[kKeys];
  TopK<T>* tops = nullptr;  // the group's row
  int64_t x0 = 0, nq = 0;
  for (int64_t i = 0; i < rows * W; ++i) state.tops[i].reset();

  auto start_group = [&](int64_t r, int64_t x) {
    tops = state.tops.data() + r * W;
    x0 = x;
    nq = std::min<int64_t>(kQueries, W - x0);
    // Short groups repeat their last query; its extra scores are dropped.
    for (int m = 0; m < kQueries; ++m) {
      q[m] = row_query[r] + (x0 + std::min<int64_t>(m, nq - 1)) * C;
      thresholds[m] = m < nq ? tops[x0 + m].threshold
                             : std::numeric_limits<T>::infinity();
    }
  };
  // Scores the group against keys base[0..n) (flat index first_index...)
  // and offers them, in key order, to the top-k of the queries that may
  // see them. Blocks of kKeys keys are scored and screened against the
  // thresholds as they stood at the start of a batch, and only then are
  // the candidates offered: the dot products of a batch run with no
  // data-dependent branch between them, so a mispredicted offer no longer
  // flushes the next blocks' dot products in flight (about 5% of the bf16
  // time at C = 256; float32 blocks, twice as long, lose less). A stale
  // threshold only lets more scores through to offer(), which compares
  // against the current one.
  auto score = [&](const In* base, int64_t n, int64_t first_index,
                   int64_t first_x, int64_t half_width) {
    for (int64_t b0 = 0; b0 < n; b0 += kBatchKeys) {
      const int64_t nb = std::min(kBatchKeys, n - b0);
      int queued = 0;
      for (int64_t j0 = 0; j0 < nb; j0 += kKeys) {
        const int64_t nk = std::min<int64_t>(kKeys, nb - j0);
        for (int j = 0; j < kKeys; ++j)
          k[j] = base + (b0 + std::min<int64_t>(j0 + j, nb - 1)) * C;
        T* block = scores + j0 * kQueries;
        Scoring::dot(q, k, C, block);
        // `thresholds` mirrors the group's top-k thresholds and is
        // refreshed only when one changes: rebuilding it per block costs a
        // store-to-load forwarding stall on every block.
        const uint32_t mask = candidates(block, thresholds, finite) &
                              ((1u << (nk * kQueries)) - 1);
        queued_masks[queued] = mask;
        queued_blocks[queued] = static_cast<int32_t>(j0);
        queued += mask != 0;
      }
      for (int i = 0; i < queued; ++i) {
        const int64_t j0 = queued_blocks[i];
        const T* block = scores + j0 * kQueries;
        for (uint32_t mask = queued_masks[i]; mask; mask &= mask - 1) {
          const int bit = __builtin_ctz(mask);
          const int64_t m = bit % kQueries, j = b0 + j0 + bit / kQueries;
          if (half_width >= 0) {
            const int64_t dx = first_x + j - (x0 + m);
            if (dx > half_width || -dx > half_width) continue;
          }
          tops[x0 + m].offer(block[bit], first_index + j);
          thresholds[m] = tops[x0 + m].threshold;
        }
      }
    }
  };

  // Unrestricted frames: every position, in blocks of keys that stay in
  // L2 while the groups of the rows sweep over them.
  const int64_t block = key_block<Scoring>(C);
  for (int64_t t = 0; t < p.unrestricted; ++t) {
    const S* frame = batch_keys + t * HW * C;
    for (int64_t k0 = 0; k0 < HW; k0 += block) {
      const int64_t k1 = std::min(k0 + block, HW);
      const In* keys = as_input(frame + k0 * C, (k1 - k0) * C,
                                state.key_buffer);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t x = 0; x < W; x += kQueries) {
          start_group(r, x);
          score(keys, k1 - k0, t * HW + k0, 0, -1);
        }
    }
  }

  // Restricted frames: every key row some row's window reaches, swept
  // once; a group's window of it stays in L1 while the rows take turns.
  int64_t reach = 0;  // window rows each side, the query's own included
  while (reach < H && p.half_widths[reach] >= 0) ++reach;
  const int64_t ky0 = std::max<int64_t>(0, y0 - reach + 1);
  const int64_t ky1 = std::min<int64_t>(H, y1 + reach - 1);
  for (int64_t t = p.unrestricted; t < p.frames; ++t) {
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      const int64_t row_base = t * HW + ky * W;
      const In* key_row =
          as_input(batch_keys + row_base * C, W * C, state.key_buffer);
      for (int64_t x = 0; x < W; x += kQueries)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t y = y0 + r;
          const int64_t hw = p.half_widths[ky > y ? ky - y : y - ky];
          if (hw < 0) continue;
          start_group(r, x);
          const int64_t lo = std::max<int64_t>(0, x0 - hw);
          const int64_t hi = std::min<int64_t>(W - 1, x0 + nq - 1 + hw);
          score(key_row + lo * C, hi - lo + 1, row_base + lo, lo, hw);
        }
    }
  }

  for (int64_t r = 0; r < rows; ++r)
    for (int64_t x = 0; x < W; ++x) {
      TopK<T>& top = state.tops[r * W + x];
      top.finish();
      const int64_t out = ((b * H + y0 + r) * W + x) * p.topk;
      write_topk_softmax<double>(top.values, top.indices, top.count, p.topk,
                                 p.temperature, p.weights + out,
                                 p.indices + out);
    }
  return finite;
}

template <typename Scoring>
struct RowMatcher {
  static bool run(const Problem<Scoring>& p, int64_t b, int64_t y0,
                  int64_t y1, RowState<Scoring>& state) {
    return match_rows(p, b, y0, y1, state);
  }
};

#if defined(SFC_BF16_DOT)
// The whole row loop compiled for the bf16 target, so that the micro-kernel
// inlines into it: a call per 4 x 4 block, each with the vzeroupper the ABI
// puts before it, made the bf16 path about 40% slower at C = 256.
template <>
struct RowMatcher<Bf16Dot> {
  SFC_TARGET_BF16 __attribute__((flatten)) static bool run(
      const Problem<Bf16Dot>& p, int64_t b, int64_t y0, int64_t y1,
      RowState<Bf16Dot>& state) {
    return match_rows(p, b, y0, y1, state);
  }
};
#endif

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
                    // bf16 accumulates in float32
                    query.scalar_type() == at::kDouble ? "float64" : "float32",
                    " (features of norm up to ", shown.str(),
                    "; the op expects unit-norm features)");
}

template <typename Scoring>
void neighbours_impl(const at::Tensor& query, const at::Tensor& keys,
                     int64_t topk, double radius, double temperature,
                     int64_t unrestricted, at::Tensor& weights,
                     at::Tensor& indices) {
  using S = typename Scoring::Storage;
  const int64_t batch = keys.size(0), height = keys.size(2),
                width = keys.size(3), channels = keys.size(4);
  Problem<Scoring> p{query.data_ptr<S>(),
                     {query.stride(0), query.stride(1), query.stride(2),
                      query.stride(3)},
                     keys.data_ptr<S>(),
                     keys.size(1),
                     channels,
                     height,
                     width,
                     topk,
                     unrestricted,
                     temperature,
                     window_half_widths(radius, height, width),
                     weights.data_ptr<typename Scoring::Score>(),
                     indices.data_ptr<int64_t>()};
  std::atomic<bool> finite{true};
  at::parallel_for(0, batch * height, 1, [&](int64_t begin, int64_t end) {
    // kRows query rows of top-k state per thread.
    RowState<Scoring> state(width, channels, topk,
                            key_block<Scoring>(channels), gathers_queries(p));
    // Runs of at most kRows rows of one batch item.
    for (int64_t row = begin; row < end;) {
      const int64_t b = row / height, y0 = row % height;
      const int64_t y1 = std::min({height, y0 + kRows, y0 + end - row});
      if (!RowMatcher<Scoring>::run(p, b, y0, y1, state)) finite = false;
      row += y1 - y0;
    }
  });
  if (!finite) report_non_finite(query, keys);
}

// Why bf16 features take the float32 path, or nullptr where the vdpbf16ps
// micro-kernel scores them.
const char* cpu_bf16_fallback_reason() {
  // Read on every call, so that a process (a test) can switch paths.
  const char* disabled = std::getenv("SFC_PLUGIN_DISABLE_BF16_DOT");
  if (disabled != nullptr && *disabled != '\0' &&
      std::strcmp(disabled, "0") != 0)
    return "SFC_PLUGIN_DISABLE_BF16_DOT is set";
#if defined(SFC_BF16_DOT)
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") &&
           __builtin_cpu_supports("avx512bw");
  }();
  return supported ? nullptr : "this CPU has no avx512_bf16";
#else
  return "the library was built without the avx512_bf16 micro-kernel "
         "(it needs x86-64 and GCC >= 10 or Clang >= 16)";
#endif
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_cpu(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys) {
  check_neighbours_args(query, keys, topk, radius, temperature,
                        unrestricted_keys);
  const auto dtype = query.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble ||
                        dtype == at::kBFloat16,
                    "topk_window_match: the CPU kernel takes float32, "
                    "float64 or bfloat16 features, got ",
                    dtype, "; convert with .float()");
  const auto k = keys_channels_last(keys);
  // Queries in another layout are made channels-last once, here, by
  // torch's blocked copy: gathered row by row in the kernel, their
  // channels were read a cache line apart (about 5 ms a 480p step at
  // C = 256). The values, and so every score, are the same.
  const auto q = query.contiguous(at::MemoryFormat::ChannelsLast);
  // bf16 is scored in float32, and its softmax weights stay float32.
  auto weights =
      at::empty({keys.size(0), keys.size(3), keys.size(4), topk},
                query.options().dtype(neighbour_weights_type(dtype)));
  auto indices = at::empty({keys.size(0), keys.size(3), keys.size(4), topk},
                           query.options().dtype(at::kLong));
  const auto run = [&](auto scoring) {
    neighbours_impl<decltype(scoring)>(q, k, topk, radius, temperature,
                                       unrestricted_keys, weights, indices);
  };
  if (dtype == at::kFloat) {
    run(NativeScoring<float>{});
  } else if (dtype == at::kDouble) {
    run(NativeScoring<double>{});
  } else {
#if defined(SFC_BF16_DOT)
    if (cpu_bf16_fallback_reason() == nullptr) {
      run(Bf16Dot{});
      return {weights, indices};
    }
#endif
    run(Bf16ViaFloat32{});
  }
  return {weights, indices};
}

TORCH_LIBRARY_IMPL(sfc, CPU, m) {
  m.impl("topk_window_neighbours", &topk_window_neighbours_cpu);
}

// For the Python wrapper's one-time notice and the tests: why bf16
// features take the float32 path on this CPU ('' where vdpbf16ps serves).
TORCH_LIBRARY_FRAGMENT(sfc, m) {
  m.def("_cpu_bf16_fallback_reason() -> str", [] {
    const char* reason = cpu_bf16_fallback_reason();
    return std::string(reason != nullptr ? reason : "");
  });
}

}  // namespace ops
}  // namespace sfc_plugin
