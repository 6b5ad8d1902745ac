/*
 * edgead_example - score images with an edgead artifact through libedgead.
 *
 *   edgead_example ARTIFACT_DIR IMAGE... [--repeat N] [--device NAME] [--threads T]
 *
 * IMAGE is a binary PPM (P6, maxval 255) or a raw .rgb file (height x width x 3 bytes, RGB) at the artifact's
 * input size; resize / crop camera frames to that size before (edgead.imageio.prepare does it in Python).
 * Prints each image's score and label, then, with --repeat N, the per-image latency of N batch-1 runs per image
 * after one warm-up run.
 */
#if !defined(_POSIX_C_SOURCE)
#  define _POSIX_C_SOURCE 200809L
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgead.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Reads one PPM header integer, skipping whitespace and # comments. */
static int ppm_int(FILE* f, int* out) {
    int c;
    do {
        c = fgetc(f);
        if (c == '#')
            while (c != '\n' && c != EOF) c = fgetc(f);
    } while (c == ' ' || c == '\t' || c == '\n' || c == '\r');
    long v = 0;
    int digits = 0;
    for (; c >= '0' && c <= '9'; c = fgetc(f), ++digits)
        if (v < 1000000) v = v * 10 + (c - '0');
    if (!digits) return 0;
    *out = (int)v;
    return c == ' ' || c == '\t' || c == '\n' || c == '\r'; /* exactly one whitespace ends the token */
}

/* Loads path into dst (height x width x 3). Returns 0 and prints why on failure. */
static int load_image(const char* path, int height, int width, unsigned char* dst) {
    FILE* f = fopen(path, "rb");
    if (!f) { perror(path); return 0; }
    size_t want = (size_t)height * (size_t)width * 3;
    int ok = 0;
    char magic[2] = {0, 0};
    if (fread(magic, 1, 2, f) == 2 && magic[0] == 'P' && magic[1] == '6') {
        int w = 0, h = 0, maxval = 0;
        if (!ppm_int(f, &w) || !ppm_int(f, &h) || !ppm_int(f, &maxval) || maxval != 255)
            fprintf(stderr, "%s: expected a binary PPM (P6) with maxval 255\n", path);
        else if (w != width || h != height)
            fprintf(stderr, "%s: expected a %dx%d image (the artifact's input size), found %dx%d\n", path, height,
                    width, h, w);
        else
            ok = fread(dst, 1, want, f) == want;
        if (!ok && w == width && h == height) fprintf(stderr, "%s: the PPM pixel data is truncated\n", path);
    } else {
        rewind(f);
        size_t got = fread(dst, 1, want, f);
        ok = got == want && fgetc(f) == EOF;
        if (!ok)
            fprintf(stderr, "%s: expected a P6 PPM or a raw RGB file of exactly %zu bytes (%dx%dx3)\n", path, want,
                    height, width);
    }
    fclose(f);
    return ok;
}

static int compare_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static void usage(void) {
    fprintf(stderr, "usage: edgead_example ARTIFACT_DIR IMAGE... [--repeat N] [--device NAME] [--threads T]\n");
}

int main(int argc, char** argv) {
    const char* artifact = NULL;
    const char** paths = (const char**)calloc((size_t)argc, sizeof *paths);
    int n = 0, repeat = 0;
    edgead_options options;
    edgead_options_init(&options);
    if (!paths) return 2;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) options.device = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) options.num_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(); free(paths); return 0; }
        else if (!artifact) artifact = argv[i];
        else paths[n++] = argv[i];
    }
    if (!artifact || n == 0 || repeat < 0) { usage(); free(paths); return 2; }

    edgead_handle* h = NULL;
    double t0 = now_ms();
    if (edgead_open_ex(artifact, &options, &h) != EDGEAD_OK) {
        fprintf(stderr, "error: %s\n", edgead_last_error(NULL));
        free(paths);
        return 1;
    }
    double open_ms = now_ms() - t0;
    int height = 0, width = 0, max_batch = 0, has_threshold = 0;
    float threshold = 0.0f;
    edgead_input_info(h, &height, &width, &max_batch, &threshold, &has_threshold);
    printf("libedgead %s: %s (opened in %.0f ms)\n", edgead_version(), edgead_describe(h), open_ms);

    size_t image_bytes = (size_t)height * (size_t)width * 3, pixels = (size_t)height * (size_t)width;
    unsigned char* images = (unsigned char*)malloc(image_bytes * (size_t)n);
    float* scores = (float*)malloc(sizeof(float) * (size_t)n);
    float* maps = (float*)malloc(sizeof(float) * pixels * (size_t)n);
    int rc = 0;
    if (!images || !scores || !maps) { fprintf(stderr, "error: out of memory\n"); rc = 1; goto done; }
    for (int i = 0; i < n; ++i)
        if (!load_image(paths[i], height, width, images + image_bytes * (size_t)i)) { rc = 1; goto done; }

    if (edgead_predict(h, images, (size_t)n, height, width, 0, scores, maps, pixels * (size_t)n) != EDGEAD_OK) {
        fprintf(stderr, "error: %s\n", edgead_last_error(h));
        rc = 1;
        goto done;
    }
    for (int i = 0; i < n; ++i) {
        float peak = maps[pixels * (size_t)i];
        for (size_t p = 1; p < pixels; ++p)
            if (maps[pixels * (size_t)i + p] > peak) peak = maps[pixels * (size_t)i + p];
        const char* label = !has_threshold ? "-" : !(scores[i] <= threshold) ? "anomalous" : "normal";
        printf("%s\tscore=%.6f\tlabel=%s\tmap_max=%.6f\n", paths[i], scores[i], label, peak);
    }

    if (repeat > 0) {
        double* ms = (double*)malloc(sizeof(double) * (size_t)repeat * (size_t)n);
        if (!ms) { fprintf(stderr, "error: out of memory\n"); rc = 1; goto done; }
        float score;
        edgead_predict(h, images, 1, height, width, 0, &score, maps, pixels); /* warm-up */
        size_t k = 0;
        for (int r = 0; r < repeat && rc == 0; ++r) {
            for (int i = 0; i < n; ++i) {
                double start = now_ms();
                if (edgead_predict(h, images + image_bytes * (size_t)i, 1, height, width, 0, &score, maps, pixels) !=
                    EDGEAD_OK) {
                    fprintf(stderr, "error: %s\n", edgead_last_error(h));
                    rc = 1;
                    break;
                }
                ms[k++] = now_ms() - start;
            }
        }
        if (rc == 0) {
            double sum = 0.0;
            for (size_t i = 0; i < k; ++i) sum += ms[i];
            qsort(ms, k, sizeof *ms, compare_double);
            printf("latency batch 1 over %zu runs: mean %.3f ms, median %.3f ms, p90 %.3f ms, min %.3f ms\n", k,
                   sum / (double)k, ms[k / 2], ms[(k * 9) / 10 < k ? (k * 9) / 10 : k - 1], ms[0]);
        }
        free(ms);
    }
done:
    free(images);
    free(scores);
    free(maps);
    free(paths);
    edgead_close(h);
    return rc;
}
