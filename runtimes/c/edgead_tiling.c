/*
 * edgead_tiling.c - the C twin of edgead.runtimes.tiling (the spec's TilePlan): where the tiles of a frame lie,
 * their normalised linear cross-fade weights, and the top-k mean of the stitched map. The arithmetic is the
 * Python function's, step for step in double precision, so the stitched maps agree to float rounding; tests/
 * test_c_api.py checks them against each other on a frame of odd size.
 */
#include "edgead_internal.h"

#include <math.h>
#include <stdlib.h>

int edgead_tile_origins(int length, int tile, int overlap, int* out) {
    if (tile < 1 || length < tile || overlap < 0 || overlap >= tile) return 0;
    const int stride = tile - overlap;
    const int n = (length - tile + stride - 1) / stride + 1;
    if (out)
        for (int i = 0; i < n; ++i) {
            long start = (long)i * stride;
            out[i] = start < length - tile ? (int)start : length - tile;
        }
    return n;
}

int edgead_axis_weights(const int* origins, int n, int tile, int length, double* w) {
    double* total = (double*)calloc((size_t)length, sizeof(double));
    if (!total) return 0;
    for (size_t k = 0; k < (size_t)n * (size_t)tile; ++k) w[k] = 1.0;
    for (int i = 1; i < n; ++i) {
        const int shared = origins[i - 1] + tile - origins[i];
        if (shared <= 0) continue;
        for (int t = 0; t < tile; ++t) {
            double rise = ((double)t + 0.5) / (double)shared;
            if (rise > 1.0) rise = 1.0;
            double* later = &w[(size_t)i * tile + t];
            double* earlier = &w[(size_t)(i - 1) * tile + (tile - 1 - t)];
            if (rise < *later) *later = rise;
            if (rise < *earlier) *earlier = rise;
        }
    }
    for (int i = 0; i < n; ++i)
        for (int t = 0; t < tile; ++t) total[origins[i] + t] += w[(size_t)i * tile + t];
    for (int i = 0; i < n; ++i)
        for (int t = 0; t < tile; ++t) w[(size_t)i * tile + t] /= total[origins[i] + t];
    free(total);
    return 1;
}

int edgead_frame_top_k(int height, int width, double score_fraction) {
    double k = nearbyint(score_fraction * (double)height * (double)width); /* Python's round: half to even */
    if (k < 1.0) k = 1.0;
    if (k > 3840.0) k = 3840.0; /* TensorRT's TopK limit, the graph's rule (edgead.spec.TOPK_LIMIT) */
    return (int)k;
}

/* Restore the min-heap property below slot i. */
static void sift_down(float* heap, int n, int i) {
    for (;;) {
        int least = i, l = 2 * i + 1, r = l + 1;
        if (l < n && heap[l] < heap[least]) least = l;
        if (r < n && heap[r] < heap[least]) least = r;
        if (least == i) return;
        float tmp = heap[i];
        heap[i] = heap[least];
        heap[least] = tmp;
        i = least;
    }
}

float edgead_top_k_mean(const float* map, size_t n, int k) {
    float heap[3840]; /* the k largest so far, smallest on top; k <= 3840 (edgead_frame_top_k) */
    if (k < 1 || k > 3840 || (size_t)k > n) return NAN;
    for (size_t i = 0; i < n; ++i)
        if (isnan(map[i])) return NAN;
    for (int i = 0; i < k; ++i) heap[i] = map[i];
    for (int i = k / 2 - 1; i >= 0; --i) sift_down(heap, k, i);
    for (size_t i = (size_t)k; i < n; ++i)
        if (map[i] > heap[0]) {
            heap[0] = map[i];
            sift_down(heap, k, 0);
        }
    double sum = 0.0;
    for (int i = 0; i < k; ++i) sum += heap[i];
    return (float)(sum / k);
}
