// SGD and NAG (optzoo/optimizer/sgd.py). hyper = [momentum, rescale_grad, clip_gradient (-1: none)].
// Scalars: lr, wd, momentum, rescale_grad, clip_gradient.
#include "api.h"

namespace optzoo {
namespace {

void prepare_sgd(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = f32(h[1]);
    sc[4] = f32(h[2]);
}

const char* check_momentum(const double* h, int n, uint32_t present) {
    if (n != 3) return "sgd takes 3 hyperparameters";
    return ((h[0] != 0.0) == bool(present & 1u)) ? nullptr : "momentum and state disagree";
}

// g = clip(rg*grad) + wd*w; momentum 0: w -= lr*g; else mom = mu*mom - lr*g, w += mom
struct SGDRule {
    static inline void elem(const float* sc, float& w, float grad, float* mom, float*, float*, float*, int64_t i) {
        const float g = rescale_clip(grad, sc[3], sc[4]) + sc[1] * w;
        const float step = sc[0] * g;
        if (mom == nullptr) {
            w = w - step;
        } else {
            const float m = mom[i] * sc[2] - step;
            mom[i] = m;
            w = w + m;
        }
    }
};

// g = clip(rg*grad) + wd*w; mom = mu*mom - lr*g; w += mu*mom - lr*g (two roundings, as the reference)
struct NAGRule {
    static inline void elem(const float* sc, float& w, float grad, float* mom, float*, float*, float*, int64_t i) {
        const float g = rescale_clip(grad, sc[3], sc[4]) + sc[1] * w;
        const float step = sc[0] * g;
        if (mom == nullptr) {
            w = w - step;
        } else {
            const float m = mom[i] * sc[2] - step;
            mom[i] = m;
            w = (w + sc[2] * m) - step;
        }
    }
};

const RuleDesc sgd{"sgd", 1, 1u, 0u, false, true, check_momentum, prepare_sgd, elementwise<SGDRule>};
const RuleDesc nag{"nag", 1, 1u, 0u, false, true, check_momentum, prepare_sgd, elementwise<NAGRule>};
OPTZOO_RULE(sgd);
OPTZOO_RULE(nag);

}  // namespace
}  // namespace optzoo
