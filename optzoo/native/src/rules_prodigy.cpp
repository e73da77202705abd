// Prodigy (optzoo/optimizer/prodigy.py). State slots: p0, s, m, v.
//
// The weights move with a step size d estimated from sums over EVERY tensor, so a step is two passes over all of
// them with the estimate in between:
//   pass 1  per active tensor (lr > 0): advances m, v, s and sums <g, p0 - w> and sum |s| (float32 blocks of 256
//           terms joined in float64 per chunk, added per tensor in chunk order): reads g, p0, w, s, m, v; writes
//           s, m, v
//   d       the estimate from those sums, in float64 in prodigyopt's order (Prodigy._apply's readable form)
//   pass 2  every tensor: w -= wd*dlr*w (decoupled), w -= dlr * m/(sqrt(v) + d*eps): reads w, m, v; writes w
// 36 + 16 = 52 bytes per parameter (a single pass would move 40). The rule `prodigy` is the whole step in one call
// (`step_into`, which returns the new d: results = [stepped (0: every s is 0, nothing moved), d, d_max,
// d_numerator]). Sharded training needs the sums of every rank before d: it runs pass 1 as `prodigy_moments`
// (`norm_sums`, returning the per-tensor sums), adds them up, forms d in Python and runs pass 2 as
// `prodigy_apply`. Both forms share the element arithmetic below, written as torch rounds prodigyopt's ops
// (`x.mul_(a).add_(g, alpha=b)` and `addcmul_` are one fused multiply-add in torch's CPU kernels).
#include <algorithm>
#include <vector>

#include "api.h"

