/* Training kernels for the CPU (fashiondist/models/pool.py, layers.py; engine/batches.py), as a CPython
 * extension.
 *
 * pool_forward(x, out, code, batch, height, width, channels, is_bf16)
 *     2x2, stride-2 max-pool. x: [batch, height, width, channels] (a channels_last tensor's memory), bf16 or
 *     float32; out: [batch, height / 2, width / 2, channels] (floor), the same dtype; code: uint8 of out's
 *     shape, which of the window's four elements (0..3, row-major) out took.
 * pool_backward(grad_out, code, grad_in, batch, height, width, channels, itemsize)
 *     grad_in [batch, height, width, channels] gets grad_out where code points and 0 everywhere else
 *     (the last row and column of an odd size included), every element written.
 * dropout_forward(x, out, keep, count, threshold, scale, seed, is_bf16)
 *     keep[i] = 1 where random byte i >= threshold, else 0; out[i] = x[i] * (keep[i] ? scale : 0), a product
 *     as torch's `x * mask` has it (a dropped inf or NaN gives NaN, a dropped -1 gives -0).
 * dropout_backward(grad_out, keep, grad_in, count, scale, is_bf16)
 *     grad_in[i] = grad_out[i] * (keep[i] ? scale : 0).
 * pool_relu_dropout_forward(x, out, code, batch, height, width, channels, is_bf16, threshold, scale, seed)
 *     The pool, torch's ReLU and the dropout above in one call (pool.py `PoolReluDropoutSequential`): out as
 *     the three give it, the keep bytes drawn as dropout_forward draws them over out, and one code byte per
 *     output: which (bits 0-1), keep (bit 2), the ReLU passes a gradient (bit 3).
 * pool_relu_dropout_backward(grad_out, code, grad_in, batch, height, width, channels, itemsize, scale)
 *     The three backwards in one: grad_in gets grad_out * (keep ? scale : 0) where the code points and the
 *     ReLU passes, 0 everywhere else.
 * conv1_weight_grad(x, grad_out, grad_w, grad_b, batch, height, width, channels, padding)
 *     float32 weight [channels, 9] and bias [channels] (grad_b 0: none) gradients of a 3x3, stride-1
 *     convolution of x [batch, height, width] (one input channel), padding 0 or 1, from grad_out
 *     [batch, out_h, out_w, channels]; channels a multiple of 16.
 * augment(images, n, index, flip, dy, dx, box, out, count, height, width)
 *     The engine's training augmentation (engine/batches.py `apply_augment`) of uint8 images[index[i]]
 *     ([n, height, width]; index int64 [count], each checked against n) into out [count, height, width]:
 *     out[r][c] is the source pixel (r - dy, c - dx), mirrored (column width - 1 - (c - dx)) where flip
 *     (uint8 [count]), 0 outside the image; then 0 inside box (int64 [count, 4]: y0, x0, y1, x1,
 *     half-open) unless box is 0.
 *
 * Arguments are raw addresses (`Tensor.data_ptr()`) and sizes; the Python side checks dtypes, shapes and
 * layout first. The GIL is released during each loop, and a large call is split over torch's OpenMP threads
 * (`use_threads`, `threads`; see run_split).
 *
 * The pool chooses as torch does (aten/src/ATen/native/cpu/MaxPoolKernel.cpp, channels-last): an element
 * replaces the window's maximum when it is greater, or NaN, so the first maximum of a tie wins and a NaN
 * propagates; values and gradients are torch's bit for bit. What differs is the cost: torch stores an int64
 * index per output and its backward zero-fills the input's gradient before it scatters; here one byte per
 * output, and the backward writes each input element once.
 *
 * The dropout's random bytes are splitmix64 of (seed, word index), 8 bytes a word in memory order:
 * counter-based, so any slice of the mask can be made on its own and the same seed gives the same mask.
 * The product x * scale is rounded once, to nearest even, as torch rounds a float32 product to bf16.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <dlfcn.h>

/* Each kernel is built three times, for AVX-512 (F, BW, DQ, VL), AVX2 and the x86-64 baseline, and the module
 * picks the best this CPU runs when it loads (`isa()` says which; `use_isa` switches, for the tests). The
 * loops vectorise: against the baseline's SSE2 build, the pool forward ran ~1.5-2x and the dropout forward
 * ~2.7x faster built for this Xeon. gcc's target_clones("arch=...") was not used: it dispatches on the exact
 * CPU model, and a VM's generic Xeon matched none. Elsewhere (not x86-64, or another compiler) only the
 * baseline is built. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define X86_VARIANTS 1
#define ISA_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#define ISA_AVX2 __attribute__((target("avx2,fma")))
#else
#define X86_VARIANTS 0
#endif

/* bf16 is the top half of a float32: widen by a shift. */
static inline float bf16_to_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* One window across the channels: the maximum of a, b, c, d (the window's row-major order) and which it was.
 * Written without branches (selects), so the loop vectorises (1.3x faster than if/else in the baseline
 * build). */
#define WINDOW(NAME, T, LOAD)                                                                                  \
    static inline void NAME(T *restrict out, uint8_t *restrict code, const T *restrict a, const T *restrict b, \
                            const T *restrict c, const T *restrict d, Py_ssize_t channels)                    \
    {                                                                                                          \
        for (Py_ssize_t ch = 0; ch < channels; ch++) {                                                         \
            float m = LOAD(a[ch]), v;                                                                          \
            T best = a[ch];                                                                                    \
            uint8_t which = 0;                                                                                 \
            int take;                                                                                          \
            v = LOAD(b[ch]);                                                                                   \
            take = (v > m) | (v != v);                                                                         \
            m = take ? v : m, best = take ? b[ch] : best, which = take ? 1 : which;                            \
            v = LOAD(c[ch]);                                                                                   \
            take = (v > m) | (v != v);                                                                         \
            m = take ? v : m, best = take ? c[ch] : best, which = take ? 2 : which;                            \
            v = LOAD(d[ch]);                                                                                   \
            take = (v > m) | (v != v);                                                                         \
            best = take ? d[ch] : best, which = take ? 3 : which;                                              \
            out[ch] = best;                                                                                    \
            code[ch] = which;                                                                                  \
        }                                                                                                      \
    }

/* Every output row: input rows 2i and 2i + 1 (a trailing odd row or column is not read). */
#define POOL(T, WINDOW_FN)                                                                                     \
    const Py_ssize_t out_h = height / 2, out_w = width / 2, row = width * channels;                            \
    for (Py_ssize_t n = 0; n < images; n++) {                                                                  \
        for (Py_ssize_t i = 0; i < out_h; i++) {                                                               \
            const T *top = x + (n * height + 2 * i) * row;                                                     \
            for (Py_ssize_t j = 0; j < out_w; j++) {                                                           \
                const T *a = top + 2 * j * channels;                                                           \
                WINDOW_FN(out + j * channels, code + j * channels, a, a + channels, a + row,                   \
                          a + row + channels, channels);                                                       \
            }                                                                                                  \
            out += out_w * channels;                                                                           \
            code += out_w * channels;                                                                          \
        }                                                                                                      \
    }

#define IDENTITY(x) (x)
WINDOW(window_bf16, uint16_t, bf16_to_float)
WINDOW(window_f32, float, IDENTITY)


/* One of a window's four positions across the channels: g where the window's code (its low two bits) chose
 * it, else 0 (a zero of either dtype is all zero bits), as a mask: a select compiled to a branch on the random
 * codes measured 30x slower. Four passes per window, each vectorised (restrict pointers). */
#define PICK(NAME, T)                                                                                          \
    static inline void NAME(T *restrict dst, const T *restrict g, const uint8_t *restrict k, uint8_t which,    \
                            Py_ssize_t channels)                                                               \
    {                                                                                                          \
        for (Py_ssize_t ch = 0; ch < channels; ch++)                                                           \
            dst[ch] = g[ch] & (T)(0u - (unsigned)((k[ch] & 3u) == which));                                     \
    }
PICK(pick_16, uint16_t)
PICK(pick_32, uint32_t)

/* grad_in's rows under output row i, then a trailing odd column, then (per image) a trailing odd row. ROW is
 * the output row's gradient as the windows route it: `grad` itself for the pool, gated by the codes for the
 * fused layer. */
#define UNPOOL(T, PICK_FN, ROW)                                                                                \
    const Py_ssize_t out_h = height / 2, out_w = width / 2, row = width * channels;                            \
    for (Py_ssize_t n = 0; n < images; n++) {                                                                  \
        T *image = grad_in + n * height * row;                                                                 \
        for (Py_ssize_t i = 0; i < out_h; i++) {                                                               \
            T *top = image + 2 * i * row;                                                                      \
            const T *row_grad = ROW;                                                                           \
            for (Py_ssize_t j = 0; j < out_w; j++) {                                                           \
                T *a = top + 2 * j * channels;                                                                 \
                const T *g = row_grad + j * channels;                                                          \
                const uint8_t *k = code + j * channels;                                                        \
                PICK_FN(a, g, k, 0, channels);                                                                 \
                PICK_FN(a + channels, g, k, 1, channels);                                                      \
                PICK_FN(a + row, g, k, 2, channels);                                                           \
                PICK_FN(a + row + channels, g, k, 3, channels);                                                \
            }                                                                                                  \
            if (width & 1) {                                                                                   \
                memset(top + 2 * out_w * channels, 0, channels * sizeof(T));                                   \
                memset(top + row + 2 * out_w * channels, 0, channels * sizeof(T));                             \
            }                                                                                                  \
            grad += out_w * channels;                                                                          \
            code += out_w * channels;                                                                          \
        }                                                                                                      \
        if (height & 1)                                                                                        \
            memset(image + (height - 1) * row, 0, row * sizeof(T));                                            \
    }


/* float32 -> bf16, round to nearest even (torch's c10::BFloat16 rounding); a NaN becomes 0x7FC0. */
static inline uint16_t float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint16_t rounded = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return f != f ? (uint16_t)0x7FC0 : rounded;
}

