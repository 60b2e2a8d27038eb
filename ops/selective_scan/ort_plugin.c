// ONNX Runtime custom-op library for the nodes of to_onnx(scan="plugin"), domain "vimc",
// opset 1, run by cpu_kernel.c's fused forward on ONNX Runtime's intra-op thread pool:
//
//   SelectiveScan               one scan, mamba's signature (channel-major):
//     u, delta (Bt, E, L); A (E, N); B, C (Bt, G, N, L); D (E,)?, z (Bt, E, L)?,
//     delta_bias (E,)?  -> out (Bt, E, L), last_state (Bt, E, N)?
//     attributes delta_softplus, reverse
//   SelectiveScanBidirectional  a Vim mixer's two scans, token-major as its linears produce:
//     u, delta (Bt, L, E); A (E, N); B, C (Bt, L, N); D (E,)?; delta_bias (E,)?; the same
//     seven again for the reverse direction; z (Bt, L, E)?
//     -> out (Bt, L, E) = (scan + reverse scan) / 2 * silu(z)
//     attribute delta_softplus
//   MixerCore                   a Vim mixer from in_proj's output to out_proj's input, as
//     vimc::mixer_core_fwd (mixer.py): xz (B, L, 2E); per direction (forward, then "_b")
//     conv_weight (E, 1, K), conv_bias (E,), x_proj_weight (R + 2N, E), dt_proj_weight (E, R),
//     dt_proj_bias (E,), A (E, N), D (E,), in the op's order -> out (B, L, E); E a multiple of
//     the build's vector width (LANES), R <= MAX_R: cpu_kernel.c's vimc_mixer_fwd, its work
//     shared out on the intra-op threads
//
// All float32 ("?" marks an optional input or output); any of Bt, E, L may be 0 (empty outputs,
// a zero last state), N is 1..MAX_D_STATE. The attributes are flags: an int 0 or 1, or a
// float 0.0 or 1.0 (ONNX attributes are typed; a tool that writes a float gets it read as
// written, never as absent); absent means 0; anything else fails the session's creation.
// Built at first use by ort_plugin.py
// with the system C compiler, like the kernel, and handed to
// SessionOptions.register_custom_ops_library (or a C/C++ program's RegisterCustomOpsLibrary).
//
// ONNX Runtime's C API is a table of function pointers whose slots are only ever appended
// (its ABI promise), so this file names the few slots it calls by their index in
// onnxruntime_c_api.h instead of including that header, which no Python wheel ships. It asks
// for API version 17 (onnxruntime >= 1.17, for KernelContext_ParallelFor) and fails to
// register, with a message, on an older runtime.
#include "cpu_kernel.c"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define ORT_API_USED 17    // the table; KernelContext_ParallelFor is new in 17
#define ORT_OP_VERSION 16  // the OrtCustomOp layout below (the V2 kernel callbacks)
#define ORT_FAIL 1         // OrtErrorCode
#define ORT_INVALID_ARGUMENT 2
#define ORT_FLOAT 1  // ONNXTensorElementDataType
#define ORT_REQUIRED 0  // OrtCustomOpInputOutputCharacteristic
#define ORT_OPTIONAL 1
#define MAX_D_STATE 256  // the largest N, as _checks.py's MAX_D_STATE: one limit everywhere
enum { OP_SCAN, OP_BIDIRECTIONAL, OP_MIXER };

