// The trust-ratio family (optzoo/optimizer/trust_ratio.py): LARS, LAMB, LANS.
//
// Each rule scales a tensor's step by a ratio of that tensor's own norms, so a step is not one element-wise pass:
//   LARS  norms: ||w||^2, ||grad||^2                       update: the SGD step with lr * ratio
//   LAMB  norms: moments in place, ||w||^2, ||u||^2        update: u again from (m, v, w); w -= lr * ratio * u
//   LANS  gradient norm: ||rg*grad||^2, then norms: moments in place, ||w||^2, ||u_m||^2, ||u_g||^2
//         update: u_m, u_g again from (grad, m, v, w); w -= ...
// The update recomputes the direction rather than storing it: a full-size buffer is not allowed (peak memory),
// and the recomputation is bit-identical to the norm pass's.
//
// Passes: every stage is ONE parallel pass over all tensors at once: the tensors are cut into units of kUnit
// elements and the units of every tensor are spread over the threads (dynamically, kBatch at a time, so a thread
// the OS preempts on a shared machine delays only the units it holds). A norm stage writes one float64 partial
// sum per unit and sum; they are then added per tensor in unit order. Units are cut from the core's chunks, so
// they and the results are the same whatever the thread count (see "sums of squares" for the order inside a
// unit). A norm is the square root in double rounded once to float32; every later scalar (bounds, ratios,
// steps) is float32 arithmetic in the reference's order. In a whole step (below) a tensor of at most kFuseUnits
// units is fused: one thread runs all of its passes back to back inside the first stage's loop, while it is in
// the core's cache, adding its sums exactly as the stages do (the same results bit for bit).
//
// Split steps: the `norm_sums` entry of the core runs one norm stage and returns the per-tensor sums; `step` with
// the sums of every stage (aux = (aux, sums)) runs the update pass only (no tensor is fused); `step` without sums
// runs the whole step. Sharded training adds the sums of all
// ranks in between (a sum of squares over a tensor is the sum of its shards' sums). LAMB and LANS advance their
// moments in the norm stage, so a norm stage must be followed by exactly one update with its sums.
//
// Element arithmetic mirrors torch's CPU kernels: `m.mul_(b1).add_(g, alpha=1-b1)` is fma(g, 1-b1, m*b1) and
// `v.mul_(b2).addcmul_(g, g, value=1-b2)` is fma((1-b2)*g, g, v*b2) (torch fuses both: checked bit for bit).
// Divisions by a per-tensor constant (the bias corrections, LANS's gradient norm) are multiplications by its
// reciprocal, and LANS divides once per element (1/d): within an ulp or two of the reference's division.
// torch's float32 sqrt is not always correctly rounded (1 ulp apart for ~15% of inputs here); ours is, so LAMB
// and LANS directions can differ from the reference in the last bit. float16/bfloat16 gradients are widened,
// and master weights rounded back, a unit at a time (api.h's F16C conversions for float16).
//
// hyper:
//   lars: [momentum, eta, epsilon, rescale_grad, clip_gradient (-1: none)]; aux per tensor: [uses the ratio (1/0)]
//   lamb: [beta1, beta2, epsilon, rescale_grad, clip_gradient, lower_bound (-1: none), upper_bound (-1: none),
//          bias_correction (1/0)]; aux per tensor: [c1, c2], the float32 bias corrections as Python computes them
//          (numpy's float32 power, which is not the C library's powf; ignored without bias correction)
//   lans: [beta1, beta2, epsilon, rescale_grad, clip_gradient, lower_bound, upper_bound]; aux: as for lamb
#include <algorithm>
#include <vector>

#include "api.h"

namespace optzoo {
namespace {

constexpr int64_t kUnit = 8192;      // elements per partial sum (and per float16/bfloat16 conversion)
constexpr int64_t kBatch = 16;       // units a thread claims at once (128K elements: long streams)
constexpr int64_t kSumBlock = 256;   // elements summed in float32 before joining a unit's double sum

// ------------------------------------------------------------------------------------------ conversions
template <typename G>
inline void widen(const G* __restrict in, float* __restrict out, int64_t n) {
    if constexpr (std::is_same<G, Half>::value) {
        half_to_float(in, out, n);
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) out[i] = to_float(in[i]);
    }
}

template <typename L>
inline void narrow(const float* __restrict in, L* __restrict out, int64_t n) {
    if constexpr (std::is_same<L, Half>::value) {
        float_to_half(in, out, n);
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) out[i] = from_float<L>(in[i]);
    }
}

// ------------------------------------------------------------------------------------------ the units
// Every pass works on units: kUnit-element pieces of the core's chunks, which come tensor by tensor, in order.
struct Unit {
    int32_t tensor;
    int64_t offset;
    int64_t length;
};

struct Units {
    std::vector<Unit> units;
    std::vector<int64_t> first;  // per tensor and one more: tensor t owns units [first[t], first[t + 1])
};

