// The GRU-family recurrence of dien.layers.recurrent, forward and backward of the whole loop
// over steps in one call, for CPU tensors of float32 or float64.
//
// Shapes: B batch, T steps, I input width, H hidden width, G gates (3: reset, keep, candidate;
// 2 for AGRU: reset, candidate). inputs (B, T, I), weight_ih (G*H, I), bias_ih (G*H),
// attention (B, T), mask (B, T) bool, weight_hh (G*H, H), bias_hh (G*H), h0 (B, H).
//
// The rows are dealt into one share per thread (at least 16 rows each), and the shares run in
// parallel: rows are independent of each other, so each thread runs the whole loop over steps
// for its own rows. Per step: two matrix products for the input and hidden projections of the
// share's rows still running, then one loop over those rows and the H units for the biases,
// the gates and the new state. Projecting each step's inputs inside the loop, rather than all
// steps in one product beforehand, keeps the (B, T, G*H) projections out of memory: a step's
// few rows stay in the cache between the product and the gates. A share visits its rows in the
// order of their last valid step, longest first, so the rows still running at step t are a
// prefix and the products skip the finished ones (padding costs nothing). A padded step inside
// a row (not produced by left-aligned batches, but allowed) carries the state. A caller that
// wants only the final state (DIEN's evolution) gets no (B, T, H) outputs: each new state goes
// to a scratch row of the share instead.
//
// Backward runs the steps in reverse with one matrix product per step for the gradient of the
// previous state; the gradients of the inputs and of the weights and biases come from one
// matrix product each over all steps after the loop, from the stored gradients of the
// projections, the inputs and the stored previous states.
//
// The gates' sigmoid and tanh are those of math.h.

#include <ATen/Parallel.h>

#include <numeric>

#include "kernels.h"
#include "math.h"

namespace dien_fused {
namespace {

constexpr int64_t kGru = 0;
constexpr int64_t kAgru = 1;
constexpr int64_t kAugruPaper = 2;
constexpr int64_t kAugruAuthors = 3;

// The rows of one thread's share, ordered by their last valid step (longest first), and per
// step how many of them are still running. Shares are dealt round-robin from the rows of the
// whole batch in that order, so every share has about the same number of steps to run.
struct RowShare {
  std::vector<int64_t> rows;    // original row of each position
  std::vector<int64_t> counts;  // (T,) rows of the share with a valid step at or after t
};

std::vector<RowShare> share_rows(const at::Tensor& mask, int64_t shares) {
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
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t i, int64_t j) { return span[i] > span[j]; });
  std::vector<RowShare> result(shares);
  for (RowShare& share : result) share.counts.assign(T, 0);
  for (int64_t i = 0; i < B; ++i) {
    RowShare& share = result[i % shares];
    share.rows.push_back(order[i]);
    for (int64_t t = 0; t < span[order[i]]; ++t) share.counts[t] += 1;
  }
  return result;
}

// How many shares to split a batch into: one per thread, each of at least kRowsPerShare rows.
// Inside another parallel region at::parallel_for runs the shares one after another.
constexpr int64_t kRowsPerShare = 16;

int64_t share_count(int64_t B) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / kRowsPerShare));
}

// Run fn(share) for every share, the shares in parallel. Grad mode is per thread, so each
// worker turns it off itself: the matrix products write into buffers (out= forms), which
// autograd refuses while a weight that requires a gradient is an operand.
template <typename Fn>
void for_each_share(const std::vector<RowShare>& shares, Fn&& fn) {
  const int64_t n = static_cast<int64_t>(shares.size());
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    at::NoGradGuard no_grad;
    for (int64_t s = begin; s < end; ++s) fn(shares[s]);
  });
}

// Copy rows between a (B, W) tensor and a share's own (n, W) tensor in the share's order.
template <typename scalar_t>
void gather_rows(const scalar_t* from, const std::vector<int64_t>& rows, int64_t W, scalar_t* to) {
  for (size_t i = 0; i < rows.size(); ++i) std::copy_n(from + rows[i] * W, W, to + i * W);
}

