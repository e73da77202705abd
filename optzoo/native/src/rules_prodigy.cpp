// Prodigy (optzoo/optimizer/prodigy.py) in two calls around the d estimate: the first (norm_sums) advances the
// moments and returns the estimate's sums, <g, p0 - w> and sum |s|, per tensor; Python forms d; the second
// updates the weights. State slots: p0, s, m, v.
#include <vector>

#include "api.h"

namespace optzoo {
namespace {

// ------------------------------------------------------------------------------------------ pass 1: moments, s
// hyper = [beta1, beta2, beta3]; aux = [d*(1-beta1), d*d*(1-beta2), s coefficient] (float64, then float32)
void prepare_moments(const double* h, double, double, int64_t, const double* aux, float* sc) {
    sc[0] = f32(h[0]);
    sc[1] = f32(aux[0]);
    sc[2] = f32(h[1]);
    sc[3] = f32(aux[1]);
    sc[4] = f32(h[2]);
    sc[5] = f32(aux[2]);
    sc[6] = h[0] > 0.0 ? 1.0f : 0.0f;
}

const char* check_moments(const double*, int n, uint32_t present) {
    return n == 3 && present == 15u ? nullptr : "prodigy_moments takes 3 hyperparameters and four states";
}

// m = b1*m + d(1-b1)*g (beta1 > 0); v = b2*v + d^2(1-b2)*g^2; s = b3*s + coef*g
struct MomentsRule {
    static inline void elem(const float* sc, float&, float g, float*, float* s, float* mean, float* var,
                            int64_t i) {
        const float m = mean[i];
        mean[i] = sc[6] != 0.0f ? m * sc[0] + sc[1] * g : m;
        var[i] = var[i] * sc[2] + (sc[3] * g) * g;
        s[i] = s[i] * sc[4] + sc[5] * g;
    }
};

// ------------------------------------------------------------------------------------------ pass 2: the weights
// hyper = [beta1]; aux = [dlr, d*eps, -wd*dlr (0: no decoupled decay), -dlr*d]
void prepare_apply(const double* h, double, double, int64_t, const double* aux, float* sc) {
    sc[0] = f32(-aux[0]);
    sc[1] = f32(aux[1]);
    sc[2] = f32(aux[2]);
    sc[3] = aux[2] != 0.0 ? 1.0f : 0.0f;
    sc[4] = h[0] > 0.0 ? 1.0f : 0.0f;
    sc[5] = f32(aux[3]);
}

const char* check_apply(const double*, int n, uint32_t present) {
    return n == 1 && present == 15u ? nullptr : "prodigy_apply takes 1 hyperparameter and four states";
}

// w += -wd*dlr*w (decouple); w += -dlr * m/(sqrt(v) + d*eps)  (beta1 = 0: -dlr*d * g/(sqrt(v) + d*eps))
struct ApplyRule {
    static inline void elem(const float* sc, float& w, float g, float*, float*, float* mean, float* var,
                            int64_t i) {
        const float w0 = w;
        const float w1 = sc[3] != 0.0f ? w0 + sc[2] * w0 : w0;
        const float denom = std::sqrt(var[i]) + sc[1];
        w = sc[4] != 0.0f ? w1 + sc[0] * (mean[i] / denom) : w1 + sc[5] * (g / denom);
    }
};

// The moments pass as a norm stage (core: norm_sums): it advances m, v, s as MomentsRule and returns, per tensor,
// [<g, p0 - w>, sum |s|] (float64 partial sums per chunk, added in chunk order): the d estimate's two sums in the
// same pass. The weights are float32 here (Prodigy's native path takes no master copies).
void moments_and_sums(const StepArgs& a, int, const double*, double* out) {
    std::vector<double> part(2 * a.n_chunks, 0.0);
    const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
#pragma omp parallel for schedule(dynamic, 4) num_threads(a.n_threads) if (parallel)
    for (int64_t c = 0; c < a.n_chunks; ++c) {
        const Chunk& ch = a.chunks[c];
        const int32_t t = ch.tensor;
        const float* sc = a.scalars + t * kMaxScalars;
        const float* __restrict w = a.weights[t] + ch.offset;
        const float* __restrict g = static_cast<const float*>(a.grads[t]) + ch.grad_offset;
        const float* __restrict p0 = a.states[0][t] + ch.offset;
        float* __restrict s = a.states[1][t] + ch.offset;
        float* __restrict mean = a.states[2][t] + ch.offset;
        float* __restrict var = a.states[3][t] + ch.offset;
        double dot = 0.0, abs_sum = 0.0;
#pragma omp simd reduction(+ : dot, abs_sum)
        for (int64_t i = 0; i < ch.length; ++i) {
            const float gi = g[i];
            dot += static_cast<double>(gi) * static_cast<double>(p0[i] - w[i]);
            const float m = mean[i];
            mean[i] = sc[6] != 0.0f ? m * sc[0] + sc[1] * gi : m;
            var[i] = var[i] * sc[2] + (sc[3] * gi) * gi;
            const float si = s[i] * sc[4] + sc[5] * gi;
            s[i] = si;
            abs_sum += std::fabs(si);
        }
        part[2 * c] = dot;
        part[2 * c + 1] = abs_sum;
    }
    for (int64_t c = 0; c < a.n_chunks; ++c) {
        out[2 * a.chunks[c].tensor] += part[2 * c];
        out[2 * a.chunks[c].tensor + 1] += part[2 * c + 1];
    }
}

const RuleDesc moments = [] {
    RuleDesc d{"prodigy_moments", 4, 0u, 0u, false, false, check_moments, prepare_moments, elementwise<MomentsRule>,
               3};
    d.stage_sums[0] = 2;
    d.norm_stage = moments_and_sums;
    return d;
}();
const RuleDesc apply{"prodigy_apply", 4, 0u, 0u, false, false, check_apply, prepare_apply, elementwise<ApplyRule>,
                     4};
OPTZOO_RULE(moments);
OPTZOO_RULE(apply);

}  // namespace
}  // namespace optzoo
