// Fused selective scan for CPUs (forward and backward), LANES channels per vector: 16 where
// the build targets AVX-512 (x86-64-v4), 8 elsewhere (AVX2 and the portable build).
//
//   d_t = softplus(delta_t + bias)            (both optional)
//   h_t = exp(d_t A) h_{t-1} + d_t u_t B_t    (t = 0..L-1, or L-1..0 with reverse)
//   out = (<h_t, C_t> + D u_t) * silu(z_t)    (D and z optional)
//
// Built when the package is built (one library per instruction-set level, setup.py) or at
// first use by cpu.py with the system C compiler, and called through ctypes: no torch headers.
// cpu.py asks the library for LANES (vimc_scan_lanes), which sizes the scratch and partials.
//
// Every (Bt, E, L) and (Bt, G, N, L) tensor comes with its element strides, so both layouts a
// model produces are read in place: channel-major (stride 1 along L) and token-major views
// of (Bt, L, E) memory (stride 1 along E), as a Vim mixer's linears produce them.
//
// Work item = (batch, group, block of LANES channels of that group). One vector lane per
// channel: B_t and C_t are shared by a group, so they broadcast, and the forward needs no
// horizontal sums. The time loop reads one vector per step from a per-thread (L, LANES)
// scratch: an item's rows of u, delta, z are staged there (8x8 transposes for channel-major
// rows), except in the forward for a full block of token-major rows, which it reads and writes
// in place (16 lanes read a whole 64-byte cache line per step there). Lanes past the group's
// last channel run with d = 0 and A = 0, which keeps their state at 0, and are never written.
//
// Backward recomputes one state component at a time into a per-thread (L, LANES) scratch,
// then sweeps time backwards with its adjoint. Sums over channels (dB, dC) and over batch (dA,
// dD, dbias) go to per-thread partials that cpu.py adds up, so no two threads write the same
// memory.
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
// for memory access only: any float address, and allowed to alias float data
typedef float vf_mem __attribute__((vector_size(4 * LANES), aligned(4), may_alias));
// state components advanced together in the forward's time loop: their decays, states and
// B/C broadcasts fill 32 vector registers with AVX-512 (8), 16 with AVX2 (4)
#if LANES == 16
#define NB 8
#else
#define NB 4
#endif
#define MAX_R 64  // the largest dt_proj rank the kernel takes (Vim-B's is 48)
#define PREFETCH_ROWS 8  // how far ahead token-major loops prefetch (a hint: past the end is fine)

// element (b, e, t) of a (Bt, E, L) tensor sits at b * b + e * e + t * t
typedef struct { int64_t b, e, t; } Strides3;
// element (b, g, n, t) of a (Bt, G, N, L) tensor
typedef struct { int64_t b, g, n, t; } Strides4;

typedef struct {
    int64_t Bt, E, L, N, G;
    int64_t delta_softplus, reverse, nthreads;
    const float *u;          // (Bt, E, L)   strided: s_u
    const float *delta;      // (Bt, E, L)   before bias and softplus
    const float *A;          // (E, N)
    const float *B;          // (Bt, G, N, L) strided: s_B
    const float *C;          // (Bt, G, N, L) strided: s_C
    const float *D;          // (E,) or NULL
    const float *z;          // (Bt, E, L) or NULL
    const float *bias;       // (E,) or NULL
    float *out;              // (Bt, E, L)
    float *last_state;       // (Bt, E, N); NULL: not written (forward only)
    // backward
    const float *dout;       // (Bt, E, L)
    const float *dlast;      // (Bt, E, N) or NULL
    float *du;               // (Bt, E, L)
    float *ddelta;           // (Bt, E, L)
    float *dz;               // (Bt, E, L) or NULL
    float *dA_part;          // (nthreads, E, N)
    float *dD_part;          // (nthreads, E)
    float *dbias_part;       // (nthreads, E)
    float *dB_part;          // (nthreads, Bt, G, N, L, LANES) summed over threads and lanes
    float *dC_part;          // (nthreads, Bt, G, N, L, LANES)
    float *scratch;          // (nthreads, scratch_floats)
    int64_t scratch_floats;  // per thread: >= 12 * L * LANES
    Strides3 s_u, s_delta, s_z, s_out, s_dout, s_du, s_ddelta, s_dz;
    Strides4 s_B, s_C;
    // forward only: a second scan over the same (Bt, E, L, N, G) whose output is averaged
    // with this one's before the gate: out = (y + y_pair) / 2 * silu(z), Vim's two
    // directions in one call. Its own u, delta, A, B, C, D, bias, reverse, last_state; its
    // z, out and scratch are unused (this one's serve both).
    const void *pair;
    // forward only: with dt_proj, delta is (Bt, R, L), strided by s_delta (its e stride runs
    // along R), and channel e's raw delta is sum_r dt_proj[e, r] * delta[b, r, t]: a Vim
    // mixer's dt_proj linear done here, so the (Bt, E, L) delta is never written to memory
    const float *dt_proj;    // (E, R) contiguous, or NULL
    int64_t R;               // 1..MAX_R where dt_proj is set
} ScanArgs;

typedef struct {
    const ScanArgs *a;
    int64_t tid, item_begin, item_end;
} Work;

// ---------------------------------------------------------------------------------------------
// LANES-wide math
// ---------------------------------------------------------------------------------------------

// x in every lane: a scalar operand of a vector op is broadcast, and x - 0 is x exactly (-0
// and NaN included), so this is one broadcast instruction
static inline vf vsplat(float x) { return x - (vf){0}; }
static inline vi vsplat_i(int32_t x) { return x + (vi){0}; }
static inline vf vload(const float *p) { return *(const vf_mem *)p; }
static inline void vstore(float *p, vf v) { *(vf_mem *)p = v; }
static inline vf vselect(vi mask, vf a, vf b) {  // mask ? a : b, lane by lane
    return (vf)((mask & (vi)a) | (~mask & (vi)b));
}

