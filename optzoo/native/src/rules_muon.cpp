// Muon (optzoo/optimizer/muon.py): the element-wise passes before and after the Newton-Schulz iteration (api.h).
// Each line is one torch operation of torch.optim.Muon, with torch's rounding: lerp and add-with-alpha as one
// fused multiply-add (torch_lerp, torch_add_alpha), the multiplication rounded on its own, bfloat16 rounded to
// nearest even.
#include "api.h"

namespace optzoo {
namespace {

// elements per block of the transposed apply (a 64 x 64 tile of bfloat16 is 8 KiB: both tiles stay in L1)
constexpr int64_t kTile = 64;

template <bool kNesterov>
void direction_span(const float* __restrict g, float* __restrict m, BFloat16* __restrict out, int64_t n,
                    float one_minus_mu, float mu) {
    for (int64_t i = 0; i < n; ++i) {
        const float momentum = torch_lerp(m[i], g[i], one_minus_mu);  // momentum.lerp_(g, 1 - mu)
        m[i] = momentum;
        out[i] = from_float<BFloat16>(kNesterov ? torch_lerp(g[i], momentum, mu) : momentum);
    }
}

inline bool run_parallel(int n_threads, int64_t n) { return n_threads > 1 && n >= kParallelMin; }

}  // namespace

void muon_direction(const float* grad, float* momentum, BFloat16* out, int64_t n, float one_minus_mu, float mu,
                    bool nesterov, int n_threads) {
#pragma omp parallel num_threads(n_threads) if (run_parallel(n_threads, n))
    {
        const int64_t parts = omp_get_num_threads(), k = omp_get_thread_num();
        const int64_t lo = n * k / parts, hi = n * (k + 1) / parts;
        if (nesterov) direction_span<true>(grad + lo, momentum + lo, out + lo, hi - lo, one_minus_mu, mu);
        else direction_span<false>(grad + lo, momentum + lo, out + lo, hi - lo, one_minus_mu, mu);
    }
}

void muon_apply(float* weight, const BFloat16* ortho, int64_t rows, int64_t cols, int64_t row_stride,
                int64_t col_stride, float decay, float alpha, int n_threads) {
    const bool parallel = run_parallel(n_threads, rows * cols);
    if (col_stride == 1) {  // rows of the update are contiguous
#pragma omp parallel for num_threads(n_threads) if (parallel) schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            float* __restrict w = weight + r * cols;
            const BFloat16* __restrict o = ortho + r * row_stride;
            for (int64_t c = 0; c < cols; ++c) w[c] = torch_add_alpha(w[c] * decay, to_float(o[c]), alpha);
        }
        return;
    }
    // any other layout (the transposed result of a tall matrix): tile by tile, each tile's reads in cache
    const int64_t row_tiles = (rows + kTile - 1) / kTile;
#pragma omp parallel for num_threads(n_threads) if (parallel) schedule(static)
    for (int64_t t = 0; t < row_tiles; ++t) {
        const int64_t r0 = t * kTile, r1 = r0 + kTile < rows ? r0 + kTile : rows;
        for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
            const int64_t c1 = c0 + kTile < cols ? c0 + kTile : cols;
            for (int64_t r = r0; r < r1; ++r) {
                float* __restrict w = weight + r * cols;
                const BFloat16* o = ortho + r * row_stride;
                for (int64_t c = c0; c < c1; ++c)
                    w[c] = torch_add_alpha(w[c] * decay, to_float(o[c * col_stride]), alpha);
            }
        }
    }
}

}  // namespace optzoo
