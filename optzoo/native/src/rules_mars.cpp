// MARS (optzoo/optimizer/mars.py), pytorch-optimizer's arithmetic, the whole step in one call.
//
// A mixed tensor (ndim >= 2, or every tensor with optimize_1d) scales its corrected gradient
// c = g + gain*(g - g_prev) by 1/||c|| where ||c|| > 1, so its norm must be known before any of its elements is
// updated: two passes, a norm pass (reads g, g_prev) and the update (reads w, g, m, v, g_prev; writes w, m, v,
// g_prev): 8 + 36 = 44 bytes per parameter (Lion: v untouched, 8 + 28). The other tensors take a plain AdamW step
// in one pass. As the trust-ratio rules (rules_trust_ratio.cpp), every pass is ONE parallel loop over all tensors,
// cut into units of kUnit elements:
//   loop 1  plain tensors: their update; small mixed tensors (at most kFuseUnits units): fused, one thread runs
//           the norm pass and the update back to back while the tensor is in its cache; large mixed tensors:
//           their norm pass, one float64 partial sum per unit
//   loop 2  large mixed tensors: the update, with 1/||c|| from their units' sums added in unit order
// so a step of small or 1-D tensors moves one pass's bytes. A tensor's sum does not depend on the thread count or
// on whether it was fused (the same unit sums, added in the same order).
//
// Per element: one division and one square root (AdamW side). The divisions by per-tensor constants of the
// reference (by ||c||, by the bias corrections) are multiplications by reciprocals formed once per tensor; lerp,
// addcmul and add(alpha=) are torch's fused multiply-adds.
//
// hyper = [epsilon, rescale_grad, clip_gradient (-1: none), gamma, beta1, beta2, beta1_1d, beta2_1d,
//          lr_1d / learning_rate, wd_1d, lion (1/0), optimize_1d (1/0)]; per tensor lr, wd, t.
// Scalars: two blocks of [lr, 1 - wd*lr, 1 - b1, b2, 1 - b2, sqrt(1 - b2^t)/(1 - b1^t)], the mixed side at 0 and
// the 1-D side (lr*lr_1d/learning_rate, wd_1d, beta1_1d, beta2_1d) at 7; 6 gamma*b1/(1-b1); 13 epsilon,
// 14 rescale_grad, 15 clip (+inf: none).
#include <algorithm>
#include <vector>

#include "api.h"

namespace optzoo {
namespace {

constexpr int kSide1d = 7;  // the 1-D side's block of scalars
constexpr int kHyper = 12;

// one side's block: lr, decay factor, lerp weight, b2, 1-b2, bias-correction factor (float64, then float32)
void prepare_side(double lr, double wd, int64_t t, double beta1, double beta2, float* p) {
    const double bc2 = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(t)));
    const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
    p[0] = f32(lr);
    p[1] = f32(1.0 - wd * lr);
    p[2] = f32(1.0 - beta1);
    p[3] = f32(beta2);
    p[4] = f32(1.0 - beta2);
    // the reference divides by f32(bc2) and multiplies by f32(bc1) per element; here m is multiplied by their ratio
    p[5] = f32(static_cast<double>(f32(bc2)) / static_cast<double>(f32(bc1)));
}

void prepare_mars(const double* h, double lr, double wd, int64_t t, const double*, float* sc) {
    prepare_side(lr, wd, t, h[4], h[5], sc);
    sc[6] = f32(h[3] * (h[4] / (1.0 - h[4])));
    prepare_side(lr * h[8], h[9], t, h[6], h[7], sc + kSide1d);
    sc[13] = f32(h[0]);
    sc[14] = f32(h[1]);
    sc[15] = h[2] >= 0.0 ? f32(h[2]) : INFINITY;
}

const char* check_mars(const double*, int n, uint32_t present) {
    return n == kHyper && present == 7u ? nullptr : "mars takes 12 hyperparameters and three states";
}

// clip(rescale_grad*grad) with clip = +inf for none: selects only (a branch keeps GCC from vectorizing the loop);
// NaN passes, as torch.clamp lets it
inline float clipped(float grad, float rescale, float clip) {
    const float x = grad * rescale;
    const float low = x < -clip ? -clip : x;
    return low > clip ? clip : low;
}

inline float lerp(float a, float b, float weight) {  // torch.lerp with a scalar weight (fused multiply-adds)
    const float diff = b - a;
    return std::fabs(weight) < 0.5f ? std::fma(weight, diff, a) : std::fma(-diff, 1.0f - weight, b);
}

// torch.sign: -1, 0 or 1, NaN stays NaN (written as selects of constants, which GCC vectorizes)
inline float sign_of(float x) {
    const float s = (x > 0.0f ? 1.0f : 0.0f) - (x < 0.0f ? 1.0f : 0.0f);
    return x != x ? x : s;
}

enum Flavor { kPlain, kMixedAdam, kMixedLion };

