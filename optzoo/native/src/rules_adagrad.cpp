// The AdaGrad family (optzoo/optimizer/adagrad.py): AdaGrad, GroupAdaGrad, RMSProp (plain and centered) and
// AdaDelta. Every line mirrors one tensor operation of the module's *_reference functions (float32, one rounding
// per operation). "clip_gradient" and "clip_weights" are -1 when not set.
//
//   adagrad           hyper = [epsilon, rescale_grad, clip_gradient]; state: history
//   group_adagrad     hyper = [epsilon, rescale_grad, clip_gradient]; state: history, one value per row
//   rmsprop           hyper = [rho, epsilon, rescale_grad, clip_gradient, clip_weights]; state: var
//   rmsprop_centered  hyper = [rho, momentum, epsilon, rescale_grad, clip_gradient, clip_weights];
//                     state: (mean, var, mom)
//   adadelta          hyper = [rho, epsilon, rescale_grad, clip_gradient]; state: (acc_g, acc_delta)
#include <stdexcept>
#include <string>

#include "api.h"

namespace optzoo {
namespace {

// g = clip(rg*grad) (+ wd*w only where the reference adds it: `if wd:`, tested on the float64 wd)
inline float decayed(float grad, float w, float rescale, float clip, float wd, bool has_wd) {
    const float g = rescale_clip(grad, rescale, clip);
    return has_wd ? g + w * wd : g;
}

// clamp(w, -c, c) as torch's clamp_ (NaN passes through); c < 0: no clipping
inline float clip_weight(float w, float c) {
    if (c >= 0.0f) w = w < -c ? -c : (w > c ? c : w);
    return w;
}

// ------------------------------------------------------------------------------------------ AdaGrad
// Scalars: lr, wd, has_wd, epsilon, rescale_grad, clip_gradient.
void prepare_adagrad(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = wd != 0.0 ? 1.0f : 0.0f;
    sc[3] = f32(h[0]);
    sc[4] = f32(h[1]);
    sc[5] = f32(h[2]);
}

const char* check_adagrad(const double*, int n, uint32_t present) {
    return n == 3 && present == 1u ? nullptr : "adagrad takes 3 hyperparameters and one state";
}

// h += g*g; w -= (g / (sqrt(h) + eps)) * lr
struct AdaGradRule {
    static inline void elem(const float* sc, float& w, float grad, float* hist, float*, float*, float*, int64_t i) {
        const float g = decayed(grad, w, sc[4], sc[5], sc[1], sc[2] != 0.0f);
        const float h = hist[i] + g * g;
        hist[i] = h;
        w = w - (g / (std::sqrt(h) + sc[3])) * sc[0];
    }
};

// ------------------------------------------------------------------------------------------ GroupAdaGrad
// Scalars: lr, epsilon, rescale_grad, clip_gradient.
void prepare_group_adagrad(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    if (wd != 0.0)  // the Python paths raise the same ValueError (pybind11 turns invalid_argument into it)
        throw std::invalid_argument("GroupAdaGrad does not support weight decay: wd must be 0, got " +
                                    std::to_string(wd));
    sc[0] = f32(lr);
    sc[1] = f32(h[0]);
    sc[2] = f32(h[1]);
    sc[3] = f32(h[2]);
}

const char* check_group_adagrad(const double*, int n, uint32_t present) {
    return n == 3 && present == 1u ? nullptr : "group_adagrad takes 3 hyperparameters and one state";
}

// One row of `n` elements: g = clip(rg*grad); h += mean(g^2); w -= (g / (sqrt(h) + eps)) * lr. The sum of squares
// runs over 16 interleaved float32 partial sums (vectorized; it may differ from torch's mean by rounding only).
template <typename G, typename LP>
inline void group_row(const float* sc, float* __restrict w, const G* __restrict grad, float& hist,
                      LP* __restrict lp, int64_t n) {
    constexpr int kLanes = 16;
    const float lr = sc[0], eps = sc[1], rescale = sc[2], clip = sc[3];
    float part[kLanes] = {};
    int64_t e = 0;
    for (; e + kLanes <= n; e += kLanes)
        for (int l = 0; l < kLanes; ++l) {
            const float x = rescale_clip(to_float(grad[e + l]), rescale, clip);
            part[l] += x * x;
        }
    float sum = 0.0f;
    for (; e < n; ++e) {
        const float x = rescale_clip(to_float(grad[e]), rescale, clip);
        sum += x * x;
    }
    for (int l = 0; l < kLanes; ++l) sum += part[l];
    const float h = hist + sum / static_cast<float>(n);
    hist = h;
    const float d = std::sqrt(h) + eps;
    for (int64_t k = 0; k < n; ++k) {
        w[k] = w[k] - (rescale_clip(to_float(grad[k]), rescale, clip) / d) * lr;
        if constexpr (!std::is_same<LP, NoLowPrecision>::value) lp[k] = from_float<LP>(w[k]);
    }
}

// Chunks hold whole rows (row_chunks); the history has one value per row.
template <typename G, typename LP>
void group_typed(const StepArgs& a) {
    const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
#pragma omp parallel for schedule(static) num_threads(a.n_threads) if (parallel)
    for (int64_t c = 0; c < a.n_chunks; ++c) {
        const Chunk& ch = a.chunks[c];
        const int32_t t = ch.tensor;
        const int64_t row = a.row_lengths[t];
        if (row <= 0) continue;
        const float* sc = a.scalars + t * kMaxScalars;
        float* w = a.weights[t] + ch.offset;
        const G* g = static_cast<const G*>(a.grads[t]) + ch.grad_offset;
        float* hist = a.states[0][t] + ch.offset / row;
        LP* lp = nullptr;
        if constexpr (!std::is_same<LP, NoLowPrecision>::value) lp = static_cast<LP*>(a.low_precision[t]) + ch.offset;
        for (int64_t r = 0; r < ch.length / row; ++r)
            group_row<G, LP>(sc, w + r * row, g + r * row, hist[r], lp == nullptr ? nullptr : lp + r * row, row);
    }
}

void run_group_adagrad(const StepArgs& a) {
    if (a.low_precision == nullptr) {
        group_typed<float, NoLowPrecision>(a);
    } else if (a.low_precision_dtype == kFloat16) {
        group_typed<Half, Half>(a);
    } else {
        group_typed<BFloat16, BFloat16>(a);
    }
}

// ------------------------------------------------------------------------------------------ RMSProp
// Scalars: lr, wd, has_wd, rho, 1-rho (float32), epsilon, rescale_grad, clip_gradient, clip_weights, momentum.
void prepare_rmsprop(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = wd != 0.0 ? 1.0f : 0.0f;
    sc[3] = f32(h[0]);
    sc[4] = one_minus(h[0]);
    sc[5] = f32(h[1]);
    sc[6] = f32(h[2]);
    sc[7] = f32(h[3]);
    sc[8] = f32(h[4]);
}

void prepare_rmsprop_centered(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = wd != 0.0 ? 1.0f : 0.0f;
    sc[3] = f32(h[0]);
    sc[4] = one_minus(h[0]);
    sc[5] = f32(h[2]);
    sc[6] = f32(h[3]);
    sc[7] = f32(h[4]);
    sc[8] = f32(h[5]);
    sc[9] = f32(h[1]);
}

const char* check_rmsprop(const double*, int n, uint32_t present) {
    return n == 5 && present == 1u ? nullptr : "rmsprop takes 5 hyperparameters and one state";
}

const char* check_rmsprop_centered(const double*, int n, uint32_t present) {
    return n == 6 && present == 7u ? nullptr : "rmsprop_centered takes 6 hyperparameters and three states";
}

// var = var*rho + (g*g)*(1-rho); w -= (g*lr) / (sqrt(var) + eps); w = clip(w)
struct RMSPropRule {
    static inline void elem(const float* sc, float& w, float grad, float* var, float*, float*, float*, int64_t i) {
        const float g = decayed(grad, w, sc[6], sc[7], sc[1], sc[2] != 0.0f);
        const float v = var[i] * sc[3] + (g * g) * sc[4];
        var[i] = v;
        w = clip_weight(w - (g * sc[0]) / (std::sqrt(v) + sc[5]), sc[8]);
    }
};

// var = var*rho + (g*g)*(1-rho); mean = mean*rho + g*(1-rho); mom = mom*momentum - (g*lr)/sqrt(var - mean^2 + eps);
// w = clip(w + mom)
struct RMSPropCenteredRule {
    static inline void elem(const float* sc, float& w, float grad, float* mean, float* var, float* mom, float*,
                            int64_t i) {
        const float g = decayed(grad, w, sc[6], sc[7], sc[1], sc[2] != 0.0f);
        const float v = var[i] * sc[3] + (g * g) * sc[4];
        const float m = mean[i] * sc[3] + g * sc[4];
        var[i] = v;
        mean[i] = m;
        const float denom = std::sqrt((v - m * m) + sc[5]);
        const float d = mom[i] * sc[9] - (g * sc[0]) / denom;
        mom[i] = d;
        w = clip_weight(w + d, sc[8]);
    }
};

// ------------------------------------------------------------------------------------------ AdaDelta
// Scalars: lr, wd, has_wd, rho, 1-rho (rounded from float64, as the reference), epsilon, rescale_grad,
// clip_gradient.
void prepare_adadelta(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = wd != 0.0 ? 1.0f : 0.0f;
    sc[3] = f32(h[0]);
    sc[4] = f32(1.0 - h[0]);
    sc[5] = f32(h[1]);
    sc[6] = f32(h[2]);
    sc[7] = f32(h[3]);
}

const char* check_adadelta(const double*, int n, uint32_t present) {
    return n == 4 && present == 3u ? nullptr : "adadelta takes 4 hyperparameters and two states";
}

// acc_g = acc_g*rho + (g*g)*c; delta = (sqrt(acc_delta + eps) / sqrt(acc_g + eps)) * g;
// acc_delta = acc_delta*rho + (delta*delta)*c; w -= delta*lr
struct AdaDeltaRule {
    static inline void elem(const float* sc, float& w, float grad, float* acc_g, float* acc_delta, float*, float*,
                            int64_t i) {
        const float g = decayed(grad, w, sc[6], sc[7], sc[1], sc[2] != 0.0f);
        const float ag = acc_g[i] * sc[3] + (g * g) * sc[4];
        acc_g[i] = ag;
        const float ad = acc_delta[i];
        const float delta = (std::sqrt(ad + sc[5]) / std::sqrt(ag + sc[5])) * g;
        acc_delta[i] = ad * sc[3] + (delta * delta) * sc[4];
        w = w - delta * sc[0];
    }
};

const RuleDesc adagrad{"adagrad", 1, 0u, 0u, false, true, check_adagrad, prepare_adagrad, elementwise<AdaGradRule>};
// GroupAdaGrad takes weights of any rank: rows along the first dimension (the core's row_lengths: numel / shape[0],
// numel for a 0-d weight, one row), history shape [rows, 1].
const RuleDesc group_adagrad{"group_adagrad", 1, 0u, 1u, true, true, check_group_adagrad, prepare_group_adagrad,
                             run_group_adagrad};
const RuleDesc rmsprop{"rmsprop", 1, 0u, 0u, false, false, check_rmsprop, prepare_rmsprop,
                       elementwise<RMSPropRule>};
const RuleDesc rmsprop_centered{"rmsprop_centered", 3, 0u, 0u, false, false, check_rmsprop_centered,
                                prepare_rmsprop_centered, elementwise<RMSPropCenteredRule>};
const RuleDesc adadelta{"adadelta", 2, 0u, 0u, false, false, check_adadelta, prepare_adadelta,
                        elementwise<AdaDeltaRule>};
OPTZOO_RULE(adagrad);
OPTZOO_RULE(group_adagrad);
OPTZOO_RULE(rmsprop);
OPTZOO_RULE(rmsprop_centered);
OPTZOO_RULE(adadelta);

}  // namespace
}  // namespace optzoo
