/*
 * edgead_internal.h - what the engine-neutral core shares with the engine backends (edgead_openvino.c,
 * edgead_tensorrt.cpp) and the fuzz harnesses (tests/c/fuzz). Not installed; not part of the ABI.
 *
 * The core is engine-neutral and split by job: edgead_api.c (the public functions, argument checks, row-stride
 * repacking, chunking into the engine's batch range, error messages), edgead_manifest.c (manifest.json through
 * the vendored cJSON in third_party/cjson, format and name checks, the sha256 of every file) and
 * edgead_sha256.c. A backend only opens one model and runs one contiguous chunk of images.
 */
#ifndef EDGEAD_INTERNAL_H
#define EDGEAD_INTERNAL_H

#include "edgead.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEAD_ERR_LEN 1024
#define EDGEAD_MANIFEST_FORMAT 1
#define EDGEAD_SPEC_FORMAT 2 /* 2: the spec may carry a tiling plan */

/** The fields of manifest.json the runtime uses (strings are NUL-terminated copies). */
typedef struct edgead_manifest {
    char engine[32];              /* "openvino", "onnxruntime" (an ONNX export), "tensorrt" */
    char precision[16];           /* "fp32", "bf16", "fp16", "int8" */
    char model[256];              /* main file, a plain name inside the artifact folder */
    char inference_precision[16]; /* extra.inference_precision; "" when absent */
    /* what a TensorRT engine was built for (extra.tensorrt_version, gpu_name, compute_capability); "" when absent
     * or not a short string, which the TensorRT backend refuses as missing */
    char tensorrt_version[32];
    char gpu_name[128];
    char compute_capability[16];
    char edgead_version[32];
    int height, width;            /* spec.input_size */
    int top_k;                    /* spec.top_k */
    int has_threshold;
    double threshold;             /* spec.threshold */
    int min_batch;                /* batch[0] */
    int max_batch;                /* batch[1]; 0 = any */
    int format;
    double score_fraction;        /* spec.post.score_fraction (0.001 when absent) */
    int has_tiling;               /* spec.tiling is an object (edgead.spec.TilePlan) */
    int tile_overlap;             /* spec.tiling.overlap; the tile is the input size */
    int fixed_batch;              /* not read from the file: a tune decision's static batch, which the backend fixes
                                   * the model's batch axis at (0: the model's own batch axis) */
} edgead_manifest;

/** What an export root's tune decision (extra.tune.chosen, written by edgead tune and the default compile) sets,
 *  read the way edgead.runtimes.loader.tuned_choice reads it. */
typedef struct edgead_tuned {
    int follow;          /* 1: the decision names a setting to follow; 0: open the folder as it is */
    char folder[256];    /* the chosen artifact: "." (the export itself) or a plain folder name inside it */
    char engine[16];     /* the chosen engine in registry spelling ("openvino", "onnxruntime", "trt", "torch"); "" none */
    int throughput;      /* the decision chose OpenVINO's throughput mode (libedgead runs LATENCY: one request) */
    char rest[8];        /* the float rest's precision ("bf16"), "" when none */
    char hint[8];        /* OpenVINO's INFERENCE_PRECISION_HINT for that rest ("bf16", "f32"), "" when none */
    int static_batch;    /* the fixed batch the runner compiles with (0: none) */
    int has_threshold;
    double threshold;    /* the threshold the setting's own compile-time gate recomputed */
} edgead_tuned;

/* ---- edgead_sha256.c ---------------------------------------------------------------------------------- */
typedef struct edgead_sha256_ctx {
    uint32_t h[8];
    uint64_t length; /* bytes hashed so far */
    uint8_t block[64];
    size_t fill;
} edgead_sha256_ctx;

void edgead_sha256_init(edgead_sha256_ctx* c);
void edgead_sha256_update(edgead_sha256_ctx* c, const uint8_t* data, size_t len);
void edgead_sha256_final_hex(edgead_sha256_ctx* c, char hex[65]);

/* ---- edgead_manifest.c -------------------------------------------------------------------------------- */
#define EDGEAD_MANIFEST_MAX_BYTES (16u << 20)

/** 1 when ``name`` names a file directly inside the artifact folder (the rule of edgead.runtimes.manifest's
 *  safe_name): not empty, under 256 bytes, no leading dot, no '/', '\\' or ':', no control characters. */
int edgead_safe_name(const char* name);

/** Parse and check manifest text (``where`` names it in messages). On EDGEAD_OK, *m is filled and *json holds
 *  the parsed document for edgead_verify_files; release it with edgead_json_free. */
edgead_status edgead_parse_manifest(const char* text, size_t len, const char* where, edgead_manifest* m,
                                    void** json, char* err);

