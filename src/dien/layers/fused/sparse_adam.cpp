// torch.optim.SparseAdam's update (lazy Adam: only the rows a gradient names move) in one pass
// over those rows, for CPU tensors of float32 or float64.
//
// Shapes: N rows in the table, D row width, R rows named by the (coalesced) gradient.
// param, exp_avg, exp_avg_sq (N, D); rows (R,) distinct row indices; values (R, D) the
// gradient's rows. SparseAdam reads each named row of the moments and the parameter, then
// adds an update back through a sparse tensor, several passes over rows scattered through
// tables of tens of MB; here each row is read and written once, the rows split among the
// threads. The arithmetic is SparseAdam's, in its order.

#include <ATen/Parallel.h>

#include <cmath>

#include "kernels.h"

namespace dien_fused {

void sparse_adam_step(at::Tensor& param, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                      const at::Tensor& rows, const at::Tensor& values, double step_size,
                      double beta1, double beta2, double eps) {
  TORCH_CHECK(param.device().is_cpu() && param.dim() == 2 && param.is_contiguous(),
              "param must be a contiguous CPU (N, D) tensor");
  const int64_t N = param.size(0), D = param.size(1), R = rows.numel();
  for (const at::Tensor* t : {&exp_avg, &exp_avg_sq}) {
    TORCH_CHECK(t->sizes() == param.sizes() && t->is_contiguous(), "moments must match param");
    TORCH_CHECK(t->scalar_type() == param.scalar_type(), "moments must share param's dtype");
  }
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.dim() == 1 && rows.is_contiguous(),
              "rows must be int64 (R,)");
  TORCH_CHECK(values.dim() == 2 && values.size(0) == R && values.size(1) == D &&
                  values.is_contiguous() && values.scalar_type() == param.scalar_type(),
              "values must be contiguous (R, D) of param's dtype");
  const int64_t* row = rows.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) TORCH_CHECK(row[r] >= 0 && row[r] < N, "row out of range");
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "sparse_adam_step", [&] {
    scalar_t* p = param.data_ptr<scalar_t>();
    scalar_t* m = exp_avg.data_ptr<scalar_t>();
    scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
    const scalar_t* g = values.data_ptr<scalar_t>();
    const scalar_t one_minus_beta1 = scalar_t(1 - beta1), one_minus_beta2 = scalar_t(1 - beta2);
    const scalar_t epsilon = scalar_t(eps), step = scalar_t(step_size);
    at::parallel_for(0, R, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t offset = row[r] * D;
        scalar_t* __restrict p_row = p + offset;
        scalar_t* __restrict m_row = m + offset;
        scalar_t* __restrict v_row = v + offset;
        const scalar_t* __restrict g_row = g + r * D;
        for (int64_t j = 0; j < D; ++j) {
          const scalar_t grad = g_row[j];
          const scalar_t m_old = m_row[j], v_old = v_row[j];
          const scalar_t m_new = (grad - m_old) * one_minus_beta1 + m_old;
          const scalar_t v_new = (grad * grad - v_old) * one_minus_beta2 + v_old;
          m_row[j] = m_new;
          v_row[j] = v_new;
          p_row[j] += -step * (m_new / (std::sqrt(v_new) + epsilon));
        }
      }
    });
  });
}

}  // namespace dien_fused