template <typename scalar_t>
void scatter_rows(const scalar_t* from, const std::vector<int64_t>& rows, int64_t W, scalar_t* to) {
  for (size_t i = 0; i < rows.size(); ++i) std::copy_n(from + i * W, W, to + rows[i] * W);
}

// Candidate weight c of h_t = h_{t-1} + c (candidate - h_{t-1}); keep is torch.nn.GRU's z.
template <int64_t KIND, typename scalar_t>
inline scalar_t candidate_weight(scalar_t keep, scalar_t a) {
  if constexpr (KIND == kGru) return scalar_t(1) - keep;
  if constexpr (KIND == kAgru) return a;
  if constexpr (KIND == kAugruPaper) return a * (scalar_t(1) - keep);
  return scalar_t(1) - (scalar_t(1) - a) * keep;
}

// One row of one step: the gates and the new state of H units, from the step's input
// projection xp and hidden projection hp (G*H each, without their biases bi and bh).
// Restrict-qualified pointers and a branch-free body let the compiler vectorise the loop over
// units.
template <int64_t KIND, typename scalar_t, bool SAVE>
inline void forward_row(int64_t H, const scalar_t* __restrict xp, const scalar_t* __restrict hp,
                        const scalar_t* __restrict bi, const scalar_t* __restrict bh, scalar_t a,
                        scalar_t* __restrict h, scalar_t* __restrict out,
                        scalar_t* __restrict gates, scalar_t* __restrict hidden_n,
                        scalar_t* __restrict previous) {
  constexpr int64_t G = KIND == kAgru ? 2 : 3;
  constexpr int64_t N = G - 1;  // the candidate's gate block
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t r = Math<scalar_t>::sigmoid(xp[j] + bi[j] + hp[j] + bh[j]);
    const scalar_t hn = hp[N * H + j] + bh[N * H + j];
    const scalar_t cand = Math<scalar_t>::tanh(xp[N * H + j] + bi[N * H + j] + r * hn);
    scalar_t keep = scalar_t(0);
    if constexpr (G == 3) {
      keep = Math<scalar_t>::sigmoid(xp[H + j] + bi[H + j] + hp[H + j] + bh[H + j]);
    }
    const scalar_t c = candidate_weight<KIND, scalar_t>(keep, a);
    const scalar_t before = h[j];
    const scalar_t after = before + c * (cand - before);
    h[j] = after;
    out[j] = after;
    if constexpr (SAVE) {
      gates[j] = r;
      if constexpr (G == 3) gates[H + j] = keep;
      gates[N * H + j] = cand;
      hidden_n[j] = hn;
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

// The forward loop over all steps for one share of the rows. h (B, H) holds the initial state
// on entry and the final state on return; the share reads and writes only its own rows.
template <int64_t KIND, typename scalar_t, bool SAVE>
void forward_share(const RowShare& share, const at::Tensor& inputs, const at::Tensor& weight_ih,
                   const at::Tensor& bias_ih, const at::Tensor& attention, const at::Tensor& mask,
                   const at::Tensor& weight_hh, const at::Tensor& bias_hh, at::Tensor& h,
                   at::Tensor& outputs, at::Tensor& gates, at::Tensor& hidden_n,
                   at::Tensor& previous) {
  constexpr int64_t G = KIND == kAgru ? 2 : 3;
  const int64_t T = inputs.size(1), I = inputs.size(2), H = weight_hh.size(1), GH = G * H;
  const int64_t n_rows = static_cast<int64_t>(share.rows.size());
  const scalar_t* in = inputs.data_ptr<scalar_t>();
  const scalar_t* att = KIND == kGru ? nullptr : attention.data_ptr<scalar_t>();
  const scalar_t* bi = bias_ih.data_ptr<scalar_t>();
  const scalar_t* bh = bias_hh.data_ptr<scalar_t>();
  const bool* m = mask.data_ptr<bool>();
  // without outputs, each row's new state is written to a scratch row that stays in the cache
  const bool all_outputs = outputs.defined();
  at::Tensor scratch = all_outputs ? at::Tensor() : at::empty({n_rows, H}, inputs.options());
  scalar_t* out = all_outputs ? outputs.data_ptr<scalar_t>() : scratch.data_ptr<scalar_t>();
  scalar_t* gs = SAVE ? gates.data_ptr<scalar_t>() : nullptr;
  scalar_t* hns = SAVE ? hidden_n.data_ptr<scalar_t>() : nullptr;
  scalar_t* prev = SAVE ? previous.data_ptr<scalar_t>() : nullptr;
  const at::TensorOptions options = inputs.options();
  at::Tensor state = at::empty({n_rows, H}, options);  // the share's rows, in order
  scalar_t* hs = state.data_ptr<scalar_t>();
  gather_rows(h.data_ptr<scalar_t>(), share.rows, H, hs);
  // this step's inputs, in order; zeros: a product may run over the rows past the step's last
  at::Tensor step_inputs = at::zeros({n_rows, I}, options);
  scalar_t* xs = step_inputs.data_ptr<scalar_t>();
  at::Tensor xp = at::empty({n_rows, GH}, options);  // input projections without bias
  at::Tensor hp = at::empty({n_rows, GH}, options);  // hidden projections without bias
  const scalar_t* xps = xp.data_ptr<scalar_t>();
  const scalar_t* hps = hp.data_ptr<scalar_t>();
  const at::Tensor w_ih_t = weight_ih.t();
  const at::Tensor w_hh_t = weight_hh.t();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = share.counts[t];
    if (n > 0) {
      for (int64_t i = 0; i < n; ++i) std::copy_n(in + (share.rows[i] * T + t) * I, I, xs + i * I);
      matmul_rows(xp, step_inputs, w_ih_t, n);
      matmul_rows(hp, state, w_hh_t, n);
    }
    for (int64_t i = 0; i < n_rows; ++i) {
      const int64_t row = share.rows[i] * T + t;
      if (i >= n || !m[row]) {
        if (all_outputs) std::fill(out + row * H, out + (row + 1) * H, scalar_t(0));
        if constexpr (SAVE) std::fill(prev + row * H, prev + (row + 1) * H, scalar_t(0));
        continue;
      }
      const scalar_t a = KIND == kGru ? scalar_t(0) : att[row];
      scalar_t* g = SAVE ? gs + row * GH : nullptr;
      scalar_t* hn_row = SAVE ? hns + row * H : nullptr;
      scalar_t* prev_row = SAVE ? prev + row * H : nullptr;
      scalar_t* out_row = all_outputs ? out + row * H : out + i * H;
      forward_row<KIND, scalar_t, SAVE>(H, xps + i * GH, hps + i * GH, bi, bh, a, hs + i * H,
                                        out_row, g, hn_row, prev_row);
    }
  }
  scatter_rows(hs, share.rows, H, h.data_ptr<scalar_t>());
}

// The backward loop over all steps for one share of the rows. dh (B, H) holds the gradient of
// the final state on entry and that of the initial state on return.
template <int64_t KIND, typename scalar_t>
void backward_share(const RowShare& share, const at::Tensor& grad_outputs,
                    const at::Tensor& attention, const at::Tensor& mask,
                    const at::Tensor& weight_hh, const at::Tensor& gates,
                    const at::Tensor& hidden_n, const at::Tensor& previous, at::Tensor& dh,
                    at::Tensor& d_x, at::Tensor& d_hidden, at::Tensor& d_attention) {
  constexpr int64_t G = KIND == kAgru ? 2 : 3;
  const int64_t T = gates.size(1), H = weight_hh.size(1), GH = G * H;
  const int64_t n_rows = static_cast<int64_t>(share.rows.size());
  const bool has_go = grad_outputs.defined() && grad_outputs.numel() > 0;
  const scalar_t* go = has_go ? grad_outputs.data_ptr<scalar_t>() : nullptr;
  const scalar_t* att = KIND == kGru ? nullptr : attention.data_ptr<scalar_t>();
  const bool* m = mask.data_ptr<bool>();
  const scalar_t* gs = gates.data_ptr<scalar_t>();
  const scalar_t* hns = hidden_n.data_ptr<scalar_t>();
  const scalar_t* prev = previous.data_ptr<scalar_t>();
  scalar_t* dx = d_x.data_ptr<scalar_t>();
  scalar_t* dhid = d_hidden.data_ptr<scalar_t>();
  scalar_t* da = KIND == kGru ? nullptr : d_attention.data_ptr<scalar_t>();
  at::Tensor d_state = at::empty({n_rows, H}, gates.options());  // the share's rows, in order
  scalar_t* dhs = d_state.data_ptr<scalar_t>();
  gather_rows(dh.data_ptr<scalar_t>(), share.rows, H, dhs);
  at::Tensor step = at::empty({n_rows, GH}, gates.options());  // d hidden projection
  scalar_t* st = step.data_ptr<scalar_t>();
  std::vector<scalar_t> zeros(H, scalar_t(0));
  std::vector<scalar_t> da_terms(H, scalar_t(0));
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t n = share.counts[t];
    for (int64_t i = 0; i < n_rows; ++i) {
      const int64_t row = share.rows[i] * T + t;
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
    if (n > 0) d_state.narrow(0, 0, n).addmm_(step.narrow(0, 0, n), weight_hh);
  }
  scatter_rows(dhs, share.rows, H, dh.data_ptr<scalar_t>());
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

void check_inputs(int64_t kind, const at::Tensor& inputs, const at::Tensor& weight_ih,
                  const at::Tensor& bias_ih, const at::Tensor& attention, const at::Tensor& mask,
                  const at::Tensor& weight_hh, const at::Tensor& bias_hh, const at::Tensor& h0) {
  const int64_t G = kind == kAgru ? 2 : 3;
  TORCH_CHECK(inputs.device().is_cpu(), "the fused recurrence runs on CPU tensors only");
  TORCH_CHECK(inputs.dim() == 3 && inputs.is_contiguous(), "inputs must be contiguous (B, T, I)");
  const int64_t B = inputs.size(0), T = inputs.size(1), I = inputs.size(2);
  const int64_t H = weight_hh.size(1);
  TORCH_CHECK(weight_ih.dim() == 2 && weight_ih.size(0) == G * H && weight_ih.size(1) == I,
              "weight_ih must be (G*H, I)");
  TORCH_CHECK(bias_ih.numel() == G * H, "bias_ih must be (G*H,)");
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == G * H, "weight_hh must be (G*H, H)");
  TORCH_CHECK(bias_hh.numel() == G * H, "bias_hh must be (G*H,)");
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H, "h0 must be (B, H)");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous(), "mask must be bool");
  TORCH_CHECK(mask.size(0) == B && mask.size(1) == T, "mask must be (B, T)");
  for (const at::Tensor* p : {&weight_ih, &bias_ih, &weight_hh, &bias_hh, &h0}) {
    TORCH_CHECK(p->is_contiguous(), "weights, biases and h0 must be contiguous");
    TORCH_CHECK(p->scalar_type() == inputs.scalar_type(), "all inputs must share one dtype");
  }
  if (kind != kGru) {
    TORCH_CHECK(attention.is_contiguous() && attention.size(0) == B && attention.size(1) == T,
                "attention must be contiguous (B, T)");
    TORCH_CHECK(attention.scalar_type() == inputs.scalar_type(), "attention dtype differs");
  }
}

}  // namespace

