// What the fused kernels share: fast float32 exponentials, the activations built on them, and
// the layers of the small sigmoid MLPs that score attention and the auxiliary loss.
//
// float32 uses its own exp (range reduction and a degree-7 polynomial, relative error below
// 2e-7) so that the compiler vectorises loops over units; float64 uses std::exp and std::tanh.

#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemm.h"

namespace dien_fused {

inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float round_shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + round_shift) - round_shift;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

template <typename scalar_t>
struct Math;

template <>
struct Math<float> {
  static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
  static inline float tanh(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }
};

template <>
struct Math<double> {
  static inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static inline double tanh(double x) { return std::tanh(x); }
};

// A hidden layer of a sigmoid MLP on the first n rows of a block: out = sigmoid(input weight_t
// + bias), where bias_of(i) points at row i's bias (a per-row term, or one bias shared by all
// rows). The product may run over more rows of the buffers (matmul_rows).
template <typename scalar_t, typename BiasOf>
inline void sigmoid_layer(const at::Tensor& out, const at::Tensor& input,
                          const at::Tensor& weight_t, int64_t n, BiasOf&& bias_of) {
  matmul_rows(out, input, weight_t, n);
  const int64_t width = out.size(1);
  scalar_t* o = out.data_ptr<scalar_t>();
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* __restrict bias = bias_of(i);
    scalar_t* __restrict row = o + i * width;
    for (int64_t j = 0; j < width; ++j) row[j] = Math<scalar_t>::sigmoid(row[j] + bias[j]);
  }
}

// The MLP's last layer, of width 1, on a block of rows: write(i, bias_of(i)[0] + input_i . w)
// with w the (width, 1) weight_t.
template <typename scalar_t, typename BiasOf, typename Write>
inline void output_layer(const at::Tensor& input, const at::Tensor& weight_t, BiasOf&& bias_of,
                         Write&& write) {
  const int64_t n = input.size(0), width = input.size(1), stride = weight_t.stride(0);
  const scalar_t* in = input.data_ptr<scalar_t>();
  const scalar_t* w = weight_t.data_ptr<scalar_t>();
  for (int64_t i = 0; i < n; ++i) {
    scalar_t total = bias_of(i)[0];
    for (int64_t j = 0; j < width; ++j) total += in[i * width + j] * w[j * stride];
    write(i, total);
  }
}

}  // namespace dien_fused