/* The fused layer's gradient at its pool's outputs: the dropout's product (rounded as `SCALE` rounds it)
 * where the ReLU passes (code bit 3), else +0 as `threshold_backward` writes it. */
static inline void gate_16(uint16_t *restrict dst, const uint16_t *restrict g, const uint8_t *restrict k,
                           Py_ssize_t count, float scale)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint16_t v = float_to_bf16(bf16_to_float(g[i]) * ((k[i] & 4u) ? scale : 0.0f));
        dst[i] = v & (uint16_t)(0u - ((k[i] >> 3) & 1u));
    }
}

static inline void gate_32(uint32_t *restrict dst, const uint32_t *restrict g, const uint8_t *restrict k,
                           Py_ssize_t count, float scale)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        float v;
        uint32_t u;
        memcpy(&v, g + i, sizeof v);
        v *= (k[i] & 4u) ? scale : 0.0f;
        memcpy(&u, &v, sizeof u);
        dst[i] = u & (0u - ((k[i] >> 3) & 1u));
    }
}


static inline uint64_t splitmix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

#define GOLDEN_GAMMA 0x9E3779B97F4A7C15ull /* splitmix64's increment */
#define DROPOUT_BLOCK 4096                 /* elements per block: its bytes stay in L1 between the passes */

/* keep[i] for i in [start, start + count), count <= DROPOUT_BLOCK: the words into a buffer, then their bytes
 * against the threshold, two loops that vectorise (one loop that took each word's bytes by shifts stayed
 * scalar). Byte i is byte i % 8 of word i / 8 wherever a draw starts, so a split of the work draws the
 * same mask. */
