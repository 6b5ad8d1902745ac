/*
 * edgead_core.c - the engine-neutral part of libedgead: the public C functions of edgead.h, argument checks,
 * error messages, manifest.json (a small strict JSON reader, format checks, the sha256 of every listed file),
 * row-stride repacking and chunking of a batch into what the engine accepts. Engines plug in through
 * edgead_backend (edgead_internal.h).
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

#define MANIFEST_NAME "manifest.json"
#define MANIFEST_MAX_BYTES (16u << 20)
#define JSON_MAX_DEPTH 64

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

/* ==== SHA-256 (FIPS 180-4) =============================================================================== */

typedef struct {
    uint32_t h[8];
    uint64_t length; /* bytes hashed so far */
    uint8_t block[64];
    size_t fill;
} sha256_ctx;

static const uint32_t SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_init(sha256_ctx* c) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->length = 0;
    c->fill = 0;
}

static void sha256_compress(uint32_t h[8], const uint8_t p[64]) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; ++i) {
        uint32_t t1 = k + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

static void sha256_update(sha256_ctx* c, const uint8_t* data, size_t len) {
    c->length += len;
    if (c->fill) {
        size_t take = 64 - c->fill < len ? 64 - c->fill : len;
        memcpy(c->block + c->fill, data, take);
        c->fill += take; data += take; len -= take;
        if (c->fill < 64) return;
        sha256_compress(c->h, c->block);
        c->fill = 0;
    }
    for (; len >= 64; data += 64, len -= 64) sha256_compress(c->h, data);
    memcpy(c->block, data, len);
    c->fill = len;
}

static void sha256_final_hex(sha256_ctx* c, char hex[65]) {
    uint64_t bits = c->length * 8;
    uint8_t pad = 0x80;
    sha256_update(c, &pad, 1);
    pad = 0;
    while (c->fill != 56) sha256_update(c, &pad, 1);
    uint8_t len_be[8];
    for (int i = 0; i < 8; ++i) len_be[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, len_be, 8);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; ++i) {
        uint8_t byte = (uint8_t)(c->h[i / 4] >> (24 - 8 * (i % 4)));
        hex[2 * i] = digits[byte >> 4];
        hex[2 * i + 1] = digits[byte & 15];
    }
    hex[64] = '\0';
}

/* sha256 of a file as 64 lowercase hex digits: EDGEAD_OK, EDGEAD_ERR_NOT_FOUND or EDGEAD_ERR_IO. */
static edgead_status sha256_file(const char* path, char hex[65]) {
    FILE* f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? EDGEAD_ERR_NOT_FOUND : EDGEAD_ERR_IO;
    uint8_t* buf = (uint8_t*)malloc(1u << 20);
    if (!buf) { fclose(f); return EDGEAD_ERR_OUT_OF_MEMORY; }
    sha256_ctx c;
    sha256_init(&c);
    size_t got;
    while ((got = fread(buf, 1, 1u << 20, f)) > 0) sha256_update(&c, buf, got);
    int failed = ferror(f);
    free(buf);
    fclose(f);
    if (failed) return EDGEAD_ERR_IO;
    sha256_final_hex(&c, hex);
    return EDGEAD_OK;
}

/* ==== a small strict JSON reader (RFC 8259, plus NaN/Infinity as Python's json writes them) =============== */

typedef enum { J_NULL, J_BOOL, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT } jkind;

typedef struct jnode {
    jkind kind;
    int boolean;
    double number;
    int integral;        /* the number was written without fraction or exponent */
    char* str;           /* J_STRING: decoded UTF-8, NUL-terminated */
    struct jnode* items; /* J_ARRAY / J_OBJECT members */
    char** keys;         /* J_OBJECT keys */
    size_t count, cap;
} jnode;

typedef struct {
    const char* begin;
    const char* p;
    const char* end;
    int depth;
    int out_of_memory;
    char what[160]; /* the first syntax error */
} jparser;

