// ADOPT and AdEMAMix (optzoo/optimizer/adopt.py, ademamix.py), in pytorch-optimizer's order, with its weight decay:
// mode 0 none, 1 decoupled (w *= factor), 2 L2 (g += wd*w).
#include "api.h"

namespace optzoo {
namespace {

// the decay mode and factor from [weight_decouple, fixed_decay] and the tensor's lr, wd
inline void prepare_decay(double weight_decouple, double fixed_decay, double lr, double wd, float* mode,
                          float* factor) {
    *mode = wd == 0.0 ? 0.0f : (weight_decouple != 0.0 ? 1.0f : 2.0f);
    *factor = f32(1.0 - wd * (fixed_decay != 0.0 ? 1.0 : lr));
}

// The weight after a decoupled decay, and the gradient after an L2 one (selects, not branches, and one store to
// the weight per element: anything else keeps the element loop from vectorizing).
inline float decayed_weight(float w, float mode, float factor) { return mode == 1.0f ? w * factor : w; }
inline float decayed_grad(float g, float w, float mode, float wd) { return mode == 2.0f ? g + wd * w : g; }

// ------------------------------------------------------------------------------------------ ADOPT
// hyper = [beta1, beta2, epsilon, weight_decouple, fixed_decay, rescale_grad, clip_gradient (-1: none),
//          begin_num_update, clipping (0/1), clip_exponent].
// Scalars: lr, wd, decay mode, decay factor, first step (0/1), clip t^c (-1: none), 1-beta1, beta2, 1-beta2,
// epsilon, rescale_grad, clip_gradient.
void prepare_adopt(const double* h, double lr, double wd, int64_t t, const double*, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    prepare_decay(h[3], h[4], lr, wd, &sc[2], &sc[3]);
    sc[4] = static_cast<double>(t) == h[7] + 1.0 ? 1.0f : 0.0f;
    sc[5] = h[8] != 0.0 ? f32(std::pow(static_cast<double>(t), h[9])) : -1.0f;
    sc[6] = f32(1.0 - h[0]);
    sc[7] = f32(h[1]);
    sc[8] = f32(1.0 - h[1]);
    sc[9] = f32(h[2]);
    sc[10] = f32(h[5]);
    sc[11] = f32(h[6]);
}

const char* check_adopt(const double*, int n, uint32_t present) {
    return n == 10 && present == 3u ? nullptr : "adopt takes 10 hyperparameters and two states";
}

// The loops of one tensor's step, compiled per combination of its flags (selects on them inside the loop cost ~10%
// of a ResNet-50 step): the decay mode, the first step, clipping, and which of lerp's two formulas 1-beta1 takes.
enum Decay { kNoDecay = 0, kDecoupled = 1, kL2 = 2 };

// g = clip(rg*grad) (+ wd*w for L2 decay); and the weight after a decoupled decay
template <int kDecay>
inline float adopt_grad(const float* sc, float grad, float w) {
    const float g = rescale_clip(grad, sc[10], sc[11]);
    return kDecay == kL2 ? g + sc[1] * w : g;
}

template <int kDecay>
inline float adopt_decayed(const float* sc, float w) { return kDecay == kDecoupled ? w * sc[3] : w; }

// the first step only records v = g^2 (plus the decoupled decay of the weight)
template <int kDecay>
struct AdoptFirst {
    static inline void elem(const float* sc, float& w, float grad, float*, float* var, float*, float*, int64_t i) {
        const float g = adopt_grad<kDecay>(sc, grad, w);
        w = adopt_decayed<kDecay>(sc, w);
        var[i] = var[i] + g * g;
    }
};

// n = clamp(g / max(sqrt(v), eps), +-clip); m = lerp(m, n, 1-b1); w -= lr*m; v = b2*v + (1-b2)*g^2
template <int kDecay, bool kClip, bool kLow>
struct AdoptStep {
    static inline void elem(const float* sc, float& w, float grad, float* mean, float* var, float*, float*,
                            int64_t i) {
        const float g = adopt_grad<kDecay>(sc, grad, w);
        const float v = var[i];
        const float root = std::sqrt(v);
        float normed = g / (root < sc[9] ? sc[9] : root);
        if (kClip) normed = normed < -sc[5] ? -sc[5] : (normed > sc[5] ? sc[5] : normed);
        const float m = lerp_fixed<kLow>(mean[i], normed, sc[6]);
        mean[i] = m;
        w = adopt_decayed<kDecay>(sc, w) + (-sc[0]) * m;
        var[i] = v * sc[7] + (sc[8] * g) * g;
    }
};

struct PickAdopt {
    template <typename G, typename L, int kDecay, bool kClip>
    static void step(const StepArgs& a, const float* sc, const Chunk& ch) {
        if (std::fabs(sc[6]) < 0.5f) elementwise_chunk<AdoptStep<kDecay, kClip, true>, G, L>(a, sc, ch);
        else elementwise_chunk<AdoptStep<kDecay, kClip, false>, G, L>(a, sc, ch);
    }

