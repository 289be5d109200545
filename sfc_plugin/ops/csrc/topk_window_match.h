// Top-k windowed matching (sfc::topk_window_neighbours / sfc::topk_window_match):
// declarations and the geometry shared by the CPU and CUDA kernels.
//
// Layout used by the kernels: positions are row-major (y * W + x) and the
// features of one position are contiguous (channels-last), so a window row
// of keys is one contiguous block. A key is addressed by its flat index
// t * H * W + y * W + x over the T key frames.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace sfc_plugin {
namespace ops {

// Radius beyond which the window covers the whole frame: every offset has
// dy² + dx² <= (H-1)² + (W-1)² < (H+W)², so capping there keeps the
// eligibility and keeps inf (or 1e300) out of the integer tables below.
inline double effective_radius(double radius, int64_t height, int64_t width) {
  return std::min(radius, static_cast<double>(height + width));
}

// Half-width of the window on the key row |dy| rows away from the query:
// key (y + dy, x + dx) is eligible iff |dx| <= half_widths[|dy|], which is
// dx² + dy² < radius² evaluated in double precision. -1 marks rows the
// window does not reach. Integer tables spare the kernels a square root.
inline std::vector<int64_t> window_half_widths(double radius, int64_t height,
                                               int64_t width) {
  std::vector<int64_t> half(height, -1);
  // NaN would reach the integer casts below; the checks refuse it first.
  if (!(radius > 0)) return half;
  radius = effective_radius(radius, height, width);
  const double r2 = radius * radius;
  for (int64_t dy = 0; dy < height; ++dy) {
    const double rest = r2 - static_cast<double>(dy * dy);
    if (rest <= 0) break;
    auto dx = static_cast<int64_t>(std::floor(std::sqrt(rest)));
    while (dx > 0 && static_cast<double>(dx * dx) >= rest) --dx;
    while (static_cast<double>((dx + 1) * (dx + 1)) < rest) ++dx;
    half[dy] = dx;
  }
  return half;
}

// Inserts `value` (key `index`) into a top-k list sorted in decreasing
// order that holds `count` entries in its `k` slots, shifting the smaller
// ones down (a full list drops its last); returns the new count. Equal
// values stay in front, so the earlier (lower-index) key wins. The caller
// has checked that a full list's k-th value is below `value`. Shared by
// the CPU kernel (host) and the CUDA kernel (device).
template <typename T>
C10_HOST_DEVICE inline int64_t insert_sorted(T* values, int64_t* indices,
                                             int64_t count, int64_t k,
                                             T value, int64_t index) {
  int64_t pos = count < k ? count++ : k - 1;
  while (pos > 0 && values[pos - 1] < value) {
    values[pos] = values[pos - 1];
    indices[pos] = indices[pos - 1];
    --pos;
  }
  values[pos] = value;
  indices[pos] = index;
  return count;
}

// Softmax of affinity / temperature over one query's top-k (``count``
// values sorted in decreasing order, their flat key indices in ``slots``)
// into weights[0, topk) and indices[0, topk); slots beyond ``count`` are
// padding (weight 0, index -1). compute_t sets the exponentials' precision.
// Shared by the CPU kernel (host) and the CUDA kernel (device).
template <typename compute_t, typename value_t, typename out_t>
C10_HOST_DEVICE inline void write_topk_softmax(
    const value_t* values, const int64_t* slots, int64_t count, int64_t topk,
    double temperature, out_t* weights, int64_t* indices) {
  using std::exp;
  const compute_t inv_t = static_cast<compute_t>(1.0 / temperature);
  compute_t total = 0;
  for (int64_t j = 0; j < count; ++j)
    total += exp((static_cast<compute_t>(values[j]) -
                  static_cast<compute_t>(values[0])) *
                 inv_t);
  for (int64_t j = 0; j < topk; ++j) {
    if (j < count) {
      weights[j] = static_cast<out_t>(
          exp((static_cast<compute_t>(values[j]) -
               static_cast<compute_t>(values[0])) *
              inv_t) /
          total);
      indices[j] = slots[j];
    } else {
      weights[j] = static_cast<out_t>(0);
      indices[j] = -1;
    }
  }
}

// Type of the softmax weights for features of type `features`: float32
// for float16 and bfloat16 (the float32 softmax's own precision; in the
// feature type they would carry errors of up to 0.2% into the labels),
// the features' type otherwise. Every device and form gives this type.
inline at::ScalarType neighbour_weights_type(at::ScalarType features) {
  return features == at::kHalf || features == at::kBFloat16 ? at::kFloat
                                                              : features;
}

// Number of keys, T·H·W: the most neighbours a query position can have.
inline int64_t num_keys(const at::Tensor& keys) {
  return keys.size(1) * keys.size(3) * keys.size(4);
}

// Smallest softmax temperature (MIN_TEMPERATURE in Python): below it,
// affinities divided by it overflow float32.
constexpr double kMinTemperature = 1e-30;

// Checks shared by both ops; the Python wrapper gives friendlier messages
// first, these guard direct torch.ops callers.
inline void check_common_args(const at::Tensor& query, const at::Tensor& keys,
                              int64_t topk, double radius, double temperature,
                              int64_t unrestricted_keys) {
  TORCH_CHECK_VALUE(query.dim() == 4,
                    "topk_window_match: query must be (B, C, H, W), got ",
                    query.sizes());
  TORCH_CHECK_VALUE(keys.dim() == 5,
                    "topk_window_match: keys must be (B, T, C, H, W), got ",
                    keys.sizes());
  TORCH_CHECK_VALUE(keys.size(0) == query.size(0) &&
                        keys.size(2) == query.size(1) &&
                        keys.size(3) == query.size(2) &&
                        keys.size(4) == query.size(3),
                    "topk_window_match: keys ", keys.sizes(),
                    " do not match query ", query.sizes(), " in B, C, H, W");
  TORCH_CHECK_VALUE(keys.size(1) >= 1,
                    "topk_window_match: need at least one key frame");
  // C = 0 would divide by zero in the CPU kernel's blocking; empty maps
  // have no position to match.
  TORCH_CHECK_VALUE(query.size(1) >= 1,
                    "topk_window_match: query has no channels (C = 0)");
  TORCH_CHECK_VALUE(query.size(2) >= 1,
                    "topk_window_match: query has no rows (H = 0)");
  TORCH_CHECK_VALUE(query.size(3) >= 1,
                    "topk_window_match: query has no columns (W = 0)");
  TORCH_CHECK_VALUE(topk >= 1, "topk_window_match: topk must be >= 1, got ",
                    topk);
  TORCH_CHECK_VALUE(radius >= 0,
                    "topk_window_match: radius must be >= 0 (inf: no "
                    "window), got ",
                    radius);
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= kMinTemperature,
                    "topk_window_match: temperature must be a finite number "
                    ">= 1e-30 (smaller ones overflow the float32 softmax), "
                    "got ",
                    temperature);
  TORCH_CHECK_VALUE(unrestricted_keys >= 0 && unrestricted_keys <= keys.size(1),
                    "topk_window_match: unrestricted_keys must be in [0, T=",
                    keys.size(1), "], got ", unrestricted_keys);
  TORCH_CHECK_VALUE(query.scalar_type() == keys.scalar_type(),
                    "topk_window_match: query is ", query.scalar_type(),
                    " but keys are ", keys.scalar_type());
  TORCH_CHECK_VALUE(query.device() == keys.device(),
                    "topk_window_match: query is on ", query.device(),
                    " but keys are on ", keys.device());
}

