// The behaviour sequence's embeddings and their sum in one pass, for inference (no gradients),
// on CPU tensors of float32 or float64: what dien.layers.embedding.EmbeddingLayer.history
// computes with two table lookups, a concatenation and a masked sum.
//
// Shapes: B batch, T steps, D embedding width. item_weight (items, D), category_weight
// (categories, D), items and categories (B, T) int64, mask (B, T) bool. Returns behaviours
// (B, T, 2D), each step [item row | category row] (the rows of the ids at padded steps too,
// as a lookup gives them), and pooled (B, 2D), the sum of the behaviours at the valid steps.
//
// The rows are split among the threads; each copies its steps' table rows straight into the
// output and adds the valid ones to its rows' sums, instead of writing the two lookups, their
// concatenation and the masked product to memory and reading each back.

#include <ATen/Parallel.h>

#include <atomic>

#include "kernels.h"

namespace dien_fused {
namespace {

constexpr int64_t kRowsPerTask = 16;

}  // namespace

std::vector<at::Tensor> history_embeddings(const at::Tensor& item_weight,
                                           const at::Tensor& category_weight,
                                           const at::Tensor& items, const at::Tensor& categories,
                                           const at::Tensor& mask) {
  TORCH_CHECK(item_weight.device().is_cpu(), "the fused lookup runs on CPU tensors only");
  TORCH_CHECK(item_weight.dim() == 2 && category_weight.dim() == 2 &&
                  item_weight.size(1) == category_weight.size(1),
              "the item and category tables must be 2-D of one width");
  TORCH_CHECK(item_weight.is_contiguous() && category_weight.is_contiguous(),
              "the tables must be contiguous");
  TORCH_CHECK(item_weight.scalar_type() == category_weight.scalar_type(),
              "the tables must share one dtype");
  TORCH_CHECK(items.scalar_type() == at::kLong && categories.scalar_type() == at::kLong,
              "ids must be int64");
  TORCH_CHECK(items.dim() == 2 && items.sizes() == categories.sizes() &&
                  items.sizes() == mask.sizes() && mask.scalar_type() == at::kBool,
              "items, categories and the bool mask must all be (B, T)");
  TORCH_CHECK(items.is_contiguous() && categories.is_contiguous() && mask.is_contiguous(),
              "ids and mask must be contiguous");
  const int64_t B = items.size(0), T = items.size(1), D = item_weight.size(1);
  const int64_t item_count = item_weight.size(0), category_count = category_weight.size(0);
  at::NoGradGuard no_grad;
  at::Tensor behaviours = at::empty({B, T, 2 * D}, item_weight.options());
  at::Tensor pooled = at::zeros({B, 2 * D}, item_weight.options());
  std::atomic<bool> out_of_range{false};
  AT_DISPATCH_FLOATING_TYPES(item_weight.scalar_type(), "history_embeddings", [&] {
    const scalar_t* item_rows = item_weight.data_ptr<scalar_t>();
    const scalar_t* category_rows = category_weight.data_ptr<scalar_t>();
    const int64_t* item_ids = items.data_ptr<int64_t>();
    const int64_t* category_ids = categories.data_ptr<int64_t>();
    const bool* m = mask.data_ptr<bool>();
    scalar_t* out = behaviours.data_ptr<scalar_t>();
    scalar_t* sums = pooled.data_ptr<scalar_t>();
    at::parallel_for(0, B, kRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        scalar_t* __restrict sum = sums + b * 2 * D;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t step = b * T + t;
          const int64_t item = item_ids[step], category = category_ids[step];
          scalar_t* __restrict to = out + step * 2 * D;
          if (item < 0 || item >= item_count || category < 0 || category >= category_count) {
            out_of_range = true;
            std::fill(to, to + 2 * D, scalar_t(0));
            continue;
          }
          std::copy_n(item_rows + item * D, D, to);
          std::copy_n(category_rows + category * D, D, to + D);
          if (m[step]) {
            for (int64_t j = 0; j < 2 * D; ++j) sum[j] += to[j];
          }
        }
      }
    });
  });
  TORCH_CHECK_INDEX(!out_of_range, "a history id is out of range of its embedding table (",
                    item_count, " items, ", category_count, " categories)");
  return {behaviours, pooled};
}

}  // namespace dien_fused
