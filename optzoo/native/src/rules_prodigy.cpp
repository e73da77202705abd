// Prodigy (optzoo/optimizer/prodigy.py). State slots: p0, s, m, v.
//
// The weights move with a step size d estimated from sums over EVERY tensor, so a step is two passes over all of
// them with the estimate in between:
//   pass 1  per active tensor (lr > 0): advances m, v, s and sums <g, p0 - w> and sum |s| (float64 partial sums
//           per chunk, added per tensor in chunk order): reads g, p0, w, s, m, v; writes s, m, v
//   d       the estimate from those sums, in float64 in prodigyopt's order (Prodigy._apply's readable form)
//   pass 2  every tensor: w -= wd*dlr*w (decoupled), w -= dlr * m/(sqrt(v) + d*eps): reads w, m, v; writes w
// 36 + 16 = 52 bytes per parameter (a single pass would move 40). The rule `prodigy` is the whole step in one call
// (`step_into`, which returns the new d: results = [stepped (0: every s is 0, nothing moved), d, d_max,
// d_numerator]). Sharded training needs the sums of every rank before d: it runs pass 1 as `prodigy_moments`
// (`norm_sums`, returning the per-tensor sums), adds them up, forms d in Python and runs pass 2 as
// `prodigy_apply`. Both forms share the element arithmetic below, written as torch rounds prodigyopt's ops
// (`x.mul_(a).add_(g, alpha=b)` and `addcmul_` are one fused multiply-add in torch's CPU kernels).
#include <vector>

#include "api.h"

