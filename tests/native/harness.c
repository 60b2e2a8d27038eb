// The CPU scan kernel (ops/selective_scan/cpu_kernel.c) against a plain scalar recurrence in
// double precision, driven from C: no Python, no torch, so the same file runs on any target a
// C compiler reaches (natively for each x86-64 level, under qemu-aarch64 for ARM).
//
//   cc -O2 -pthread -std=c11 <the kernel's float flags> -march=... harness.c -o harness -lm
//   ./harness            # prints the ISA it was built for, one line per failure, a summary
//
// The kernel is included as source, so the harness is one translation unit built with the
// flags under test and reads the kernel's own ScanArgs: a field renamed there fails to build
// here instead of passing garbage through an out-of-date copy of the struct.
//
// Cases (besides the fused conv pair's and the mixer core's: run_conv_case, run_mixer_case): every combination of the options
// (bias, softplus, D, z, reverse, pair = Vim's two directions in one call, proj = dt_proj
// applied by the kernel, forward only) on each size in
// SIZES (odd L, L = 1, full and partial blocks of LANES channels,
// groups, N = 1 and N = MAX_D_STATE), in three memory layouts (channel-major, token-major
// views of (Bt, L, E) memory, non-contiguous padded strides), with 1 and 3 threads. The
// forward output and last state are checked in every case, the backward (which takes no pair)
// in every case without a pair. Every third size draws A wide enough that the forward's decays
// need their clamp; AVX-512 builds run every case with both forms of the unclamped decays. Inputs come from a fixed-seed PRNG: a failure reproduces.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cpu_kernel.c"

#define MAX_D_STATE 256  // ops/selective_scan/_checks.py's bound on N
// the scan tests' float32 bounds: max |kernel - reference| over max |reference|, per tensor
#define FWD_TOL 2e-5
#define BWD_TOL 1e-4

#if defined(__aarch64__)
#define ISA "aarch64 (NEON, portable vector path, 8 lanes)"
#elif defined(__AVX512F__)
#define ISA "x86-64-v4 (AVX-512 intrinsics path, 16 lanes)"
#elif defined(__AVX2__) && defined(__FMA__)
#define ISA "x86-64-v3 (AVX2+FMA intrinsics path, 8 lanes)"
#elif defined(__x86_64__)
#define ISA "x86-64 generic (SSE2, portable vector path, 8 lanes)"
#else
#define ISA "other (portable vector path)"
#endif

// ---------------------------------------------------------------------------------------------
// inputs
// ---------------------------------------------------------------------------------------------

static uint64_t rng_state = 0x5eed5eed12345678ull;
static double uniform(double lo, double hi) {  // splitmix64: fixed seed, same on every target
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return lo + (hi - lo) * (double)(z >> 11) / 9007199254740992.0;
}

enum { CHANNEL_MAJOR, TOKEN_MAJOR, PADDED, N_LAYOUTS };
static const char *LAYOUT_NAMES[] = {"channel-major", "token-major", "padded"};

// strides of a (Bt, E, L) tensor, and the floats to allocate
static Strides3 strides3(int layout, int64_t Bt, int64_t E, int64_t L, int64_t *size) {
    Strides3 s;
    if (layout == CHANNEL_MAJOR) s = (Strides3){E * L, L, 1};
    else if (layout == TOKEN_MAJOR) s = (Strides3){L * E, 1, E};  // a (Bt, L, E) buffer
    else s = (Strides3){E * (2 * L + 3) + 5, 2 * L + 3, 2};
    *size = (Bt - 1) * s.b + (E - 1) * s.e + (L - 1) * s.t + 1;
    return s;
}
static int64_t off3(Strides3 s, int64_t b, int64_t e, int64_t t) {
    return b * s.b + e * s.e + t * s.t;
}

// strides of a (Bt, G, N, L) tensor
static Strides4 strides4(int layout, int64_t Bt, int64_t G, int64_t N, int64_t L, int64_t *size) {
    Strides4 s;
    if (layout == CHANNEL_MAJOR) s = (Strides4){G * N * L, N * L, L, 1};
    else if (layout == TOKEN_MAJOR) s = (Strides4){L * G * N, N, 1, G * N};  // (Bt, L, G, N)
    else s = (Strides4){G * N * (L + 2) * 2 + 7, N * (L + 2) * 2, (L + 2) * 2, 2};
    *size = (Bt - 1) * s.b + (G - 1) * s.g + (N - 1) * s.n + (L - 1) * s.t + 1;
    return s;
}

static float *random_floats(int64_t n, double lo, double hi) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; ++i) p[i] = (float)uniform(lo, hi);
    return p;
}
static float *zero_floats(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }

