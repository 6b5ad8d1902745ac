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

/* Read and parse ``dir``/manifest.json, not yet its files: on EDGEAD_OK the caller releases *json
 * (edgead_json_free) and *mpath (free). */
static edgead_status parse_folder(const char* dir, edgead_manifest* m, void** json, char** mpath, char* err) {
    *json = NULL;
    *mpath = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        FAIL(EDGEAD_ERR_NOT_FOUND, "expected an artifact folder, found no folder at %s", dir);
    char* path = edgead_path_join(dir, MANIFEST_NAME);
    if (!path) FAIL(EDGEAD_ERR_OUT_OF_MEMORY, "out of memory");
    char* text = NULL;
    size_t len = 0;
    edgead_status st = read_text(path, &text, &len, err);
    if (st == EDGEAD_ERR_NOT_FOUND)
        edgead_format_error(err, "expected %s in %s, found none; is it an edgead artifact folder?", MANIFEST_NAME, dir);
    if (st == EDGEAD_OK) st = edgead_parse_manifest(text, len, path, m, json, err);
    free(text); /* cJSON keeps copies of the strings */
    if (st != EDGEAD_OK) {
        free(path);
        return st;
    }
    *mpath = path;
    return EDGEAD_OK;
}

/* Verify the files the parsed manifest of ``dir`` lists, keeping the model's (and weights') bytes in ``files``. */
static edgead_status verify_folder(const char* dir, const char* mpath, const edgead_manifest* m, const void* json,
                                   edgead_model_files* files, char* err) {
    if (files) name_model_files(m, json, files);
    return edgead_verify_files(dir, mpath, json, files, err);
}

edgead_status edgead_read_manifest(const char* dir, edgead_manifest* m, edgead_model_files* files, char* err) {
    if (files) memset(files, 0, sizeof *files); /* freeable whatever fails below */
    void* json = NULL;
    char* mpath = NULL;
    edgead_status st = parse_folder(dir, m, &json, &mpath, err);
    if (st == EDGEAD_OK) st = verify_folder(dir, mpath, m, json, files, err);
    edgead_json_free(json);
    free(mpath);
    return st;
}

/* ==== an export root's tune decision ===================================================================== */

/* The facts of the precision table (edgead/precisions.py) a decision's float rest needs: every spelling
 * precisions.find matches (name, aliases, executed name, engine type names; trimmed, case-insensitive) and the
 * OpenVINO INFERENCE_PRECISION_HINT the rest runs with ("": none). tests/test_c_api.py checks it against the table. */
static const struct {
    const char* name;
    const char* spellings; /* space separated */
    const char* openvino_hint;
} PRECISION_TABLE[] = {
    {"fp32", "fp32 float32 f32", "f32"},
    {"fp16", "fp16 float16 half f16", ""},
    {"bf16", "bf16 bfloat16", "bf16"},
    {"int8", "int8 u8 i8 uint8_t int8_t", "f32"},
};
#define PRECISION_NAMES "fp32, fp16, bf16, int8"

/* The engine rows of edgead/registry.py a decision needs: the names (exact, as registry.find matches them), which
 * artifacts each engine runs, and which runner options it takes (runner_options: mode, static_batch, the hint). */
static const struct {
    const char* name;
    const char* aliases;
    const char* runs; /* manifest engines, space separated */
    int modes, static_batch, rest_hint;
} ENGINE_TABLE[] = {
    {"onnxruntime", "ort", "onnxruntime", 0, 1, 0},
    {"openvino", "ov", "openvino onnxruntime", 1, 1, 1},
    {"trt", "tensorrt", "tensorrt", 0, 0, 0},
    {"torch", "", "torch", 0, 0, 0},
};
#define ENGINE_NAMES "onnxruntime, openvino, trt, torch"
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* 1 when ``word`` is one of the space-separated words of ``list``. */
static int in_words(const char* list, const char* word, size_t n) {
    for (const char* w = list; *w;) {
        size_t k = strcspn(w, " ");
        if (k == n && n > 0 && strncmp(w, word, n) == 0) return 1;
        w += k;
        while (*w == ' ') ++w;
    }
    return 0;
}

/* The PRECISION_TABLE row ``name`` spells (trimmed, ASCII case-insensitive), or -1. */
static int find_precision(const char* name) {
    char key[32];
    size_t n = 0;
    while (*name == ' ' || (*name >= '\t' && *name <= '\r')) ++name;
    for (; *name && n < sizeof key; ++name, ++n) key[n] = (*name >= 'A' && *name <= 'Z') ? (char)(*name + 32) : *name;
    if (*name) return -1; /* longer than any spelling */
    while (n > 0 && (key[n - 1] == ' ' || (key[n - 1] >= '\t' && key[n - 1] <= '\r'))) --n;
    for (size_t i = 0; i < COUNT(PRECISION_TABLE); ++i)
        if (in_words(PRECISION_TABLE[i].spellings, key, n)) return (int)i;
    return -1;
}

