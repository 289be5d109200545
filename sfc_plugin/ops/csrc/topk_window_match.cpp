// Schemas of the sfc:: ops and their device-generic part.
//
// topk_window_neighbours is the kernel (CPU and CUDA implementations);
// topk_window_match composes it with the label aggregation, for every
// device that has a neighbours kernel.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>

#include "topk_window_match.h"

namespace sfc_plugin {
namespace ops {

namespace {

at::Tensor topk_window_match(const at::Tensor& query, const at::Tensor& keys,
                             const at::Tensor& key_labels, int64_t topk,
                             double radius, double temperature,
                             int64_t unrestricted_keys) {
  check_common_args(query, keys, topk, radius, temperature,
                    unrestricted_keys);
  check_labels_arg(keys, key_labels);
  // Slots beyond the T*H*W keys would be padding of weight 0: clamping
  // gives the identical result without allocating them (topk = 2**40
  // would otherwise ask for terabytes).
  topk = std::min(topk, num_keys(keys));
  static auto neighbours =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("sfc::topk_window_neighbours", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, int64_t, double, double,
              int64_t)>();
  auto [weights, indices] = neighbours.call(query, keys, topk, radius,
                                            temperature, unrestricted_keys);
  auto out = aggregate_labels(weights, indices, key_labels);
  // A host check would stall a CUDA stream; there non-finite labels
  // propagate, as documented.
  if (out.device().is_cpu()) {
    TORCH_CHECK_VALUE(at::isfinite(out).all().item<bool>(),
                      "topk_window_match: key_labels contain NaN or "
                      "infinite values");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(sfc, m) {
  m.def(
      "topk_window_neighbours(Tensor query, Tensor keys, int topk, "
      "float radius, float temperature, int unrestricted_keys=1) -> "
      "(Tensor weights, Tensor indices)");
  m.def(
      "topk_window_match(Tensor query, Tensor keys, Tensor key_labels, "
      "int topk, float radius, float temperature, int unrestricted_keys=1) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(sfc, CompositeExplicitAutograd, m) {
  m.impl("topk_window_match", &topk_window_match);
}

}  // namespace ops
}  // namespace sfc_plugin
