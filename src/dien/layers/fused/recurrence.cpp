// The GRU-family recurrence of dien.layers.recurrent, forward and backward of the whole loop
// over steps in one call, for CPU tensors of float32 or float64.
//
// Shapes: B batch, T steps, H hidden width, G gates (3: reset, keep, candidate; 2 for AGRU:
// reset, candidate). x_proj (B, T, G*H), attention (B, T), mask (B, T) bool, weight_hh (G*H, H),
// bias_hh (G*H), h0 (B, H).
//
// Per step: one matrix product for the hidden projection of the rows still running, then one
// loop over those rows and the H units for the gates and the new state. Rows are visited in
// the order of their last valid step, longest first, so the rows still running at step t are a
// prefix and the matrix product skips the finished ones (padding costs nothing). A padded step
// inside a row (not produced by left-aligned batches, but allowed) carries the state.
//
// Backward runs the steps in reverse with one matrix product per step for the gradient of the
// previous state; the gradients of weight_hh and bias_hh come from one matrix product over all
// steps after the loop, from the stored gradients of the hidden projections and the stored
// previous states.
//
// float32 uses its own exp (range reduction and a degree-7 polynomial, relative error below
// 2e-7) so that the compiler vectorises the gate loop; float64 uses std::exp and std::tanh.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

constexpr int64_t kGru = 0;
constexpr int64_t kAgru = 1;
constexpr int64_t kAugruPaper = 2;
constexpr int64_t kAugruAuthors = 3;

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

// Rows ordered by their last valid step (longest first) and, per step, how many rows are
// still running.
struct RowOrder {
  std::vector<int64_t> perm;    // (B,) original row of each position
  std::vector<int64_t> counts;  // (T,) rows with a valid step at or after t
};

RowOrder row_order(const at::Tensor& mask) {
  const int64_t B = mask.size(0), T = mask.size(1);
  const bool* m = mask.data_ptr<bool>();
  std::vector<int64_t> span(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = T - 1; t >= 0; --t) {
      if (m[b * T + t]) {
        span[b] = t + 1;
        break;
      }
    }
  }
  RowOrder order;
  order.perm.resize(B);
  std::iota(order.perm.begin(), order.perm.end(), 0);
  std::stable_sort(order.perm.begin(), order.perm.end(),
                   [&](int64_t i, int64_t j) { return span[i] > span[j]; });
  order.counts.assign(T, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < span[b]; ++t) order.counts[t] += 1;
  }
  return order;
}

// Candidate weight c of h_t = h_{t-1} + c (candidate - h_{t-1}); keep is torch.nn.GRU's z.
template <int64_t KIND, typename scalar_t>
inline scalar_t candidate_weight(scalar_t keep, scalar_t a) {
  if constexpr (KIND == kGru) return scalar_t(1) - keep;
  if constexpr (KIND == kAgru) return a;
  if constexpr (KIND == kAugruPaper) return a * (scalar_t(1) - keep);
  return scalar_t(1) - (scalar_t(1) - a) * keep;
}

// One row of one step: the gates and the new state of H units. Restrict-qualified pointers
// and a branch-free body let the compiler vectorise the loop over units.
template <int64_t KIND, typename scalar_t, bool SAVE>
inline void forward_row(int64_t H, const scalar_t* __restrict x, const scalar_t* __restrict hp,
                        scalar_t a, scalar_t* __restrict h, scalar_t* __restrict out,
                        scalar_t* __restrict gates, scalar_t* __restrict hidden_n,
                        scalar_t* __restrict previous) {
  constexpr int64_t G = KIND == kAgru ? 2 : 3;
  const scalar_t* xn = x + (G - 1) * H;
  const scalar_t* hn = hp + (G - 1) * H;
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t r = Math<scalar_t>::sigmoid(x[j] + hp[j]);
    const scalar_t cand = Math<scalar_t>::tanh(xn[j] + r * hn[j]);
    scalar_t keep = scalar_t(0);
    if constexpr (G == 3) keep = Math<scalar_t>::sigmoid(x[H + j] + hp[H + j]);
    const scalar_t c = candidate_weight<KIND, scalar_t>(keep, a);
    const scalar_t before = h[j];
    const scalar_t after = before + c * (cand - before);
    h[j] = after;
    out[j] = after;
    if constexpr (SAVE) {
      gates[j] = r;
      if constexpr (G == 3) gates[H + j] = keep;
      gates[(G - 1) * H + j] = cand;
      hidden_n[j] = hn[j];
      previous[j] = before;
    }
  }
}