void make_units(const StepArgs& a, Units& p) {
    p.units.clear();
    p.first.assign(a.n_tensors + 1, 0);
    for (int64_t c = 0; c < a.n_chunks; ++c) {
        const Chunk& ch = a.chunks[c];
        for (int64_t off = 0; off < ch.length; off += kUnit) {
            p.units.push_back(Unit{ch.tensor, ch.offset + off, std::min(kUnit, ch.length - off)});
            ++p.first[ch.tensor + 1];
        }
    }
    for (int64_t t = 0; t < a.n_tensors; ++t) p.first[t + 1] += p.first[t];
}

// ------------------------------------------------------------------------------------------ shared scalar math
// clamp(x, -clip, clip); `clip` is +inf without clipping. NaN passes, as torch.clamp lets it.
inline float clamp_abs(float x, float clip) {
    x = x < -clip ? -clip : x;
    return x > clip ? clip : x;
}

// clip_gradient as these kernels take it: +inf for none (-1 from Python)
inline float clip_or_inf(double clip) { return clip >= 0.0 ? f32(clip) : INFINITY; }

// r1 / r2, or 1 where either norm is 0 (trust_ratio in the reference)
inline float trust(float r1, float r2) { return (r1 == 0.0f || r2 == 0.0f) ? 1.0f : r1 / r2; }

// clamp(r1, lower, upper) from scalars [lower, has lower, upper, has upper] at sc[at]; NaN passes
inline float bounded(float r1, const float* sc, int at) {
    if (sc[at + 1] != 0.0f && r1 < sc[at]) r1 = sc[at];
    if (sc[at + 3] != 0.0f && r1 > sc[at + 2]) r1 = sc[at + 2];
    return r1;
}

// ------------------------------------------------------------------------------------------ prefetch
// The element-wise driver's software prefetch (api.h, prefetch_ahead) over a block of n elements of a stream
// (nullptr: none): the lines kPrefetchAhead elements on. Issued before a block's loop, it changes no arithmetic.
template <bool kWrite>
inline void prefetch_block(const float* p, int64_t n) {
    for (int64_t k = 0; k < n; k += kPrefetchBlock) prefetch_ahead<kWrite>(p ? p + k : nullptr);
}

// ------------------------------------------------------------------------------------------ sums of squares
// Per unit: blocks of kSumBlock squares in float32 vector lanes (16 terms a lane), the block sums added in double.
// That is more accurate than the reference's float32 running sums (relative error ~1e-7 against ~1e-6 at 1e5
// elements) and cheap: a double accumulator would cost two conversions and two double operations per 8 elements,
// more than the whole pass costs for LARS. The norms may differ from the reference's by float32 rounding.
// out[0] += sum x*x, out[1] += sum y*y, in one loop (two streams at once read faster than one after the other)
inline void sum_squares2(const float* __restrict x, const float* __restrict y, int64_t n, double* out) {
    double sx = 0.0, sy = 0.0;
    for (int64_t b = 0; b < n; b += kSumBlock) {
        const int64_t e = std::min(n, b + kSumBlock);
        float fx = 0.0f, fy = 0.0f;
#pragma omp simd reduction(+ : fx, fy)
        for (int64_t i = b; i < e; ++i) {
            fx += x[i] * x[i];
            fy += y[i] * y[i];
        }
        sx += fx;
        sy += fy;
    }
    out[0] += sx;
    out[1] += sy;
}

// ------------------------------------------------------------------------------------------ the passes
// A Kernel provides
//   kPre (sums of the gradient-norm stage: 0 or 1), kSums (sums of the norm stage), kDerived (per-tensor values of
//   the update), kPass2Grad (whether the update reads the gradient), and, on n elements of tensor t from offset
//   `off` (g: the float32 gradient of those elements):
//   pre(t, off, n, g, out)                  gradient-norm stage: adds its sum of squares to out[0]
//   derive_pre(t, norm) -> float            that stage's per-tensor value, given to the later passes
//   pass1(t, off, n, g, pre, out)           norm stage: adds its sums of squares to out[0..kSums)
//   derive(t, norms, d)                     the update's per-tensor values from the kSums norms
//   pass2(t, off, n, g, pre, d)             the update: writes the float32 weight (the driver rounds it to the
//                                           low-precision copy)
// Each pass is one parallel loop over work items (threads claim one at a time, so a thread that the OS preempts
// only delays the units it holds); a stage's per-unit sums are then added per tensor in unit order.

// A thread's claim of work: units [begin, end) of the unit list. Units of a large tensor are claimed kBatch at a
// time, stage by stage. A small tensor (at most kFuseUnits units) is `fused`: one thread runs all of its passes
// back to back (norms, its ratio, the update), so its later passes read it from the core's cache instead of
// memory; consecutive small tensors are claimed together, up to about kBatch units.
struct Item {
    int64_t begin, end;
    bool fused;
};

constexpr int64_t kFuseUnits = 8;  // 64K elements: 1 MiB of weight, gradient and two moments, in a core's L2