    template <typename G, typename L, int kDecay>
    static void decay(const StepArgs& a, const float* sc, const Chunk& ch) {
        if (sc[4] != 0.0f) elementwise_chunk<AdoptFirst<kDecay>, G, L>(a, sc, ch);
        else if (sc[5] >= 0.0f) step<G, L, kDecay, true>(a, sc, ch);
        else step<G, L, kDecay, false>(a, sc, ch);
    }

    template <typename G, typename L>
    static void run(const StepArgs& a, const float* sc, const Chunk& ch) {
        if (sc[2] == 1.0f) decay<G, L, kDecoupled>(a, sc, ch);
        else if (sc[2] == 2.0f) decay<G, L, kL2>(a, sc, ch);
        else decay<G, L, kNoDecay>(a, sc, ch);
    }
};

const RuleDesc adopt{"adopt", 2, 0u, 0u, false, false, check_adopt, prepare_adopt, elementwise_picked<PickAdopt>};
OPTZOO_RULE(adopt);

// ------------------------------------------------------------------------------------------ AdEMAMix
// hyper = [beta1, beta2, epsilon, weight_decouple, fixed_decay, rescale_grad, clip_gradient (-1: none)];
// aux = [1 - beta1^t, sqrt(1 - beta2^t), alpha_t, beta3_t] (AdEMAMix._native_aux).
// Scalars: lr, wd, decay mode, decay factor, 1-beta1, beta2, 1-beta2, 1-beta3_t, bias corrections 1 and 2,
// alpha_t, epsilon, rescale_grad, clip_gradient.
void prepare_ademamix(const double* h, double lr, double wd, int64_t, const double* aux, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    prepare_decay(h[3], h[4], lr, wd, &sc[2], &sc[3]);
    sc[4] = f32(1.0 - h[0]);
    sc[5] = f32(h[1]);
    sc[6] = f32(1.0 - h[1]);
    sc[7] = f32(1.0 - aux[3]);
    sc[8] = f32(aux[0]);
    sc[9] = f32(aux[1]);
    sc[10] = f32(aux[2]);
    sc[11] = f32(h[2]);
    sc[12] = f32(h[5]);
    sc[13] = f32(h[6]);
}

const char* check_ademamix(const double*, int n, uint32_t present) {
    return n == 7 && present == 7u ? nullptr : "ademamix takes 7 hyperparameters and three states";
}

// m1 = lerp(m1, g, 1-b1); v = b2*v + (1-b2)*g^2; m2 = lerp(m2, g, 1-b3_t);
// w -= lr*(m1/bc1 + alpha_t*m2)/(sqrt(v)/bc2 + eps)
struct AdemamixRule {
    static inline void elem(const float* sc, float& w, float grad, float* fast, float* var, float* slow, float*,
                            int64_t i) {
        const float w0 = w;
        const float g = decayed_grad(rescale_clip(grad, sc[12], sc[13]), w0, sc[2], sc[1]);
        const float m1 = lerp(fast[i], g, sc[4]);
        const float v = var[i] * sc[5] + (sc[6] * g) * g;
        const float m2 = lerp(slow[i], g, sc[7]);
        fast[i] = m1;
        var[i] = v;
        slow[i] = m2;
        const float denom = std::sqrt(v) / sc[9] + sc[11];
        const float update = m1 / sc[8] + sc[10] * m2;
        w = decayed_weight(w0, sc[2], sc[3]) + (-sc[0]) * (update / denom);
    }
};

const RuleDesc ademamix{"ademamix", 3, 0u, 0u, false, false, check_ademamix, prepare_ademamix,
                        elementwise<AdemamixRule>, 4};
OPTZOO_RULE(ademamix);

}  // namespace
}  // namespace optzoo