#define DRAW_KEEP                                                                                              \
    uint64_t words[DROPOUT_BLOCK / 8 + 1];                                                                     \
    const Py_ssize_t skip = start % 8;                                                                         \
    const uint64_t first = (uint64_t)(start / 8) + 1, n = (uint64_t)(skip + count + 7) / 8;                    \
    for (uint64_t w = 0; w < n; w++)                                                                           \
        words[w] = splitmix64(seed + (first + w) * GOLDEN_GAMMA);                                              \
    const uint8_t *restrict bytes = (const uint8_t *)words + skip;                                             \
    for (Py_ssize_t i = 0; i < count; i++)                                                                     \
        keep[i] = bytes[i] >= threshold;

/* out[i] = in[i] * (keep[i] ? scale : 0), rounded once to the dtype. */
#define SCALE(LOAD, STORE)                                                                                     \
    for (Py_ssize_t i = 0; i < count; i++)                                                                     \
        out[i] = STORE(LOAD(in[i]) * (keep[i] ? scale : 0.0f));

#define POOL_ARGS(T) const T *x, T *out, uint8_t *code, Py_ssize_t images, Py_ssize_t height, Py_ssize_t width, \
                     Py_ssize_t channels
#define UNPOOL_ARGS(T) const T *grad, const uint8_t *code, T *grad_in, Py_ssize_t images, Py_ssize_t height,    \
                       Py_ssize_t width, Py_ssize_t channels
#define SCALE_ARGS(T) const T *restrict in, const uint8_t *restrict keep, T *restrict out, Py_ssize_t count,     \
                      float scale
#define DRAW_ARGS uint8_t *restrict keep, Py_ssize_t start, Py_ssize_t count, unsigned threshold, uint64_t seed
#define FUSED_ARGS(T) POOL_ARGS(T), unsigned threshold, float scale, uint64_t seed, Py_ssize_t first
#define UNFUSED_ARGS(T) UNPOOL_ARGS(T), float scale, T *row_buffer

/* pool_relu_dropout's second pass, over the pooled output (cache-hot), DROPOUT_BLOCK at a time: the keep
 * bytes as dropout draws them, element for element (`first`: the index of out[0] in the whole output); the ReLU as torch's (`m < 0 ? 0 : m`: -0 and NaN pass);
 * the product rounded once as `SCALE` rounds it; and the code gains the keep bit (bit 2) and whether the
 * ReLU passes a gradient (bit 3): `threshold_backward`'s test on the ReLU's output, m > 0 or NaN. One loop
 * with the pool's window measured 20x slower: it did not vectorise. */
#define RELU_DROPOUT(T, LOAD, STORE, DRAW_FN)                                                                  \
    const Py_ssize_t total = images * (height / 2) * (width / 2) * channels;                                   \
    uint8_t keep[DROPOUT_BLOCK];                                                                               \
    for (Py_ssize_t start = 0; start < total; start += DROPOUT_BLOCK) {                                        \
        const Py_ssize_t count = total - start < DROPOUT_BLOCK ? total - start : DROPOUT_BLOCK;                \
        T *restrict y = pooled + start;                                                                        \
        uint8_t *restrict k = codes + start;                                                                   \
        DRAW_FN(keep, first + start, count, threshold, seed);                                                  \
        for (Py_ssize_t i = 0; i < count; i++) {                                                               \
            const float m = LOAD(y[i]);                                                                        \
            y[i] = STORE((m < 0.0f ? 0.0f : m) * (keep[i] ? scale : 0.0f));                                    \
            k[i] = (uint8_t)(k[i] | keep[i] << 2 | ((m > 0.0f) | (m != m)) << 3);                              \
        }                                                                                                      \
    }

/* conv1_weight_grad: the float32 weight and bias gradients of a 3x3, stride-1, one-input-channel convolution
 * (a model's first layer, on images), padding 0 or 1. oneDNN computes them as a general convolution's and took
 * ~2.3 ms of a float32 cnn-dropout step on AVX2 for 50 MFLOP; here one image at a time, 16 output channels by
 * one kernel row, the three taps of the row in registers. Each CONV1_CHUNK images make one partial sum and the
 * partials add up in order, so the result does not depend on how the chunks are split over threads. (A bf16
 * version measured no faster than oneDNN's bf16 kernels, AMX or avx512_bf16.) */
#define CONV1_BLOCK 16
#define CONV1_CHUNK 8
/* Two 8-lane halves as GCC vector extensions: the auto-vectoriser kept the sums on the stack (20x slower), and
 * a 16-lane type ran piecewise in the AVX2 build. Each build lowers 8 lanes to its registers (ymm; two xmm in
 * the baseline). */
typedef float f32x8 __attribute__((vector_size(32)));
#define LOAD8(v, p) memcpy(&(v), (p), sizeof(f32x8))
#define CONV1_ARGS const float *x, const float *g, float *partial, Py_ssize_t images, Py_ssize_t height,          \
                   Py_ssize_t width, Py_ssize_t channels, Py_ssize_t pad, int bias
/* dst[o * stride] += the 16 lanes of (lo, hi) */
#define ADD16(dst, lo, hi, stride)                                                                             \
    do {                                                                                                       \
        float l_[16];                                                                                          \
        memcpy(l_, &(lo), sizeof(f32x8));                                                                      \
        memcpy(l_ + 8, &(hi), sizeof(f32x8));                                                                  \
        for (int o = 0; o < 16; o++)                                                                           \
            (dst)[o * (stride)] += l_[o];                                                                      \
    } while (0)