// The items of a step; `fuse` false: every tensor goes stage by stage (the split entries, whose stages are
// separate calls). fused[t] says which tensors take their passes in one item.
void make_items(const Units& p, bool fuse, std::vector<Item>& items, std::vector<char>& fused) {
    const int64_t n_tensors = static_cast<int64_t>(p.first.size()) - 1;
    fused.assign(n_tensors, 0);
    for (int64_t t = 0; t < n_tensors; ++t) {
        const int64_t b = p.first[t], e = p.first[t + 1];
        if (b == e) continue;
        if (fuse && e - b <= kFuseUnits) {
            fused[t] = 1;
            Item* last = items.empty() ? nullptr : &items.back();
            if (last != nullptr && last->fused && last->end == b && last->end - last->begin < kBatch)
                last->end = e;
            else
                items.push_back(Item{b, e, true});
        } else {
            for (int64_t u = b; u < e; u += kBatch) items.push_back(Item{u, std::min(e, u + kBatch), false});
        }
    }
}

// fn(item, float32 buffer) over every item, on all threads
template <class Fn>
void for_items(const StepArgs& a, const std::vector<Item>& items, Fn&& fn) {
    const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
    const int64_t n = static_cast<int64_t>(items.size());
#pragma omp parallel num_threads(a.n_threads) if (parallel)
    {
        alignas(64) float buffer[kUnit];  // a unit's gradient widened to float32 (low-precision steps only)
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n; ++i) fn(items[i], buffer);
    }
}

// fn(float32 gradient) on unit `un` (a low-precision gradient is widened into `buffer` first)
template <typename G, class Fn>
inline void with_grad(const StepArgs& a, const Unit& un, bool need_grad, float* buffer, Fn&& fn) {
    const G* grad = static_cast<const G*>(a.grads[un.tensor]) + un.offset;
    if constexpr (std::is_same<G, float>::value) {
        fn(reinterpret_cast<const float*>(grad));
    } else {
        if (need_grad) widen<G>(grad, buffer, un.length);
        fn(static_cast<const float*>(buffer));
    }
}

// The stages' sums of every tensor in one row per tensor (gradient-norm sums first), as the update takes them.
template <class Kernel>
constexpr int kAllSums = Kernel::kPre + Kernel::kSums;

// Norm stage `stage` on unit `un`: adds its sums to out (stage 0 of a kernel with kPre is the gradient norm)
template <class Kernel, typename G>
inline void stage_unit(const StepArgs& a, const Kernel& k, int stage, const Unit& un, float pre, float* buffer,
                       double* out) {
    with_grad<G>(a, un, true, buffer, [&](const float* g) {
        if (Kernel::kPre > 0 && stage == 0) k.pre(un.tensor, un.offset, un.length, g, out);
        else k.pass1(un.tensor, un.offset, un.length, g, pre, out);
    });
}

// The gradient-norm stage's value of tensor t from its row of kAllSums sums (1 without that stage)
template <class Kernel>
inline float derive_pre(const Kernel& k, int32_t t, const double* row) {
    return Kernel::kPre > 0 ? k.derive_pre(t, f32(std::sqrt(row[0]))) : 1.0f;
}

// The update's per-tensor values of tensor t from its row of kAllSums sums
template <class Kernel>
inline void derive_update(const Kernel& k, int32_t t, const double* row, float* d) {
    float norms[Kernel::kSums];
    for (int j = 0; j < Kernel::kSums; ++j) norms[j] = f32(std::sqrt(row[Kernel::kPre + j]));
    k.derive(t, norms, d);
}

// The update on unit `un` (and the low-precision copy rounded from the new float32 weight)
template <class Kernel, typename G, typename L>
inline void update_unit(const StepArgs& a, const Kernel& k, const Unit& un, float pre, const float* d, float* buffer) {
    with_grad<G>(a, un, Kernel::kPass2Grad, buffer, [&](const float* g) {
        k.pass2(un.tensor, un.offset, un.length, g, pre, d);
        if constexpr (!std::is_same<L, NoLowPrecision>::value)
            narrow<L>(a.weights[un.tensor] + un.offset, static_cast<L*>(a.low_precision[un.tensor]) + un.offset,
                      un.length);
    });
}

// Every pass of a fused tensor t on this thread: the stages' sums (into its row: each unit's sums from 0, added in
// unit order, exactly as the staged path adds them), its per-tensor values, the update.
template <class Kernel, typename G, typename L>
void fused_tensor(const StepArgs& a, const Kernel& k, const Units& p, int32_t t, float* buffer, double* row) {
    constexpr int kPre = Kernel::kPre, kWidth = kAllSums<Kernel>;
    float pre = 1.0f;
    for (int stage = 0; stage < (kPre > 0 ? 2 : 1); ++stage) {
        const bool gradient_norm = kPre > 0 && stage == 0;
        const int column = gradient_norm ? 0 : kPre, width = gradient_norm ? kPre : Kernel::kSums;
        if (kPre > 0 && !gradient_norm) pre = derive_pre(k, t, row);
        for (int64_t u = p.first[t]; u < p.first[t + 1]; ++u) {
            double unit[kWidth] = {};
            stage_unit<Kernel, G>(a, k, stage, p.units[u], pre, buffer, unit);
            for (int j = 0; j < width; ++j) row[column + j] += unit[j];
        }
    }
    float d[Kernel::kDerived];
    derive_update(k, t, row, d);
    for (int64_t u = p.first[t]; u < p.first[t + 1]; ++u) update_unit<Kernel, G, L>(a, k, p.units[u], pre, d, buffer);
}

