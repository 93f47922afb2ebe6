/* Native kernels for int8 calibration, compiled on first use by quant/native.py: histogram counts and
 * re-binning (HistogramObserver, ExecuTorch's int8 recipe) and per-tensor fake quantization (the
 * fake-quant modules CoreMLQuantizer puts on every activation).
 *
 * Re-binning a histogram into a widened range (HistogramObserver._upscale_histogram), see rebin_sorted.
 *
 * Histogram counts: bin = int32((v - lo) * bins / span) in float32, clamped to the last bin (v == high): ATen's
 * torch.histc rule for values inside [lo, lo + span]. The caller checks that every value is in range
 * and finite. Compiled with -ffp-contract=off and without -ffast-math so each operation rounds as a
 * float32 operation; quant/native.py checks the result against torch.histc once per process anyway.
 *
 * Indices are computed a chunk at a time (a loop the compiler vectorizes), then counted into four
 * tables in turn: activations put long runs of values into one bin (a ReLU's zeros), and four tables
 * break the chain of increments to one counter. The caller sums the tables.
 */
#include <math.h>
#include <stdint.h>

/* On x86-64 ELF hosts (GCC or Clang), a compute-bound loop is compiled for AVX-512 and AVX2 as well, and
 * the loader picks the widest the CPU has (ifunc). The same float32 operations in any width: the bits do
 * not change (quant/native.py checks them on this host before first use). Elsewhere: the default build. */
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define WIDEST_VECTORS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WIDEST_VECTORS
#endif

#define CHUNK 512

/* Count m bin indices into the four tables in turn (the caller sums the tables). */
static inline void count_into_tables(const int32_t *index, int64_t m, int64_t *tables, int32_t bins) {
    int64_t *t0 = tables, *t1 = tables + bins, *t2 = tables + 2 * (int64_t)bins, *t3 = tables + 3 * (int64_t)bins;
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        t0[index[j]]++;
        t1[index[j + 1]]++;
        t2[index[j + 2]]++;
        t3[index[j + 3]]++;
    }
    for (; j < m; j++) t0[index[j]]++;
}

void bin_counts(const float *x, int64_t n, float lo, float span, int32_t bins, int64_t *tables) {
    const float bins_f = (float)bins;
    const int32_t last = bins - 1;
    int32_t index[CHUNK];
    for (int64_t start = 0; start < n; start += CHUNK) {
        const int64_t m = n - start < CHUNK ? n - start : CHUNK;
        const float *chunk = x + start;
        for (int64_t j = 0; j < m; j++) {
            const int32_t b = (int32_t)(((chunk[j] - lo) * bins_f) / span);
            index[j] = b < last ? b : last;
        }
        count_into_tables(index, m, tables, bins);
    }
}

/* The same counts when every value lies in [lo, hi], checked in the same pass: returns 1 with the tables
 * filled, or 0 at the first value outside the range or NaN (the tables are then partial and unused).
 * HistogramObserver's common case (an activation inside the range it has already) needs no separate
 * min/max pass this way. */
int bin_counts_if_inside(const float *x, int64_t n, float lo, float hi, float span, int32_t bins,
                         int64_t *tables) {
    const float bins_f = (float)bins;
    const int32_t last = bins - 1;
    int32_t index[CHUNK];
    for (int64_t start = 0; start < n; start += CHUNK) {
        const int64_t m = n - start < CHUNK ? n - start : CHUNK;
        const float *chunk = x + start;
        int inside = 1;
        for (int64_t j = 0; j < m; j++) {
            const float v = chunk[j];
            inside &= (v >= lo) & (v <= hi); /* 0 for NaN */
            const int32_t b = (int32_t)(((v - lo) * bins_f) / span);
            index[j] = b < last ? b : last;
        }
        if (!inside) return 0; /* before any index from this chunk is used */
        count_into_tables(index, m, tables, bins);
    }
    return 1;
}

/* Per-tensor fake quantization, ATen's fake_quantize_per_tensor_affine arithmetic in float32:
 *
 *     y = (clamp(zp + nearbyint(x * inv_scale), qmin, qmax) - zp) * scale      (NaN -> qmin)
 *
 * nearbyint (round half to even) is the add-and-subtract of 1.5 * 2^23, exact for |q| < 2^22; larger
 * values (and infinities) clamp to qmin or qmax whatever their rounding, so they pass as they are. Every
 * zero comes out +0.0 as ATen's integer step makes it. Branch-free, so the compiler vectorizes the loop
 * (-fno-trapping-math lets it turn the selects into compares and blends; the values are the same).
 * quant/native.py checks the bits against torch.fake_quantize_per_tensor_affine before first use. */
WIDEST_VECTORS
void fake_quantize(const float *restrict x, float *restrict y, int64_t n, float inv_scale, float scale,
                   float zp, float qmin, float qmax) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    for (int64_t i = 0; i < n; i++) {
        const float q = x[i] * inv_scale;
        const float rounded = (q + magic) - magic;
        const float r = (q < 4194304.0f) & (q > -4194304.0f) ? rounded : q;
        float v = r + zp;
        v = v > qmin ? v : qmin; /* NaN -> qmin, as fmax(NaN, qmin) */
        v = v < qmax ? v : qmax;
        y[i] = (v - zp) * scale;
    }
}

/* HistogramObserver._upscale_histogram's re-binning of the old histogram into a widened range:
 * torch.bucketize(mid, bounds, right=True) - 1 clamped to [0, bins - 1], then torch.bincount with the
 * weights, accumulated in float32 in index order as ATen's CPU bincount does. The mid points and the
 * bounds are both non-decreasing linspaces, so each mid point's bucket is found by walking on from the
 * previous one instead of a binary search per point: the count of bounds <= m either way. Returns 0
 * without writing (the caller takes the stock path) when either array is not sorted or not finite, where
 * a walk and a binary search could disagree. out (bins floats) starts zeroed. */
int rebin_sorted(const float *mid, const float *weights, int64_t n, const float *bounds, int32_t bins,
                 float *out) {
    for (int32_t k = 0; k <= bins; k++)
        if (!isfinite(bounds[k]) || (k > 0 && bounds[k] < bounds[k - 1])) return 0;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(mid[i]) || (i > 0 && mid[i] < mid[i - 1])) return 0;
    int64_t above = 0; /* how many bounds are <= the current mid point */
    for (int64_t i = 0; i < n; i++) {
        const float m = mid[i];
        while (above <= bins && bounds[above] <= m) above++;
        int64_t bucket = above - 1;
        if (bucket >= bins) bucket = bins - 1;
        if (bucket < 0) bucket = 0;
        out[bucket] += weights[i];
    }
    return 1;
}
