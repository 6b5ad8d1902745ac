/*
 * test_edgead - C-side tests of libedgead (run by tests/test_c_api.py, which writes the inputs).
 *
 *   test_edgead --artifact DIR --data DIR [--bad DIR=STATUS]... [--tol 1e-5]
 *   test_edgead --artifact DIR --data DIR --leak-loop N [--threads T]
 *
 * --data holds images.u8 (N x H x W x 3 uint8) and the Python OpenVINO runner's outputs on them,
 * ref_scores.f32 (N) and ref_maps.f32 (N x H x W). Each --bad DIR=STATUS is an artifact folder that must fail to
 * open with that status (e.g. EDGEAD_ERR_CORRUPT_ARTIFACT) and a message. Prints TAP lines; exit status 0 when
 * every check passed. --leak-loop only opens, predicts (good and bad calls) and closes N times, for valgrind.
 */
#if !defined(_POSIX_C_SOURCE)
#  define _POSIX_C_SOURCE 200809L
#endif

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgead.h"

static int checks = 0, failures = 0;

#define CHECK(cond, ...)                                                \
    do {                                                                \
        ++checks;                                                       \
        if (cond) {                                                     \
            printf("ok %d - ", checks);                                 \
        } else {                                                        \
            ++failures;                                                 \
            printf("not ok %d - (%s:%d) ", checks, __FILE__, __LINE__); \
        }                                                               \
        printf(__VA_ARGS__);                                            \
        printf("\n");                                                   \
        fflush(stdout);                                                 \
    } while (0)

typedef struct {
    size_t n, height, width;
    unsigned char* images;
    float* ref_scores;
    float* ref_maps;
} dataset;

static void* read_file(const char* dir, const char* name, size_t* size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE* f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    void* buf = len > 0 ? malloc((size_t)len) : NULL;
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) { free(buf); buf = NULL; }
    fclose(f);
    *size = buf ? (size_t)len : 0;
    return buf;
}

static double max_abs_diff(const float* a, const float* b, size_t count) {
    double worst = 0.0;
    for (size_t i = 0; i < count; ++i) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= worst)) worst = d; /* NaN propagates as a failure */
    }
    return worst;
}

/* Status and a non-empty message from the right place. */
static int failed_with(edgead_status got, edgead_status want, const char* msg) {
    return got == want && msg != NULL && msg[0] != '\0';
}

static void test_open_errors(const char* artifact, char** bad, int n_bad) {
    edgead_handle* h = (edgead_handle*)0x1;
    edgead_status s = edgead_open(artifact, NULL, NULL);
    CHECK(failed_with(s, EDGEAD_ERR_INVALID_ARGUMENT, edgead_last_error(NULL)), "open with out=NULL: %s: %s",
          edgead_status_string(s), edgead_last_error(NULL));
    s = edgead_open(NULL, NULL, &h);
    CHECK(failed_with(s, EDGEAD_ERR_INVALID_ARGUMENT, edgead_last_error(NULL)) && h == NULL,
          "open with dir=NULL: %s: %s", edgead_status_string(s), edgead_last_error(NULL));
    s = edgead_open("/nonexistent/edgead/artifact", NULL, &h);
    CHECK(failed_with(s, EDGEAD_ERR_NOT_FOUND, edgead_last_error(NULL)) && h == NULL, "open a missing folder: %s: %s",
          edgead_status_string(s), edgead_last_error(NULL));
    edgead_options o;
    edgead_options_init(&o);
    o.struct_size = 1;
    s = edgead_open_ex(artifact, &o, &h);
    CHECK(failed_with(s, EDGEAD_ERR_INVALID_ARGUMENT, edgead_last_error(NULL)), "open_ex with a bad struct_size: %s",
          edgead_last_error(NULL));
    for (int i = 0; i < n_bad; ++i) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", bad[i]);
        char* eq = strrchr(dir, '=');
        if (!eq) { CHECK(0, "--bad %s: expected DIR=STATUS", bad[i]); continue; }
        *eq = '\0';
        h = (edgead_handle*)0x1;
        s = edgead_open(dir, NULL, &h);
        CHECK(strcmp(edgead_status_string(s), eq + 1) == 0 && edgead_last_error(NULL)[0] && h == NULL,
              "open %s: %s (expected %s): %s", dir, edgead_status_string(s), eq + 1, edgead_last_error(NULL));
    }
}

