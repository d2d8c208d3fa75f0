// The small sigmoid MLP of the attention scorer and of the auxiliary loss, forward and backward,
// for training on CPU tensors of float32 or float64.
//
// Shapes: N scored rows, F features, R rows of the first layer's per-row term, W_l the width of
// hidden layer l (L >= 1 hidden layers), the last layer of width 1.
// features (N, F); row_of (N,) int64 in [0, R); per_row (R, W_1): a term added to the first
// layer's product per row (the attention's query part plus bias, the auxiliary loss's hidden
// state part plus bias); first_weight (W_1, F); hidden weights (W_l, W_{l-1}) and biases (W_l)
// of layers 2..L and the last layer (1, W_L), bias (1).
//
//   a_1 = sigmoid(features first_weight^T + per_row[row_of])
//   a_l = sigmoid(a_{l-1} W_l^T + b_l)          l = 2..L
//   logit = a_L w^T + b
//
// Forward writes every a_l (the activations backward needs) and the logits. Backward, given the
// logits' gradient, runs the layers in reverse block by block: each block's activation
// gradients stay in the cache between the products, and each thread adds its blocks' weight
// and bias gradients (and the per-row term's) into its own accumulators, summed at the end.
// Autograd would instead run a dozen separate operations over the whole (N, W) tensors.

#include <ATen/Parallel.h>

#include "kernels.h"
#include "math.h"

namespace dien_fused {
namespace {

constexpr int64_t kRows = 256;  // rows per block

// The per-thread sums of one backward: one tensor per gradient of a weight, bias or per_row.
struct Accumulators {
  std::vector<at::Tensor> tensors;
};

}  // namespace

std::vector<at::Tensor> scorer_mlp_forward(const at::Tensor& features, const at::Tensor& row_of,
                                           const at::Tensor& per_row,
                                           const at::Tensor& first_weight,
                                           const std::vector<at::Tensor>& weights,
                                           const std::vector<at::Tensor>& biases) {
  TORCH_CHECK(features.device().is_cpu() && features.dim() == 2 && features.is_contiguous(),
              "features must be a contiguous CPU (N, F) tensor");
  TORCH_CHECK(!weights.empty() && weights.size() == biases.size(),
              "one bias per later layer, and at least the last layer");
  const int64_t N = features.size(0);
  TORCH_CHECK(row_of.scalar_type() == at::kLong && row_of.numel() == N && row_of.is_contiguous(),
              "row_of must be int64 (N,)");
  TORCH_CHECK(per_row.dim() == 2 && per_row.is_contiguous() &&
                  per_row.size(1) == first_weight.size(0),
              "per_row must be contiguous (R, W_1)");
  TORCH_CHECK(first_weight.size(1) == features.size(1), "first_weight must be (W_1, F)");
  TORCH_CHECK(weights.back().size(0) == 1, "the last layer must have one output");
  at::NoGradGuard no_grad;
  const int64_t R = per_row.size(0);
  const int64_t* rows = row_of.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) TORCH_CHECK(rows[i] >= 0 && rows[i] < R, "row out of range");
  std::vector<at::Tensor> hidden;  // the activations a_1 .. a_L
  hidden.push_back(at::empty({N, first_weight.size(0)}, features.options()));
  for (size_t l = 0; l + 1 < weights.size(); ++l) {
    hidden.push_back(at::empty({N, weights[l].size(0)}, features.options()));
  }
  at::Tensor logits = at::empty({N}, features.options());
  const at::Tensor first_t = first_weight.t();
  std::vector<at::Tensor> weights_t;
  for (const at::Tensor& w : weights) weights_t.push_back(w.t());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "scorer_mlp_forward", [&] {
    const scalar_t* term = per_row.data_ptr<scalar_t>();
    at::parallel_for(0, N, kRows, [&](int64_t begin, int64_t end) {
      at::NoGradGuard worker_no_grad;  // grad mode is per thread
      for (int64_t start = begin; start < end; start += kRows) {
        const int64_t n = std::min(kRows, end - start);
        at::Tensor previous = features.narrow(0, start, n);
        for (size_t l = 0; l < hidden.size(); ++l) {
          at::Tensor out = hidden[l].narrow(0, start, n);
          const int64_t width = out.size(1);
          const scalar_t* shared = l == 0 ? nullptr : biases[l - 1].data_ptr<scalar_t>();
          sigmoid_layer<scalar_t>(out, previous, l == 0 ? first_t : weights_t[l - 1], n,
                                  [&](int64_t i) {
                                    return l == 0 ? term + rows[start + i] * width : shared;
                                  });
          previous = out;
        }
        const scalar_t* last_bias = biases.back().data_ptr<scalar_t>();
        scalar_t* out = logits.data_ptr<scalar_t>() + start;
        output_layer<scalar_t>(previous, weights_t.back(), [&](int64_t) { return last_bias; },
                               [&](int64_t i, scalar_t logit) { out[i] = logit; });
      }
    });
  });
  hidden.push_back(logits);
  return hidden;  // a_1 .. a_L, then the logits (N,)
}

