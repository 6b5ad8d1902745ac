/*
 * edgead_manifest.c - manifest.json for libedgead: parsing (the vendored cJSON, third_party/cjson), the field,
 * version and file-name checks, and the sha256 of every listed file.
 *
 * The rules match the Python reader (edgead/runtimes/manifest.py) so both accept and refuse the same folders:
 * strict UTF-8 JSON without duplicate keys or NaN/Infinity, at most 64 levels deep; plain file names only; each
 * listed file a regular file (opened with O_NOFOLLOW | O_NONBLOCK and checked with fstat, so a FIFO, a device or
 * a symlink to /dev/zero is refused instead of hashed forever); no unlisted file beside the manifest.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#  define _POSIX_C_SOURCE 200809L
#endif

#include "edgead_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "third_party/cjson/cJSON.h"

#ifdef _WIN32
#  include <io.h>
#  define O_NOFOLLOW 0
#  define O_NONBLOCK 0
#  define open _open
#  define close _close
#  define read _read
#  ifndef S_ISREG
#    define S_ISREG(mode) (((mode) & _S_IFMT) == _S_IFREG)
#  endif
#  ifndef S_ISDIR
#    define S_ISDIR(mode) (((mode) & _S_IFMT) == _S_IFDIR)
#  endif
#else
#  include <dirent.h>
#  include <unistd.h>
#endif

#define MANIFEST_NAME "manifest.json"

#define FAIL(code, ...) do { edgead_format_error(err, __VA_ARGS__); return (code); } while (0)
#define CORRUPT(...) FAIL(EDGEAD_ERR_CORRUPT_ARTIFACT, __VA_ARGS__)

/* ==== small helpers ===================================================================================== */

