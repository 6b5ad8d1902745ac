/*
 * edgead_openvino.c - the OpenVINO backend of libedgead, over OpenVINO's C API (libopenvino_c).
 *
 * Runs OpenVINO IR artifacts (engine "openvino") and FP32 ONNX exports (engine "onnxruntime"), as the Python
 * OpenVINORunner does: the inference precision is set explicitly from the manifest's extra.inference_precision
 * ("f32" when absent, since some CPUs otherwise default to bf16; an export root's tune decision replaces it with its
 * float rest's hint and may fix the batch axis, as the Python runner's precision_hint and static_batch do) with the
 * LATENCY performance hint (also where the decision chose throughput mode: one infer request per handle). The model is
 * read from memory (ov_core_read_model_from_memory_buffer): the bytes the core hashed, never the path again, so
 * a file swapped after the check is never compiled. One infer request per handle; the core serialises calls on a
 * handle, so the request is never used concurrently.
 */
#include "edgead_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openvino/c/openvino.h>

typedef struct {
    ov_core_t* core;
    ov_compiled_model_t* compiled;
    ov_infer_request_t* request;
    ov_output_const_port_t* scores_port;
    ov_output_const_port_t* maps_port;
    int64_t height, width;
    int static_batch; /* the input's batch dimension when it is fixed, else 0 */
    uint8_t* weights; /* an IR's weights: the model's constants may point into them, so they live as long */
} ov_state;

/* One line: OpenVINO's status name and its last error text (which it allocates; ov_free releases it). */
static void ov_error(char* err, ov_status_e status, const char* what) {
    const char* detail = ov_get_last_err_msg();
    edgead_format_error(err, "OpenVINO failed to %s: %s%s%.700s", what, ov_get_error_info(status),
                        detail && detail[0] ? ": " : "", detail ? detail : "");
    if (detail) ov_free(detail);
}

static int ov_accepts(const char* engine) {
    return strcmp(engine, "openvino") == 0 || strcmp(engine, "onnxruntime") == 0;
}

static void ov_close(void* state) {
    ov_state* s = (ov_state*)state;
    if (!s) return;
    if (s->scores_port) ov_output_const_port_free(s->scores_port);
    if (s->maps_port) ov_output_const_port_free(s->maps_port);
    if (s->request) ov_infer_request_free(s->request);
    if (s->compiled) ov_compiled_model_free(s->compiled);
    if (s->core) ov_core_free(s->core);
    free(s->weights);
    free(s);
}