// vmax and vmin return b in a lane where either operand is NaN (maxps/minps do, and the
// portable select does the same), so a clamp is written vmax(bound, x): a NaN x stays NaN
// and reaches the output, as it does in the reference, instead of becoming the bound.
#if defined(__AVX512F__)
#include <immintrin.h>
static inline vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
static inline vf vmin(vf a, vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
static inline vf vround(vf a) {
    return (vf)_mm512_roundscale_ps((__m512)a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline int all_set(vi mask) {  // every lane of a comparison's mask set
    return _mm512_cmpneq_epi32_mask((__m512i)mask, _mm512_setzero_si512()) == 0xffff;
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
static inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
static inline vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
static inline vf vround(vf a) {
    return (vf)_mm256_round_ps((__m256)a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline int all_set(vi mask) { return _mm256_movemask_ps((__m256)mask) == 0xff; }
#else  // portable: the compiler lowers these to whatever vectors the target has
static inline vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vselect(a < b, a, b); }
static inline vf vround(vf a) {
    return __builtin_convertvector(__builtin_convertvector(
        a + vselect(a < vsplat(0.0f), vsplat(-0.5f), vsplat(0.5f)), vi), vf);
}
static inline int all_set(vi mask) {
    int all = 1;
    for (int k = 0; k < LANES; ++k) all &= mask[k] != 0;
    return all;
}
#endif

// The math below runs on n vectors side by side (n a constant after inlining, at most
// ILP_ROWS): each step of a polynomial is applied to all n before the next, so n independent
// chains of 4-cycle FMAs interleave in program order. One softplus alone is a chain of about
// 25 dependent instructions, which the out-of-order window overlaps with the next step's only
// in part: run 8 steps at a time this way (the forward's token-major rows' softplus, the
// gate), the part of a batch-8 Vim-Ti pair call that does not grow with N took 10% less, 14%
// in the AVX2 build (benchmarks/scan_builds.py on Zen 5, results in benchmarks/results;
// bit-identical). vexp(x) and the like are the n = 1 case.
// AI: always inlined, so that n is a constant where these are called and the loops unroll
#define AI static inline __attribute__((always_inline))
#define ILP_ROWS 8
#define EACH(i, n) for (int i = 0; i < (n); ++i)

// Horner's rule on n vectors: p[i] = c[0] r[i]^(k-1) + ... + c[k-1], k terms
AI void horner_n(vf *p, const vf *r, const float *c, const int k, const int n) {
    EACH(i, n) p[i] = vsplat(c[0]);
    for (int j = 1; j < k; ++j) EACH(i, n) p[i] = p[i] * r[i] + vsplat(c[j]);
}

// exp: Cody-Waite reduction by ln 2, then exp(r) on |r| <= ln2/2 by its degree-6 Taylor
// polynomial (truncation error r^7/7! < 1.3e-7, about 1 ulp). Inputs are clamped to
// [-87.3, 88.7]: exp(-87.3) ~ 1e-38 stands in for anything smaller (a long-decayed state);
// NaN passes through the clamp (see vmax) and the polynomial, so exp(NaN) = NaN. In place.
static const float EXP_TAYLOR[7] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f,
                                    0.5f,          1.0f,          1.0f};
AI void vexp_n(vf *x, const int n) {
    vf k[ILP_ROWS], r[ILP_ROWS], p[ILP_ROWS];
    EACH(i, n) {
        const vf xc = vmin(vsplat(88.7f), vmax(vsplat(-87.3f), x[i]));
        k[i] = vround(xc * vsplat(1.44269504088896341f));
        r[i] = xc - k[i] * vsplat(0.693359375f);
    }
    EACH(i, n) r[i] = r[i] + k[i] * vsplat(2.12194440e-4f);
    horner_n(p, r, EXP_TAYLOR, 7, n);
    EACH(i, n) x[i] = p[i] * (vf)((__builtin_convertvector(k[i], vi) + 127) << 23);
}
static inline vf vexp(vf x) {
    vexp_n(&x, 1);
    return x;
}

// 2^x for x <= 0 (the forward's decays when every exponent delta * A is <= 0, as in Vim: A < 0,
// delta = softplus(.) >= 0, with log2(e) folded into A once per item): no upper clamp, and a
// degree-5 polynomial for 2^r on |r| <= 1/2, fitted by this project for minimax relative
// error with p(0) = 1 exactly (a decay near 1 must carry no constant error: it compounds over
// the memory length): 1.7e-7 evaluated in float32. Rounding by adding 1.5 * 2^23 leaves k in
// the low mantissa bits, so r = x - k is exact, and 2^k is applied by adding k to p's exponent
// field (an integer add: the multiply it replaces would compete with the polynomial's FMAs
// for the same two ports). x must be >= -126 (decay_form proves it per item, or the caller
// clamps it), so k = -126 only comes with r >= 0, p >= 1: the result stays a normal number,
// and below 2^-126 ~ 1.2e-38 (a long-decayed state) the clamped form stays at 2^-126, as
// vexp's clamp does. The integer add would not keep a NaN intact, so decay_form sends any
// item with a NaN or infinite A, or a NaN raw delta, to vexp (which propagates NaN); a NaN
// softplus(delta) makes d * u NaN, so the state is NaN whatever its decay.
#define LOG2E 1.44269504088896341f
#define ROUND_MAGIC 12582912.0f  // 1.5 * 2^23: x + it rounds x to an integer (|x| < 2^22)
static const float EXP2_P[6] = {1.325527112e-03f, 9.671489949e-03f, 5.550751487e-02f,
                                2.402224482e-01f, 6.931469960e-01f, 1.0f};
static inline vf vexp2_poly(vf r) {  // 2^r, |r| <= 1/2
    vf p;
    horner_n(&p, &r, EXP2_P, 6, 1);
    return p;
}
static inline vf vexp2_nonpos(vf x) {  // -126 <= x <= 0
    const vf t = x + vsplat(ROUND_MAGIC);  // k in the low mantissa bits (two's complement)
    const vf p = vexp2_poly(x - (t - vsplat(ROUND_MAGIC)));
    return (vf)((vi)p + ((vi)t << 23));  // the magic's own bits shift out past bit 31
}
#if defined(__AVX512F__) && defined(__AVX512DQ__)
// the same value (r and k are the same numbers, 2^k exact either way) in two instructions
// fewer: vreduceps gives r = x - round(x), vscalefps applies 2^round(x) (x - r is that
// integer, exactly). Faster where every vector instruction competes for the same two ports
// (Intel's 512-bit execution); see bounded_decay.
static inline vf vexp2_nonpos_scalef(vf x) {  // -126 <= x <= 0
    const vf r = (vf)_mm512_reduce_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return (vf)_mm512_scalef_ps((__m512)vexp2_poly(r), (__m512)(x - r));
}
#endif

// The same 2^x with one FMA-pipe instruction fewer, for the builds whose vpermps picks a lane
// of a register by index (AVX2, AVX-512). x arrives as LANES x (LANES folded into A with
// log2(e), exactly: a power of 2), and k = round(LANES x) splits into j = k mod LANES and
// e = floor(k / LANES): 2^x = 2^e 2^(j / LANES) 2^(s / LANES), s = LANES x - k in [-1/2, 1/2].
// - 2^(s / LANES) spans a range LANES times narrower than vexp2_poly's, so degree 3 does what
//   degree 5 does there (fitted by this project as EXP2_P was, q(0) = 1 exactly: 8.6e-8
//   relative evaluated in float32 for 8 lanes, 6.1e-8 for 16): two FMAs fewer.
// - 2^(j / LANES) comes from one register by vpermps, which reads only an index's low bits
//   (j = k's low bits in the rounded value: no mask), on a shuffle port rather than an FMA pipe.
// - The table holds each 2^(j / LANES)'s bits less j << TABLE_SHIFT (23 - log2 LANES), so
//   adding k << TABLE_SHIFT (j's share and e's at once) leaves the bits of 2^(j / LANES) 2^e:
//   one shift and one integer add, as vexp2_nonpos's 2^k. Its product with q is the one
//   multiply added.
// Worst relative error over every float x in [-126, 0]: 1.60e-7 (8 lanes), 1.62e-7 (16),
// against vexp2_nonpos's 1.59e-7, in an exhaustive check run once (q and the table value are
// each rounded; near x = 0, j = e = 0 and the table value is 1); tests/ops/test_polynomials.py
// holds 2.2M points across the range to 1.62e-7.
// x >= -126 keeps 2^(j / LANES) 2^e a normal number, as in vexp2_nonpos. Which form runs is
// chosen at load (bounded_decay).
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define HAVE_EXP2_TABLE 1
#if LANES == 16
#define TABLE_SHIFT 19
static const float EXP2_Q[4] = {1.355032600e-05f, 9.384151781e-04f, 4.332169890e-02f, 1.0f};
static const int32_t EXP2_TABLE[16] = {  // bits of 2^(j / 16), less j << 19
    0x3f800000 - (0 << 19),  0x3f85aac3 - (1 << 19),  0x3f8b95c2 - (2 << 19),
    0x3f91c3d3 - (3 << 19),  0x3f9837f0 - (4 << 19),  0x3f9ef532 - (5 << 19),
    0x3fa5fed7 - (6 << 19),  0x3fad583f - (7 << 19),  0x3fb504f3 - (8 << 19),
    0x3fbd08a4 - (9 << 19),  0x3fc5672a - (10 << 19), 0x3fce248c - (11 << 19),
    0x3fd744fd - (12 << 19), 0x3fe0ccdf - (13 << 19), 0x3feac0c7 - (14 << 19),
    0x3ff5257d - (15 << 19)};
#else
#define TABLE_SHIFT 20
static const float EXP2_Q[4] = {1.083910611e-04f, 3.754025558e-03f, 8.664340526e-02f, 1.0f};
static const int32_t EXP2_TABLE[8] = {  // bits of 2^(j / 8), less j << 20
    0x3f800000 - (0 << 20), 0x3f8b95c2 - (1 << 20), 0x3f9837f0 - (2 << 20),
    0x3fa5fed7 - (3 << 20), 0x3fb504f3 - (4 << 20), 0x3fc5672a - (5 << 20),
    0x3fd744fd - (6 << 20), 0x3feac0c7 - (7 << 20)};
#endif
// 2^((k + s) / LANES) from t (k in its low mantissa bits, k >= -126 LANES) and s in [-1/2, 1/2];
// tbl: EXP2_TABLE in a register (vload once per loop: the compiler keeps it there)
static inline vf table_pow2(vf t, vf s, vf tbl) {
    vf q;
    horner_n(&q, &s, EXP2_Q, 4, 1);
#if LANES == 16
    const vi pick = (vi)_mm512_permutexvar_ps((__m512i)t, (__m512)tbl);
#else
    const vi pick = (vi)_mm256_permutevar8x32_ps((__m256)tbl, (__m256i)t);
#endif
    return q * (vf)(pick + ((vi)t << TABLE_SHIFT));  // the magic's bits shift out past bit 31
}
static inline vf vexp2_nonpos_table(vf x, vf tbl) {  // -126 LANES <= x <= 0
    const vf t = x + vsplat(ROUND_MAGIC);  // k in the low mantissa bits, as in vexp2_nonpos
    return table_pow2(t, x - (t - vsplat(ROUND_MAGIC)), tbl);
}
// exp(-a) for a >= 0 (softplus's exp(-|x|)) in the table form: the exponent -a log2(e) LANES
// with log2(e) in two parts, LOG2E and LOG2E_LO, so that the float32 rounding of the constant
// does not grow with a (with LOG2E alone: 3.4e-6 relative at a = 60). a is clamped at 87:
// exp(-87) ~ 1.6e-38 stands in for anything smaller, as vexp's clamp does; a NaN a gives NaN
// or garbage, which its one caller discards. Fewer instructions than vexp: a degree-3
// polynomial for its degree-6 one, no rounding instruction.
#define LOG2E_LO 1.925962991e-08f  // log2(e) - LOG2E
static inline vf vexp_neg_table(vf a, vf tbl) {
    const vf ac = vmin(vsplat(87.0f), a);
    const vf t = ac * vsplat(-LOG2E * LANES) + vsplat(ROUND_MAGIC);
    const vf s = ac * vsplat(-LOG2E * LANES) - (t - vsplat(ROUND_MAGIC)) +
                 ac * vsplat(-LOG2E_LO * LANES);
    return table_pow2(t, s, tbl);
}
#endif

// log1p(w) / w on [0, 1]: a degree-8 polynomial fitted by this project (weighted least
// squares toward minimax relative error): 2.1e-7 relative for log1p(w) = w * P(w) evaluated in
// float32, tiny w included (P(0) ~ 1), with no log, division or cancellation. In place.
static const float LOG1P_P[9] = {5.232705735e-03f,  -2.950528450e-02f, 7.822602987e-02f,
                                 -1.366325170e-01f, 1.910600960e-01f,  -2.484298348e-01f,
                                 3.331909776e-01f,  -4.999949336e-01f, 9.999999404e-01f};
AI void vlog1p_01_n(vf *w, const int n) {
    vf p[ILP_ROWS];
    horner_n(p, w, LOG1P_P, 9, n);
    EACH(i, n) w[i] = w[i] * p[i];
}

// softplus as the official kernels define it: log1p(exp(x)) for x <= 20, else x; computed as
// max(x, 0) + log1p(exp(-|x|)), exp(-|x|) in (0, 1]; exp(-|x|) in the table form where the
// build has it: a Vim-Ti pair call took about 2% less than with vexp, in the AVX2 build on a
// Zen 4 (benchmarks/results/scan_builds-amd-epyc-family-25-model-17-2c-x86-64-v3.md). A NaN x
// makes max(x, 0) + e NaN whatever e is. In place.
AI void vsoftplus_n(vf *x, const int n) {
    vf e[ILP_ROWS];
#ifdef HAVE_EXP2_TABLE
    const vf tbl = vload((const float *)EXP2_TABLE);
    EACH(i, n) e[i] = vexp_neg_table((vf)((vi)x[i] & vsplat_i(0x7fffffff)), tbl);  // |x|
#else
    EACH(i, n) e[i] = -(vf)((vi)x[i] & vsplat_i(0x7fffffff));  // -|x|
    vexp_n(e, n);
#endif
    vlog1p_01_n(e, n);
    EACH(i, n) {  // NaN stays NaN
        const vf sp = vmax(vsplat(0.0f), x[i]) + e[i];
        x[i] = vselect(x[i] > vsplat(20.0f), x[i], sp);
    }
}
static inline vf vsoftplus(vf x) {
    vsoftplus_n(&x, 1);
    return x;
}

// 1 / d for d >= 1 (the sigmoid's denominator). A vector divide takes one port for 10 to 16
// cycles per 16 lanes on Intel's AVX-512 cores (a gate per step costs what a tenth of the
// state loop does); the hardware reciprocal estimate (14 bits with AVX-512, 12 with AVX2)
// and one Newton step r += r (1 - d r) come within 2 ulp in four instructions. vexp
// overflows to +inf near its upper clamp: the estimate of 1 / inf is 0, as the divide's is,
// and the step reads d capped at FLT_MAX there (inf * 0 would be NaN), so 1 / inf stays 0
// (a gate z * sigmoid(z) at z = -inf is then NaN, as the reference's is); NaN stays NaN.
static inline vf vrecip_ge1(vf d) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#if defined(__AVX512F__)
    const vf r = (vf)_mm512_rcp14_ps((__m512)d);
#else
    const vf r = (vf)_mm256_rcp_ps((__m256)d);
#endif
    return r + r * (vsplat(1.0f) - vmin(vsplat(3.4028235e38f), d) * r);
#else
    return vsplat(1.0f) / d;  // portable builds: the exact divide
#endif
}

// sigmoid, in place
AI void vsigmoid_n(vf *x, const int n) {
    vf e[ILP_ROWS];
    EACH(i, n) e[i] = -x[i];
    vexp_n(e, n);
    EACH(i, n) x[i] = vrecip_ge1(vsplat(1.0f) + e[i]);
}
static inline vf vsigmoid(vf x) {
    vsigmoid_n(&x, 1);
    return x;
}

// ---------------------------------------------------------------------------------------------
// staging between the (Bt, E, L) rows of LANES channels and (L, LANES) lane-major scratch
// ---------------------------------------------------------------------------------------------

#if defined(__AVX2__) && defined(__FMA__)
// r[k] holds row k of an 8x8 tile; afterwards r[k] holds column k
static inline void transpose8x8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}
#define TILE_T 8  // time steps moved per 8x8 tile (LANES / 8 tiles side by side)
#else
#define TILE_T 0
#endif

// dst (L, LANES) <- element (k, t) at src[k * se + t * st] for the `lanes` channels k; lanes
// past them are 0
static void stage_in(float *dst, const float *src, int64_t L, int64_t lanes, int64_t se,
                     int64_t st) {
    if (lanes == LANES && se == 1) {  // token-major: a time step's channels are adjacent
        for (int64_t t = 0; t < L; ++t) vstore(dst + t * LANES, vload(src + t * st));
        return;
    }
    int64_t t0 = 0;
#if TILE_T
    if (lanes == LANES && st == 1) {  // channel-major rows
        for (; t0 + TILE_T <= L; t0 += TILE_T)
            for (int c = 0; c < LANES; c += 8) {  // channels c..c+7
                __m256 r[8];
                for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src + (c + k) * se + t0);
                transpose8x8(r);
                for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + (t0 + t) * LANES + c, r[t]);
            }
    }
#endif
    if (lanes < LANES) memset(dst + t0 * LANES, 0, sizeof(float) * (L - t0) * LANES);
    for (int64_t k = 0; k < lanes; ++k)
        for (int64_t t = t0; t < L; ++t) dst[t * LANES + k] = src[k * se + t * st];
}

