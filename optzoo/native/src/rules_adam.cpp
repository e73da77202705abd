// The Adam family (optzoo/optimizer/adam.py): Adam, AdamW, AdaBelief, Adamax and Nadam.
//
// Adam, AdamW and AdaBelief mirror MXNet's C++ kernels (float32 `1 - beta`, see one_minus); Adamax and Nadam mirror
// MXNet's Python `step`, whose scalars (`1 - beta` included) are computed in float64 and rounded once (f32).
// Flags (weight decay present, clipping, aggregated rounding) are loop-invariant: the compiler unswitches them.
#include "api.h"

namespace optzoo {
namespace {

inline float clamp_abs(float x, float clip) {  // torch.clamp(x, -clip, clip); NaN passes, as in rescale_clip
    return x < -clip ? -clip : (x > clip ? clip : x);
}

// torch.maximum: NaN in either operand gives NaN
inline float nan_maximum(float a, float b) { return (a > b || a != a) ? a : b; }

// ------------------------------------------------------------------------------------------ Adam
// hyper = [beta1, beta2, epsilon, rescale_grad, clip_gradient (-1: none)].
// Scalars: lr_t (bias-corrected in float64, then float32), wd, beta1, 1-beta1, beta2, 1-beta2, epsilon,
// rescale_grad, clip_gradient.
void prepare_adam(const double* h, double lr, double wd, int64_t t, const double*, float* sc) {
    const double td = static_cast<double>(t);
    sc[0] = f32(lr * std::sqrt(1.0 - std::pow(h[1], td)) / (1.0 - std::pow(h[0], td)));
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = one_minus(h[0]);
    sc[4] = f32(h[1]);
    sc[5] = one_minus(h[1]);
    sc[6] = f32(h[2]);
    sc[7] = f32(h[3]);
    sc[8] = f32(h[4]);
}

const char* check_adam(const double*, int n, uint32_t present) {
    return n == 5 && present == 3u ? nullptr : "adam takes 5 hyperparameters and two states";
}

// g = clip(rg*grad) + wd*w; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; w -= lr_t*m/(sqrt(v) + eps)
struct AdamRule {
    static inline void elem(const float* sc, float& w, float grad, float* mean, float* var, float*, float*,
                            int64_t i) {
        const float g = rescale_clip(grad, sc[7], sc[8]) + sc[1] * w;
        const float m = mean[i] * sc[2] + sc[3] * g;
        const float v = var[i] * sc[4] + (sc[5] * g) * g;
        mean[i] = m;
        var[i] = v;
        w = w + (-sc[0]) * (m / (std::sqrt(v) + sc[6]));
    }
};

const RuleDesc adam{"adam", 2, 0u, 0u, false, true, check_adam, prepare_adam, elementwise<AdamRule>};
OPTZOO_RULE(adam);

// ------------------------------------------------------------------------------------------ AdamW, AdaBelief
// hyper = [beta1, beta2, epsilon, rescale_grad, clip_gradient (-1: none), correct_bias (0/1), aggregated (0/1)].
// Scalars: lr_t (bias-corrected in float64 when correct_bias, then float32), wd, beta1, 1-beta1, beta2, 1-beta2,
// epsilon, rescale_grad, clip_gradient, aggregated (0/1), weight decay present (0/1: the reference's `if wd:`).
void prepare_decoupled(const double* h, double lr, double wd, int64_t t, const double*, float* sc) {
    prepare_adam(h, lr, wd, t, nullptr, sc);  // Adam's first nine scalars, the same hyperparameter order
    if (h[5] == 0.0) sc[0] = f32(lr);         // correct_bias=False
    sc[9] = h[6] != 0.0 ? 1.0f : 0.0f;
    sc[10] = wd != 0.0 ? 1.0f : 0.0f;
}

const char* check_decoupled(const double*, int n, uint32_t present) {
    return n == 7 && present == 3u ? nullptr : "adamw/adabelief take 7 hyperparameters and two states";
}

// The moving average as MXNet's AdamW/AdaBelief kernels round it: beta*(buf - x) + x (aggregated, multi-tensor
// kernel) or beta*buf + (1-beta)*x (single-tensor kernel, float32 1-beta).
inline float kernel_ema(float buf, float x, float beta, float one_minus_beta, bool aggregated) {
    return aggregated ? (buf - x) * beta + x : buf * beta + x * one_minus_beta;
}

// g = clip(rg*grad); m = ema(m, g); v = ema(v, g^2); w -= lr_t*(m/(sqrt(v)+eps) + wd*w)
struct AdamWRule {
    static inline void elem(const float* sc, float& w, float grad, float* mean, float* var, float*, float*,
                            int64_t i) {
        const bool aggregated = sc[9] != 0.0f;
        const float g = rescale_clip(grad, sc[7], sc[8]);
        const float g2 = g * g;
        const float m = kernel_ema(mean[i], g, sc[2], sc[3], aggregated);
        const float v = kernel_ema(var[i], g2, sc[4], sc[5], aggregated);
        mean[i] = m;
        var[i] = v;
        float step = m / (std::sqrt(v) + sc[6]);
        if (sc[10] != 0.0f) step = step + w * sc[1];
        w = w - step * sc[0];
    }
};

// g = clip(rg*grad + wd*w); m = ema(m, g); s = ema(s, (m-g)^2) + eps; w -= lr_t*m/(sqrt(s)+eps)
struct AdaBeliefRule {
    static inline void elem(const float* sc, float& w, float grad, float* mean, float* var, float*, float*,
                            int64_t i) {
        const bool aggregated = sc[9] != 0.0f;
        float g = grad * sc[7];
        if (sc[10] != 0.0f) g = g + w * sc[1];
        if (sc[8] >= 0.0f) g = clamp_abs(g, sc[8]);
        const float m = kernel_ema(mean[i], g, sc[2], sc[3], aggregated);
        float belief = m - g;
        belief = belief * belief;
        const float v = kernel_ema(var[i], belief, sc[4], sc[5], aggregated) + sc[6];
        mean[i] = m;
        var[i] = v;
        w = w - (m / (std::sqrt(v) + sc[6])) * sc[0];
    }
};

const RuleDesc adamw{"adamw", 2, 0u, 0u, false, false, check_decoupled, prepare_decoupled, elementwise<AdamWRule>};
const RuleDesc adabelief{"adabelief", 2, 0u, 0u, false, false, check_decoupled, prepare_decoupled,
                         elementwise<AdaBeliefRule>};
OPTZOO_RULE(adamw);
OPTZOO_RULE(adabelief);

// ------------------------------------------------------------------------------------------ Adamax
// hyper = [beta1, beta2, epsilon, rescale_grad, clip_gradient (-1: none)].
// Scalars: lr_t = lr/(1 - beta1^t) (float64, then float32), wd, beta1, 1-beta1 (float64), beta2, epsilon,
// rescale_grad, clip_gradient, weight decay present (0/1).
void prepare_adamax(const double* h, double lr, double wd, int64_t t, const double*, float* sc) {
    sc[0] = f32(lr / (1.0 - std::pow(h[0], static_cast<double>(t))));
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = f32(1.0 - h[0]);
    sc[4] = f32(h[1]);
    sc[5] = f32(h[2]);
    sc[6] = f32(h[3]);
    sc[7] = f32(h[4]);
    sc[8] = wd != 0.0 ? 1.0f : 0.0f;
}

const char* check_five(const double*, int n, uint32_t present) {
    return n == 5 && present == 3u ? nullptr : "the rule takes 5 hyperparameters and two states";
}

// g = clip(rg*grad) + wd*w; m = b1*m + (1-b1)*g; u = max(b2*u, |g|); w -= lr_t*m/(u + eps)
struct AdamaxRule {
    static inline void elem(const float* sc, float& w, float grad, float* mean, float* norm, float*, float*,
                            int64_t i) {
        float g = rescale_clip(grad, sc[6], sc[7]);
        if (sc[8] != 0.0f) g = g + w * sc[1];
        const float m = mean[i] * sc[2] + g * sc[3];
        const float u = nan_maximum(norm[i] * sc[4], std::fabs(g));
        mean[i] = m;
        norm[i] = u;
        w = w - (m / (u + sc[5])) * sc[0];
    }
};

const RuleDesc adamax{"adamax", 2, 0u, 0u, false, false, check_five, prepare_adamax, elementwise<AdamaxRule>};
OPTZOO_RULE(adamax);

// ------------------------------------------------------------------------------------------ Nadam
// hyper = [beta1, beta2, epsilon, rescale_grad, clip_gradient (-1: none)];
// aux (per tensor, from Nadam._native_aux) = [mu_t, mu_{t+1}, m_schedule, m_schedule_next, 1 - beta2^t].
// Scalars (each from float64, rounded once): lr, wd, beta1, 1-beta1, beta2, 1-beta2, 1/(1-m_schedule),
// 1/(1-m_schedule_next), mu_{t+1}, 1-mu_t, 1/(1-beta2^t), epsilon, rescale_grad, clip_gradient, weight decay
// present. The three divisions by a per-tensor constant are multiplications by its float32 reciprocal (an ulp or
// so from the reference's division): four divisions and a square root per element made the step wait on the
// divider rather than on memory.
inline float reciprocal(double x) { return 1.0f / f32(x); }

void prepare_nadam(const double* h, double lr, double wd, int64_t, const double* aux, float* sc) {
    // aux is always there: the descriptor's n_aux = 5 makes the core decline a call without it
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = f32(1.0 - h[0]);
    sc[4] = f32(h[1]);
    sc[5] = f32(1.0 - h[1]);
    sc[6] = reciprocal(1.0 - aux[2]);
    sc[7] = reciprocal(1.0 - aux[3]);
    sc[8] = f32(aux[1]);
    sc[9] = f32(1.0 - aux[0]);
    sc[10] = reciprocal(aux[4]);
    sc[11] = f32(h[2]);
    sc[12] = f32(h[3]);
    sc[13] = f32(h[4]);
    sc[14] = wd != 0.0 ? 1.0f : 0.0f;
}

// g = clip(rg*grad) + wd*w; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
// m_bar = (m/(1-M_next))*mu_{t+1} + (g/(1-M))*(1-mu_t); w -= (m_bar/(sqrt(v/(1-b2^t)) + eps))*lr
struct NadamRule {
    static inline void elem(const float* sc, float& w, float grad, float* mean, float* var, float*, float*,
                            int64_t i) {
        float g = rescale_clip(grad, sc[12], sc[13]);
        if (sc[14] != 0.0f) g = g + w * sc[1];
        const float m = mean[i] * sc[2] + g * sc[3];
        const float v = var[i] * sc[4] + (g * g) * sc[5];
        mean[i] = m;
        var[i] = v;
        const float g_prime = g * sc[6];
        const float m_bar = (m * sc[7]) * sc[8] + g_prime * sc[9];
        const float denom = std::sqrt(v * sc[10]) + sc[11];
        w = w - (m_bar / denom) * sc[0];
    }
};

const RuleDesc nadam{"nadam", 2, 0u, 0u, false, false, check_five, prepare_nadam, elementwise<NadamRule>, 5};
OPTZOO_RULE(nadam);

}  // namespace
}  // namespace optzoo