// The neighbours kernels' checks: the common ones, and topk <= T·H·W, as
// their output holds topk slots per position (topk_window_match clamps
// instead, since its result does not depend on the padding slots).
inline void check_neighbours_args(const at::Tensor& query,
                                  const at::Tensor& keys, int64_t topk,
                                  double radius, double temperature,
                                  int64_t unrestricted_keys) {
  check_common_args(query, keys, topk, radius, temperature, unrestricted_keys);
  TORCH_CHECK_VALUE(topk <= num_keys(keys), "topk_window_match: topk=", topk,
                    " exceeds the T*H*W = ", num_keys(keys),
                    " keys; topk_window_neighbours returns topk slots per "
                    "position, so topk must be <= T*H*W (topk_window_match "
                    "clamps it)");
}

inline void check_labels_arg(const at::Tensor& keys,
                             const at::Tensor& key_labels) {
  TORCH_CHECK_VALUE(key_labels.dim() == 5,
                    "topk_window_match: key_labels must be (B, T, K, H, W), "
                    "got ",
                    key_labels.sizes());
  TORCH_CHECK_VALUE(key_labels.size(0) == keys.size(0) &&
                        key_labels.size(1) == keys.size(1) &&
                        key_labels.size(3) == keys.size(3) &&
                        key_labels.size(4) == keys.size(4),
                    "topk_window_match: key_labels ", key_labels.sizes(),
                    " do not match keys ", keys.sizes(), " in B, T, H, W");
  TORCH_CHECK_VALUE(key_labels.size(2) >= 1,
                    "topk_window_match: key_labels have no label channels "
                    "(K = 0)");
  TORCH_CHECK_VALUE(at::isFloatingType(key_labels.scalar_type()),
                    "topk_window_match: key_labels must be floating point, "
                    "got ",
                    key_labels.scalar_type());
  TORCH_CHECK_VALUE(key_labels.device() == keys.device(),
                    "topk_window_match: key_labels are on ",
                    key_labels.device(), " but keys are on ", keys.device());
}