// A norm stage over the staged (not fused) items: writes each staged tensor's sums to sums[t * stride + column + j]
// (j < the stage's width); `pre` holds the gradient-norm stage's per-tensor values (LANS's norm stage). Fused
// items run whole, with `fused_fn(item, buffer)`, in the same parallel loop.
template <class Kernel, typename G, class FusedFn>
void sums_stage(const StepArgs& a, const Kernel& k, const Units& p, const std::vector<Item>& items,
                const std::vector<char>& fused, int stage, const float* pre, double* sums, int stride, int column,
                FusedFn&& fused_fn) {
    const int width = Kernel::kPre > 0 && stage == 0 ? Kernel::kPre : Kernel::kSums;
    std::vector<double> unit_sums(p.units.size() * static_cast<size_t>(width), 0.0);
    for_items(a, items, [&](const Item& item, float* buffer) {
        if (item.fused) return fused_fn(item, buffer);
        for (int64_t u = item.begin; u < item.end; ++u)
            stage_unit<Kernel, G>(a, k, stage, p.units[u], pre[p.units[u].tensor], buffer, &unit_sums[u * width]);
    });
    for (int64_t t = 0; t < a.n_tensors; ++t) {  // in unit order: the same sums whatever the thread count
        if (fused[t]) continue;
        for (int j = 0; j < width; ++j) {
            double s = 0.0;
            for (int64_t u = p.first[t]; u < p.first[t + 1]; ++u) s += unit_sums[u * width + j];
            sums[t * stride + column + j] = s;
        }
    }
}

// The update pass over the staged items, from the sums of every stage (`sums`: kAllSums per tensor).
template <class Kernel, typename G, typename L>
void update_pass(const StepArgs& a, const Kernel& k, const Units& p, const std::vector<Item>& items,
                 const double* sums) {
    constexpr int kWidth = kAllSums<Kernel>, kD = Kernel::kDerived;
    std::vector<float> pre(a.n_tensors, 1.0f), derived(a.n_tensors * kD, 0.0f);
    for (int32_t t = 0; t < static_cast<int32_t>(a.n_tensors); ++t) {
        pre[t] = derive_pre(k, t, sums + t * kWidth);
        derive_update(k, t, sums + t * kWidth, &derived[t * kD]);
    }
    for_items(a, items, [&](const Item& item, float* buffer) {
        if (item.fused) return;
        for (int64_t u = item.begin; u < item.end; ++u) {
            const int32_t t = p.units[u].tensor;
            update_unit<Kernel, G, L>(a, k, p.units[u], pre[t], &derived[t * kD], buffer);
        }
    });
}

// A whole step: every stage's sums (unless the caller gives them: a.given_sums), then the update. Small tensors
// take all their passes at once in the first stage's loop (fused_tensor); the split entries (given sums, the
// `norm_sums` stages) run every tensor stage by stage, with the same sums and results bit for bit.
template <class Kernel, typename G, typename L>
void drive(const StepArgs& a, const Kernel& k) {
    constexpr int kWidth = kAllSums<Kernel>;
    Units p;
    make_units(a, p);
    std::vector<Item> items;
    std::vector<char> fused;
    make_items(p, a.given_sums == nullptr, items, fused);
    if (a.given_sums != nullptr) return update_pass<Kernel, G, L>(a, k, p, items, a.given_sums);
    std::vector<double> sums(static_cast<size_t>(a.n_tensors * kWidth), 0.0);
    std::vector<float> pre(a.n_tensors, 1.0f);
    auto run_fused = [&](const Item& item, float* buffer) {
        for (int64_t u = item.begin; u < item.end; u = p.first[p.units[u].tensor + 1]) {
            const int32_t t = p.units[u].tensor;
            fused_tensor<Kernel, G, L>(a, k, p, t, buffer, &sums[t * kWidth]);
        }
    };
    auto nothing = [](const Item&, float*) {};
    sums_stage<Kernel, G>(a, k, p, items, fused, 0, pre.data(), sums.data(), kWidth, 0, run_fused);
    if (Kernel::kPre > 0) {
        for (int32_t t = 0; t < static_cast<int32_t>(a.n_tensors); ++t) pre[t] = derive_pre(k, t, &sums[t * kWidth]);
        sums_stage<Kernel, G>(a, k, p, items, fused, 1, pre.data(), sums.data(), kWidth, Kernel::kPre, nothing);
    }
    update_pass<Kernel, G, L>(a, k, p, items, sums.data());
}

