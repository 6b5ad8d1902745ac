/*
 * edgead_api.c - the public C functions of edgead.h: argument checks (every size product checked for
 * overflow), error messages, row-stride repacking and chunking of a batch into what the engine accepts.
 * The manifest lives in edgead_manifest.c; engines plug in through edgead_backend (edgead_internal.h).
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#  define _POSIX_C_SOURCE 200809L
#endif

#include "edgead_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifdef _WIN32
#  include <windows.h>
typedef SRWLOCK edgead_mutex;
#  define MUTEX_INIT(m) InitializeSRWLock(m)
#  define MUTEX_LOCK(m) AcquireSRWLockExclusive(m)
#  define MUTEX_UNLOCK(m) ReleaseSRWLockExclusive(m)
#  define MUTEX_DESTROY(m) ((void)(m))
#  define THREAD_LOCAL __declspec(thread)
#  ifndef S_ISDIR
#    define S_ISDIR(mode) (((mode) & _S_IFMT) == _S_IFDIR)
#  endif
#else
#  include <pthread.h>
typedef pthread_mutex_t edgead_mutex;
#  define MUTEX_INIT(m) pthread_mutex_init((m), NULL)
#  define MUTEX_LOCK(m) pthread_mutex_lock(m)
#  define MUTEX_UNLOCK(m) pthread_mutex_unlock(m)
#  define MUTEX_DESTROY(m) pthread_mutex_destroy(m)
#  define THREAD_LOCAL _Thread_local
#endif

#ifndef EDGEAD_VERSION_STRING
#  error "EDGEAD_VERSION_STRING must be defined by the build (CMakeLists.txt reads it from edgead/__init__.py)"
#endif


/* ==== errors ============================================================================================ */

static THREAD_LOCAL char tls_error[EDGEAD_ERR_LEN];

void edgead_format_error(char* err, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, EDGEAD_ERR_LEN, fmt, ap);
    va_end(ap);
    for (char* c = err; *c; ++c)
        if (*c == '\n' || *c == '\r' || *c == '\t') *c = ' ';
}

/* ==== handles ============================================================================================ */

struct edgead_handle {
    const edgead_backend* backend;
    void* state;
    edgead_manifest m;
    int min_batch, max_batch; /* the manifest's range narrowed to the engine's; max 0 = any */
    edgead_mutex lock;
    uint8_t* staging; /* contiguous / padded input when the caller's layout or batch does not fit */
    size_t staging_bytes;
    float* pad_scores; /* outputs of a batch padded up to min_batch */
    float* pad_maps;
    char desc[EDGEAD_ERR_LEN];
    char error[EDGEAD_ERR_LEN];
};

static const edgead_backend* const BACKENDS[] = {
#ifdef EDGEAD_HAVE_OPENVINO
    &edgead_openvino_backend,
#endif
#ifdef EDGEAD_HAVE_TENSORRT
    &edgead_tensorrt_backend,
#endif
#ifdef EDGEAD_TEST_BACKEND
    &EDGEAD_TEST_BACKEND,
#endif
    NULL,
};

/* Record a failure in the thread-local slot and, when there is one, in the handle. Returns st. */
static edgead_status fail(edgead_handle* h, edgead_status st, const char* msg) {
    snprintf(tls_error, sizeof tls_error, "%s", msg);
    if (h) snprintf(h->error, sizeof h->error, "%s", msg);
    return st;
}