char* edgead_path_join(const char* dir, const char* name) {
    size_t a = strlen(dir), b = strlen(name);
    while (a > 1 && (dir[a - 1] == '/' || dir[a - 1] == '\\')) --a;
    char* p = (char*)malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

int edgead_safe_name(const char* name) {
    size_t n = strlen(name);
    if (n == 0 || n >= 256 || name[0] == '.') return 0;
    for (const unsigned char* c = (const unsigned char*)name; *c; ++c)
        if (*c < 32 || *c == 127 || *c == '/' || *c == '\\' || *c == ':') return 0;
    return 1;
}

/* (major, minor, patch) of a version string the way edgead.spec._version_tuple reads it. */
static void version_tuple(const char* v, long out[3]) {
    out[0] = out[1] = out[2] = 0;
    for (int part = 0; part < 3 && *v; ++part) {
        long value = 0;
        for (; *v && *v != '.'; ++v)
            if (*v >= '0' && *v <= '9' && value < 100000000) value = value * 10 + (*v - '0');
        out[part] = value;
        if (*v == '.') ++v;
    }
}

static int version_newer(const char* writer, const char* reader) {
    long a[3], b[3];
    version_tuple(writer, a);
    version_tuple(reader, b);
    for (int i = 0; i < 3; ++i)
        if (a[i] != b[i]) return a[i] > b[i];
    return 0;
}

static int copy_string(const cJSON* n, char* out, size_t cap) {
    if (!cJSON_IsString(n) || !n->valuestring || strlen(n->valuestring) >= cap) return 0;
    memcpy(out, n->valuestring, strlen(n->valuestring) + 1);
    return 1;
}

/* A JSON integer (no fraction, no exponent beyond an exact integer) within [lo, hi]. */
static int as_int(const cJSON* n, long lo, long hi, int* out) {
    if (!cJSON_IsNumber(n) || !isfinite(n->valuedouble) || n->valuedouble != floor(n->valuedouble) ||
        n->valuedouble < (double)lo || n->valuedouble > (double)hi)
        return 0;
    *out = (int)n->valuedouble;
    return 1;
}

static int is_hex64(const char* s) {
    size_t n = 0;
    for (; s[n]; ++n) {
        char c = s[n];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return 0;
    }
    return n == 64;
}

static int hex_equal(const char* a, const char* b) {
    for (; *a && *b; ++a, ++b) {
        char x = (*a >= 'A' && *a <= 'F') ? (char)(*a + 32) : *a, y = (*b >= 'A' && *b <= 'F') ? (char)(*b + 32) : *b;
        if (x != y) return 0;
    }
    return *a == *b;
}

/* Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), as Python's decoder demands. */
static int valid_utf8(const unsigned char* s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 9;
        if (k == 9 || (k && i + k >= n)) return 0;
        if (k == 0) { ++i; continue; }
        unsigned cp = c & (0x3Fu >> k);
        for (size_t j = 1; j <= k; ++j) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3Fu);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* 1 when some object in the tree repeats a key (Python's reader refuses those too: which one wins differs). */
static int has_duplicate_keys(const cJSON* node, int depth) {
    if (depth > 64) return 1;
    for (const cJSON* a = node ? node->child : NULL; a; a = a->next) {
        if (cJSON_IsObject(node))
            for (const cJSON* b = a->next; b; b = b->next)
                if (a->string && b->string && strcmp(a->string, b->string) == 0) return 1;
        if (has_duplicate_keys(a, depth + 1)) return 1;
    }
    return 0;
}

/* ==== fields ============================================================================================ */

static edgead_status manifest_fields(const cJSON* root, const char* where, edgead_manifest* m, char* err) {
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(root, "spec"), *v;
    memset(m, 0, sizeof *m);
    if (!cJSON_IsObject(root)) CORRUPT("%s is corrupt: expected a JSON object", where);
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "format")) && !as_int(v, 0, 1000000, &m->format))
        CORRUPT("%s is corrupt: expected an integer 'format'", where);
    if (m->format > EDGEAD_MANIFEST_FORMAT)
        FAIL(EDGEAD_ERR_UNSUPPORTED, "%s has manifest format %d, this libedgead %s reads format %d; upgrade libedgead",
             where, m->format, EDGEAD_VERSION_STRING, EDGEAD_MANIFEST_FORMAT);
    snprintf(m->edgead_version, sizeof m->edgead_version, "0");
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "edgead_version")) &&
        !copy_string(v, m->edgead_version, sizeof m->edgead_version))
        CORRUPT("%s is corrupt: expected a short string 'edgead_version'", where);
    if (!cJSON_IsObject(spec)) CORRUPT("%s is corrupt: field 'spec' is missing or not an object", where);
    int spec_format = 0;
    char spec_version[32] = "0";
    if ((v = cJSON_GetObjectItemCaseSensitive(spec, "format")) && !as_int(v, 0, 1000000, &spec_format))
        CORRUPT("%s is corrupt: expected an integer spec.format", where);
    if ((v = cJSON_GetObjectItemCaseSensitive(spec, "version")) && !copy_string(v, spec_version, sizeof spec_version))
        CORRUPT("%s is corrupt: expected a short string spec.version", where);
    if (spec_format > EDGEAD_SPEC_FORMAT || version_newer(spec_version, EDGEAD_VERSION_STRING) ||
        version_newer(m->edgead_version, EDGEAD_VERSION_STRING))
        FAIL(EDGEAD_ERR_UNSUPPORTED, "artifact was written by edgead %s (spec format %d); this is libedgead %s (spec "
             "format %d); upgrade libedgead to read it", m->edgead_version, spec_format, EDGEAD_VERSION_STRING,
             EDGEAD_SPEC_FORMAT);
    static const char* const required[] = {"engine", "precision", "model"};
    char* const targets[] = {m->engine, m->precision, m->model};
    const size_t caps[] = {sizeof m->engine, sizeof m->precision, sizeof m->model};
    for (int i = 0; i < 3; ++i)
        if (!copy_string(cJSON_GetObjectItemCaseSensitive(root, required[i]), targets[i], caps[i]))
            CORRUPT("%s is corrupt: field '%s' is missing or not a short string", where, required[i]);
    if (!edgead_safe_name(m->model))
        CORRUPT("%s is corrupt: expected a plain model file name, found '%.100s'", where, m->model);
    v = cJSON_GetObjectItemCaseSensitive(spec, "input_size");
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 || !as_int(cJSON_GetArrayItem(v, 0), 1, 1 << 16, &m->height) ||
        !as_int(cJSON_GetArrayItem(v, 1), 1, 1 << 16, &m->width))
        CORRUPT("%s is corrupt: expected spec.input_size as [height, width] of positive integers", where);
    v = cJSON_GetObjectItemCaseSensitive(spec, "threshold");
    if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && fabs(v->valuedouble) <= FLT_MAX) {
        m->has_threshold = 1;
        m->threshold = v->valuedouble;
    } else if (v && !cJSON_IsNull(v)) {
        /* NaN or infinity would label every score normal (NaN compares false): refuse it. */
        CORRUPT("%s is corrupt: expected spec.threshold to be a finite number or null", where);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(spec, "top_k")) && !as_int(v, 0, 1 << 30, &m->top_k))
        CORRUPT("%s is corrupt: expected an integer spec.top_k", where);
    m->score_fraction = 0.001;
    const cJSON* post = cJSON_GetObjectItemCaseSensitive(spec, "post");
    if (post && !cJSON_IsObject(post)) CORRUPT("%s is corrupt: expected spec.post to be an object", where);
    if ((v = cJSON_GetObjectItemCaseSensitive(post, "score_fraction")) != NULL) {
        if (!cJSON_IsNumber(v) || !(v->valuedouble > 0.0 && v->valuedouble <= 1.0))
            CORRUPT("%s is corrupt: expected spec.post.score_fraction in (0, 1]", where);
        m->score_fraction = v->valuedouble;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(spec, "tiling")) != NULL && !cJSON_IsNull(v)) {
        const cJSON* tile = cJSON_GetObjectItemCaseSensitive(v, "tile");
        const cJSON* blend = cJSON_GetObjectItemCaseSensitive(v, "blend");
        const cJSON* score = cJSON_GetObjectItemCaseSensitive(v, "score");
        int th = 0, tw = 0, overlap = 0;
        const cJSON* ov = cJSON_GetObjectItemCaseSensitive(v, "overlap");
        if (!cJSON_IsObject(v) || !cJSON_IsArray(tile) || cJSON_GetArraySize(tile) != 2 ||
            !as_int(cJSON_GetArrayItem(tile, 0), 1, 1 << 16, &th) || !as_int(cJSON_GetArrayItem(tile, 1), 1, 1 << 16, &tw) ||
            (ov && !as_int(ov, 0, 1 << 16, &overlap)))
            CORRUPT("%s is corrupt: expected spec.tiling as null or {tile: [h, w], overlap: integer, ...}", where);
        if (th != m->height || tw != m->width || 2 * overlap > (th < tw ? th : tw))
            CORRUPT("%s is corrupt: expected spec.tiling with tiles of the input size %dx%d and an overlap of at most "
                    "half a tile, found %dx%d overlap %d", where, m->height, m->width, th, tw, overlap);
        if ((blend && (!cJSON_IsString(blend) || strcmp(blend->valuestring, "linear") != 0)) ||
            (score && (!cJSON_IsString(score) || strcmp(score->valuestring, "topk_mean") != 0)))
            FAIL(EDGEAD_ERR_UNSUPPORTED, "%s has a tiling plan this libedgead %s does not run (it blends 'linear' and "
                 "scores 'topk_mean'); upgrade libedgead", where, EDGEAD_VERSION_STRING);
        for (const cJSON* k = v->child; k; k = k->next) /* the fields of edgead.spec.TilePlan, as Python reads */
            if (strcmp(k->string, "tile") && strcmp(k->string, "overlap") && strcmp(k->string, "blend") &&
                strcmp(k->string, "score"))
                CORRUPT("%s is corrupt: spec.tiling has an unknown field '%.60s'", where, k->string);
        const cJSON* post_score = cJSON_GetObjectItemCaseSensitive(post, "score");
        if (post_score && (!cJSON_IsString(post_score) || strcmp(post_score->valuestring, "topk_mean") != 0))
            CORRUPT("%s is corrupt: a tiling plan needs the top-k mean image score (spec.post.score)", where);
        m->has_tiling = 1;
        m->tile_overlap = overlap;
    }
    m->min_batch = 1;
    m->max_batch = 0;
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "batch")) != NULL) {
        const cJSON* hi = cJSON_GetArrayItem(v, 1);
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 ||
            !as_int(cJSON_GetArrayItem(v, 0), 1, 1 << 20, &m->min_batch) ||
            !(cJSON_IsNull(hi) || as_int(hi, 1, 1 << 20, &m->max_batch)) ||
            (m->max_batch && m->max_batch < m->min_batch))
            CORRUPT("%s is corrupt: expected 'batch' as [min, max or null] with 1 <= min <= max", where);
    }
    const cJSON* extra = cJSON_GetObjectItemCaseSensitive(root, "extra");
    if (extra && !cJSON_IsObject(extra)) CORRUPT("%s is corrupt: expected 'extra' to be an object", where);
    if ((v = cJSON_GetObjectItemCaseSensitive(extra, "inference_precision")) &&
        !copy_string(v, m->inference_precision, sizeof m->inference_precision))
        CORRUPT("%s is corrupt: expected a short string extra.inference_precision", where);
    /* optional: only a TensorRT engine needs them, and its backend refuses them missing */
    copy_string(cJSON_GetObjectItemCaseSensitive(extra, "tensorrt_version"), m->tensorrt_version,
                sizeof m->tensorrt_version);
    copy_string(cJSON_GetObjectItemCaseSensitive(extra, "gpu_name"), m->gpu_name, sizeof m->gpu_name);
    copy_string(cJSON_GetObjectItemCaseSensitive(extra, "compute_capability"), m->compute_capability,
                sizeof m->compute_capability);
    const cJSON* files = cJSON_GetObjectItemCaseSensitive(root, "files");
    if (!cJSON_IsObject(files)) CORRUPT("%s is corrupt: field 'files' is missing or not an object", where);
    int model_listed = 0;
    for (const cJSON* f = files->child; f; f = f->next) {
        if (!edgead_safe_name(f->string))
            CORRUPT("%s is corrupt: expected plain file names in 'files', found '%.100s'", where, f->string);
        if (!cJSON_IsString(f) || !is_hex64(f->valuestring))
            CORRUPT("%s is corrupt: expected a 64-digit sha256 for file '%s'", where, f->string);
        if (strcmp(f->string, m->model) == 0) model_listed = 1;
    }
    if (!model_listed) CORRUPT("%s does not list its model file %s", where, m->model);
    return EDGEAD_OK;
}

