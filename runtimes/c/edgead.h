/*
 * edgead.h - the C ABI of the edgead runtime (libedgead).
 *
 * Runs a compiled edgead artifact folder (OpenVINO IR, an FP32 ONNX export read by OpenVINO, or a TensorRT
 * engine when the library was built with TensorRT) from C, C++, C# or any language with a C FFI. The artifact's
 * manifest.json says which engine runs it, the input size and the threshold; every file it lists is checked
 * against its sha256 when the artifact is opened.
 *
 * Typical use:
 *
 *     edgead_handle* h = NULL;
 *     if (edgead_open("out/openvino-fp32", NULL, &h) != EDGEAD_OK) {
 *         fprintf(stderr, "%s\n", edgead_last_error(NULL));
 *         return 1;
 *     }
 *     int hgt, wid, max_batch, has_thr; float thr;
 *     edgead_input_info(h, &hgt, &wid, &max_batch, &thr, &has_thr);
 *     edgead_status s = edgead_predict(h, rgb, n, hgt, wid, 0, scores, maps, n * hgt * wid);
 *     if (s != EDGEAD_OK) fprintf(stderr, "%s\n", edgead_last_error(h));
 *     edgead_close(h);
 *
 * Images are uint8 RGB, channels last (H, W, 3), already resized / cropped to the artifact's input size
 * (edgead_input_info); the network does the scaling and mean/std normalisation itself. An artifact with a
 * tiling plan (edgead_tiling_info) also takes whole camera frames of any size through edgead_predict_frame:
 * a frame of H x W pixels in, an H x W map out.
 *
 * ABI rules
 *   - No exception, signal or abort crosses this boundary: every failure is a status code plus a message.
 *   - Handles are opaque. Structs passed in carry their own size (struct_size) so fields can be added later.
 *   - EDGEAD_API_VERSION grows when functions are added; existing signatures and status values never change
 *     within one major ABI (the SONAME libedgead.so.<EDGEAD_ABI_MAJOR>). Check edgead_api_version() at run time
 *     against the header you compiled with.
 *
 * Ownership and lifetime
 *   - edgead_open* allocates a handle; the caller releases it with edgead_close exactly once. Nothing else the
 *     library returns needs freeing.
 *   - Input and output buffers belong to the caller and are only used during the call.
 *   - Strings returned (edgead_last_error, edgead_describe, edgead_version, edgead_status_string) are owned by
 *     the library. edgead_version and edgead_status_string return static strings. edgead_describe lives as long
 *     as its handle. edgead_last_error(h) is valid until the next call on h; edgead_last_error(NULL) until the
 *     calling thread's next failing call.
 *
 * Thread safety
 *   - Different handles are fully independent and may be used from different threads at the same time; open
 *     one handle per worker thread to run inferences in parallel.
 *   - One handle may be shared by several threads: edgead_predict and edgead_input_info are serialised by a
 *     mutex inside the handle (correct, but one inference at a time).
 *   - edgead_close must not run while another thread still uses the same handle.
 *   - Each failing call records its message both in the handle and in a thread-local slot. With a handle
 *     shared between threads, read edgead_last_error(NULL) (the calling thread's own message) rather than
 *     edgead_last_error(h), which the next failing call from any thread overwrites.
 */
#ifndef EDGEAD_H
#define EDGEAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Version of this header's API; edgead_api_version() returns the library's. */
#define EDGEAD_API_VERSION 2 /* 2: edgead_tiling_info, edgead_predict_frame */
/** Major ABI version: the number in libedgead.so.<N>. Bumped only for incompatible changes. */
#define EDGEAD_ABI_MAJOR 1

#if defined(_WIN32)
#  if defined(EDGEAD_BUILDING)
#    define EDGEAD_API __declspec(dllexport)
#  else
#    define EDGEAD_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define EDGEAD_API __attribute__((visibility("default")))
#else
#  define EDGEAD_API
#endif