static int find_engine(const char* name) {
    for (size_t i = 0; i < COUNT(ENGINE_TABLE); ++i)
        if (strcmp(name, ENGINE_TABLE[i].name) == 0 || in_words(ENGINE_TABLE[i].aliases, name, strlen(name)))
            return (int)i;
    return -1;
}

static const char* json_type(const cJSON* v) {
    return cJSON_IsNumber(v) ? "number" : cJSON_IsBool(v) ? "boolean" : cJSON_IsNull(v) ? "null"
         : cJSON_IsArray(v) ? "list" : cJSON_IsObject(v) ? "object" : "string";
}

/* A value quoted for a one-line message: at most 100 bytes, control characters as '?'. */
static void printable(const char* s, char out[104]) {
    size_t n = 0;
    for (; s[n] && n < 100; ++n) out[n] = ((unsigned char)s[n] < 32 || s[n] == 127) ? '?' : s[n];
    out[n] = '\0';
}

edgead_status edgead_parse_tuned(const char* dir, const char* where, const void* json, edgead_tuned* t, char* err) {
    memset(t, 0, sizeof *t);
    snprintf(t->folder, sizeof t->folder, ".");
    const cJSON* extra = cJSON_GetObjectItemCaseSensitive((const cJSON*)json, "extra");
    const cJSON* decision = cJSON_IsObject(extra) ? cJSON_GetObjectItemCaseSensitive(extra, "tune") : NULL;
    const cJSON* chosen = cJSON_IsObject(decision) ? cJSON_GetObjectItemCaseSensitive(decision, "chosen") : NULL;
    if (!cJSON_IsObject(chosen)) return EDGEAD_OK; /* no decision: the folder as it is */
    int out_len = (int)strlen(dir);
    while (out_len > 1 && (dir[out_len - 1] == '/' || dir[out_len - 1] == '\\')) --out_len; /* OUT in messages */
    char shown[104];
    const cJSON* v;
    /* the engine: a name or alias of a registry row; anything else takes no runner options (and fails below when
     * the decision has something to follow, as load(folder, engine) fails in Python) */
    v = cJSON_GetObjectItemCaseSensitive(chosen, "engine");
    int engine = cJSON_IsString(v) ? find_engine(v->valuestring) : -1;
    int unknown_engine = v && !(cJSON_IsString(v) && (engine >= 0 || v->valuestring[0] == '\0'));
    if (engine >= 0) snprintf(t->engine, sizeof t->engine, "%s", ENGINE_TABLE[engine].name);
    /* the float rest: absent or null, else one of the precision table's spellings */
    int rest = -1;
    v = cJSON_GetObjectItemCaseSensitive(chosen, "rest");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v))
            CORRUPT("%s names a tuned float-rest precision that is a %s, not one of " PRECISION_NAMES "; run edgead "
                    "tune %.*s again", where, json_type(v), out_len, dir);
        if ((rest = find_precision(v->valuestring)) < 0) {
            printable(v->valuestring, shown);
            CORRUPT("%s names a tuned float-rest precision '%s' that is not one of " PRECISION_NAMES "; run edgead "
                    "tune %.*s again", where, shown, out_len, dir);
        }
        snprintf(t->rest, sizeof t->rest, "%s", PRECISION_TABLE[rest].name);
    }
    int options = 0; /* what runner_options would hold */
    if (engine >= 0 && ENGINE_TABLE[engine].rest_hint && rest >= 0 && PRECISION_TABLE[rest].openvino_hint[0]) {
        snprintf(t->hint, sizeof t->hint, "%s", PRECISION_TABLE[rest].openvino_hint);
        options = 1;
    }
    /* the static batch: a positive integer (anything else: none, as in Python); fixed where the engine fixes it */
    v = cJSON_GetObjectItemCaseSensitive(chosen, "static_batch");
    if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble) &&
        v->valuedouble > 0) {
        if (v->valuedouble > (double)(1 << 20))
            CORRUPT("%s names a tuned static batch of %.0f images, expected at most %d; run edgead tune %.*s again",
                    where, v->valuedouble, 1 << 20, out_len, dir);
        if (engine >= 0 && ENGINE_TABLE[engine].static_batch) {
            t->static_batch = (int)v->valuedouble;
            options = 1;
        }
    }
    /* the mode: any value but "" counts as chosen (Python reads str(mode)); only OpenVINO has modes */
    v = cJSON_GetObjectItemCaseSensitive(chosen, "mode");
    if (v && !(cJSON_IsString(v) && v->valuestring[0] == '\0') && engine >= 0 && ENGINE_TABLE[engine].modes) {
        t->throughput = cJSON_IsString(v) && strcmp(v->valuestring, "throughput") == 0;
        options = 1;
    }
    /* the setting's own threshold: a finite number (anything else: the artifact's own, as in Python) */
    v = cJSON_GetObjectItemCaseSensitive(chosen, "threshold");
    if (cJSON_IsNumber(v) && isfinite(v->valuedouble)) {
        t->has_threshold = 1;
        t->threshold = v->valuedouble;
        options = 1;
    }
    /* the hint the decision recorded must be the one its rest means (null or absent: none recorded) */
    v = cJSON_GetObjectItemCaseSensitive(chosen, "precision_hint");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && strcmp(v->valuestring, t->hint) == 0 && t->hint[0])) {
        char expected[32], rest_name[16];
        snprintf(expected, sizeof expected, t->hint[0] ? "'%s'" : "no hint", t->hint);
        snprintf(rest_name, sizeof rest_name, rest >= 0 ? "'%s'" : "none", t->rest);
        printable(cJSON_IsString(v) ? v->valuestring : "", shown);
        if (!cJSON_IsString(v))
            CORRUPT("%s names a tuned precision hint that is a %s, but its float rest %s on engine '%s' means %s; "
                    "run edgead tune %.*s again", where, json_type(v), rest_name, t->engine, expected, out_len, dir);
        CORRUPT("%s names the tuned precision hint '%s', but its float rest %s on engine '%s' means %s; run edgead "
                "tune %.*s again", where, shown, rest_name, t->engine, expected, out_len, dir);
    }
    /* the folder: "." (or absent) is the export itself */
    v = cJSON_GetObjectItemCaseSensitive(chosen, "folder");
    if (v && !cJSON_IsString(v))
        CORRUPT("%s names a tuned artifact that is a %s, not the name of a folder of %.*s; run edgead tune %.*s again",
                where, json_type(v), out_len, dir, out_len, dir);
    const char* rel = v && v->valuestring[0] ? v->valuestring : ".";
    if (strcmp(rel, ".") == 0 && !options) return EDGEAD_OK; /* the export itself, as exported */
    int plain = strlen(rel) < sizeof t->folder && strcmp(rel, "..") != 0;
    for (const unsigned char* c = (const unsigned char*)rel; plain && *c; ++c)
        if (*c < 32 || *c == 127 || *c == '/' || *c == '\\' || *c == ':') plain = 0;
    struct stat sb;
    char* path = plain ? edgead_path_join(dir, rel) : NULL;
    if (plain && !path) FAIL(EDGEAD_ERR_OUT_OF_MEMORY, "out of memory");
    int exists = path && stat(path, &sb) == 0;
    int is_dir = exists && S_ISDIR(sb.st_mode);
    free(path);
    if (!is_dir) {
        printable(rel, shown);
        FAIL(plain && !exists ? EDGEAD_ERR_NOT_FOUND : EDGEAD_ERR_CORRUPT_ARTIFACT, "%s names a tuned artifact '%s' "
             "that is not a folder of %.*s; run edgead tune %.*s again", where, shown, out_len, dir, out_len, dir);
    }
    if (unknown_engine) {
        printable(cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(chosen, "engine")) ? v->valuestring : "", shown);
        if (!cJSON_IsString(v))
            CORRUPT("%s names a tuned engine that is a %s, not one of " ENGINE_NAMES "; run edgead tune %.*s again",
                    where, json_type(v), out_len, dir);
        CORRUPT("%s names a tuned engine '%s' that is not one of " ENGINE_NAMES "; run edgead tune %.*s again", where,
                shown, out_len, dir);
    }
    snprintf(t->folder, sizeof t->folder, "%s", rel);
    t->follow = 1;
    return EDGEAD_OK;
}

