// MARS (optzoo/optimizer/mars.py), pytorch-optimizer's arithmetic, in two passes: a norm stage (the sum of squares
// of each corrected gradient, for its clip to norm 1), then one element-wise pass with the divisors Python forms
// from those sums (MARS._native_call).
// hyper = [epsilon, rescale_grad, clip_gradient (-1: none)];
// aux per tensor = [lr, 1 - wd*lr, decay (0/1), mixed (0/1), norm divisor (1: none), gamma*b1/(1-b1), 1-b1, b2,
//                   1-b2, sqrt(1-b2^t), 1-b1^t, lion (0/1)].
#include <vector>

#include "api.h"

namespace optzoo {
namespace {

void prepare_mars(const double* h, double, double, int64_t, const double* aux, float* sc) {
    for (int k = 0; k < 12; ++k) sc[k] = f32(aux[k]);
    sc[12] = f32(h[0]);
    sc[13] = f32(h[1]);
    sc[14] = f32(h[2]);
    sc[15] = f32(1e-15);
}

const char* check_mars(const double*, int n, uint32_t present) {
    return n == 3 && present == 7u ? nullptr : "mars takes 3 hyperparameters and three states";
}

inline float lerp(float a, float b, float weight) {  // torch.lerp with a scalar weight
    const float diff = b - a;
    return std::fabs(weight) < 0.5f ? a + weight * diff : b - diff * (1.0f - weight);
}

// torch.sign: -1, 0 or 1, NaN stays NaN (written as selects of constants, which GCC vectorizes next to a division)
inline float sign_of(float x) {
    const float s = (x > 0.0f ? 1.0f : 0.0f) - (x < 0.0f ? 1.0f : 0.0f);
    return x != x ? x : s;
}

// x = mixed ? c/norm : g, c = (g - g_prev)*k + g; m = lerp(m, x, 1-b1); adamw: v = b2*v + (1-b2)*x^2,
// u = m / ((sqrt(v + 1e-15) + eps)/bc2*bc1); lion: u = sign(m); w *= 1 - wd*lr; w -= lr*u; g_prev = g
struct MarsRule {
    static inline void elem(const float* sc, float& w, float grad, float* mean, float* var, float* last, float*,
                            int64_t i) {
        // every load first, every store last, arithmetic unconditional and selected (floating-point operations
        // under a condition keep GCC from vectorizing: they might trap)
        const float m0 = mean[i], v0 = var[i], g0 = last[i], w0 = w;
        const float g = rescale_clip(grad, sc[13], sc[14]);
        const float c = ((g - g0) * sc[5] + g) / sc[4];
        const float x = sc[3] != 0.0f ? c : g;
        const float m = lerp(m0, x, sc[6]);
        const bool lion = sc[11] != 0.0f;
        const float v_adam = v0 * sc[7] + (sc[8] * x) * x;
        const float v = lion ? v0 : v_adam;
        const float adam = m / (((std::sqrt(v + sc[15]) + sc[12]) / sc[9]) * sc[10]);
        const float lion_update = sign_of(m);
        const float update = lion ? lion_update : adam;
        const float decayed = w0 * sc[1];
        mean[i] = m;
        var[i] = v;
        last[i] = g;
        w = (sc[2] != 0.0f ? decayed : w0) + (-sc[0]) * update;
    }
};

// Norm stage (core: norm_sums): per tensor, the sum of squares of the corrected gradient c of the mixed tensors
// (0 for the others), float64 partial sums per chunk added in chunk order.
template <typename G>
void corrected_norms(const StepArgs& a, double* out) {
    std::vector<double> part(a.n_chunks, 0.0);
    const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
#pragma omp parallel for schedule(dynamic, 4) num_threads(a.n_threads) if (parallel)
    for (int64_t c = 0; c < a.n_chunks; ++c) {
        const Chunk& ch = a.chunks[c];
        const float* sc = a.scalars + ch.tensor * kMaxScalars;
        if (sc[3] == 0.0f) continue;
        const G* __restrict g = static_cast<const G*>(a.grads[ch.tensor]) + ch.grad_offset;
        const float* __restrict last = a.states[2][ch.tensor] + ch.offset;
        const float gain = sc[5], rescale = sc[13], clip = sc[14];
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < ch.length; ++i) {
            const float x = rescale_clip(to_float(g[i]), rescale, clip);
            const float corrected = (x - last[i]) * gain + x;
            sum += static_cast<double>(corrected) * corrected;
        }
        part[c] = sum;
    }
    for (int64_t c = 0; c < a.n_chunks; ++c) out[a.chunks[c].tensor] += part[c];
}

void mars_norm_stage(const StepArgs& a, int, const double*, double* out) {
    if (a.low_precision == nullptr) corrected_norms<float>(a, out);
    else if (a.low_precision_dtype == kFloat16) corrected_norms<Half>(a, out);
    else corrected_norms<BFloat16>(a, out);
}

const RuleDesc mars = [] {
    RuleDesc d{"mars", 3, 0u, 0u, false, false, check_mars, prepare_mars, elementwise<MarsRule>, 12};
    d.stage_sums[0] = 1;
    d.norm_stage = mars_norm_stage;
    return d;
}();
OPTZOO_RULE(mars);

}  // namespace
}  // namespace optzoo