// One stage's sums only (the native `norm_sums` entry): out is [n_tensors, width of the stage], prior the earlier
// stages' sums [n_tensors, kPre] (LANS's norm stage).
template <class Kernel, typename G>
void drive_stage(const StepArgs& a, const Kernel& k, int stage, const double* prior, double* out) {
    Units p;
    make_units(a, p);
    std::vector<Item> items;
    std::vector<char> fused;
    make_items(p, false, items, fused);
    std::vector<float> pre(a.n_tensors, 1.0f);
    if (Kernel::kPre > 0 && stage == 1)
        for (int32_t t = 0; t < static_cast<int32_t>(a.n_tensors); ++t)
            pre[t] = k.derive_pre(t, f32(std::sqrt(prior[t * Kernel::kPre])));
    const int width = Kernel::kPre > 0 && stage == 0 ? Kernel::kPre : Kernel::kSums;
    sums_stage<Kernel, G>(a, k, p, items, fused, stage, pre.data(), out, width, 0, [](const Item&, float*) {});
}

template <template <typename> class Kernel>
void run_typed(const StepArgs& a) {
    if (a.low_precision == nullptr) {
        drive<Kernel<NoLowPrecision>, float, NoLowPrecision>(a, Kernel<NoLowPrecision>{a});
    } else if (a.low_precision_dtype == kFloat16) {
        drive<Kernel<Half>, Half, Half>(a, Kernel<Half>{a});
    } else {
        drive<Kernel<BFloat16>, BFloat16, BFloat16>(a, Kernel<BFloat16>{a});
    }
}

template <template <typename> class Kernel>
void stage_typed(const StepArgs& a, int stage, const double* prior, double* out) {
    if (a.low_precision == nullptr) {
        drive_stage<Kernel<NoLowPrecision>, float>(a, Kernel<NoLowPrecision>{a}, stage, prior, out);
    } else if (a.low_precision_dtype == kFloat16) {
        drive_stage<Kernel<Half>, Half>(a, Kernel<Half>{a}, stage, prior, out);
    } else {
        drive_stage<Kernel<BFloat16>, BFloat16>(a, Kernel<BFloat16>{a}, stage, prior, out);
    }
}

// ------------------------------------------------------------------------------------------ LARS
// Scalars: 0 lr, 1 wd, 2 momentum, 3 rescale_grad, 4 clip (+inf: none), 5 eta, 6 epsilon, 7 |rescale_grad|,
// 8 uses the ratio (1/0).
void prepare_lars(const double* h, double lr, double wd, int64_t, const double* aux, float* sc) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = f32(h[3]);
    sc[4] = clip_or_inf(h[4]);
    sc[5] = f32(h[1]);
    sc[6] = f32(h[2]);
    sc[7] = std::fabs(f32(h[3]));
    sc[8] = aux[0] != 0.0 ? 1.0f : 0.0f;
}

const char* check_lars(const double* h, int n, uint32_t present) {
    if (n != 5) return "lars takes 5 hyperparameters";
    return ((h[0] != 0.0) == bool(present & 1u)) ? nullptr : "momentum and state disagree";
}

template <bool WD, bool MOM>
void lars_step(const float* sc, float lr_t, float* __restrict w, const float* __restrict grad,
               float* __restrict mom, int64_t n) {
    const float wd = sc[1], mu = sc[2], rg = sc[3], clip = sc[4];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        float g = clamp_abs(grad[i] * rg, clip);
        if (WD) g = g + wd * w[i];
        g = g * lr_t;
        if (MOM) {
            const float m = mom[i] * mu - g;
            mom[i] = m;
            w[i] = w[i] + m;
        } else {
            w[i] = w[i] - g;
        }
    }
}

template <typename L>
struct LarsKernel {
    static constexpr int kPre = 0, kSums = 2, kDerived = 1;
    static constexpr bool kPass2Grad = true;
    const StepArgs& a;

    float derive_pre(int32_t, float) const { return 1.0f; }
    void pre(int32_t, int64_t, int64_t, const float*, double*) const {}

    // ||w||^2 and ||grad||^2 (the raw gradient); nothing for tensors that keep the plain learning rate
    void pass1(int32_t t, int64_t off, int64_t n, const float* grad, float, double* out) const {
        if (a.scalars[t * kMaxScalars + 8] == 0.0f) return;
        sum_squares2(a.weights[t] + off, grad, n, out);
    }

    // lr_t = lr * eta*||w|| / (|rg|*||grad|| + wd*||w|| + eps); lr where a norm is 0 or the ratio is not used
    void derive(int32_t t, const float* norms, float* d) const {
        const float* sc = a.scalars + t * kMaxScalars;
        if (sc[8] == 0.0f) {
            d[0] = sc[0];
            return;
        }
        const float wn = norms[0];
        const float gn = norms[1] * sc[7];
        float ratio = sc[5] * wn / ((gn + sc[1] * wn) + sc[6]);
        if (!(wn > 0.0f && gn > 0.0f)) ratio = 1.0f;
        d[0] = sc[0] * ratio;
    }