// (B, T, C, H, W) -> (B, T, H, W, C) contiguous; free when the caller keeps
// the keys channels-last, as LabelPropagator does.
inline at::Tensor keys_channels_last(const at::Tensor& keys) {
  return keys.permute({0, 1, 3, 4, 2}).contiguous();
}

// Bytes of gathered labels (positions x slots x K) that the aggregation
// holds at once: it sums the top-k slots in blocks of this size, since all
// slots at once would take K times the top-k lists' memory (gigabytes for
// a large topk). The protocols' k fits in one block.
constexpr int64_t kAggregateBytes = int64_t{64} << 20;

// Weighted sum of the chosen keys' labels: out[b, :, q] =
// sum_j weights[b, q, j] * labels[b, indices[b, q, j], :]; index -1 is
// padding. Shared by every device: it is a gather and a reduction over k,
// small next to the matching.
inline at::Tensor aggregate_labels(const at::Tensor& weights,
                                   const at::Tensor& indices,
                                   const at::Tensor& key_labels) {
  const auto batch = key_labels.size(0);
  const auto frames = key_labels.size(1);
  const auto num_labels = key_labels.size(2);
  const auto height = key_labels.size(3);
  const auto width = key_labels.size(4);
  const auto topk = indices.size(3);
  // (B, T*H*W, K): rows addressed by the flat key index. Sizes are spelt
  // out: a -1 cannot be inferred from an empty batch.
  auto labels = key_labels.permute({0, 1, 3, 4, 2}).reshape(
      {batch, frames * height * width, num_labels});
  const int64_t slot_bytes = std::max<int64_t>(
      1, batch * height * width * num_labels * key_labels.element_size());
  const int64_t block = std::max<int64_t>(1, kAggregateBytes / slot_bytes);
  at::Tensor out;
  for (int64_t start = 0; start < topk; start += block) {
    const int64_t slots = std::min(block, topk - start);
    auto idx = indices.narrow(3, start, slots);
    auto rows = idx.clamp_min(0)
                    .reshape({batch, height * width * slots, 1})
                    .expand({batch, height * width * slots, num_labels});
    auto chosen = labels.gather(1, rows).view(
        {batch, height * width, slots, num_labels});
    auto w = weights.narrow(3, start, slots)
                 .masked_fill(idx.lt(0), 0)
                 .to(key_labels.scalar_type())
                 .reshape({batch, height * width, slots, 1});
    auto part = (chosen * w).sum(2);
    out = start == 0 ? part : out + part;
  }
  return out.view({batch, height, width, num_labels})
      .permute({0, 3, 1, 2})
      .contiguous();
}

std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_cpu(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys);

#ifdef SFC_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> topk_window_neighbours_cuda(
    const at::Tensor& query, const at::Tensor& keys, int64_t topk,
    double radius, double temperature, int64_t unrestricted_keys);
#endif

}  // namespace ops
}  // namespace sfc_plugin
