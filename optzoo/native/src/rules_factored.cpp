// Adafactor and CAME (optzoo/optimizer/factored.py): factored second moments. A weight of shape [..., n, m] is
// seen as B = numel/(n*m) batches of n rows of m; its row and column statistics are row and column means over the
// batch. 0-D and 1-D weights keep full moments (the missing slots are None). Every step is a few passes over the
// whole step (docs/native.md, "Factored rules"):
//   * a row/column pass: the per-row and per-column sums of an element value, in float64; work items are whole
//     batches, or, for a large weight with fewer than kSplitBatches batches (a matrix), blocks of a batch's rows
//     whose column partials are then added in block order;
//   * element passes with per-tensor sums (the update's RMS clip, Adafactor's weight RMS): float64 partial sums
//     per fixed chunk, added in chunk order.
// No result depends on the number of threads.
// Each line mirrors one tensor operation of the readable rule (float32 rounding after each), with the float64
// reductions in place of torch's float32 ones (so trajectories agree to float32 rounding, not bit for bit).
#include <algorithm>
#include <tuple>
#include <vector>

#include "api.h"

namespace optzoo {
namespace {

// ------------------------------------------------------------------------------------------ shapes
struct Shape {
    int64_t batches, n, m, numel;
    bool factored;
};

Shape shape_of(const StepArgs& a, int64_t t) {
    const int64_t* s = a.inner_shape + 3 * t;
    Shape sh{1, 1, a.numels[t], a.numels[t], s[0] >= 2};
    if (sh.factored) {
        sh.n = s[1];
        sh.m = s[2];
        sh.batches = sh.n * sh.m == 0 ? 0 : sh.numel / (sh.n * sh.m);
    }
    return sh;
}

// Adafactor (torch layout): row [..., n, 1], column [..., 1, m]. CAME: row [..., n], column [..., m].
int factor_shape(int dim, const int64_t* sizes, int64_t* out, bool row, bool keep_dims) {
    std::copy(sizes, sizes + dim - 2, out);
    int d = dim - 2;
    if (row) {
        out[d++] = sizes[dim - 2];
        if (keep_dims) out[d++] = 1;
    } else {
        if (keep_dims) out[d++] = 1;
        out[d++] = sizes[dim - 1];
    }
    return d;
}

int weight_shape(int dim, const int64_t* sizes, int64_t* out) {
    std::copy(sizes, sizes + dim, out);
    return dim;
}

// slots: 0 row_var (1-D: variance), 1 col_var
int adafactor_state_shape(int slot, int dim, const int64_t* sizes, int64_t* out) {
    if (dim < 2) return slot == 0 ? weight_shape(dim, sizes, out) : -1;
    return factor_shape(dim, sizes, out, slot == 0, true);
}

// slots: 0 exp_avg, 1 row (1-D: exp_avg_sq), 2 col, 3 res_row, 4 res_col
int came_state_shape(int slot, int dim, const int64_t* sizes, int64_t* out) {
    if (slot == 0) return weight_shape(dim, sizes, out);
    if (dim < 2) return slot == 1 ? weight_shape(dim, sizes, out) : -1;
    return factor_shape(dim, sizes, out, slot % 2 == 1, false);
}

// ------------------------------------------------------------------------------------------ scratch layout
// Per tensor offsets into the step's per-row, per-column and per-batch scratch arrays.
struct Layout {
    std::vector<Shape> shapes;
    std::vector<int64_t> row_at, col_at, batch_at;
    int64_t rows = 0, cols = 0, batches = 0;