// one direction's inputs: what a ScanArgs points at, owned here
typedef struct {
    float *u, *delta, *A, *B, *C, *D, *bias;
    float *dt_in, *dt_proj;  // a case with proj: what the kernel gets (see make_projection)
    int reverse;
} Direction;

typedef struct {
    int64_t Bt, E, L, N, G;
    int bias, softplus, D, z, reverse, pair, layout, nthreads, proj, wide_A;
} Case;

#define PROJ_R 5  // the dt_proj rank of a case with proj

static Direction make_direction(const Case *c, int reverse, int64_t n3, int64_t n4) {
    Direction d = {0};  // dt_in, dt_proj: NULL unless make_projection sets them
    d.u = random_floats(n3, -1, 1);
    // softplus maps any delta to a positive step; without it the step is taken as given
    d.delta = c->softplus ? random_floats(n3, -3, 1) : random_floats(n3, 0.01, 0.5);
    // a wide case's A reaches exponents d * A below -126 (in log2 units): the forward's
    // clamped decay form (decay_form), where the others take the unclamped one
    d.A = random_floats(c->E * c->N, c->wide_A ? -120 : -4, -0.05);
    d.B = random_floats(n4, -1, 1);
    d.C = random_floats(n4, -1, 1);
    d.D = c->D ? random_floats(c->E, -1, 1) : NULL;
    // without softplus a negative step would make exp(d A) > 1: the states grow without bound
    d.bias = c->bias ? random_floats(c->E, c->softplus ? -0.5 : 0.0, 0.5) : NULL;
    d.reverse = reverse;
    return d;
}
static void free_direction(Direction *d) {
    free(d->u), free(d->delta), free(d->A), free(d->B), free(d->C), free(d->D), free(d->bias);
    free(d->dt_in), free(d->dt_proj);
}

// a case with proj: the kernel gets dt_in (Bt, PROJ_R, L), strided like the case's layout, and
// dt_proj (E, PROJ_R); the reference reads delta = dt_proj @ dt_in, summed in double
static void make_projection(const Case *c, Direction *d, Strides3 s3, Strides3 *sx) {
    int64_t nx;
    *sx = strides3(c->layout, c->Bt, PROJ_R, c->L, &nx);
    // without softplus the projected step must stay positive, as a raw delta does
    d->dt_in = c->softplus ? random_floats(nx, -1, 1) : random_floats(nx, 0.05, 0.5);
    d->dt_proj = c->softplus ? random_floats(c->E * PROJ_R, -0.4, 0.4)
                             : random_floats(c->E * PROJ_R, 0.02, 0.2);
    for (int64_t b = 0; b < c->Bt; ++b)
        for (int64_t e = 0; e < c->E; ++e)
            for (int64_t t = 0; t < c->L; ++t) {
                double x = 0;
                for (int64_t r = 0; r < PROJ_R; ++r)
                    x += (double)d->dt_proj[e * PROJ_R + r] * d->dt_in[off3(*sx, b, r, t)];
                d->delta[off3(s3, b, e, t)] = (float)x;
            }
}

// ---------------------------------------------------------------------------------------------
// the reference: the recurrence as written in cpu_kernel.c's header, scalar, in double
// ---------------------------------------------------------------------------------------------

static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }
static double sigmoid(double x) { return 1 / (1 + exp(-x)); }

typedef struct {
    Strides3 s3;
    Strides4 s4;
} Layout;

static double step_of(const Case *c, const Direction *d, Layout ly, int64_t b, int64_t e,
                      int64_t t, double *pre) {
    double x = d->delta[off3(ly.s3, b, e, t)] + (d->bias ? d->bias[e] : 0.0);
    if (pre) *pre = x;
    return c->softplus ? softplus(x) : x;
}
static double at4(const float *x, Strides4 s, int64_t b, int64_t g, int64_t n, int64_t t) {
    return x[b * s.b + g * s.g + n * s.n + t * s.t];
}

// y (before the gate) of one direction, into y[(b * E + e) * L + t]; last state (Bt, E, N)
static void ref_forward(const Case *c, const Direction *d, Layout ly, double *y, double *last) {
    const int64_t L = c->L, N = c->N, Eg = c->E / c->G;
    double *h = malloc(sizeof(double) * (size_t)N);
    for (int64_t b = 0; b < c->Bt; ++b)
        for (int64_t e = 0; e < c->E; ++e) {
            const int64_t g = e / Eg;
            for (int64_t n = 0; n < N; ++n) h[n] = 0;
            for (int64_t s = 0; s < L; ++s) {
                const int64_t t = d->reverse ? L - 1 - s : s;
                const double dt = step_of(c, d, ly, b, e, t, NULL);
                const double u = d->u[off3(ly.s3, b, e, t)];
                double acc = d->D ? d->D[e] * u : 0.0;
                for (int64_t n = 0; n < N; ++n) {
                    h[n] = exp(dt * d->A[e * N + n]) * h[n] + dt * u * at4(d->B, ly.s4, b, g, n, t);
                    acc += h[n] * at4(d->C, ly.s4, b, g, n, t);
                }
                y[(b * c->E + e) * L + t] = acc;
            }
            for (int64_t n = 0; n < N; ++n) last[(b * c->E + e) * N + n] = h[n];
        }
    free(h);
}

