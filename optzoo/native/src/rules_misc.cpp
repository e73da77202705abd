// Signum/signSGD (optzoo/optimizer/signum.py), DCASGD (dcasgd.py), Test (testing.py) and the legacy ccSGD
// (legacy.py, MXNet 1.9.1 numerics).
//
// signum: hyper = [momentum, wd_lh, rescale_grad, clip_gradient (-1: none)]; state mom, or None for signSGD
//   (momentum 0). Scalars: lr, wd, momentum, 1-momentum, decay (1 - lr*wd_lh with momentum, 1 - lr*(wd + wd_lh)
//   without), rescale_grad, clip_gradient.
// dcasgd: hyper = [momentum, lamda, rescale_grad, clip_gradient]; states (mom or None, previous_weight); the
//   branch follows the state, as the Python rule. Scalars: lr, wd, momentum, lamda, rescale_grad, clip_gradient.
// test: hyper = [rescale_grad, clip_gradient]; its state (an all-zero tensor, or None) is never read or written.
//   Scalars: lr, wd, rescale_grad, clip_gradient.
// ccsgd: hyper = [momentum, rescale_grad, clip_gradient]; state mom, or None (momentum 0).
//   Scalars: lr', rescale', lr*wd, 1 - lr*wd, momentum, clip_gradient, where the step lr*clip(rg*grad) is
//   clip(rescale'*grad)*lr' with (rescale', lr') = (lr*rg, 1) without clipping (1.9.1 folds lr*rg into one
//   float32 scalar) and (rg, lr) with clipping.
#include "api.h"