namespace optzoo {
namespace {

// ------------------------------------------------------------------------------------------ element arithmetic
// Pass-1 scalars (slots 0-6, as prepare_moments and prepare_prodigy write them): b1, d(1-b1), b2, d^2(1-b2), b3, the
// s coefficient, beta1 > 0 (1/0). m = b1*m + d(1-b1)*g (beta1 > 0); v = b2*v + d^2(1-b2)*g^2; s = b3*s + coef*g
inline void advance(const float* sc, float g, float& m, float& v, float& s) {
    m = sc[6] != 0.0f ? std::fma(g, sc[1], m * sc[0]) : m;
    v = std::fma(sc[3] * g, g, v * sc[2]);
    s = std::fma(g, sc[5], s * sc[4]);
}

// Pass-2 scalars: -dlr, d*eps, -wd*dlr (decoupled decay), decay (1/0), beta1 > 0 (1/0), -dlr*d.
// w += -wd*dlr*w; w += -dlr * m/(sqrt(v) + d*eps)  (beta1 = 0: -dlr*d * g/(sqrt(v) + d*eps))
inline float moved(const float* p2, float w0, float g, float m, float v) {
    const float w1 = p2[3] != 0.0f ? std::fma(w0, p2[2], w0) : w0;
    const float denom = std::sqrt(v) + p2[1];
    return p2[4] != 0.0f ? w1 + p2[0] * (m / denom) : w1 + p2[5] * (g / denom);
}

// ------------------------------------------------------------------------------------------ the whole step
// hyper = [beta1, beta2, beta3, epsilon, d, d0, d_max, d_numerator, d_coef, growth_rate, bias_correction factor
//          (1 without), safeguard_warmup (1/0), decouple (1/0), rescale_grad, clip_gradient (-1: none)];
// per tensor lr, wd (float64 in StepArgs::lrs, wds). Scalars: 0-6 as above, 7 active (lr > 0), 8 rescale_grad,
// 9 clip, 10 wd of the L2 term (decouple = 0), 11 L2 term (1/0).
constexpr int kHyper = 15;

inline double step_rate(const double* h, double lr) { return h[4] * lr * h[10]; }  // dlr = d * lr * bias correction

void prepare_prodigy(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    const double d = h[4], d0 = h[5], dlr = step_rate(h, lr);
    sc[0] = f32(h[0]);
    sc[1] = f32(d * (1 - h[0]));
    sc[2] = f32(h[1]);
    sc[3] = f32(d * d * (1 - h[1]));
    sc[4] = f32(h[2]);
    sc[5] = f32(h[11] != 0.0 ? (d / d0) * d : (d / d0) * dlr);
    sc[6] = h[0] > 0.0 ? 1.0f : 0.0f;
    sc[7] = lr > 0.0 ? 1.0f : 0.0f;
    sc[8] = f32(h[13]);
    sc[9] = f32(h[14]);
    const bool l2 = wd != 0.0 && h[12] == 0.0;
    sc[10] = l2 ? f32(wd) : 0.0f;
    sc[11] = l2 ? 1.0f : 0.0f;
}

const char* check_prodigy(const double*, int n, uint32_t present) {
    return n == kHyper && present == 15u ? nullptr : "prodigy takes 15 hyperparameters and four states";
}

// g = clip(rescale_grad*grad) (+ wd*w without decouple), as Prodigy._gradient
inline float gradient(const float* sc, float grad, float w) {
    const float g = rescale_clip(grad, sc[8], sc[9]);
    return sc[11] != 0.0f ? std::fma(w, sc[10], g) : g;
}

// Pass 1 of every active tensor: out[2t] = <g, p0 - w>, out[2t + 1] = sum |s| (float64 partial sums per chunk,
// added in chunk order, so the sums do not depend on the thread count).
void moments_pass(const StepArgs& a, double* out) {
    std::vector<double> part(2 * a.n_chunks, 0.0);
    const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
#pragma omp parallel for schedule(dynamic, 4) num_threads(a.n_threads) if (parallel)
    for (int64_t c = 0; c < a.n_chunks; ++c) {
        const Chunk& ch = a.chunks[c];
        const int32_t t = ch.tensor;
        const float* sc = a.scalars + t * kMaxScalars;
        if (sc[7] == 0.0f) continue;
        const float* __restrict w = a.weights[t] + ch.offset;
        const float* __restrict grad = static_cast<const float*>(a.grads[t]) + ch.grad_offset;
        const float* __restrict p0 = a.states[0][t] + ch.offset;
        float* __restrict s = a.states[1][t] + ch.offset;
        float* __restrict mean = a.states[2][t] + ch.offset;
        float* __restrict var = a.states[3][t] + ch.offset;
        double dot = 0.0, abs_sum = 0.0;
#pragma omp simd reduction(+ : dot, abs_sum)
        for (int64_t i = 0; i < ch.length; ++i) {
            const float g = gradient(sc, grad[i], w[i]);
            dot += static_cast<double>(g) * static_cast<double>(p0[i] - w[i]);
            float m = mean[i], v = var[i], si = s[i];
            advance(sc, g, m, v, si);
            mean[i] = m;
            var[i] = v;
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

// The pass-2 scalars of a tensor with step rate dlr, weight decay wd and the new estimate d
inline void apply_scalars(const double* h, double dlr, double wd, double d, float* p2) {
    const bool decay = wd != 0.0 && h[12] != 0.0;
    p2[0] = f32(-dlr);
    p2[1] = f32(d * h[3]);
    p2[2] = decay ? f32(-wd * dlr) : 0.0f;
    p2[3] = decay ? 1.0f : 0.0f;
    p2[4] = h[0] > 0.0 ? 1.0f : 0.0f;
    p2[5] = f32(-dlr * d);
}

constexpr int kApply = 6;  // pass-2 scalars per tensor

void run_prodigy(const StepArgs& a) {
    const double* h = a.hyper;
    std::vector<double> sums(2 * a.n_tensors, 0.0);
    moments_pass(a, sums.data());
    // the estimate, in float64 and prodigyopt's order (Prodigy._apply)
    double d = h[4], d_max = h[6];
    const double d0 = h[5];
    double numerator = 0.0, denominator = 0.0;
    bool any_active = false;
    for (int64_t t = 0; t < a.n_tensors; ++t) {
        if (!(a.lrs[t] > 0.0)) continue;
        any_active = true;
        numerator += (d / d0) * step_rate(h, a.lrs[t]) * sums[2 * t];
        denominator += sums[2 * t + 1];
    }
    double* out = a.results;
    if (denominator == 0.0) {  // nothing to estimate from (zero gradients): no weight moves, d stays
        out[0] = 0.0;
        return;
    }
    const double d_numerator = h[7] * h[2] + numerator;
    if (any_active) {
        const double d_hat = h[8] * d_numerator / denominator;
        if (d == d0) d = d_hat > d ? d_hat : d;
        d_max = d_hat > d_max ? d_hat : d_max;
        const double grown = d * h[9];
        d = grown < d_max ? grown : d_max;
    }
    out[0] = 1.0;
    out[1] = d;
    out[2] = d_max;
    out[3] = d_numerator;
    std::vector<float> p2(kApply * a.n_tensors);
    for (int64_t t = 0; t < a.n_tensors; ++t) apply_scalars(h, step_rate(h, a.lrs[t]), a.wds[t], d, &p2[kApply * t]);
    for_balanced(a, [&](const Chunk& ch) {
        const int32_t t = ch.tensor;
        const float* sc = a.scalars + t * kMaxScalars;
        const float* q = &p2[kApply * t];
        float* __restrict w = a.weights[t] + ch.offset;
        const float* __restrict grad = static_cast<const float*>(a.grads[t]) + ch.grad_offset;
        const float* __restrict mean = a.states[2][t] + ch.offset;
        const float* __restrict var = a.states[3][t] + ch.offset;
        if (q[4] != 0.0f) {
#pragma omp simd
            for (int64_t i = 0; i < ch.length; ++i) w[i] = moved(q, w[i], 0.0f, mean[i], var[i]);
        } else {
#pragma omp simd
            for (int64_t i = 0; i < ch.length; ++i) w[i] = moved(q, w[i], gradient(sc, grad[i], w[i]), 0.0f, var[i]);
        }
    });
}

// ------------------------------------------------------------------------------------------ the split form
// prodigy_moments: pass 1 (through norm_sums: per tensor [<g, p0 - w>, sum |s|]); the gradient comes in finished
// (Python applies rescale_grad, clip_gradient and the L2 term). hyper = [beta1, beta2, beta3];
// aux = [d*(1-beta1), d*d*(1-beta2), s coefficient] (float64, then float32).
void prepare_moments(const double* h, double, double, int64_t, const double* aux, float* sc) {
    sc[0] = f32(h[0]);
    sc[1] = f32(aux[0]);
    sc[2] = f32(h[1]);
    sc[3] = f32(aux[1]);
    sc[4] = f32(h[2]);
    sc[5] = f32(aux[2]);
    sc[6] = h[0] > 0.0 ? 1.0f : 0.0f;
    sc[7] = 1.0f;   // every tensor given is active
    sc[8] = 1.0f;   // no rescale, no clip, no L2 term: the gradient is final
    sc[9] = -1.0f;
}

const char* check_moments(const double*, int n, uint32_t present) {
    return n == 3 && present == 15u ? nullptr : "prodigy_moments takes 3 hyperparameters and four states";
}

struct MomentsRule {  // the element-wise form (a `step` without the sums; not used by Prodigy itself)
    static inline void elem(const float* sc, float&, float g, float*, float* s, float* mean, float* var,
                            int64_t i) {
        advance(sc, g, mean[i], var[i], s[i]);
    }
};

void moments_stage(const StepArgs& a, int, const double*, double* out) { moments_pass(a, out); }

// prodigy_apply: pass 2. hyper = [beta1]; aux = [dlr, d*eps, -wd*dlr (0: no decoupled decay), -dlr*d]
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

struct ApplyRule {
    static inline void elem(const float* sc, float& w, float g, float*, float*, float* mean, float* var,
                            int64_t i) {
        w = moved(sc, w, g, mean[i], var[i]);
    }
};

const RuleDesc prodigy = [] {
    RuleDesc d{"prodigy", 4, 0u, 0u, false, false, check_prodigy, prepare_prodigy, run_prodigy, 0};
    d.n_results = 4;
    return d;
}();
const RuleDesc moments = [] {
    RuleDesc d{"prodigy_moments", 4, 0u, 0u, false, false, check_moments, prepare_moments, elementwise<MomentsRule>,
               3};
    d.stage_sums[0] = 2;
    d.norm_stage = moments_stage;
    return d;
}();
const RuleDesc apply{"prodigy_apply", 4, 0u, 0u, false, false, check_apply, prepare_apply, elementwise<ApplyRule>,
                     4};
OPTZOO_RULE(prodigy);
OPTZOO_RULE(moments);
OPTZOO_RULE(apply);

}  // namespace
}  // namespace optzoo