// gradients of sum(dout * out) + sum(dlast * last) for one direction without a pair
typedef struct {
    double *du, *ddelta, *dz, *dA, *dD, *dbias, *dB, *dC;  // dB, dC: (Bt, G, N, L) contiguous
} Grads;

static void ref_backward(const Case *c, const Direction *d, Layout ly, const float *z,
                         const float *dout, const float *dlast, Grads *gr) {
    const int64_t L = c->L, N = c->N, E = c->E, G = c->G, Eg = E / G;
    double *h = malloc(sizeof(double) * (size_t)(N * L)), *dh = malloc(sizeof(double) * (size_t)N);
    double *dy = malloc(sizeof(double) * (size_t)L), *ddt = malloc(sizeof(double) * (size_t)L);
    for (int64_t b = 0; b < c->Bt; ++b)
        for (int64_t e = 0; e < E; ++e) {
            const int64_t g = e / Eg;
            // forward in step order s, states kept: h[s * N + n]
            for (int64_t s = 0; s < L; ++s) {
                const int64_t t = d->reverse ? L - 1 - s : s;
                const double dt = step_of(c, d, ly, b, e, t, NULL);
                const double u = d->u[off3(ly.s3, b, e, t)];
                double y = d->D ? d->D[e] * u : 0.0;
                for (int64_t n = 0; n < N; ++n) {
                    const double prev = s ? h[(s - 1) * N + n] : 0.0;
                    h[s * N + n] =
                        exp(dt * d->A[e * N + n]) * prev + dt * u * at4(d->B, ly.s4, b, g, n, t);
                    y += h[s * N + n] * at4(d->C, ly.s4, b, g, n, t);
                }
                const double go = dout[off3(ly.s3, b, e, t)];
                if (z) {
                    const double zt = z[off3(ly.s3, b, e, t)], sg = sigmoid(zt);
                    dy[s] = go * zt * sg;
                    gr->dz[off3(ly.s3, b, e, t)] = go * y * sg * (1 + zt * (1 - sg));
                } else {
                    dy[s] = go;
                }
                gr->dD[e] += dy[s] * u;
                gr->du[off3(ly.s3, b, e, t)] = dy[s] * (d->D ? d->D[e] : 0.0);
                ddt[s] = 0;
            }
            for (int64_t n = 0; n < N; ++n) dh[n] = dlast ? dlast[(b * E + e) * N + n] : 0.0;
            for (int64_t s = L - 1; s >= 0; --s) {
                const int64_t t = d->reverse ? L - 1 - s : s;
                const double dt = step_of(c, d, ly, b, e, t, NULL);
                const double u = d->u[off3(ly.s3, b, e, t)];
                for (int64_t n = 0; n < N; ++n) {
                    const double An = d->A[e * N + n], decay = exp(dt * An);
                    const double Bn = at4(d->B, ly.s4, b, g, n, t), Cn = at4(d->C, ly.s4, b, g, n, t);
                    const double prev = s ? h[(s - 1) * N + n] : 0.0;
                    const double g_h = dh[n] + dy[s] * Cn;  // d loss / d h_s
                    const int64_t k = ((b * G + g) * N + n) * L + t;
                    gr->dC[k] += dy[s] * h[s * N + n];
                    gr->dB[k] += g_h * dt * u;
                    ddt[s] += g_h * (An * decay * prev + u * Bn);
                    gr->du[off3(ly.s3, b, e, t)] += g_h * dt * Bn;
                    gr->dA[e * N + n] += g_h * dt * decay * prev;
                    dh[n] = g_h * decay;
                }
            }
            for (int64_t s = 0; s < L; ++s) {
                const int64_t t = d->reverse ? L - 1 - s : s;
                double pre;
                step_of(c, d, ly, b, e, t, &pre);
                const double dd = c->softplus && pre <= 20 ? ddt[s] * sigmoid(pre) : ddt[s];
                gr->ddelta[off3(ly.s3, b, e, t)] = dd;
                gr->dbias[e] += dd;
            }
        }
    free(h), free(dh), free(dy), free(ddt);
}

