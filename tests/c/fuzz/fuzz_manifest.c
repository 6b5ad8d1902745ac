/*
 * fuzz_manifest.c - libFuzzer target for libedgead's manifest reader (edgead_manifest.c + cJSON).
 *
 * Each input is manifest.json text. It is parsed and checked; when accepted, the files it lists are verified in
 * a fixture folder that also holds the hostile entries of issue 10: a FIFO ("pipe"), a symlink to /dev/zero
 * ("zero") and a symlink out of the folder ("escape"). Hashing either of the first two used to hang forever;
 * libFuzzer's -timeout turns a hang into a reported crash. An accepted manifest's tune decision (extra.tune.chosen)
 * is read too, against the same folder, which holds one subfolder ("sub"). Oracles: the sanitizers, the timeout,
 * that an accepted manifest has a plain model name, a positive input size and a finite threshold, and that a
 * followed decision names "." or a plain existing folder, a finite threshold, a batch in range and a known hint.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "edgead_internal.h"

static char fixture[256];

static void put(const char* name, const char* text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", fixture, name);
    FILE* f = fopen(path, "wb");
    if (!f) abort();
    fputs(text, f);
    fclose(f);
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
    (void)argc; (void)argv;
    char outer[] = "/tmp/edgead-fuzz-XXXXXX";
    if (!mkdtemp(outer)) abort();
    snprintf(fixture, sizeof fixture, "%s/art", outer);
    mkdir(fixture, 0755);
    put("model.xml", "<net/>");
    put("model.bin", "weights");
    char path[512], outside[512];
    snprintf(outside, sizeof outside, "%s/outside", outer);
    FILE* f = fopen(outside, "wb");
    if (f) { fputs("weights", f); fclose(f); }
    snprintf(path, sizeof path, "%s/pipe", fixture);
    mkfifo(path, 0644);
    snprintf(path, sizeof path, "%s/zero", fixture);
    if (symlink("/dev/zero", path) != 0) abort();
    snprintf(path, sizeof path, "%s/escape", fixture);
    if (symlink("../outside", path) != 0) abort();
    snprintf(path, sizeof path, "%s/sub", fixture);
    mkdir(path, 0755);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char err[EDGEAD_ERR_LEN] = "";
    edgead_manifest m;
    void* json = NULL;
    if (edgead_parse_manifest((const char*)data, size, "fuzz/manifest.json", &m, &json, err) == EDGEAD_OK) {
        if (!edgead_safe_name(m.model) || m.height < 1 || m.width < 1 || (m.has_threshold && !isfinite(m.threshold)))
            abort();
        edgead_model_files keep;
        memset(&keep, 0, sizeof keep);
        snprintf(keep.model.name, sizeof keep.model.name, "%s", m.model);
        if (edgead_verify_files(fixture, "fuzz/manifest.json", json, &keep, err) == EDGEAD_OK) {
            unsigned sum = 0; /* the kept bytes are the whole file: ASan sees any wrong extent */
            for (size_t i = 0; i < keep.model.size; ++i) sum += keep.model.data[i];
            (void)sum;
        }
        edgead_model_files_free(&keep);
        edgead_tuned t;
        if (edgead_parse_tuned(fixture, "fuzz/manifest.json", json, &t, err) == EDGEAD_OK && t.follow) {
            if (strchr(t.folder, '/') || strchr(t.folder, '\\') || strcmp(t.folder, "..") == 0 || !t.folder[0] ||
                (t.has_threshold && !isfinite(t.threshold)) || t.static_batch < 0 || t.static_batch > (1 << 20) ||
                (t.hint[0] && strcmp(t.hint, "f32") != 0 && strcmp(t.hint, "bf16") != 0))
                abort();
        }
        edgead_json_free(json);
    }
    if (memchr(err, '\n', sizeof err)) abort(); /* messages stay on one line */
    return 0;
}