/* The devices OpenVINO sees, comma separated, for a message about a device that failed. */
static void available_devices(const ov_core_t* core, char* out, size_t cap) {
    ov_available_devices_t devices = {NULL, 0};
    out[0] = '\0';
    if (ov_core_get_available_devices(core, &devices) != OK) return;
    size_t used = 0;
    for (size_t i = 0; i < devices.size && used + 1 < cap; ++i) {
        int w = snprintf(out + used, cap - used, "%s%s", i ? ", " : "", devices.devices[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
    ov_available_devices_free(&devices);
}

static ov_status_e compile(ov_state* s, const ov_model_t* model, const char* device, const char* precision,
                           int threads) {
    if (threads > 0) {
        char value[16];
        snprintf(value, sizeof value, "%d", threads);
        return ov_core_compile_model(s->core, model, device, 6, &s->compiled, ov_property_key_hint_inference_precision,
                                     precision, ov_property_key_hint_performance_mode, "LATENCY",
                                     ov_property_key_inference_num_threads, value);
    }
    return ov_core_compile_model(s->core, model, device, 4, &s->compiled, ov_property_key_hint_inference_precision,
                                 precision, ov_property_key_hint_performance_mode, "LATENCY");
}

/* The graph must take one uint8 (N, H, W, 3) input of the manifest's size. */
static edgead_status check_input(ov_state* s, const edgead_manifest* m, char* err) {
    size_t inputs = 0;
    ov_output_const_port_t* port = NULL;
    ov_element_type_e type = DYNAMIC;
    ov_partial_shape_t shape = {{0, 0}, NULL};
    ov_status_e st = ov_compiled_model_inputs_size(s->compiled, &inputs);
    if (st != OK) { ov_error(err, st, "list the model inputs"); return EDGEAD_ERR_BACKEND; }
    if (inputs != 1) {
        edgead_format_error(err, "expected a model with one input (images), found %zu inputs", inputs);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    if ((st = ov_compiled_model_input_by_index(s->compiled, 0, &port)) != OK ||
        (st = ov_port_get_element_type(port, &type)) != OK || (st = ov_port_get_partial_shape(port, &shape)) != OK) {
        if (port) ov_output_const_port_free(port);
        ov_error(err, st, "read the model input");
        return EDGEAD_ERR_BACKEND;
    }
    ov_output_const_port_free(port);
    edgead_status result = EDGEAD_OK;
    const int64_t want[3] = {m->height, m->width, 3};
    if (type != U8) {
        edgead_format_error(err, "expected a model input of uint8 images, found element type %d", (int)type);
        result = EDGEAD_ERR_CORRUPT_ARTIFACT;
    } else if (shape.rank.min != 4 || shape.rank.max != 4) {
        edgead_format_error(err, "expected a model input of rank 4 (N, H, W, 3), found rank %lld",
                            (long long)shape.rank.max);
        result = EDGEAD_ERR_CORRUPT_ARTIFACT;
    } else {
        if (shape.dims[0].min == shape.dims[0].max && shape.dims[0].min > 0 && shape.dims[0].min < (1 << 20))
            s->static_batch = (int)shape.dims[0].min;
        for (int i = 0; i < 3; ++i) {
            ov_dimension_t d = shape.dims[i + 1];
            if (d.min == d.max && d.min != want[i]) {
                edgead_format_error(err, "the model input is (N, %lld, %lld, %lld), but the manifest says %dx%dx3",
                                    (long long)shape.dims[1].max, (long long)shape.dims[2].max,
                                    (long long)shape.dims[3].max, m->height, m->width);
                result = EDGEAD_ERR_CORRUPT_ARTIFACT;
                break;
            }
        }
    }
    ov_partial_shape_free(&shape);
    return result;
}

/* The model from the checked bytes: an IR's XML with its weights as a tensor over them (kept in ``s``), or an ONNX
 * export (OpenVINO reads its weights from inside it; external data would be looked up by path and is refused). */
static ov_status_e read_model(ov_state* s, edgead_model_files* files, ov_model_t** model) {
    ov_tensor_t* weights = NULL;
    ov_shape_t shape = {0, NULL};
    int64_t dims[1] = {(int64_t)files->weights.size};
    ov_status_e st = OK;
    if (files->weights.size > 0) {
        s->weights = files->weights.data; /* taken from the core: freed in ov_close */
        files->weights.data = NULL;
        st = ov_shape_create(1, dims, &shape);
        if (st == OK) st = ov_tensor_create_from_host_ptr(U8, shape, s->weights, &weights);
    }
    if (st == OK)
        st = ov_core_read_model_from_memory_buffer(s->core, (const char*)files->model.data, files->model.size,
                                                   weights, model);
    if (weights) ov_tensor_free(weights);
    if (shape.dims) ov_shape_free(&shape);
    return st;
}

/* 1 when an ONNX model names external data: every external tensor holds the entry {key: "location"}, serialized
 * as field 1, length 8, "location". From memory OpenVINO would look such files up relative to the working folder,
 * outside the hash check; edgead's exports never write them (their weights are inside the model). */
static int onnx_external_data(const edgead_blob* model) {
    static const char needle[] = "\x0a\x08location";
    const size_t k = sizeof needle - 1;
    for (size_t i = 0; model->size >= k && i <= model->size - k; ++i)
        if (model->data[i] == 0x0a && memcmp(model->data + i, needle, k) == 0) return 1;
    return 0;
}

/* Fix the model's batch axis at ``batch`` (a tune decision's static batch), as the Python runner does with
 * model.reshape before compiling: (N, H, W, 3) becomes (batch, H, W, 3). A model of another rank is left as it is
 * for check_input to refuse. */
static ov_status_e fix_batch(ov_model_t* model, int batch) {
    ov_output_const_port_t* port = NULL;
    ov_partial_shape_t shape = {{0, 0}, NULL};
    ov_status_e st = ov_model_const_input(model, &port);
    if (st == OK) st = ov_port_get_partial_shape(port, &shape);
    if (st == OK && shape.rank.min == 4 && shape.rank.max == 4 && shape.dims) {
        shape.dims[0].min = shape.dims[0].max = batch;
        st = ov_model_reshape_single_input(model, shape);
    }
    if (shape.dims) ov_partial_shape_free(&shape);
    if (port) ov_output_const_port_free(port);
    return st;
}

static edgead_status ov_open(const edgead_manifest* m, const char* model_path, edgead_model_files* files,
                             const edgead_options* options, void** state, char* desc, char* err) {
    ov_state* s = (ov_state*)calloc(1, sizeof *s);
    ov_model_t* model = NULL;
    char* used = NULL;
    const char* device = options->device && options->device[0] ? options->device : "CPU";
    const char* precision = m->inference_precision[0] ? m->inference_precision : "f32";
    edgead_status result = EDGEAD_ERR_BACKEND;
    ov_status_e st;
    if (!s) { edgead_format_error(err, "out of memory"); return EDGEAD_ERR_OUT_OF_MEMORY; }
    s->height = m->height;
    s->width = m->width;
    if ((st = ov_core_create(&s->core)) != OK) { ov_error(err, st, "start (ov_core_create)"); goto fail; }
    size_t name_len = strlen(m->model);
    int ir = name_len > 4 && strcmp(m->model + name_len - 4, ".xml") == 0;
    if (!ir && onnx_external_data(&files->model)) {
        edgead_format_error(err, "expected an ONNX model with its weights inside (as edgead exports are), found one "
                            "that keeps them in other files (%s), which OpenVINO would read by path outside the hash "
                            "check; compile it to OpenVINO IR: edgead compile --engine openvino", model_path);
        result = EDGEAD_ERR_UNSUPPORTED;
        goto fail;
    }
    if ((st = read_model(s, files, &model)) != OK) {
        char what[EDGEAD_ERR_LEN];
        snprintf(what, sizeof what, "read the model %.600s", model_path);
        ov_error(err, st, what);
        result = EDGEAD_ERR_CORRUPT_ARTIFACT;
        goto fail;
    }
    if (m->fixed_batch > 0 && (st = fix_batch(model, m->fixed_batch)) != OK) {
        char what[EDGEAD_ERR_LEN];
        snprintf(what, sizeof what, "fix the batch axis of %.600s at %d (the tune decision's static batch)",
                 model_path, m->fixed_batch);
        ov_model_free(model);
        ov_error(err, st, what);
        goto fail;
    }
    st = compile(s, model, device, precision, options->num_threads);
    ov_model_free(model);
    if (st != OK) {
        char devices[256], what[EDGEAD_ERR_LEN];
        available_devices(s->core, devices, sizeof devices);
        snprintf(what, sizeof what, "compile the model for device '%.100s' (available: %s) with inference precision "
                 "%.16s", device, devices[0] ? devices : "none", precision);
        ov_error(err, st, what);
        goto fail;
    }
    if ((result = check_input(s, m, err)) != EDGEAD_OK) goto fail;
    result = EDGEAD_ERR_BACKEND;
    if (ov_compiled_model_output_by_name(s->compiled, "scores", &s->scores_port) != OK ||
        ov_compiled_model_output_by_name(s->compiled, "maps", &s->maps_port) != OK) {
        edgead_format_error(err, "expected model outputs named 'scores' and 'maps' in %s, found other names; "
                            "re-export it with edgead", model_path);
        result = EDGEAD_ERR_CORRUPT_ARTIFACT;
        goto fail;
    }
    if ((st = ov_compiled_model_create_infer_request(s->compiled, &s->request)) != OK) {
        ov_error(err, st, "create an infer request");
        goto fail;
    }
    if (ov_compiled_model_get_property(s->compiled, ov_property_key_hint_inference_precision, &used) != OK) used = NULL;
    snprintf(desc, EDGEAD_ERR_LEN, "openvino %s on %s (inference %s)", m->precision, device, used ? used : precision);
    if (used) ov_free(used);
    *state = s;
    return EDGEAD_OK;
fail:
    ov_close(s);
    return result;
}

/* Copy an f32 output tensor of ``count`` values into out (NULL: skip). */
static edgead_status copy_output(ov_state* s, const ov_output_const_port_t* port, const char* name, size_t count,
                                 float* out, char* err) {
    ov_tensor_t* t = NULL;
    ov_element_type_e type = DYNAMIC;
    size_t size = 0;
    void* data = NULL;
    ov_status_e st = ov_infer_request_get_tensor_by_const_port(s->request, port, &t);
    if (st == OK) st = ov_tensor_get_element_type(t, &type);
    if (st == OK) st = ov_tensor_get_size(t, &size);
    if (st == OK) st = ov_tensor_data(t, &data);
    edgead_status result = EDGEAD_OK;
    if (st != OK) {
        ov_error(err, st, "read an output tensor");
        result = EDGEAD_ERR_BACKEND;
    } else if (type != F32 || size != count) {
        edgead_format_error(err, "expected output '%s' of %zu float32 values, found %zu values of element type %d",
                            name, count, size, (int)type);
        result = EDGEAD_ERR_CORRUPT_ARTIFACT;
    } else if (out) {
        memcpy(out, data, count * sizeof(float));
    }
    if (t) ov_tensor_free(t);
    return result;
}

static edgead_status ov_infer(void* state, const uint8_t* images, size_t n, float* scores, float* maps, char* err) {
    ov_state* s = (ov_state*)state;
    int64_t dims[4] = {(int64_t)n, s->height, s->width, 3};
    ov_shape_t shape = {0, NULL};
    ov_tensor_t* input = NULL;
    edgead_status result = EDGEAD_ERR_BACKEND;
    ov_status_e st = ov_shape_create(4, dims, &shape);
    /* OpenVINO only reads the input tensor; the host pointer is the caller's and stays theirs. */
    if (st == OK) st = ov_tensor_create_from_host_ptr(U8, shape, (void*)images, &input);
    if (st == OK) st = ov_infer_request_set_input_tensor_by_index(s->request, 0, input);
    if (st != OK) {
        ov_error(err, st, "set the input tensor");
    } else if ((st = ov_infer_request_infer(s->request)) != OK) {
        ov_error(err, st, "run inference");
    } else {
        size_t pixels = (size_t)s->height * (size_t)s->width;
        result = copy_output(s, s->scores_port, "scores", n, scores, err);
        if (result == EDGEAD_OK) result = copy_output(s, s->maps_port, "maps", n * pixels, maps, err);
    }
    if (input) ov_tensor_free(input);
    if (shape.dims) ov_shape_free(&shape);
    return result;
}

static void ov_batch_range(void* state, int* min_batch, int* max_batch) {
    const ov_state* s = (const ov_state*)state;
    *min_batch = s->static_batch ? s->static_batch : 1;
    *max_batch = s->static_batch; /* 0: the IR has a dynamic batch */
}

const edgead_backend edgead_openvino_backend = {
    "openvino", ov_accepts, ov_open, ov_infer, ov_batch_range, ov_close,
};