// One row of one step backward. Writes the gradients of the step's input projection (dx),
// of its hidden projection (dhp, twice: the all-steps buffer and the row-ordered step buffer),
// the attention terms per unit, and replaces dh (in: gradient of the new state, without the
// output's) by the part of the previous state's gradient that does not pass through weight_hh.
template <int64_t KIND, typename scalar_t>
inline void backward_row(int64_t H, const scalar_t* __restrict grad_out,
                         const scalar_t* __restrict gates, const scalar_t* __restrict hidden_n,
                         const scalar_t* __restrict previous, scalar_t a,
                         scalar_t* __restrict dh, scalar_t* __restrict dx,
                         scalar_t* __restrict dhp, scalar_t* __restrict dhp_step,
                         scalar_t* __restrict attention_terms) {
  constexpr int64_t G = KIND == kAgru ? 2 : 3;
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t grad = dh[j] + grad_out[j];
    const scalar_t r = gates[j];
    const scalar_t cand = gates[(G - 1) * H + j];
    const scalar_t keep = G == 3 ? gates[H + j] : scalar_t(0);
    const scalar_t c = candidate_weight<KIND, scalar_t>(keep, a);
    const scalar_t d_c = grad * (cand - previous[j]);
    const scalar_t d_cand_pre = grad * c * (scalar_t(1) - cand * cand);
    const scalar_t d_r_pre = d_cand_pre * hidden_n[j] * r * (scalar_t(1) - r);
    dx[j] = d_r_pre;
    dhp[j] = d_r_pre;
    dhp_step[j] = d_r_pre;
    dx[(G - 1) * H + j] = d_cand_pre;
    dhp[(G - 1) * H + j] = d_cand_pre * r;
    dhp_step[(G - 1) * H + j] = d_cand_pre * r;
    if constexpr (G == 3) {
      scalar_t d_keep;
      if constexpr (KIND == kGru) {
        d_keep = -d_c;
      } else if constexpr (KIND == kAugruPaper) {
        d_keep = -d_c * a;
        attention_terms[j] = d_c * (scalar_t(1) - keep);
      } else {
        d_keep = -d_c * (scalar_t(1) - a);
        attention_terms[j] = d_c * keep;
      }
      const scalar_t d_keep_pre = d_keep * keep * (scalar_t(1) - keep);
      dx[H + j] = d_keep_pre;
      dhp[H + j] = d_keep_pre;
      dhp_step[H + j] = d_keep_pre;
    } else {
      attention_terms[j] = d_c;
    }
    dh[j] = grad * (scalar_t(1) - c);
  }
}