edgead_status edgead_read_export(const char* dir, edgead_manifest* m, edgead_tuned* t, edgead_model_files* files,
                                 char** artifact_dir, char* err) {
    if (files) memset(files, 0, sizeof *files); /* freeable whatever fails below */
    memset(t, 0, sizeof *t);
    *artifact_dir = NULL;
    void* json = NULL;
    char* mpath = NULL;
    edgead_status st = parse_folder(dir, m, &json, &mpath, err);
    if (st == EDGEAD_OK) st = edgead_parse_tuned(dir, mpath, json, t, err);
    char* folder = NULL;
    if (st == EDGEAD_OK) {
        int chosen = t->follow && strcmp(t->folder, ".") != 0;
        folder = chosen ? edgead_path_join(dir, t->folder) : (char*)malloc(strlen(dir) + 1);
        if (!folder) {
            edgead_format_error(err, "out of memory");
            st = EDGEAD_ERR_OUT_OF_MEMORY;
        } else if (chosen) { /* the chosen artifact, with its own manifest and files checked */
            st = edgead_read_manifest(folder, m, files, err);
        } else { /* the folder itself */
            memcpy(folder, dir, strlen(dir) + 1);
            st = verify_folder(dir, mpath, m, json, files, err);
        }
    }
    if (st == EDGEAD_OK && t->follow && t->engine[0]) {
        int e = find_engine(t->engine);
        if (e < 0 || !in_words(ENGINE_TABLE[e].runs, m->engine, strlen(m->engine))) {
            edgead_format_error(err, "%s names engine '%s' for %s, but that engine does not run its %s artifact; run "
                                "edgead tune %s again", mpath, t->engine, folder, m->engine, dir);
            st = EDGEAD_ERR_CORRUPT_ARTIFACT;
        }
    }
    edgead_json_free(json);
    free(mpath);
    if (st != EDGEAD_OK) {
        free(folder);
        if (files) edgead_model_files_free(files);
        return st;
    }
    *artifact_dir = folder;
    return EDGEAD_OK;
}