    explicit Layout(const StepArgs& a) {
        for (int64_t t = 0; t < a.n_tensors; ++t) {
            const Shape sh = shape_of(a, t);
            shapes.push_back(sh);
            row_at.push_back(rows);
            col_at.push_back(cols);
            batch_at.push_back(batches);
            if (sh.factored) {
                rows += sh.batches * sh.n;
                cols += sh.batches * sh.m;
                batches += sh.batches;
            }
        }
    }
};

// The float32 gradient clip(rescale_grad * grad, clip) at elements [k0, k0 + len) of tensor t, into out.
template <typename G>
inline void load_grad(const StepArgs& a, const float* sc, int64_t t, int64_t k0, int64_t len, float* __restrict out) {
    const G* __restrict g = static_cast<const G*>(a.grads[t]) + k0;
    const float rescale = sc[14], clip = sc[15];
    if (rescale == 1.0f && clip < 0.0f) {
        for (int64_t i = 0; i < len; ++i) out[i] = to_float(g[i]);
    } else {
        for (int64_t i = 0; i < len; ++i) out[i] = rescale_clip(to_float(g[i]), rescale, clip);
    }
}

// Adds value[j] to col[j] and returns the sum of the values (float64).
inline double add_row(const float* __restrict value, int64_t m, double* __restrict col) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < m; ++j) {
        const double v = value[j];
        sum += v;
        col[j] += v;
    }
    return sum;
}

// ------------------------------------------------------------------------------------------ row/column pass
// Over every factored tensor: row(t, r, k0, m, col, buf) visits row r (flat offset k0) of tensor t, adds each
// element's value to col[j] and returns the row's sum (buf: 2m floats of scratch); row_done(t, r, sum) and col_done(t, b, j, sum) receive the sums (each
// exactly once) and batch_done(t, b) runs once every row of batch b is done.
// A large weight with fewer batches than this has its batches' rows split into blocks (fixed by the shape, not by the
// thread count, so the sums are the same on any number of threads).
constexpr int64_t kSplitBatches = 32;

struct SumUnit {
    int64_t tensor, b0, b1, i0, i1, partial;  // partial: offset of its column partials, or -1 (it owns the batches)
};

inline int64_t split_blocks(const Shape& sh) {
    return std::min(sh.n, (kSplitBatches + sh.batches - 1) / sh.batches);
}

template <class Row, class RowDone, class ColDone, class BatchDone>
void row_col_pass(const StepArgs& a, const Layout& lay, Row row, RowDone row_done, ColDone col_done,
                  BatchDone batch_done) {
    const int64_t threads = std::max(1, a.n_threads);
    std::vector<SumUnit> units;
    std::vector<int64_t> split_tensors;  // tensors whose batches are split into row blocks
    int64_t partial_size = 0;
    for (int64_t t = 0; t < a.n_tensors; ++t) {
        const Shape& sh = lay.shapes[t];
        if (!sh.factored || sh.numel == 0) continue;
        if (sh.batches >= kSplitBatches || sh.numel < kParallelMin || sh.n == 1) {
            const int64_t per = std::max<int64_t>(1, kChunk / (sh.n * sh.m));  // whole batches, ~kChunk elements
            for (int64_t b = 0; b < sh.batches; b += per)
                units.push_back(SumUnit{t, b, std::min(sh.batches, b + per), 0, sh.n, -1});
        } else {
            const int64_t blocks = split_blocks(sh);
            for (int64_t b = 0; b < sh.batches; ++b)
                for (int64_t k = 0; k < blocks; ++k, partial_size += sh.m)
                    units.push_back(SumUnit{t, b, b + 1, sh.n * k / blocks, sh.n * (k + 1) / blocks, partial_size});
            split_tensors.push_back(t);
        }
    }
    std::vector<double> partials(partial_size, 0.0);
    const int64_t n_units = static_cast<int64_t>(units.size());
    const bool parallel = threads > 1 && n_units > 1;
#pragma omp parallel num_threads(threads) if (parallel)
    {
        std::vector<double> col;
        std::vector<float> buf;
#pragma omp for schedule(dynamic, 1)
        for (int64_t u = 0; u < n_units; ++u) {
            const SumUnit& un = units[u];
            const Shape& sh = lay.shapes[un.tensor];
            if (static_cast<int64_t>(buf.size()) < 2 * sh.m) buf.resize(2 * sh.m);
            for (int64_t b = un.b0; b < un.b1; ++b) {
                double* acc = un.partial >= 0 ? partials.data() + un.partial : (col.assign(sh.m, 0.0), col.data());
                for (int64_t i = un.i0; i < un.i1; ++i) {
                    const int64_t r = b * sh.n + i;
                    row_done(un.tensor, r, row(un.tensor, r, r * sh.m, sh.m, acc, buf.data()));
                }
                if (un.partial < 0) {
                    for (int64_t j = 0; j < sh.m; ++j) col_done(un.tensor, b, j, acc[j]);
                    batch_done(un.tensor, b);
                }
            }
        }
    }
    // the split tensors: add each column's block partials in block order, then finish the batch
    int64_t at = 0;
    for (const int64_t t : split_tensors) {
        const Shape& sh = lay.shapes[t];
        const int64_t blocks = split_blocks(sh);
        for (int64_t b = 0; b < sh.batches; ++b, at += blocks * sh.m) {
            const double* p = partials.data() + at;
#pragma omp parallel for num_threads(threads) if (parallel && sh.m >= kParallelMin)
            for (int64_t j = 0; j < sh.m; ++j) {
                double sum = 0.0;
                for (int64_t k = 0; k < blocks; ++k) sum += p[k * sh.m + j];
                col_done(t, b, j, sum);
            }
            batch_done(t, b);
        }
    }
}