// ---------------------------------------------------------------------------------------------
// comparison
// ---------------------------------------------------------------------------------------------

static double worst = 0;  // the largest error seen, relative to its tensor's max |reference|

// max |got - ref| / max |ref| over n elements at got[idx(i)], ref[i]; prints a failure
static int check(const Case *c, const char *what, const float *got, const double *ref, int64_t n,
                 double tol) {
    double err = 0, scale = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double e = fabs((double)got[i] - ref[i]);
        err = e > err || e != e ? e : err;  // a NaN counts as the worst error
        scale = fabs(ref[i]) > scale ? fabs(ref[i]) : scale;
    }
    const double rel = err / (scale > 1e-6 ? scale : 1e-6);
    if (rel > worst || rel != rel) worst = rel;
    if (rel <= tol) return 0;
    printf("FAIL %s: error %.3g of max |ref| %.3g (bound %.0e) | Bt=%lld E=%lld L=%lld N=%lld "
           "G=%lld bias=%d softplus=%d D=%d z=%d reverse=%d pair=%d proj=%d %s threads=%d\n",
           what, rel, scale, tol, (long long)c->Bt, (long long)c->E, (long long)c->L,
           (long long)c->N, (long long)c->G, c->bias, c->softplus, c->D, c->z, c->reverse, c->pair,
           c->proj, LAYOUT_NAMES[c->layout], c->nthreads);
    return 1;
}

// a strided (Bt, E, L) tensor gathered into (Bt, E, L) order, for check()
static float *gather3(const float *x, Strides3 s, const Case *c) {
    float *o = malloc(sizeof(float) * (size_t)(c->Bt * c->E * c->L));
    for (int64_t b = 0; b < c->Bt; ++b)
        for (int64_t e = 0; e < c->E; ++e)
            for (int64_t t = 0; t < c->L; ++t) o[(b * c->E + e) * c->L + t] = x[off3(s, b, e, t)];
    return o;
}
static double *gather3d(const double *x, Strides3 s, const Case *c) {
    double *o = malloc(sizeof(double) * (size_t)(c->Bt * c->E * c->L));
    for (int64_t b = 0; b < c->Bt; ++b)
        for (int64_t e = 0; e < c->E; ++e)
            for (int64_t t = 0; t < c->L; ++t) o[(b * c->E + e) * c->L + t] = x[off3(s, b, e, t)];
    return o;
}
static int check3(const Case *c, const char *what, const float *got, const double *ref,
                  Strides3 s, double tol) {
    float *g = gather3(got, s, c);
    double *r = gather3d(ref, s, c);
    const int bad = check(c, what, g, r, c->Bt * c->E * c->L, tol);
    free(g), free(r);
    return bad;
}

static void fill_args(ScanArgs *a, const Case *c, const Direction *d, Layout ly, Strides3 sx) {
    memset(a, 0, sizeof *a);
    a->Bt = c->Bt, a->E = c->E, a->L = c->L, a->N = c->N, a->G = c->G;
    a->delta_softplus = c->softplus, a->reverse = d->reverse, a->nthreads = c->nthreads;
    a->u = d->u, a->delta = d->delta, a->A = d->A, a->B = d->B, a->C = d->C, a->D = d->D;
    a->bias = d->bias;
    a->s_u = a->s_delta = a->s_z = a->s_out = a->s_dout = a->s_du = a->s_ddelta = a->s_dz = ly.s3;
    a->s_B = a->s_C = ly.s4;
    if (c->proj) a->delta = d->dt_in, a->s_delta = sx, a->dt_proj = d->dt_proj, a->R = PROJ_R;
}