// the inverse: element (k, t) at dst[k * se + t * st] <- src (L, LANES), for `lanes` channels
static void stage_out(float *dst, const float *src, int64_t L, int64_t lanes, int64_t se,
                      int64_t st) {
    if (lanes == LANES && se == 1) {
        for (int64_t t = 0; t < L; ++t) vstore(dst + t * st, vload(src + t * LANES));
        return;
    }
    int64_t t0 = 0;
#if TILE_T
    if (lanes == LANES && st == 1) {
        for (; t0 + TILE_T <= L; t0 += TILE_T)
            for (int c = 0; c < LANES; c += 8) {
                __m256 r[8];
                for (int t = 0; t < 8; ++t) r[t] = _mm256_loadu_ps(src + (t0 + t) * LANES + c);
                transpose8x8(r);
                for (int k = 0; k < 8; ++k) _mm256_storeu_ps(dst + (c + k) * se + t0, r[k]);
            }
    }
#endif
    for (int64_t k = 0; k < lanes; ++k)
        for (int64_t t = t0; t < L; ++t) dst[k * se + t * st] = src[t * LANES + k];
}

typedef struct {
    int64_t b, g, e0, lanes;
    vi valid;  // lane < lanes
} Item;

static Item item_of(const ScanArgs *a, int64_t it) {
    const int64_t Eg = a->E / a->G, blocks = (Eg + LANES - 1) / LANES;
    const int64_t bg = it / blocks, j = it % blocks;
    Item m;
    m.b = bg / a->G;
    m.g = bg % a->G;
    m.e0 = m.g * Eg + j * LANES;
    m.lanes = Eg - j * LANES < LANES ? Eg - j * LANES : LANES;
    for (int k = 0; k < LANES; ++k) m.valid[k] = k < m.lanes ? -1 : 0;
    return m;
}

static vf gather_chan(const float *p, const Item *m, int64_t stride) {  // p[(e0 + k) * stride]
    vf v = vsplat(0.0f);
    for (int64_t k = 0; k < m->lanes; ++k) v[k] = p[(m->e0 + k) * stride];
    return v;
}

// the offset of an item's first channel, step 0, in a strided (Bt, E, L) tensor
static inline int64_t at3(Strides3 s, const Item *m) { return m->b * s.b + m->e0 * s.e; }

// an item's channels of a strided (Bt, E, L) tensor, in and out of (L, LANES) scratch
static void item_in(float *dst, const float *x, Strides3 s, const ScanArgs *a, const Item *m) {
    stage_in(dst, x + at3(s, m), a->L, m->lanes, s.e, s.t);
}
static void item_out(float *x, Strides3 s, const float *src, const ScanArgs *a, const Item *m) {
    stage_out(x + at3(s, m), src, a->L, m->lanes, s.e, s.t);
}

// whether an item's channels of a (Bt, E, L) tensor are adjacent at every step (token-major,
// no padding lanes): then loops read and write it in place instead of staging it
static inline int direct(Strides3 s, const Item *m) { return m->lanes == LANES && s.e == 1; }

// the item's group of a strided (Bt, G, N, L) tensor: element (n, t) at [n * s.n + t * s.t]
static const float *group_of(const float *x, Strides4 s, const Item *m) {
    return x + m->b * s.b + m->g * s.g;
}

// an item's dt_proj rows, lane-major: w[r * LANES + k] = dt_proj[e0 + k, r], 0 past its lanes
static void stage_proj(const ScanArgs *a, const Item *m, float *w) {
    for (int64_t r = 0; r < a->R; ++r) vstore(w + r * LANES, gather_chan(a->dt_proj + r, m, a->R));
}

// the raw delta of an item's channels at nt consecutive steps: out[i] = sum_r w[r] *
// x[i * ts + r * rs], x = delta[b, :, t0]. One step's sum is a chain of R dependent FMAs (R = 24
// for Vim-Ti: about 100 cycles of latency for 24 instructions); PROJ_ROWS steps side by side
// are independent chains, which the FMA ports overlap, and each weight row is loaded once
// for all of them. Inlined with a constant nt.
#define PROJ_ROWS 8  // <= ILP_ROWS: direct_rows runs softplus on these rows side by side
static inline __attribute__((always_inline)) void project(
    const float *w, int64_t R, const float *x, int64_t rs, int64_t ts, const int nt, vf *out) {
    for (int i = 0; i < nt; ++i) out[i] = vsplat(0.0f);
    for (int64_t r = 0; r < R; ++r) {
        const vf wr = vload(w + r * LANES);
        for (int i = 0; i < nt; ++i) out[i] += wr * vsplat(x[i * ts + r * rs]);
    }
}

// stage u and the final delta (bias, softplus; 0 on padding lanes) of one item; w: the item's
// staged dt_proj rows where a->dt_proj is set (forward only)
static void stage_u_delta(const ScanArgs *a, const Item *m, const float *w, float *su, float *sd,
                          float *sx) {
    const int64_t L = a->L;
    item_in(su, a->u, a->s_u, a, m);
    if (a->dt_proj) {
        const float *x = a->delta + m->b * a->s_delta.b;  // (R, L) of this batch row
        const int64_t rs = a->s_delta.e, ts = a->s_delta.t;
        vf raw[PROJ_ROWS];
        int64_t t = 0;
        for (; t + PROJ_ROWS <= L; t += PROJ_ROWS) {
            project(w, a->R, x + t * ts, rs, ts, PROJ_ROWS, raw);
            for (int i = 0; i < PROJ_ROWS; ++i) vstore(sd + (t + i) * LANES, raw[i]);
        }
        for (; t < L; ++t) {
            project(w, a->R, x + t * ts, rs, ts, 1, raw);
            vstore(sd + t * LANES, raw[0]);
        }
    } else {
        item_in(sd, a->delta, a->s_delta, a, m);
    }
    const vf bias = a->bias ? gather_chan(a->bias, m, 1) : vsplat(0.0f);
    for (int64_t t = 0; t < L; ++t) {
        vf x = vload(sd + t * LANES) + bias;
        if (sx) vstore(sx + t * LANES, x);
        vf d = a->delta_softplus ? vsoftplus(x) : x;
        vstore(sd + t * LANES, vselect(m->valid, d, vsplat(0.0f)));
    }
}

// ---------------------------------------------------------------------------------------------
// forward: the N state components of a channel never interact, so the loop runs state by
// state with time innermost; exp's constants then stay in registers for a whole row.
// ---------------------------------------------------------------------------------------------

// how an item's decays exp(d * A) are computed; each proven case is cheaper than the one before
enum {
    DECAY_EXP,          // vexp: any exponent (NaN or infinite A, a negative or NaN raw delta)
    DECAY_EXP2_CLAMP,   // vexp2_nonpos after a clamp at -126: every exponent <= 0
    DECAY_EXP2,         // vexp2_nonpos: every exponent in [-126, 0] (Vim's usual case)
    DECAY_EXP2_SCALEF,  // vexp2_nonpos_scalef: the same values (AVX-512 builds)
    DECAY_EXP2_TABLE,   // vexp2_nonpos_table: the same exponents (AVX2 and AVX-512 builds)
};
static const char *const DECAY_NAMES[] = {"exp", "exp2-clamp", "exp2", "exp2-scalef",
                                          "exp2-table"};

// the form of the bounded case (every exponent in [-126, 0]): set once at load, or by
// vimc_scan_set_decay (cpu.py, from VIMC_SCAN_DECAY; benchmarks switch it between calls; the
// harness runs every form). Atomic, read relaxed once per item and direction (per chunk and
// block in the mixer core): a switch while scans run changes the form of the work after it,
// each direction of an item in one form (in the mixer core, each chunk and block of one).
// Intel's AVX-512 cores run every 512-bit vector instruction on two ports, so there the form
// with the fewest instructions wins: scalef's 12 per update against 13 (as GCC compiles them:
// benchmarks/scan_floor.py counts them). Where two FMA pipes bound the loop (AMD's cores,
// AVX2 builds), the table form's 9 instructions on them against exp2's 10 win: the state loop
// took 11% less than exp2's in both builds on Zen 5, 5% less than scalef's in the AVX-512 one,
// and 11% less than exp2's on a Zen 4 with AVX-512 hidden (AVX2 build), although LLVM's
// scheduling models put vpermps on an FMA pipe there (benchmarks/scan_floor.py,
// benchmarks/decay_forms.py). Zen 3: not measured.
static _Atomic int bounded_decay = DECAY_EXP2;
#ifdef HAVE_EXP2_TABLE
__attribute__((constructor)) static void choose_decay_form(void) {
    __builtin_cpu_init();
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    if (__builtin_cpu_is("intel")) {
        atomic_store_explicit(&bounded_decay, DECAY_EXP2_SCALEF, memory_order_relaxed);
        return;
    }
#endif
    atomic_store_explicit(&bounded_decay, DECAY_EXP2_TABLE, memory_order_relaxed);
}
#endif

// whether this build has decay form f for the bounded case
static int bounded_form_built(int f) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    if (f == DECAY_EXP2_SCALEF) return 1;
#endif
#ifdef HAVE_EXP2_TABLE
    if (f == DECAY_EXP2_TABLE) return 1;
#endif
    return f == DECAY_EXP2;
}

