// What the fused kernels share: fast float32 exponentials and the activations built on them.
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

}  // namespace dien_fused