static void json_free(jnode* n) {
    if (!n) return;
    free(n->str);
    for (size_t i = 0; i < n->count; ++i) {
        json_free(&n->items[i]);
        if (n->keys) free(n->keys[i]);
    }
    free(n->items);
    free(n->keys);
    memset(n, 0, sizeof *n);
}

static int json_fail(jparser* j, const char* what) {
    if (!j->what[0]) snprintf(j->what, sizeof j->what, "%s", what);
    return 0;
}

static void json_skip_ws(jparser* j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) ++j->p;
}

static int json_literal(jparser* j, const char* word) {
    size_t len = strlen(word);
    if ((size_t)(j->end - j->p) < len || memcmp(j->p, word, len) != 0) return 0;
    j->p += len;
    return 1;
}

static int hex4(const char* p, unsigned* out) {
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static size_t utf8_put(char* out, unsigned cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a string starting at the opening quote into a malloc'd UTF-8 copy. */
static int json_string(jparser* j, char** out) {
    ++j->p; /* opening quote */
    const char* q = j->p;
    while (q < j->end && *q != '"') q += (*q == '\\' && q + 1 < j->end) ? 2 : 1;
    if (q >= j->end) return json_fail(j, "found an unterminated string");
    /* decoded text is never longer than the escaped text */
    char* s = (char*)malloc((size_t)(q - j->p) + 1);
    if (!s) { j->out_of_memory = 1; return json_fail(j, "ran out of memory"); }
    size_t n = 0;
    while (j->p < q) {
        unsigned char c = (unsigned char)*j->p;
        if (c < 0x20) { free(s); return json_fail(j, "found a control character inside a string"); }
        if (c != '\\') { s[n++] = (char)c; ++j->p; continue; }
        char e = j->p[1];
        j->p += 2;
        switch (e) {
            case '"': s[n++] = '"'; break;
            case '\\': s[n++] = '\\'; break;
            case '/': s[n++] = '/'; break;
            case 'b': s[n++] = '\b'; break;
            case 'f': s[n++] = '\f'; break;
            case 'n': s[n++] = '\n'; break;
            case 'r': s[n++] = '\r'; break;
            case 't': s[n++] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (q - j->p < 4 || !hex4(j->p, &cp)) { free(s); return json_fail(j, "found a bad \\u escape"); }
                j->p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (q - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || !hex4(j->p + 2, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF) {
                        free(s);
                        return json_fail(j, "found an unpaired surrogate in a \\u escape");
                    }
                    j->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    free(s);
                    return json_fail(j, "found an unpaired surrogate in a \\u escape");
                }
                if (cp == 0) { free(s); return json_fail(j, "found a NUL character inside a string"); }
                n += utf8_put(s + n, cp);
                break;
            }
            default: free(s); return json_fail(j, "found an unknown escape in a string");
        }
    }
    s[n] = '\0';
    j->p = q + 1;
    *out = s;
    return 1;
}

/* 10^e as long double by repeated squaring (no libm, no locale). */
static long double pow10l_int(int e) {
    long double r = 1.0L, b = 10.0L;
    unsigned u = (unsigned)(e < 0 ? -e : e);
    for (; u; u >>= 1, b *= b)
        if (u & 1) r *= b;
    return e < 0 ? 1.0L / r : r;
}

/* JSON number grammar, converted without strtod (which follows the host program's LC_NUMERIC). */
static int json_number(jparser* j, jnode* out) {
    const char* p = j->p;
    int negative = 0, digits = 0, dropped = 0, exp10 = 0, integral = 1;
    uint64_t mant = 0;
    if (p < j->end && *p == '-') { negative = 1; ++p; }
    if (p < j->end && *p == 'I') {
        j->p = p;
        if (!json_literal(j, "Infinity")) return json_fail(j, "found a malformed number");
        out->kind = J_NUMBER; out->number = negative ? -HUGE_VAL : HUGE_VAL; out->integral = 0;
        return 1;
    }
    if (p >= j->end || *p < '0' || *p > '9') return json_fail(j, "found a malformed number");
    if (*p == '0' && p + 1 < j->end && p[1] >= '0' && p[1] <= '9') return json_fail(j, "found a number with a leading zero");
    for (; p < j->end && *p >= '0' && *p <= '9'; ++p, ++digits) {
        if (mant < 1000000000000000000ULL) mant = mant * 10 + (uint64_t)(*p - '0');
        else ++dropped;
    }
    if (p < j->end && *p == '.') {
        integral = 0;
        ++p;
        if (p >= j->end || *p < '0' || *p > '9') return json_fail(j, "found a malformed number");
        for (; p < j->end && *p >= '0' && *p <= '9'; ++p) {
            if (mant < 1000000000000000000ULL) { mant = mant * 10 + (uint64_t)(*p - '0'); --exp10; }
        }
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        integral = 0;
        int eneg = 0, e = 0;
        ++p;
        if (p < j->end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= j->end || *p < '0' || *p > '9') return json_fail(j, "found a malformed number exponent");
        for (; p < j->end && *p >= '0' && *p <= '9'; ++p)
            if (e < 100000) e = e * 10 + (*p - '0');
        exp10 += eneg ? -e : e;
    }
    exp10 += dropped;
    if (exp10 > 400) exp10 = 400;
    if (exp10 < -400) exp10 = -400;
    long double v = (long double)mant * pow10l_int(exp10);
    out->kind = J_NUMBER;
    out->number = (double)(negative ? -v : v);
    out->integral = integral && digits <= 18;
    j->p = p;
    return 1;
}

static int json_value(jparser* j, jnode* out);

static int json_push(jparser* j, jnode* parent, char* key) {
    if (parent->count == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 8;
        jnode* items = (jnode*)realloc(parent->items, cap * sizeof *items);
        if (!items) { free(key); j->out_of_memory = 1; return json_fail(j, "ran out of memory"); }
        parent->items = items;
        if (parent->kind == J_OBJECT) {
            char** keys = (char**)realloc(parent->keys, cap * sizeof *keys);
            if (!keys) { free(key); j->out_of_memory = 1; return json_fail(j, "ran out of memory"); }
            parent->keys = keys;
        }
        parent->cap = cap;
    }
    memset(&parent->items[parent->count], 0, sizeof(jnode));
    if (parent->kind == J_OBJECT) parent->keys[parent->count] = key;
    ++parent->count;
    return 1;
}

static int json_container(jparser* j, jnode* out, char close) {
    out->kind = close == '}' ? J_OBJECT : J_ARRAY;
    if (++j->depth > JSON_MAX_DEPTH) return json_fail(j, "found nesting deeper than 64 levels");
    ++j->p;
    json_skip_ws(j);
    if (j->p < j->end && *j->p == close) { ++j->p; --j->depth; return 1; }
    for (;;) {
        char* key = NULL;
        json_skip_ws(j);
        if (out->kind == J_OBJECT) {
            if (j->p >= j->end || *j->p != '"') return json_fail(j, "expected an object key (a string)");
            if (!json_string(j, &key)) return 0;
            json_skip_ws(j);
            if (j->p >= j->end || *j->p != ':') { free(key); return json_fail(j, "expected ':' after an object key"); }
            ++j->p;
        }
        if (!json_push(j, out, key)) return 0;
        if (!json_value(j, &out->items[out->count - 1])) return 0;
        json_skip_ws(j);
        if (j->p < j->end && *j->p == ',') { ++j->p; continue; }
        if (j->p < j->end && *j->p == close) { ++j->p; --j->depth; return 1; }
        return json_fail(j, close == '}' ? "expected ',' or '}' in an object" : "expected ',' or ']' in an array");
    }
}

static int json_value(jparser* j, jnode* out) {
    json_skip_ws(j);
    if (j->p >= j->end) return json_fail(j, "expected a value, found the end of the text");
    switch (*j->p) {
        case '{': return json_container(j, out, '}');
        case '[': return json_container(j, out, ']');
        case '"': out->kind = J_STRING; return json_string(j, &out->str);
        case 't': if (json_literal(j, "true")) { out->kind = J_BOOL; out->boolean = 1; return 1; } break;
        case 'f': if (json_literal(j, "false")) { out->kind = J_BOOL; out->boolean = 0; return 1; } break;
        case 'n': if (json_literal(j, "null")) { out->kind = J_NULL; return 1; } break;
        case 'N':
            if (json_literal(j, "NaN")) { out->kind = J_NUMBER; out->number = (double)NAN; return 1; }
            break;
        default:
            if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9')) return json_number(j, out);
    }
    return json_fail(j, "expected a JSON value");
}

/* Parse text[0:len] into *root. On failure *root is freed and msg says where. */
static edgead_status json_parse(const char* text, size_t len, jnode* root, char* msg, size_t msg_len) {
    jparser j;
    memset(&j, 0, sizeof j);
    memset(root, 0, sizeof *root);
    j.begin = j.p = text;
    j.end = text + len;
    int ok = json_value(&j, root);
    if (ok) {
        json_skip_ws(&j);
        if (j.p != j.end) ok = json_fail(&j, "expected the end of the text after the top-level value");
    }
    if (ok) return EDGEAD_OK;
    int line = 1, col = 1;
    for (const char* c = j.begin; c < j.p && c < j.end; ++c) {
        if (*c == '\n') { ++line; col = 1; } else ++col;
    }
    snprintf(msg, msg_len, "%s at line %d column %d", j.what, line, col);
    json_free(root);
    return j.out_of_memory ? EDGEAD_ERR_OUT_OF_MEMORY : EDGEAD_ERR_CORRUPT_ARTIFACT;
}

/* The member ``key`` of an object (the last one, as Python's json keeps), or NULL. */
static const jnode* json_get(const jnode* obj, const char* key) {
    if (!obj || obj->kind != J_OBJECT) return NULL;
    for (size_t i = obj->count; i-- > 0;)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

/* ==== manifest.json ====================================================================================== */

static char* path_join(const char* dir, const char* name) {
    size_t a = strlen(dir), b = strlen(name);
    while (a > 1 && (dir[a - 1] == '/' || dir[a - 1] == '\\')) --a;
    char* p = (char*)malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
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

static int copy_string(const jnode* n, char* out, size_t cap) {
    if (!n || n->kind != J_STRING || strlen(n->str) >= cap) return 0;
    memcpy(out, n->str, strlen(n->str) + 1);
    return 1;
}

static int as_int(const jnode* n, long lo, long hi, int* out) {
    if (!n || n->kind != J_NUMBER || !n->integral || n->number < (double)lo || n->number > (double)hi) return 0;
    *out = (int)n->number;
    return 1;
}

/* A listed file name must name a file directly inside the folder. */
static int safe_name(const char* name) {
    return name[0] && name[0] != '.' && !strchr(name, '/') && !strchr(name, '\\') && !strchr(name, ':');
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

/* Read the whole file into a NUL-terminated malloc'd buffer. */
static edgead_status read_text(const char* path, char** text, size_t* len, char* err) {
    FILE* f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return EDGEAD_ERR_NOT_FOUND;
        edgead_format_error(err, "cannot read %s: %s", path, strerror(errno));
        return EDGEAD_ERR_IO;
    }
    size_t cap = 64 * 1024, n = 0;
    char* buf = (char*)malloc(cap + 1);
    edgead_status st = EDGEAD_OK;
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
        if (n == cap) {
            if (cap >= MANIFEST_MAX_BYTES) {
                edgead_format_error(err, "%s is corrupt: expected a manifest of at most %u bytes, found a larger file",
                                    path, MANIFEST_MAX_BYTES);
                st = EDGEAD_ERR_CORRUPT_ARTIFACT;
                break;
            }
            char* bigger = (char*)realloc(buf, cap * 2 + 1);
            if (!bigger) { free(buf); buf = NULL; break; }
            buf = bigger;
            cap *= 2;
        }
    }
    int failed = ferror(f);
    fclose(f);
    if (!buf) {
        edgead_format_error(err, "out of memory reading %s", path);
        return EDGEAD_ERR_OUT_OF_MEMORY;
    }
    if (st == EDGEAD_OK && failed) {
        edgead_format_error(err, "cannot read %s: an I/O error occurred", path);
        st = EDGEAD_ERR_IO;
    }
    if (st != EDGEAD_OK) { free(buf); return st; }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return EDGEAD_OK;
}

static edgead_status verify_files(const char* dir, const char* mpath, const jnode* files, const char* model,
                                  char* err) {
    int model_listed = 0;
    for (size_t i = 0; i < files->count; ++i) {
        const char* name = files->keys[i];
        const jnode* digest = &files->items[i];
        if (!safe_name(name)) {
            edgead_format_error(err, "%s is corrupt: expected plain file names in 'files', found '%s'", mpath, name);
            return EDGEAD_ERR_CORRUPT_ARTIFACT;
        }
        if (digest->kind != J_STRING || !is_hex64(digest->str)) {
            edgead_format_error(err, "%s is corrupt: expected a 64-digit sha256 for file '%s'", mpath, name);
            return EDGEAD_ERR_CORRUPT_ARTIFACT;
        }
        if (strcmp(name, model) == 0) model_listed = 1;
    }
    if (!model_listed) {
        edgead_format_error(err, "%s does not list its model file %s", mpath, model);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    for (size_t i = 0; i < files->count; ++i) {
        char* p = path_join(dir, files->keys[i]);
        char hex[65];
        if (!p) { edgead_format_error(err, "out of memory"); return EDGEAD_ERR_OUT_OF_MEMORY; }
        edgead_status st = sha256_file(p, hex);
        if (st == EDGEAD_ERR_NOT_FOUND)
            edgead_format_error(err, "artifact file %s listed in the manifest is missing", p);
        else if (st == EDGEAD_ERR_IO)
            edgead_format_error(err, "cannot read artifact file %s: %s", p, strerror(errno));
        else if (st == EDGEAD_ERR_OUT_OF_MEMORY)
            edgead_format_error(err, "out of memory hashing %s", p);
        else if (!hex_equal(hex, files->items[i].str)) {
            edgead_format_error(err, "artifact file %s was changed or is corrupt: its sha256 differs from the manifest",
                                p);
            st = EDGEAD_ERR_CORRUPT_ARTIFACT;
        }
        free(p);
        if (st != EDGEAD_OK) return st;
    }
    return EDGEAD_OK;
}

/* Check the manifest's fields (the parsed root object) and fill *m. */
static edgead_status manifest_fields(const jnode* root, const char* mpath, edgead_manifest* m, char* err) {
    const jnode *spec = json_get(root, "spec"), *v;
    memset(m, 0, sizeof *m);
    if (root->kind != J_OBJECT) {
        edgead_format_error(err, "%s is corrupt: expected a JSON object", mpath);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    v = json_get(root, "format");
    m->format = 0;
    if (v && !as_int(v, 0, 1000000, &m->format)) {
        edgead_format_error(err, "%s is corrupt: expected an integer 'format'", mpath);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    if (m->format > EDGEAD_MANIFEST_FORMAT) {
        edgead_format_error(err, "%s has manifest format %d, this libedgead %s reads format %d; upgrade libedgead",
                            mpath, m->format, EDGEAD_VERSION_STRING, EDGEAD_MANIFEST_FORMAT);
        return EDGEAD_ERR_UNSUPPORTED;
    }
    snprintf(m->edgead_version, sizeof m->edgead_version, "0");
    v = json_get(root, "edgead_version");
    if (v && !copy_string(v, m->edgead_version, sizeof m->edgead_version)) {
        edgead_format_error(err, "%s is corrupt: expected a string 'edgead_version'", mpath);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    if (!spec || spec->kind != J_OBJECT) {
        edgead_format_error(err, "%s is corrupt: field 'spec' is missing or not an object", mpath);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    int spec_format = 0;
    char spec_version[32] = "0";
    if ((v = json_get(spec, "format")) && !as_int(v, 0, 1000000, &spec_format)) spec_format = 1 << 30;
    if ((v = json_get(spec, "version")) && !copy_string(v, spec_version, sizeof spec_version))
        snprintf(spec_version, sizeof spec_version, "999999");
    if (spec_format > EDGEAD_SPEC_FORMAT || version_newer(spec_version, EDGEAD_VERSION_STRING) ||
        version_newer(m->edgead_version, EDGEAD_VERSION_STRING)) {
        edgead_format_error(err, "artifact was written by edgead %s (spec format %d); this is libedgead %s (spec "
                            "format %d); upgrade libedgead to read it", m->edgead_version, spec_format,
                            EDGEAD_VERSION_STRING, EDGEAD_SPEC_FORMAT);
        return EDGEAD_ERR_UNSUPPORTED;
    }
    static const char* const required[] = {"engine", "precision", "model"};
    char* const targets[] = {m->engine, m->precision, m->model};
    const size_t caps[] = {sizeof m->engine, sizeof m->precision, sizeof m->model};
    for (int i = 0; i < 3; ++i) {
        if (!copy_string(json_get(root, required[i]), targets[i], caps[i])) {
            edgead_format_error(err, "%s is corrupt: field '%s' is missing or not a short string", mpath, required[i]);
            return EDGEAD_ERR_CORRUPT_ARTIFACT;
        }
    }
    if (!safe_name(m->model)) {
        edgead_format_error(err, "%s is corrupt: expected a plain model file name, found '%s'", mpath, m->model);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    v = json_get(spec, "input_size");
    if (!v || v->kind != J_ARRAY || v->count != 2 || !as_int(&v->items[0], 1, 1 << 16, &m->height) ||
        !as_int(&v->items[1], 1, 1 << 16, &m->width)) {
        edgead_format_error(err, "%s is corrupt: expected spec.input_size as [height, width] of positive integers",
                            mpath);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    v = json_get(spec, "threshold");
    if (v && v->kind == J_NUMBER) {
        m->has_threshold = 1;
        m->threshold = v->number;
    } else if (v && v->kind != J_NULL) {
        edgead_format_error(err, "%s is corrupt: expected spec.threshold to be a number or null", mpath);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    if ((v = json_get(spec, "top_k")) && !as_int(v, 0, 1 << 30, &m->top_k)) {
        edgead_format_error(err, "%s is corrupt: expected an integer spec.top_k", mpath);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    m->min_batch = 1;
    m->max_batch = 0;
    if ((v = json_get(root, "batch")) != NULL) {
        if (v->kind != J_ARRAY || v->count != 2 || !as_int(&v->items[0], 1, 1 << 20, &m->min_batch) ||
            !(v->items[1].kind == J_NULL || as_int(&v->items[1], 1, 1 << 20, &m->max_batch)) ||
            (m->max_batch && m->max_batch < m->min_batch)) {
            edgead_format_error(err, "%s is corrupt: expected 'batch' as [min, max or null] with 1 <= min <= max",
                                mpath);
            return EDGEAD_ERR_CORRUPT_ARTIFACT;
        }
    }
    const jnode* extra = json_get(root, "extra");
    if (extra && extra->kind != J_OBJECT) {
        edgead_format_error(err, "%s is corrupt: expected 'extra' to be an object", mpath);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    if ((v = json_get(extra, "inference_precision")) &&
        !copy_string(v, m->inference_precision, sizeof m->inference_precision)) {
        edgead_format_error(err, "%s is corrupt: expected a short string extra.inference_precision", mpath);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    return EDGEAD_OK;
}

static edgead_status read_manifest(const char* dir, edgead_manifest* m, char* err) {
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        edgead_format_error(err, "expected an artifact folder, found no folder at %s", dir);
        return EDGEAD_ERR_NOT_FOUND;
    }
    char* mpath = path_join(dir, MANIFEST_NAME);
    if (!mpath) { edgead_format_error(err, "out of memory"); return EDGEAD_ERR_OUT_OF_MEMORY; }
    char* text = NULL;
    size_t len = 0;
    edgead_status st = read_text(mpath, &text, &len, err);
    if (st == EDGEAD_ERR_NOT_FOUND)
        edgead_format_error(err, "expected %s in %s, found none; is it an edgead artifact folder?", MANIFEST_NAME, dir);
    if (st == EDGEAD_OK) {
        jnode root;
        char where[256];
        st = json_parse(text, len, &root, where, sizeof where);
        if (st != EDGEAD_OK) {
            edgead_format_error(err, "%s is corrupt: %s", mpath, where);
        } else {
            st = manifest_fields(&root, mpath, m, err);
            const jnode* files = json_get(&root, "files");
            if (st == EDGEAD_OK && (!files || files->kind != J_OBJECT)) {
                edgead_format_error(err, "%s is corrupt: field 'files' is missing or not an object", mpath);
                st = EDGEAD_ERR_CORRUPT_ARTIFACT;
            }
            if (st == EDGEAD_OK) st = verify_files(dir, mpath, files, m->model, err);
            json_free(&root);
        }
    }
    free(text);
    free(mpath);
    return st;
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
    edgead_status st = read_manifest(artifact_dir, &m, err);
    if (st != EDGEAD_OK) return fail(NULL, st, err);
    const edgead_backend* backend = find_backend(m.engine);
    if (!backend) {
        int known = !strcmp(m.engine, "openvino") || !strcmp(m.engine, "onnxruntime") || !strcmp(m.engine, "tensorrt");
        return failf(NULL, EDGEAD_ERR_UNSUPPORTED,
                     known ? "%s holds a %s artifact, but this libedgead was built without that engine; rebuild "
                             "it with the engine's SDK installed (edgead build-c)"
                           : "%s holds an artifact for engine '%s', which libedgead does not run (it runs openvino, "
                             "onnxruntime exports through OpenVINO, and tensorrt)",
                     artifact_dir, m.engine);
    }
    edgead_handle* h = (edgead_handle*)calloc(1, sizeof *h);
    char* model_path = path_join(artifact_dir, m.model);
    if (!h || !model_path) {
        free(h);
        free(model_path);
        return fail(NULL, EDGEAD_ERR_OUT_OF_MEMORY, "edgead_open: out of memory");
    }
    h->backend = backend;
    h->m = m;
    char desc[EDGEAD_ERR_LEN] = "";
    st = backend->open(&m, model_path, &o, &h->state, desc, err);
    free(model_path);
    if (st != EDGEAD_OK) {
        free(h);
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
        return failf(NULL, EDGEAD_ERR_CORRUPT_ARTIFACT, "%s: the manifest's batch range [%d, %d] and the engine's "
                     "[%d, %d] do not overlap", artifact_dir, m.min_batch, m.max_batch, engine_min, engine_max);
    }
    snprintf(h->desc, sizeof h->desc, "%.500s from %.500s", desc, artifact_dir);
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
        size_t pixels = (size_t)h->m.height * (size_t)h->m.width;
        if (row_stride < row_bytes)
            st = failf(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict: expected a row stride of at least %zu bytes "
                       "(width x 3), found %zu", row_bytes, row_stride);
        else if (n > SIZE_MAX / 4 / pixels / 3 || n > SIZE_MAX / ((size_t)h->m.height * row_stride))
            st = failf(h, EDGEAD_ERR_INVALID_ARGUMENT, "edgead_predict: n = %zu images overflows the address space", n);
        else if (maps && maps_capacity < n * pixels)
            st = failf(h, EDGEAD_ERR_BUFFER_TOO_SMALL, "edgead_predict: expected a maps buffer of at least %zu floats "
                       "(%zu x %d x %d), found capacity %zu", n * pixels, n, h->m.height, h->m.width, maps_capacity);
        else
            st = run_chunks(h, images, n, row_stride, scores, maps);
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