// what decay_form needs of an item's d, gathered while its rows are staged (a pass reading them
// back took 4% of a batch-8 call on an Ice Lake worker, ad hoc): the largest d per lane and
// whether every d >= 0 (NaN fails)
typedef struct {
    vf dmax;
    vi nonneg;
} DStats;
static inline DStats dstats_new(void) {
    return (DStats){vsplat(0.0f), vsplat(0.0f) == vsplat(0.0f)};
}
static inline void dstats_add(DStats *s, vf d) {
    s->dmax = vmax(s->dmax, d);
    s->nonneg &= d >= vsplat(0.0f);
}

// what decay_form needs of A, per lane: whether every A_n is finite and <= 0 (NaN and -inf
// fail), and the most negative
typedef struct {
    vi ok;
    vf amin;
} AStats;
static inline AStats astats_new(void) {
    return (AStats){vsplat(0.0f) == vsplat(0.0f), vsplat(0.0f)};
}
static inline void astats_add(AStats *s, vf An) {
    s->ok &= (An <= vsplat(0.0f)) & (An >= vsplat(-3.4028235e38f));
    s->amin = vmin(s->amin, An);
}

// the cheapest decay form exponents d * A allow, from A's stats and d's (nonneg: whether a
// raw delta's sign has to be checked; softplus is >= 0)
static int decay_form_of(AStats as, const DStats *s, int check_sign) {
    if (check_sign) as.ok &= s->nonneg;
    // every exponent >= -126: the product of the largest d and |A| in log2 units, with room
    // for the float32 roundings of A * log2(e) and of d * A (a few ulp of 125)
    const vi bounded = s->dmax * (as.amin * vsplat(-LOG2E)) <= vsplat(125.0f);
    if (!all_set(as.ok)) return DECAY_EXP;
    if (!all_set(bounded)) return DECAY_EXP2_CLAMP;
    return atomic_load_explicit(&bounded_decay, memory_order_relaxed);
}

// the cheapest decay form this item's exponents d * A allow (s: its d's stats)
static int decay_form(const ScanArgs *a, const Item *m, const DStats *s) {
    AStats as = astats_new();
    for (int64_t n = 0; n < a->N; ++n) astats_add(&as, gather_chan(a->A + n, m, a->N));
    return decay_form_of(as, s, !a->delta_softplus);
}

// one decay in the given form (a constant after inlining); Ak carries log2(e) for the exp2
// forms, and LANES too for the table form, whose table tbl holds
static inline __attribute__((always_inline)) vf decay_of(vf x, const int form, vf tbl) {
    (void)tbl;
    if (form == DECAY_EXP) return vexp(x);
#ifdef HAVE_EXP2_TABLE
    if (form == DECAY_EXP2_TABLE) return vexp2_nonpos_table(x, tbl);
#endif
    if (form == DECAY_EXP2_CLAMP) return vexp2_nonpos(vmax(vsplat(-126.0f), x));
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    if (form == DECAY_EXP2_SCALEF) return vexp2_nonpos_scalef(x);
#endif
    return vexp2_nonpos(x);
}

// what A is multiplied by for a decay form's exponent
#define AK_SCALE(form) \
    ((form) == DECAY_EXP ? 1.0f : (form) == DECAY_EXP2_TABLE ? LOG2E * (float)LANES : LOG2E)

// nb (<= NB) state components n.. of one item over all steps, y accumulated in sy. Inlined
// with constant nb and decay form, so each caller gets its own unrolled loop.
static inline __attribute__((always_inline)) void fwd_states(
    const ScanArgs *a, const Item *m, int64_t n, const int nb, const int form, const float *sd,
    const float *sdu, float *sy, const float *Bp, const float *Cp) {
    const int64_t L = a->L, N = a->N, E = a->E;
    const int64_t Bsn = a->s_B.n, Bst = a->s_B.t, Csn = a->s_C.n, Cst = a->s_C.t;
    const int64_t t0 = a->reverse ? L - 1 : 0, dt = a->reverse ? -1 : 1;
    vf Ak[NB], h[NB] = {0};  // all of h set: GCC cannot see that only [0, nb) is read
    for (int j = 0; j < nb; ++j)
        Ak[j] = gather_chan(a->A + n + j, m, N) * vsplat(AK_SCALE(form));
    vf tbl = vsplat(0.0f);
#ifdef HAVE_EXP2_TABLE
    if (form == DECAY_EXP2_TABLE) tbl = vload((const float *)EXP2_TABLE);
#endif
    const float *Bn = Bp + n * Bsn, *Cn = Cp + n * Csn;
    for (int64_t s = 0, t = t0; s < L; ++s, t += dt) {
        const vf d = vload(sd + t * LANES), du = vload(sdu + t * LANES);
        const float *Bt = Bn + t * Bst, *Ct = Cn + t * Cst;
        vf y = vload(sy + t * LANES);
        for (int j = 0; j < nb; ++j) {
            const vf decay = decay_of(d * Ak[j], form, tbl);
            h[j] = decay * h[j] + du * vsplat(Bt[j * Bsn]);
            y += h[j] * vsplat(Ct[j * Csn]);
        }
        vstore(sy + t * LANES, y);
    }
    if (!a->last_state) return;  // not asked for (the ONNX plugin's bidirectional node)
    for (int64_t k = 0; k < m->lanes; ++k)
        for (int j = 0; j < nb; ++j) a->last_state[(m->b * E + m->e0 + k) * N + n + j] = h[j][k];
}

// fwd_states with the decay form made a constant: one unrolled loop per form
static inline __attribute__((always_inline)) void fwd_pass(
    const ScanArgs *a, const Item *m, int64_t n, const int nb, const int form, const float *sd,
    const float *sdu, float *sy, const float *Bp, const float *Cp) {
    switch (form) {
    case DECAY_EXP: fwd_states(a, m, n, nb, DECAY_EXP, sd, sdu, sy, Bp, Cp); break;
    case DECAY_EXP2_CLAMP: fwd_states(a, m, n, nb, DECAY_EXP2_CLAMP, sd, sdu, sy, Bp, Cp); break;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    case DECAY_EXP2_SCALEF: fwd_states(a, m, n, nb, DECAY_EXP2_SCALEF, sd, sdu, sy, Bp, Cp); break;
#endif
#ifdef HAVE_EXP2_TABLE
    case DECAY_EXP2_TABLE: fwd_states(a, m, n, nb, DECAY_EXP2_TABLE, sd, sdu, sy, Bp, Cp); break;
#endif
    default: fwd_states(a, m, n, nb, DECAY_EXP2, sd, sdu, sy, Bp, Cp);
    }
}

// token-major steps t..t+nt-1 (nt constant after inlining) of an item read in place: delta
// (dt_proj applied where set), bias, softplus; d, d*u and D*u (added to sy with `add`) staged
static inline __attribute__((always_inline)) void direct_rows(
    const ScanArgs *a, const float *w, const float *up, const float *dp, const vf bias,
    const vf Dv, const int add, const int64_t t, const int nt, float *sd, float *sdu, float *sy,
    DStats *ds) {
    const int64_t ust = a->s_u.t, dst = a->s_delta.t;
    for (int i = 0; i < nt; ++i) {
        // rows E floats apart: the hardware prefetcher lags on such strides, so ask ahead
        __builtin_prefetch(up + (t + i + PREFETCH_ROWS) * ust);
        if (!a->dt_proj) __builtin_prefetch(dp + (t + i + PREFETCH_ROWS) * dst);
    }
    vf raw[PROJ_ROWS];
    if (a->dt_proj) project(w, a->R, dp + t * dst, a->s_delta.e, dst, nt, raw);
    else
        for (int i = 0; i < nt; ++i) raw[i] = vload(dp + (t + i) * dst);
    EACH(i, nt) raw[i] += bias;
    if (a->delta_softplus) vsoftplus_n(raw, nt);  // the nt rows side by side
    for (int i = 0; i < nt; ++i) {
        const int64_t ti = t + i;
        const vf ut = vload(up + ti * ust), d = raw[i];
        dstats_add(ds, d);
        vstore(sd + ti * LANES, d);
        vstore(sdu + ti * LANES, d * ut);
        vstore(sy + ti * LANES, add ? vload(sy + ti * LANES) + Dv * ut : Dv * ut);
    }
}

// one direction of an item: d and d*u staged, D*u + <h_t, C_t> written into sy (or, with
// `add`, added to what sy holds: a pair's second direction), last state out
static void fwd_direction(const ScanArgs *a, const Item *m, float *su, float *sd, float *sdu,
                          float *sy, int add) {
    const int64_t L = a->L, N = a->N;
    const float *Bp = group_of(a->B, a->s_B, m), *Cp = group_of(a->C, a->s_C, m);
    const vf Dv = a->D ? gather_chan(a->D, m, 1) : vsplat(0.0f);
    float w[MAX_R * LANES];  // the item's dt_proj rows (stage_proj), where a->dt_proj is set
    if (a->dt_proj) stage_proj(a, m, w);
    DStats ds = dstats_new();
    if (direct(a->s_u, m) && (a->dt_proj || direct(a->s_delta, m))) {
        // token-major: read u and delta (or dt_proj's input) in place, one pass, no staging
        const float *up = a->u + at3(a->s_u, m);
        const float *dp = a->dt_proj ? a->delta + m->b * a->s_delta.b : a->delta + at3(a->s_delta, m);
        const vf bias = a->bias ? gather_chan(a->bias, m, 1) : vsplat(0.0f);
        int64_t t = 0;
        for (; t + PROJ_ROWS <= L; t += PROJ_ROWS)
            direct_rows(a, w, up, dp, bias, Dv, add, t, PROJ_ROWS, sd, sdu, sy, &ds);
        for (; t < L; ++t) direct_rows(a, w, up, dp, bias, Dv, add, t, 1, sd, sdu, sy, &ds);
    } else {
        stage_u_delta(a, m, w, su, sd, NULL);
        for (int64_t t = 0; t < L; ++t) {
            const vf ut = vload(su + t * LANES), d = vload(sd + t * LANES);
            dstats_add(&ds, d);
            vstore(sdu + t * LANES, d * ut);
            vstore(sy + t * LANES, add ? vload(sy + t * LANES) + Dv * ut : Dv * ut);
        }
    }
    const int form = decay_form(a, m, &ds);
    int64_t n = 0;
    for (; n + NB <= N; n += NB)  // NB components per pass: d, d*u and y loaded once
        fwd_pass(a, m, n, NB, form, sd, sdu, sy, Bp, Cp);
    for (; n < N; ++n) fwd_pass(a, m, n, 1, form, sd, sdu, sy, Bp, Cp);
}

// token-major out rows t..t+nt-1 (nt constant after inlining) <- y * scale * silu(z), z read
// in place; the nt sigmoids side by side. Out rows are fetched ahead for writing as z's are
// for reading: a store that misses holds a store-buffer entry until its line arrives.
AI void gate_rows(const float *zp, int64_t zst, const float *sy, const vf scale, float *op,
                  int64_t ost, const int64_t t, const int nt) {
    vf z[ILP_ROWS], g[ILP_ROWS];
    EACH(i, nt) {
        __builtin_prefetch(zp + (t + i + PREFETCH_ROWS) * zst);
        __builtin_prefetch(op + (t + i + PREFETCH_ROWS) * ost, 1);
        g[i] = z[i] = vload(zp + (t + i) * zst);
    }
    vsigmoid_n(g, nt);
    EACH(i, nt) vstore(op + (t + i) * ost, vload(sy + (t + i) * LANES) * scale * z[i] * g[i]);
}