// Returns outputs (B, T, H) (undefined without all_outputs: only the final state is wanted),
// final (B, H) and, with save, what backward needs: gates (B, T, G*H), the candidate's hidden
// projection (B, T, H) and previous states (B, T, H).
std::vector<at::Tensor> recurrence_forward(int64_t kind, const at::Tensor& inputs,
                                           const at::Tensor& weight_ih, const at::Tensor& bias_ih,
                                           const at::Tensor& attention, const at::Tensor& mask,
                                           const at::Tensor& weight_hh,
                                           const at::Tensor& bias_hh, const at::Tensor& h0,
                                           bool save, bool all_outputs) {
  check_inputs(kind, inputs, weight_ih, bias_ih, attention, mask, weight_hh, bias_hh, h0);
  at::NoGradGuard no_grad;
  const int64_t B = inputs.size(0), T = inputs.size(1), H = weight_hh.size(1);
  const int64_t GH = weight_hh.size(0);
  const std::vector<RowShare> shares = share_rows(mask, share_count(B));
  at::Tensor h = h0.clone(at::MemoryFormat::Contiguous);  // becomes the final state
  // every position is written: computed at valid steps, zero at padding (gates and
  // hidden_n are read at valid steps only)
  at::Tensor outputs = all_outputs ? at::empty({B, T, H}, inputs.options()) : at::Tensor();
  at::Tensor gates, hidden_n, previous;
  if (save) {
    gates = at::empty({B, T, GH}, inputs.options());
    hidden_n = at::empty({B, T, H}, inputs.options());
    previous = at::empty({B, T, H}, inputs.options());
  }
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "recurrence_forward", [&] {
    dispatch_kind(kind, [&](auto k) {
      constexpr int64_t KIND = decltype(k)::value;
      for_each_share(shares, [&](const RowShare& share) {
        if (save) {
          forward_share<KIND, scalar_t, true>(share, inputs, weight_ih, bias_ih, attention, mask,
                                              weight_hh, bias_hh, h, outputs, gates, hidden_n,
                                              previous);
        } else {
          forward_share<KIND, scalar_t, false>(share, inputs, weight_ih, bias_ih, attention,
                                               mask, weight_hh, bias_hh, h, outputs, gates,
                                               hidden_n, previous);
        }
      });
    });
  });
  if (!save) return {outputs, h};
  return {outputs, h, gates, hidden_n, previous};
}

