// Selective-scan core for CPUs: h_t = exp(d_t A) h_{t-1} + d_t u_t B_t,  y_t = <h_t, C_t>.
//
// Built at first use by cpu.py with the system C compiler (the one torch.compile needs on a
// CPU) and called through ctypes: no build step at install, no torch headers, ~1 s to build.
// cpu.py does the cheap per-(channel, step) work in vectorized torch around it (bias,
// softplus, D skip, silu gate and their derivatives); this file does the O(Bt*E*L*N) part.
//
// Vectorization: one 8-wide vector holds 8 channels of one group (cpu.py pads each group's
// channels to a multiple of 8 with d = 0, which keeps padded states at 0). B_t and C_t are
// shared by a group, so they broadcast: no shuffles, no horizontal sums in the forward.
// A work item is (batch, group, 8-channel block); threads take contiguous ranges of items.
// Backward recomputes the states of one item into a per-thread scratch (L*N vectors), then
// sweeps time backwards. dB and dC get lane-wide per-thread partials that cpu.py sums, so
// threads never write the same memory.
#include <pthread.h>
#include <stdint.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));
#define LANES 8

typedef struct {
    int64_t Bt, G, L, N, Egp;      // Egp: channels per group, padded to a multiple of 8
    int64_t reverse, nthreads;
    const float *u;         // (Bt, G, L, Egp)
    const float *delta;     // (Bt, G, L, Egp)   final delta (bias and softplus applied)
    const float *A;         // (G, N, Egp)
    const float *B;         // (Bt, G, L, N)
    const float *C;         // (Bt, G, L, N)
    float *y;               // (Bt, G, L, Egp)   <h_t, C_t>; backward writes it too (for dz)
    float *last_state;      // (Bt, G, Egp/8, N, 8)   fwd only
    const float *dy;        // (Bt, G, L, Egp)   d loss / d y
    const float *dlast;     // (Bt, G, Egp/8, N, 8) or NULL
    float *du;              // (Bt, G, L, Egp)   scan part only (cpu.py adds D * dy)
    float *ddelta;          // (Bt, G, L, Egp)   w.r.t. the final delta
    float *dA_part;         // (nthreads, G, N, Egp)
    float *dB_part;         // (nthreads, Bt, G, L, N, 8)   summed over threads and lanes
    float *dC_part;         // (nthreads, Bt, G, L, N, 8)
    float *h_scratch;       // (nthreads, L, N, 8)
} ScanArgs;

typedef struct {
    const ScanArgs *a;
    int64_t tid, item_begin, item_end;
} Work;

static inline v8f splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
static inline v8f load8(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }
static inline v8f select8(v8i mask, v8f a, v8f b) {  // mask ? a : b, lane-wise
    return (v8f)((mask & (v8i)a) | (~mask & (v8i)b));
}

// exp on 8 lanes: Cody-Waite reduction by ln 2 and a degree-6 polynomial (about 1 ulp);
// lanes below -87 flush to 0 (the decay of a long-gone state), above 88 saturate.
static inline v8f vexp8(v8f x) {
    const v8f lo = splat(-87.0f), hi = splat(88.0f);
    v8f xc = select8(x < lo, lo, select8(x > hi, hi, x));
    v8f t = xc * splat(1.44269504088896341f);
    v8i ki = __builtin_convertvector(t + select8(t < splat(0.0f), splat(-0.5f), splat(0.5f)), v8i);
    v8f k = __builtin_convertvector(ki, v8f);
    v8f r = xc - k * splat(0.693359375f);
    r = r + k * splat(2.12194440e-4f);
    v8f p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * (r * r) + r + splat(1.0f);
    v8f scale = (v8f)((ki + 127) << 23);
    return select8(x < lo, splat(0.0f), p * scale);
}

// item -> (b, g, j) and the base offsets every loop below uses
typedef struct { int64_t bg, j, lane0; } Item;
static inline Item item_of(const ScanArgs *a, int64_t it) {
    const int64_t blocks = a->Egp / LANES;
    Item r = {it / blocks, it % blocks, (it % blocks) * LANES};
    return r;
}

static void fwd_items(const Work *w) {
    const ScanArgs *a = w->a;
    const int64_t L = a->L, N = a->N, Egp = a->Egp;
    v8f h[N], An[N];
    for (int64_t it = w->item_begin; it < w->item_end; ++it) {
        const Item m = item_of(a, it);
        const int64_t g = m.bg % a->G;
        const float *u = a->u + m.bg * L * Egp + m.lane0, *dl = a->delta + m.bg * L * Egp + m.lane0;
        const float *Bp = a->B + m.bg * L * N, *Cp = a->C + m.bg * L * N;
        float *y = a->y + m.bg * L * Egp + m.lane0;
        for (int64_t n = 0; n < N; ++n) {
            h[n] = splat(0.0f);
            An[n] = load8(a->A + (g * N + n) * Egp + m.lane0);
        }
        for (int64_t s = 0; s < L; ++s) {
            const int64_t t = a->reverse ? L - 1 - s : s;
            const v8f d = load8(dl + t * Egp), du = d * load8(u + t * Egp);
            const float *Bt = Bp + t * N, *Ct = Cp + t * N;
            v8f acc = splat(0.0f);
            for (int64_t n = 0; n < N; ++n) {
                h[n] = vexp8(d * An[n]) * h[n] + du * splat(Bt[n]);
                acc += h[n] * splat(Ct[n]);
            }
            store8(y + t * Egp, acc);
        }
        float *last = a->last_state + (m.bg * (Egp / LANES) + m.j) * N * LANES;
        for (int64_t n = 0; n < N; ++n) store8(last + n * LANES, h[n]);
    }
}