static void fwd_items(const Work *w) {
    const ScanArgs *a = w->a, *p = (const ScanArgs *)a->pair;
    const int64_t L = a->L;
    float *sc = a->scratch + w->tid * a->scratch_floats;
    float *su = sc, *sd = sc + L * LANES, *sz = sc + 2 * L * LANES, *sy = sc + 3 * L * LANES;
    float *sdu = sc + 4 * L * LANES;
    const vf scale = vsplat(p ? 0.5f : 1.0f);  // a pair: the mean of its two y
    for (int64_t it = w->item_begin; it < w->item_end; ++it) {
        const Item m = item_of(a, it);
        fwd_direction(a, &m, su, sd, sdu, sy, 0);
        if (p) fwd_direction(p, &m, su, sd, sdu, sy, 1);  // y summed into sy
        if (a->z && direct(a->s_z, &m) && direct(a->s_out, &m)) {  // gate and write, one pass
            const float *zp = a->z + at3(a->s_z, &m);
            float *op = a->out + at3(a->s_out, &m);
            const int64_t zst = a->s_z.t, ost = a->s_out.t;
            int64_t t = 0;
            for (; t + ILP_ROWS <= L; t += ILP_ROWS)
                gate_rows(zp, zst, sy, scale, op, ost, t, ILP_ROWS);
            for (; t < L; ++t) gate_rows(zp, zst, sy, scale, op, ost, t, 1);
            continue;
        }
        if (a->z) item_in(sz, a->z, a->s_z, a, &m);
        for (int64_t t = 0; t < L && (a->z || p); ++t) {  // the gate and/or the mean
            vf y = vload(sy + t * LANES) * scale;
            if (a->z) {
                const vf zt = vload(sz + t * LANES);
                y = y * zt * vsigmoid(zt);
            }
            vstore(sy + t * LANES, y);
        }
        item_out(a->out, a->s_out, sy, a, &m);
    }
}

// ---------------------------------------------------------------------------------------------
// backward: state by state, a forward pass stores that component's h_t and decay, then a
// backward pass carries its adjoint dh; per-step sums (d delta, d u, y) accumulate over states.
//
// Accuracy, held to mamba_ssm's gradient tolerances and to float32 autograd through the per-step
// recurrence (tests/ops/test_grad_grid.py):
// - The decays come from vexp, whose error vanishes as the exponent goes to 0. A decay close
//   to 1 (A near 0: a long memory) carries its relative error into every step it is applied
//   at, so a polynomial that is off by a constant there (any p(0) != 1) biases h, and the
//   adjoint dh, by that error times the memory length 1 / (1 - decay).
// - The sums over time (dA, dD, dbias: L terms per channel) go to double: dA in blocks of
//   DA_BLOCK steps summed in float32 and then added in double (the adds stay out of the hot
//   loop), dD and dbias in double directly. A sequential float32 sum over L would lose
//   digits in proportion to L.
// ---------------------------------------------------------------------------------------------

typedef double vd __attribute__((vector_size(8 * LANES)));  // LANES doubles
#define DA_BLOCK 32  // time steps per float32 block of dA (a power of 2)