#define CONV1_GRAD                                                                                             \
    const Py_ssize_t out_h = height + 2 * pad - 2, out_w = width + 2 * pad - 2;                                \
    for (Py_ssize_t img = 0; img < images; img++) {                                                            \
        const float *xi = x + img * height * width, *gi = g + img * out_h * out_w * channels;                  \
        for (Py_ssize_t ob = 0; ob < channels; ob += CONV1_BLOCK) {                                            \
            for (Py_ssize_t kh = 0; kh < 3; kh++) {                                                            \
                f32x8 a0 = {0}, a1 = {0}, a2 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, lo, hi;                      \
                for (Py_ssize_t oh = 0; oh < out_h; oh++) {                                                    \
                    const Py_ssize_t r = oh + kh - pad;                                                        \
                    if (r < 0 || r >= height)                                                                  \
                        continue;                                                                              \
                    const float *xr = xi + r * width, *grow = gi + oh * out_w * channels + ob;                 \
                    for (Py_ssize_t ow = 0; ow < out_w; ow++) {                                                \
                        const Py_ssize_t c = ow - pad;                                                         \
                        const float x0 = c >= 0 ? xr[c] : 0.0f, x1 = xr[c + 1];                                \
                        const float x2 = c + 2 < width ? xr[c + 2] : 0.0f;                                     \
                        LOAD8(lo, grow + ow * channels);                                                       \
                        LOAD8(hi, grow + ow * channels + 8);                                                   \
                        a0 += x0 * lo, a1 += x1 * lo, a2 += x2 * lo;                                           \
                        b0 += x0 * hi, b1 += x1 * hi, b2 += x2 * hi;                                           \
                    }                                                                                          \
                }                                                                                              \
                float *w = partial + ob * 9 + kh * 3;                                                          \
                ADD16(w, a0, b0, 9);                                                                           \
                ADD16(w + 1, a1, b1, 9);                                                                       \
                ADD16(w + 2, a2, b2, 9);                                                                       \
            }                                                                                                  \
            if (bias) {                                                                                        \
                f32x8 s0 = {0}, s1 = {0}, lo, hi;                                                              \
                for (Py_ssize_t p = 0; p < out_h * out_w; p++) {                                               \
                    LOAD8(lo, gi + p * channels + ob);                                                         \
                    LOAD8(hi, gi + p * channels + ob + 8);                                                     \
                    s0 += lo, s1 += hi;                                                                        \
                }                                                                                              \
                ADD16(partial + channels * 9 + ob, s0, s1, 1);                                                 \
            }                                                                                                  \
        }                                                                                                      \
    }

/* pool_relu_dropout's forward: the pool, then the pass above (POOL moves out and code along). */
#define FUSED(T, WINDOW_FN, LOAD, STORE, DRAW_FN)                                                              \
    T *pooled = out;                                                                                           \
    uint8_t *codes = code;                                                                                     \
    POOL(T, WINDOW_FN)                                                                                         \
    RELU_DROPOUT(T, LOAD, STORE, DRAW_FN)