    // g = clip(rg*grad) + wd*w; g *= lr_t; mom = mu*mom - g, w += mom (w -= g without momentum)
    void pass2(int32_t t, int64_t off, int64_t n, const float* grad, float, const float* d) const {
        const float* sc = a.scalars + t * kMaxScalars;
        float* w = a.weights[t] + off;
        float* mom = a.states[0] && a.states[0][t] ? a.states[0][t] + off : nullptr;
        const bool wd = sc[1] != 0.0f;
        if (mom != nullptr) {
            if (wd) lars_step<true, true>(sc, d[0], w, grad, mom, n);
            else lars_step<false, true>(sc, d[0], w, grad, mom, n);
        } else {
            if (wd) lars_step<true, false>(sc, d[0], w, grad, mom, n);
            else lars_step<false, false>(sc, d[0], w, grad, mom, n);
        }
    }
};

// ------------------------------------------------------------------------------------------ LAMB and LANS
// Scalars: 0 lr, 1 wd, 2 beta1, 3 1-beta1, 4 beta2, 5 1-beta2, 6 epsilon, 7 rescale_grad, 8 clip (+inf: none),
// 9 c1, 10 c2, 11 lower bound, 12 has lower bound, 13 upper bound, 14 has upper bound, 15 bias correction.
void prepare_adamlike(const double* h, double lr, double wd, const double* aux, float* sc,
                      bool correction) {
    sc[0] = f32(lr);
    sc[1] = f32(wd);
    sc[2] = f32(h[0]);
    sc[3] = one_minus(h[0]);
    sc[4] = f32(h[1]);
    sc[5] = one_minus(h[1]);
    sc[6] = f32(h[2]);
    sc[7] = f32(h[3]);
    sc[8] = clip_or_inf(h[4]);
    sc[9] = f32(aux[0]);
    sc[10] = f32(aux[1]);
    sc[11] = h[5] >= 0.0 ? f32(h[5]) : 0.0f;
    sc[12] = h[5] >= 0.0 ? 1.0f : 0.0f;
    sc[13] = h[6] >= 0.0 ? f32(h[6]) : 0.0f;
    sc[14] = h[6] >= 0.0 ? 1.0f : 0.0f;
    sc[15] = correction ? 1.0f : 0.0f;
}

void prepare_lamb(const double* h, double lr, double wd, int64_t, const double* aux, float* sc) {
    prepare_adamlike(h, lr, wd, aux, sc, h[7] != 0.0);
}

void prepare_lans(const double* h, double lr, double wd, int64_t, const double* aux, float* sc) {
    prepare_adamlike(h, lr, wd, aux, sc, true);
}

const char* check_lamb(const double*, int n, uint32_t present) {
    return n == 8 && present == 3u ? nullptr : "lamb takes 8 hyperparameters and two states";
}

const char* check_lans(const double*, int n, uint32_t present) {
    return n == 7 && present == 3u ? nullptr : "lans takes 7 hyperparameters and two states";
}

// m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g, rounded as torch's add_(alpha=) and addcmul_ round them (fused)
inline void moments(const float* sc, float g, float& m, float& v) {
    m = std::fma(g, sc[3], m * sc[2]);
    v = std::fma(sc[5] * g, g, v * sc[4]);
}

// The reciprocals of a tensor's bias corrections [1/c1, 1/c2]: a division by a per-tensor constant becomes a
// multiplication (at most an ulp apart from the reference's division; a division costs up to 10 times as much,
// and these rules recompute their directions in the update pass).
struct Reciprocals {
    float c1, c2;
    explicit Reciprocals(const float* sc) : c1(1.0f / sc[9]), c2(1.0f / sc[10]) {}
};

// LAMB's u = m_hat/(sqrt(v_hat) + eps) (+ wd*w)
template <bool BC, bool WD>
inline float lamb_direction(const float* sc, Reciprocals r, float m, float v, float w) {
    float u = BC ? (m * r.c1) / (std::sqrt(v * r.c2) + sc[6]) : m / (std::sqrt(v) + sc[6]);
    if (WD) u = u + sc[1] * w;
    return u;
}

// g = clip(rg*grad); the moments; ||w||^2 and ||u||^2
template <bool BC, bool WD>
void lamb_pass1(const float* sc, const float* __restrict w, const float* __restrict grad, float* __restrict mean,
                float* __restrict var, int64_t n, double* out) {
    const float rg = sc[7], clip = sc[8];
    const Reciprocals r(sc);
    double sw = 0.0, su = 0.0;
    for (int64_t b = 0; b < n; b += kSumBlock) {
        const int64_t e = std::min(n, b + kSumBlock);
        float fw = 0.0f, fu = 0.0f;
#pragma omp simd reduction(+ : fw, fu)
        for (int64_t i = b; i < e; ++i) {
            const float g = clamp_abs(grad[i] * rg, clip);
            float m = mean[i], v = var[i];
            moments(sc, g, m, v);
            mean[i] = m;
            var[i] = v;
            const float u = lamb_direction<BC, WD>(sc, r, m, v, w[i]);
            fw += w[i] * w[i];
            fu += u * u;
        }
        sw += fw;
        su += fu;
    }
    out[0] += sw;
    out[1] += su;
}