template <int64_t KIND, typename scalar_t, bool SAVE>
void forward_loop(const at::Tensor& x_proj, const at::Tensor& attention, const at::Tensor& mask,
                  const at::Tensor& weight_hh, const at::Tensor& bias_hh, const RowOrder& order,
                  at::Tensor& h, at::Tensor& outputs, at::Tensor& gates, at::Tensor& hidden_n,
                  at::Tensor& previous) {
  constexpr int64_t G = KIND == kAgru ? 2 : 3;
  const int64_t B = x_proj.size(0), T = x_proj.size(1), H = weight_hh.size(1), GH = G * H;
  const scalar_t* x = x_proj.data_ptr<scalar_t>();
  const scalar_t* att = KIND == kGru ? nullptr : attention.data_ptr<scalar_t>();
  const bool* m = mask.data_ptr<bool>();
  scalar_t* hs = h.data_ptr<scalar_t>();
  scalar_t* out = outputs.data_ptr<scalar_t>();
  scalar_t* gs = SAVE ? gates.data_ptr<scalar_t>() : nullptr;
  scalar_t* hns = SAVE ? hidden_n.data_ptr<scalar_t>() : nullptr;
  scalar_t* prev = SAVE ? previous.data_ptr<scalar_t>() : nullptr;
  at::Tensor hp = at::empty({B, GH}, x_proj.options());
  scalar_t* hps = hp.data_ptr<scalar_t>();
  const at::Tensor w_t = weight_hh.t();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = order.counts[t];
    if (n > 0) {
      at::Tensor hp_n = hp.narrow(0, 0, n);
      at::addmm_out(hp_n, bias_hh, h.narrow(0, 0, n), w_t);
    }
    for (int64_t i = 0; i < B; ++i) {
      const int64_t row = order.perm[i] * T + t;
      if (i >= n || !m[row]) {
        std::fill(out + row * H, out + (row + 1) * H, scalar_t(0));
        if constexpr (SAVE) std::fill(prev + row * H, prev + (row + 1) * H, scalar_t(0));
        continue;
      }
      const scalar_t a = KIND == kGru ? scalar_t(0) : att[row];
      scalar_t* g = SAVE ? gs + row * GH : nullptr;
      scalar_t* hn_row = SAVE ? hns + row * H : nullptr;
      scalar_t* prev_row = SAVE ? prev + row * H : nullptr;
      forward_row<KIND, scalar_t, SAVE>(H, x + row * GH, hps + i * GH, a, hs + i * H,
                                        out + row * H, g, hn_row, prev_row);
    }
  }
}

template <int64_t KIND, typename scalar_t>
void backward_loop(const at::Tensor& grad_outputs, const at::Tensor& attention,
                   const at::Tensor& mask, const at::Tensor& weight_hh, const RowOrder& order,
                   const at::Tensor& gates, const at::Tensor& hidden_n,
                   const at::Tensor& previous, at::Tensor& dh, at::Tensor& d_x,
                   at::Tensor& d_hidden, at::Tensor& d_attention) {
  constexpr int64_t G = KIND == kAgru ? 2 : 3;
  const int64_t B = gates.size(0), T = gates.size(1), H = weight_hh.size(1), GH = G * H;
  const bool has_go = grad_outputs.defined() && grad_outputs.numel() > 0;
  const scalar_t* go = has_go ? grad_outputs.data_ptr<scalar_t>() : nullptr;
  const scalar_t* att = KIND == kGru ? nullptr : attention.data_ptr<scalar_t>();
  const bool* m = mask.data_ptr<bool>();
  const scalar_t* gs = gates.data_ptr<scalar_t>();
  const scalar_t* hns = hidden_n.data_ptr<scalar_t>();
  const scalar_t* prev = previous.data_ptr<scalar_t>();
  scalar_t* dhs = dh.data_ptr<scalar_t>();
  scalar_t* dx = d_x.data_ptr<scalar_t>();
  scalar_t* dhid = d_hidden.data_ptr<scalar_t>();
  scalar_t* da = KIND == kGru ? nullptr : d_attention.data_ptr<scalar_t>();
  at::Tensor step = at::empty({B, GH}, gates.options());  // d hidden projection, row order
  scalar_t* st = step.data_ptr<scalar_t>();
  std::vector<scalar_t> zeros(H, scalar_t(0));
  std::vector<scalar_t> da_terms(H, scalar_t(0));
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t n = order.counts[t];
    for (int64_t i = 0; i < B; ++i) {
      const int64_t row = order.perm[i] * T + t;
      scalar_t* s = st + i * GH;
      if (i >= n || !m[row]) {
        std::fill(dx + row * GH, dx + (row + 1) * GH, scalar_t(0));
        std::fill(dhid + row * GH, dhid + (row + 1) * GH, scalar_t(0));
        if (KIND != kGru) da[row] = scalar_t(0);
        if (i < n) std::fill(s, s + GH, scalar_t(0));
        continue;
      }
      const scalar_t a = KIND == kGru ? scalar_t(0) : att[row];
      const scalar_t* gor = has_go ? go + row * H : zeros.data();
      backward_row<KIND, scalar_t>(H, gor, gs + row * GH, hns + row * H, prev + row * H, a,
                                   dhs + i * H, dx + row * GH, dhid + row * GH, s,
                                   da_terms.data());
      if constexpr (KIND != kGru) {
        scalar_t total = scalar_t(0);
        for (int64_t j = 0; j < H; ++j) total += da_terms[j];
        da[row] = total;
      }
    }
    if (n > 0) dh.narrow(0, 0, n).addmm_(step.narrow(0, 0, n), weight_hh);
  }
}