edgead_status edgead_parse_manifest(const char* text, size_t len, const char* where, edgead_manifest* m,
                                    void** json, char* err) {
    *json = NULL;
    if (len > EDGEAD_MANIFEST_MAX_BYTES)
        CORRUPT("%s is corrupt: expected a manifest of at most %u bytes", where, EDGEAD_MANIFEST_MAX_BYTES);
    if (!valid_utf8((const unsigned char*)text, len))
        CORRUPT("%s is corrupt: expected UTF-8 JSON, found invalid bytes", where);
    /* cJSON would cut a name at an escaped NUL ("a\u0000/.."), seeing a different name than Python does. */
    for (size_t i = 0; i + 6 <= len; ++i)
        if (text[i] == '\\' && text[i + 1] == 'u' && text[i + 2] == '0' && text[i + 3] == '0' && text[i + 4] == '0' &&
            text[i + 5] == '0')
            CORRUPT("%s is corrupt: expected no NUL characters in strings", where);
    /* The parse end / error position comes back through ``end``: cJSON_GetErrorPtr reads global state, which
     * is not thread safe (handles are opened from several threads). */
    const char* end = NULL;
    cJSON* root = text ? cJSON_ParseWithLengthOpts(text, len, &end, 0) : NULL;
    if (root) { /* only whitespace may follow the document */
        while (end < text + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) ++end;
        if (end != text + len) { cJSON_Delete(root); root = NULL; }
    }
    if (!root)
        CORRUPT("%s is corrupt: expected JSON, found unreadable text at byte %ld", where,
                text && end && end >= text && end <= text + len ? (long)(end - text) : -1L);
    if (has_duplicate_keys(root, 0)) {
        cJSON_Delete(root);
        CORRUPT("%s is corrupt: expected JSON, found a key that appears twice", where);
    }
    edgead_status st = manifest_fields(root, where, m, err);
    if (st != EDGEAD_OK) { cJSON_Delete(root); return st; }
    *json = root;
    return EDGEAD_OK;
}

