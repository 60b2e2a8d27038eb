// One call of the mixer core (cpu_kernel.c's vimc_mixer_fwd, included as source) on one Vim-Ti
// layer: prints the best milliseconds of `calls` calls and the sum of the output
// (a part cut out changes it: what the benchmark's test checks). benchmarks/mixer_parts.py
// builds it once from the kernel as it is and once per part from a copy with that part cut
// out, and runs the builds taking turns: what each part costs is the difference.
//
//   usage: mixer_parts B threads calls
#include "cpu_kernel.c"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint32_t seed = 12345;
static float uniform(float lo, float hi) {  // a fixed sequence: every build reads the same data
    seed = seed * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)(seed >> 8) / 16777216.0f;
}
static float *filled(int64_t n, float lo, float hi) {
    float *p = aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    if (!p) exit(2);
    for (int64_t i = 0; i < n; ++i) p[i] = uniform(lo, hi);
    return p;
}
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    const int64_t B = atol(argv[1]), T = atol(argv[2]), calls = atol(argv[3]);
    const int64_t L = 197, E = 384, N = 16, R = 12, K = 4;  // Vim-Ti
    if (B < 1 || T < 1 || calls < 1) return 2;
    MixerArgs c;
    memset(&c, 0, sizeof c);
    c.xz = filled(B * L * 2 * E, -1.0f, 1.0f);
    c.B = B, c.L = L, c.E = E, c.N = N, c.R = R, c.K = K, c.nthreads = T;
    for (int d = 0; d < 2; ++d) {
        float *A = filled(E * N, 0.0f, 0.0f);
        for (int64_t i = 0; i < E * N; ++i) A[i] = -1.0f - (float)(i % N);  // Vim's initial A
        c.conv_w[d] = filled(E * K, -0.5f, 0.5f), c.conv_b[d] = filled(E, -0.1f, 0.1f);
        c.x_proj[d] = filled((R + 2 * N) * E, -0.05f, 0.05f);
        c.dt_w[d] = filled(E * R, -0.3f, 0.3f);
        c.dt_b[d] = filled(E, -4.0f, -2.0f);  // softplus: steps of about 0.02 to 0.13
        c.A[d] = A, c.D[d] = filled(E, 0.5f, 1.5f);
    }
    c.out = filled(B * L * E, 0.0f, 0.0f);
    c.y = filled(2 * B * L * E, 0.0f, 0.0f);
    c.scratch_floats = vimc_mixer_scratch(L, E, N, R);
    // the scratch starts as data in range: a part cut out leaves what it would have written
    c.scratch = filled(T * c.scratch_floats + vimc_mixer_shared(E, N, R, K), 0.0f, 0.1f);
    c.shared = c.scratch + T * c.scratch_floats;
    if (vimc_mixer_fwd(&c) != 0) return 3;
    double best = 1e30;
    for (int64_t i = 0; i < calls; ++i) {
        const double t0 = seconds();
        vimc_mixer_fwd(&c);
        const double t = seconds() - t0;
        if (t < best) best = t;
    }
    double sum = 0.0;
    for (int64_t i = 0; i < B * L * E; ++i) sum += c.out[i];
    printf("best_ms %.4f out_sum %.9g\n", 1e3 * best, sum);
    return 0;
}