/** Result of every fallible call. Values are fixed for the life of ABI major 1. */
typedef enum edgead_status {
    EDGEAD_OK = 0,
    EDGEAD_ERR_INVALID_ARGUMENT = 1, /**< a NULL pointer, zero images, a row stride shorter than a row */
    EDGEAD_ERR_SHAPE_MISMATCH = 2,   /**< height / width differ from the artifact's input size */
    EDGEAD_ERR_BUFFER_TOO_SMALL = 3, /**< the maps buffer holds fewer than n * height * width floats */
    EDGEAD_ERR_NOT_FOUND = 4,        /**< the artifact folder, its manifest or a file it lists is missing */
    EDGEAD_ERR_CORRUPT_ARTIFACT = 5, /**< unreadable JSON, a missing field, a file whose sha256 differs */
    EDGEAD_ERR_UNSUPPORTED = 6,      /**< a newer manifest/spec format, an engine this build lacks, a bad device */
    EDGEAD_ERR_BACKEND = 7,          /**< OpenVINO or TensorRT reported an error (the message has its text) */
    EDGEAD_ERR_OUT_OF_MEMORY = 8,
    EDGEAD_ERR_IO = 9                /**< a file exists but could not be read */
} edgead_status;

/** An opened artifact: the compiled model, its infer request(s) and buffers. Opaque. */
typedef struct edgead_handle edgead_handle;

/** Options for edgead_open_ex. Initialise with edgead_options_init, then change fields. */
typedef struct edgead_options {
    size_t struct_size; /**< sizeof(edgead_options), set by edgead_options_init */
    const char* device; /**< NULL: the engine's default ("CPU" for OpenVINO, GPU 0 for TensorRT);
                             OpenVINO device names ("CPU", "GPU.0"); for TensorRT "GPU", "GPU.<i>", "cuda:<i>" */
    int num_threads;    /**< CPU inference threads; 0: the engine's default (all cores) */
} edgead_options;

/** Library version, e.g. "0.1.0" (the edgead release it was built from). Static string. */
EDGEAD_API const char* edgead_version(void);

/** EDGEAD_API_VERSION of the compiled library. */
EDGEAD_API int edgead_api_version(void);

/** Short constant name of a status, e.g. "EDGEAD_ERR_SHAPE_MISMATCH". Never NULL. */
EDGEAD_API const char* edgead_status_string(edgead_status status);

/** Fill *options with the defaults (device NULL, num_threads 0). */
EDGEAD_API void edgead_options_init(edgead_options* options);

/**
 * Open the artifact folder artifact_dir (the one holding manifest.json) on device (NULL: engine default).
 * Verifies the manifest and the sha256 of each file it lists, then compiles / deserialises the model.
 * On success *out is a new handle; on failure *out is NULL and edgead_last_error(NULL) says why.
 *
 * An export root (edgead export OUT) whose manifest records a tune decision (extra.tune.chosen, written by
 * edgead tune OUT and the default edgead compile OUT --calib DIR) opens the setting it chose, as Python's
 * edgead.runtimes.load(OUT) does (a behaviour, no new function: EDGEAD_API_VERSION stays 2; a libedgead without it
 * opens such a root as the ONNX export it holds, and its edgead_describe carries no "(tuned"):
 *   - the chosen artifact folder OUT/<folder> (a plain folder name of OUT, or "." for OUT itself), with its own
 *     manifest and sha256 checks;
 *   - OpenVINO's inference precision from the chosen float rest (rest "bf16": an INT8 IR's float part in bf16)
 *     instead of the artifact's extra.inference_precision;
 *   - the batch axis fixed at the chosen static_batch (max_batch then reports it; smaller calls are padded);
 *   - the threshold the setting's own compile-time gate recomputed (what edgead_input_info returns);
 *   - a chosen throughput mode is not applied: libedgead always runs OpenVINO's LATENCY hint, one infer request.
 * edgead_describe names the decision: "... from OUT/openvino-int8 (tuned: float rest in bf16, threshold 0.1294)".
 * A malformed decision (an unknown float rest or precision hint, a folder that is not a plain existing folder of
 * OUT, an unknown engine) fails with EDGEAD_ERR_CORRUPT_ARTIFACT (EDGEAD_ERR_NOT_FOUND for a missing folder) and one
 * line naming what was expected. An export root without a decision opens as the FP32 ONNX export it holds. Open
 * an artifact folder (OUT/openvino-fp32) to run exactly that artifact, ignoring any decision.
 */
EDGEAD_API edgead_status edgead_open(const char* artifact_dir, const char* device, edgead_handle** out);

/** edgead_open with options (NULL options: the defaults). */
EDGEAD_API edgead_status edgead_open_ex(const char* artifact_dir, const edgead_options* options,
                                        edgead_handle** out);