// one case, forward then backward: the number of failed checks
static int run_case(const Case *c) {
    const int64_t Bt = c->Bt, E = c->E, L = c->L, N = c->N, G = c->G, T = c->nthreads;
    int64_t n3, n4;
    Layout ly = {strides3(c->layout, Bt, E, L, &n3), strides4(c->layout, Bt, G, N, L, &n4)};
    Direction d0 = make_direction(c, c->reverse, n3, n4), d1 = {0};
    if (c->pair) d1 = make_direction(c, !c->reverse, n3, n4);
    Strides3 sx = ly.s3;
    if (c->proj) {
        make_projection(c, &d0, ly.s3, &sx);
        if (c->pair) make_projection(c, &d1, ly.s3, &sx);
    }
    float *z = c->z ? random_floats(n3, -3, 3) : NULL;
    float *out = zero_floats(n3), *last0 = zero_floats(Bt * E * N), *last1 = zero_floats(Bt * E * N);
    const int64_t per_thread = BWD_SCRATCH_ROWS * L * LANES;
    float *scratch = zero_floats(T * per_thread);

    ScanArgs a, p;
    fill_args(&a, c, &d0, ly, sx);
    a.z = z, a.out = out, a.last_state = last0, a.scratch = scratch, a.scratch_floats = per_thread;
    if (c->pair) {
        fill_args(&p, c, &d1, ly, sx);
        p.last_state = last1;
        a.pair = &p;
    }
    int bad = vimc_scan_fwd(&a) != 0;
    if (bad) printf("FAIL vimc_scan_fwd refused a valid case\n");

    double *y0 = malloc(sizeof(double) * (size_t)(Bt * E * L)), *y1 = NULL;
    double *ref_last0 = malloc(sizeof(double) * (size_t)(Bt * E * N));
    double *ref_last1 = malloc(sizeof(double) * (size_t)(Bt * E * N));
    double *ref_out = calloc((size_t)n3, sizeof(double));
    ref_forward(c, &d0, ly, y0, ref_last0);
    if (c->pair) {
        y1 = malloc(sizeof(double) * (size_t)(Bt * E * L));
        ref_forward(c, &d1, ly, y1, ref_last1);
    }
    for (int64_t b = 0; b < Bt; ++b)
        for (int64_t e = 0; e < E; ++e)
            for (int64_t t = 0; t < L; ++t) {
                const int64_t i = (b * E + e) * L + t, o = off3(ly.s3, b, e, t);
                double y = c->pair ? (y0[i] + y1[i]) / 2 : y0[i];
                if (z) y *= z[o] * sigmoid(z[o]);
                ref_out[o] = y;
            }
    bad += check3(c, "forward out", out, ref_out, ly.s3, FWD_TOL);
    bad += check(c, "forward last state", last0, ref_last0, Bt * E * N, FWD_TOL);
    if (c->pair) bad += check(c, "forward last state (pair)", last1, ref_last1, Bt * E * N, FWD_TOL);

    if (c->proj) {  // the projection is forward-only: the backward entry point must say no
        a.last_state = NULL;
        if (vimc_scan_bwd(&a) != -1) {
            printf("FAIL vimc_scan_bwd accepted a case with dt_proj\n");
            ++bad;
        }
    } else if (!c->pair) {  // the backward: one direction per call
        float *dout = random_floats(n3, -1, 1), *dlast = random_floats(Bt * E * N, -1, 1);
        float *du = zero_floats(n3), *ddelta = zero_floats(n3), *dz = zero_floats(n3);
        float *dA_p = zero_floats(T * E * N), *dD_p = zero_floats(T * E), *db_p = zero_floats(T * E);
        const int64_t nBC = Bt * G * N * L;
        float *dB_p = zero_floats(T * nBC * LANES), *dC_p = zero_floats(T * nBC * LANES);
        a.dout = dout, a.dlast = dlast, a.du = du, a.ddelta = ddelta, a.dz = z ? dz : NULL;
        a.dA_part = dA_p, a.dD_part = dD_p, a.dbias_part = db_p, a.dB_part = dB_p, a.dC_part = dC_p;
        a.last_state = NULL;
        if (vimc_scan_bwd(&a) != 0) {
            printf("FAIL vimc_scan_bwd refused a valid case\n");
            ++bad;
        }
        Grads gr = {calloc((size_t)n3, 8), calloc((size_t)n3, 8), calloc((size_t)n3, 8),
                    calloc((size_t)(E * N), 8), calloc((size_t)E, 8), calloc((size_t)E, 8),
                    calloc((size_t)nBC, 8), calloc((size_t)nBC, 8)};
        ref_backward(c, &d0, ly, z, dout, dlast, &gr);
        // the kernel's partials summed as cpu.py sums them: over threads, and over lanes for dB, dC
        float *dA = zero_floats(E * N), *dD = zero_floats(E), *db = zero_floats(E);
        float *dB = zero_floats(nBC), *dC = zero_floats(nBC);
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t i = 0; i < E * N; ++i) dA[i] += dA_p[t * E * N + i];
            for (int64_t i = 0; i < E; ++i) dD[i] += dD_p[t * E + i], db[i] += db_p[t * E + i];
            for (int64_t i = 0; i < nBC; ++i)
                for (int64_t k = 0; k < LANES; ++k) {
                    dB[i] += dB_p[(t * nBC + i) * LANES + k];
                    dC[i] += dC_p[(t * nBC + i) * LANES + k];
                }
        }
        bad += check3(c, "backward du", du, gr.du, ly.s3, BWD_TOL);
        bad += check3(c, "backward ddelta", ddelta, gr.ddelta, ly.s3, BWD_TOL);
        if (z) bad += check3(c, "backward dz", dz, gr.dz, ly.s3, BWD_TOL);
        bad += check(c, "backward dA", dA, gr.dA, E * N, BWD_TOL);
        if (c->D) bad += check(c, "backward dD", dD, gr.dD, E, BWD_TOL);
        if (c->bias) bad += check(c, "backward dbias", db, gr.dbias, E, BWD_TOL);
        bad += check(c, "backward dB", dB, gr.dB, nBC, BWD_TOL);
        bad += check(c, "backward dC", dC, gr.dC, nBC, BWD_TOL);
        free(dout), free(dlast), free(du), free(ddelta), free(dz), free(dA_p), free(dD_p);
        free(db_p), free(dB_p), free(dC_p), free(dA), free(dD), free(db), free(dB), free(dC);
        free(gr.du), free(gr.ddelta), free(gr.dz), free(gr.dA), free(gr.dD), free(gr.dbias);
        free(gr.dB), free(gr.dC);
    }
    free_direction(&d0);
    if (c->pair) free_direction(&d1);
    free(z), free(out), free(last0), free(last1), free(scratch);
    free(y0), free(y1), free(ref_last0), free(ref_last1), free(ref_out);
    return bad;
}

