// The attention scores of dien.layers.attention.AttentionScorer in one pass over the valid
// steps, for inference (no gradients), on CPU tensors of float32 or float64.
//
// Shapes: B batch, T steps, E key width, W1 width of the scoring MLP's first layer.
// per_row (B, W1): the first layer's query part and bias, (W_q + W_d) q + b_1, once per row;
// query (B, E); keys (B, T, E); mask (B, T) bool; step_weight (W1, 2E) = [W_k - W_d | W_p], the
// first layer's weight on a step's features [k, q * k]. weights and biases: the layers after
// the first, the last of width 1 (the score). Every layer but the last is followed by a
// sigmoid. per_row, query, keys and mask may repeat one row over the batch (stride 0), as
// serving scores one history against many targets.
//
// The rows are split among the threads into runs of about equal numbers of valid steps. Each
// thread packs the features of up to kBlock valid steps into a buffer, runs the MLP on that
// block with one matrix product per layer, the biases and sigmoids applied while the block's
// activations are in the cache, and writes the scores out; padded steps score 0. The same
// arithmetic as the layer's packed path, without the (valid steps, width) intermediate tensors
// that path writes to memory and reads back for every operation. Blocks of 512 steps make
// products large enough for oneDNN where it takes them (gemm.h) and stay in a core's L2 cache.

#include <ATen/Parallel.h>

#include "kernels.h"
#include "math.h"

namespace dien_fused {
namespace {

constexpr int64_t kBlock = 512;  // valid steps scored together
constexpr int64_t kRowsPerTask = 16;

// A row-broadcastable (B, ...) tensor: the row stride is 0 where one row stands for all.
template <typename T>
struct Rows {
  const T* data;
  int64_t stride;
  const T* row(int64_t b) const { return data + b * stride; }
};

template <typename T>
Rows<T> rows_of(const at::Tensor& tensor) {
  return {tensor.data_ptr<T>(), tensor.size(0) == 1 ? 0 : tensor.stride(0)};
}

template <typename scalar_t>
struct Block {
  at::Tensor features;                    // (kBlock, 2E): [k, q * k] of each packed step
  std::vector<at::Tensor> activations;    // (kBlock, width) per layer but the last
  std::vector<int64_t> rows, positions;   // each packed step's row and (b * T + t)
  int64_t size = 0;
};

template <typename scalar_t>
void score_block(Block<scalar_t>& block, const Rows<scalar_t>& per_row,
                 const at::Tensor& step_weight_t, const std::vector<at::Tensor>& weights_t,
                 const std::vector<at::Tensor>& biases, scalar_t* scores) {
  const int64_t n = block.size;
  at::Tensor previous = block.features;
  const int64_t layers = static_cast<int64_t>(weights_t.size()) + 1;
  // the first layer's bias is the row's own term; a later layer's is shared by all rows
  auto bias_of_layer = [&](int64_t l) {
    const scalar_t* shared = l == 0 ? nullptr : biases[l - 1].data_ptr<scalar_t>();
    return [&block, &per_row, shared](int64_t i) {
      return shared == nullptr ? per_row.row(block.rows[i]) : shared;
    };
  };
  for (int64_t l = 0; l + 1 < layers; ++l) {
    sigmoid_layer<scalar_t>(block.activations[l], previous,
                            l == 0 ? step_weight_t : weights_t[l - 1], n, bias_of_layer(l));
    previous = block.activations[l];
  }
  // the last layer has width 1 (and is the first too when the MLP has no hidden layer)
  output_layer<scalar_t>(previous.narrow(0, 0, n), layers == 1 ? step_weight_t : weights_t.back(),
                         bias_of_layer(layers - 1),
                         [&](int64_t i, scalar_t score) { scores[block.positions[i]] = score; });
  block.size = 0;
}

// Row bounds of one task per thread, each with about the same number of valid steps: a
// length-bucketed batch holds its rows sorted by length, so equal counts of rows would give
// the last thread the longest histories.
std::vector<int64_t> balanced_bounds(const Rows<bool>& masks, int64_t B, int64_t T) {
  std::vector<int64_t> steps_before(B + 1, 0);  // valid steps of the rows before each row
  for (int64_t b = 0; b < B; ++b) {
    const bool* m = masks.row(b);
    steps_before[b + 1] = steps_before[b] + std::count(m, m + T, true);
  }
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                  B / kRowsPerTask));
  std::vector<int64_t> bounds{0};
  for (int64_t k = 1; k < tasks; ++k) {
    const int64_t target = steps_before[B] * k / tasks;
    const int64_t row = std::lower_bound(steps_before.begin(), steps_before.end(), target) -
                        steps_before.begin();
    bounds.push_back(std::max(bounds.back(), std::min(row, B)));
  }
  bounds.push_back(B);
  return bounds;
}

}  // namespace