namespace optzoo {
namespace {

// ------------------------------------------------------------------------------------------ element arithmetic
// Pass-1 scalars (slots 0-11, as prepare_prodigy and prepare_moments write them): b1, d(1-b1), b2, d^2(1-b2), b3,
// the s coefficient, beta1 > 0 (1/0), active (lr > 0), rescale_grad, clip (+inf: none), wd of the L2 term, L2 term
// (1/0). Held in locals (a loop reading them through a pointer next to its stores does not vectorize).
struct Moments {
    float b1, c1, b2, c2, b3, cs, rescale, clip, wd;
    explicit Moments(const float* sc)
        : b1(sc[0]), c1(sc[1]), b2(sc[2]), c2(sc[3]), b3(sc[4]), cs(sc[5]), rescale(sc[8]), clip(sc[9]),
          wd(sc[10]) {}
};

// g = clip(rescale_grad*grad) (+ wd*w without decouple: kL2), as Prodigy._gradient; selects only (a branch keeps
// GCC from vectorizing the loop). NaN passes, as torch.clamp lets it.
template <bool kL2>
inline float gradient(const Moments& k, float grad, float w) {
    const float x = grad * k.rescale;
    const float low = x < -k.clip ? -k.clip : x;
    const float g = low > k.clip ? k.clip : low;
    return kL2 ? std::fma(w, k.wd, g) : g;
}

// m = b1*m + d(1-b1)*g (kMean: beta1 > 0); v = b2*v + d^2(1-b2)*g^2; s = b3*s + coef*g
template <bool kMean>
inline void advance(const Moments& k, float g, float& m, float& v, float& s) {
    if (kMean) m = std::fma(g, k.c1, m * k.b1);
    v = std::fma(k.c2 * g, g, v * k.b2);
    s = std::fma(g, k.cs, s * k.b3);
}

// Pass-2 scalars: -dlr, d*eps, -wd*dlr (decoupled decay), decay (1/0), beta1 > 0 (1/0), -dlr*d.
// w += -wd*dlr*w (kDecay); w += -dlr * m/(sqrt(v) + d*eps)  (beta1 = 0: -dlr*d * g/(sqrt(v) + d*eps))
struct Apply {
    float neg_dlr, d_eps, decay, neg_dlr_d;
    explicit Apply(const float* q) : neg_dlr(q[0]), d_eps(q[1]), decay(q[2]), neg_dlr_d(q[5]) {}
};

template <bool kDecay, bool kMean>
inline float moved(const Apply& k, float w0, float g, float m, float v) {
    const float w1 = kDecay ? std::fma(w0, k.decay, w0) : w0;
    const float denom = std::sqrt(v) + k.d_eps;
    return kMean ? w1 + k.neg_dlr * (m / denom) : w1 + k.neg_dlr_d * (g / denom);
}

// ------------------------------------------------------------------------------------------ the whole step
// hyper = [beta1, beta2, beta3, epsilon, d, d0, d_max, d_numerator, d_coef, growth_rate, bias_correction factor
//          (1 without), safeguard_warmup (1/0), decouple (1/0), rescale_grad, clip_gradient (-1: none)];
// per tensor lr, wd (float64 in StepArgs::lrs, wds). Scalars: 0-6 as above, 7 active (lr > 0), 8 rescale_grad,
// 9 clip (+inf: none), 10 wd of the L2 term (decouple = 0), 11 L2 term (1/0).
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
    sc[9] = h[14] >= 0.0 ? f32(h[14]) : INFINITY;
    const bool l2 = wd != 0.0 && h[12] == 0.0;
    sc[10] = l2 ? f32(wd) : 0.0f;
    sc[11] = l2 ? 1.0f : 0.0f;
}

const char* check_prodigy(const double*, int n, uint32_t present) {
    return n == kHyper && present == 15u ? nullptr : "prodigy takes 15 hyperparameters and four states";
}

// Pass 1 over n elements: m, v, s advanced; adds <g, p0 - w> to sums[0] and sum |s| to sums[1] (float32 blocks of
// 256 terms, joined in float64: more accurate than the reference's float32 torch.dot and sum)
template <bool kMean, bool kL2>
void moments_span(const float* sc, const float* __restrict w, const float* __restrict grad,
                  const float* __restrict p0, float* __restrict s, float* __restrict mean, float* __restrict var,
                  int64_t n, double* sums) {
    const Moments k(sc);
    for (int64_t b = 0; b < n; b += 256) {
        const int64_t e = std::min(n, b + 256);
        float dot = 0.0f, abs_sum = 0.0f;
#pragma omp simd reduction(+ : dot, abs_sum)
        for (int64_t i = b; i < e; ++i) {
            const float g = gradient<kL2>(k, grad[i], w[i]);
            dot += g * (p0[i] - w[i]);
            float m = kMean ? mean[i] : 0.0f, v = var[i], si = s[i];
            advance<kMean>(k, g, m, v, si);
            if (kMean) mean[i] = m;
            var[i] = v;
            s[i] = si;
            abs_sum += std::fabs(si);
        }
        sums[0] += dot;
        sums[1] += abs_sum;
    }
}

// Pass 1 of every active tensor: out[2t] = <g, p0 - w>, out[2t + 1] = sum |s| (a float64 partial sum per chunk,
// added in chunk order, so the sums do not depend on the thread count).
void moments_pass(const StepArgs& a, double* out) {
    std::vector<double> part(2 * a.n_chunks, 0.0);
    const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
#pragma omp parallel for schedule(dynamic, 4) num_threads(a.n_threads) if (parallel)
    for (int64_t c = 0; c < a.n_chunks; ++c) {
        const Chunk& ch = a.chunks[c];
        const int32_t t = ch.tensor;
        float sc[kMaxScalars];  // a local copy: the compiler then knows no store changes it
        std::copy(a.scalars + t * kMaxScalars, a.scalars + (t + 1) * kMaxScalars, sc);
        if (sc[7] == 0.0f) continue;
        const int64_t o = ch.offset;
        auto span = sc[6] != 0.0f ? (sc[11] != 0.0f ? moments_span<true, true> : moments_span<true, false>)
                                  : (sc[11] != 0.0f ? moments_span<false, true> : moments_span<false, false>);
        span(sc, a.weights[t] + o, static_cast<const float*>(a.grads[t]) + ch.grad_offset, a.states[0][t] + o,
             a.states[1][t] + o, a.states[2][t] + o, a.states[3][t] + o, ch.length, &part[2 * c]);
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

// Pass 2 over n elements (the pointers are __restrict parameters: GCC ignores restrict on local variables)
template <bool kDecay, bool kMean, bool kL2>
void apply_span(const float* sc, const float* q, float* __restrict w, const float* __restrict grad,
                const float* __restrict mean, const float* __restrict var, int64_t n) {
    const Moments k(sc);
    const Apply p(q);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        const float g = kMean ? 0.0f : gradient<kL2>(k, grad[i], w[i]);
        w[i] = moved<kDecay, kMean>(p, w[i], g, kMean ? mean[i] : 0.0f, var[i]);
    }
}

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
        float sc[kMaxScalars], q[kApply];  // local copies: the compiler then knows no store changes them
        std::copy(a.scalars + t * kMaxScalars, a.scalars + (t + 1) * kMaxScalars, sc);
        std::copy(&p2[kApply * t], &p2[kApply * (t + 1)], q);
        auto span = q[3] != 0.0f ? (q[4] != 0.0f ? apply_span<true, true, false>
                                                 : sc[11] != 0.0f ? apply_span<true, false, true>
                                                                  : apply_span<true, false, false>)
                                 : (q[4] != 0.0f ? apply_span<false, true, false>
                                                 : sc[11] != 0.0f ? apply_span<false, false, true>
                                                                  : apply_span<false, false, false>);
        span(sc, q, a.weights[t] + ch.offset, static_cast<const float*>(a.grads[t]) + ch.grad_offset,
             a.states[2][t] + ch.offset, a.states[3][t] + ch.offset, ch.length);
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
    sc[9] = INFINITY;
}

const char* check_moments(const double*, int n, uint32_t present) {
    return n == 3 && present == 15u ? nullptr : "prodigy_moments takes 3 hyperparameters and four states";
}

void moments_step(const StepArgs& a) {  // the `step` entry: pass 1 alone (its sums dropped)
    std::vector<double> sums(2 * a.n_tensors, 0.0);
    moments_pass(a, sums.data());
}

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
        const Apply p(sc);
        if (sc[3] != 0.0f) w = sc[4] != 0.0f ? moved<true, true>(p, w, g, mean[i], var[i])
                                             : moved<true, false>(p, w, g, mean[i], var[i]);
        else w = sc[4] != 0.0f ? moved<false, true>(p, w, g, mean[i], var[i])
                               : moved<false, false>(p, w, g, mean[i], var[i]);
    }
};

const RuleDesc prodigy = [] {
    RuleDesc d{"prodigy", 4, 0u, 0u, false, false, check_prodigy, prepare_prodigy, run_prodigy, 0};
    d.n_results = 4;
    return d;
}();
const RuleDesc moments = [] {
    RuleDesc d{"prodigy_moments", 4, 0u, 0u, false, false, check_moments, prepare_moments, moments_step, 3};
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