// (Bt, E, L, N, G): full blocks of LANES channels (E = 8, 16, 48 for 8 lanes; 16, 48 for 16),
// partial blocks (E = 13, 20 / 2 groups, 40 with 16 lanes), odd L, L = 1, N = 1 and
// N = MAX_D_STATE, several groups, a batch with more than one block
static const int64_t SIZES[][5] = {
    {1, 8, 16, 4, 1}, {2, 13, 7, 16, 1}, {1, 24, 1, 16, 2}, {2, 20, 33, 3, 2},
    {1, 16, 5, MAX_D_STATE, 1}, {3, 40, 19, 16, 4}, {1, 9, 11, 1, 1}, {2, 48, 9, 8, 1},
    {1, 40, 13, 5, 1},
};

// the forward's unclamped decays in every form the build has (cpu_kernel.c's bounded_decay:
// the integer-add form; the table form with AVX2 or AVX-512; the vscalefps form with
// AVX-512), whatever this CPU's kind would choose
static const int DECAY_FORM_LIST[] = {DECAY_EXP2,
#ifdef HAVE_EXP2_TABLE
                                      DECAY_EXP2_TABLE,
#endif
#if defined(__AVX512F__) && defined(__AVX512DQ__)
                                      DECAY_EXP2_SCALEF,
#endif
};
#define DECAY_FORMS ((int)(sizeof DECAY_FORM_LIST / sizeof DECAY_FORM_LIST[0]))

// ---------------------------------------------------------------------------------------------
// the fused conv + silu pair (vimc_conv_silu_pair) against the same sums in double: for each
// size (B, L, E, K), x as a view of (B, L, 2E) memory (a mixer's in_proj output) or contiguous
// with a gap between batch rows, biases or none, 1 and 3 threads. Outputs start as NaN.
// ---------------------------------------------------------------------------------------------

static const int64_t CONV_SIZES[][4] = {{2, 9, 40, 4}, {1, 1, 16, 3}, {3, 2, 17, 4},
                                        {1, 7, 33, 1}, {2, 30, 24, 2}, {1, 197, 48, 4}};

static int run_conv_case(const int64_t *sz, int strided, int bias, int threads) {
    const int64_t B = sz[0], L = sz[1], E = sz[2], K = sz[3];
    const int64_t st = strided ? 2 * E : E, sb = L * st + (strided ? 0 : 5);
    float *x = random_floats(B * sb, -3, 3), *w = random_floats(2 * E * K, -1, 1);
    float *bs = random_floats(2 * E, -1, 1);
    float *out = malloc(sizeof(float) * (size_t)(2 * B * L * E));
    for (int64_t i = 0; i < 2 * B * L * E; ++i) out[i] = NAN;
    const int rc = vimc_conv_silu_pair(x, B, L, E, sb, st, w, bias ? bs : NULL, w + E * K,
                                       bias ? bs + E : NULL, K, out, out + B * L * E, threads);
    double err = 0, top = 0;
    for (int d = 0; d < 2 && rc == 0; ++d)
        for (int64_t b = 0; b < B; ++b)
            for (int64_t t = 0; t < L; ++t)
                for (int64_t e = 0; e < E; ++e) {
                    double acc = 0;
                    for (int64_t k = 0; k < K; ++k) {
                        const int64_t s = d ? t + (K - 1) - k : t - (K - 1) + k;
                        if (s >= 0 && s < L)
                            acc += (double)w[(d * E + e) * K + k] * x[b * sb + s * st + e];
                    }
                    if (bias) acc += bs[d * E + e];
                    const double want = acc * sigmoid(acc);
                    const double got = out[((d * B + b) * L + t) * E + e];
                    const double diff = isnan(got) ? INFINITY : fabs(got - want);  // unwritten
                    err = diff > err ? diff : err;
                    top = fabs(want) > top ? fabs(want) : top;
                }
    const double rel = rc != 0 ? INFINITY : err / (top > 0 ? top : 1);
    worst = rel > worst ? rel : worst;
    free(x), free(w), free(bs), free(out);
    if (rel <= FWD_TOL) return 0;
    printf("FAIL conv pair B=%lld L=%lld E=%lld K=%lld %s bias=%d threads=%d: error %.3g\n",
           (long long)B, (long long)L, (long long)E, (long long)K,
           strided ? "strided" : "contiguous", bias, threads, rel);
    return 1;
}