static void test_predict_errors(edgead_handle* h, const dataset* d) {
    const int H = (int)d->height, W = (int)d->width;
    const size_t pixels = d->height * d->width;
    float scores[2];
    float* maps = (float*)malloc(sizeof(float) * pixels * 2);
    edgead_status s;
    s = edgead_predict(NULL, d->images, 1, H, W, 0, scores, maps, pixels);
    CHECK(failed_with(s, EDGEAD_ERR_INVALID_ARGUMENT, edgead_last_error(NULL)), "predict with handle NULL: %s",
          edgead_last_error(NULL));
    s = edgead_predict(h, NULL, 1, H, W, 0, scores, maps, pixels);
    CHECK(failed_with(s, EDGEAD_ERR_INVALID_ARGUMENT, edgead_last_error(h)), "predict with images NULL: %s",
          edgead_last_error(h));
    s = edgead_predict(h, d->images, 1, H, W, 0, NULL, maps, pixels);
    CHECK(failed_with(s, EDGEAD_ERR_INVALID_ARGUMENT, edgead_last_error(h)), "predict with scores NULL: %s",
          edgead_last_error(h));
    s = edgead_predict(h, d->images, 0, H, W, 0, scores, maps, pixels);
    CHECK(failed_with(s, EDGEAD_ERR_INVALID_ARGUMENT, edgead_last_error(h)), "predict with n = 0: %s",
          edgead_last_error(h));
    s = edgead_predict(h, d->images, 1, H + 1, W, 0, scores, maps, pixels);
    CHECK(failed_with(s, EDGEAD_ERR_SHAPE_MISMATCH, edgead_last_error(h)), "predict with the wrong height: %s",
          edgead_last_error(h));
    s = edgead_predict(h, d->images, 1, H, W - 1, 0, scores, maps, pixels);
    CHECK(failed_with(s, EDGEAD_ERR_SHAPE_MISMATCH, edgead_last_error(h)), "predict with the wrong width: %s",
          edgead_last_error(h));
    s = edgead_predict(h, d->images, 1, -1, W, 0, scores, maps, pixels);
    CHECK(failed_with(s, EDGEAD_ERR_SHAPE_MISMATCH, edgead_last_error(h)), "predict with a negative height: %s",
          edgead_last_error(h));
    s = edgead_predict(h, d->images, 1, H, W, (size_t)W * 3 - 1, scores, maps, pixels);
    CHECK(failed_with(s, EDGEAD_ERR_INVALID_ARGUMENT, edgead_last_error(h)), "predict with a short row stride: %s",
          edgead_last_error(h));
    s = edgead_predict(h, d->images, 2, H, W, 0, scores, maps, 2 * pixels - 1);
    CHECK(failed_with(s, EDGEAD_ERR_BUFFER_TOO_SMALL, edgead_last_error(h)), "predict with a too-small maps buffer: %s",
          edgead_last_error(h));
    s = edgead_predict(h, d->images, (size_t)-1 / 2, H, W, 0, scores, maps, pixels);
    CHECK(s != EDGEAD_OK && edgead_last_error(h)[0], "predict with an absurd n: %s: %s", edgead_status_string(s),
          edgead_last_error(h));
    s = edgead_input_info(NULL, NULL, NULL, NULL, NULL, NULL);
    CHECK(failed_with(s, EDGEAD_ERR_INVALID_ARGUMENT, edgead_last_error(NULL)), "input_info with handle NULL: %s",
          edgead_last_error(NULL));
    s = edgead_input_info(h, NULL, NULL, NULL, NULL, NULL);
    CHECK(s == EDGEAD_OK, "input_info with every output NULL returns OK");
    edgead_close(NULL);
    CHECK(1, "close(NULL) is a no-op");
    free(maps);
}

