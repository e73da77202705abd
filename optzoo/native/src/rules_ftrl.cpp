// Ftrl and FTML (optzoo/optimizer/ftrl.py).
//
// Both divide by the learning rate: a tensor whose effective lr is 0 is left untouched (weight and state), as the
// Python rules skip it (its float16/bfloat16 weight is still rewritten from the master copy, as
// update_multi_precision does). Square roots are taken in float64 and rounded once (optzoo's exact_sqrt).
//
// ftrl: hyper = [lamda1, beta, rescale_grad, clip_gradient (-1: none)]; states (z, n).
//   Scalars: lr, wd, lamda1, beta, rescale_grad, clip_gradient, frozen (lr == 0).
// ftml: hyper = [beta1, beta2, epsilon, rescale_grad, clip_gradient (-1: none)]; states (d, v, z).
//   Scalars: coef1/lr, coef2 (ftml_scalars), wd, beta1, 1-beta1, beta2, 1-beta2, epsilon, rescale_grad,
//   clip_gradient, frozen (lr == 0).
#include <vector>

#include "api.h"

namespace optzoo {
namespace {

// optzoo's exact_sqrt: the float64 square root of a float32 value, rounded once to float32.
inline float exact_sqrt(float x) { return static_cast<float>(std::sqrt(static_cast<double>(x))); }

// torch.sign: 0 for 0, -0 and NaN.
inline float sign_of(float x) { return static_cast<float>((x > 0.0f) - (x < 0.0f)); }

template <typename L>
void rewrite_low_precision(const StepArgs& a, const Chunk& ch) {
    const float* w = a.weights[ch.tensor] + ch.offset;
    L* lp = static_cast<L*>(a.low_precision[ch.tensor]) + ch.offset;
    for (int64_t i = 0; i < ch.length; ++i) lp[i] = from_float<L>(w[i]);
}

// Runs Rule over the tensors whose scalar `kFrozen` is 0; the others keep weight and state.
template <class Rule, int kFrozen>
void run_moving(const StepArgs& a) {
    auto frozen = [&](int32_t t) { return a.scalars[t * kMaxScalars + kFrozen] != 0.0f; };
    bool any = false;
    for (int64_t t = 0; t < a.n_tensors; ++t) any = any || frozen(static_cast<int32_t>(t));
    if (!any) {
        elementwise<Rule>(a);
        return;
    }
    std::vector<Chunk> moving;
    moving.reserve(static_cast<size_t>(a.n_chunks));
    int64_t n_elements = 0;
    for (int64_t c = 0; c < a.n_chunks; ++c) {
        const Chunk& ch = a.chunks[c];
        if (!frozen(ch.tensor)) {
            moving.push_back(ch);
            n_elements += ch.length;
        } else if (a.low_precision != nullptr) {
            if (a.low_precision_dtype == kFloat16)
                rewrite_low_precision<Half>(a, ch);
            else
                rewrite_low_precision<BFloat16>(a, ch);
        }
    }
    if (moving.empty()) return;
    StepArgs b = a;
    b.chunks = moving.data();
    b.n_chunks = static_cast<int64_t>(moving.size());
    b.n_elements = n_elements;
    elementwise<Rule>(b);
}

// ---------------------------------------------------------------------------------------------------- Ftrl
void prepare_ftrl(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = f32(h[1]);
    sc[4] = f32(h[2]);
    sc[5] = f32(h[3]);
    sc[6] = lr == 0.0 ? 1.0f : 0.0f;
}

const char* check_ftrl(const double*, int n, uint32_t present) {
    return n == 4 && present == 3u ? nullptr : "ftrl takes 4 hyperparameters and states (z, n)";
}

// g = clip(rg*grad); z += g - (sqrt(n + g^2) - sqrt(n)) * w / lr; n += g^2;
// w = -(max(|z| - lamda1, 0) * sign(z)) / ((sqrt(n) + beta) / lr + wd)
struct FtrlRule {
    static inline void elem(const float* sc, float& w, float grad, float* z, float* n, float*, float*, int64_t i) {
        const float lr = sc[0];
        const float g = rescale_clip(grad, sc[4], sc[5]);
        const float g2 = g * g;
        const float n_old = n[i];
        const float n_new = n_old + g2;  // n + g^2, rounded once: also the new n
        const float sqrt_new = exact_sqrt(n_new);
        const float sigma_w = ((sqrt_new - exact_sqrt(n_old)) * w) / lr;
        const float zz = z[i] + (g - sigma_w);
        z[i] = zz;
        n[i] = n_new;
        float shrunk = std::fabs(zz) - sc[2];
        shrunk = shrunk < 0.0f ? 0.0f : shrunk;  // clamp_min(0): NaN stays NaN
        shrunk = -(shrunk * sign_of(zz));
        const float denom = ((sqrt_new + sc[3]) / lr) + sc[1];
        w = shrunk / denom;
    }
};

// ---------------------------------------------------------------------------------------------------- FTML
// powf(float32(base), t) as optzoo's _powf: the float64 power of the float32 base, rounded once.
inline double powf_t(double base, int64_t t) {
    return static_cast<double>(f32(std::pow(static_cast<double>(f32(base)), static_cast<double>(t))));
}

void prepare_ftml(const double* h, double lr, double wd, int64_t t, const double*, float* sc) {
    const double coef1 = f32(1.0 - powf_t(h[0], t));
    const double coef2 = f32(1.0 - powf_t(h[1], t));
    sc[0] = lr == 0.0 ? 0.0f : f32(coef1 / static_cast<double>(f32(lr)));
    sc[1] = f32(coef2);
    sc[2] = f32(wd);
    sc[3] = f32(h[0]);
    sc[4] = one_minus(h[0]);
    sc[5] = f32(h[1]);
    sc[6] = one_minus(h[1]);
    sc[7] = f32(h[2]);
    sc[8] = f32(h[3]);
    sc[9] = f32(h[4]);
    sc[10] = lr == 0.0 ? 1.0f : 0.0f;
}

const char* check_ftml(const double*, int n, uint32_t present) {
    return n == 5 && present == 7u ? nullptr : "ftml takes 5 hyperparameters and states (d, v, z)";
}

// g = clip(rg*grad) + wd*w; v = b2*v + (1-b2)*g^2; d_t = coef1_lr * (sqrt(v / coef2) + eps);
// z = b1*z + (1-b1)*g - (d_t - b1*d)*w; d = d_t; w = -z / d_t
struct FTMLRule {
    static inline void elem(const float* sc, float& w, float grad, float* d, float* v, float* z, float*,
                            int64_t i) {
        const float g = rescale_clip(grad, sc[8], sc[9]) + sc[2] * w;
        const float vv = v[i] * sc[5] + (g * g) * sc[6];
        v[i] = vv;
        const float d_t = (exact_sqrt(vv / sc[1]) + sc[7]) * sc[0];
        const float zz = (z[i] * sc[3] + g * sc[4]) - (d_t - d[i] * sc[3]) * w;
        z[i] = zz;
        d[i] = d_t;
        w = -(zz / d_t);
    }
};

const RuleDesc ftrl{"ftrl", 2, 0u, 0u, false, true, check_ftrl, prepare_ftrl, run_moving<FtrlRule, 6>};
const RuleDesc ftml{"ftml", 3, 0u, 0u, false, false, check_ftml, prepare_ftml, run_moving<FTMLRule, 10>};
OPTZOO_RULE(ftrl);
OPTZOO_RULE(ftml);

}  // namespace
}  // namespace optzoo
