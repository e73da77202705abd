// Adam (optzoo/optimizer/adam.py). hyper = [beta1, beta2, epsilon, rescale_grad, clip_gradient (-1: none)].
// Scalars: lr_t (bias-corrected in float64, then float32), wd, beta1, 1-beta1, beta2, 1-beta2, epsilon,
// rescale_grad, clip_gradient.
#include "api.h"

namespace optzoo {
namespace {

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

}  // namespace
}  // namespace optzoo