/* Every kernel, built with attribute ATTR under names ending in SUFFIX, and its row in the dispatch table. */
#define KERNELS(SUFFIX, ATTR)                                                                                  \
    ATTR static void pool_bf16_##SUFFIX(POOL_ARGS(uint16_t)) { POOL(uint16_t, window_bf16) }                   \
    ATTR static void pool_f32_##SUFFIX(POOL_ARGS(float)) { POOL(float, window_f32) }                           \
    ATTR static void unpool_16_##SUFFIX(UNPOOL_ARGS(uint16_t)) { UNPOOL(uint16_t, pick_16, grad) }             \
    ATTR static void unpool_32_##SUFFIX(UNPOOL_ARGS(uint32_t)) { UNPOOL(uint32_t, pick_32, grad) }             \
    ATTR static void draw_keep_##SUFFIX(DRAW_ARGS) { DRAW_KEEP }                                               \
    ATTR static void conv1_##SUFFIX(CONV1_ARGS) { CONV1_GRAD }                                                 \
    ATTR static void fused_bf16_##SUFFIX(FUSED_ARGS(uint16_t))                                                 \
    {                                                                                                          \
        FUSED(uint16_t, window_bf16, bf16_to_float, float_to_bf16, draw_keep_##SUFFIX)                         \
    }                                                                                                          \
    ATTR static void fused_f32_##SUFFIX(FUSED_ARGS(float))                                                     \
    {                                                                                                          \
        FUSED(float, window_f32, IDENTITY, IDENTITY, draw_keep_##SUFFIX)                                       \
    }                                                                                                          \
    ATTR static void unfused_16_##SUFFIX(UNFUSED_ARGS(uint16_t))                                               \
    {                                                                                                          \
        UNPOOL(uint16_t, pick_16, (gate_16(row_buffer, grad, code, out_w * channels, scale), row_buffer))      \
    }                                                                                                          \
    ATTR static void unfused_32_##SUFFIX(UNFUSED_ARGS(uint32_t))                                               \
    {                                                                                                          \
        UNPOOL(uint32_t, pick_32, (gate_32(row_buffer, grad, code, out_w * channels, scale), row_buffer))      \
    }                                                                                                          \
    ATTR static void scale_bf16_##SUFFIX(SCALE_ARGS(uint16_t)) { SCALE(bf16_to_float, float_to_bf16) }         \
    ATTR static void scale_f32_##SUFFIX(SCALE_ARGS(float)) { SCALE(IDENTITY, IDENTITY) }                       \
    static const Kernels kernels_##SUFFIX = {#SUFFIX,                                                          \
                                             pool_bf16_##SUFFIX,                                               \
                                             pool_f32_##SUFFIX,                                                \
                                             unpool_16_##SUFFIX,                                               \
                                             unpool_32_##SUFFIX,                                               \
                                             draw_keep_##SUFFIX,                                               \
                                             scale_bf16_##SUFFIX,                                              \
                                             scale_f32_##SUFFIX,                                               \
                                             fused_bf16_##SUFFIX,                                              \
                                             fused_f32_##SUFFIX,                                               \
                                             unfused_16_##SUFFIX,                                              \
                                             unfused_32_##SUFFIX,                                              \
                                             conv1_##SUFFIX};

typedef struct {
    const char *isa;
    void (*pool_bf16)(POOL_ARGS(uint16_t));
    void (*pool_f32)(POOL_ARGS(float));
    void (*unpool_16)(UNPOOL_ARGS(uint16_t));
    void (*unpool_32)(UNPOOL_ARGS(uint32_t));
    void (*draw_keep)(DRAW_ARGS);
    void (*scale_bf16)(SCALE_ARGS(uint16_t));
    void (*scale_f32)(SCALE_ARGS(float));
    void (*fused_bf16)(FUSED_ARGS(uint16_t));
    void (*fused_f32)(FUSED_ARGS(float));
    void (*unfused_16)(UNFUSED_ARGS(uint16_t));
    void (*unfused_32)(UNFUSED_ARGS(uint32_t));
    void (*conv1)(CONV1_ARGS);
} Kernels;

KERNELS(baseline, )
#if X86_VARIANTS
KERNELS(avx2, ISA_AVX2)
KERNELS(avx512, ISA_AVX512)
#endif

static const Kernels *K = &kernels_baseline; /* set by the module's init */

/* The builds this CPU can run, best first. */
static int runnable(const Kernels **out)
{
    int n = 0;
#if X86_VARIANTS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        out[n++] = &kernels_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        out[n++] = &kernels_avx2;
#endif
    out[n++] = &kernels_baseline;
    return n;
}

/* The work of one call split over torch's own OpenMP threads: the libgomp torch loaded (its wheels bundle
 * one), found by soname and used only if it is already in the process (RTLD_NOLOAD). Those threads are the
 * ones that spin between torch's ops, so a part starts at once, and the data a conv left in the other
 * core's cache is read where it lies; threads of our own measured slower than one thread (they competed
 * with the spinning ones). Without that libgomp, or under `use_threads(1)`, a call runs on its caller. The
 * parts are images (the pools) or dropout blocks, and every part writes what one thread would have written,
 * so the numbers do not depend on the split. */
typedef void (*PartFn)(const void *job, Py_ssize_t lo, Py_ssize_t hi);
typedef struct {
    PartFn fn;
    const void *job;
    Py_ssize_t count;
} Split;

static void (*gomp_parallel)(void (*)(void *), void *, unsigned, unsigned);
static int (*omp_thread_num)(void), (*omp_num_threads)(void), (*omp_max_threads)(void);
static int split_threads = 0;                /* 0: OpenMP's own count (torch.set_num_threads), 1: no split */
#define SPLIT_MIN_BYTES ((Py_ssize_t)1 << 17) /* below ~128 KiB written, waking a thread costs more */

static void find_openmp(void)
{
    void *gomp = dlopen("libgomp.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (!gomp)
        return;
    *(void **)&omp_thread_num = dlsym(gomp, "omp_get_thread_num");
    *(void **)&omp_num_threads = dlsym(gomp, "omp_get_num_threads");
    *(void **)&omp_max_threads = dlsym(gomp, "omp_get_max_threads");
    if (omp_thread_num && omp_num_threads && omp_max_threads)
        *(void **)&gomp_parallel = dlsym(gomp, "GOMP_parallel");
}

static int thread_index(void)
{
    return gomp_parallel ? omp_thread_num() : 0;
}

/* How many parts may run at once: the row buffers a call needs. */
static int max_parts(void)
{
    if (!gomp_parallel || split_threads == 1)
        return 1;
    return split_threads > 1 ? split_threads : omp_max_threads();
}

static void run_part(void *arg)
{
    const Split *split = arg;
    const Py_ssize_t t = omp_thread_num(), parts = omp_num_threads();
    const Py_ssize_t lo = split->count * t / parts, hi = split->count * (t + 1) / parts;
    if (lo < hi)
        split->fn(split->job, lo, hi);
}

/* fn(job, lo, hi) over [0, count), in one part per thread where `bytes` (what the call writes) is worth it. */
static void run_split(PartFn fn, const void *job, Py_ssize_t count, Py_ssize_t bytes)
{
    if (gomp_parallel && split_threads != 1 && count > 1 && bytes >= SPLIT_MIN_BYTES) {
        Split split = {fn, job, count};
        gomp_parallel(run_part, &split, (unsigned)split_threads, 0);
    } else if (count > 0) {
        fn(job, 0, count);
    }
}

/* The pools, plain or fused, forward and backward: parts are images. */
typedef struct {
    const char *in;
    char *out;
    uint8_t *code;
    Py_ssize_t height, width, channels, itemsize;
    int fused;
    unsigned threshold;
    float scale;
    uint64_t seed;
    char *row_buffers; /* backward of the fused layer: one output row per part */
} PoolJob;

static void pool_part(const void *arg, Py_ssize_t lo, Py_ssize_t hi)
{
    const PoolJob *j = arg;
    const Py_ssize_t in_image = j->height * j->width * j->channels;
    const Py_ssize_t out_image = (j->height / 2) * (j->width / 2) * j->channels;
    const void *x = j->in + lo * in_image * j->itemsize;
    void *out = j->out + lo * out_image * j->itemsize;
    uint8_t *code = j->code + lo * out_image;
    const Py_ssize_t n = hi - lo, h = j->height, w = j->width, c = j->channels;
    if (j->fused && j->itemsize == 2)
        K->fused_bf16(x, out, code, n, h, w, c, j->threshold, j->scale, j->seed, lo * out_image);
    else if (j->fused)
        K->fused_f32(x, out, code, n, h, w, c, j->threshold, j->scale, j->seed, lo * out_image);
    else if (j->itemsize == 2)
        K->pool_bf16(x, out, code, n, h, w, c);
    else
        K->pool_f32(x, out, code, n, h, w, c);
}

/* in: the output's gradient, out: the input's. */
static void unpool_part(const void *arg, Py_ssize_t lo, Py_ssize_t hi)
{
    const PoolJob *j = arg;
    const Py_ssize_t in_image = j->height * j->width * j->channels;
    const Py_ssize_t out_row = (j->width / 2) * j->channels, out_image = (j->height / 2) * out_row;
    const void *grad = j->in + lo * out_image * j->itemsize;
    void *grad_in = j->out + lo * in_image * j->itemsize;
    const uint8_t *code = j->code + lo * out_image;
    const Py_ssize_t n = hi - lo, h = j->height, w = j->width, c = j->channels;
    void *row_buffer = j->row_buffers + thread_index() * out_row * j->itemsize;
    if (j->fused && j->itemsize == 2)
        K->unfused_16(grad, code, grad_in, n, h, w, c, j->scale, row_buffer);
    else if (j->fused)
        K->unfused_32(grad, code, grad_in, n, h, w, c, j->scale, row_buffer);
    else if (j->itemsize == 2)
        K->unpool_16(grad, code, grad_in, n, h, w, c);
    else
        K->unpool_32(grad, code, grad_in, n, h, w, c);
}

/* Dropout forward (draw and scale) and backward (scale): parts are DROPOUT_BLOCKs. */
typedef struct {
    const char *in;
    char *out;
    uint8_t *keep;
    Py_ssize_t count, itemsize;
    int draw;
    unsigned threshold;
    float scale;
    uint64_t seed;
} DropoutJob;

static void dropout_part(const void *arg, Py_ssize_t lo, Py_ssize_t hi)
{
    const DropoutJob *j = arg;
    for (Py_ssize_t block = lo; block < hi; block++) {
        const Py_ssize_t start = block * DROPOUT_BLOCK;
        const Py_ssize_t n = j->count - start < DROPOUT_BLOCK ? j->count - start : DROPOUT_BLOCK;
        if (j->draw)
            K->draw_keep(j->keep + start, start, n, j->threshold, j->seed);
        if (j->itemsize == 2)
            K->scale_bf16((const uint16_t *)j->in + start, j->keep + start, (uint16_t *)j->out + start, n, j->scale);
        else
            K->scale_f32((const float *)j->in + start, j->keep + start, (float *)j->out + start, n, j->scale);
    }
}

static void run_dropout(DropoutJob *job)
{
    run_split(dropout_part, job, (job->count + DROPOUT_BLOCK - 1) / DROPOUT_BLOCK, job->count * job->itemsize);
}

static int sizes_ok(Py_ssize_t images, Py_ssize_t height, Py_ssize_t width, Py_ssize_t channels)
{
    if (images < 0 || height < 2 || width < 2 || channels < 1) {
        PyErr_SetString(PyExc_ValueError, "pool: needs images >= 0, height and width >= 2, channels >= 1");
        return 0;
    }
    return 1;
}

static int itemsize_ok(Py_ssize_t itemsize, const char *name)
{
    if (itemsize != 2 && itemsize != 4) {
        PyErr_Format(PyExc_ValueError, "%s: itemsize must be 2 or 4", name);
        return 0;
    }
    return 1;
}

/* A pool's forward, plain or fused, once the arguments are parsed. */
static PyObject *run_pool(PoolJob *job, Py_ssize_t images)
{
    if (!sizes_ok(images, job->height, job->width, job->channels))
        return NULL;
    const Py_ssize_t bytes = images * job->height * job->width * job->channels * job->itemsize;
    Py_BEGIN_ALLOW_THREADS
    run_split(pool_part, job, images, bytes / 4);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* A pool's backward, plain or fused, once the arguments are parsed. */
static PyObject *run_unpool(PoolJob *job, Py_ssize_t images, const char *name)
{
    if (!sizes_ok(images, job->height, job->width, job->channels) || !itemsize_ok(job->itemsize, name))
        return NULL;
    const Py_ssize_t out_row = (job->width / 2) * job->channels * job->itemsize;
    job->row_buffers = job->fused ? PyMem_RawMalloc((size_t)(max_parts() * out_row)) : NULL;
    if (job->fused && !job->row_buffers)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    run_split(unpool_part, job, images, images * job->height * job->width * job->channels * job->itemsize);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(job->row_buffers);
    Py_RETURN_NONE;
}

static PyObject *py_pool_forward(PyObject *self, PyObject *args)
{
    unsigned long long x, out, code;
    Py_ssize_t images, height, width, channels;
    int is_bf16;
    if (!PyArg_ParseTuple(args, "KKKnnnnp:pool_forward", &x, &out, &code, &images, &height, &width, &channels,
                          &is_bf16))
        return NULL;
    PoolJob job = {(const char *)(uintptr_t)x, (char *)(uintptr_t)out, (uint8_t *)(uintptr_t)code, height, width,
                   channels, is_bf16 ? 2 : 4};
    return run_pool(&job, images);
}

static PyObject *py_pool_backward(PyObject *self, PyObject *args)
{
    unsigned long long grad, code, grad_in;
    Py_ssize_t images, height, width, channels, itemsize;
    if (!PyArg_ParseTuple(args, "KKKnnnnn:pool_backward", &grad, &code, &grad_in, &images, &height, &width, &channels,
                          &itemsize))
        return NULL;
    PoolJob job = {(const char *)(uintptr_t)grad, (char *)(uintptr_t)grad_in, (uint8_t *)(uintptr_t)code, height,
                   width, channels, itemsize};
    return run_unpool(&job, images, "pool_backward");
}

static PyObject *py_dropout_forward(PyObject *self, PyObject *args)
{
    unsigned long long x, out, keep, seed;
    Py_ssize_t count;
    unsigned int threshold;
    float scale;
    int is_bf16;
    if (!PyArg_ParseTuple(args, "KKKnIfKp:dropout_forward", &x, &out, &keep, &count, &threshold, &scale, &seed,
                          &is_bf16))
        return NULL;
    if (count < 0 || threshold > 255) {
        PyErr_SetString(PyExc_ValueError, "dropout_forward: needs count >= 0 and threshold <= 255");
        return NULL;
    }
    DropoutJob job = {(const char *)(uintptr_t)x, (char *)(uintptr_t)out, (uint8_t *)(uintptr_t)keep, count,
                      is_bf16 ? 2 : 4, 1, threshold, scale, (uint64_t)seed};
    Py_BEGIN_ALLOW_THREADS
    run_dropout(&job);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_dropout_backward(PyObject *self, PyObject *args)
{
    unsigned long long grad, keep, grad_in;
    Py_ssize_t count;
    float scale;
    int is_bf16;
    if (!PyArg_ParseTuple(args, "KKKnfp:dropout_backward", &grad, &keep, &grad_in, &count, &scale, &is_bf16))
        return NULL;
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "dropout_backward: needs count >= 0");
        return NULL;
    }
    DropoutJob job = {(const char *)(uintptr_t)grad, (char *)(uintptr_t)grad_in, (uint8_t *)(uintptr_t)keep, count,
                      is_bf16 ? 2 : 4, 0, 0, scale, 0};
    Py_BEGIN_ALLOW_THREADS
    run_dropout(&job);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_pool_relu_dropout_forward(PyObject *self, PyObject *args)
{
    unsigned long long x, out, code, seed;
    Py_ssize_t images, height, width, channels;
    unsigned int threshold;
    float scale;
    int is_bf16;
    if (!PyArg_ParseTuple(args, "KKKnnnnpIfK:pool_relu_dropout_forward", &x, &out, &code, &images, &height, &width,
                          &channels, &is_bf16, &threshold, &scale, &seed))
        return NULL;
    if (threshold > 255) {
        PyErr_SetString(PyExc_ValueError, "pool_relu_dropout_forward: needs threshold <= 255");
        return NULL;
    }
    PoolJob job = {(const char *)(uintptr_t)x, (char *)(uintptr_t)out, (uint8_t *)(uintptr_t)code, height, width,
                   channels, is_bf16 ? 2 : 4, 1, threshold, scale, (uint64_t)seed};
    return run_pool(&job, images);
}

static PyObject *py_pool_relu_dropout_backward(PyObject *self, PyObject *args)
{
    unsigned long long grad, code, grad_in;
    Py_ssize_t images, height, width, channels, itemsize;
    float scale;
    if (!PyArg_ParseTuple(args, "KKKnnnnnf:pool_relu_dropout_backward", &grad, &code, &grad_in, &images, &height,
                          &width, &channels, &itemsize, &scale))
        return NULL;
    PoolJob job = {(const char *)(uintptr_t)grad, (char *)(uintptr_t)grad_in, (uint8_t *)(uintptr_t)code, height,
                   width, channels, itemsize, 1, 0, scale};
    return run_unpool(&job, images, "pool_relu_dropout_backward");
}

/* conv1_weight_grad: parts are chunks of CONV1_CHUNK images, each into its own partial sum. */
typedef struct {
    const float *x, *g;
    float *partials;
    Py_ssize_t images, height, width, channels, pad;
    int bias;
} Conv1Job;

static void conv1_part(const void *arg, Py_ssize_t lo, Py_ssize_t hi)
{
    const Conv1Job *j = arg;
    const Py_ssize_t out_image = (j->height + 2 * j->pad - 2) * (j->width + 2 * j->pad - 2) * j->channels;
    const Py_ssize_t sums = j->channels * 10;
    for (Py_ssize_t chunk = lo; chunk < hi; chunk++) {
        const Py_ssize_t first = chunk * CONV1_CHUNK;
        const Py_ssize_t n = j->images - first < CONV1_CHUNK ? j->images - first : CONV1_CHUNK;
        float *partial = j->partials + chunk * sums;
        memset(partial, 0, (size_t)sums * sizeof(float));
        K->conv1(j->x + first * j->height * j->width, j->g + first * out_image, partial, n, j->height, j->width,
                 j->channels, j->pad, j->bias);
    }
}

static PyObject *py_conv1_weight_grad(PyObject *self, PyObject *args)
{
    unsigned long long x, g, grad_w, grad_b;
    Py_ssize_t images, height, width, channels, pad;
    if (!PyArg_ParseTuple(args, "KKKKnnnnn:conv1_weight_grad", &x, &g, &grad_w, &grad_b, &images, &height, &width,
                          &channels, &pad))
        return NULL;
    if (images < 1 || channels < 1 || channels % CONV1_BLOCK || (pad != 0 && pad != 1) || height < 3 - 2 * pad ||
        width < 3 - 2 * pad) {
        PyErr_SetString(PyExc_ValueError, "conv1_weight_grad: needs images >= 1, channels a multiple of 16, "
                                          "padding 0 or 1 and an image at least as large as the kernel");
        return NULL;
    }
    const Py_ssize_t chunks = (images + CONV1_CHUNK - 1) / CONV1_CHUNK, sums = channels * 10;
    float *partials = PyMem_RawMalloc((size_t)(chunks * sums) * sizeof(float));
    if (!partials)
        return PyErr_NoMemory();
    Conv1Job job = {(const float *)(uintptr_t)x, (const float *)(uintptr_t)g, partials, images, height, width,
                    channels, pad, grad_b != 0};
    float *w = (float *)(uintptr_t)grad_w, *b = (float *)(uintptr_t)grad_b;
    Py_BEGIN_ALLOW_THREADS
    /* the work is arithmetic, not bytes written: split whenever there are two chunks */
    run_split(conv1_part, &job, chunks, SPLIT_MIN_BYTES);
    memcpy(w, partials, (size_t)channels * 9 * sizeof(float));
    if (b)
        memcpy(b, partials + channels * 9, (size_t)channels * sizeof(float));
    for (Py_ssize_t chunk = 1; chunk < chunks; chunk++) {
        const float *partial = partials + chunk * sums;
        for (Py_ssize_t i = 0; i < channels * 9; i++)
            w[i] += partial[i];
        if (b)
            for (Py_ssize_t i = 0; i < channels; i++)
                b[i] += partial[channels * 9 + i];
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(partials);
    Py_RETURN_NONE;
}

/* One image of `augment`: a row outside the source is zero; in a row, the columns that come from inside the
 * source are a run, the rest zero. */
static void augment_one(const uint8_t *src, uint8_t *out, Py_ssize_t height, Py_ssize_t width, int flip,
                        int64_t dy, int64_t dx, const int64_t *box)
{
    for (Py_ssize_t r = 0; r < height; r++) {
        uint8_t *dst = out + r * width;
        const int64_t sr = r - dy;
        if (sr < 0 || sr >= height) {
            memset(dst, 0, (size_t)width);
            continue;
        }
        const uint8_t *row = src + sr * width;
        for (Py_ssize_t c = 0; c < width; c++) {
            const int64_t shifted = c - dx, sc = flip ? width - 1 - shifted : shifted;
            dst[c] = (sc >= 0 && sc < width) ? row[sc] : 0;
        }
    }
    if (box) {
        const int64_t y0 = box[0] < 0 ? 0 : box[0], x0 = box[1] < 0 ? 0 : box[1];
        const int64_t y1 = box[2] > height ? height : box[2], x1 = box[3] > width ? width : box[3];
        for (int64_t r = y0; r < y1; r++)
            if (x1 > x0)
                memset(out + r * width + x0, 0, (size_t)(x1 - x0));
    }
}

static PyObject *py_augment(PyObject *self, PyObject *args)
{
    unsigned long long images, index, flip, dy, dx, box, out;
    Py_ssize_t available, count, height, width;
    if (!PyArg_ParseTuple(args, "KnKKKKKKnnn:augment", &images, &available, &index, &flip, &dy, &dx, &box, &out,
                          &count, &height, &width))
        return NULL;
    if (count < 0 || height < 1 || width < 1) {
        PyErr_SetString(PyExc_ValueError, "augment: needs count >= 0, height and width >= 1");
        return NULL;
    }
    const int64_t *rows = (const int64_t *)(uintptr_t)index, *boxes = (const int64_t *)(uintptr_t)box;
    for (Py_ssize_t i = 0; i < count; i++)
        if (rows[i] < 0 || rows[i] >= available) {
            PyErr_Format(PyExc_IndexError, "augment: index %zd is outside the %zd images", i, available);
            return NULL;
        }
    const uint8_t *src = (const uint8_t *)(uintptr_t)images;
    const int64_t *ys = (const int64_t *)(uintptr_t)dy, *xs = (const int64_t *)(uintptr_t)dx;
    const uint8_t *flips = (const uint8_t *)(uintptr_t)flip;
    uint8_t *dst = (uint8_t *)(uintptr_t)out;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++)
        augment_one(src + rows[i] * height * width, dst + i * height * width, height, width, flips[i], ys[i], xs[i],
                    boxes ? boxes + 4 * i : NULL);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(K->isa);
}

static PyObject *py_runnable_isas(PyObject *self, PyObject *noargs)
{
    const Kernels *builds[3];
    const int n = runnable(builds);
    PyObject *names = PyTuple_New(n);
    for (int i = 0; names && i < n; i++)
        PyTuple_SET_ITEM(names, i, PyUnicode_FromString(builds[i]->isa));
    return names;
}

static PyObject *py_use_isa(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s:use_isa", &name))
        return NULL;
    const Kernels *builds[3];
    const int n = runnable(builds);
    for (int i = 0; i < n; i++)
        if (strcmp(builds[i]->isa, name) == 0) {
            K = builds[i];
            Py_RETURN_NONE;
        }
    PyErr_Format(PyExc_ValueError, "use_isa: %s is not a build this CPU runs", name);
    return NULL;
}

static PyObject *py_use_threads(PyObject *self, PyObject *args)
{
    int threads;
    if (!PyArg_ParseTuple(args, "i:use_threads", &threads))
        return NULL;
    if (threads < 0) {
        PyErr_SetString(PyExc_ValueError, "use_threads: needs 0 (OpenMP's count) or a positive count");
        return NULL;
    }
    split_threads = threads;
    Py_RETURN_NONE;
}

static PyObject *py_threads(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(max_parts());
}

static PyMethodDef methods[] = {
    {"isa", py_isa, METH_NOARGS, "Which build of the kernels runs: avx512, avx2 or baseline."},
    {"runnable_isas", py_runnable_isas, METH_NOARGS, "The builds this CPU can run, best first."},
    {"use_isa", py_use_isa, METH_VARARGS, "Run another build this CPU can run (tests compare them)."},
    {"use_threads", py_use_threads, METH_VARARGS, "Split calls over n of torch's OpenMP threads (0: all, 1: none)."},
    {"threads", py_threads, METH_NOARGS, "How many threads a large call is split over."},
    {"pool_forward", py_pool_forward, METH_VARARGS, "2x2 stride-2 max-pool of a [N, H, W, C] bf16/float32 buffer."},
    {"pool_backward", py_pool_backward, METH_VARARGS, "The max-pool's input gradient from its output gradient and codes."},
    {"dropout_forward", py_dropout_forward, METH_VARARGS, "Inverted dropout of a bf16/float32 buffer; its keep mask."},
    {"dropout_backward", py_dropout_backward, METH_VARARGS, "The dropout's input gradient from its keep mask."},
    {"pool_relu_dropout_forward", py_pool_relu_dropout_forward, METH_VARARGS,
     "2x2 max-pool, ReLU and inverted dropout in one pass; one code byte per output."},
    {"pool_relu_dropout_backward", py_pool_relu_dropout_backward, METH_VARARGS,
     "The fused layer's input gradient from its output gradient and codes."},
    {"conv1_weight_grad", py_conv1_weight_grad, METH_VARARGS,
     "Float32 weight and bias gradients of a 3x3 stride-1 convolution of one input channel."},
    {"augment", py_augment, METH_VARARGS, "Flip, shift and erase uint8 images picked by an index (the engine's)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void)
{
    const Kernels *builds[3];
    runnable(builds);
    K = builds[0];
    find_openmp();
    return PyModule_Create(&module);
}