template <typename Fn>
void dispatch_kind(int64_t kind, Fn&& fn) {
  switch (kind) {
    case kGru:
      fn(std::integral_constant<int64_t, kGru>{});
      break;
    case kAgru:
      fn(std::integral_constant<int64_t, kAgru>{});
      break;
    case kAugruPaper:
      fn(std::integral_constant<int64_t, kAugruPaper>{});
      break;
    case kAugruAuthors:
      fn(std::integral_constant<int64_t, kAugruAuthors>{});
      break;
    default:
      TORCH_CHECK(false, "unknown recurrence kind code ", kind);
  }
}

void check_inputs(int64_t kind, const at::Tensor& x_proj, const at::Tensor& attention,
                  const at::Tensor& mask, const at::Tensor& weight_hh,
                  const at::Tensor& bias_hh, const at::Tensor& h0) {
  const int64_t G = kind == kAgru ? 2 : 3;
  TORCH_CHECK(x_proj.device().is_cpu(), "the fused recurrence runs on CPU tensors only");
  TORCH_CHECK(x_proj.dim() == 3 && x_proj.is_contiguous(),
              "x_proj must be contiguous (B, T, G*H)");
  const int64_t B = x_proj.size(0), T = x_proj.size(1), H = weight_hh.size(1);
  TORCH_CHECK(x_proj.size(2) == G * H, "x_proj width must be G*H");
  TORCH_CHECK(weight_hh.is_contiguous() && weight_hh.size(0) == G * H,
              "weight_hh must be (G*H, H)");
  TORCH_CHECK(bias_hh.is_contiguous() && bias_hh.numel() == G * H, "bias_hh must be (G*H,)");
  TORCH_CHECK(h0.is_contiguous() && h0.size(0) == B && h0.size(1) == H, "h0 must be (B, H)");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous(), "mask must be bool");
  TORCH_CHECK(mask.size(0) == B && mask.size(1) == T, "mask must be (B, T)");
  if (kind != kGru) {
    TORCH_CHECK(attention.is_contiguous() && attention.size(0) == B && attention.size(1) == T,
                "attention must be contiguous (B, T)");
    TORCH_CHECK(attention.scalar_type() == x_proj.scalar_type(), "attention dtype differs");
  }
  for (const at::Tensor* p : {&weight_hh, &bias_hh, &h0}) {
    TORCH_CHECK(p->scalar_type() == x_proj.scalar_type(), "all inputs must share one dtype");
  }
}