typedef struct OrtStatus OrtStatus;
typedef void (*OrtFn)(void);
typedef struct {
    const OrtFn *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

// the OrtApi slots used here: their index in the table
enum {
    CreateStatus = 0,
    CreateCustomOpDomain = 26,
    CustomOpDomain_Add = 27,
    AddCustomOpDomain = 28,
    GetTensorMutableData = 51,
    GetTensorElementType = 60,
    GetDimensionsCount = 61,
    GetDimensions = 62,
    GetTensorTypeAndShape = 65,
    KernelInfoGetAttribute_float = 85,
    KernelInfoGetAttribute_int64 = 86,
    KernelInfoGetAttribute_string = 87,
    KernelContext_GetInputCount = 88,
    KernelContext_GetOutputCount = 89,
    KernelContext_GetInput = 90,
    KernelContext_GetOutput = 91,
    ReleaseStatus = 93,
    ReleaseTensorTypeAndShapeInfo = 99,
    KernelContext_ParallelFor = 274,
};

static const OrtFn *api;  // set once, in RegisterCustomOps

#define CALL(slot, type, ...) (((type)api[slot])(__VA_ARGS__))
typedef OrtStatus *(*CreateStatusFn)(int code, const char *msg);
typedef OrtStatus *(*PtrOutFn)(const void *obj, void **out);
typedef OrtStatus *(*SizeOutFn)(const void *obj, size_t *out);
typedef OrtStatus *(*IntOutFn)(const void *obj, int *out);
typedef OrtStatus *(*DimsFn)(const void *info, int64_t *dims, size_t n);
typedef OrtStatus *(*AttrIntFn)(const void *info, const char *name, int64_t *out);
typedef OrtStatus *(*AttrFloatFn)(const void *info, const char *name, float *out);
typedef OrtStatus *(*AttrStringFn)(const void *info, const char *name, char *out, size_t *size);
typedef OrtStatus *(*GetInputFn)(const void *ctx, size_t i, const void **out);
typedef OrtStatus *(*GetOutputFn)(void *ctx, size_t i, const int64_t *dims, size_t n, void **out);
typedef OrtStatus *(*DomainFn)(const char *name, void **out);
typedef OrtStatus *(*AddFn)(void *to, const void *what);
typedef void (*ReleaseFn)(void *obj);
typedef OrtStatus *(*ParallelForFn)(const void *ctx, void (*fn)(void *, size_t), size_t total,
                                     size_t num_batch, void *data);

// OrtCustomOp as of its version 16, and the op's schema beside it. The V1 kernel callbacks
// (CreateKernel, KernelCompute) stay NULL: a runtime that takes version-16 ops calls the V2
// ones, which can return an error status, and the plugin registers only on API >= 17.
typedef struct CustomOp {
    uint32_t version;
    void *(*CreateKernel)(const struct CustomOp *op, const OrtFn *api, const void *info);
    const char *(*GetName)(const struct CustomOp *op);
    const char *(*GetExecutionProviderType)(const struct CustomOp *op);
    int (*GetInputType)(const struct CustomOp *op, size_t i);
    size_t (*GetInputTypeCount)(const struct CustomOp *op);
    int (*GetOutputType)(const struct CustomOp *op, size_t i);
    size_t (*GetOutputTypeCount)(const struct CustomOp *op);
    void (*KernelCompute)(void *kernel, void *ctx);
    void (*KernelDestroy)(void *kernel);
    int (*GetInputCharacteristic)(const struct CustomOp *op, size_t i);
    int (*GetOutputCharacteristic)(const struct CustomOp *op, size_t i);
    int (*GetInputMemoryType)(const struct CustomOp *op, size_t i);
    int (*GetVariadicInputMinArity)(const struct CustomOp *op);
    int (*GetVariadicInputHomogeneity)(const struct CustomOp *op);
    int (*GetVariadicOutputMinArity)(const struct CustomOp *op);
    int (*GetVariadicOutputHomogeneity)(const struct CustomOp *op);
    OrtStatus *(*CreateKernelV2)(const struct CustomOp *op, const OrtFn *api, const void *info,
                                 void **kernel);
    OrtStatus *(*KernelComputeV2)(void *kernel, void *ctx);
    // not read by ONNX Runtime (past the version-16 layout): the schema
    const char *name;
    int n_in, n_out, kind;  // kind: OP_SCAN, OP_BIDIRECTIONAL or OP_MIXER
    const char *const *in_names;
    const int *in_ranks;
    const unsigned char *in_optional;
} CustomOp;

static OrtStatus *fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static OrtStatus *fail(int code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return CALL(CreateStatus, CreateStatusFn, code, msg);
}

#define TRY(expr)                \
    do {                         \
        OrtStatus *st_ = (expr); \
        if (st_) return st_;     \
    } while (0)

// ---------------------------------------------------------------------------------------------
// inputs: present or not, float32, of the rank the schema gives, and their shapes
// ---------------------------------------------------------------------------------------------

#define MAX_INPUTS 15

typedef struct {
    const void *value;  // NULL: absent
    int64_t dims[4];
} Input;

static OrtStatus *read_input(const CustomOp *op, void *ctx, int i, Input *in) {
    in->value = NULL;
    TRY(CALL(KernelContext_GetInput, GetInputFn, ctx, (size_t)i, &in->value));
    if (!in->value) {
        if (op->in_optional[i]) return NULL;
        return fail(ORT_INVALID_ARGUMENT, "vimc.%s: input %s is required", op->name,
                    op->in_names[i]);
    }
    void *info = NULL;
    TRY(CALL(GetTensorTypeAndShape, PtrOutFn, in->value, &info));
    int type = 0;
    size_t rank = 0;
    OrtStatus *st = CALL(GetTensorElementType, IntOutFn, info, &type);
    if (!st) st = CALL(GetDimensionsCount, SizeOutFn, info, &rank);
    if (!st && rank == (size_t)op->in_ranks[i])
        st = CALL(GetDimensions, DimsFn, info, in->dims, rank);
    CALL(ReleaseTensorTypeAndShapeInfo, ReleaseFn, info);
    if (st) return st;
    if (type != ORT_FLOAT)
        return fail(ORT_INVALID_ARGUMENT,
                    "vimc.%s: %s must be float32 (ONNX element type 1), got element type %d",
                    op->name, op->in_names[i], type);
    if (rank != (size_t)op->in_ranks[i])
        return fail(ORT_INVALID_ARGUMENT, "vimc.%s: %s must have %d dimensions, got %zu",
                    op->name, op->in_names[i], op->in_ranks[i], rank);
    return NULL;
}

static void format_dims(char *buf, size_t size, const int64_t *d, int rank) {
    buf[0] = '\0';
    for (int j = 0; j < rank; ++j)
        snprintf(buf + strlen(buf), size - strlen(buf), j ? ", %lld" : "%lld", (long long)d[j]);
}

// input i (if present) must have shape `want`, which the inputs named in `from` set
static OrtStatus *expect_from(const CustomOp *op, const Input *in, int i, const int64_t *want,
                              const char *from) {
    if (!in[i].value) return NULL;
    const int rank = op->in_ranks[i];
    for (int k = 0; k < rank; ++k)
        if (in[i].dims[k] != want[k]) {
            char w[96], g[96];
            format_dims(w, sizeof w, want, rank);
            format_dims(g, sizeof g, in[i].dims, rank);
            return fail(ORT_INVALID_ARGUMENT,
                        "vimc.%s: %s must have shape (%s) to match %s, got (%s)", op->name,
                        op->in_names[i], w, from, g);
        }
    return NULL;
}
static OrtStatus *expect(const CustomOp *op, const Input *in, int i, const int64_t *want) {
    return expect_from(op, in, i, want, "u, A and B");  // the scan nodes' sizes come from them
}

static OrtStatus *check_state_size(const CustomOp *op, int64_t N) {
    if (N < 1 || N > MAX_D_STATE)
        return fail(ORT_INVALID_ARGUMENT,
                    "vimc.%s: the state size N = A's second dimension must be in [1, %d], got %lld",
                    op->name, MAX_D_STATE, (long long)N);
    return NULL;
}

static const float *data(const void *value) {  // NULL for an absent input (or on failure)
    void *p = NULL;
    if (!value) return NULL;
    OrtStatus *st = CALL(GetTensorMutableData, PtrOutFn, value, &p);
    if (st) CALL(ReleaseStatus, ReleaseFn, st), p = NULL;
    return p;
}

// ---------------------------------------------------------------------------------------------
// the work: chunks of whole kernel items (a batch row, a group, 8 channels), run by ONNX
// Runtime's intra-op threads; each thread stages through its own rows, kept between calls
// ---------------------------------------------------------------------------------------------

#define MAX_CHUNKS 64

typedef struct {
    ScanArgs args, pair;  // args.pair -> pair for a bidirectional node; scratch per thread
    int64_t items, chunks, remaining;
} Job;

typedef struct {
    int64_t floats;
    float data[];
} Scratch;

// two buffers per thread, grown as needed and freed with the thread: a task's scratch, and a
// MixerCore call's own (the parameters' layouts, read by every task of the call)
static pthread_key_t scratch_key, call_key;
static pthread_once_t keys_once = PTHREAD_ONCE_INIT;
static void make_keys(void) {
    pthread_key_create(&scratch_key, free);
    pthread_key_create(&call_key, free);
}

static float *keyed_buffer(const pthread_key_t *key, int64_t floats) {
    pthread_once(&keys_once, make_keys);
    Scratch *s = pthread_getspecific(*key);
    if (!s || s->floats < floats) {
        free(s);
        s = malloc(sizeof(Scratch) + sizeof(float) * (size_t)floats);
        if (s) s->floats = floats;
        pthread_setspecific(*key, s);
    }
    return s ? s->data : NULL;
}
static float *thread_scratch(int64_t floats) { return keyed_buffer(&scratch_key, floats); }
static float *call_buffer(int64_t floats) { return keyed_buffer(&call_key, floats); }

static void run_chunk(void *p, size_t i) {
    Job *job = p;
    ScanArgs a = job->args;
    a.scratch = thread_scratch(a.scratch_floats);
    if (!a.scratch) return;  // out of memory: the chunk count check reports it
    const Work w = {&a, 0, job->items * (int64_t)i / job->chunks,
                    job->items * ((int64_t)i + 1) / job->chunks};
    fwd_items(&w);
    __atomic_fetch_sub(&job->remaining, 1, __ATOMIC_RELAXED);
}

static OrtStatus *run(void *ctx, Job *job) {
    ScanArgs *a = &job->args;
    a->scratch_floats = FWD_SCRATCH_ROWS * a->L * LANES;
    job->items = vimc_scan_items(a);
    job->chunks = job->items < MAX_CHUNKS ? job->items : MAX_CHUNKS;
    job->remaining = job->chunks;
    if (job->chunks > 0)
        TRY(CALL(KernelContext_ParallelFor, ParallelForFn, ctx, run_chunk, (size_t)job->chunks,
                 (size_t)0, job));
    if (job->remaining != 0)  // every chunk ran, once, or the output is not all written
        return fail(ORT_FAIL, "vimc: %lld of %lld scan chunks did not run",
                    (long long)job->remaining, (long long)job->chunks);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// the two kernels
// ---------------------------------------------------------------------------------------------

typedef struct {
    const CustomOp *op;
    int64_t delta_softplus, reverse;
} Kernel;

enum { U, DELTA, A_, B_, C_, D_, Z_, BIAS };  // SelectiveScan's inputs

static OrtStatus *compute_scan(const Kernel *k, void *ctx, const Input *in, Job *job) {
    const CustomOp *op = k->op;
    const int64_t Bt = in[U].dims[0], E = in[U].dims[1], L = in[U].dims[2];
    const int64_t N = in[A_].dims[1], G = in[B_].dims[1];
    TRY(check_state_size(op, N));
    if (G < 1 || E % G)
        return fail(ORT_INVALID_ARGUMENT, "vimc.%s: B's group count G = %lld must divide E = %lld",
                    op->name, (long long)G, (long long)E);
    const int64_t like_u[3] = {Bt, E, L}, like_A[2] = {E, N}, like_B[4] = {Bt, G, N, L};
    const int64_t per_channel[1] = {E};
    TRY(expect(op, in, DELTA, like_u));
    TRY(expect(op, in, A_, like_A));
    TRY(expect(op, in, B_, like_B));
    TRY(expect(op, in, C_, like_B));
    TRY(expect(op, in, D_, per_channel));
    TRY(expect(op, in, Z_, like_u));
    TRY(expect(op, in, BIAS, per_channel));
    size_t n_out = 0;
    void *out = NULL, *last = NULL;
    const int64_t state[3] = {Bt, E, N};
    TRY(CALL(KernelContext_GetOutputCount, SizeOutFn, ctx, &n_out));
    TRY(CALL(KernelContext_GetOutput, GetOutputFn, ctx, 0, like_u, 3, &out));
    if (n_out > 1) TRY(CALL(KernelContext_GetOutput, GetOutputFn, ctx, 1, state, 3, &last));
    if (Bt == 0 || E == 0 || L == 0) {  // nothing to scan: empty out, a state that took no step
        if (!last || Bt == 0 || E == 0) return NULL;
        float *h = (float *)data(last);
        if (!h) return fail(ORT_FAIL, "vimc.%s: last_state gave no data pointer", op->name);
        memset(h, 0, sizeof(float) * (size_t)(Bt * E * N));
        return NULL;
    }

    ScanArgs *a = &job->args;
    a->Bt = Bt, a->E = E, a->L = L, a->N = N, a->G = G;
    a->delta_softplus = k->delta_softplus, a->reverse = k->reverse;
    a->u = data(in[U].value), a->delta = data(in[DELTA].value), a->A = data(in[A_].value);
    a->B = data(in[B_].value), a->C = data(in[C_].value), a->D = data(in[D_].value);
    a->z = data(in[Z_].value), a->bias = data(in[BIAS].value);
    a->out = (float *)data(out);
    a->last_state = last ? (float *)data(last) : NULL;  // an unnamed output is not written
    const Strides3 s3 = {E * L, L, 1};
    const Strides4 s4 = {G * N * L, N * L, L, 1};
    a->s_u = a->s_delta = a->s_z = a->s_out = s3;
    a->s_B = a->s_C = s4;
    const int missing = !a->u || !a->delta || !a->A || !a->B || !a->C || !a->out ||
                        (last && !a->last_state);
    return missing ? fail(ORT_FAIL, "vimc.%s: a tensor gave no data pointer", op->name)
                   : run(ctx, job);
}

// SelectiveScanBidirectional's inputs: a direction's seven, then the reverse one's, then z
enum { DIR_U, DIR_DELTA, DIR_A, DIR_B, DIR_C, DIR_D, DIR_BIAS, DIR_INPUTS };
#define BIDIR_Z (2 * DIR_INPUTS)

static OrtStatus *compute_bidirectional(const Kernel *k, void *ctx, const Input *in, Job *job) {
    const CustomOp *op = k->op;
    const int64_t Bt = in[DIR_U].dims[0], L = in[DIR_U].dims[1], E = in[DIR_U].dims[2];
    const int64_t N = in[DIR_A].dims[1];
    TRY(check_state_size(op, N));
    const int64_t like_u[3] = {Bt, L, E}, like_A[2] = {E, N}, like_B[3] = {Bt, L, N};
    const int64_t per_channel[1] = {E};
    for (int d = 0; d < 2; ++d) {
        const int o = d * DIR_INPUTS;
        TRY(expect(op, in, o + DIR_U, like_u));
        TRY(expect(op, in, o + DIR_DELTA, like_u));
        TRY(expect(op, in, o + DIR_A, like_A));
        TRY(expect(op, in, o + DIR_B, like_B));
        TRY(expect(op, in, o + DIR_C, like_B));
        TRY(expect(op, in, o + DIR_D, per_channel));
        TRY(expect(op, in, o + DIR_BIAS, per_channel));
        if (!in[o + DIR_D].value != !in[DIR_D].value ||
            !in[o + DIR_BIAS].value != !in[DIR_BIAS].value)
            return fail(ORT_INVALID_ARGUMENT,
                        "vimc.%s: D and delta_bias must each be given for both directions or "
                        "for neither",
                        op->name);
    }
    TRY(expect(op, in, BIDIR_Z, like_u));
    void *out = NULL;
    TRY(CALL(KernelContext_GetOutput, GetOutputFn, ctx, 0, like_u, 3, &out));
    if (Bt == 0 || E == 0 || L == 0) return NULL;  // an empty out: nothing to compute

    const Strides3 s3 = {L * E, 1, E};       // (Bt, L, E) memory read as (Bt, E, L)
    const Strides4 s4 = {L * N, L * N, 1, N};  // (Bt, L, N) read as (Bt, 1, N, L)
    ScanArgs *dirs[2] = {&job->args, &job->pair};
    int missing = !(job->args.out = (float *)data(out));
    for (int d = 0; d < 2; ++d) {
        ScanArgs *a = dirs[d];
        const Input *x = in + d * DIR_INPUTS;
        a->Bt = Bt, a->E = E, a->L = L, a->N = N, a->G = 1;
        a->delta_softplus = k->delta_softplus, a->reverse = d;
        a->u = data(x[DIR_U].value), a->delta = data(x[DIR_DELTA].value);
        a->A = data(x[DIR_A].value), a->B = data(x[DIR_B].value), a->C = data(x[DIR_C].value);
        a->D = data(x[DIR_D].value), a->bias = data(x[DIR_BIAS].value);
        a->last_state = NULL;  // the node has no last-state outputs: the kernel skips them
        a->s_u = a->s_delta = a->s_z = a->s_out = s3;
        a->s_B = a->s_C = s4;
        missing |= !a->u || !a->delta || !a->A || !a->B || !a->C;
    }
    job->args.z = data(in[BIDIR_Z].value);
    job->args.pair = &job->pair;
    return missing ? fail(ORT_FAIL, "vimc.%s: a tensor gave no data pointer", op->name)
                   : run(ctx, job);
}

// ---------------------------------------------------------------------------------------------
// MixerCore: vimc_mixer_fwd's phases, each shared out by KernelContext_ParallelFor. A task gets
// its thread's own scratch (thread_scratch) and runs as thread 0 of one; the parameters' layouts
// and, at batch 1, both directions' y live in the calling thread's buffer (call_buffer)
// ---------------------------------------------------------------------------------------------

enum { MX_XZ, MX_CONV_W, MX_CONV_B, MX_CONV_W_B, MX_CONV_B_B, MX_XPROJ, MX_XPROJ_B, MX_DT_W,
       MX_DT_B, MX_DT_W_B, MX_DT_B_B, MX_A, MX_A_B, MX_D, MX_D_B };  // MixerCore's inputs

enum { PHASE_STAGE, PHASE_ROWS, PHASE_HALVES, PHASE_GATE };
#define GATE_TASKS 64  // the gate pass's rows in at most this many tasks

typedef struct {
    MixerArgs args;  // nthreads 1: each task is thread 0 of its own run
    int phase;
    int64_t tasks, remaining;
} MixerJob;

static void mixer_task(void *p, size_t i) {
    MixerJob *job = p;
    MixerArgs a = job->args;
    const int64_t t = (int64_t)i;
    if (job->phase == PHASE_STAGE) {
        mixer_stage(&a, 0, t, t + 1);
    } else if (job->phase == PHASE_GATE) {
        const int64_t rows = a.B * a.L;
        mixer_gate(&a, 0, rows * t / job->tasks, rows * (t + 1) / job->tasks);
    } else {
        a.scratch = thread_scratch(a.scratch_floats);
        if (!a.scratch) return;  // out of memory: the task count check reports it
        (job->phase == PHASE_ROWS ? mixer_rows : mixer_halves)(&a, 0, t, t + 1);
    }
    __atomic_fetch_sub(&job->remaining, 1, __ATOMIC_RELAXED);
}

static OrtStatus *mixer_phase(void *ctx, MixerJob *job, int phase, int64_t tasks) {
    job->phase = phase, job->tasks = job->remaining = tasks;
    TRY(CALL(KernelContext_ParallelFor, ParallelForFn, ctx, mixer_task, (size_t)tasks, (size_t)0,
             job));
    if (job->remaining != 0)
        return fail(ORT_FAIL, "vimc.MixerCore: %lld of %lld tasks did not run (out of memory?)",
                    (long long)job->remaining, (long long)tasks);
    return NULL;
}

static OrtStatus *compute_mixer(const CustomOp *op, void *ctx, const Input *in) {
    const int64_t B = in[MX_XZ].dims[0], L = in[MX_XZ].dims[1], E = in[MX_XZ].dims[2] / 2;
    const int64_t N = in[MX_A].dims[1], R = in[MX_DT_W].dims[1], K = in[MX_CONV_W].dims[2];
    if (in[MX_XZ].dims[2] % 2)
        return fail(ORT_INVALID_ARGUMENT, "vimc.%s: xz must be (B, L, 2E), got last dim %lld",
                    op->name, (long long)in[MX_XZ].dims[2]);
    if (E % LANES || E < 1)
        return fail(ORT_INVALID_ARGUMENT,
                    "vimc.%s: E = xz's last dim / 2 = %lld must be a positive multiple of %d, this "
                    "plugin build's vector width",
                    op->name, (long long)E, LANES);
    TRY(check_state_size(op, N));
    if (R < 1 || R > MAX_R || K < 1)
        return fail(ORT_INVALID_ARGUMENT,
                    "vimc.%s: dt_proj_weight's rank R must be in [1, %d] and the conv's width K "
                    ">= 1, got R = %lld, K = %lld",
                    op->name, MAX_R, (long long)R, (long long)K);
    const int64_t conv[3] = {E, 1, K}, chan[1] = {E}, xproj[2] = {R + 2 * N, E};
    const int64_t dtw[2] = {E, R}, A[2] = {E, N};
    const int64_t *want[15] = {in[MX_XZ].dims, conv, chan, conv, chan, xproj, xproj,
                               dtw,           chan, dtw,  chan, A,    A,    chan,  chan};
    for (int i = 1; i < 15; ++i)
        TRY(expect_from(op, in, i, want[i], "xz, A, dt_proj_weight and conv_weight"));
    void *out = NULL;
    const int64_t like_out[3] = {B, L, E};
    TRY(CALL(KernelContext_GetOutput, GetOutputFn, ctx, 0, like_out, 3, &out));
    if (B == 0 || L == 0) return NULL;  // an empty out: nothing to compute

    const int halves = B == 1;  // both directions of the one row at once, then the gate
    const int64_t shared = vimc_mixer_shared(E, N, R, K), ys = halves ? 2 * B * L * E : 0;
    MixerJob job;
    memset(&job, 0, sizeof job);
    MixerArgs *a = &job.args;
    float *buf = call_buffer(shared + ys);
    if (!buf) return fail(ORT_FAIL, "vimc.%s: out of memory", op->name);
    a->B = B, a->L = L, a->E = E, a->N = N, a->R = R, a->K = K, a->nthreads = 1;
    a->xz = data(in[MX_XZ].value), a->out = (float *)data(out);
    const int at[7][2] = {{MX_CONV_W, MX_CONV_W_B}, {MX_CONV_B, MX_CONV_B_B},
                          {MX_XPROJ, MX_XPROJ_B},   {MX_DT_W, MX_DT_W_B},
                          {MX_DT_B, MX_DT_B_B},     {MX_A, MX_A_B},
                          {MX_D, MX_D_B}};
    const float **to[7] = {a->conv_w, a->conv_b, a->x_proj, a->dt_w, a->dt_b, a->A, a->D};
    int missing = !a->xz || !a->out;
    for (int f = 0; f < 7; ++f)
        for (int d = 0; d < 2; ++d) missing |= !(to[f][d] = data(in[at[f][d]].value));
    if (missing) return fail(ORT_FAIL, "vimc.%s: a tensor gave no data pointer", op->name);
    a->shared = buf, a->y = halves ? buf + shared : NULL;
    a->scratch_floats = vimc_mixer_scratch(L, E, N, R);
    TRY(mixer_phase(ctx, &job, PHASE_STAGE, 2));
    if (!halves) return mixer_phase(ctx, &job, PHASE_ROWS, B);
    TRY(mixer_phase(ctx, &job, PHASE_HALVES, 2 * B));
    return mixer_phase(ctx, &job, PHASE_GATE, B * L < GATE_TASKS ? B * L : GATE_TASKS);
}

static OrtStatus *compute(void *kernel, void *ctx) {
    const Kernel *k = kernel;
    const CustomOp *op = k->op;
    size_t n_in = 0;
    TRY(CALL(KernelContext_GetInputCount, SizeOutFn, ctx, &n_in));
    Input in[MAX_INPUTS];
    memset(in, 0, sizeof in);
    for (int i = 0; i < op->n_in; ++i) {
        if ((size_t)i < n_in) TRY(read_input(op, ctx, i, &in[i]));
        else if (!op->in_optional[i])
            return fail(ORT_INVALID_ARGUMENT, "vimc.%s: input %s is required", op->name,
                        op->in_names[i]);
    }
    Job job;
    memset(&job, 0, sizeof job);
    if (op->kind == OP_MIXER) return compute_mixer(op, ctx, in);
    return op->kind == OP_BIDIRECTIONAL ? compute_bidirectional(k, ctx, in, &job)
                                        : compute_scan(k, ctx, in, &job);
}

// A flag attribute -> 0 or 1 in *out (absent: 0, mamba's default). Asked for as an int, then
// as a float, then as a string: a getter fails alike for an absent attribute and one of
// another type, and a float 1.0 read as "absent" was a silent wrong answer.
static OrtStatus *flag_attribute(const CustomOp *op, const void *info, const char *name,
                                 int64_t *out) {
    int64_t i = 0;
    float f = 0.0f;
    size_t size = 0;
    *out = 0;
    OrtStatus *st = CALL(KernelInfoGetAttribute_int64, AttrIntFn, info, name, &i);
    if (!st) {
        if (i != 0 && i != 1)
            return fail(ORT_INVALID_ARGUMENT, "vimc.%s: attribute %s must be 0 or 1, got %lld",
                        op->name, name, (long long)i);
        *out = i;
        return NULL;
    }
    CALL(ReleaseStatus, ReleaseFn, st);
    st = CALL(KernelInfoGetAttribute_float, AttrFloatFn, info, name, &f);
    if (!st) {
        if (f != 0.0f && f != 1.0f)  // NaN too
            return fail(ORT_INVALID_ARGUMENT, "vimc.%s: attribute %s must be 0 or 1, got %g",
                        op->name, name, (double)f);
        *out = f == 1.0f;
        return NULL;
    }
    CALL(ReleaseStatus, ReleaseFn, st);
    st = CALL(KernelInfoGetAttribute_string, AttrStringFn, info, name, NULL, &size);
    if (!st)
        return fail(ORT_INVALID_ARGUMENT,
                    "vimc.%s: attribute %s must be an int 0 or 1, got a string", op->name, name);
    CALL(ReleaseStatus, ReleaseFn, st);
    return NULL;  // absent (or of a type no flag is written as)
}

static OrtStatus *create_v2(const CustomOp *op, const OrtFn *api_, const void *info, void **out) {
    (void)api_;
    int64_t softplus = 0, reverse = 0;
    if (op->kind == OP_MIXER) softplus = 1;  // the mixer's steps always take softplus
    else TRY(flag_attribute(op, info, "delta_softplus", &softplus));
    if (op->kind == OP_SCAN) TRY(flag_attribute(op, info, "reverse", &reverse));
    Kernel *k = calloc(1, sizeof *k);
    if (!k) return fail(ORT_FAIL, "vimc.%s: out of memory", op->name);
    k->op = op;
    k->delta_softplus = softplus;
    k->reverse = reverse;
    *out = k;
    return NULL;
}

static void destroy(void *kernel) { free(kernel); }

// ---------------------------------------------------------------------------------------------
// the schema, as ONNX Runtime asks for it
// ---------------------------------------------------------------------------------------------

static const char *op_name(const CustomOp *op) { return op->name; }
static const char *op_provider(const CustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int op_float(const CustomOp *op, size_t i) { (void)op, (void)i; return ORT_FLOAT; }
static size_t op_inputs(const CustomOp *op) { return (size_t)op->n_in; }
static size_t op_outputs(const CustomOp *op) { return (size_t)op->n_out; }
static int op_input_kind(const CustomOp *op, size_t i) {
    return op->in_optional[i] ? ORT_OPTIONAL : ORT_REQUIRED;
}
static int op_output_kind(const CustomOp *op, size_t i) {
    (void)op;
    return i == 0 ? ORT_REQUIRED : ORT_OPTIONAL;
}
static int op_default_memory(const CustomOp *op, size_t i) { (void)op, (void)i; return 0; }
static int op_one(const CustomOp *op) { (void)op; return 1; }

#define OP_CALLBACKS                               \
    .version = ORT_OP_VERSION,                     \
    .GetName = op_name,                            \
    .GetExecutionProviderType = op_provider,       \
    .GetInputType = op_float,                      \
    .GetInputTypeCount = op_inputs,                \
    .GetOutputType = op_float,                     \
    .GetOutputTypeCount = op_outputs,              \
    .KernelDestroy = destroy,                      \
    .GetInputCharacteristic = op_input_kind,       \
    .GetOutputCharacteristic = op_output_kind,     \
    .GetInputMemoryType = op_default_memory,       \
    .GetVariadicInputMinArity = op_one,            \
    .GetVariadicInputHomogeneity = op_one,         \
    .GetVariadicOutputMinArity = op_one,           \
    .GetVariadicOutputHomogeneity = op_one,        \
    .CreateKernelV2 = create_v2,                   \
    .KernelComputeV2 = compute

static const char *const SCAN_INPUTS[] = {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"};
static const int SCAN_RANKS[] = {3, 3, 2, 4, 4, 1, 3, 1};
static const unsigned char SCAN_OPTIONAL[] = {0, 0, 0, 0, 0, 1, 1, 1};

static const char *const BIDIR_INPUTS[] = {
    "u",   "delta",   "A",   "B",   "C",   "D",   "delta_bias",
    "u_b", "delta_b", "A_b", "B_b", "C_b", "D_b", "delta_bias_b", "z"};
static const int BIDIR_RANKS[] = {3, 3, 2, 3, 3, 1, 1, 3, 3, 2, 3, 3, 1, 1, 3};
static const unsigned char BIDIR_OPTIONAL[] = {0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1};

static const char *const MIXER_INPUTS[] = {
    "xz",           "conv_weight",     "conv_bias",      "conv_weight_b",    "conv_bias_b",
    "x_proj_weight", "x_proj_weight_b", "dt_proj_weight", "dt_proj_bias",    "dt_proj_weight_b",
    "dt_proj_bias_b", "A",             "A_b",            "D",                "D_b"};
static const int MIXER_RANKS[] = {3, 3, 1, 3, 1, 2, 2, 2, 1, 2, 1, 2, 2, 1, 1};
static const unsigned char MIXER_OPTIONAL[15] = {0};

static const CustomOp OPS[] = {
    {OP_CALLBACKS, .name = "SelectiveScan", .n_in = 8, .n_out = 2, .kind = OP_SCAN,
     .in_names = SCAN_INPUTS, .in_ranks = SCAN_RANKS, .in_optional = SCAN_OPTIONAL},
    {OP_CALLBACKS, .name = "SelectiveScanBidirectional", .n_in = 15, .n_out = 1,
     .kind = OP_BIDIRECTIONAL, .in_names = BIDIR_INPUTS, .in_ranks = BIDIR_RANKS,
     .in_optional = BIDIR_OPTIONAL},
    {OP_CALLBACKS, .name = "MixerCore", .n_in = 15, .n_out = 1, .kind = OP_MIXER,
     .in_names = MIXER_INPUTS, .in_ranks = MIXER_RANKS, .in_optional = MIXER_OPTIONAL},
};

__attribute__((visibility("default"))) OrtStatus *RegisterCustomOps(void *options,
                                                                     const OrtApiBase *base) {
    api = base->GetApi(ORT_API_USED);
    if (!api) {  // version 1's table always exists, and its first slot makes a status
        api = base->GetApi(1);
        return fail(ORT_FAIL, "vimc's ONNX Runtime plugin needs onnxruntime >= 1.17, found %s",
                    base->GetVersionString());
    }
    void *domain = NULL;
    TRY(CALL(CreateCustomOpDomain, DomainFn, "vimc", &domain));
    for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; ++i)
        TRY(CALL(CustomOpDomain_Add, AddFn, domain, &OPS[i]));
    // kept for the life of the process: it must outlive every session that uses it
    return CALL(AddCustomOpDomain, AddFn, options, domain);
}