static void bwd_items(const Work *w) {
    const ScanArgs *a = w->a;
    const int64_t L = a->L, N = a->N, E = a->E, G = a->G;
    float *sc = a->scratch + w->tid * a->scratch_floats;
    float *su = sc, *sd = sc + L * LANES, *sx = sc + 2 * L * LANES, *sz = sc + 3 * L * LANES;
    float *sdy = sc + 4 * L * LANES, *sgo = sc + 5 * L * LANES, *sgu = sc + 6 * L * LANES;
    float *sgd = sc + 7 * L * LANES, *sy = sc + 8 * L * LANES, *sdu = sc + 9 * L * LANES;
    float *sh = sc + 10 * L * LANES, *sdecay = sc + 11 * L * LANES;  // one state component
    float *dA_acc = a->dA_part + w->tid * E * N;
    float *dD_acc = a->dD_part + w->tid * E, *db_acc = a->dbias_part + w->tid * E;
    const int64_t t0 = a->reverse ? L - 1 : 0, dt = a->reverse ? -1 : 1;
    for (int64_t it = w->item_begin; it < w->item_end; ++it) {
        const Item m = item_of(a, it);
        const int64_t bg = m.b * G + m.g;
        const float *Bp = group_of(a->B, a->s_B, &m), *Cp = group_of(a->C, a->s_C, &m);
        const int64_t Bsn = a->s_B.n, Bst = a->s_B.t, Csn = a->s_C.n, Cst = a->s_C.t;
        float *dBp = a->dB_part + (w->tid * a->Bt * G + bg) * N * L * LANES;
        float *dCp = a->dC_part + (w->tid * a->Bt * G + bg) * N * L * LANES;
        stage_u_delta(a, &m, NULL, su, sd, sx);
        item_in(sgo, a->dout, a->s_dout, a, &m);
        if (a->z) item_in(sz, a->z, a->s_z, a, &m);
        const vf Dv = a->D ? gather_chan(a->D, &m, 1) : vsplat(0.0f);
        for (int64_t t = 0; t < L; ++t) {
            vf go = vload(sgo + t * LANES);
            if (a->z) {
                const vf zt = vload(sz + t * LANES);
                go = go * zt * vsigmoid(zt);  // the gate's share taken out
            }
            const vf ut = vload(su + t * LANES);
            vstore(sdy + t * LANES, go);
            vstore(sdu + t * LANES, vload(sd + t * LANES) * ut);
            vstore(sy + t * LANES, Dv * ut);
            vstore(sgu + t * LANES, go * Dv);
            vstore(sgd + t * LANES, vsplat(0.0f));
        }
        for (int64_t n = 0; n < N; ++n) {
            const vf An = gather_chan(a->A + n, &m, N);
            const float *Bn = Bp + n * Bsn, *Cn = Cp + n * Csn;
            float *dBn = dBp + n * L * LANES, *dCn = dCp + n * L * LANES;
            vf h = vsplat(0.0f);
            for (int64_t s = 0, t = t0; s < L; ++s, t += dt) {
                const vf d = vload(sd + t * LANES);
                const vf decay = vexp(d * An);
                h = decay * h + vload(sdu + t * LANES) * vsplat(Bn[t * Bst]);
                vstore(sh + t * LANES, h);
                vstore(sdecay + t * LANES, decay);
                vstore(sy + t * LANES, vload(sy + t * LANES) + h * vsplat(Cn[t * Cst]));
            }
            vf dh = vsplat(0.0f), dA_block = vsplat(0.0f);
            vd dAn = {0};
            if (a->dlast)
                for (int64_t k = 0; k < m.lanes; ++k) dh[k] = a->dlast[(m.b * E + m.e0 + k) * N + n];
            for (int64_t s = L - 1, t = t0 + (L - 1) * dt; s >= 0; --s, t -= dt) {
                const vf dy = vload(sdy + t * LANES), d = vload(sd + t * LANES);
                const vf Bt = vsplat(Bn[t * Bst]);
                const vf hprev = s > 0 ? vload(sh + (t - dt) * LANES) : vsplat(0.0f);
                const vf decay = vload(sdecay + t * LANES);
                const vf dhn = dh + dy * vsplat(Cn[t * Cst]);
                vstore(dCn + t * LANES, vload(dCn + t * LANES) + dy * vload(sh + t * LANES));
                vstore(dBn + t * LANES, vload(dBn + t * LANES) + dhn * vload(sdu + t * LANES));
                const vf gh = dhn * decay * hprev;  // d loss / d (d * A_n)
                vstore(sgd + t * LANES, vload(sgd + t * LANES) + gh * An + dhn * vload(su + t * LANES) * Bt);
                vstore(sgu + t * LANES, vload(sgu + t * LANES) + dhn * d * Bt);
                dA_block += gh * d;
                if ((s & (DA_BLOCK - 1)) == 0) {  // s counts down to 0: the last block flushes too
                    dAn += __builtin_convertvector(dA_block, vd);
                    dA_block = vsplat(0.0f);
                }
                dh = dhn * decay;
            }
            for (int64_t k = 0; k < m.lanes; ++k) dA_acc[(m.e0 + k) * N + n] += (float)dAn[k];
        }
        vd dD = {0}, dbias = {0};
        for (int64_t t = 0; t < L; ++t) {
            const vf ut = vload(su + t * LANES);
            vf dd = vload(sgd + t * LANES);
            if (a->delta_softplus) {
                const vf x = vload(sx + t * LANES);
                dd = vselect(x > vsplat(20.0f), dd, dd * vsigmoid(x));
            }
            dd = vselect(m.valid, dd, vsplat(0.0f));
            vstore(sgd + t * LANES, dd);
            dbias += __builtin_convertvector(dd, vd);
            dD += __builtin_convertvector(vload(sdy + t * LANES) * ut, vd);
            if (a->z) {  // dz reuses the dy slot: dy is not read after this step
                const vf zt = vload(sz + t * LANES), sg = vsigmoid(zt);
                vstore(sdy + t * LANES, vload(sgo + t * LANES) * vload(sy + t * LANES) * sg *
                                        (vsplat(1.0f) + zt * (vsplat(1.0f) - sg)));
            }
        }
        item_out(a->du, a->s_du, sgu, a, &m);
        item_out(a->ddelta, a->s_ddelta, sgd, a, &m);
        if (a->z) item_out(a->dz, a->s_dz, sdy, a, &m);
        for (int64_t k = 0; k < m.lanes; ++k) {
            dD_acc[m.e0 + k] += (float)dD[k];
            db_acc[m.e0 + k] += (float)dbias[k];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// threads
// ---------------------------------------------------------------------------------------------

int64_t vimc_scan_items(const ScanArgs *a) {
    return a->Bt * a->G * ((a->E / a->G + LANES - 1) / LANES);
}

// fn(ctx, tid, begin, end) over [0, n) on up to T threads (at most 64, and no more than there
// are pieces), the calling thread as tid 0:
// - chunk 0: thread i of m does the contiguous share [n i / m, n (i + 1) / m) in one call, so
//   which thread computes what is fixed: the backward's per-thread partial sums then add up in
//   the same order on every run;
// - chunk > 0: the threads take chunks of that many from a shared counter until none is left,
//   so a thread whose core is slowed by something else (a shared VM's neighbour, another
//   process) takes fewer. The forward scan's items: on a Zen 4 worker whose two cores took
//   turns running 25% slow, less median time per call than the static shares at batch 1 and
//   8, the same best times (benchmarks/results/scan_builds-amd-epyc-family-25-model-17-2c-*).
typedef void (*ShareFn)(const void *ctx, int64_t tid, int64_t begin, int64_t end);
typedef struct {
    ShareFn fn;
    const void *ctx;
    int64_t n, chunk;
    _Atomic int64_t next;  // the first item no thread has taken yet (chunk > 0)
} Split;
static void split_run(Split *s, int64_t tid, int64_t m) {
    if (!s->chunk) {
        s->fn(s->ctx, tid, s->n * tid / m, s->n * (tid + 1) / m);
        return;
    }
    for (;;) {
        const int64_t b = atomic_fetch_add_explicit(&s->next, s->chunk, memory_order_relaxed);
        if (b >= s->n) return;
        s->fn(s->ctx, tid, b, b + s->chunk < s->n ? b + s->chunk : s->n);
    }
}
static int64_t split_threads(int64_t n, int64_t T, int64_t chunk) {
    const int64_t pieces = chunk ? (n + chunk - 1) / chunk : n;
    if (T > 64) T = 64;
    if (T > pieces) T = pieces;
    return T < 1 ? 1 : T;
}

#ifdef _OPENMP
#include <omp.h>
// OpenMP build: cpu.py loads this library after torch, so "libgomp.so.1" resolves to the
// runtime torch already uses, and the kernels run on torch's warm thread pool: starting fresh
// threads on every call would cost more than a Vim-sized scan gains from them.
static void run_split(int64_t n, int64_t T, int64_t chunk, ShareFn fn, const void *ctx) {
    Split s = {fn, ctx, n, chunk, 0};
#pragma omp parallel num_threads((int)split_threads(n, T, chunk))
    split_run(&s, omp_get_thread_num(), omp_get_num_threads());
}
#else
typedef struct {
    Split *s;
    int64_t tid, m;
} SplitThread;
static void *split_entry(void *p) {
    const SplitThread *t = (const SplitThread *)p;
    split_run(t->s, t->tid, t->m);
    return NULL;
}
static void run_split(int64_t n, int64_t T, int64_t chunk, ShareFn fn, const void *ctx) {
    Split s = {fn, ctx, n, chunk, 0};
    T = split_threads(n, T, chunk);
    SplitThread w[64];
    pthread_t th[64];
    int started[64] = {0};
    for (int64_t i = 0; i < T; ++i) w[i] = (SplitThread){&s, i, T};
    for (int64_t i = 1; i < T; ++i)
        started[i] = pthread_create(&th[i], NULL, split_entry, &w[i]) == 0;
    for (int64_t i = 1; i < T; ++i)
        if (!started[i]) split_entry(&w[i]);  // no thread to be had: do its share here
    split_entry(&w[0]);
    for (int64_t i = 1; i < T; ++i)
        if (started[i]) pthread_join(th[i], NULL);
}
#endif

// a scan's items shared out: thread tid runs fwd_items or bwd_items on its items
typedef struct {
    const ScanArgs *a;
    void (*items)(const Work *);
} ScanJob;
static void scan_share(const void *ctx, int64_t tid, int64_t begin, int64_t end) {
    const ScanJob *j = (const ScanJob *)ctx;
    const Work w = {j->a, tid, begin, end};
    j->items(&w);
}
// The forward's items in chunks (each item's outputs are its own, so the result does not depend
// on which thread runs it): about 8 per thread, in whole 64-byte lines of a token-major row
// (two 8-lane items share one; threads writing the same line would take it from each other).
#define CHUNKS_PER_THREAD 8
#define ITEMS_PER_LINE (LANES >= 16 ? 1 : 16 / LANES)
static void run_parallel(const ScanArgs *a, void (*items)(const Work *), int dynamic) {
    const ScanJob j = {a, items};
    const int64_t n = vimc_scan_items(a);  // a->nthreads >= 1 (sizes_ok)
    int64_t chunk = 0;
    if (dynamic) {
        chunk = n / (a->nthreads * CHUNKS_PER_THREAD) / ITEMS_PER_LINE * ITEMS_PER_LINE;
        if (chunk < ITEMS_PER_LINE) chunk = ITEMS_PER_LINE;
    }
    run_split(n, a->nthreads, chunk, scan_share, &j);
}

#define FWD_SCRATCH_ROWS 5   // (L, LANES) rows per thread that fwd_items uses
#define BWD_SCRATCH_ROWS 12  // and bwd_items

// The entry points refuse (return -1) sizes their loops cannot take, a last line behind the
// caller's checks (cpu.py's check_scan_args): every size >= 1 (an empty scan never gets
// here), G dividing E, a dt_proj rank in [1, MAX_R], and a scratch of `rows` (L, LANES) rows
// per thread.
static int sizes_ok(const ScanArgs *a, int64_t rows) {
    return a->Bt >= 1 && a->E >= 1 && a->L >= 1 && a->N >= 1 && a->G >= 1 && a->E % a->G == 0 &&
           (!a->dt_proj || (a->R >= 1 && a->R <= MAX_R)) && a->nthreads >= 1 && a->scratch &&
           a->scratch_floats >= rows * a->L * LANES;
}

int vimc_scan_fwd(const ScanArgs *a) {
    const ScanArgs *p = (const ScanArgs *)a->pair;  // sized like a: fwd_items trusts it
    const int same = !p || (p->Bt == a->Bt && p->E == a->E && p->L == a->L && p->N == a->N &&
                            p->G == a->G && (!p->dt_proj || (p->R >= 1 && p->R <= MAX_R)));
    if (!sizes_ok(a, FWD_SCRATCH_ROWS) || !same) return -1;
    run_parallel(a, fwd_items, 1);
    return 0;
}
int vimc_scan_bwd(const ScanArgs *a) {  // dt_proj is forward-only
    if (!sizes_ok(a, BWD_SCRATCH_ROWS) || a->dt_proj) return -1;
    run_parallel(a, bwd_items, 0);  // static: the partial sums' order fixed
    return 0;
}
int64_t vimc_scan_abi(void) { return (int64_t)sizeof(ScanArgs) * 1000 + LANES; }
int64_t vimc_scan_lanes(void) { return LANES; }
// the bounded case's decay form named ("exp2", "exp2-scalef", "exp2-table") if this build has
// it, else -1
static int built_form_named(const char *name) {
    for (int f = DECAY_EXP2; name && f <= DECAY_EXP2_TABLE; ++f)
        if (bounded_form_built(f) && strcmp(name, DECAY_NAMES[f]) == 0) return f;
    return -1;
}
int vimc_scan_has_decay(const char *name) { return built_form_named(name) >= 0; }
// sets the bounded case's form (see bounded_decay): 0, or -1 where this build lacks it
int vimc_scan_set_decay(const char *name) {
    const int f = built_form_named(name);
    if (f < 0) return -1;
    atomic_store_explicit(&bounded_decay, f, memory_order_relaxed);
    return 0;
}
const char *vimc_scan_decay(void) {
    return DECAY_NAMES[atomic_load_explicit(&bounded_decay, memory_order_relaxed)];
}

// ---------------------------------------------------------------------------------------------
// Vim's two depthwise convolutions over time, each followed by silu, in one pass over x (the
// mixer's conv before x_proj and the scans; benchmarks/conv.py times it against Inductor's):
//   out[b, t, e]   = silu(sum_k w[e, k]   x[b, t - (K-1) + k, e] + bias[e])     (causal)
//   out_b[b, t, e] = silu(sum_k w_b[e, k] x[b, t + (K-1) - k, e] + bias_b[e])   (anti-causal)
// steps outside [0, L) reading as 0, the terms summed in that order in float32, as
// layers._shifted_sum does. Work is split by (b, t) rows; a row's channels run LANES at a time,
// the last block of a row with E % LANES channels through a zero-padded vector.
// ---------------------------------------------------------------------------------------------

typedef struct {
    const float *x;            // (B, L, E): element (b, t, e) at b * sb + t * st + e
    int64_t B, L, E, K, sb, st;
    const float *taps;         // (2, K, Ep) lane-major: taps[(d * K + k) * Ep + e] = w_d[e, k]
    const float *bias;         // (2, Ep), zeros where a direction has none
    float *out, *out_b;        // (B, L, E) contiguous
    int64_t Ep;                // E rounded up to LANES (the padding lanes hold zeros)
} ConvJob;

// LANES channels of x at step t from e (n of them real, the rest 0)
static inline vf conv_load(const float *xb, int64_t t, int64_t st, int64_t e, int64_t n) {
    if (n == LANES) return vload(xb + t * st + e);
    vf v = vsplat(0.0f);
    for (int64_t k = 0; k < n; ++k) v[k] = xb[t * st + e + k];
    return v;
}
static inline void conv_store(float *p, vf v, int64_t n) {
    if (n == LANES) {
        vstore(p, v);
        return;
    }
    for (int64_t k = 0; k < n; ++k) p[k] = v[k];
}

// one block of n <= LANES channels from e of row (b, t): both directions' sums and silu
static inline __attribute__((always_inline)) void conv_block(
    const float *xb, int64_t t, int64_t L, int64_t K, int64_t st, const float *tf, const float *tb,
    const float *bias, int64_t Ep, int64_t e, int64_t n, float *of, float *ob) {
    vf af = vsplat(0.0f), ab = vsplat(0.0f);
    for (int64_t k = 0; k < K; ++k) {
        const int64_t sf = t - (K - 1) + k, sbk = t + (K - 1) - k;  // the steps read
        if (sf >= 0) af += vload(tf + k * Ep + e) * conv_load(xb, sf, st, e, n);
        if (sbk < L) ab += vload(tb + k * Ep + e) * conv_load(xb, sbk, st, e, n);
    }
    vf g[2] = {af + vload(bias + e), ab + vload(bias + Ep + e)};
    const vf pre[2] = {g[0], g[1]};
    vsigmoid_n(g, 2);
    conv_store(of + e, pre[0] * g[0], n);
    conv_store(ob + e, pre[1] * g[1], n);
}

static void conv_rows(const void *ctx, int64_t tid, int64_t begin, int64_t end) {
    (void)tid;
    const ConvJob *j = (const ConvJob *)ctx;
    const float *x = j->x, *taps = j->taps, *bias = j->bias;
    float *out = j->out, *out_b = j->out_b;
    const int64_t L = j->L, E = j->E, K = j->K, sb = j->sb, st = j->st, Ep = j->Ep;
    const int64_t full = E / LANES * LANES;  // channels in whole blocks
    for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / L, t = row % L;
        const float *xb = x + b * sb;
        float *of = out + row * E, *ob = out_b + row * E;
        for (int64_t e = 0; e < full; e += LANES)
            conv_block(xb, t, L, K, st, taps, taps + K * Ep, bias, Ep, e, LANES, of, ob);
        if (full < E)
            conv_block(xb, t, L, K, st, taps, taps + K * Ep, bias, Ep, full, E - full, of, ob);
    }
}

// Returns -1 for sizes it cannot take (a last line behind conv.py's checks, which also hold x's
// storage to its strides: every size >= 1, strides >= 0) or when the lane-major copy of the
// taps cannot be allocated; 0 when out and out_b are written. w, w_b: (E, K) contiguous; bias,
// bias_b: (E,) or NULL.
int vimc_conv_silu_pair(const float *x, int64_t B, int64_t L, int64_t E, int64_t sb,
                        int64_t st, const float *w, const float *bias, const float *w_b,
                        const float *bias_b, int64_t K, float *out, float *out_b,
                        int64_t nthreads) {
    if (B < 1 || L < 1 || E < 1 || K < 1 || sb < 0 || st < 0 || nthreads < 1) return -1;
    const int64_t Ep = (E + LANES - 1) / LANES * LANES;
    float *lanes = calloc((size_t)(2 * (K + 1) * Ep), sizeof(float));
    if (!lanes) return -1;
    const float *ws[2] = {w, w_b}, *bs[2] = {bias, bias_b};
    for (int d = 0; d < 2; ++d) {
        for (int64_t e = 0; e < E; ++e)
            for (int64_t k = 0; k < K; ++k) lanes[(d * K + k) * Ep + e] = ws[d][e * K + k];
        if (bs[d])
            for (int64_t e = 0; e < E; ++e) lanes[2 * K * Ep + d * Ep + e] = bs[d][e];
    }
    const ConvJob j = {x, B, L, E, K, sb, st, lanes, lanes + 2 * K * Ep, out, out_b, Ep};
    run_split(B * L, nthreads, 0, conv_rows, &j);
    free(lanes);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// a Vim mixer's core in one call: both directions' conv + silu, x_proj, dt_proj + softplus,
// scan (+ D u), and the gated mean, from the in_proj output xz to the out_proj input. The
// separate ops write u (both directions) and x_proj's output to memory and read them back;
// here each (batch row, direction) walks its tokens in chunks of MIXER_CHUNK, and a chunk's u
// and x_proj rows stay in this thread's scratch (L1/L2) for its scan. The state of all E
// channels carries from chunk to chunk, so a direction's chunks run in its time order.
// Work: with at least as many batch rows as threads, a task is one batch row, the forward
// direction's y kept in the thread's (L, E) buffer and the reverse one gated straight into
// out; with fewer (batch 1 on two threads), a task is one (row, direction), y to memory,
// then a gate pass over all rows.
// ---------------------------------------------------------------------------------------------

#define MIXER_CHUNK 16  // tokens per chunk: u (16, E) and x_proj rows (16, W) stay in cache
#define XPROJ_VECS 6    // x_proj output vectors per pass: 2 rows x 6 accumulators + 6 weights

typedef struct {  // every field 8 bytes: mixer.py packs them as int64 words (cpu._MixerArgs)
    const float *xz;            // (B, L, 2E) contiguous: x = [..., :E], z = [..., E:]
    int64_t B, L, E, N, R, K, nthreads;
    const float *conv_w[2];     // (E, K) contiguous, per direction (forward, reverse)
    const float *conv_b[2];     // (E,) contiguous
    const float *x_proj[2];     // (R + 2N, E) contiguous: rows dt (R), B (N), C (N)
    const float *dt_w[2];       // (E, R) contiguous
    const float *dt_b[2];       // (E,) contiguous
    const float *A[2];          // (E, N) contiguous
    const float *D[2];          // (E,) contiguous
    float *out;                 // (B, L, E) contiguous
    float *y;                   // (2, B, L, E) contiguous, used when B < nthreads
    float *scratch;             // (nthreads, scratch_floats)
    int64_t scratch_floats;     // per thread: vimc_mixer_scratch(...)
    float *shared;              // vimc_mixer_shared(...) floats: the parameters' layouts
} MixerArgs;

static inline int64_t mixer_width(int64_t R, int64_t N) {  // x_proj rows padded to LANES
    return (R + 2 * N + LANES - 1) / LANES * LANES;
}

// per-thread scratch, in this order: u (T, E), x_proj rows (T, W), states (E, N), d, d*u and y
// (T, LANES) each, and the forward direction's y (L, E) for row tasks
int64_t vimc_mixer_scratch(int64_t L, int64_t E, int64_t N, int64_t R) {
    const int64_t T = MIXER_CHUNK, W = mixer_width(R, N);
    return T * E + T * W + E * N + 3 * T * LANES + L * E;
}
// the shared part (MixerArgs.shared), each direction's parameters laid out for the loops, made
// once per call and read by every thread: x_proj^T (E, W) with zero padding columns, dt_proj
// lane-major (E / LANES, R, LANES), A lane-major (E / LANES, N, LANES), the conv taps (K, E),
// and per block of A what decay_form_of reads of it (E / LANES, 2, LANES): its AStats' ok mask
// (as float bits) and amin
static inline int64_t mixer_params(int64_t E, int64_t N, int64_t R, int64_t K) {
    return E * mixer_width(R, N) + E * R + E * N + K * E + 2 * E;
}
int64_t vimc_mixer_shared(int64_t E, int64_t N, int64_t R, int64_t K) {
    return 2 * mixer_params(E, N, R, K);
}
static float *mixer_params_of(const MixerArgs *c, int rev) {
    return c->shared + rev * mixer_params(c->E, c->N, c->R, c->K);
}
static void mixer_stage(const void *ctx, int64_t tid, int64_t begin, int64_t end) {
    (void)tid;
    const MixerArgs *c = (const MixerArgs *)ctx;
    const int64_t E = c->E, N = c->N, R = c->R, K = c->K, W = mixer_width(R, N), Wr = R + 2 * N;
    for (int64_t rev = begin; rev < end; ++rev) {
        float *xpt = mixer_params_of(c, (int)rev), *wst = xpt + E * W, *ak = wst + E * R;
        float *ctp = ak + E * N, *ast = ctp + K * E;
        const float *xp = c->x_proj[rev], *dtw = c->dt_w[rev], *A = c->A[rev];
        const float *cw = c->conv_w[rev];
        for (int64_t w = 0; w < W; ++w)  // rows of x_proj read in order
            for (int64_t e = 0; e < E; ++e) xpt[e * W + w] = w < Wr ? xp[w * E + e] : 0.0f;
        for (int64_t e = 0; e < E; ++e) {
            const int64_t j = e / LANES, k = e % LANES;
            for (int64_t r = 0; r < R; ++r) wst[(j * R + r) * LANES + k] = dtw[e * R + r];
            for (int64_t n = 0; n < N; ++n) ak[(j * N + n) * LANES + k] = A[e * N + n];
            for (int64_t q = 0; q < K; ++q) ctp[q * E + e] = cw[e * K + q];
        }
        for (int64_t j = 0; j < E / LANES; ++j) {  // fixed for the call: not redone per chunk
            AStats as = astats_new();
            for (int64_t n = 0; n < N; ++n) astats_add(&as, vload(ak + (j * N + n) * LANES));
            vstore(ast + j * 2 * LANES, (vf)as.ok);
            vstore(ast + j * 2 * LANES + LANES, as.amin);
        }
    }
}

// nb (<= NB) state components n.. of block j over a chunk's nt steps (in the direction's
// order), states carried in hb; B and C broadcast from the chunk's x_proj rows xd (T, W)
static inline __attribute__((always_inline)) void mixer_states(
    const float *ak, float *hb, const float *xd, const float *sd, const float *sdu, float *sy,
    int64_t j, int64_t n, const int nb, int64_t N, int64_t R, int64_t W, int64_t nt,
    int64_t rev, const int form) {
    vf Ak[NB], h[NB] = {0};
    vf tbl = vsplat(0.0f);
#ifdef HAVE_EXP2_TABLE
    if (form == DECAY_EXP2_TABLE) tbl = vload((const float *)EXP2_TABLE);
#endif
    for (int q = 0; q < nb; ++q) {
        Ak[q] = vload(ak + (j * N + n + q) * LANES) * vsplat(AK_SCALE(form));
        h[q] = vload(hb + (j * N + n + q) * LANES);
    }
    const float *Bx = xd + R + n, *Cx = xd + R + N + n;  // row i's B_n at Bx[i * W]
    for (int64_t s = 0; s < nt; ++s) {
        const int64_t i = rev ? nt - 1 - s : s;
        const vf d = vload(sd + i * LANES), du = vload(sdu + i * LANES);
        vf y = vload(sy + i * LANES);
        for (int q = 0; q < nb; ++q) {
            const vf decay = decay_of(d * Ak[q], form, tbl);
            h[q] = decay * h[q] + du * vsplat(Bx[i * W + q]);
            y += h[q] * vsplat(Cx[i * W + q]);
        }
        vstore(sy + i * LANES, y);
    }
    for (int q = 0; q < nb; ++q) vstore(hb + (j * N + n + q) * LANES, h[q]);
}

static inline __attribute__((always_inline)) void mixer_pass(
    const float *ak, float *hb, const float *xd, const float *sd, const float *sdu, float *sy,
    int64_t j, int64_t n, const int nb, int64_t N, int64_t R, int64_t W, int64_t nt,
    int64_t rev, int form) {
#define MIXER_FORM(f) mixer_states(ak, hb, xd, sd, sdu, sy, j, n, nb, N, R, W, nt, rev, f)
    switch (form) {
    case DECAY_EXP: MIXER_FORM(DECAY_EXP); break;
    case DECAY_EXP2_CLAMP: MIXER_FORM(DECAY_EXP2_CLAMP); break;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    case DECAY_EXP2_SCALEF: MIXER_FORM(DECAY_EXP2_SCALEF); break;
#endif
#ifdef HAVE_EXP2_TABLE
    case DECAY_EXP2_TABLE: MIXER_FORM(DECAY_EXP2_TABLE); break;
#endif
    default: MIXER_FORM(DECAY_EXP2);
    }
#undef MIXER_FORM
}

// x_proj outputs v0 .. v0 + m - 1 (vectors; m a constant after inlining, so the 2m accumulators
// stay in registers) of rows i and i + 1 (i alone where u1 is NULL)
static inline __attribute__((always_inline)) void xproj_vecs(
    const float *u0, const float *u1, const float *xpt, float *x0, float *x1, int64_t E,
    int64_t W, int64_t v0, const int m) {
    vf a0[XPROJ_VECS] = {0}, a1[XPROJ_VECS] = {0};
    for (int64_t e = 0; e < E; ++e) {
        const vf b0 = vsplat(u0[e]), b1 = vsplat(u1 ? u1[e] : 0.0f);
        const float *wr = xpt + e * W + v0 * LANES;  // (m, LANES) of x_proj^T's row e
        for (int v = 0; v < m; ++v) {
            const vf wv = vload(wr + v * LANES);
            a0[v] += b0 * wv;
            a1[v] += b1 * wv;
        }
    }
    for (int v = 0; v < m; ++v) {
        vstore(x0 + (v0 + v) * LANES, a0[v]);
        if (u1) vstore(x1 + (v0 + v) * LANES, a1[v]);
    }
}

// x_proj for a chunk: xd[i, :W] = us[i, :] . xpt (E, W), two rows per pass, XPROJ_VECS output
// vectors at a time (the padding columns of xpt are 0)
static void mixer_xproj(const float *us, const float *xpt, float *xd, int64_t nt, int64_t E,
                        int64_t W) {
    const int64_t nv = W / LANES;
    for (int64_t i = 0; i < nt; i += 2) {
        const float *u0 = us + i * E, *u1 = i + 1 < nt ? u0 + E : NULL;
        float *x0 = xd + i * W, *x1 = x0 + W;
        for (int64_t v0 = 0; v0 < nv; v0 += XPROJ_VECS) {
            switch (nv - v0 < XPROJ_VECS ? nv - v0 : XPROJ_VECS) {
            case 1: xproj_vecs(u0, u1, xpt, x0, x1, E, W, v0, 1); break;
            case 2: xproj_vecs(u0, u1, xpt, x0, x1, E, W, v0, 2); break;
            case 3: xproj_vecs(u0, u1, xpt, x0, x1, E, W, v0, 3); break;
            case 4: xproj_vecs(u0, u1, xpt, x0, x1, E, W, v0, 4); break;
            case 5: xproj_vecs(u0, u1, xpt, x0, x1, E, W, v0, 5); break;
            default: xproj_vecs(u0, u1, xpt, x0, x1, E, W, v0, XPROJ_VECS);
            }
        }
    }
}

// one direction of batch row b: y rows (D u + <h_t, C_t>) to y (L, E); or, with y_fwd set (the
// forward direction's y), the gated mean (y_fwd + y) / 2 * silu(z) to out
static void mixer_direction(const MixerArgs *c, int64_t tid, int64_t b, int rev, float *y,
                            const float *y_fwd) {
    const int64_t L = c->L, E = c->E, N = c->N, R = c->R, K = c->K, T = MIXER_CHUNK;
    const int64_t W = mixer_width(R, N), st = 2 * E, nblk = E / LANES;
    const float *xb = c->xz + b * L * st;  // (L, 2E) of this row
    float *us = c->scratch + tid * c->scratch_floats;               // (T, E)
    float *xd = us + T * E, *hb = xd + T * W;                        // (T, W), (E, N)
    float *sd = hb + E * N, *sdu = sd + T * LANES, *sy = sdu + T * LANES;  // (T, LANES) each
    const float *xpt = mixer_params_of(c, rev), *wst = xpt + E * W;  // (E, W), (E, R)
    const float *ak = wst + E * R, *ctp = ak + E * N;                 // (E, N), (K, E)
    const float *ast = ctp + K * E;                                   // (E / LANES, 2, LANES)
    const float *cb = c->conv_b[rev], *dtb = c->dt_b[rev], *Dp = c->D[rev];
    memset(hb, 0, sizeof(float) * (size_t)(E * N));
    const int64_t chunks = (L + T - 1) / T;
    for (int64_t ci = 0; ci < chunks; ++ci) {
        const int64_t t0 = (rev ? chunks - 1 - ci : ci) * T, nt = t0 + T <= L ? T : L - t0;
        // conv + silu: us[i, e] = silu(b_e + sum_k w_ek x[s_k]), the conv op's sum order
        for (int64_t i = 0; i < nt; ++i) {
            const int64_t t = t0 + i;
            for (int64_t e = 0; e < E; e += LANES) {
                vf acc = vsplat(0.0f);
                for (int64_t q = 0; q < K; ++q) {
                    const int64_t s = rev ? t + (K - 1) - q : t - (K - 1) + q;  // the step read
                    if (s >= 0 && s < L) acc += vload(ctp + q * E + e) * vload(xb + s * st + e);
                }
                vf g = acc + vload(cb + e);
                const vf pre = g;
                vsigmoid_n(&g, 1);
                vstore(us + i * E + e, pre * g);
            }
        }
        mixer_xproj(us, xpt, xd, nt, E, W);
        for (int64_t j = 0; j < nblk; ++j) {
            const int64_t e0 = j * LANES;
            const vf bias = vload(dtb + e0), Dv = vload(Dp + e0);
            DStats ds = dstats_new();
            for (int64_t i = 0; i < nt; i += PROJ_ROWS) {  // delta, softplus, d u, D u
                vf raw[PROJ_ROWS];
                const int64_t m = nt - i < PROJ_ROWS ? nt - i : PROJ_ROWS;
                if (m == PROJ_ROWS) {
                    project(wst + j * R * LANES, R, xd + i * W, 1, W, PROJ_ROWS, raw);
                    EACH(q, PROJ_ROWS) raw[q] += bias;
                    vsoftplus_n(raw, PROJ_ROWS);
                } else {
                    for (int64_t q = 0; q < m; ++q) {
                        project(wst + j * R * LANES, R, xd + (i + q) * W, 1, W, 1, raw + q);
                        raw[q] = vsoftplus(raw[q] + bias);
                    }
                }
                for (int64_t q = 0; q < m; ++q) {
                    const vf u = vload(us + (i + q) * E + e0);
                    dstats_add(&ds, raw[q]);
                    vstore(sd + (i + q) * LANES, raw[q]);
                    vstore(sdu + (i + q) * LANES, raw[q] * u);
                    vstore(sy + (i + q) * LANES, Dv * u);
                }
            }
            // decay_form's test on this block's A (its stats laid out by mixer_stage) and d
            const AStats as = {(vi)vload(ast + j * 2 * LANES), vload(ast + j * 2 * LANES + LANES)};
            const int form = decay_form_of(as, &ds, 0);
            int64_t n = 0;
            for (; n + NB <= N; n += NB)
                mixer_pass(ak, hb, xd, sd, sdu, sy, j, n, NB, N, R, W, nt, rev, form);
            for (; n < N; ++n) mixer_pass(ak, hb, xd, sd, sdu, sy, j, n, 1, N, R, W, nt, rev, form);
            if (!y_fwd) {
                for (int64_t i = 0; i < nt; ++i) vstore(y + (t0 + i) * E + e0, vload(sy + i * LANES));
                continue;
            }
            vf z[PROJ_ROWS], g[PROJ_ROWS];
            for (int64_t i = 0; i < nt; i += PROJ_ROWS) {  // the gate, PROJ_ROWS rows side by side
                const int64_t m = nt - i < PROJ_ROWS ? nt - i : PROJ_ROWS;
                for (int64_t q = 0; q < PROJ_ROWS; ++q)
                    g[q] = z[q] = q < m ? vload(xb + (t0 + i + q) * st + E + e0) : vsplat(0.0f);
                vsigmoid_n(g, PROJ_ROWS);
                for (int64_t q = 0; q < m; ++q) {
                    const int64_t t = t0 + i + q;
                    const vf sum = vload(y_fwd + t * E + e0) + vload(sy + (i + q) * LANES);
                    vstore(c->out + (b * L + t) * E + e0, sum * vsplat(0.5f) * z[q] * g[q]);
                }
            }
        }
    }
}

static void mixer_rows(const void *ctx, int64_t tid, int64_t begin, int64_t end) {
    const MixerArgs *c = (const MixerArgs *)ctx;
    float *y_fwd = c->scratch + tid * c->scratch_floats + c->scratch_floats - c->L * c->E;
    for (int64_t b = begin; b < end; ++b) {
        mixer_direction(c, tid, b, 0, y_fwd, NULL);
        mixer_direction(c, tid, b, 1, NULL, y_fwd);
    }
}

static void mixer_halves(const void *ctx, int64_t tid, int64_t begin, int64_t end) {
    const MixerArgs *c = (const MixerArgs *)ctx;
    for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / 2, rev = task % 2;
        mixer_direction(c, tid, b, (int)rev, c->y + (rev * c->B + b) * c->L * c->E, NULL);
    }
}

static void mixer_gate(const void *ctx, int64_t tid, int64_t begin, int64_t end) {
    (void)tid;
    const MixerArgs *c = (const MixerArgs *)ctx;
    const int64_t E = c->E, BL = c->B * c->L;
    for (int64_t row = begin; row < end; ++row) {
        const float *zp = c->xz + row * 2 * E + E, *y0 = c->y + row * E, *y1 = y0 + BL * E;
        float *op = c->out + row * E;
        for (int64_t e = 0; e < E; e += LANES) {
            vf g = vload(zp + e);
            const vf z = g;
            vsigmoid_n(&g, 1);
            vstore(op + e, (vload(y0 + e) + vload(y1 + e)) * vsplat(0.5f) * z * g);
        }
    }
}

// every field's byte offset, in the order cpu.py's _MixerArgs names them, then the struct's
// size: cpu.py compares them with its own when it loads the library, so a field moved, added or
// resized on one side only fails there, by name, rather than a call reading the wrong pointer
static const int64_t MIXER_LAYOUT[] = {
    offsetof(MixerArgs, xz),      offsetof(MixerArgs, B),        offsetof(MixerArgs, L),
    offsetof(MixerArgs, E),       offsetof(MixerArgs, N),        offsetof(MixerArgs, R),
    offsetof(MixerArgs, K),       offsetof(MixerArgs, nthreads), offsetof(MixerArgs, conv_w),
    offsetof(MixerArgs, conv_b),  offsetof(MixerArgs, x_proj),   offsetof(MixerArgs, dt_w),
    offsetof(MixerArgs, dt_b),    offsetof(MixerArgs, A),        offsetof(MixerArgs, D),
    offsetof(MixerArgs, out),     offsetof(MixerArgs, y),        offsetof(MixerArgs, scratch),
    offsetof(MixerArgs, scratch_floats), offsetof(MixerArgs, shared), sizeof(MixerArgs)};
int64_t vimc_mixer_layout(int64_t i) {  // entry i of MIXER_LAYOUT, -1 past its end
    const int64_t n = (int64_t)(sizeof MIXER_LAYOUT / sizeof MIXER_LAYOUT[0]);
    return i >= 0 && i < n ? MIXER_LAYOUT[i] : -1;
}

// Returns -1 for sizes it cannot take (a last line behind mixer.py's checks: every size >= 1,
// E a multiple of LANES, R <= MAX_R, scratch_floats at least vimc_mixer_scratch's, y where
// B < nthreads), 0 when out is written. That the scratch holds nthreads such parts and shared
// vimc_mixer_shared floats is the caller's to ensure: C cannot see their ends.
int vimc_mixer_fwd(const MixerArgs *c) {
    if (c->B < 1 || c->L < 1 || c->E < 1 || c->N < 1 || c->R < 1 || c->K < 1 ||
        c->nthreads < 1 || c->E % LANES || c->R > MAX_R || !c->scratch || !c->shared ||
        c->scratch_floats < vimc_mixer_scratch(c->L, c->E, c->N, c->R) ||
        (c->B < c->nthreads && !c->y))
        return -1;
    run_split(2, c->nthreads, 0, mixer_stage, c);  // each direction's parameters laid out
    if (c->B >= c->nthreads) {
        run_split(c->B, c->nthreads, 1, mixer_rows, c);
        return 0;
    }
    run_split(2 * c->B, c->nthreads, 1, mixer_halves, c);
    run_split(c->B * c->L, c->nthreads, 0, mixer_gate, c);
    return 0;
}