void edgead_json_free(void* json) { cJSON_Delete((cJSON*)json); }

/* ==== files ============================================================================================= */

/* Append ``len`` bytes to a kept file, growing its buffer geometrically. */
static int blob_append(edgead_blob* b, size_t* cap, const uint8_t* data, size_t len) {
    if (b->size + len > *cap) {
        size_t want = *cap ? *cap : 1u << 20;
        while (want < b->size + len) want = want > SIZE_MAX / 2 ? b->size + len : want * 2;
        uint8_t* grown = (uint8_t*)realloc(b->data, want);
        if (!grown) return 0;
        b->data = grown;
        *cap = want;
    }
    memcpy(b->data + b->size, data, len);
    b->size += len;
    return 1;
}

/* sha256 of a regular file, refusing links, FIFOs and devices before reading a byte; with ``keep`` (NULL: not
 * kept), the bytes hashed are kept there too, so what an engine compiles is exactly what was checked. */
static edgead_status hash_regular(const char* path, char hex[65], edgead_blob* keep, char* err) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) FAIL(EDGEAD_ERR_NOT_FOUND, "artifact file %s listed in the manifest is missing", path);
        if (errno == ELOOP)
            CORRUPT("expected artifact file %s to be a regular file inside its folder, found a symbolic link", path);
        FAIL(EDGEAD_ERR_IO, "cannot read artifact file %s: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        CORRUPT("expected artifact file %s to be a regular file, found a FIFO, device or folder", path);
    }
    uint8_t* buf = (uint8_t*)malloc(1u << 20);
    size_t cap = 0;
    if (keep && buf && sb.st_size > 0 && (unsigned long long)sb.st_size < SIZE_MAX) { /* one allocation, usually */
        keep->data = (uint8_t*)malloc((size_t)sb.st_size);
        if (keep->data) cap = (size_t)sb.st_size;
    }
    if (!buf || (keep && sb.st_size > 0 && !keep->data)) {
        free(buf);
        close(fd);
        FAIL(EDGEAD_ERR_OUT_OF_MEMORY, "out of memory reading %s", path);
    }
    edgead_sha256_ctx c;
    edgead_sha256_init(&c);
    long got;
    int failed = 0;
    while ((got = (long)read(fd, buf, 1u << 20)) > 0) {
        edgead_sha256_update(&c, buf, (size_t)got);
        if (keep && !blob_append(keep, &cap, buf, (size_t)got)) { failed = 2; break; }
    }
    if (got < 0) failed = 1;
    free(buf);
    close(fd);
    if (failed) {
        if (keep) { free(keep->data); keep->data = NULL; keep->size = 0; }
        if (failed == 2) FAIL(EDGEAD_ERR_OUT_OF_MEMORY, "out of memory reading %s", path);
        FAIL(EDGEAD_ERR_IO, "cannot read artifact file %s: an I/O error occurred", path);
    }
    edgead_sha256_final_hex(&c, hex);
    return EDGEAD_OK;
}

