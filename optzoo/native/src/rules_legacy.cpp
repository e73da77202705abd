// LBSGD (optzoo/optimizer/legacy.py, MXNet 1.9.1 numerics) and SGLD's deterministic part (sgld.py).
//
// lbsgd: hyper = [momentum, rescale_grad, clip_gradient (-1: none), batch_scale, lars (1/0)];
//   states (mom or None, cum_grad or None): mom exactly when momentum != 0, cum_grad exactly when batch_scale > 1.
//   aux per tensor = [ready (1/0): this micro-batch completes the tensor's macro-batch, multiplier of the lr
//   (the warmup's; ignored with lars)].
//   A tensor that is not ready only accumulates: cum += grad (its weight is not written). A ready one takes the
//   macro-batch mean (cum + grad) / batch_scale (grad itself when batch_scale == 1), zeroes cum and runs
//   MXNet 1.9.1's SGD kernel (the ccsgd rule of rules_misc.cpp) with lr * multiplier.
//   With lars the multiplier is clamp(sqrt(|w|^2 / (|mean|^2 + wd*|w|^2 + 1e-18)), 0.01, 100), so a step is
//   two passes: pass 1 sums w*w and mean*mean (float32 squares, double sums, per chunk, then per tensor in chunk
//   order: deterministic whatever the thread count), the sums are rounded to float32 as the reference does
//   (float64 sum .to(float32)), the ratio and every scalar of the SGD kernel are computed in double as Python
//   does, then pass 2 updates. lr and wd reach `run` exactly: each is carried as three float32 scalars whose
//   double sum is the double value.
// sgld: hyper = [rescale_grad, clip_gradient]; slot 0 is the noise, read only (Python draws it with torch's
//   generator, one tensor at a time: SGLD._native_call). Scalars: wd, lr/2, rescale_grad, clip_gradient.
#include <algorithm>
#include <cmath>
#include <vector>

#include "api.h"

