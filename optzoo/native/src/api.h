// optzoo native kernels: the interface between the torch-facing core (core.cpp) and the update rules.
//
// The core checks and unpacks the tensors of one optimizer step, computes each tensor's float32 scalars with the
// rule's `prepare`, cuts every tensor into chunks and calls the rule's `run` once for the whole step. Rules never
// see torch: this header is plain C++, so a rule file compiles in a second and the expensive torch/pybind
// translation unit (core.cpp) is built once. A rule registers itself with OPTZOO_RULE(desc).
//
// Numerics: every hyperparameter reaches a rule as a float32 (as MXNet's kernels receive them); each line of a
// rule mirrors one tensor operation of the readable reference path in optzoo/optimizer (same order, float32
// rounding after every operation: the files are built with -ffp-contract=off).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <omp.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace optzoo {

constexpr int kMaxStates = 5;          // state tensors per weight (slots, in the state's tuple order)
constexpr int kMaxScalars = 16;        // float32 scalars per tensor made by a rule's `prepare`
constexpr int64_t kChunk = 1 << 15;    // elements per work item: balances threads, streams well
constexpr int64_t kParallelMin = 1 << 15;  // below this many elements a step runs on one thread

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One work item: `length` elements of tensor `tensor`, starting at `offset` in the weight and states and at
// `grad_offset` in the gradient (they differ for row-sparse updates, whose gradient holds only some rows).
struct Chunk {
    int32_t tensor;
    int64_t offset;
    int64_t grad_offset;
    int64_t length;
};

struct StepArgs {
    int64_t n_tensors;
    int64_t n_chunks;
    int64_t n_elements;             // sum of the chunk lengths
    const Chunk* chunks;
    float* const* weights;          // float32 weight (the master copy under multi-precision) per tensor
    void* const* low_precision;     // the float16/bfloat16 weight rewritten from the master copy, or nullptr
    int low_precision_dtype;
    const void* const* grads;
    int grad_dtype;
    float* const* states[kMaxStates];  // states[k][tensor]; a null entry is a None state
    const float* scalars;           // n_tensors x kMaxScalars, from the rule's prepare
    const int64_t* numels;          // per tensor
    const int64_t* row_lengths;     // per tensor: elements per row (numel / shape[0]; numel for 0-d tensors)
    int n_threads;
    // Rules with norm stages: every stage's per-tensor sums given by the caller (RuleDesc::stage_sums, stage 0
    // first, one row per tensor): the rule runs its update pass only. nullptr: the rule computes them.
    const double* given_sums;
    // per tensor: {dim, shape[-2], shape[-1]} (1 for a missing dimension), for rules with factored states
    const int64_t* inner_shape = nullptr;
    // The step's hyperparameters and per-tensor lr and wd in float64 (rules whose run needs them: Prodigy's d
    // estimate, MARS's per-tensor choice of rule), and, for `step_into` only, the rule's results (n_results values).
    const double* hyper = nullptr;
    int n_hyper = 0;
    const double* lrs = nullptr;
    const double* wds = nullptr;
    double* results = nullptr;
};

struct RuleDesc {
    const char* name;
    int n_states;                   // state slots the rule takes (a bare-tensor state is one slot)
    uint32_t optional_states;       // bit k: slot k may be None (then it is None for every tensor of the step)
    uint32_t row_states;            // bit k: slot k holds one value per row (shape [rows, 1])
    bool row_chunks;                // chunks must hold whole rows
    bool lazy_rows;                 // the rule may run on the rows of a row-sparse gradient only
    // nullptr when the rule can run with these hyperparameters and present slots (bit k: slot k is a tensor);
    // otherwise a reason, and the caller takes the torch path.
    const char* (*check)(const double* hyper, int n_hyper, uint32_t present);
    // the tensor's float32 scalars from the hyperparameters and the tensor's lr, wd, update count t and aux values
    void (*prepare)(const double* hyper, double lr, double wd, int64_t t, const double* aux, float* out);
    void (*run)(const StepArgs& args);
    int n_aux = 0;                  // extra per-tensor values `prepare` reads from aux (the core checks the count)
    int weight_dim = 0;             // the number of dimensions every weight must have (0: any)
    // Rules whose update needs per-tensor norms first (the trust-ratio family): the float64 sums each norm stage
    // adds up per tensor (stage 0 first; 0: no such stage), and `norm_stage`, which runs one stage over the step
    // (the core's `norm_sums` entry): out[t * width + j]; `prior` holds the earlier stages' sums, one row a tensor.
    int stage_sums[2] = {0, 0};
    void (*norm_stage)(const StepArgs& args, int stage, const double* prior, double* out) = nullptr;
    // Rules whose states are not all weight-shaped (Adafactor's and CAME's row and column factors): the shape slot
    // `slot` must have for a weight of `dim` dimensions `sizes`, written to `out` (returns its number of
    // dimensions; -1: the slot must be None for such a weight). Such a rule may also mix state layouts in one step
    // (a 2-D weight's factored tuple next to a 1-D weight's shorter one): missing trailing slots are None.
    int (*state_shape)(int slot, int dim, const int64_t* sizes, int64_t* out) = nullptr;
    // Rules that report values of the step (Prodigy's new d): how many float64 results `step_into` receives.
    int n_results = 0;
};