// Returns the gradients of features (N, F), per_row (R, W_1), first_weight, then of each later
// layer's weight and bias in order.
std::vector<at::Tensor> scorer_mlp_backward(const at::Tensor& grad_logits,
                                            const at::Tensor& features, const at::Tensor& row_of,
                                            int64_t per_row_count,
                                            const at::Tensor& first_weight,
                                            const std::vector<at::Tensor>& weights,
                                            const std::vector<at::Tensor>& activations) {
  at::NoGradGuard no_grad;
  const int64_t N = features.size(0), L = static_cast<int64_t>(activations.size());
  TORCH_CHECK(L == static_cast<int64_t>(weights.size()), "one activation per hidden layer");
  const at::TensorOptions options = features.options();
  // what each thread accumulates: d per_row, d first_weight, then (d W, d b) per later layer
  auto zeros_like_grads = [&] {
    Accumulators acc;
    acc.tensors.push_back(at::zeros({per_row_count, first_weight.size(0)}, options));
    acc.tensors.push_back(at::zeros_like(first_weight));
    for (const at::Tensor& w : weights) {
      acc.tensors.push_back(at::zeros_like(w));
      acc.tensors.push_back(at::zeros({w.size(0)}, options));
    }
    return acc;
  };
  const int64_t threads = at::get_num_threads();
  std::vector<Accumulators> per_thread(threads);
  at::Tensor d_features = at::empty_like(features);
  const int64_t* rows = row_of.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "scorer_mlp_backward", [&] {
    const scalar_t* d_logit = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, N, kRows, [&](int64_t begin, int64_t end) {
      at::NoGradGuard worker_no_grad;
      Accumulators& acc = per_thread[at::get_thread_num()];
      if (acc.tensors.empty()) acc = zeros_like_grads();
      std::vector<at::Tensor> delta(L);  // d pre-activation of each hidden layer, one block
      for (int64_t l = 0; l < L; ++l) {
        delta[l] = at::empty({kRows, activations[l].size(1)}, options);
      }
      for (int64_t start = begin; start < end; start += kRows) {
        const int64_t n = std::min(kRows, end - start);
        // the last layer: d a_L = d_logit w, then through the sigmoid
        {
          const at::Tensor& a = activations[L - 1];
          const int64_t width = a.size(1);
          const scalar_t* __restrict a_rows = a.data_ptr<scalar_t>() + start * width;
          const scalar_t* __restrict w = weights.back().data_ptr<scalar_t>();
          scalar_t* __restrict d = delta[L - 1].data_ptr<scalar_t>();
          scalar_t* __restrict d_w = acc.tensors[2 + 2 * (L - 1)].data_ptr<scalar_t>();
          scalar_t* d_b = acc.tensors[3 + 2 * (L - 1)].data_ptr<scalar_t>();
          for (int64_t i = 0; i < n; ++i) {
            const scalar_t g = d_logit[start + i];
            d_b[0] += g;
            for (int64_t j = 0; j < width; ++j) {
              const scalar_t s = a_rows[i * width + j];
              d_w[j] += g * s;
              d[i * width + j] = g * w[j] * s * (scalar_t(1) - s);
            }
          }
        }
        // hidden layers L .. 2: weight gradients, then the gradient one layer down
        for (int64_t l = L - 1; l >= 1; --l) {
          at::Tensor d_l = delta[l].narrow(0, 0, n);
          const at::Tensor a_below = activations[l - 1].narrow(0, start, n);
          acc.tensors[2 + 2 * (l - 1)].addmm_(d_l.t(), a_below);
          acc.tensors[3 + 2 * (l - 1)].add_(d_l.sum(0));
          at::Tensor d_below = delta[l - 1].narrow(0, 0, n);
          at::mm_out(d_below, d_l, weights[l - 1]);
          const int64_t width = d_below.size(1);
          scalar_t* __restrict d = d_below.data_ptr<scalar_t>();
          const scalar_t* __restrict s = a_below.data_ptr<scalar_t>();
          for (int64_t k = 0; k < n * width; ++k) d[k] *= s[k] * (scalar_t(1) - s[k]);
        }
        // the first layer: its weight, the per-row term and the features
        at::Tensor d_first = delta[0].narrow(0, 0, n);
        acc.tensors[1].addmm_(d_first.t(), features.narrow(0, start, n));
        const int64_t width = d_first.size(1);
        const scalar_t* d = d_first.data_ptr<scalar_t>();
        scalar_t* d_term = acc.tensors[0].data_ptr<scalar_t>();
        for (int64_t i = 0; i < n; ++i) {
          scalar_t* __restrict target = d_term + rows[start + i] * width;
          const scalar_t* __restrict source = d + i * width;
          for (int64_t j = 0; j < width; ++j) target[j] += source[j];
        }
        at::Tensor d_rows = d_features.narrow(0, start, n);
        at::mm_out(d_rows, d_first, first_weight);
      }
    });
  });
  // sum the threads' accumulators
  std::vector<at::Tensor> result;
  for (const Accumulators& acc : per_thread) {
    if (acc.tensors.empty()) continue;
    if (result.empty()) {
      result = acc.tensors;
      continue;
    }
    for (size_t k = 0; k < result.size(); ++k) result[k].add_(acc.tensors[k]);
  }
  if (result.empty()) result = zeros_like_grads().tensors;  // N == 0
  result.insert(result.begin(), d_features);
  return result;
}

}  // namespace dien_fused
