// The kernels' matrix products: MKL through at::mm_out, or oneDNN for large float32 blocks where
// it is switched on (gemm.h).
//
// torch routes float32 products to MKL, whose kernels on AMD processors are its AVX2 ones even
// where the processor has AVX-512; torch also carries oneDNN, whose kernels use AVX-512 on any
// processor that has it. torch's oneDNN matrix product, at::native::mkldnn_matmul, is exported
// by libtorch_cpu but declared in no installed header, so it is looked up at run time by its
// symbol: a torch without it (or with another signature, hence another symbol) leaves oneDNN
// unavailable and every product on MKL. Each oneDNN call costs about 10 us of set-up and each
// new shape about half a millisecond to build once (oneDNN caches it), so only blocks of at
// least kOneDnnRows rows go to oneDNN, and their row count is rounded up to a multiple of
// kOneDnnRowStep within the caller's buffers to keep the number of distinct shapes small.

#include "gemm.h"

#include <ATen/core/grad_mode.h>

#ifndef _WIN32
#include <dlfcn.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>

namespace dien_fused {
namespace {

using MkldnnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float,
                              float);

MkldnnMatmul find_mkldnn_matmul() {
#ifdef _WIN32
  return nullptr;  // not looked for on Windows: every product stays on MKL
#else
  void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  if (torch_cpu == nullptr) return nullptr;
  // at::native::mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result,
  // float beta, float alpha): result = alpha mat1 mat2 + beta result
  void* symbol = dlsym(torch_cpu, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff");
  return reinterpret_cast<MkldnnMatmul>(symbol);
#endif
}

MkldnnMatmul mkldnn_matmul() {
  static const MkldnnMatmul found = at::hasMKLDNN() ? find_mkldnn_matmul() : nullptr;
  return found;
}

std::atomic<bool> onednn_on{false};

}  // namespace

bool onednn_available() { return mkldnn_matmul() != nullptr; }

void set_onednn(bool on) {
  TORCH_CHECK(!on || onednn_available(), "torch's oneDNN matrix product is not available");
  onednn_on = on;
}

bool onednn_enabled() { return onednn_on; }

void matmul_rows(const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight_t,
                 int64_t n) {
  if (n == 0) return;
  if (!onednn_on || n < kOneDnnRows || input.scalar_type() != at::kFloat) {
    at::Tensor out_n = out.narrow(0, 0, n);
    at::mm_out(out_n, input.narrow(0, 0, n), weight_t);
    return;
  }
  const int64_t rounded = (n + kOneDnnRowStep - 1) / kOneDnnRowStep * kOneDnnRowStep;
  const int64_t rows = std::min({rounded, out.size(0), input.size(0)});
  mkldnn_matmul()(input.narrow(0, 0, rows), weight_t, out.narrow(0, 0, rows), 0.0f, 1.0f);
}

std::vector<double> time_products(int64_t rows, int64_t k, int64_t n, int64_t reps) {
  TORCH_CHECK(onednn_available(), "torch's oneDNN matrix product is not available");
  TORCH_CHECK(rows >= kOneDnnRows && reps > 0, "time at least kOneDnnRows rows, once or more");
  at::NoGradGuard no_grad;
  const at::Tensor input = at::randn({rows, k});
  const at::Tensor weight_t = at::randn({n, k}).t();
  const at::Tensor out = at::empty({rows, n});
  const bool was_on = onednn_on;
  std::vector<double> seconds;
  for (bool on : {false, true}) {
    onednn_on = on;
    matmul_rows(out, input, weight_t, rows);  // oneDNN builds its primitive here
    const auto start = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < reps; ++r) matmul_rows(out, input, weight_t, rows);
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    seconds.push_back(elapsed.count());
  }
  onednn_on = was_on;
  return seconds;
}

}  // namespace dien_fused