void edgead_model_files_free(edgead_model_files* files) {
    if (!files) return;
    edgead_blob* blobs[2] = {&files->model, &files->weights};
    for (int i = 0; i < 2; ++i) {
        free(blobs[i]->data);
        blobs[i]->data = NULL;
        blobs[i]->size = 0;
    }
}

static edgead_status check_unlisted(const char* dir, const char* where, const cJSON* files, char* err) {
#ifndef _WIN32
    DIR* d = opendir(dir);
    if (!d) FAIL(EDGEAD_ERR_IO, "cannot list artifact folder %s: %s", dir, strerror(errno));
    struct dirent* e;
    edgead_status st = EDGEAD_OK;
    while (st == EDGEAD_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, MANIFEST_NAME) == 0 ||
            cJSON_GetObjectItemCaseSensitive(files, e->d_name))
            continue;
        char* p = edgead_path_join(dir, e->d_name);
        struct stat sb;
        if (p && lstat(p, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
            edgead_format_error(err, "%s does not list %s, found beside it; an unlisted file could be changed "
                                "undetected, so the artifact is refused (re-export or remove the file)", where,
                                e->d_name);
            st = EDGEAD_ERR_CORRUPT_ARTIFACT;
        }
        free(p);
    }
    closedir(d);
    return st;
#else
    (void)dir; (void)where; (void)files; (void)err;
    return EDGEAD_OK;
#endif
}

/* The blob of ``keep`` that ``name`` is to be kept in, or NULL. */
static edgead_blob* kept_as(edgead_model_files* keep, const char* name) {
    if (!keep) return NULL;
    if (keep->model.name[0] && strcmp(keep->model.name, name) == 0) return &keep->model;
    if (keep->weights.name[0] && strcmp(keep->weights.name, name) == 0) return &keep->weights;
    return NULL;
}