at::Tensor attention_scores(const at::Tensor& per_row, const at::Tensor& query,
                            const at::Tensor& keys, const at::Tensor& mask,
                            const at::Tensor& step_weight, const std::vector<at::Tensor>& weights,
                            const std::vector<at::Tensor>& biases) {
  TORCH_CHECK(keys.device().is_cpu(), "the fused attention runs on CPU tensors only");
  TORCH_CHECK(keys.dim() == 3 && keys.stride(2) == 1 && keys.stride(1) == keys.size(2),
              "keys must be (B, T, E) with contiguous rows");
  const int64_t B = std::max({per_row.size(0), query.size(0), keys.size(0), mask.size(0)});
  const int64_t T = keys.size(1), E = keys.size(2);
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(1) == T &&
                  mask.stride(1) == 1,
              "mask must be bool (B, T)");
  TORCH_CHECK(query.dim() == 2 && query.size(1) == E && query.stride(1) == 1,
              "query must be (B, E)");
  TORCH_CHECK(step_weight.dim() == 2 && step_weight.size(1) == 2 * E,
              "step_weight must be (W1, 2E)");
  TORCH_CHECK(per_row.dim() == 2 && per_row.size(1) == step_weight.size(0) &&
                  per_row.stride(1) == 1,
              "per_row must be (B, W1)");
  TORCH_CHECK(weights.size() == biases.size(), "one bias per weight");
  for (const at::Tensor* t : {&per_row, &query, &keys}) {
    TORCH_CHECK(t->size(0) == B || t->size(0) == 1, "rows must match the batch or be one");
    TORCH_CHECK(t->scalar_type() == keys.scalar_type(), "all inputs must share one dtype");
  }
  TORCH_CHECK(mask.size(0) == B || mask.size(0) == 1, "mask rows must match the batch or be one");
  int64_t width = step_weight.size(0);
  for (size_t l = 0; l < weights.size(); ++l) {
    TORCH_CHECK(weights[l].dim() == 2 && weights[l].size(1) == width, "layer widths do not chain");
    TORCH_CHECK(biases[l].numel() == weights[l].size(0), "a bias must match its layer");
    TORCH_CHECK(biases[l].is_contiguous(), "biases must be contiguous");
    width = weights[l].size(0);
  }
  TORCH_CHECK(width == 1, "the last layer must have one output");
  at::NoGradGuard no_grad;
  at::Tensor scores = at::zeros({B, T}, keys.options());
  const at::Tensor step_weight_t = step_weight.t();
  std::vector<at::Tensor> weights_t;
  for (const at::Tensor& w : weights) weights_t.push_back(w.t());
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "attention_scores", [&] {
    const Rows<scalar_t> per_rows = rows_of<scalar_t>(per_row);
    const Rows<scalar_t> queries = rows_of<scalar_t>(query);
    const Rows<scalar_t> key_rows = rows_of<scalar_t>(keys);
    const Rows<bool> masks = rows_of<bool>(mask);
    scalar_t* out = scores.data_ptr<scalar_t>();
    const std::vector<int64_t> bounds = balanced_bounds(masks, B, T);
    const int64_t tasks = static_cast<int64_t>(bounds.size()) - 1;
    at::parallel_for(0, tasks, 1, [&](int64_t first_task, int64_t last_task) {
      at::NoGradGuard worker_no_grad;  // grad mode is per thread
      const int64_t begin = bounds[first_task], end = bounds[last_task];
      Block<scalar_t> block;
      // zeros: a product may run over the rows past a block's last (matmul_rows)
      block.features = at::zeros({kBlock, 2 * E}, keys.options());
      for (size_t l = 0; l < weights.size(); ++l) {
        const int64_t w = l == 0 ? step_weight.size(0) : weights[l - 1].size(0);
        block.activations.push_back(at::zeros({kBlock, w}, keys.options()));
      }
      block.rows.resize(kBlock);
      block.positions.resize(kBlock);
      scalar_t* features = block.features.data_ptr<scalar_t>();
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* q = queries.row(b);
        const scalar_t* k_row = key_rows.row(b);
        const bool* m = masks.row(b);
        for (int64_t t = 0; t < T; ++t) {
          if (!m[t]) continue;
          const scalar_t* k = k_row + t * E;
          scalar_t* f = features + block.size * 2 * E;
          for (int64_t e = 0; e < E; ++e) {
            f[e] = k[e];
            f[E + e] = q[e] * k[e];
          }
          block.rows[block.size] = b;
          block.positions[block.size] = b * T + t;
          if (++block.size == kBlock) {
            score_block(block, per_rows, step_weight_t, weights_t, biases, out);
          }
        }
      }
      if (block.size > 0) score_block(block, per_rows, step_weight_t, weights_t, biases, out);
    });
  });
  return scores;
}

}  // namespace dien_fused