template <bool BC, bool WD>
void lamb_pass2(const float* sc, float s, float* __restrict w, const float* __restrict mean,
                const float* __restrict var, int64_t n) {
    const Reciprocals r(sc);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) w[i] = w[i] - lamb_direction<BC, WD>(sc, r, mean[i], var[i], w[i]) * s;
}

template <typename L>
struct LambKernel {
    static constexpr int kPre = 0, kSums = 2, kDerived = 1;
    static constexpr bool kPass2Grad = false;
    const StepArgs& a;

    float derive_pre(int32_t, float) const { return 1.0f; }
    void pre(int32_t, int64_t, int64_t, const float*, double*) const {}

    template <bool BC, bool WD>
    void pass1_bc_wd(int32_t t, int64_t off, int64_t n, const float* grad, double* out) const {
        const float* sc = a.scalars + t * kMaxScalars;
        const float* w = a.weights[t] + off;
        float* m = a.states[0][t] + off;
        float* v = a.states[1][t] + off;
        lamb_pass1<BC, WD>(sc, w, grad, m, v, n, out);
    }

    void pass1(int32_t t, int64_t off, int64_t n, const float* grad, float, double* out) const {
        const float* sc = a.scalars + t * kMaxScalars;
        const bool bc = sc[15] != 0.0f, wd = sc[1] != 0.0f;
        if (bc) {
            if (wd) pass1_bc_wd<true, true>(t, off, n, grad, out);
            else pass1_bc_wd<true, false>(t, off, n, grad, out);
        } else {
            if (wd) pass1_bc_wd<false, true>(t, off, n, grad, out);
            else pass1_bc_wd<false, false>(t, off, n, grad, out);
        }
    }

    // step = lr * trust_ratio(clamp(||w||, lower, upper), ||u||)
    void derive(int32_t t, const float* norms, float* d) const {
        const float* sc = a.scalars + t * kMaxScalars;
        d[0] = sc[0] * trust(bounded(norms[0], sc, 11), norms[1]);
    }

    // w -= u * step, u recomputed from the new moments and the old weight
    void pass2(int32_t t, int64_t off, int64_t n, const float*, float, const float* d) const {
        const float* sc = a.scalars + t * kMaxScalars;
        float* w = a.weights[t] + off;
        const float* m = a.states[0][t] + off;
        const float* v = a.states[1][t] + off;
        const bool bc = sc[15] != 0.0f, wd = sc[1] != 0.0f;
        if (bc) {
            if (wd) lamb_pass2<true, true>(sc, d[0], w, m, v, n);
            else lamb_pass2<true, false>(sc, d[0], w, m, v, n);
        } else {
            if (wd) lamb_pass2<false, true>(sc, d[0], w, m, v, n);
            else lamb_pass2<false, false>(sc, d[0], w, m, v, n);
        }
    }
};

// LANS's normalised, clipped gradient: clip(rg*grad / divisor), the division as a multiplication by 1/divisor
inline float lans_grad(const float* sc, float grad, float inverse_divisor) {
    return clamp_abs((grad * sc[7]) * inverse_divisor, sc[8]);
}

// u_m = (m/c1)/d (+ wd*w), u_g = g/d (+ wd*w) with d = sqrt(v/c2) + eps (one division: 1/d)
template <bool WD>
inline void lans_directions(const float* sc, Reciprocals r, float g, float m, float v, float w, float& um,
                            float& ug) {
    const float inverse_d = 1.0f / (std::sqrt(v * r.c2) + sc[6]);
    um = (m * r.c1) * inverse_d;
    ug = g * inverse_d;
    if (WD) {
        const float decay = sc[1] * w;
        um = um + decay;
        ug = ug + decay;
    }
}

// g = clip(rg*grad/divisor); the moments; ||w||^2, ||u_m||^2, ||u_g||^2
template <bool WD>
void lans_pass1(const float* sc, float divisor, const float* __restrict w, const float* __restrict grad,
                float* __restrict mean, float* __restrict var, int64_t n, double* out) {
    const Reciprocals r(sc);
    const float inverse_divisor = 1.0f / divisor;
    double sw = 0.0, sm = 0.0, sg = 0.0;
    for (int64_t b = 0; b < n; b += kSumBlock) {
        const int64_t e = std::min(n, b + kSumBlock);
        prefetch_block<false>(w + b, e - b);
        prefetch_block<false>(grad + b, e - b);
        prefetch_block<true>(mean + b, e - b);
        prefetch_block<true>(var + b, e - b);
        float fw = 0.0f, fm = 0.0f, fg = 0.0f;
#pragma omp simd reduction(+ : fw, fm, fg)
        for (int64_t i = b; i < e; ++i) {
            const float g = lans_grad(sc, grad[i], inverse_divisor);
            float m = mean[i], v = var[i];
            moments(sc, g, m, v);
            mean[i] = m;
            var[i] = v;
            float um, ug;
            lans_directions<WD>(sc, r, g, m, v, w[i], um, ug);
            fw += w[i] * w[i];
            fm += um * um;
            fg += ug * ug;
        }
        sw += fw;
        sm += fm;
        sg += fg;
    }
    out[0] += sw;
    out[1] += sm;
    out[2] += sg;
}