static edgead_status failf(edgead_handle* h, edgead_status st, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static edgead_status failf(edgead_handle* h, edgead_status st, const char* fmt, ...) {
    char msg[EDGEAD_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fail(h, st, msg);
}

const char* edgead_version(void) { return EDGEAD_VERSION_STRING; }

int edgead_api_version(void) { return EDGEAD_API_VERSION; }

const char* edgead_status_string(edgead_status status) {
    switch (status) {
        case EDGEAD_OK: return "EDGEAD_OK";
        case EDGEAD_ERR_INVALID_ARGUMENT: return "EDGEAD_ERR_INVALID_ARGUMENT";
        case EDGEAD_ERR_SHAPE_MISMATCH: return "EDGEAD_ERR_SHAPE_MISMATCH";
        case EDGEAD_ERR_BUFFER_TOO_SMALL: return "EDGEAD_ERR_BUFFER_TOO_SMALL";
        case EDGEAD_ERR_NOT_FOUND: return "EDGEAD_ERR_NOT_FOUND";
        case EDGEAD_ERR_CORRUPT_ARTIFACT: return "EDGEAD_ERR_CORRUPT_ARTIFACT";
        case EDGEAD_ERR_UNSUPPORTED: return "EDGEAD_ERR_UNSUPPORTED";
        case EDGEAD_ERR_BACKEND: return "EDGEAD_ERR_BACKEND";
        case EDGEAD_ERR_OUT_OF_MEMORY: return "EDGEAD_ERR_OUT_OF_MEMORY";
        case EDGEAD_ERR_IO: return "EDGEAD_ERR_IO";
    }
    return "EDGEAD_ERR_UNKNOWN";
}

void edgead_options_init(edgead_options* options) {
    if (!options) return;
    memset(options, 0, sizeof *options);
    options->struct_size = sizeof *options;
}

edgead_status edgead_open(const char* artifact_dir, const char* device, edgead_handle** out) {
    edgead_options o;
    edgead_options_init(&o);
    o.device = device;
    return edgead_open_ex(artifact_dir, &o, out);
}

static const edgead_backend* find_backend(const char* engine) {
    for (size_t i = 0; BACKENDS[i]; ++i)
        if (BACKENDS[i]->accepts(engine)) return BACKENDS[i];
    return NULL;
}

/* " (tuned: float rest in bf16, batch fixed at 8, threshold 0.1294)": what an export's tune decision set. */
static void describe_tuned(const edgead_tuned* t, char* out, size_t cap) {
    char parts[5][96];
    int n = 0;
    if (t->hint[0]) snprintf(parts[n++], sizeof parts[0], "float rest in %s", t->rest);
    if (t->static_batch) snprintf(parts[n++], sizeof parts[0], "batch fixed at %d", t->static_batch);
    if (t->has_threshold) snprintf(parts[n++], sizeof parts[0], "threshold %g", t->threshold);
    if (t->throughput)
        snprintf(parts[n++], sizeof parts[0], "its throughput mode runs in latency mode here (one infer request)");
    size_t used = (size_t)snprintf(out, cap, " (tuned%s", n ? ": " : "");
    for (int i = 0; i < n && used < cap; ++i)
        used += (size_t)snprintf(out + used, cap - used, "%s%s", i ? ", " : "", parts[i]);
    if (used < cap) snprintf(out + used, cap - used, ")");
}

edgead_status edgead_open_ex(const char* artifact_dir, const edgead_options* options, edgead_handle** out) {
    char err[EDGEAD_ERR_LEN] = "";
    edgead_options o;
    edgead_options_init(&o);
    if (!out) return fail(NULL, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_open: expected a handle pointer (out), found NULL");
    *out = NULL;
    if (!artifact_dir || !artifact_dir[0])
        return fail(NULL, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_open: expected an artifact folder path, found NULL or \"\"");
    if (options) {
        if (options->struct_size < sizeof(size_t) + sizeof(const char*))
            return failf(NULL, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_open_ex: options.struct_size is %zu; initialise "
                         "options with edgead_options_init", options->struct_size);
        memcpy(&o, options, options->struct_size < sizeof o ? options->struct_size : sizeof o);
        o.struct_size = sizeof o;
    }
    if (o.num_threads < 0)
        return failf(NULL, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_open_ex: expected num_threads >= 0, found %d",
                     o.num_threads);
    edgead_manifest m;
    edgead_tuned tuned;
    edgead_model_files files; /* the model, read once: hashed, then compiled from these very bytes */
    char* folder = NULL;      /* what was opened: artifact_dir, or the artifact its tune decision chose */
    edgead_status st = edgead_read_export(artifact_dir, &m, &tuned, &files, &folder, err);
    if (st != EDGEAD_OK) return fail(NULL, st, err);
    if (tuned.follow) { /* the chosen setting, as edgead.runtimes.load(OUT) runs it */
        if (tuned.hint[0]) snprintf(m.inference_precision, sizeof m.inference_precision, "%s", tuned.hint);
        if (tuned.static_batch) m.fixed_batch = m.min_batch = m.max_batch = tuned.static_batch;
        if (tuned.has_threshold) {
            m.has_threshold = 1;
            m.threshold = tuned.threshold;
        }
    }
    const edgead_backend* backend = find_backend(m.engine);
    if (!backend) {
        edgead_model_files_free(&files);
        int known = !strcmp(m.engine, "openvino") || !strcmp(m.engine, "onnxruntime") || !strcmp(m.engine, "tensorrt");
        st = failf(NULL, EDGEAD_ERR_UNSUPPORTED,
                   known ? "%s holds a %s artifact, but this libedgead was built without that engine; rebuild "
                           "it with the engine's SDK installed (edgead build-c)"
                         : "%s holds an artifact for engine '%s', which libedgead does not run (it runs openvino, "
                           "onnxruntime exports through OpenVINO, and tensorrt)",
                   folder, m.engine);
        free(folder);
        return st;
    }
    edgead_handle* h = (edgead_handle*)calloc(1, sizeof *h);
    char* model_path = edgead_path_join(folder, m.model);
    if (!h || !model_path) {
        free(h);
        free(model_path);
        free(folder);
        edgead_model_files_free(&files);
        return fail(NULL, EDGEAD_ERR_OUT_OF_MEMORY, "edgead_open: out of memory");
    }
    h->backend = backend;
    h->m = m;
    char desc[EDGEAD_ERR_LEN] = "";
    st = backend->open(&m, model_path, &files, &o, &h->state, desc, err);
    free(model_path);
    edgead_model_files_free(&files); /* what the backend did not keep */
    if (st != EDGEAD_OK) {
        free(h);
        free(folder);
        return fail(NULL, st, err[0] ? err : "the engine failed to open the model");
    }
    int engine_min = 1, engine_max = 0;
    backend->batch_range(h->state, &engine_min, &engine_max);
    h->min_batch = m.min_batch > engine_min ? m.min_batch : engine_min;
    h->max_batch = m.max_batch;
    if (engine_max && (!h->max_batch || engine_max < h->max_batch)) h->max_batch = engine_max;
    if (h->max_batch && h->max_batch < h->min_batch) {
        backend->close(h->state);
        free(h);
        st = failf(NULL, EDGEAD_ERR_CORRUPT_ARTIFACT, "%s: the manifest's batch range [%d, %d] and the engine's "
                   "[%d, %d] do not overlap", folder, m.min_batch, m.max_batch, engine_min, engine_max);
        free(folder);
        return st;
    }
    char setting[320] = "";
    if (tuned.follow) describe_tuned(&tuned, setting, sizeof setting);
    snprintf(h->desc, sizeof h->desc, "%.380s from %.500s%.140s", desc, folder, setting);
    free(folder);
    MUTEX_INIT(&h->lock);
    *out = h;
    return EDGEAD_OK;
}

edgead_status edgead_input_info(edgead_handle* h, int* height, int* width, int* max_batch, float* threshold,
                                int* has_threshold) {
    if (!h) return fail(NULL, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_input_info: expected a handle, found NULL");
    MUTEX_LOCK(&h->lock);
    if (height) *height = h->m.height;
    if (width) *width = h->m.width;
    if (max_batch) *max_batch = h->max_batch;
    if (threshold) *threshold = h->m.has_threshold ? (float)h->m.threshold : 0.0f;
    if (has_threshold) *has_threshold = h->m.has_threshold;
    MUTEX_UNLOCK(&h->lock);
    return EDGEAD_OK;
}

/* *out = a * b; 1 when that overflows size_t. */
static int mul_overflow(size_t a, size_t b, size_t* out) {
    if (a != 0 && b > SIZE_MAX / a) return 1;
    *out = a * b;
    return 0;
}

static int ensure_buffers(edgead_handle* h, size_t images, int need_pad, int need_maps) {
    size_t pixels = (size_t)h->m.height * (size_t)h->m.width;
    size_t bytes = images * pixels * 3;
    if (h->staging_bytes < bytes) {
        uint8_t* p = (uint8_t*)realloc(h->staging, bytes);
        if (!p) return 0;
        h->staging = p;
        h->staging_bytes = bytes;
    }
    if (need_pad && !h->pad_scores) {
        size_t k = (size_t)h->min_batch;
        h->pad_scores = (float*)malloc(k * sizeof(float));
        if (!h->pad_scores) return 0;
    }
    if (need_pad && need_maps && !h->pad_maps) {
        h->pad_maps = (float*)malloc((size_t)h->min_batch * pixels * sizeof(float));
        if (!h->pad_maps) return 0;
    }
    return 1;
}

/* Runs images [0, n) in chunks; called with the mutex held and arguments checked. */
static edgead_status run_chunks(edgead_handle* h, const uint8_t* images, size_t n, size_t row_stride,
                                float* scores, float* maps) {
    const size_t rows = (size_t)h->m.height, row_bytes = (size_t)h->m.width * 3, pixels = rows * (size_t)h->m.width;
    const size_t image_bytes = rows * row_bytes, min_batch = (size_t)h->min_batch;
    const size_t step = h->max_batch ? (size_t)h->max_batch : n;
    char err[EDGEAD_ERR_LEN] = "";
    for (size_t first = 0; first < n; first += step) {
        size_t count = n - first < step ? n - first : step;
        size_t run = count < min_batch ? min_batch : count; /* pad a short chunk by repeating its last image */
        int packed = row_stride == row_bytes, padded = run != count;
        const uint8_t* src = images + first * rows * row_stride;
        const uint8_t* input = src;
        if (!packed || padded) {
            if (!ensure_buffers(h, run, padded, maps != NULL))
                return fail(h, EDGEAD_ERR_OUT_OF_MEMORY, "edgead_predict: out of memory for the input staging buffer");
            for (size_t i = 0; i < count; ++i)
                for (size_t r = 0; r < rows; ++r)
                    memcpy(h->staging + i * image_bytes + r * row_bytes, src + (i * rows + r) * row_stride, row_bytes);
            for (size_t i = count; i < run; ++i)
                memcpy(h->staging + i * image_bytes, h->staging + (count - 1) * image_bytes, image_bytes);
            input = h->staging;
        }
        float* out_scores = padded ? h->pad_scores : scores + first;
        float* out_maps = maps ? (padded ? h->pad_maps : maps + first * pixels) : NULL;
        edgead_status st = h->backend->infer(h->state, input, run, out_scores, out_maps, err);
        if (st != EDGEAD_OK) return fail(h, st, err[0] ? err : "the engine failed to run the batch");
        if (padded) {
            memcpy(scores + first, h->pad_scores, count * sizeof(float));
            if (maps) memcpy(maps + first * pixels, h->pad_maps, count * pixels * sizeof(float));
        }
    }
    return EDGEAD_OK;
}

edgead_status edgead_predict(edgead_handle* h, const uint8_t* images, size_t n, int height, int width,
                             size_t row_stride, float* scores, float* maps, size_t maps_capacity) {
    if (!h) return fail(NULL, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict: expected a handle, found NULL");
    MUTEX_LOCK(&h->lock);
    edgead_status st = EDGEAD_OK;
    const size_t row_bytes = (size_t)h->m.width * 3;
    if (!images) st = fail(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict: expected an image buffer, found NULL");
    else if (!scores) st = fail(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict: expected a scores buffer, found NULL");
    else if (n == 0) st = fail(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict: expected at least one image, found n = 0");
    else if (height != h->m.height || width != h->m.width)
        st = failf(h, EDGEAD_ERR_SHAPE_MISMATCH, "edgead_predict: expected images of %dx%d (the artifact's input "
                   "size), found %dx%d; resize/crop frames before calling", h->m.height, h->m.width, height, width);
    else {
        if (row_stride == 0) row_stride = row_bytes;
        const size_t rows = (size_t)h->m.height, pixels = rows * (size_t)h->m.width;
        size_t extent = 0, map_floats = 0, map_bytes = 0;
        /* Every product the core later forms from n, row_stride and the image size, checked once here; the
         * old guard divided by height * row_stride, which itself overflowed for a huge row_stride. */
        int overflow = mul_overflow(rows, row_stride, &extent) || mul_overflow(extent, n, &extent) ||
                       mul_overflow(pixels, n, &map_floats) || mul_overflow(map_floats, sizeof(float), &map_bytes) ||
                       mul_overflow(map_floats, 3, &map_bytes);
        if (row_stride < row_bytes)
            st = failf(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict: expected a row stride of at least %zu bytes "
                       "(width x 3), found %zu", row_bytes, row_stride);
        else if (overflow)
            st = failf(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict: n = %zu images of row stride %zu bytes "
                       "overflow the address space", n, row_stride);
        else if (maps && maps_capacity < map_floats)
            st = failf(h, EDGEAD_ERR_BUFFER_TOO_SMALL, "edgead_predict: expected a maps buffer of at least %zu floats "
                       "(%zu x %d x %d), found capacity %zu", map_floats, n, h->m.height, h->m.width, maps_capacity);
        else
            st = run_chunks(h, images, n, row_stride, scores, maps);
    }
    MUTEX_UNLOCK(&h->lock);
    return st;
}

edgead_status edgead_tiling_info(edgead_handle* h, int* has_tiling, int* tile_height, int* tile_width,
                                 int* overlap) {
    if (!h) return fail(NULL, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_tiling_info: expected a handle, found NULL");
    if (has_tiling) *has_tiling = h->m.has_tiling;
    if (tile_height) *tile_height = h->m.has_tiling ? h->m.height : 0;
    if (tile_width) *tile_width = h->m.has_tiling ? h->m.width : 0;
    if (overlap) *overlap = h->m.has_tiling ? h->m.tile_overlap : 0;
    return EDGEAD_OK;
}

/* The buffers of one tiled frame; freed together by frame_free. */
typedef struct frame_work {
    int *ys, *xs;
    double *wy, *wx, *acc;
    uint8_t* tiles;
    float *tile_scores, *tile_maps, *own_map;
} frame_work;

static void frame_free(frame_work* f) {
    free(f->ys);
    free(f->xs);
    free(f->wy);
    free(f->wx);
    free(f->acc);
    free(f->tiles);
    free(f->tile_scores);
    free(f->tile_maps);
    free(f->own_map);
}

/* Cut, run and stitch one frame (edgead.runtimes.tiling); called with the mutex held and arguments checked. */
static edgead_status run_frame(edgead_handle* h, const uint8_t* frame, int height, int width, size_t row_stride,
                               float* score, float* map) {
    const int th = h->m.height, tw = h->m.width, ov = h->m.tile_overlap;
    const int ny = edgead_tile_origins(height, th, ov, NULL), nx = edgead_tile_origins(width, tw, ov, NULL);
    const size_t tile_px = (size_t)th * (size_t)tw, frame_px = (size_t)height * (size_t)width;
    const size_t group = h->max_batch ? (size_t)h->max_batch : 8; /* tiles per engine call: Runner TILE_BATCH */
    frame_work f = {0};
    f.ys = (int*)malloc((size_t)ny * sizeof(int));
    f.xs = (int*)malloc((size_t)nx * sizeof(int));
    f.wy = (double*)malloc((size_t)ny * (size_t)th * sizeof(double));
    f.wx = (double*)malloc((size_t)nx * (size_t)tw * sizeof(double));
    f.acc = (double*)calloc(frame_px, sizeof(double));
    f.tiles = (uint8_t*)malloc(group * tile_px * 3);
    f.tile_scores = (float*)malloc(group * sizeof(float));
    f.tile_maps = (float*)malloc(group * tile_px * sizeof(float));
    if (!map) map = f.own_map = (float*)malloc(frame_px * sizeof(float));
    if (!f.ys || !f.xs || !f.wy || !f.wx || !f.acc || !f.tiles || !f.tile_scores || !f.tile_maps || !map) {
        frame_free(&f);
        return fail(h, EDGEAD_ERR_OUT_OF_MEMORY, "edgead_predict_frame: out of memory for the frame's tiles");
    }
    edgead_tile_origins(height, th, ov, f.ys);
    edgead_tile_origins(width, tw, ov, f.xs);
    if (!edgead_axis_weights(f.ys, ny, th, height, f.wy) || !edgead_axis_weights(f.xs, nx, tw, width, f.wx)) {
        frame_free(&f);
        return fail(h, EDGEAD_ERR_OUT_OF_MEMORY, "edgead_predict_frame: out of memory for the blend weights");
    }
    const size_t total = (size_t)ny * (size_t)nx;
    for (size_t first = 0; first < total; first += group) {
        const size_t count = total - first < group ? total - first : group;
        for (size_t k = 0; k < count; ++k) { /* cut: row-major tile order, as edgead.runtimes.tiling.cut */
            const size_t y = (size_t)f.ys[(first + k) / nx], x = (size_t)f.xs[(first + k) % nx];
            for (int r = 0; r < th; ++r)
                memcpy(f.tiles + (k * th + r) * (size_t)tw * 3, frame + (y + r) * row_stride + x * 3, (size_t)tw * 3);
        }
        edgead_status st = run_chunks(h, f.tiles, count, (size_t)tw * 3, f.tile_scores, f.tile_maps);
        if (st != EDGEAD_OK) {
            frame_free(&f);
            return st;
        }
        for (size_t k = 0; k < count; ++k) { /* stitch: acc += (wy x wx) * tile map, in double */
            const size_t i = (first + k) / nx, j = (first + k) % nx;
            const double *wy = f.wy + i * th, *wx = f.wx + j * tw;
            const float* tm = f.tile_maps + k * tile_px;
            for (int r = 0; r < th; ++r) {
                double* row = f.acc + ((size_t)f.ys[i] + r) * width + f.xs[j];
                for (int c = 0; c < tw; ++c) row[c] += (wy[r] * wx[c]) * (double)tm[(size_t)r * tw + c];
            }
        }
    }
    for (size_t p = 0; p < frame_px; ++p) map[p] = (float)f.acc[p];
    *score = edgead_top_k_mean(map, frame_px, edgead_frame_top_k(height, width, h->m.score_fraction));
    frame_free(&f);
    return EDGEAD_OK;
}

edgead_status edgead_predict_frame(edgead_handle* h, const uint8_t* frame, int height, int width,
                                   size_t row_stride, float* score, float* map, size_t map_capacity) {
    if (!h) return fail(NULL, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict_frame: expected a handle, found NULL");
    MUTEX_LOCK(&h->lock);
    edgead_status st = EDGEAD_OK;
    size_t frame_px = 0, extent = 0;
    if (!frame) st = fail(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict_frame: expected a frame buffer, found NULL");
    else if (!score) st = fail(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict_frame: expected a score pointer, found NULL");
    else if (!h->m.has_tiling)
        st = fail(h, EDGEAD_ERR_UNSUPPORTED, "edgead_predict_frame: this artifact has no tiling plan; resize/crop "
                  "frames to its input size and call edgead_predict (or export it with edgead export --tile)");
    else if (height < h->m.height || width < h->m.width)
        st = failf(h, EDGEAD_ERR_SHAPE_MISMATCH, "edgead_predict_frame: expected a frame of at least one tile "
                   "(%dx%d), found %dx%d", h->m.height, h->m.width, height, width);
    else {
        if (row_stride == 0) row_stride = (size_t)width * 3;
        int overflow = mul_overflow((size_t)height, (size_t)width, &frame_px) ||
                       mul_overflow(frame_px, sizeof(double), &extent) ||
                       mul_overflow((size_t)height, row_stride, &extent);
        if (row_stride < (size_t)width * 3)
            st = failf(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict_frame: expected a row stride of at least %zu "
                       "bytes (width x 3), found %zu", (size_t)width * 3, row_stride);
        else if (overflow)
            st = failf(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict_frame: a %dx%d frame of row stride %zu "
                       "bytes overflows the address space", height, width, row_stride);
        else if (map && map_capacity < frame_px)
            st = failf(h, EDGEAD_ERR_BUFFER_TOO_SMALL, "edgead_predict_frame: expected a map buffer of at least %zu "
                       "floats (%d x %d), found capacity %zu", frame_px, height, width, map_capacity);
        else
            st = run_frame(h, frame, height, width, row_stride, score, map);
    }
    MUTEX_UNLOCK(&h->lock);
    return st;
}

const char* edgead_last_error(const edgead_handle* h) { return h ? h->error : tls_error; }

const char* edgead_describe(const edgead_handle* h) { return h ? h->desc : ""; }

void edgead_close(edgead_handle* h) {
    if (!h) return;
    h->backend->close(h->state);
    MUTEX_DESTROY(&h->lock);
    free(h->staging);
    free(h->pad_scores);
    free(h->pad_maps);
    free(h);
}