static void bwd_items(const Work *w) {
    const ScanArgs *a = w->a;
    const int64_t L = a->L, N = a->N, Egp = a->Egp, G = a->G;
    float *hs = a->h_scratch + w->tid * L * N * LANES;
    float *dA_acc = a->dA_part + w->tid * G * N * Egp;
    v8f dh[N], An[N], dAn[N];
    for (int64_t it = w->item_begin; it < w->item_end; ++it) {
        const Item m = item_of(a, it);
        const int64_t g = m.bg % G, off = m.bg * L * Egp + m.lane0;
        const float *u = a->u + off, *dl = a->delta + off, *dyp = a->dy + off;
        float *y = a->y + off, *gu = a->du + off, *gd = a->ddelta + off;
        const float *Bp = a->B + m.bg * L * N, *Cp = a->C + m.bg * L * N;
        float *dBp = a->dB_part + (w->tid * a->Bt * G + m.bg) * L * N * LANES;
        float *dCp = a->dC_part + (w->tid * a->Bt * G + m.bg) * L * N * LANES;
        for (int64_t n = 0; n < N; ++n) {
            An[n] = load8(a->A + (g * N + n) * Egp + m.lane0);
            dAn[n] = splat(0.0f);
        }

        // 1) recompute h_t (slot s = visiting order) and y_t
        for (int64_t s = 0; s < L; ++s) {
            const int64_t t = a->reverse ? L - 1 - s : s;
            const v8f d = load8(dl + t * Egp), du = d * load8(u + t * Egp);
            const float *Bt = Bp + t * N, *Ct = Cp + t * N;
            float *hc = hs + s * N * LANES;
            const float *hp = hs + (s - 1) * N * LANES;
            v8f acc = splat(0.0f);
            for (int64_t n = 0; n < N; ++n) {
                v8f prev = s > 0 ? load8(hp + n * LANES) : splat(0.0f);
                v8f hn = vexp8(d * An[n]) * prev + du * splat(Bt[n]);
                store8(hc + n * LANES, hn);
                acc += hn * splat(Ct[n]);
            }
            store8(y + t * Egp, acc);
        }

        // 2) sweep back through time
        const float *dlast = a->dlast ? a->dlast + (m.bg * (Egp / LANES) + m.j) * N * LANES : NULL;
        for (int64_t n = 0; n < N; ++n) dh[n] = dlast ? load8(dlast + n * LANES) : splat(0.0f);
        for (int64_t s = L - 1; s >= 0; --s) {
            const int64_t t = a->reverse ? L - 1 - s : s;
            const v8f d = load8(dl + t * Egp), ut = load8(u + t * Egp), dy = load8(dyp + t * Egp);
            const v8f du_ = d * ut;
            const float *Bt = Bp + t * N, *Ct = Cp + t * N;
            const float *hc = hs + s * N * LANES, *hp = hs + (s - 1) * N * LANES;
            float *dBt = dBp + t * N * LANES, *dCt = dCp + t * N * LANES;
            v8f dd = splat(0.0f), gu_ = splat(0.0f);
            for (int64_t n = 0; n < N; ++n) {
                const v8f Bn = splat(Bt[n]);
                const v8f hprev = s > 0 ? load8(hp + n * LANES) : splat(0.0f);
                const v8f decay = vexp8(d * An[n]);
                const v8f dhn = dh[n] + dy * splat(Ct[n]);
                store8(dCt + n * LANES, load8(dCt + n * LANES) + dy * load8(hc + n * LANES));
                const v8f gh = dhn * decay * hprev;   // d loss / d (d * A_n)
                dd += gh * An[n] + dhn * ut * Bn;
                dAn[n] += gh * d;
                gu_ += dhn * d * Bn;
                store8(dBt + n * LANES, load8(dBt + n * LANES) + dhn * du_);
                dh[n] = dhn * decay;
            }
            store8(gd + t * Egp, dd);
            store8(gu + t * Egp, gu_);
        }
        for (int64_t n = 0; n < N; ++n) {
            float *p = dA_acc + (g * N + n) * Egp + m.lane0;
            store8(p, load8(p) + dAn[n]);
        }
    }
}

static void *fwd_entry(void *p) { fwd_items((const Work *)p); return NULL; }
static void *bwd_entry(void *p) { bwd_items((const Work *)p); return NULL; }

static void run_parallel(const ScanArgs *a, void *(*fn)(void *)) {
    const int64_t items = a->Bt * a->G * (a->Egp / LANES);
    int64_t T = a->nthreads < 1 ? 1 : a->nthreads;
    if (T > 64) T = 64;
    if (T > items) T = items > 0 ? items : 1;
    Work w[64];
    pthread_t th[64];
    int started[64] = {0};
    for (int64_t i = 0; i < T; ++i) {
        w[i].a = a;
        w[i].tid = i;
        w[i].item_begin = items * i / T;
        w[i].item_end = items * (i + 1) / T;
    }
    for (int64_t i = 1; i < T; ++i)
        started[i] = pthread_create(&th[i], NULL, fn, &w[i]) == 0;
    for (int64_t i = 1; i < T; ++i)
        if (!started[i]) fn(&w[i]);  // no thread to be had: do its share here
    fn(&w[0]);
    for (int64_t i = 1; i < T; ++i)
        if (started[i]) pthread_join(th[i], NULL);
}

int vimc_scan_fwd(const ScanArgs *a) { run_parallel(a, fwd_entry); return 0; }
int vimc_scan_bwd(const ScanArgs *a) { run_parallel(a, bwd_entry); return 0; }
int64_t vimc_scan_abi(void) { return (int64_t)sizeof(ScanArgs) * 1000 + LANES; }