int register_rule(const RuleDesc* desc);
const RuleDesc* rule_by_id(int id);
int rule_id(const char* name);
int rule_count();

#define OPTZOO_CONCAT_(a, b) a##b
#define OPTZOO_CONCAT(a, b) OPTZOO_CONCAT_(a, b)
#define OPTZOO_RULE(desc) static const int OPTZOO_CONCAT(optzoo_registered_, __LINE__) = ::optzoo::register_rule(&(desc))

// ------------------------------------------------------------------------------------------ element types
struct BFloat16 {
    uint16_t bits;
};
using Half = _Float16;

inline float to_float(float x) { return x; }
inline float to_float(Half x) { return static_cast<float>(x); }
inline float to_float(BFloat16 x) {
    uint32_t u = static_cast<uint32_t>(x.bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

template <typename T> inline T from_float(float x);
template <> inline Half from_float<Half>(float x) { return static_cast<Half>(x); }  // round to nearest even
template <> inline BFloat16 from_float<BFloat16>(float x) {  // round to nearest even, as torch does
    if (std::isnan(x)) return BFloat16{0x7FC0};
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return BFloat16{static_cast<uint16_t>(u >> 16)};
}

// float16 <-> float32 over a block. GCC does not vectorize _Float16 conversions, so the element-wise driver converts
// float16 gradients and weights in blocks, with the F16C instructions where the CPU has them (same rounding:
// round to nearest even).
constexpr int64_t kHalfBlock = 512;

inline void half_to_float(const Half* in, float* out, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#endif
    for (; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

inline void float_to_half(const float* in, Half* out, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; ++i) out[i] = static_cast<Half>(in[i]);
}

// ------------------------------------------------------------------------------------------ shared arithmetic
// clip(rescale_grad * grad, clip); a negative clip means none (Python passes -1 for clip_gradient=None).
// NaN passes through, as torch.clamp lets it.
inline float rescale_clip(float g, float rescale, float clip) {
    float x = g * rescale;
    if (clip >= 0.0f) x = x < -clip ? -clip : (x > clip ? clip : x);
    return x;
}

// The hyperparameter `hyper[k]`, or `fallback` when the caller passed fewer.
inline double hyper_at(const double* hyper, int n_hyper, int k, double fallback = 0.0) {
    return k < n_hyper ? hyper[k] : fallback;
}

inline float f32(double x) { return static_cast<float>(x); }
inline float one_minus(double x) { return 1.0f - static_cast<float>(x); }  // 1 - x in float32, as MXNet

// ------------------------------------------------------------------------------------------ element-wise driver
// Runs Rule::elem over every element of the step, in one pass, on all threads. A rule provides
//   static void elem(const float* sc, float& w, float g, float* s0, float* s1, float* s2, float* s3, int64_t i)
// where sc are the tensor's scalars, w the float32 weight (master copy), g the float32 gradient and sK the
// state slots (nullptr for None) at element i of the chunk.
struct NoLowPrecision {};

// torch.lerp's formula with a scalar weight, fixed: a + weight*(b - a) (kLow: |weight| < 0.5), else
// b - (b - a)*(1 - weight). lerp picks the formula as torch does; a loop that fixes it per tensor vectorizes better.
// A separate multiply and add: torch's CPU kernel fuses them (torch_lerp below), which differs in the last bit on a
// few percent of values; the rules using this one are compared with their references to a tolerance, not bit for bit.
template <bool kLow>
inline float lerp_fixed(float a, float b, float weight) {
    const float diff = b - a;
    return kLow ? a + weight * diff : b - diff * (1.0f - weight);
}

inline float lerp(float a, float b, float weight) {
    return std::fabs(weight) < 0.5f ? lerp_fixed<true>(a, b, weight) : lerp_fixed<false>(a, b, weight);
}

// Software prefetch of the element-wise loops: every block of kPrefetchBlock elements first asks for the cache lines
// kPrefetchAhead elements further on, in every stream. The hardware prefetchers alone keep too few lines in flight
// once a rule has real arithmetic (a division, a square root): the loads then wait on memory and the arithmetic does
// not overlap them (ResNet-50's tensors, 2 threads, CPU time against the touch kernel's: Adam 88% -> 96%, AdEMAMix
// 82% -> 96%). 384 elements (1.5 KiB of float32) ahead was the best of 64..2048. The prefetch runs past the end of
// a run on purpose (a thread's next chunk usually continues the tensor; stopping short cost 4%): prefetching an
// address never faults, and the address is computed as an integer, never as a pointer past the tensor.
constexpr int64_t kPrefetchBlock = 64;
constexpr int64_t kPrefetchAhead = 384;

// asks for the cache lines of the kPrefetchBlock elements of the stream p (nullptr: none) kPrefetchAhead elements on
template <bool kWrite, typename T>
inline void prefetch_ahead(const T* p) {
    if (p == nullptr) return;
    const uintptr_t at = reinterpret_cast<uintptr_t>(p) + kPrefetchAhead * sizeof(T);
    for (uintptr_t k = 0; k < kPrefetchBlock * sizeof(T); k += 64)
        __builtin_prefetch(reinterpret_cast<const void*>(at + k), kWrite ? 1 : 0);
}

// One contiguous run of elements. The pointers are __restrict parameters (GCC ignores restrict on local variables),
// so the loop vectorizes without run-time alias checks even with six memory streams. Whole blocks (a fixed trip
// count: no remainder code per block) prefetch ahead (kPrefetchAhead); the last partial block runs without.
template <class Rule, typename G, typename L>
inline void elementwise_span(const float* __restrict sc, float* __restrict w, const G* __restrict g,
                             float* __restrict s0, float* __restrict s1, float* __restrict s2, float* __restrict s3,
                             L* __restrict lp, int64_t offset, int64_t n) {
    constexpr int64_t B = kPrefetchBlock;
    int64_t b = 0;
    for (; b + B <= n; b += B) {
        const int64_t at = offset + b;
        prefetch_ahead<true>(w + b);
        prefetch_ahead<false>(g + b);
        prefetch_ahead<true>(s0 ? s0 + at : nullptr);
        prefetch_ahead<true>(s1 ? s1 + at : nullptr);
        prefetch_ahead<true>(s2 ? s2 + at : nullptr);
        prefetch_ahead<true>(s3 ? s3 + at : nullptr);
        for (int64_t i = b; i < b + B; ++i) {
            Rule::elem(sc, w[i], to_float(g[i]), s0, s1, s2, s3, offset + i);
            if constexpr (!std::is_same<L, NoLowPrecision>::value) lp[i] = from_float<L>(w[i]);
        }
    }
    for (int64_t i = b; i < n; ++i) {
        Rule::elem(sc, w[i], to_float(g[i]), s0, s1, s2, s3, offset + i);
        if constexpr (!std::is_same<L, NoLowPrecision>::value) lp[i] = from_float<L>(w[i]);
    }
}

// One chunk of the step with the tensor's scalars `sc` (rules that pick the rule per tensor call this directly).
template <class Rule, typename G, typename L>
inline void elementwise_chunk(const StepArgs& a, const float* sc, const Chunk& ch) {
    const int32_t t = ch.tensor;
    float* w = a.weights[t] + ch.offset;
    const G* g = static_cast<const G*>(a.grads[t]) + ch.grad_offset;
    float* s[kMaxStates];
    for (int k = 0; k < kMaxStates; ++k) s[k] = (a.states[k] && a.states[k][t]) ? a.states[k][t] + ch.offset : nullptr;
    const int64_t n = ch.length;
    if constexpr (std::is_same<L, NoLowPrecision>::value) {
        elementwise_span<Rule, G, L>(sc, w, g, s[0], s[1], s[2], s[3], nullptr, 0, n);
    } else if constexpr (std::is_same<L, Half>::value) {
        // float16: convert blocks of the gradient, run the float32 rule, write the weight back rounded
        Half* lp = static_cast<Half*>(a.low_precision[t]) + ch.offset;
        float gb[kHalfBlock];
        for (int64_t b = 0; b < n; b += kHalfBlock) {
            const int64_t m = n - b < kHalfBlock ? n - b : kHalfBlock;
            half_to_float(g + b, gb, m);
            elementwise_span<Rule, float, NoLowPrecision>(sc, w + b, gb, s[0], s[1], s[2], s[3], nullptr, b, m);
            float_to_half(w + b, lp + b, m);
        }
    } else {
        L* lp = static_cast<L*>(a.low_precision[t]) + ch.offset;
        elementwise_span<Rule, G, L>(sc, w, g, s[0], s[1], s[2], s[3], lp, 0, n);
    }
}

// fn(piece) over every element of the step, on all threads: thread k of n takes elements [k*N/n, (k+1)*N/n) of
// the chunk table (N = n_elements), cutting the chunks at its two ends, so every thread streams the same number
// of bytes whatever the tensor sizes (a static split of the chunk *list* gave ResNet-50's second thread 23% more
// elements than the first) and reads one contiguous run of the table. Only for rules whose chunks may be cut
// anywhere (element-wise rules).
template <class Fn>
void for_balanced(const StepArgs& a, Fn&& fn) {
    const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
#pragma omp parallel num_threads(a.n_threads) if (parallel)
    {
        const int64_t n = omp_get_num_threads(), k = omp_get_thread_num();
        const int64_t lo = a.n_elements * k / n, hi = a.n_elements * (k + 1) / n;
        int64_t start = 0;
        for (int64_t c = 0; c < a.n_chunks && start < hi; ++c) {
            const Chunk& ch = a.chunks[c];
            const int64_t end = start + ch.length;
            if (end > lo) {
                const int64_t b = (lo > start ? lo : start) - start, e = (hi < end ? hi : end) - start;
                fn(Chunk{ch.tensor, ch.offset + b, ch.grad_offset + b, e - b});
            }
            start = end;
        }
    }
}

// The dtype dispatch of every element-wise rule: Pick::run<G, L>(a, sc, ch) runs one chunk with the tensor's scalars
// sc (gradient dtype float32, or the low-precision weight's dtype under multi-precision). A rule that compiles one
// element loop per combination of per-tensor flags (a select on a flag inside the loop costs every element) picks
// the loop there; elementwise<Rule> has one loop.
template <class Pick, typename G, typename L>
void picked_typed(const StepArgs& a) {
    for_balanced(a, [&](const Chunk& ch) {
        float sc[kMaxScalars];
        for (int k = 0; k < kMaxScalars; ++k) sc[k] = a.scalars[ch.tensor * kMaxScalars + k];
        Pick::template run<G, L>(a, sc, ch);
    });
}

template <class Pick>
void elementwise_picked(const StepArgs& a) {
    if (a.low_precision == nullptr) {
        picked_typed<Pick, float, NoLowPrecision>(a);
    } else if (a.low_precision_dtype == kFloat16) {
        picked_typed<Pick, Half, Half>(a);
    } else {
        picked_typed<Pick, BFloat16, BFloat16>(a);
    }
}

template <class Rule>
struct OneLoop {
    template <typename G, typename L>
    static void run(const StepArgs& a, const float* sc, const Chunk& ch) { elementwise_chunk<Rule, G, L>(a, sc, ch); }
};

template <class Rule>
void elementwise(const StepArgs& a) { elementwise_picked<OneLoop<Rule>>(a); }

}  // namespace optzoo

namespace optzoo {

// ------------------------------------------------------------------------------------------ torch's FMA arithmetic
// torch's CPU kernels for lerp and for add/sub with alpha compute with one fused multiply-add (their vector loops
// call fmadd; their scalar tails are contracted by the compiler): rules that must equal those torch operations bit
// for bit (Muon's and SOAP's, compared with torch.optim.Muon and pytorch-optimizer) use these, not lerp above.

// torch.lerp(a, b, weight), scalar weight: fma(weight, b - a, a) for |weight| < 0.5, else fma(weight - 1, b - a, b)
inline float torch_lerp(float a, float b, float weight) {
    const float diff = b - a;
    return std::fabs(weight) < 0.5f ? std::fma(weight, diff, a) : std::fma(weight - 1.0f, diff, b);
}

// a.add_(b, alpha=alpha) in float32: fma(b, alpha, a)
inline float torch_add_alpha(float a, float b, float alpha) { return std::fma(b, alpha, a); }

// ------------------------------------------------------------------------------------------ Muon (rules_muon.cpp)
// The element-wise passes of torch.optim.Muon around its Newton-Schulz iteration, one pass each (core.cpp's
// muon_direction and muon_apply check the tensors and call them):
//   muon_direction: momentum.lerp_(g, 1 - mu); out = bfloat16(g.lerp(momentum, mu)) (nesterov) or
//     bfloat16(momentum): the Newton-Schulz input, written without the float32 direction in between;
//   muon_apply: w = w * decay, then w.add_(ortho, alpha) with ortho a bfloat16 [rows, cols] matrix of any strides
//     (the iteration's result is transposed for tall matrices).
void muon_direction(const float* grad, float* momentum, BFloat16* out, int64_t n, float one_minus_mu, float mu,
                    bool nesterov, int n_threads);
void muon_apply(float* weight, const BFloat16* ortho, int64_t rows, int64_t cols, int64_t row_stride,
                int64_t col_stride, float decay, float alpha, int n_threads);

}  // namespace optzoo
