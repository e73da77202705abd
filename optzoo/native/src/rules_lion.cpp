// Lion (optzoo/optimizer/lion.py), in lion-pytorch's order.
// hyper = [beta1, beta2, rescale_grad, clip_gradient (-1: none), wd divisor (the initial lr, or 1)].
// Scalars: 1 - lr*wd/divisor (float64, then float32), lr, beta1, 1-beta1, beta2, 1-beta2 (float64, then float32),
// rescale_grad, clip_gradient.
#include "api.h"

namespace optzoo {
namespace {

void prepare_lion(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(1.0 - lr * (wd / h[4]));
    sc[1] = f32(lr);
    sc[2] = f32(h[0]);
    sc[3] = f32(1.0 - h[0]);
    sc[4] = f32(h[1]);
    sc[5] = f32(1.0 - h[1]);
    sc[6] = f32(h[2]);
    sc[7] = f32(h[3]);
}

const char* check_lion(const double*, int n, uint32_t present) {
    return n == 5 && present == 1u ? nullptr : "lion takes 5 hyperparameters and one state";
}

// torch.sign: -1, 0 or 1; NaN stays NaN
inline float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }

// g = clip(rg*grad); w *= 1 - lr*wd; w -= lr*sign(b1*m + (1-b1)*g); m = b2*m + (1-b2)*g
struct LionRule {
    static inline void elem(const float* sc, float& w, float grad, float* mean, float*, float*, float*, int64_t i) {
        const float g = rescale_clip(grad, sc[6], sc[7]);
        const float m = mean[i];
        const float update = sign_of(m * sc[2] + sc[3] * g);
        w = w * sc[0];
        w = w + (-sc[1]) * update;
        mean[i] = m * sc[4] + sc[5] * g;
    }
};

const RuleDesc lion{"lion", 1, 0u, 0u, false, false, check_lion, prepare_lion, elementwise<LionRule>};
OPTZOO_RULE(lion);

}  // namespace
}  // namespace optzoo
