// Schedule-Free SGD and AdamW (optzoo/optimizer/schedulefree.py), in the schedulefree package's order.
// aux = [warmed-up lr, ckp1] per tensor (_ScheduleFree._native_aux). State slot 0 is z; AdamW's slot 1 is v.
// Shared scalars: ckp1, lr*(beta*(1-ckp1) - 1) (float64, then float32), lr, wd, rescale_grad, clip_gradient,
// weight decay present (0/1).
#include "api.h"

namespace optzoo {
namespace {

inline float lerp(float a, float b, float weight) {  // torch.lerp with a scalar weight
    const float diff = b - a;
    return std::fabs(weight) < 0.5f ? a + weight * diff : b - diff * (1.0f - weight);
}

void prepare_shared(double beta, double rescale, double clip, double wd, const double* aux, float* sc) {
    const double lr = aux[0], ckp1 = aux[1];
    sc[0] = f32(ckp1);
    sc[1] = f32(lr * (beta * (1.0 - ckp1) - 1.0));
    sc[2] = f32(lr);
    sc[3] = f32(wd);
    sc[4] = f32(rescale);
    sc[5] = f32(clip);
    sc[6] = wd != 0.0 ? 1.0f : 0.0f;
}

// d (+ wd*y); y = lerp(y, z, ckp1) + lr*(beta*(1-ckp1) - 1)*d; z -= lr*d
inline void interpolate(const float* sc, float& y, float* z, float d, int64_t i) {
    const float y0 = y, z0 = z[i];
    const float decayed = sc[6] != 0.0f ? d + sc[3] * y0 : d;
    y = lerp(y0, z0, sc[0]) + sc[1] * decayed;
    z[i] = z0 - sc[2] * decayed;
}

// hyper = [momentum, rescale_grad, clip_gradient (-1: none)]
void prepare_sf_sgd(const double* h, double, double wd, int64_t, const double* aux, float* sc) {
    prepare_shared(h[0], h[1], h[2], wd, aux, sc);
}

const char* check_sf_sgd(const double*, int n, uint32_t present) {
    return n == 3 && present == 1u ? nullptr : "schedulefree_sgd takes 3 hyperparameters and one state";
}

struct ScheduleFreeSGDRule {
    static inline void elem(const float* sc, float& w, float grad, float* z, float*, float*, float*, int64_t i) {
        interpolate(sc, w, z, rescale_clip(grad, sc[4], sc[5]), i);
    }
};

// hyper = [beta1, beta2, epsilon, rescale_grad, clip_gradient (-1: none)]; more scalars: beta2, 1-beta2,
// 1 - beta2^t (float64, then float32), epsilon
void prepare_sf_adamw(const double* h, double, double wd, int64_t t, const double* aux, float* sc) {
    prepare_shared(h[0], h[3], h[4], wd, aux, sc);
    sc[7] = f32(h[1]);
    sc[8] = f32(1.0 - h[1]);
    sc[9] = f32(1.0 - std::pow(h[1], static_cast<double>(t)));
    sc[10] = f32(h[2]);
}

const char* check_sf_adamw(const double*, int n, uint32_t present) {
    return n == 5 && present == 3u ? nullptr : "schedulefree_adamw takes 5 hyperparameters and two states";
}

// v = b2*v + (1-b2)*g^2; d = g/(sqrt(v/bc2) + eps); then the interpolation
struct ScheduleFreeAdamWRule {
    static inline void elem(const float* sc, float& w, float grad, float* z, float* var, float*, float*,
                            int64_t i) {
        const float g = rescale_clip(grad, sc[4], sc[5]);
        const float v = var[i] * sc[7] + (sc[8] * g) * g;
        var[i] = v;
        interpolate(sc, w, z, g / (std::sqrt(v / sc[9]) + sc[10]), i);
    }
};

const RuleDesc sf_sgd{"schedulefree_sgd", 1, 0u, 0u, false, false, check_sf_sgd, prepare_sf_sgd,
                      elementwise<ScheduleFreeSGDRule>, 2};
const RuleDesc sf_adamw{"schedulefree_adamw", 2, 0u, 0u, false, false, check_sf_adamw, prepare_sf_adamw,
                        elementwise<ScheduleFreeAdamWRule>, 2};
OPTZOO_RULE(sf_sgd);
OPTZOO_RULE(sf_adamw);

}  // namespace
}  // namespace optzoo
