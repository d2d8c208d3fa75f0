// The fused kernels' entry points, bound to Python in bindings.cpp.

#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <vector>

namespace dien_fused {

// recurrence.cpp: the GRU family's loop over steps, forward and backward.
std::vector<at::Tensor> recurrence_forward(int64_t kind, const at::Tensor& inputs,
                                           const at::Tensor& weight_ih, const at::Tensor& bias_ih,
                                           const at::Tensor& attention, const at::Tensor& mask,
                                           const at::Tensor& weight_hh,
                                           const at::Tensor& bias_hh, const at::Tensor& h0,
                                           bool save, bool all_outputs);

std::vector<at::Tensor> recurrence_backward(int64_t kind, const at::Tensor& grad_outputs,
                                            const at::Tensor& grad_final,
                                            const at::Tensor& inputs,
                                            const at::Tensor& weight_ih,
                                            const at::Tensor& attention, const at::Tensor& mask,
                                            const at::Tensor& weight_hh, const at::Tensor& gates,
                                            const at::Tensor& hidden_n,
                                            const at::Tensor& previous);

// attention.cpp: the attention scorer's MLP over the valid steps, without gradients.
at::Tensor attention_scores(const at::Tensor& per_row, const at::Tensor& query,
                            const at::Tensor& keys, const at::Tensor& mask,
                            const at::Tensor& step_weight, const std::vector<at::Tensor>& weights,
                            const std::vector<at::Tensor>& biases);

// scorer_mlp.cpp: the attention scorer's and auxiliary loss's sigmoid MLP, for training.
std::vector<at::Tensor> scorer_mlp_forward(const at::Tensor& features, const at::Tensor& row_of,
                                           const at::Tensor& per_row,
                                           const at::Tensor& first_weight,
                                           const std::vector<at::Tensor>& weights,
                                           const std::vector<at::Tensor>& biases);

std::vector<at::Tensor> scorer_mlp_backward(const at::Tensor& grad_logits,
                                            const at::Tensor& features, const at::Tensor& row_of,
                                            int64_t per_row_count,
                                            const at::Tensor& first_weight,
                                            const std::vector<at::Tensor>& weights,
                                            const std::vector<at::Tensor>& activations);

// embedding.cpp: the behaviour embeddings and their sum over the valid steps, without gradients.
std::vector<at::Tensor> history_embeddings(const at::Tensor& item_weight,
                                           const at::Tensor& category_weight,
                                           const at::Tensor& items, const at::Tensor& categories,
                                           const at::Tensor& mask);

// sparse_adam.cpp: torch.optim.SparseAdam's update of the rows a gradient names.
void sparse_adam_step(at::Tensor& param, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                      const at::Tensor& rows, const at::Tensor& values, double step_size,
                      double beta1, double beta2, double eps);

}  // namespace dien_fused
