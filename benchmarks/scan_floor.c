// The CPU scan's forward state loop alone (cpu_kernel.c's fwd_states, included as source), on
// rows that stay in L1: time per state update for each decay form this build has, and cycles
// per update where the clock can be measured. This is the part of the scan whose cost grows
// with the state size N. Set it against the floors that benchmarks/scan_floor.py prints, and
// against the whole op (benchmarks/scan.py).
//
//   python benchmarks/scan_floor.py     (builds it for each level this CPU runs, with the
//                                         kernel's own flags, and writes the results file)
#include "cpu_kernel.c"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// cycles per second, from a chain of dependent register-to-register adds (one cycle each; an
// add of an immediate is not used: recent Intel cores fold chains of those at rename); 0
// where this target has no such chain written here
static double clock_hz(void) {
#if defined(__x86_64__)
    const long n = 200000000;
    long x = 0, one = 1;
    const double t0 = seconds();
    for (long i = 0; i < n; ++i)
        __asm__ volatile("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0" : "+r"(x) : "r"(one));
    return 4.0 * (double)n / (seconds() - t0);
#else
    return 0.0;
#endif
}

int main(int argc, char **argv) {
    const long reps = argc > 1 ? atol(argv[1]) : 20000;
    enum { L = 197, N = 16, ROUNDS = 10 };  // Vim-Ti's sequence and state size
    static float A[LANES * N], BC[L * 2 * N], sd[L * LANES], sdu[L * LANES], sy[L * LANES];
    for (int i = 0; i < LANES * N; ++i) A[i] = -1.0f - (float)(i % N);  // Vim's initial A
    for (int i = 0; i < L * 2 * N; ++i) BC[i] = 0.01f * (float)(i % 17) - 0.08f;
    for (int i = 0; i < L * LANES; ++i) sd[i] = 0.02f + 0.001f * (float)(i % 29), sdu[i] = 0.3f;
    // one item of LANES channels; B and C interleaved per step as a mixer's x_proj output is
    ScanArgs a;
    memset(&a, 0, sizeof a);
    a.Bt = 1, a.E = LANES, a.L = L, a.N = N, a.G = 1, a.A = A;
    a.s_B = (Strides4){2 * N * L, 0, 1, 2 * N};
    a.s_C = a.s_B;
    const Item m = item_of(&a, 0);
    const int forms[] = {DECAY_EXP2_CLAMP, DECAY_EXP2,
#if defined(__AVX512F__) && defined(__AVX512DQ__)
                         DECAY_EXP2_SCALEF,
#endif
#ifdef HAVE_EXP2_TABLE
                         DECAY_EXP2_TABLE,
#endif
    };
    enum { FORMS = sizeof forms / sizeof forms[0] };
    double best[FORMS];
    for (int f = 0; f < FORMS; ++f) best[f] = 1e30;
    // forms interleaved, best of ROUNDS: a shared machine's slow spells hit every form alike
    for (int round = 0; round < ROUNDS; ++round)
        for (int f = 0; f < FORMS; ++f) {
            const double t0 = seconds();
            for (long r = 0; r < reps / ROUNDS + 1; ++r)
                for (int n = 0; n < N; n += NB) fwd_pass(&a, &m, n, NB, forms[f], sd, sdu, sy, BC, BC + N);
            const double per = (seconds() - t0) / ((double)(reps / ROUNDS + 1) * L * N * LANES);
            if (per < best[f]) best[f] = per;
        }
    const double hz = clock_hz();
    printf("lanes %d, state components per pass %d\n", LANES, NB);
    if (hz > 0) printf("clock GHz %.2f\n", hz / 1e9);
    for (int f = 0; f < FORMS; ++f) printf("form %s %.4f\n", DECAY_NAMES[forms[f]], 1e9 * best[f]);
    return sy[0] != sy[0];  // keeps the loop's output live
}