// ------------------------------------------------------------------------------------------ element passes
// span(t, r, j0, k0, len, sums, buf) visits elements [k0, k0 + len) of tensor t, which lie in row r from column j0
// (a 1-D weight is one row), adding to sums[0..n_sums); out[t * n_sums + k] gets each tensor's sums. buf: two
// scratch arrays of kChunk floats.
template <class Span>
void element_pass(const StepArgs& a, const Layout& lay, int n_sums, std::vector<double>* out, Span span) {
    struct Piece {
        int64_t tensor, k0, k1;
    };
    std::vector<Piece> pieces;
    for (int64_t t = 0; t < a.n_tensors; ++t)
        for (int64_t k = 0; k < lay.shapes[t].numel; k += kChunk)
            pieces.push_back(Piece{t, k, std::min(lay.shapes[t].numel, k + kChunk)});
    const int64_t n_pieces = static_cast<int64_t>(pieces.size());
    std::vector<double> sums(n_pieces * n_sums, 0.0);
    const bool parallel = a.n_threads > 1 && a.n_elements >= kParallelMin;
#pragma omp parallel num_threads(a.n_threads) if (parallel)
    {
        std::vector<float> buf(2 * kChunk);
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < n_pieces; ++p) {
            const Piece& pc = pieces[p];
            const int64_t m = lay.shapes[pc.tensor].m;
            for (int64_t k = pc.k0; k < pc.k1;) {
                const int64_t r = k / m, j = k - r * m, len = std::min(m - j, pc.k1 - k);
                span(pc.tensor, r, j, k, len, sums.data() + p * n_sums, buf.data());
                k += len;
            }
        }
    }
    if (out == nullptr) return;
    out->assign(a.n_tensors * n_sums, 0.0);
    for (int64_t p = 0; p < n_pieces; ++p)
        for (int k = 0; k < n_sums; ++k) (*out)[pieces[p].tensor * n_sums + k] += sums[p * n_sums + k];
}

// A float64 value as two float32 scalars (hi + lo), for the rules' float64 scalar arithmetic.
inline void split(double x, float* out) {
    out[0] = f32(x);
    out[1] = f32(x - static_cast<double>(out[0]));
}
inline double joined(const float* in) { return static_cast<double>(in[0]) + static_cast<double>(in[1]); }

inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }

template <typename L>
inline void write_low(const StepArgs& a, int64_t t, int64_t k0, int64_t len) {
    if constexpr (!std::is_same<L, NoLowPrecision>::value) {
        const float* w = a.weights[t] + k0;
        L* lp = static_cast<L*>(a.low_precision[t]) + k0;
        for (int64_t i = 0; i < len; ++i) lp[i] = from_float<L>(w[i]);
    }
}

template <template <typename, typename> class Run>
void dispatch(const StepArgs& a) {
    if (a.low_precision == nullptr) Run<float, NoLowPrecision>::run(a);
    else if (a.low_precision_dtype == kFloat16) Run<Half, Half>::run(a);
    else Run<BFloat16, BFloat16>::run(a);
}

