/*
 * edgead_internal.h - what the engine-neutral core (edgead_core.c) shares with the engine backends
 * (edgead_openvino.c, edgead_tensorrt.cpp). Not installed; not part of the ABI.
 *
 * The core owns everything that is the same for every engine: the public functions, argument checks, the
 * manifest (JSON reader, sha256 of each file, format checks), row-stride repacking, chunking into the engine's
 * batch range and error messages. A backend only opens one model and runs one contiguous chunk of images.
 */
#ifndef EDGEAD_INTERNAL_H
#define EDGEAD_INTERNAL_H

#include "edgead.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEAD_ERR_LEN 1024
#define EDGEAD_MANIFEST_FORMAT 1
#define EDGEAD_SPEC_FORMAT 1

/** The fields of manifest.json the runtime uses (strings are NUL-terminated copies). */
typedef struct edgead_manifest {
    char engine[32];              /* "openvino", "onnxruntime" (an ONNX export), "tensorrt" */
    char precision[16];           /* "fp32", "bf16", "fp16", "int8" */
    char model[256];              /* main file, a plain name inside the artifact folder */
    char inference_precision[16]; /* extra.inference_precision; "" when absent */
    char edgead_version[32];
    int height, width;            /* spec.input_size */
    int top_k;                    /* spec.top_k */
    int has_threshold;
    double threshold;             /* spec.threshold */
    int min_batch;                /* batch[0] */
    int max_batch;                /* batch[1]; 0 = any */
    int format;
} edgead_manifest;

/** An engine backend. ``err`` is a buffer of EDGEAD_ERR_LEN bytes for a one-line message. */
typedef struct edgead_backend {
    const char* name;
    /** 1 when this backend runs artifacts whose manifest engine is ``engine``. */
    int (*accepts)(const char* engine);
    /** Compile / deserialise ``model_path``; on success *state holds everything infer needs. Writes a
     *  one-line description (device, precision actually used) into ``desc`` (EDGEAD_ERR_LEN bytes). */
    edgead_status (*open)(const edgead_manifest* m, const char* model_path, const edgead_options* options,
                          void** state, char* desc, char* err);
    /** Run ``n`` contiguous images (min_batch <= n <= max_batch); write n scores and, when maps is not
     *  NULL, n * height * width map values. Called with the handle's mutex held. */
    edgead_status (*infer)(void* state, const uint8_t* images, size_t n, float* scores, float* maps, char* err);
    /** The batch range the compiled engine takes (*max_batch 0 = any); the core narrows the manifest's range
     *  to it, splitting larger batches and padding smaller ones. */
    void (*batch_range)(void* state, int* min_batch, int* max_batch);
    void (*close)(void* state);
} edgead_backend;

#ifdef EDGEAD_HAVE_OPENVINO
extern const edgead_backend edgead_openvino_backend;
#endif
#ifdef EDGEAD_HAVE_TENSORRT
extern const edgead_backend edgead_tensorrt_backend;
#endif

/** printf into an EDGEAD_ERR_LEN buffer, keeping the text on one line. */
void edgead_format_error(char* err, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#ifdef __cplusplus
}
#endif

#endif /* EDGEAD_INTERNAL_H */
