// The kernels' matrix products (gemm.cpp): MKL, or oneDNN for large float32 blocks when on.

#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace dien_fused {

constexpr int64_t kOneDnnRows = 256;     // fewer rows than this always go to MKL
constexpr int64_t kOneDnnRowStep = 64;   // oneDNN's row counts are multiples of this

// Whether torch's oneDNN matrix product was found, and switching its use on or off (off at
// load; dien.layers.fused decides).
bool onednn_available();
void set_onednn(bool on);
bool onednn_enabled();

// out[:n] = input[:n] weight_t. With oneDNN on, a float32 product of at least kOneDnnRows rows
// runs on oneDNN over the rows rounded up to a multiple of kOneDnnRowStep (at most the rows of
// out and input): the caller's rows past n must then hold finite values, and out's are
// overwritten.
void matmul_rows(const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight_t,
                 int64_t n);

// Seconds of reps products of (rows, k) by (k, n) float32 matrices on MKL, then on oneDNN, on
// the calling thread's threads.
std::vector<double> time_products(int64_t rows, int64_t k, int64_t n, int64_t reps);

}  // namespace dien_fused