// The update of n elements. x = g (plain) or c/||c|| (mixed: `inverse` = 1/||c||, 1 where ||c|| <= 1);
// m = lerp(m, x, 1-b1); AdamW: v = b2*v + (1-b2)*x^2, u = m*bc / (sqrt(v + 1e-15) + eps); Lion: u = sign(m), v
// untouched; w = w*(1 - wd*lr) - lr*u; g_prev = g.
template <Flavor F>
void update_span(const float* sc, float inverse, float* __restrict w, const float* __restrict grad,
                 float* __restrict mean, float* __restrict var, float* __restrict last, int64_t n) {
    const float* p = F == kPlain ? sc + kSide1d : sc;
    const float lr = p[0], decay = p[1], weight = p[2], b2 = p[3], one_minus_b2 = p[4], bc = p[5];
    const float gain = sc[6], eps = sc[13], rescale = sc[14], clip = sc[15];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        const float g = clipped(grad[i], rescale, clip);
        const float x = F == kPlain ? g : ((g - last[i]) * gain + g) * inverse;
        const float m = lerp(mean[i], x, weight);
        float u;
        if (F == kMixedLion) {
            u = sign_of(m);
        } else {
            const float v = std::fma(one_minus_b2 * x, x, var[i] * b2);
            var[i] = v;
            u = (m * bc) / (std::sqrt(v + 1e-15f) + eps);
        }
        mean[i] = m;
        last[i] = g;
        w[i] = std::fma(u, -lr, w[i] * decay);
    }
}

// The sum of squares of the corrected gradient over n elements: float32 blocks of 256, joined in float64
double corrected_squares(const float* sc, const float* __restrict grad, const float* __restrict last, int64_t n) {
    const float gain = sc[6], rescale = sc[14], clip = sc[15];
    double sum = 0.0;
    for (int64_t b = 0; b < n; b += 256) {
        const int64_t e = std::min(n, b + 256);
        float block = 0.0f;
#pragma omp simd reduction(+ : block)
        for (int64_t i = b; i < e; ++i) {
            const float g = clipped(grad[i], rescale, clip);
            const float c = (g - last[i]) * gain + g;
            block += c * c;
        }
        sum += block;
    }
    return sum;
}

// 1/||c|| where the norm (rounded to float32, as torch.linalg.vector_norm's result) is larger than 1, else 1
inline float inverse_norm(double sum_of_squares) {
    const float norm = f32(std::sqrt(sum_of_squares));
    return norm > 1.0f ? 1.0f / norm : 1.0f;
}

// ------------------------------------------------------------------------------------------ the driver
constexpr int64_t kUnit = 8192;    // elements per partial sum (and per float16/bfloat16 conversion)
constexpr int64_t kBatch = 16;     // units a thread claims at once
constexpr int64_t kFuseUnits = 8;  // a mixed tensor of at most 64K elements runs both passes on one thread

struct Unit {
    int32_t tensor;
    int64_t offset, grad_offset, length;
};

enum Kind { kPlainItem, kFusedItem, kStagedItem };
struct Item {
    int64_t begin, end;  // units [begin, end)
    Kind kind;
};

template <typename G, typename L>
struct Mars {
    const StepArgs& a;
    std::vector<Unit> units;
    std::vector<int64_t> first;  // tensor t owns units [first[t], first[t + 1])
    std::vector<char> mixed;
    std::vector<Item> items;
    std::vector<double> unit_sums;
    std::vector<float> inverse;  // per staged tensor
    bool lion;

    explicit Mars(const StepArgs& args) : a(args), first(args.n_tensors + 1, 0), mixed(args.n_tensors, 0) {
        lion = a.hyper[10] != 0.0;
        const bool all = a.hyper[11] != 0.0;
        for (int64_t t = 0; t < a.n_tensors; ++t) mixed[t] = all || a.inner_shape[3 * t] >= 2;
        for (int64_t c = 0; c < a.n_chunks; ++c) {
            const Chunk& ch = a.chunks[c];
            for (int64_t off = 0; off < ch.length; off += kUnit) {
                units.push_back(Unit{ch.tensor, ch.offset + off, ch.grad_offset + off, std::min(kUnit, ch.length - off)});
                ++first[ch.tensor + 1];
            }
        }
        for (int64_t t = 0; t < a.n_tensors; ++t) first[t + 1] += first[t];
        for (int64_t t = 0; t < a.n_tensors; ++t) {
            const int64_t b = first[t], e = first[t + 1];
            const Kind kind = !mixed[t] ? kPlainItem : e - b <= kFuseUnits ? kFusedItem : kStagedItem;
            for (int64_t u = b; u < e;) {
                Item* last = items.empty() ? nullptr : &items.back();
                if (kind != kStagedItem && last != nullptr && last->kind == kind && last->end == u &&
                    last->end - last->begin < kBatch) {  // consecutive small work joins the last item
                    last->end = kind == kFusedItem ? e : std::min(e, last->begin + kBatch);
                } else {
                    items.push_back(Item{u, kind == kFusedItem ? e : std::min(e, u + kBatch), kind});
                }
                u = items.back().end;
            }
        }
        unit_sums.assign(units.size(), 0.0);
        inverse.assign(a.n_tensors, 1.0f);
    }

