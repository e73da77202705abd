// Prodigy (optzoo/optimizer/prodigy.py) in two element-wise calls around the d estimate, which Python computes
// from the sums of the first pass (torch.dot and abs().sum(), as the package does). State slots: p0, s, m, v.
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

const RuleDesc moments{"prodigy_moments", 4, 0u, 0u, false, false, check_moments, prepare_moments,
                       elementwise<MomentsRule>, 3};
const RuleDesc apply{"prodigy_apply", 4, 0u, 0u, false, false, check_apply, prepare_apply, elementwise<ApplyRule>,
                     4};
OPTZOO_RULE(moments);
OPTZOO_RULE(apply);

}  // namespace
}  // namespace optzoo
