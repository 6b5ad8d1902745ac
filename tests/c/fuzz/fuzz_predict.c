/*
 * fuzz_predict.c - libFuzzer target for edgead_predict's argument checks (edgead_api.c), through the public API
 * on the test-harness engine (harness_backend.c).
 *
 * Input: height, width (1..16), the manifest's batch range, flags, then n, row_stride and maps_capacity as raw
 * little-endian integers. When n * height * row_stride (or the maps size) overflows size_t, the call must be
 * refused (issue 10: the old guard itself overflowed and memcpy read wild memory). Otherwise the buffers are
 * allocated with exactly the extent the arguments promise, so AddressSanitizer reports any access beyond it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "edgead_internal.h"

#define MAX_BYTES (1u << 20)

static char dir[64];
static edgead_handle* handle;
static unsigned char open_key[4];

static void write_manifest(int h, int w, int min_batch, int max_batch) {
    static const char model[] = "harness";
    edgead_sha256_ctx c;
    char hex[65], path[128], text[1024], batch_max[16];
    edgead_sha256_init(&c);
    edgead_sha256_update(&c, (const uint8_t*)model, sizeof model - 1);
    edgead_sha256_final_hex(&c, hex);
    snprintf(batch_max, sizeof batch_max, max_batch ? "%d" : "null", max_batch);
    snprintf(text, sizeof text, "{\"format\": 1, \"edgead_version\": \"0.1.0\", \"engine\": \"test-harness\", "
             "\"precision\": \"fp32\", \"model\": \"model.bin\", \"files\": {\"model.bin\": \"%s\"}, \"batch\": [%d, %s], "
             "\"spec\": {\"input_size\": [%d, %d], \"threshold\": 0.5, \"format\": 1, \"version\": \"0.1.0\"}}",
             hex, min_batch, batch_max, h, w);
    snprintf(path, sizeof path, "%s/model.bin", dir);
    FILE* f = fopen(path, "wb");
    fputs(model, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
}

static size_t u64(const uint8_t* p) {
    size_t v = 0;
    for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
    return v;
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
    (void)argc; (void)argv;
    strcpy(dir, "/tmp/edgead-fuzz-predict-XXXXXX");
    if (!mkdtemp(dir)) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    uint8_t in[32] = {0};
    memcpy(in, data, size < sizeof in ? size : sizeof in);
    int h = 1 + in[0] % 16, w = 1 + in[1] % 16, min_batch = 1 + in[2] % 3, max_batch = in[3] % 5;
    if (max_batch && max_batch < min_batch) max_batch = 0;
    unsigned flags = in[4];
    size_t n = u64(in + 5), row_stride = u64(in + 13);
    size_t maps_capacity = (size_t)(in[21] | in[22] << 8 | (in[23] & 3) << 16); /* up to 256 Ki floats */
    if (flags & 1) n %= 9;                      /* mostly small batches, sometimes anything */
    if (flags & 2) row_stride = (size_t)w * 3 + row_stride % 64;
    unsigned char key[4] = {(unsigned char)h, (unsigned char)w, (unsigned char)min_batch, (unsigned char)max_batch};
    if (!handle || memcmp(key, open_key, 4) != 0) {
        edgead_close(handle);
        handle = NULL;
        write_manifest(h, w, min_batch, max_batch);
        if (edgead_open(dir, NULL, &handle) != EDGEAD_OK) {
            fprintf(stderr, "open failed: %s\n", edgead_last_error(NULL));
            abort();
        }
        memcpy(open_key, key, 4);
    }
    size_t stride = row_stride ? row_stride : (size_t)w * 3;
    size_t extent = 0;
    int overflow = __builtin_mul_overflow((size_t)h, stride, &extent) || __builtin_mul_overflow(extent, n, &extent);
    size_t map_floats = 0;
    overflow |= __builtin_mul_overflow((size_t)h * (size_t)w, n, &map_floats);
    int expect_refusal = overflow || n == 0 || (row_stride && row_stride < (size_t)w * 3);
    if (!expect_refusal && (extent > MAX_BYTES || n > MAX_BYTES)) return 0; /* a valid call too big to back */
    uint8_t* images = (uint8_t*)malloc(expect_refusal ? 16 : extent);
    float* scores = (float*)malloc((expect_refusal ? 1 : n) * sizeof(float));
    float* maps = (flags & 4) ? NULL : (float*)malloc((maps_capacity ? maps_capacity : 1) * sizeof(float));
    if (images) memset(images, 7, expect_refusal ? 16 : extent);
    edgead_status st = edgead_predict(handle, images, n, h, w, row_stride, scores, maps, maps_capacity);
    if (expect_refusal && st == EDGEAD_OK) abort();                 /* an impossible call was accepted */
    if (st == EDGEAD_OK && maps && maps_capacity < map_floats) abort();
    if (!expect_refusal && st == EDGEAD_OK && scores[0] != (float)(7ul * (size_t)h * (size_t)w * 3)) abort();
    free(images);
    free(scores);
    free(maps);
    return 0;
}