edgead_status edgead_verify_files(const char* dir, const char* where, const void* json, edgead_model_files* keep,
                                  char* err) {
    const cJSON* files = cJSON_GetObjectItemCaseSensitive((const cJSON*)json, "files");
    edgead_status st = EDGEAD_OK;
    for (const cJSON* f = files ? files->child : NULL; f && st == EDGEAD_OK; f = f->next) {
        if (!edgead_safe_name(f->string)) {  /* checked when parsed; kept here so no caller can skip it */
            edgead_format_error(err, "%s is corrupt: expected plain file names in 'files', found '%.100s'", where,
                                f->string);
            st = EDGEAD_ERR_CORRUPT_ARTIFACT;
            break;
        }
        char* p = edgead_path_join(dir, f->string);
        char hex[65];
        if (!p) { edgead_format_error(err, "out of memory"); st = EDGEAD_ERR_OUT_OF_MEMORY; break; }
        edgead_blob* blob = kept_as(keep, f->string);
        if (blob && blob->data) { /* listed twice is refused when parsed; never keep two reads in one blob */
            free(blob->data);
            blob->data = NULL;
            blob->size = 0;
        }
        st = hash_regular(p, hex, blob, err);
        if (st == EDGEAD_OK && !hex_equal(hex, f->valuestring)) {
            edgead_format_error(err, "artifact file %s was changed or is corrupt: its sha256 differs from the manifest",
                                p);
            st = EDGEAD_ERR_CORRUPT_ARTIFACT;
        }
        free(p);
    }
    if (st == EDGEAD_OK) st = check_unlisted(dir, where, files, err);
    if (st != EDGEAD_OK) edgead_model_files_free(keep);
    return st;
}

/* ==== the manifest of a folder ========================================================================== */

/* Read the manifest into a NUL-terminated malloc'd buffer (a regular file of bounded size). */
static edgead_status read_text(const char* path, char** text, size_t* len, char* err) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) return EDGEAD_ERR_NOT_FOUND;
        FAIL(EDGEAD_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        CORRUPT("expected %s to be a regular file, found a FIFO, device or folder", path);
    }
    if ((unsigned long long)sb.st_size > EDGEAD_MANIFEST_MAX_BYTES) {
        close(fd);
        CORRUPT("%s is corrupt: expected a manifest of at most %u bytes", path, EDGEAD_MANIFEST_MAX_BYTES);
    }
    size_t cap = (size_t)sb.st_size, n = 0;
    char* buf = (char*)malloc(cap + 1);
    if (!buf) { close(fd); FAIL(EDGEAD_ERR_OUT_OF_MEMORY, "out of memory reading %s", path); }
    long got = 0;
    while (n < cap && (got = (long)read(fd, buf + n, cap - n)) > 0) n += (size_t)got;
    close(fd);
    if (got < 0) { free(buf); FAIL(EDGEAD_ERR_IO, "cannot read %s: an I/O error occurred", path); }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return EDGEAD_OK;
}

/* Name the model and, for an OpenVINO IR (x.xml), its weights x.bin when listed, as the files to keep. */
static void name_model_files(const edgead_manifest* m, const void* json, edgead_model_files* files) {
    memset(files, 0, sizeof *files);
    snprintf(files->model.name, sizeof files->model.name, "%s", m->model);
    size_t n = strlen(m->model);
    if (n > 4 && strcmp(m->model + n - 4, ".xml") == 0) {
        snprintf(files->weights.name, sizeof files->weights.name, "%.*s.bin", (int)(n - 4), m->model);
        if (!cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive((const cJSON*)json, "files"),
                                              files->weights.name))
            files->weights.name[0] = '\0'; /* an IR without weights: OpenVINO gets an empty tensor, reads no file */
    }
}

edgead_status edgead_read_manifest(const char* dir, edgead_manifest* m, edgead_model_files* files, char* err) {
    if (files) memset(files, 0, sizeof *files); /* freeable whatever fails below */
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        FAIL(EDGEAD_ERR_NOT_FOUND, "expected an artifact folder, found no folder at %s", dir);
    char* mpath = edgead_path_join(dir, MANIFEST_NAME);
    if (!mpath) FAIL(EDGEAD_ERR_OUT_OF_MEMORY, "out of memory");
    char* text = NULL;
    size_t len = 0;
    void* json = NULL;
    edgead_status st = read_text(mpath, &text, &len, err);
    if (st == EDGEAD_ERR_NOT_FOUND)
        edgead_format_error(err, "expected %s in %s, found none; is it an edgead artifact folder?", MANIFEST_NAME, dir);
    if (st == EDGEAD_OK) st = edgead_parse_manifest(text, len, mpath, m, &json, err);
    if (st == EDGEAD_OK && files) name_model_files(m, json, files);
    if (st == EDGEAD_OK) st = edgead_verify_files(dir, mpath, json, files, err);
    edgead_json_free(json);
    free(text);
    free(mpath);
    return st;
}