/** A listed file kept in memory from the read that hashed it: engines compile from these bytes, never from the
 *  path, so a file swapped on disk after the check is never run (time of check to time of use). */
typedef struct edgead_blob {
    char name[256]; /* the listed file to keep; "" keeps none */
    uint8_t* data;  /* malloc'd when kept; a backend that keeps it sets data to NULL, the rest is freed */
    size_t size;
} edgead_blob;

/** What an engine compiles: the manifest's model file and, for an OpenVINO IR (``x.xml``), its weights (``x.bin``)
 *  when the manifest lists them (else ``weights.name`` is "" and ``weights.size`` 0). */
typedef struct edgead_model_files {
    edgead_blob model, weights;
} edgead_model_files;

void edgead_model_files_free(edgead_model_files* files);

/** Check every file the parsed manifest lists inside ``dir``: a regular file (never a FIFO, device or symlink)
 *  whose sha256 matches; and that no regular file beside the manifest goes unlisted. The files named in ``keep``
 *  (NULL: none) are kept in memory as they were hashed; on failure nothing is kept. */
edgead_status edgead_verify_files(const char* dir, const char* where, const void* json, edgead_model_files* keep,
                                  char* err);

void edgead_json_free(void* json);

/** Read, check and verify ``dir``/manifest.json; with ``files`` (NULL: none), the model and its weights come back
 *  in memory, read once, hashed and checked (release them with edgead_model_files_free). */
edgead_status edgead_read_manifest(const char* dir, edgead_manifest* m, edgead_model_files* files, char* err);

/** Read the tune decision of the parsed manifest ``json`` of the folder ``dir`` (``where`` names the manifest in
 *  messages) into *t, checked as tuned_choice checks it: a known float-rest precision, a precision_hint that
 *  matches it, a known engine, and a chosen folder that is "." or a plain name of an existing folder of ``dir``.
 *  No decision (or one naming nothing to change) is EDGEAD_OK with t->follow 0. */
edgead_status edgead_parse_tuned(const char* dir, const char* where, const void* json, edgead_tuned* t, char* err);

/** edgead_read_manifest for a folder that may be an export root: when ``dir``'s manifest holds a tune decision
 *  (edgead_parse_tuned), the artifact it chose is read instead (``dir`` itself or ``dir``/folder, its own manifest
 *  and files checked) and *t says what the decision sets; *artifact_dir is the folder read (malloc'd). */
edgead_status edgead_read_export(const char* dir, edgead_manifest* m, edgead_tuned* t, edgead_model_files* files,
                                 char** artifact_dir, char* err);

/** ``dir`` + '/' + ``name`` in a malloc'd string (NULL when out of memory). */
char* edgead_path_join(const char* dir, const char* name);

/* ---- edgead_tiling.c ---------------------------------------------------------------------------------- */
/* The C twin of edgead.runtimes.tiling (checked against it by tests/test_c_api.py). */

/** Tile starts along an axis of ``length`` (stride tile - overlap, the last one ending on the edge) into ``out``
 *  (NULL: only count); returns how many, 0 when length < tile or the overlap is out of range. */
int edgead_tile_origins(int length, int tile, int overlap, int* out);

/** Normalised linear cross-fade weights ``w[n * tile]`` of the tiles at ``origins``; 0 when out of memory. */
int edgead_axis_weights(const int* origins, int n, int tile, int length, double* w);

/** k of a stitched map's image score: round(score_fraction * height * width), within [1, 3840]. */
int edgead_frame_top_k(int height, int width, double score_fraction);

/** Mean of the ``k`` largest of ``n`` values (k <= 3840), summed in double; NaN when any value is NaN. */
float edgead_top_k_mean(const float* map, size_t n, int k);

/** An engine backend. ``err`` is a buffer of EDGEAD_ERR_LEN bytes for a one-line message. */
typedef struct edgead_backend {
    const char* name;
    /** 1 when this backend runs artifacts whose manifest engine is ``engine``. */
    int (*accepts)(const char* engine);
    /** Compile / deserialise the model from ``files`` (the bytes whose sha256 was checked; ``model_path`` only
     *  names it in messages and is never read); on success *state holds everything infer needs. A backend that
     *  must keep a buffer past open takes it (sets its data to NULL). Writes a one-line description (device,
     *  precision actually used) into ``desc`` (EDGEAD_ERR_LEN bytes). */
    edgead_status (*open)(const edgead_manifest* m, const char* model_path, edgead_model_files* files,
                          const edgead_options* options, void** state, char* desc, char* err);
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
#ifdef EDGEAD_TEST_BACKEND
/* A test harness, never in a released library: the fuzz targets link one that accepts engine "test-harness"
 * and reads every input byte, so the sanitizers see any out-of-bounds access the core lets through. */
extern const edgead_backend EDGEAD_TEST_BACKEND;
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