// ------------------------------------------------------------------------------------------ Adafactor
// hyper = [beta2_decay, epsilon1 (resolved), epsilon2, clip_threshold, rescale_grad, clip_gradient (-1: none)].
// Scalars: 0 t^decay (1 - beta2_t), 1 eps1, 2 eps1^2, 3-4 rho_t = min(lr, 1/sqrt(t)) (float64 as hi, lo),
// 5-6 eps2 (hi, lo), 7 1 - lr*wd, 8 wd != 0, 9-10 d (hi, lo), 14 rescale_grad, 15 clip_gradient.
void prepare_adafactor(const double* h, double lr, double wd, int64_t t, const double*, float* sc) {
    const double td = static_cast<double>(t);
    sc[0] = f32(std::pow(td, h[0]));
    sc[1] = f32(h[1]);
    sc[2] = f32(h[1] * h[1]);
    split(std::min(lr, 1.0 / std::sqrt(td)), sc + 3);
    split(h[2], sc + 5);
    sc[7] = f32(1.0 - lr * wd);
    sc[8] = wd != 0.0 ? 1.0f : 0.0f;
    split(h[3], sc + 9);
    sc[14] = f32(h[4]);
    sc[15] = f32(h[5]);
}

const char* check_adafactor(const double*, int n, uint32_t) {
    return n == 6 ? nullptr : "adafactor takes 6 hyperparameters";
}

template <typename G, typename L>
struct AdafactorRun {
    static void run(const StepArgs& a) {
        const Layout lay(a);
        const auto sc_of = [&](int64_t t) { return a.scalars + t * kMaxScalars; };
        std::vector<float> row_mean(lay.batches);  // max(mean(R), eps1) per batch
        // pass 1: R = lerp(R, |g|_row^2 / m, 1-beta2), C likewise over columns; then each batch's mean(R)
        row_col_pass(
            a, lay,
            [&](int64_t t, int64_t, int64_t k0, int64_t m, double* col, float* buf) {
                load_grad<G>(a, sc_of(t), t, k0, m, buf);
                double sum = 0.0;
#pragma omp simd reduction(+ : sum)
                for (int64_t j = 0; j < m; ++j) {
                    const double v = static_cast<double>(buf[j]) * buf[j];
                    sum += v;
                    col[j] += v;
                }
                return sum;
            },
            [&](int64_t t, int64_t r, double sum) {
                const float norm = f32(std::sqrt(sum)), *sc = sc_of(t);
                float& R = a.states[0][t][r];
                R = lerp(R, norm * norm / static_cast<float>(lay.shapes[t].m), sc[0]);
            },
            [&](int64_t t, int64_t b, int64_t j, double sum) {
                const float norm = f32(std::sqrt(sum)), *sc = sc_of(t);
                float& C = a.states[1][t][b * lay.shapes[t].m + j];
                C = lerp(C, norm * norm / static_cast<float>(lay.shapes[t].n), sc[0]);
            },
            [&](int64_t t, int64_t b) {
                const int64_t n = lay.shapes[t].n;
                const float* R = a.states[0][t] + b * n;
                double sum = 0.0;
                for (int64_t i = 0; i < n; ++i) sum += R[i];
                const float mean = f32(sum) / static_cast<float>(n);
                row_mean[lay.batch_at[t] + b] = std::max(mean, sc_of(t)[1]);
            });
        // U = g / max(sqrt(V_hat), eps1), as torch forms it: g * rsqrt(max(V_hat, eps1^2)), into u (g: scratch)
        const auto direction = [&](int64_t t, int64_t r, int64_t j0, int64_t k0, int64_t len, float* __restrict u,
                                   float* __restrict g) {
            const Shape& sh = lay.shapes[t];
            const float* sc = sc_of(t);
            const float floor = sc[2];
            load_grad<G>(a, sc, t, k0, len, g);
            if (sh.factored) {
                const int64_t b = r / sh.n;
                const float R = a.states[0][t][r], mean = row_mean[lay.batch_at[t] + b];
                const float* __restrict C = a.states[1][t] + b * sh.m + j0;
                for (int64_t i = 0; i < len; ++i) u[i] = g[i] * rsqrt(std::max(R * C[i] / mean, floor));
            } else {
                const float* __restrict V = a.states[0][t] + k0;
                for (int64_t i = 0; i < len; ++i) u[i] = g[i] * rsqrt(std::max(V[i], floor));
            }
        };
        // pass 2: 1-D weights advance V = lerp(V, g^2, 1-beta2); the sums of w^2 and U^2 per tensor
        std::vector<double> sums;
        element_pass(a, lay, 2, &sums,
                     [&](int64_t t, int64_t r, int64_t j0, int64_t k0, int64_t len, double* out, float* buf) {
            float* __restrict u = buf;
            float* __restrict g = buf + kChunk;
            if (!lay.shapes[t].factored) {
                load_grad<G>(a, sc_of(t), t, k0, len, g);
                float* __restrict V = a.states[0][t] + k0;
                const float w = sc_of(t)[0];
                for (int64_t i = 0; i < len; ++i) V[i] = lerp(V[i], g[i] * g[i], w);
            }
            direction(t, r, j0, k0, len, u, g);
            const float* __restrict w = a.weights[t] + k0;
            double ww = 0.0, uu = 0.0;
#pragma omp simd reduction(+ : ww, uu)
            for (int64_t i = 0; i < len; ++i) {
                ww += static_cast<double>(w[i]) * w[i];
                uu += static_cast<double>(u[i]) * u[i];
            }
            out[0] += ww;
            out[1] += uu;
        });
        // alpha = max(eps2, RMS(w)) * rho; w = w(1 - lr wd) - alpha / max(1, RMS(U)/d) * U
        std::vector<float> step(a.n_tensors);
        for (int64_t t = 0; t < a.n_tensors; ++t) {
            const float* sc = sc_of(t);
            const double root_n = std::sqrt(static_cast<double>(lay.shapes[t].numel));
            const double alpha = std::max(joined(sc + 5), f32(std::sqrt(sums[2 * t])) / root_n) * joined(sc + 3);
            const double denom = std::max(1.0, f32(std::sqrt(sums[2 * t + 1])) / (root_n * joined(sc + 9)));
            step[t] = f32(-alpha / denom);
        }
        // pass 3: the weights
        element_pass(a, lay, 0, nullptr,
                     [&](int64_t t, int64_t r, int64_t j0, int64_t k0, int64_t len, double*, float* buf) {
            float* __restrict u = buf;
            direction(t, r, j0, k0, len, u, buf + kChunk);
            const float* sc = sc_of(t);
            float* __restrict w = a.weights[t] + k0;
            const float s = step[t], decay = sc[7];
            if (sc[8] != 0.0f) {
                for (int64_t i = 0; i < len; ++i) w[i] = w[i] * decay + s * u[i];
            } else {
                for (int64_t i = 0; i < len; ++i) w[i] = w[i] + s * u[i];
            }
            write_low<L>(a, t, k0, len);
        });
    }
};