    // fn(float32 gradient) of unit un (a low-precision gradient widened into buffer)
    template <class Fn>
    void with_grad(const Unit& un, float* buffer, Fn&& fn) const {
        const G* grad = static_cast<const G*>(a.grads[un.tensor]) + un.grad_offset;
        if constexpr (std::is_same<G, float>::value) {
            fn(grad);
        } else if constexpr (std::is_same<G, Half>::value) {
            half_to_float(grad, buffer, un.length);
            fn(static_cast<const float*>(buffer));
        } else {
            for (int64_t i = 0; i < un.length; ++i) buffer[i] = to_float(grad[i]);
            fn(static_cast<const float*>(buffer));
        }
    }

    double sum_unit(const Unit& un, float* buffer) const {
        double s = 0.0;
        with_grad(un, buffer, [&](const float* g) {
            s = corrected_squares(a.scalars + un.tensor * kMaxScalars, g, a.states[2][un.tensor] + un.offset,
                                  un.length);
        });
        return s;
    }

    void update_unit(const Unit& un, float inv, float* buffer) const {
        const int32_t t = un.tensor;
        const float* sc = a.scalars + t * kMaxScalars;
        float* w = a.weights[t] + un.offset;
        float* m = a.states[0][t] + un.offset;
        float* v = a.states[1][t] + un.offset;
        float* last = a.states[2][t] + un.offset;
        with_grad(un, buffer, [&](const float* g) {
            if (!mixed[t]) update_span<kPlain>(sc, 1.0f, w, g, m, v, last, un.length);
            else if (lion) update_span<kMixedLion>(sc, inv, w, g, m, v, last, un.length);
            else update_span<kMixedAdam>(sc, inv, w, g, m, v, last, un.length);
        });
        if constexpr (std::is_same<L, Half>::value) {
            float_to_half(w, static_cast<Half*>(a.low_precision[t]) + un.offset, un.length);
        } else if constexpr (!std::is_same<L, NoLowPrecision>::value) {
            L* lp = static_cast<L*>(a.low_precision[t]) + un.offset;
            for (int64_t i = 0; i < un.length; ++i) lp[i] = from_float<L>(w[i]);
        }
    }

    template <class Fn>
    void for_items(Fn&& fn) const {
        const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
        const int64_t n = static_cast<int64_t>(items.size());
#pragma omp parallel num_threads(a.n_threads) if (parallel)
        {
            alignas(64) float buffer[kUnit];
#pragma omp for schedule(dynamic, 1)
            for (int64_t i = 0; i < n; ++i) fn(items[i], buffer);
        }
    }

    void run() {
        for_items([&](const Item& item, float* buffer) {
            if (item.kind == kPlainItem) {
                for (int64_t u = item.begin; u < item.end; ++u) update_unit(units[u], 1.0f, buffer);
            } else if (item.kind == kStagedItem) {
                for (int64_t u = item.begin; u < item.end; ++u) unit_sums[u] = sum_unit(units[u], buffer);
            } else {  // fused: each tensor's norm pass, then its update, on this thread
                for (int64_t u = item.begin; u < item.end;) {
                    const int32_t t = units[u].tensor;
                    double sum = 0.0;
                    for (int64_t k = first[t]; k < first[t + 1]; ++k) sum += sum_unit(units[k], buffer);
                    const float inv = inverse_norm(sum);
                    for (int64_t k = first[t]; k < first[t + 1]; ++k) update_unit(units[k], inv, buffer);
                    u = first[t + 1];
                }
            }
        });
        bool staged = false;
        for (int64_t t = 0; t < a.n_tensors; ++t) {
            if (!mixed[t] || first[t + 1] - first[t] <= kFuseUnits) continue;
            double sum = 0.0;  // in unit order: the same sum whatever the thread count
            for (int64_t u = first[t]; u < first[t + 1]; ++u) sum += unit_sums[u];
            inverse[t] = inverse_norm(sum);
            staged = true;
        }
        if (!staged) return;
        for_items([&](const Item& item, float* buffer) {
            if (item.kind != kStagedItem) return;
            for (int64_t u = item.begin; u < item.end; ++u) update_unit(units[u], inverse[units[u].tensor], buffer);
        });
    }
};

void run_mars(const StepArgs& a) {
    if (a.low_precision == nullptr) Mars<float, NoLowPrecision>(a).run();
    else if (a.low_precision_dtype == kFloat16) Mars<Half, Half>(a).run();
    else Mars<BFloat16, BFloat16>(a).run();
}

const RuleDesc mars{"mars", 3, 0u, 0u, false, false, check_mars, prepare_mars, run_mars, 0};
OPTZOO_RULE(mars);

}  // namespace
}  // namespace optzoo