namespace optzoo {
namespace {

// torch.sign: 0 for 0, -0 and NaN.
inline float sign_of(float x) { return static_cast<float>((x > 0.0f) - (x < 0.0f)); }

// momentum != 0 exactly when the (optional) first slot holds a tensor.
bool momentum_matches_state(const double* h, uint32_t present) { return (h[0] != 0.0) == bool(present & 1u); }

// Runs With when slot 0 holds tensors (it does for every tensor of a step or for none), else Without: the
// branch stays out of the element loop (GCC does not always unswitch it, e.g. not for bfloat16 Signum).
template <class With, class Without>
void by_first_state(const StepArgs& a) {
    if (a.n_tensors > 0 && a.states[0][0] != nullptr)
        elementwise<With>(a);
    else
        elementwise<Without>(a);
}

// ---------------------------------------------------------------------------------------------------- Signum
// decay_factor(lr, wd): 1 - lr*wd, each operation on float32 values rounded to float32.
inline float decay_factor(double lr, double wd) {
    return f32(1.0 - static_cast<double>(f32(static_cast<double>(f32(lr)) * static_cast<double>(f32(wd)))));
}

void prepare_signum(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = one_minus(h[0]);
    sc[4] = h[0] != 0.0 ? decay_factor(lr, h[1]) : decay_factor(lr, wd + h[1]);
    sc[5] = f32(h[2]);
    sc[6] = f32(h[3]);
}

const char* check_signum(const double* h, int n, uint32_t present) {
    if (n != 4) return "signum takes 4 hyperparameters";
    return momentum_matches_state(h, present) ? nullptr : "momentum and state disagree";
}

// mom: g = clip(rg*grad) + wd*w; mom = momentum*mom - (1-momentum)*g; w = (1 - lr*wd_lh)*w + lr*sign(mom)
// signSGD: w = (1 - lr*(wd + wd_lh))*w - lr*sign(grad)
struct SignumRule {
    static inline void elem(const float* sc, float& w, float grad, float* mom, float*, float*, float*, int64_t i) {
        const float g = rescale_clip(grad, sc[5], sc[6]) + sc[1] * w;
        const float m = mom[i] * sc[2] - g * sc[3];
        mom[i] = m;
        w = w * sc[4] + sign_of(m) * sc[0];
    }
};

struct SignSGDRule {
    static inline void elem(const float* sc, float& w, float grad, float*, float*, float*, float*, int64_t) {
        w = w * sc[4] - sign_of(grad) * sc[0];
    }
};

// ---------------------------------------------------------------------------------------------------- DCASGD
void prepare_dcasgd(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = f32(h[1]);
    sc[4] = f32(h[2]);
    sc[5] = f32(h[3]);
}

const char* check_dcasgd(const double*, int n, uint32_t present) {
    return n == 4 && (present & 2u) ? nullptr : "dcasgd takes 4 hyperparameters and a previous weight";
}

// g = clip(rg*grad) + wd*w; d = g*g*(w - prev)*lamda + g; mom = momentum*mom - lr*d (no mom: step = -lr*d);
// prev = w; w += step
template <bool kMomentum>
struct DCASGDRule {
    static inline void elem(const float* sc, float& w, float grad, float* mom, float* prev, float*, float*,
                            int64_t i) {
        const float w0 = w;
        const float g = rescale_clip(grad, sc[4], sc[5]) + sc[1] * w0;
        const float d = ((g * g) * (w0 - prev[i])) * sc[3] + g;
        float step;
        if constexpr (kMomentum) {
            step = mom[i] * sc[2] - sc[0] * d;
            mom[i] = step;
        } else {
            step = d * (-sc[0]);
        }
        prev[i] = w0;
        w = w0 + step;
    }
};

// ---------------------------------------------------------------------------------------------------- Test
void prepare_test(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = f32(h[1]);
}

const char* check_test(const double*, int n, uint32_t) { return n == 2 ? nullptr : "test takes 2 hyperparameters"; }

// SGD without momentum: g = clip(rg*grad) + wd*w; w -= lr*g
struct TestRule {
    static inline void elem(const float* sc, float& w, float grad, float*, float*, float*, float*, int64_t) {
        const float g = rescale_clip(grad, sc[2], sc[3]) + sc[1] * w;
        w = w - sc[0] * g;
    }
};

// ---------------------------------------------------------------------------------------------------- ccSGD
void prepare_ccsgd(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    const bool clip = h[2] >= 0.0;
    const float lr_wd = f32(static_cast<double>(f32(lr)) * static_cast<double>(f32(wd)));
    sc[0] = clip ? f32(lr) : 1.0f;
    sc[1] = clip ? f32(h[1]) : f32(static_cast<double>(f32(lr)) * static_cast<double>(f32(h[1])));
    sc[2] = lr_wd;
    sc[3] = one_minus(lr_wd);
    sc[4] = f32(h[0]);
    sc[5] = f32(h[2]);
}

const char* check_ccsgd(const double* h, int n, uint32_t present) {
    if (n != 3) return "ccsgd takes 3 hyperparameters";
    return momentum_matches_state(h, present) ? nullptr : "momentum and state disagree";
}

// step = lr*clip(rg*grad) (no clip: (lr*rg)*grad); no mom: w = (1 - lr*wd)*w - step;
// mom: mom = momentum*mom - (lr*wd)*w - step; w += mom
template <bool kMomentum>
struct CcSGDRule {
    static inline void elem(const float* sc, float& w, float grad, float* mom, float*, float*, float*, int64_t i) {
        const float step = rescale_clip(grad, sc[1], sc[5]) * sc[0];  // * 1.0f is exact without clipping
        if constexpr (kMomentum) {
            const float m = (mom[i] * sc[4] - sc[2] * w) - step;
            mom[i] = m;
            w = w + m;
        } else {
            w = w * sc[3] - step;
        }
    }
};

const RuleDesc signum{"signum", 1, 1u, 0u, false, false, check_signum, prepare_signum,
                    by_first_state<SignumRule, SignSGDRule>};
const RuleDesc dcasgd{"dcasgd", 2, 1u, 0u, false, false, check_dcasgd, prepare_dcasgd,
                    by_first_state<DCASGDRule<true>, DCASGDRule<false>>};
const RuleDesc test{"test", 1, 1u, 0u, false, false, check_test, prepare_test, elementwise<TestRule>};
const RuleDesc ccsgd{"ccsgd", 1, 1u, 0u, false, true, check_ccsgd, prepare_ccsgd,
                   by_first_state<CcSGDRule<true>, CcSGDRule<false>>};
OPTZOO_RULE(signum);
OPTZOO_RULE(dcasgd);
OPTZOO_RULE(test);
OPTZOO_RULE(ccsgd);

}  // namespace
}  // namespace optzoo