template <bool WD>
void lans_pass2(const float* sc, float divisor, const float* d, float* __restrict w, const float* __restrict grad,
                const float* __restrict mean, const float* __restrict var, int64_t n) {
    const float step_m = d[0], step_g = d[1];
    const Reciprocals r(sc);
    const float inverse_divisor = 1.0f / divisor;
    auto update = [&](int64_t i) {
        const float g = lans_grad(sc, grad[i], inverse_divisor);
        float um, ug;
        lans_directions<WD>(sc, r, g, mean[i], var[i], w[i], um, ug);
        w[i] = w[i] - (um * step_m + ug * step_g);
    };
    int64_t b = 0;
    for (; b + kPrefetchBlock <= n; b += kPrefetchBlock) {  // whole blocks: a fixed trip count
        prefetch_ahead<true>(w + b);
        prefetch_ahead<false>(grad + b);
        prefetch_ahead<false>(mean + b);
        prefetch_ahead<false>(var + b);
#pragma omp simd
        for (int64_t i = b; i < b + kPrefetchBlock; ++i) update(i);
    }
#pragma omp simd
    for (int64_t i = b; i < n; ++i) update(i);
}

template <typename L>
struct LansKernel {
    static constexpr int kPre = 1, kSums = 3, kDerived = 2;
    static constexpr bool kPass2Grad = true;
    const StepArgs& a;

    // ||rg*grad||^2
    void pre(int32_t t, int64_t, int64_t n, const float* __restrict grad, double* out) const {
        const float rg = a.scalars[t * kMaxScalars + 7];
        double s = 0.0;
        for (int64_t b = 0; b < n; b += kSumBlock) {
            const int64_t e = std::min(n, b + kSumBlock);
            prefetch_block<false>(grad + b, e - b);
            float f = 0.0f;
#pragma omp simd reduction(+ : f)
            for (int64_t i = b; i < e; ++i) {
                const float x = grad[i] * rg;
                f += x * x;
            }
            s += f;
        }
        out[0] += s;
    }

    // the gradient's divisor: its norm, or 1 for an all-zero gradient (which stays zero)
    float derive_pre(int32_t, float norm) const { return norm == 0.0f ? 1.0f : norm; }

    void pass1(int32_t t, int64_t off, int64_t n, const float* grad, float divisor, double* out) const {
        const float* sc = a.scalars + t * kMaxScalars;
        const float* w = a.weights[t] + off;
        float* m = a.states[0][t] + off;
        float* v = a.states[1][t] + off;
        if (sc[1] != 0.0f) lans_pass1<true>(sc, divisor, w, grad, m, v, n, out);
        else lans_pass1<false>(sc, divisor, w, grad, m, v, n, out);
    }

    // step_m = lr * (trust_ratio(r1, ||u_m||) * beta1), step_g = lr * (trust_ratio(r1, ||u_g||) * (1 - beta1))
    void derive(int32_t t, const float* norms, float* d) const {
        const float* sc = a.scalars + t * kMaxScalars;
        const float r1 = bounded(norms[0], sc, 11);
        d[0] = sc[0] * (trust(r1, norms[1]) * sc[2]);
        d[1] = sc[0] * (trust(r1, norms[2]) * sc[3]);
    }

    // w -= u_m*step_m + u_g*step_g, both recomputed from the gradient, the new moments and the old weight
    void pass2(int32_t t, int64_t off, int64_t n, const float* grad, float divisor, const float* d) const {
        const float* sc = a.scalars + t * kMaxScalars;
        float* w = a.weights[t] + off;
        const float* m = a.states[0][t] + off;
        const float* v = a.states[1][t] + off;
        if (sc[1] != 0.0f) lans_pass2<true>(sc, divisor, d, w, grad, m, v, n);
        else lans_pass2<false>(sc, divisor, d, w, grad, m, v, n);
    }
};

const RuleDesc lars{"lars", 1, 1u, 0u, false, false, check_lars, prepare_lars, run_typed<LarsKernel>, 1, 0, {2, 0},
                    stage_typed<LarsKernel>};
const RuleDesc lamb{"lamb", 2, 0u, 0u, false, false, check_lamb, prepare_lamb, run_typed<LambKernel>, 2, 0, {2, 0},
                    stage_typed<LambKernel>};
const RuleDesc lans{"lans", 2, 0u, 0u, false, false, check_lans, prepare_lans, run_typed<LansKernel>, 2, 0, {1, 3},
                    stage_typed<LansKernel>};
OPTZOO_RULE(lars);
OPTZOO_RULE(lamb);
OPTZOO_RULE(lans);

}  // namespace
}  // namespace optzoo
