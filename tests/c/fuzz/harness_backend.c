/*
 * harness_backend.c - a TEST HARNESS engine for the fuzz targets, never part of a released libedgead.
 *
 * It accepts manifests whose engine is "test-harness" and "runs" a chunk by reading every input byte and writing
 * every output value, so AddressSanitizer reports any buffer the core passes with the wrong extent.
 */
#include <stdlib.h>
#include <string.h>

#include "edgead_internal.h"

typedef struct {
    size_t image_bytes, pixels;
} harness_state;

static int harness_accepts(const char* engine) { return strcmp(engine, "test-harness") == 0; }

static edgead_status harness_open(const edgead_manifest* m, const char* model_path, edgead_model_files* files,
                                  const edgead_options* options, void** state, char* desc, char* err) {
    (void)model_path; (void)options; (void)err;
    /* read every byte of the model the core kept, so the sanitizers see a wrong extent */
    unsigned sum = 0;
    for (size_t i = 0; i < files->model.size; ++i) sum += files->model.data[i];
    (void)sum;
    harness_state* s = (harness_state*)malloc(sizeof *s);
    if (!s) return EDGEAD_ERR_OUT_OF_MEMORY;
    s->pixels = (size_t)m->height * (size_t)m->width;
    s->image_bytes = s->pixels * 3;
    *state = s;
    strcpy(desc, "test harness");
    return EDGEAD_OK;
}

static edgead_status harness_infer(void* state, const uint8_t* images, size_t n, float* scores, float* maps,
                                   char* err) {
    (void)err;
    const harness_state* s = (const harness_state*)state;
    for (size_t i = 0; i < n; ++i) {
        unsigned long sum = 0;
        for (size_t b = 0; b < s->image_bytes; ++b) sum += images[i * s->image_bytes + b];
        scores[i] = (float)sum;
        if (maps)
            for (size_t p = 0; p < s->pixels; ++p) maps[i * s->pixels + p] = (float)images[i * s->image_bytes + 3 * p];
    }
    return EDGEAD_OK;
}

static void harness_batch_range(void* state, int* min_batch, int* max_batch) {
    (void)state;
    *min_batch = 1;
    *max_batch = 0;
}

static void harness_close(void* state) { free(state); }

const edgead_backend edgead_harness_backend = {
    "test-harness", harness_accepts, harness_open, harness_infer, harness_batch_range, harness_close,
};