namespace optzoo {
namespace {

// ---------------------------------------------------------------------------------------------------- LBSGD
namespace slot {  // LBSGD's scalar slots (a namespace: no template parameter can shadow them)
enum : int {
    kReady = 0,   // 1: the macro-batch completes now
    kScale,       // float32 batch_scale
    kMomentum,
    kLr,          // the SGD kernel's scalars (as rules_misc.cpp's ccsgd): lr', rescale', lr*wd, 1 - lr*wd, clip
    kRescale,
    kLrWd,
    kKeep,
    kClip,
    kRg,          // float32 rescale_grad (lars recomputes kLr/kRescale from it)
    kLrExact,     // three slots: lr (lars: the base lr the ratio multiplies)
    kWdExact = kLrExact + 3,
    kLars = kWdExact + 3,
};
}  // namespace slot
static_assert(slot::kLars < kMaxScalars, "too many scalars");

inline void split3(double x, float* out) {
    out[0] = f32(x);
    const double r1 = x - static_cast<double>(out[0]);
    out[1] = f32(r1);
    out[2] = f32(r1 - static_cast<double>(out[1]));
}

inline double join3(const float* in) {
    return (static_cast<double>(in[0]) + static_cast<double>(in[1])) + static_cast<double>(in[2]);
}

// The SGD kernel's scalars for learning rate `lr` (double, multiplier applied), as ccsgd_reference computes them.
inline void sgd_scalars(double lr, double wd, float rg, bool clip, float* sc) {
    const float lr_wd = f32(static_cast<double>(f32(lr)) * static_cast<double>(f32(wd)));
    sc[slot::kLr] = clip ? f32(lr) : 1.0f;
    sc[slot::kRescale] = clip ? rg : f32(static_cast<double>(f32(lr)) * static_cast<double>(rg));
    sc[slot::kLrWd] = lr_wd;
    sc[slot::kKeep] = 1.0f - lr_wd;
}

void prepare_lbsgd(const double* h, double lr, double wd, int64_t, const double* aux, float* sc) {
    const bool lars = h[4] != 0.0;
    sc[slot::kReady] = aux[0] != 0.0 ? 1.0f : 0.0f;
    sc[slot::kScale] = f32(h[3]);
    sc[slot::kMomentum] = f32(h[0]);
    sc[slot::kClip] = f32(h[2]);
    sc[slot::kRg] = f32(h[1]);
    // with lars these are replaced once the norms are known
    sgd_scalars(lars ? lr : lr * aux[1], wd, sc[slot::kRg], h[2] >= 0.0, sc);
    split3(lr, sc + slot::kLrExact);
    split3(wd, sc + slot::kWdExact);
    sc[slot::kLars] = lars ? 1.0f : 0.0f;
}

const char* check_lbsgd(const double* h, int n, uint32_t present) {
    if (n != 5) return "lbsgd takes 5 hyperparameters";
    if ((h[0] != 0.0) != bool(present & 1u)) return "momentum and state disagree";
    if ((h[3] > 1.0) != bool(present & 2u)) return "batch_scale and cum_grad disagree";
    return nullptr;
}

// cum += grad (a micro-batch inside the macro-batch: the weight is not written)
struct LBSGDAccumulate {
    static inline void elem(const float*, float&, float grad, float*, float* cum, float*, float*, int64_t i) {
        cum[i] = cum[i] + grad;
    }
};

// The macro-batch mean of element i (cum zeroed), or the gradient itself without accumulation.
template <bool kCum>
inline float take_mean(const float* sc, float grad, float* cum, int64_t i) {
    if constexpr (kCum) {
        const float mean = (cum[i] + grad) / sc[slot::kScale];
        cum[i] = 0.0f;
        return mean;
    } else {
        return grad;
    }
}

// mean; step = lr*clip(rg*mean) (no clip: (lr*rg)*mean); no mom: w = (1 - lr*wd)*w - step;
// mom: mom = momentum*mom - (lr*wd)*w - step; w += mom
template <bool kWithMom, bool kCum>
struct LBSGDUpdate {
    static inline void elem(const float* sc, float& w, float grad, float* mom, float* cum, float*, float*,
                            int64_t i) {
        const float mean = take_mean<kCum>(sc, grad, cum, i);
        // * 1.0f is exact without clipping
        const float step = rescale_clip(mean, sc[slot::kRescale], sc[slot::kClip]) * sc[slot::kLr];
        if constexpr (kWithMom) {
            const float m = (mom[i] * sc[slot::kMomentum] - sc[slot::kLrWd] * w) - step;
            mom[i] = m;
            w = w + m;
        } else {
            w = w * sc[slot::kKeep] - step;
        }
    }
};

// Pass 1 of lars over one chunk: out[0] += sum (w*w), out[1] += sum (mean*mean), squares in float32, summed in
// float32 blocks of 256 (16 terms a vector lane; a float64 accumulator would cost more than the pass's memory
// traffic), the block sums in double.
template <bool kCum, typename G>
inline void lars_sums_span(const float* __restrict w, const G* __restrict g, const float* __restrict cum, float scale,
                           int64_t n, double* out) {
    constexpr int64_t kBlock = 256;
    double s0 = 0.0, s1 = 0.0;
    for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t e = std::min(n, b + kBlock);
        float f0 = 0.0f, f1 = 0.0f;
#pragma omp simd reduction(+ : f0, f1)
        for (int64_t i = b; i < e; ++i) {
            const float x = w[i];
            float m = to_float(g[i]);
            if constexpr (kCum) m = (cum[i] + m) / scale;
            f0 += x * x;
            f1 += m * m;
        }
        s0 += f0;
        s1 += f1;
    }
    out[0] += s0;
    out[1] += s1;
}

template <bool kCum, typename G>
void lars_sums(const StepArgs& a, const float* sc, const Chunk& ch, double* out) {
    const int32_t t = ch.tensor;
    const float* w = a.weights[t] + ch.offset;
    const G* g = static_cast<const G*>(a.grads[t]) + ch.grad_offset;
    const float* cum = kCum ? a.states[1][t] + ch.offset : nullptr;
    if constexpr (std::is_same<G, Half>::value) {
        float gb[kHalfBlock];
        for (int64_t b = 0; b < ch.length; b += kHalfBlock) {
            const int64_t m = std::min(kHalfBlock, ch.length - b);
            half_to_float(g + b, gb, m);
            lars_sums_span<kCum, float>(w + b, gb, kCum ? cum + b : nullptr, sc[slot::kScale], m, out);
        }
    } else {
        lars_sums_span<kCum, G>(w, g, cum, sc[slot::kScale], ch.length, out);
    }
}

// The lars ratio from the float32-rounded squared norms, as LargeBatchSchedule.lars (Python's min/max keep NaN).
inline double lars_ratio(double w2, double g2, double wd) {
    double r = std::sqrt(w2 / (g2 + wd * w2 + 1e-18));
    r = 0.01 > r ? 0.01 : r;
    return 100.0 < r ? 100.0 : r;
}

// The SGD kernel's scalars of tensor t once its lars sums are known (in chunk order: w2[t], g2[t])
inline void lars_scalars(float* sc, double w2, double g2) {
    const double wd = join3(sc + slot::kWdExact);
    // _sum_squares: the float64 sum rounded to float32
    const double ratio = lars_ratio(static_cast<double>(f32(w2)), static_cast<double>(f32(g2)), wd);
    sgd_scalars(join3(sc + slot::kLrExact) * ratio, wd, sc[slot::kRg], sc[slot::kClip] >= 0.0f, sc);
}

// The update (or, for a tensor whose macro-batch is not complete, the accumulation) of one chunk
template <typename G, typename L, bool kWithMom, bool kCum>
inline void lbsgd_chunk(const StepArgs& a, const float* all, const Chunk& ch) {
    float sc[kMaxScalars];
    for (int k = 0; k < kMaxScalars; ++k) sc[k] = all[ch.tensor * kMaxScalars + k];
    if (sc[slot::kReady] != 0.0f) {
        elementwise_chunk<LBSGDUpdate<kWithMom, kCum>, G, L>(a, sc, ch);
    } else if constexpr (kCum) {
        elementwise_chunk<LBSGDAccumulate, G, L>(a, sc, ch);
    }
    // (not ready without cum_grad cannot happen: batch_scale 1 completes every micro-batch)
}

// With lars a step is two passes: the sums of every tensor, then the update. A tensor of at most kFuseChunks
// chunks takes both passes at once on one thread (its second pass reads it from the core's cache); the others'
// sums come from one parallel loop over their chunks (dynamic: the chunks of small tensors are short, and a
// chunk's sums do not depend on who takes it), then their update from one balanced pass.
constexpr int64_t kFuseChunks = 2;  // 64K elements

template <typename G, typename L, bool kWithMom, bool kCum>
void run_lbsgd_typed(const StepArgs& a) {
    const int64_t nt = a.n_tensors;
    const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
    std::vector<float> scalars(a.scalars, a.scalars + nt * kMaxScalars);
    float* all = scalars.data();
    if (nt == 0 || scalars[slot::kLars] == 0.0f) {
        for_balanced(a, [&](const Chunk& ch) { lbsgd_chunk<G, L, kWithMom, kCum>(a, all, ch); });
        return;
    }
    // work items: [begin, end) of the chunk table, fused (a small tensor's chunks) or one large tensor's chunk
    std::vector<int64_t> first(nt + 1, 0);
    for (int64_t c = 0; c < a.n_chunks; ++c) ++first[a.chunks[c].tensor + 1];
    for (int64_t t = 0; t < nt; ++t) first[t + 1] += first[t];
    std::vector<char> fused(nt, 0);
    std::vector<Chunk> staged;
    int64_t staged_elements = 0;
    for (int64_t t = 0; t < nt; ++t) {
        if (first[t + 1] - first[t] <= kFuseChunks) {
            fused[t] = 1;
        } else {
            for (int64_t c = first[t]; c < first[t + 1]; ++c) staged_elements += a.chunks[c].length;
            staged.insert(staged.end(), a.chunks + first[t], a.chunks + first[t + 1]);
        }
    }
    std::vector<double> sums(2 * a.n_chunks, 0.0);
#pragma omp parallel for schedule(dynamic, 4) num_threads(a.n_threads) if (parallel)
    for (int64_t c = 0; c < a.n_chunks; ++c) {
        const int32_t t = a.chunks[c].tensor;
        float* sc = all + t * kMaxScalars;
        if (sc[slot::kReady] == 0.0f) {
            if (fused[t]) lbsgd_chunk<G, L, kWithMom, kCum>(a, all, a.chunks[c]);
            continue;
        }
        if (fused[t] && c != first[t]) continue;  // the tensor's first chunk runs all of it
        const int64_t last = fused[t] ? first[t + 1] : c + 1;
        double w2 = 0.0, g2 = 0.0;
        for (int64_t k = c; k < last; ++k) {
            lars_sums<kCum, G>(a, sc, a.chunks[k], sums.data() + 2 * k);
            w2 += sums[2 * k];
            g2 += sums[2 * k + 1];
        }
        if (!fused[t]) continue;
        lars_scalars(sc, w2, g2);
        for (int64_t k = c; k < last; ++k) lbsgd_chunk<G, L, kWithMom, kCum>(a, all, a.chunks[k]);
    }
    for (int64_t t = 0; t < nt; ++t) {
        float* sc = all + t * kMaxScalars;
        if (fused[t] || sc[slot::kReady] == 0.0f) continue;
        double w2 = 0.0, g2 = 0.0;
        for (int64_t c = first[t]; c < first[t + 1]; ++c) {  // per tensor, in chunk order
            w2 += sums[2 * c];
            g2 += sums[2 * c + 1];
        }
        lars_scalars(sc, w2, g2);
    }
    StepArgs rest = a;
    rest.chunks = staged.data();
    rest.n_chunks = static_cast<int64_t>(staged.size());
    rest.n_elements = staged_elements;
    for_balanced(rest, [&](const Chunk& ch) { lbsgd_chunk<G, L, kWithMom, kCum>(a, all, ch); });
}

template <typename G, typename L>
void run_lbsgd_states(const StepArgs& a) {
    const bool mom = a.n_tensors > 0 && a.states[0][0] != nullptr;
    const bool cum = a.n_tensors > 0 && a.states[1][0] != nullptr;
    if (mom) {
        if (cum) run_lbsgd_typed<G, L, true, true>(a);
        else run_lbsgd_typed<G, L, true, false>(a);
    } else {
        if (cum) run_lbsgd_typed<G, L, false, true>(a);
        else run_lbsgd_typed<G, L, false, false>(a);
    }
}

void run_lbsgd(const StepArgs& a) {
    if (a.low_precision == nullptr) {
        run_lbsgd_states<float, NoLowPrecision>(a);
    } else if (a.low_precision_dtype == kFloat16) {
        run_lbsgd_states<Half, Half>(a);
    } else {
        run_lbsgd_states<BFloat16, BFloat16>(a);
    }
}

// ---------------------------------------------------------------------------------------------------- SGLD
void prepare_sgld(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(wd);
    sc[1] = f32(lr / 2);
    sc[2] = f32(h[0]);
    sc[3] = f32(h[1]);
}

const char* check_sgld(const double*, int n, uint32_t present) {
    return n == 2 && (present & 1u) ? nullptr : "sgld takes 2 hyperparameters and the noise";
}

// g = clip(rg*grad) + wd*w; w -= (lr/2)*g; w += noise
struct SGLDRule {
    static inline void elem(const float* sc, float& w, float grad, float* noise, float*, float*, float*, int64_t i) {
        const float g = rescale_clip(grad, sc[2], sc[3]) + sc[0] * w;
        w = (w - sc[1] * g) + noise[i];
    }
};

const RuleDesc lbsgd{"lbsgd", 2, 3u, 0u, false, false, check_lbsgd, prepare_lbsgd, run_lbsgd, 2};
const RuleDesc sgld{"sgld", 1, 0u, 0u, false, false, check_sgld, prepare_sgld, elementwise<SGLDRule>};
OPTZOO_RULE(lbsgd);
OPTZOO_RULE(sgld);

}  // namespace
}  // namespace optzoo