// Returns the gradients of inputs, weight_ih, bias_ih, attention (undefined for the plain
// GRU), weight_hh, bias_hh and h0.
std::vector<at::Tensor> recurrence_backward(int64_t kind, const at::Tensor& grad_outputs,
                                            const at::Tensor& grad_final,
                                            const at::Tensor& inputs,
                                            const at::Tensor& weight_ih,
                                            const at::Tensor& attention, const at::Tensor& mask,
                                            const at::Tensor& weight_hh, const at::Tensor& gates,
                                            const at::Tensor& hidden_n,
                                            const at::Tensor& previous) {
  at::NoGradGuard no_grad;
  const int64_t B = gates.size(0), T = gates.size(1), H = weight_hh.size(1), GH = gates.size(2);
  const int64_t I = inputs.size(2);
  const std::vector<RowShare> shares = share_rows(mask, share_count(B));
  // becomes the gradient of the initial state
  at::Tensor dh = grad_final.defined() && grad_final.numel() > 0
                      ? grad_final.clone(at::MemoryFormat::Contiguous)
                      : at::zeros({B, H}, gates.options());
  at::Tensor go = grad_outputs.defined() ? grad_outputs.contiguous() : grad_outputs;
  // every position is written by the loop: gradients at valid steps, zero at padding
  at::Tensor d_x = at::empty({B, T, GH}, gates.options());
  at::Tensor d_hidden = at::empty({B, T, GH}, gates.options());
  at::Tensor d_attention = kind == kGru ? at::Tensor() : at::empty({B, T}, gates.options());
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "recurrence_backward", [&] {
    dispatch_kind(kind, [&](auto k) {
      constexpr int64_t KIND = decltype(k)::value;
      for_each_share(shares, [&](const RowShare& share) {
        backward_share<KIND, scalar_t>(share, go, attention, mask, weight_hh, gates, hidden_n,
                                       previous, dh, d_x, d_hidden, d_attention);
      });
    });
  });
  // the input and hidden projections' gradients, one matrix product each over all steps
  const at::Tensor flat_x = d_x.view({B * T, GH});
  const at::Tensor flat_hidden = d_hidden.view({B * T, GH});
  at::Tensor d_inputs = flat_x.mm(weight_ih).view({B, T, I});
  at::Tensor d_weight_ih = flat_x.t().mm(inputs.view({B * T, I}));
  at::Tensor d_bias_ih = flat_x.sum(0);
  at::Tensor d_weight_hh = flat_hidden.t().mm(previous.view({B * T, H}));
  at::Tensor d_bias_hh = flat_hidden.sum(0);
  return {d_inputs, d_weight_ih, d_bias_ih, d_attention, d_weight_hh, d_bias_hh, dh};
}

}  // namespace dien_fused