// ---------------------------------------------------------------------------------------------
// a mixer's core in one call (vimc_mixer_fwd) against the same computation in double: conv and
// silu, x_proj, dt_proj and softplus, both scans with D, the gated mean. For each size (B, L,
// E, N, R, K; E a multiple of 16, so of every build's lanes, as mixer.py asks for a multiple of
// the loaded build's) on 1 thread (a task per batch row) and 3 (a task per row and direction
// while B < 3), once per bounded decay form of the build. Outputs start as NaN.
// ---------------------------------------------------------------------------------------------

static const int64_t MIXER_SIZES[][6] = {{2, 9, 32, 4, 3, 4},  {1, 1, 16, 1, 1, 1},
                                         {3, 17, 16, 5, 2, 3}, {1, 40, 48, 16, 12, 4},
                                         {2, 33, 16, 6, 24, 2}, {1, 2, 16, 4, 2, 4}};

static void ref_mixer_direction(const float *xz, int64_t b, int64_t L, int64_t E, int64_t N,
                                int64_t R, int64_t K, int rev, const float *cw, const float *cb,
                                const float *xp, const float *dw, const float *db,
                                const float *A, const float *D, double *y) {
    const int64_t Wr = R + 2 * N;
    double *u = malloc(sizeof(double) * (size_t)(L * E)), *xd = malloc(sizeof(double) * (size_t)(L * Wr));
    double *h = calloc((size_t)(E * N), sizeof(double));
    for (int64_t t = 0; t < L; ++t)
        for (int64_t e = 0; e < E; ++e) {
            double acc = cb[e];
            for (int64_t k = 0; k < K; ++k) {
                const int64_t s = rev ? t + (K - 1) - k : t - (K - 1) + k;
                if (s >= 0 && s < L) acc += (double)cw[e * K + k] * xz[(b * L + s) * 2 * E + e];
            }
            u[t * E + e] = acc * sigmoid(acc);
        }
    for (int64_t t = 0; t < L; ++t)
        for (int64_t w = 0; w < Wr; ++w) {
            double acc = 0;
            for (int64_t e = 0; e < E; ++e) acc += (double)xp[w * E + e] * u[t * E + e];
            xd[t * Wr + w] = acc;
        }
    for (int64_t s = 0; s < L; ++s) {
        const int64_t t = rev ? L - 1 - s : s;
        for (int64_t e = 0; e < E; ++e) {
            double raw = db[e];
            for (int64_t r = 0; r < R; ++r) raw += (double)dw[e * R + r] * xd[t * Wr + r];
            const double d = softplus(raw), ut = u[t * E + e];
            double acc = D[e] * ut;
            for (int64_t n = 0; n < N; ++n) {
                double *hn = h + e * N + n;
                *hn = exp(d * A[e * N + n]) * *hn + d * ut * xd[t * Wr + R + n];
                acc += *hn * xd[t * Wr + R + N + n];
            }
            y[t * E + e] = acc;
        }
    }
    free(u), free(xd), free(h);
}