static void test_outputs(edgead_handle* h, const dataset* d, double tol) {
    const int H = (int)d->height, W = (int)d->width;
    const size_t pixels = d->height * d->width, n = d->n;
    float* scores = (float*)malloc(sizeof(float) * n);
    float* maps = (float*)malloc(sizeof(float) * n * pixels);
    edgead_status s = edgead_predict(h, d->images, n, H, W, 0, scores, maps, n * pixels);
    double ds = max_abs_diff(scores, d->ref_scores, n), dm = max_abs_diff(maps, d->ref_maps, n * pixels);
    CHECK(s == EDGEAD_OK && ds <= tol && dm <= tol, "batch of %zu vs the Python OpenVINO runner: max |diff| scores %.3g, "
          "maps %.3g (tol %.1g)", n, ds, dm, tol);

    /* one image per call */
    int all_ok = 1;
    for (size_t i = 0; i < n; ++i)
        all_ok &= edgead_predict(h, d->images + i * pixels * 3, 1, H, W, 0, scores + i, maps + i * pixels, pixels) ==
                  EDGEAD_OK;
    ds = max_abs_diff(scores, d->ref_scores, n);
    dm = max_abs_diff(maps, d->ref_maps, n * pixels);
    CHECK(all_ok && ds <= tol && dm <= tol, "one image per call: max |diff| scores %.3g, maps %.3g", ds, dm);

    /* padded rows: each row followed by 7 junk bytes */
    size_t stride = (size_t)W * 3 + 7;
    unsigned char* padded = (unsigned char*)malloc(stride * (size_t)H * n);
    memset(padded, 0xAB, stride * (size_t)H * n);
    for (size_t r = 0; r < n * (size_t)H; ++r) memcpy(padded + r * stride, d->images + r * (size_t)W * 3, (size_t)W * 3);
    s = edgead_predict(h, padded, n, H, W, stride, scores, maps, n * pixels);
    ds = max_abs_diff(scores, d->ref_scores, n);
    dm = max_abs_diff(maps, d->ref_maps, n * pixels);
    CHECK(s == EDGEAD_OK && ds <= tol && dm <= tol, "row stride %zu (> %d): max |diff| scores %.3g, maps %.3g", stride,
          W * 3, ds, dm);
    free(padded);

    /* scores only */
    memset(scores, 0, sizeof(float) * n);
    s = edgead_predict(h, d->images, n, H, W, 0, scores, NULL, 0);
    ds = max_abs_diff(scores, d->ref_scores, n);
    CHECK(s == EDGEAD_OK && ds <= tol, "maps NULL gives scores only: max |diff| %.3g", ds);
    free(scores);
    free(maps);
}

typedef struct {
    edgead_handle* h;
    const dataset* d;
    double tol;
    int ok;
} worker_args;

static void* worker(void* arg) {
    worker_args* a = (worker_args*)arg;
    const size_t pixels = a->d->height * a->d->width;
    float score;
    float* map = (float*)malloc(sizeof(float) * pixels);
    a->ok = map != NULL;
    for (int round = 0; round < 5 && a->ok; ++round) {
        size_t i = (size_t)round % a->d->n;
        edgead_status s = edgead_predict(a->h, a->d->images + i * pixels * 3, 1, (int)a->d->height, (int)a->d->width,
                                         0, &score, map, pixels);
        a->ok = s == EDGEAD_OK && fabs((double)score - (double)a->d->ref_scores[i]) <= a->tol &&
                max_abs_diff(map, a->d->ref_maps + i * pixels, pixels) <= a->tol;
    }
    free(map);
    return NULL;
}

static void test_threads(edgead_handle* h, const dataset* d, double tol) {
    enum { THREADS = 4 };
    pthread_t threads[THREADS];
    worker_args args[THREADS];
    int started = 0, ok = 1;
    for (int t = 0; t < THREADS; ++t) {
        args[t] = (worker_args){h, d, tol, 0};
        if (pthread_create(&threads[t], NULL, worker, &args[t]) == 0) ++started;
    }
    for (int t = 0; t < started; ++t) {
        pthread_join(threads[t], NULL);
        ok &= args[t].ok;
    }
    CHECK(started == THREADS && ok, "%d threads sharing one handle get the reference outputs", THREADS);
}

static int load_dataset(const char* dir, int height, int width, dataset* d) {
    size_t bytes = 0, score_bytes = 0, map_bytes = 0;
    d->height = (size_t)height;
    d->width = (size_t)width;
    d->images = (unsigned char*)read_file(dir, "images.u8", &bytes);
    d->ref_scores = (float*)read_file(dir, "ref_scores.f32", &score_bytes);
    d->ref_maps = (float*)read_file(dir, "ref_maps.f32", &map_bytes);
    d->n = bytes / (d->height * d->width * 3);
    return d->images && d->ref_scores && d->ref_maps && d->n >= 2 && bytes == d->n * d->height * d->width * 3 &&
           score_bytes == d->n * sizeof(float) && map_bytes == d->n * d->height * d->width * sizeof(float);
}

