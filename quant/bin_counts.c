/* Histogram counts for int8 calibration, compiled on first use by quant/native.py.
 *
 * bin = int32((v - lo) * bins / span) in float32, clamped to the last bin (v == high): ATen's
 * torch.histc rule for values inside [lo, lo + span]. The caller checks that every value is in range
 * and finite. Compiled with -ffp-contract=off and without -ffast-math so each operation rounds as a
 * float32 operation; quant/native.py checks the result against torch.histc once per process anyway.
 *
 * Indices are computed a chunk at a time (a loop the compiler vectorizes), then counted into four
 * tables in turn: activations put long runs of values into one bin (a ReLU's zeros), and four tables
 * break the chain of increments to one counter. The caller sums the tables.
 */
#include <stdint.h>

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
