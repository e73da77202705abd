/* optzoo speed-of-light ("touch") kernels: the memory traffic of an fp32 optimizer step, no real math.
 *
 * touch_sK reads p, g and K state arrays and writes p and the K states back in place, in ONE pass, so it
 * moves exactly (2 + K) * 4 bytes read + (1 + K) * 4 bytes written per parameter: the least any fp32
 * update with K full-size state tensors can move. The work is a table of chunks (tensor index, offset,
 * length) spanning every tensor of the list, split into equal runs of elements across OpenMP threads, so
 * 2000 small tensors are spread over the cores as well as one big one. The arithmetic (x += s * g, s tiny) is only
 * there so the compiler cannot drop the loads or the stores.
 *
 * Built by optzoo/bench/sol.py with the system gcc; loaded after `import torch` to share its libgomp.
 */
#include <stdint.h>
#include <omp.h>

void optzoo_sol_set_threads(int n) { omp_set_num_threads(n); }
int optzoo_sol_get_threads(void) { return omp_get_max_threads(); }

#define HEAD int64_t nchunks, const int32_t *ct, const int64_t *co, const int64_t *cl, float **P, float *const *G
/* Thread k of n takes elements [k*N/n, (k+1)*N/n) of the chunk table (cutting chunks at its ends): every thread
 * streams the same number of bytes whatever the tensor sizes. */
#define BALANCED_BEGIN                                                          \
    _Pragma("omp parallel")                                                     \
    {                                                                           \
        int64_t total = 0;                                                      \
        for (int64_t c = 0; c < nchunks; c++) total += cl[c];                   \
        const int64_t nth = omp_get_num_threads(), id = omp_get_thread_num();   \
        const int64_t lo = total * id / nth, hi = total * (id + 1) / nth;       \
        int64_t start = 0;                                                      \
        for (int64_t c = 0; c < nchunks && start < hi; start += cl[c], c++) {   \
            const int64_t end = start + cl[c];                                  \
            if (end <= lo) continue;                                            \
            const int64_t b = (lo > start ? lo : start) - start;                \
            const int64_t t = ct[c], off = co[c] + b;                           \
            const int64_t len = (hi < end ? hi : end) - start - b;
#define BALANCED_END }}

#define LOOP(DECL, BODY)                                                        \
    BALANCED_BEGIN                                                              \
    {                                                                           \
        float *restrict p = P[t] + off;                                         \
        const float *restrict g = G[t] + off;                                   \
        DECL                                                                    \
        _Pragma("omp simd")                                                     \
        for (int64_t i = 0; i < len; i++) { const float d = s * g[i]; BODY p[i] += d; } \
    }                                                                           \
    BALANCED_END

void optzoo_touch_s0(HEAD, float s)
{
    LOOP(, )
}

void optzoo_touch_s1(HEAD, float **A, float s)
{
    LOOP(float *restrict a = A[t] + off;, a[i] += d;)
}

void optzoo_touch_s2(HEAD, float **A, float **B, float s)
{
    LOOP(float *restrict a = A[t] + off; float *restrict b = B[t] + off;, a[i] += d; b[i] += d;)
}

void optzoo_touch_s3(HEAD, float **A, float **B, float **C, float s)
{
    LOOP(float *restrict a = A[t] + off; float *restrict b = B[t] + off; float *restrict e = C[t] + off;,
         a[i] += d; b[i] += d; e[i] += d;)
}

void optzoo_touch_s4(HEAD, float **A, float **B, float **C, float **D, float s)
{
    LOOP(float *restrict a = A[t] + off; float *restrict b = B[t] + off; float *restrict e = C[t] + off;
         float *restrict f = D[t] + off;,
         a[i] += d; b[i] += d; e[i] += d; f[i] += d;)
}

/* Pass kernels: the memory traffic of one pass of a multi-pass step (the trust-ratio rules read the tensors once
 * for their norms, then again for the update; MARS's matrices and Prodigy too). pass_rRwW reads R arrays (R <= 6)
 * and writes the first W of them back in place, in one pass over the chunk table, and stores each chunk's sum of
 * squares of the read values in out[c] (so a read-only pass is a real reduction, as a norm pass is). */
static inline __attribute__((always_inline)) float pass_span(const int R, const int W, int64_t n, float s,
                                                             float *restrict x0, float *restrict x1,
                                                             float *restrict x2, float *restrict x3,
                                                             float *restrict x4, float *restrict x5)
{
    float acc = 0.0f;
    _Pragma("omp simd reduction(+ : acc)")
    for (int64_t i = 0; i < n; i++) {
        float v = x0[i];
        if (R > 1) v += x1[i];
        if (R > 2) v += x2[i];
        if (R > 3) v += x3[i];
        if (R > 4) v += x4[i];
        if (R > 5) v += x5[i];
        const float d = s * v;
        if (W > 0) x0[i] += d;
        if (W > 1) x1[i] += d;
        if (W > 2) x2[i] += d;
        if (W > 3) x3[i] += d;
        if (W > 4) x4[i] += d;
        acc += v * v;
    }
    return acc;
}

#define PASS(R, W)                                                                                     \
    void optzoo_pass_r##R##w##W(int64_t nchunks, const int32_t *ct, const int64_t *co, const int64_t *cl, \
                                float *const *const *X, double *out, float s)                          \
    {                                                                                                  \
        BALANCED_BEGIN                                                                                 \
            float *x[6] = {0, 0, 0, 0, 0, 0};                                                          \
            for (int k = 0; k < R; k++) x[k] = X[k][t] + off;                                          \
            const float v = pass_span(R, W, len, s, x[0], x[1], x[2], x[3], x[4], x[5]);               \
            if (b == 0) out[c] = v; /* a chunk cut between two threads: its first piece's sum */       \
        BALANCED_END                                                                                   \
    }

PASS(1, 0) PASS(2, 0) PASS(3, 0) PASS(4, 0) PASS(5, 0) PASS(6, 0)
PASS(2, 1) PASS(3, 1) PASS(4, 1) PASS(5, 1) PASS(6, 1)
PASS(3, 2) PASS(4, 2) PASS(5, 2) PASS(6, 2)
PASS(4, 3) PASS(5, 3) PASS(6, 3)
PASS(5, 4) PASS(6, 4)
PASS(6, 5)