/**
 * What the artifact expects and how to label its scores. Every output pointer may be NULL (not written).
 *   height, width: the input size images must have;
 *   max_batch:     the most images one engine call takes (0: any); edgead_predict splits larger n itself;
 *   threshold, has_threshold: the artifact's decision threshold, or the one of an export root's tuned setting
 *                  (edgead_open) (score > threshold means anomalous,
 *                  and so does a NaN score: label with !(score <= threshold), never score > threshold);
 *                  has_threshold is 0 and threshold 0 when the artifact carries none.
 */
EDGEAD_API edgead_status edgead_input_info(edgead_handle* handle, int* height, int* width, int* max_batch,
                                           float* threshold, int* has_threshold);

/**
 * Score n images.
 *   images:        n images of height x width x 3 uint8 RGB; row r of image i starts at
 *                  images + (i * height + r) * row_stride;
 *   row_stride:    bytes from one row to the next (0: width * 3, tightly packed); must be >= width * 3;
 *   scores:        n floats out, one image score each;
 *   maps:          n * height * width floats out (anomaly maps, row major), or NULL for scores only;
 *   maps_capacity: the number of floats maps can hold (ignored when maps is NULL).
 * height and width must equal the artifact's input size. Any n >= 1 works; the library splits it into the
 * batches the engine accepts. On failure the output buffers' contents are unspecified.
 */
EDGEAD_API edgead_status edgead_predict(edgead_handle* handle, const uint8_t* images, size_t n, int height,
                                        int width, size_t row_stride, float* scores, float* maps,
                                        size_t maps_capacity);

/**
 * The artifact's tiling plan (edgead.spec.TilePlan). Every output pointer may be NULL.
 *   has_tiling: 1 when the artifact carries a plan (then edgead_predict_frame runs frames), else 0;
 *   tile_height, tile_width: the tile, always the input size; overlap: pixels neighbouring tiles share.
 */
EDGEAD_API edgead_status edgead_tiling_info(edgead_handle* handle, int* has_tiling, int* tile_height,
                                            int* tile_width, int* overlap);

/**
 * Score one camera frame of any size (at least one tile in each axis) by the artifact's tiling plan: the frame
 * is cut into tiles of the input size (the last tile of each axis aligned to the frame's edge), the tiles run
 * through the engine in the batches it accepts, their maps are blended with linear cross-fades over the
 * overlaps, and the score is the mean of the top-k pixels of the stitched map (k = round(0.1 % of the frame's
 * pixels, the spec's score fraction), at most 3840). The same arithmetic as edgead.runtimes.tiling in Python.
 *   frame:        height x width x 3 uint8 RGB; row r starts at frame + r * row_stride (0: width * 3);
 *   score:        one float out; label it with !(score <= threshold) (a NaN score is anomalous);
 *   map:          height * width floats out (row major), or NULL for the score only;
 *   map_capacity: the number of floats map can hold (ignored when map is NULL).
 * EDGEAD_ERR_UNSUPPORTED when the artifact has no tiling plan (resize / crop the frame and call edgead_predict),
 * EDGEAD_ERR_SHAPE_MISMATCH when the frame is smaller than a tile.
 */
EDGEAD_API edgead_status edgead_predict_frame(edgead_handle* handle, const uint8_t* frame, int height, int width,
                                              size_t row_stride, float* score, float* map, size_t map_capacity);

/**
 * One line describing the last failure: of the last failing call on handle, or, with handle NULL, of the
 * calling thread's last failing call (the only place open failures are reported). "" when there was none.
 */
EDGEAD_API const char* edgead_last_error(const edgead_handle* handle);

/** One line saying what the handle runs, e.g. "openvino fp32 on CPU (inference f32) from out/openvino-fp32"; opened
 *  through an export root's tune decision it ends with what the decision set, e.g. "openvino int8 on CPU (inference
 *  bf16) from out/openvino-int8 (tuned: float rest in bf16, threshold 0.1294)". */
EDGEAD_API const char* edgead_describe(const edgead_handle* handle);

/** Release the handle and everything it holds. NULL is a no-op. */
EDGEAD_API void edgead_close(edgead_handle* handle);

#ifdef __cplusplus
}
#endif

#endif /* EDGEAD_H */