static int leak_loop(const char* artifact, const dataset* d, int rounds, int threads) {
    const size_t pixels = d->height * d->width;
    float* scores = (float*)malloc(sizeof(float) * d->n);
    float* maps = (float*)malloc(sizeof(float) * d->n * pixels);
    int ok = 1;
    for (int r = 0; r < rounds && ok; ++r) {
        edgead_handle* h = NULL;
        edgead_handle* missing = NULL;
        ok &= edgead_open("/nonexistent/edgead/artifact", NULL, &missing) == EDGEAD_ERR_NOT_FOUND;
        edgead_options options;
        edgead_options_init(&options);
        options.num_threads = threads;
        ok &= edgead_open_ex(artifact, &options, &h) == EDGEAD_OK;
        if (!ok) break;
        ok &= edgead_predict(h, d->images, d->n, (int)d->height, (int)d->width, 0, scores, maps, d->n * pixels) ==
              EDGEAD_OK;
        /* every other row of the first images: exercises the staging copy for strided rows */
        ok &= edgead_predict(h, d->images, d->n / 2, (int)d->height, (int)d->width, (size_t)d->width * 6, scores,
                             NULL, 0) == EDGEAD_OK;
        ok &= edgead_predict(h, d->images, 2, (int)d->height, (int)d->width, 0, scores, maps, pixels) ==
              EDGEAD_ERR_BUFFER_TOO_SMALL;
        ok &= edgead_predict(h, d->images, d->n, (int)d->height, (int)d->width, 0, scores, maps, d->n * pixels) ==
              EDGEAD_OK;
        ok &= fabs((double)scores[0] - (double)d->ref_scores[0]) <= 1e-4;
        edgead_close(h);
    }
    printf("%s - leak loop of %d open/predict/close rounds\n", ok ? "ok" : "not ok", rounds);
    free(scores);
    free(maps);
    return ok ? 0 : 1;
}

int main(int argc, char** argv) {
    const char *artifact = NULL, *data = NULL;
    char** bad = (char**)calloc((size_t)argc, sizeof *bad);
    int n_bad = 0, loop = 0, threads = 0;
    double tol = 1e-5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--artifact")) artifact = argv[i + 1];
        else if (!strcmp(argv[i], "--data")) data = argv[i + 1];
        else if (!strcmp(argv[i], "--bad")) bad[n_bad++] = argv[i + 1];
        else if (!strcmp(argv[i], "--tol")) tol = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--leak-loop")) loop = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else { fprintf(stderr, "unknown argument %s\n", argv[i]); free(bad); return 2; }
    }
    if (!artifact || !data) {
        fprintf(stderr, "usage: test_edgead --artifact DIR --data DIR [--bad DIR=STATUS]... [--tol T] [--leak-loop N] [--threads T]\n");
        free(bad);
        return 2;
    }
    edgead_handle* h = NULL;
    edgead_status s = edgead_open(artifact, NULL, &h);
    if (s != EDGEAD_OK) {
        printf("Bail out! cannot open %s: %s: %s\n", artifact, edgead_status_string(s), edgead_last_error(NULL));
        free(bad);
        return 1;
    }
    int height = 0, width = 0, max_batch = -1, has_threshold = -1;
    float threshold = -1.0f;
    edgead_input_info(h, &height, &width, &max_batch, &threshold, &has_threshold);
    dataset d;
    memset(&d, 0, sizeof d);
    if (!load_dataset(data, height, width, &d)) {
        printf("Bail out! %s does not hold a consistent images.u8 / ref_scores.f32 / ref_maps.f32 set\n", data);
        edgead_close(h);
        free(bad);
        return 1;
    }
    int rc;
    if (loop > 0) {
        edgead_close(h);
        rc = leak_loop(artifact, &d, loop, threads);
    } else {
        CHECK(strlen(edgead_version()) > 0 && edgead_api_version() == EDGEAD_API_VERSION,
              "library %s, API version %d", edgead_version(), edgead_api_version());
        CHECK(!strcmp(edgead_status_string(EDGEAD_ERR_BUFFER_TOO_SMALL), "EDGEAD_ERR_BUFFER_TOO_SMALL") &&
                  !strcmp(edgead_status_string((edgead_status)999), "EDGEAD_ERR_UNKNOWN"),
              "status strings");
        CHECK(height > 0 && width > 0 && max_batch >= 0 && (has_threshold == 0 || has_threshold == 1),
              "input info: %dx%d, max batch %d, threshold %s", height, width, max_batch,
              has_threshold ? "set" : "none");
        CHECK(strlen(edgead_describe(h)) > 0, "describe: %s", edgead_describe(h));
        test_outputs(h, &d, tol);
        test_predict_errors(h, &d);
        test_outputs(h, &d, tol); /* the handle still works after every failed call */
        test_threads(h, &d, tol);
        edgead_close(h);
        test_open_errors(artifact, bad, n_bad);
        printf("1..%d\n# %d of %d checks failed\n", checks, failures, checks);
        rc = failures ? 1 : 0;
    }
    free(d.images);
    free(d.ref_scores);
    free(d.ref_maps);
    free(bad);
    return rc;
}