static int run_mixer_case(const int64_t *sz, int threads) {
    const int64_t B = sz[0], L = sz[1], E = sz[2], N = sz[3], R = sz[4], K = sz[5];
    const int64_t Wr = R + 2 * N;
    float *xz = random_floats(B * L * 2 * E, -2, 2);
    float *cw = random_floats(2 * E * K, -0.5, 0.5), *cb = random_floats(2 * E, -0.2, 0.2);
    float *xp = random_floats(2 * Wr * E, -0.3, 0.3), *dw = random_floats(2 * E * R, -0.3, 0.3);
    float *db = random_floats(2 * E, -3, -1), *A = random_floats(2 * E * N, -8, -0.5);
    float *D = random_floats(2 * E, -1, 1);
    float *out = malloc(sizeof(float) * (size_t)(B * L * E));
    for (int64_t i = 0; i < B * L * E; ++i) out[i] = NAN;
    float *y = malloc(sizeof(float) * (size_t)(2 * B * L * E));
    const int64_t per = vimc_mixer_scratch(L, E, N, R);
    float *scratch = malloc(sizeof(float) * (size_t)(per * threads + vimc_mixer_shared(E, N, R, K)));
    MixerArgs a = {xz, B, L, E, N, R, K, threads,
                   {cw, cw + E * K}, {cb, cb + E}, {xp, xp + Wr * E}, {dw, dw + E * R},
                   {db, db + E}, {A, A + E * N}, {D, D + E}, out, y, scratch, per,
                   scratch + per * threads};
    const int rc = vimc_mixer_fwd(&a);
    double err = 0, top = 0;
    double *yf = malloc(sizeof(double) * (size_t)(L * E)), *yb = malloc(sizeof(double) * (size_t)(L * E));
    for (int64_t b = 0; b < B && rc == 0; ++b) {
        for (int rev = 0; rev < 2; ++rev)
            ref_mixer_direction(xz, b, L, E, N, R, K, rev, cw + rev * E * K, cb + rev * E,
                                xp + rev * Wr * E, dw + rev * E * R, db + rev * E,
                                A + rev * E * N, D + rev * E, rev ? yb : yf);
        for (int64_t t = 0; t < L; ++t)
            for (int64_t e = 0; e < E; ++e) {
                const double z = xz[(b * L + t) * 2 * E + E + e];
                const double want = (yf[t * E + e] + yb[t * E + e]) / 2 * z * sigmoid(z);
                const double got = out[(b * L + t) * E + e];
                const double diff = isnan(got) ? INFINITY : fabs(got - want);  // unwritten
                err = diff > err ? diff : err;
                top = fabs(want) > top ? fabs(want) : top;
            }
    }
    const double rel = rc != 0 ? INFINITY : err / (top > 0 ? top : 1);
    worst = rel > worst ? rel : worst;
    free(xz), free(cw), free(cb), free(xp), free(dw), free(db), free(A), free(D), free(out);
    free(y), free(scratch), free(yf), free(yb);
    if (rel <= FWD_TOL) return 0;
    printf("FAIL mixer core B=%lld L=%lld E=%lld N=%lld R=%lld K=%lld threads=%d: error %.3g\n",
           (long long)B, (long long)L, (long long)E, (long long)N, (long long)R, (long long)K,
           threads, rel);
    return 1;
}

int main(void) {
    printf("ISA: %s, decay forms:", ISA);
    for (int f = 0; f < DECAY_FORMS; ++f) printf(" %s", DECAY_NAMES[DECAY_FORM_LIST[f]]);
    printf("\n");
    int cases = 0, failed = 0;
    for (size_t i = 0; i < sizeof CONV_SIZES / sizeof CONV_SIZES[0]; ++i)
        for (int opts = 0; opts < 8; ++opts, ++cases)
            failed += run_conv_case(CONV_SIZES[i], opts & 1, (opts >> 1) & 1, opts & 4 ? 3 : 1);
    for (int form = 0; form < DECAY_FORMS; ++form) {  // the mixer's states in each decay form
        atomic_store(&bounded_decay, DECAY_FORM_LIST[form]);
        for (size_t i = 0; i < sizeof MIXER_SIZES / sizeof MIXER_SIZES[0]; ++i)
            for (int threads = 1; threads <= 3; threads += 2, ++cases)
                failed += run_mixer_case(MIXER_SIZES[i], threads);
    }
    const int nsizes = (int)(sizeof SIZES / sizeof SIZES[0]);
    for (int form = 0; form < DECAY_FORMS; ++form)
        for (int si = 0; si < nsizes; ++si)
            for (int opts = 0; opts < 128; ++opts)
                for (int layout = 0; layout < N_LAYOUTS; ++layout) {
                    const int64_t *s = SIZES[si];
                    Case c = {s[0], s[1], s[2], s[3], s[4], opts & 1, (opts >> 1) & 1,
                              (opts >> 2) & 1, (opts >> 3) & 1, (opts >> 4) & 1, (opts >> 5) & 1,
                              layout, (opts + layout) % 2 ? 3 : 1, (opts >> 6) & 1, si % 3 == 2};
                    atomic_store(&bounded_decay, DECAY_FORM_LIST[form]);
                    ++cases;
                    failed += run_case(&c) != 0;
                }
    printf("%d cases, %d failed, worst error %.3g of max |ref| (bounds: forward %.0e, "
           "backward %.0e)\n", cases, failed, worst, FWD_TOL, BWD_TOL);
    return failed != 0;
}