const RuleDesc adafactor = [] {
    RuleDesc d{"adafactor", 2, 2u, 0u, false, false, check_adafactor, prepare_adafactor,
               dispatch<AdafactorRun>};
    d.state_shape = adafactor_state_shape;
    return d;
}();
OPTZOO_RULE(adafactor);

// ------------------------------------------------------------------------------------------ CAME
// hyper = [beta1, beta2, beta3, epsilon1, epsilon2, clip_threshold, rescale_grad, clip_gradient (-1: none)].
// Scalars: 0 beta1, 1 1-beta1, 2 beta2, 3 1-beta2, 4 beta3, 5 1-beta3, 6 eps1, 7 eps2, 8 d, 9 -wd*lr,
// 10 wd != 0, 11 lr, 14 rescale_grad, 15 clip_gradient.
void prepare_came(const double* h, double lr, double wd, int64_t, const double*, float* sc) {
    sc[0] = f32(h[0]);
    sc[1] = f32(1.0 - h[0]);
    sc[2] = f32(h[1]);
    sc[3] = f32(1.0 - h[1]);
    sc[4] = f32(h[2]);
    sc[5] = f32(1.0 - h[2]);
    sc[6] = f32(h[3]);
    sc[7] = f32(h[4]);
    sc[8] = f32(h[5]);
    sc[9] = f32(-wd * lr);
    sc[10] = wd != 0.0 ? 1.0f : 0.0f;
    sc[11] = f32(lr);
    sc[14] = f32(h[6]);
    sc[15] = f32(h[7]);
}

