// The Python module of the fused kernels.

#include <torch/extension.h>

#include "gemm.h"
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &dien_fused::recurrence_forward, "fused GRU-family recurrence, forward");
  m.def("backward", &dien_fused::recurrence_backward, "fused GRU-family recurrence, backward");
  m.def("attention_scores", &dien_fused::attention_scores,
        "attention scorer MLP over the valid steps, inference only");
  m.def("scorer_mlp_forward", &dien_fused::scorer_mlp_forward,
        "sigmoid MLP with a per-row first-layer term, forward (activations and logits)");
  m.def("scorer_mlp_backward", &dien_fused::scorer_mlp_backward,
        "sigmoid MLP with a per-row first-layer term, backward");
  m.def("history_embeddings", &dien_fused::history_embeddings,
        "behaviour embeddings and their sum over the valid steps, inference only");
  m.def("onednn_available", &dien_fused::onednn_available,
        "whether torch's oneDNN matrix product was found");
  m.def("set_onednn", &dien_fused::set_onednn,
        "run large float32 products of the kernels on oneDNN (true) or MKL (false)");
  m.def("onednn_enabled", &dien_fused::onednn_enabled, "whether set_onednn(true) is in force");
  m.def("time_products", &dien_fused::time_products,
        "seconds of repeated float32 products on MKL, then on oneDNN");
  m.def("sparse_adam_step", &dien_fused::sparse_adam_step,
        "torch.optim.SparseAdam's update of the rows a gradient names, in one pass");
}
