/* optzoo speed-of-light ("touch") kernels: the memory traffic of an fp32 optimizer step, no real math.
 *
 * touch_sK reads p, g and K state arrays and writes p and the K states back in place, in ONE pass, so it
 * moves exactly (2 + K) * 4 bytes read + (1 + K) * 4 bytes written per parameter: the least any fp32
 * update with K full-size state tensors can move. The work is a table of chunks (tensor index, offset,
 * length) spanning every tensor of the list, split statically across OpenMP threads, so 2000 small
 * tensors are spread over the cores as well as one big one. The arithmetic (x += s * g, s tiny) is only
 * there so the compiler cannot drop the loads or the stores.
 *
 * Built by optzoo/bench/sol.py with the system gcc; loaded after `import torch` to share its libgomp.
 */
#include <stdint.h>
#include <omp.h>

void optzoo_sol_set_threads(int n) { omp_set_num_threads(n); }
int optzoo_sol_get_threads(void) { return omp_get_max_threads(); }

#define HEAD int64_t nchunks, const int32_t *ct, const int64_t *co, const int64_t *cl, float **P, float *const *G
#define LOOP(DECL, BODY)                                                        \
    _Pragma("omp parallel for schedule(static)")                                \
    for (int64_t c = 0; c < nchunks; c++) {                                     \
        const int32_t t = ct[c];                                                \
        const int64_t off = co[c], len = cl[c];                                 \
        float *restrict p = P[t] + off;                                         \
        const float *restrict g = G[t] + off;                                   \
        DECL                                                                    \
        _Pragma("omp simd")                                                     \
        for (int64_t i = 0; i < len; i++) { const float d = s * g[i]; BODY p[i] += d; } \
    }

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