const char* check_came(const double*, int n, uint32_t) { return n == 8 ? nullptr : "came takes 8 hyperparameters"; }

template <typename G, typename L>
struct CameRun {
    static void run(const StepArgs& a) {
        const Layout lay(a);
        const auto sc_of = [&](int64_t t) { return a.scalars + t * kMaxScalars; };
        std::vector<float> row_factor(lay.rows), col_factor(lay.cols);  // rsqrt(R / mean(R)), rsqrt(C)
        // S = beta*S + (1-beta)*mean(value), per row (slot `row_slot`) and column (the next slot); then the factors
        const auto factors = [&](int row_slot, int beta) {
            return std::make_tuple(
                [&, row_slot, beta](int64_t t, int64_t r, double sum) {
                    const float* sc = sc_of(t);
                    float& S = a.states[row_slot][t][r];
                    S = S * sc[beta] + sc[beta + 1] * (f32(sum) / static_cast<float>(lay.shapes[t].m));
                },
                [&, row_slot, beta](int64_t t, int64_t b, int64_t j, double sum) {
                    const float* sc = sc_of(t);
                    float& S = a.states[row_slot + 1][t][b * lay.shapes[t].m + j];
                    S = S * sc[beta] + sc[beta + 1] * (f32(sum) / static_cast<float>(lay.shapes[t].n));
                    col_factor[lay.col_at[t] + b * lay.shapes[t].m + j] = rsqrt(S);
                },
                [&, row_slot](int64_t t, int64_t b) {
                    const int64_t n = lay.shapes[t].n;
                    const float* S = a.states[row_slot][t] + b * n;
                    double sum = 0.0;
                    for (int64_t i = 0; i < n; ++i) sum += S[i];
                    const float mean = f32(sum) / static_cast<float>(n);
                    for (int64_t i = 0; i < n; ++i) row_factor[lay.row_at[t] + b * n + i] = rsqrt(S[i] / mean);
                });
        };
        // pass 1: R, C from g^2 + eps1
        {
            auto [row_done, col_done, batch_done] = factors(1, 2);
            row_col_pass(
                a, lay,
                [&](int64_t t, int64_t, int64_t k0, int64_t m, double* col, float* buf) {
                    const float eps1 = sc_of(t)[6];
                    load_grad<G>(a, sc_of(t), t, k0, m, buf);
                    for (int64_t j = 0; j < m; ++j) buf[j] = buf[j] * buf[j] + eps1;
                    return add_row(buf, m, col);
                },
                row_done, col_done, batch_done);
        }
        // u = rsqrt(R/mean(R)) * rsqrt(C) * g (1-D: u = rsqrt(v) * g), into u (g: scratch)
        const auto normalised = [&](int64_t t, int64_t r, int64_t j0, int64_t k0, int64_t len, float* __restrict u,
                                    float* __restrict g) {
            const Shape& sh = lay.shapes[t];
            load_grad<G>(a, sc_of(t), t, k0, len, g);
            if (sh.factored) {
                const int64_t b = r / sh.n;
                const float rf = row_factor[lay.row_at[t] + r];
                const float* __restrict cf = col_factor.data() + lay.col_at[t] + b * sh.m + j0;
                for (int64_t i = 0; i < len; ++i) u[i] = rf * cf[i] * g[i];
            } else {
                const float* __restrict V = a.states[1][t] + k0;
                for (int64_t i = 0; i < len; ++i) u[i] = rsqrt(V[i]) * g[i];
            }
        };
        // pass 2: 1-D weights advance v = beta2 v + (1-beta2)(g^2 + eps1); the sum of u^2 per tensor (RMS clip)
        std::vector<double> sums;
        element_pass(a, lay, 1, &sums,
                     [&](int64_t t, int64_t r, int64_t j0, int64_t k0, int64_t len, double* out, float* buf) {
            float* __restrict u = buf;
            float* __restrict g = buf + kChunk;
            if (!lay.shapes[t].factored) {
                const float* sc = sc_of(t);
                const float beta2 = sc[2], rest = sc[3], eps1 = sc[6];
                load_grad<G>(a, sc, t, k0, len, g);
                float* __restrict V = a.states[1][t] + k0;
                for (int64_t i = 0; i < len; ++i) V[i] = V[i] * beta2 + rest * (g[i] * g[i] + eps1);
            }
            normalised(t, r, j0, k0, len, u, g);
            double uu = 0.0;
#pragma omp simd reduction(+ : uu)
            for (int64_t i = 0; i < len; ++i) uu += static_cast<double>(u[i]) * u[i];
            out[0] += uu;
        });
        // u /= max(RMS(u)/d, 1), as torch: float32 norm / sqrt(numel) / d
        std::vector<float> clip(a.n_tensors);
        for (int64_t t = 0; t < a.n_tensors; ++t) {
            const float rms = f32(std::sqrt(sums[t])) / f32(std::sqrt(static_cast<double>(lay.shapes[t].numel)));
            clip[t] = std::max(rms / sc_of(t)[8], 1.0f);
        }
        // m = beta1 m + (1-beta1) u over [k0, k0 + len); leaves (u - m)^2 + eps2 in `res` (may alias u)
        const auto moment = [&](int64_t t, int64_t r, int64_t j0, int64_t k0, int64_t len, float* u, float* g) {
            normalised(t, r, j0, k0, len, u, g);
            const float* sc = sc_of(t);
            const float beta1 = sc[0], rest = sc[1], eps2 = sc[7], c = clip[t];
            float* __restrict M = a.states[0][t] + k0;
            for (int64_t i = 0; i < len; ++i) {
                const float v = u[i] / c;
                const float m = M[i] * beta1 + rest * v;
                M[i] = m;
                const float diff = v - m;
                u[i] = diff * diff + eps2;
            }
        };
        // pass 3: factored weights: m, then S^R, S^C from (u - m)^2 + eps2
        {
            auto [row_done, col_done, batch_done] = factors(3, 4);
            row_col_pass(
                a, lay,
                [&](int64_t t, int64_t r, int64_t k0, int64_t m, double* col, float* buf) {
                    moment(t, r, 0, k0, m, buf, buf + m);
                    return add_row(buf, m, col);
                },
                row_done, col_done, batch_done);
        }
        // pass 4 (1-D weights: pass 3 too): w += -wd*lr*w; w -= lr * (factors * m) (1-D: lr * m)
        element_pass(a, lay, 0, nullptr,
                     [&](int64_t t, int64_t r, int64_t j0, int64_t k0, int64_t len, double*, float* buf) {
            const Shape& sh = lay.shapes[t];
            const float* sc = sc_of(t);
            if (!sh.factored) moment(t, r, j0, k0, len, buf, buf + kChunk);
            float* __restrict w = a.weights[t] + k0;
            const float* __restrict M = a.states[0][t] + k0;
            const float lr = sc[11], decay = sc[9];
            const bool decays = sc[10] != 0.0f;
            if (sh.factored) {
                const int64_t b = r / sh.n;
                const float rf = row_factor[lay.row_at[t] + r];
                const float* __restrict cf = col_factor.data() + lay.col_at[t] + b * sh.m + j0;
                if (decays) {
                    for (int64_t i = 0; i < len; ++i) w[i] = (w[i] + decay * w[i]) + -(rf * cf[i] * M[i] * lr);
                } else {
                    for (int64_t i = 0; i < len; ++i) w[i] = w[i] + -(rf * cf[i] * M[i] * lr);
                }
            } else {
                for (int64_t i = 0; i < len; ++i) {
                    const float w1 = decays ? w[i] + decay * w[i] : w[i];
                    w[i] = w1 + -(M[i] * lr);
                }
            }
            write_low<L>(a, t, k0, len);
        });
    }
};

const RuleDesc came = [] {
    RuleDesc d{"came", 5, 28u, 0u, false, false, check_came, prepare_came, dispatch<CameRun>};
    d.state_shape = came_state_shape;
    return d;
}();
OPTZOO_RULE(came);

}  // namespace
}  // namespace optzoo