// Returns outputs (B, T, H), final (B, H) and, with save, what backward needs:
// gates (B, T, G*H), the candidate's hidden projection (B, T, H), previous states (B, T, H),
// the row order (B,) and the running-row counts (T,).
std::vector<at::Tensor> recurrence_forward(int64_t kind, const at::Tensor& x_proj,
                                           const at::Tensor& attention, const at::Tensor& mask,
                                           const at::Tensor& weight_hh,
                                           const at::Tensor& bias_hh, const at::Tensor& h0,
                                           bool save) {
  check_inputs(kind, x_proj, attention, mask, weight_hh, bias_hh, h0);
  at::NoGradGuard no_grad;
  const int64_t B = x_proj.size(0), T = x_proj.size(1), H = weight_hh.size(1);
  const RowOrder order = row_order(mask);
  const at::Tensor perm = at::tensor(order.perm, at::kLong);
  at::Tensor h = h0.index_select(0, perm);
  // every position is written: computed at valid steps, zero at padding (gates and
  // hidden_n are read at valid steps only)
  at::Tensor outputs = at::empty({B, T, H}, x_proj.options());
  at::Tensor gates, hidden_n, previous;
  if (save) {
    gates = at::empty_like(x_proj);
    hidden_n = at::empty({B, T, H}, x_proj.options());
    previous = at::empty({B, T, H}, x_proj.options());
  }
  AT_DISPATCH_FLOATING_TYPES(x_proj.scalar_type(), "recurrence_forward", [&] {
    dispatch_kind(kind, [&](auto k) {
      constexpr int64_t KIND = decltype(k)::value;
      if (save) {
        forward_loop<KIND, scalar_t, true>(x_proj, attention, mask, weight_hh, bias_hh, order, h,
                                           outputs, gates, hidden_n, previous);
      } else {
        forward_loop<KIND, scalar_t, false>(x_proj, attention, mask, weight_hh, bias_hh, order,
                                            h, outputs, gates, hidden_n, previous);
      }
    });
  });
  at::Tensor final_state = at::empty_like(h).index_copy_(0, perm, h);
  if (!save) return {outputs, final_state};
  return {outputs, final_state, gates, hidden_n, previous, perm,
          at::tensor(order.counts, at::kLong)};
}

// Returns the gradients of x_proj, attention (undefined for the plain GRU), weight_hh,
// bias_hh and h0.
std::vector<at::Tensor> recurrence_backward(int64_t kind, const at::Tensor& grad_outputs,
                                            const at::Tensor& grad_final,
                                            const at::Tensor& attention, const at::Tensor& mask,
                                            const at::Tensor& weight_hh, const at::Tensor& gates,
                                            const at::Tensor& hidden_n,
                                            const at::Tensor& previous, const at::Tensor& perm,
                                            const at::Tensor& counts) {
  at::NoGradGuard no_grad;
  const int64_t B = gates.size(0), T = gates.size(1), H = weight_hh.size(1), GH = gates.size(2);
  RowOrder order;
  order.perm.assign(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + B);
  order.counts.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + T);
  at::Tensor dh = grad_final.defined() && grad_final.numel() > 0
                      ? grad_final.contiguous().index_select(0, perm)
                      : at::zeros({B, H}, gates.options());
  at::Tensor go = grad_outputs.defined() ? grad_outputs.contiguous() : grad_outputs;
  // every position is written by the loop: gradients at valid steps, zero at padding
  at::Tensor d_x = at::empty({B, T, GH}, gates.options());
  at::Tensor d_hidden = at::empty({B, T, GH}, gates.options());
  at::Tensor d_attention = kind == kGru ? at::Tensor() : at::empty({B, T}, gates.options());
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "recurrence_backward", [&] {
    dispatch_kind(kind, [&](auto k) {
      constexpr int64_t KIND = decltype(k)::value;
      backward_loop<KIND, scalar_t>(go, attention, mask, weight_hh, order, gates, hidden_n,
                                    previous, dh, d_x, d_hidden, d_attention);
    });
  });
  const at::Tensor flat_hidden = d_hidden.view({B * T, GH});
  at::Tensor d_weight = flat_hidden.t().mm(previous.view({B * T, H}));
  at::Tensor d_bias = flat_hidden.sum(0);
  at::Tensor d_h0 = at::empty_like(dh).index_copy_(0, perm, dh);
  return {d_x, d_attention, d_weight, d_bias, d_h0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &recurrence_forward, "fused GRU-family recurrence, forward");
  m.def("backward", &recurrence_backward, "fused GRU-family recurrence, backward");
}
