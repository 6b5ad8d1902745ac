/*
 * edgead_tensorrt.cpp - the TensorRT 10 backend of libedgead (artifacts whose manifest engine is "tensorrt").
 *
 * Deserialises the engine with nvinfer1::IRuntime from the bytes the core read and hashed (never the file again),
 * checks its I/O tensors (uint8 "images" (N, H, W, 3), float32 "scores" (N) and "maps" (N, H, W)) and
 * optimisation profile 0, and runs each chunk with setInputShape / setTensorAddress / enqueueV3 on the handle's own
 * CUDA stream. Device buffers grow to the largest batch seen. Calls on a handle are serialised by the core, so one
 * execution context suffices.
 * No C++ exception leaves this file: every entry point catches and reports a status.
 */
#include "edgead_internal.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>

namespace {

constexpr const char* kImages = "images";
constexpr const char* kScores = "scores";
constexpr const char* kMaps = "maps";

/* Keeps TensorRT's last error so a failed call can say why. */
class Logger final : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity > Severity::kERROR || msg == nullptr) return;
        try {
            std::lock_guard<std::mutex> lock(mutex_);
            last_ = msg;
        } catch (...) {
            /* a message lost for lack of memory is not worth failing inference */
        }
    }
    std::string last() {
        std::lock_guard<std::mutex> lock(mutex_);
        return last_.empty() ? std::string("no message from TensorRT") : last_;
    }

private:
    std::mutex mutex_;
    std::string last_;
};

struct TrtState {
    Logger logger; /* declared first: destroyed after the runtime that logs into it */
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    cudaStream_t stream = nullptr;
    int device = 0;
    int64_t height = 0, width = 0;
    int min_batch = 1, max_batch = 0;
    void* d_images = nullptr;
    float* d_scores = nullptr;
    float* d_maps = nullptr;
    size_t capacity = 0; /* images the device buffers hold */

    ~TrtState() {
        cudaSetDevice(device);
        if (stream) cudaStreamSynchronize(stream);
        cudaFree(d_images);
        cudaFree(d_scores);
        cudaFree(d_maps);
        if (stream) cudaStreamDestroy(stream);
        context.reset();
        engine.reset();
        runtime.reset();
    }
};

bool cuda_ok(cudaError_t status, const char* what, char* err) {
    if (status == cudaSuccess) return true;
    edgead_format_error(err, "CUDA failed to %s: %s (%s)", what, cudaGetErrorString(status), cudaGetErrorName(status));
    return false;
}

/* "GPU", "GPU.1", "cuda", "cuda:1", "1" or NULL -> a CUDA device index; -1 when it is none of those. */
int parse_device(const char* device) {
    if (device == nullptr || device[0] == '\0' || !std::strcmp(device, "GPU") || !std::strcmp(device, "cuda")) return 0;
    const char* digits = device;
    if (!std::strncmp(device, "GPU.", 4)) digits = device + 4;
    else if (!std::strncmp(device, "cuda:", 5)) digits = device + 5;
    if (*digits == '\0') return -1;
    int index = 0;
    for (const char* c = digits; *c; ++c) {
        if (*c < '0' || *c > '9' || index > 1000) return -1;
        index = index * 10 + (*c - '0');
    }
    return index;
}

int64_t volume(const nvinfer1::Dims& d) {
    int64_t v = 1;
    for (int i = 0; i < d.nbDims; ++i) v *= d.d[i];
    return d.nbDims > 0 ? v : 0;
}

/* Checks name, direction and element type of one I/O tensor. */
bool check_tensor(const nvinfer1::ICudaEngine& engine, const char* name, nvinfer1::TensorIOMode mode,
                  nvinfer1::DataType type, const char* what, char* err) {
    for (int32_t i = 0; i < engine.getNbIOTensors(); ++i) {
        const char* n = engine.getIOTensorName(i);
        if (n == nullptr || std::strcmp(n, name) != 0) continue;
        if (engine.getTensorIOMode(name) != mode || engine.getTensorDataType(name) != type) {
            edgead_format_error(err, "expected the engine tensor '%s' to be %s, found another direction or type", name,
                                what);
            return false;
        }
        return true;
    }
    edgead_format_error(err, "expected an engine tensor named '%s' (%s), found none; rebuild the engine with edgead",
                        name, what);
    return false;
}

/* "10.8.0.43" -> "10.8.0": the Python bindings report a fourth (build) component the C library does not. */
std::string three_parts(const std::string& v) {
    size_t dots = 0, i = 0;
    for (; i < v.size(); ++i)
        if (v[i] == '.' && ++dots == 3) break;
    return v.substr(0, i);
}

/* Refuse, before TensorRT tries to deserialise it, an engine whose manifest names another TensorRT version, GPU
 * model or compute capability than this machine's (what the Python runner checks too). */
edgead_status check_build_facts(const edgead_manifest& m, const char* model_path, int device, char* err) {
    /* from the manifest the core parsed and verified, not read again from disk */
    std::string built_trt = m.tensorrt_version, built_gpu = m.gpu_name, built_cc = m.compute_capability;
    if (built_trt.empty() || built_gpu.empty() || built_cc.empty()) {
        edgead_format_error(err, "expected tensorrt_version, gpu_name and compute_capability in the manifest of %s, "
                            "found them missing; rebuild the engine with edgead compile --engine trt", model_path);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    int v = getInferLibVersion();  /* major * 10000 + minor * 100 + patch */
    char here_trt[32], here_cc[16];
    std::snprintf(here_trt, sizeof here_trt, "%d.%d.%d", v / 10000, (v / 100) % 100, v % 100);
    cudaDeviceProp props;
    if (!cuda_ok(cudaGetDeviceProperties(&props, device), "read the GPU's properties", err)) return EDGEAD_ERR_BACKEND;
    std::snprintf(here_cc, sizeof here_cc, "%d.%d", props.major, props.minor);
    if (three_parts(built_trt) != here_trt || built_gpu != props.name || built_cc != here_cc) {
        edgead_format_error(err, "expected an engine built with TensorRT %s for %s (compute %s), found one built with "
                            "TensorRT %s for %s (compute %s); an engine runs only where it was built; rebuild it here "
                            "with edgead compile --engine trt", here_trt, props.name, here_cc, built_trt.c_str(),
                            built_gpu.c_str(), built_cc.c_str());
        return EDGEAD_ERR_UNSUPPORTED;
    }
    return EDGEAD_OK;
}

edgead_status check_engine(TrtState& s, const edgead_manifest& m, char* err) {
    const nvinfer1::ICudaEngine& e = *s.engine;
    if (!check_tensor(e, kImages, nvinfer1::TensorIOMode::kINPUT, nvinfer1::DataType::kUINT8, "a uint8 input", err) ||
        !check_tensor(e, kScores, nvinfer1::TensorIOMode::kOUTPUT, nvinfer1::DataType::kFLOAT, "a float32 output",
                      err) ||
        !check_tensor(e, kMaps, nvinfer1::TensorIOMode::kOUTPUT, nvinfer1::DataType::kFLOAT, "a float32 output", err))
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    nvinfer1::Dims in = e.getTensorShape(kImages);
    if (in.nbDims != 4 || (in.d[1] != -1 && in.d[1] != m.height) || (in.d[2] != -1 && in.d[2] != m.width) ||
        (in.d[3] != -1 && in.d[3] != 3)) {
        edgead_format_error(err, "expected the engine input (N, %d, %d, 3), found a rank-%d input of another size",
                            m.height, m.width, static_cast<int>(in.nbDims));
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    if (in.d[0] != -1) {
        s.min_batch = s.max_batch = static_cast<int>(in.d[0]);
    } else if (e.getNbOptimizationProfiles() > 0) {
        nvinfer1::Dims lo = e.getProfileShape(kImages, 0, nvinfer1::OptProfileSelector::kMIN);
        nvinfer1::Dims hi = e.getProfileShape(kImages, 0, nvinfer1::OptProfileSelector::kMAX);
        if (lo.nbDims == 4 && hi.nbDims == 4 && lo.d[0] >= 1 && hi.d[0] >= lo.d[0]) {
            s.min_batch = static_cast<int>(lo.d[0]);
            s.max_batch = static_cast<int>(hi.d[0]);
        }
    }
    return EDGEAD_OK;
}

bool ensure_capacity(TrtState& s, size_t n, char* err) {
    if (n <= s.capacity) return true;
    size_t pixels = static_cast<size_t>(s.height * s.width);
    cudaFree(s.d_images);
    cudaFree(s.d_scores);
    cudaFree(s.d_maps);
    s.d_images = nullptr;
    s.d_scores = s.d_maps = nullptr;
    s.capacity = 0;
    if (!cuda_ok(cudaMalloc(&s.d_images, n * pixels * 3), "allocate the input buffer", err) ||
        !cuda_ok(cudaMalloc(reinterpret_cast<void**>(&s.d_scores), n * sizeof(float)), "allocate the scores buffer",
                 err) ||
        !cuda_ok(cudaMalloc(reinterpret_cast<void**>(&s.d_maps), n * pixels * sizeof(float)),
                 "allocate the maps buffer", err))
        return false;
    s.capacity = n;
    return true;
}

int trt_accepts(const char* engine) { return std::strcmp(engine, "tensorrt") == 0; }

void trt_close(void* state) { delete static_cast<TrtState*>(state); }

edgead_status trt_open_impl(const edgead_manifest* m, const char* model_path, const edgead_model_files* files,
                            const edgead_options* options, void** state, char* desc, char* err) {
    int device = parse_device(options->device);
    int count = 0;
    if (device < 0) {
        edgead_format_error(err, "expected a TensorRT device like GPU, GPU.1 or cuda:1, found '%s'", options->device);
        return EDGEAD_ERR_UNSUPPORTED;
    }
    if (!cuda_ok(cudaGetDeviceCount(&count), "list the GPUs", err)) return EDGEAD_ERR_BACKEND;
    if (device >= count) {
        edgead_format_error(err, "expected a CUDA device index below %d, found %d", count, device);
        return EDGEAD_ERR_UNSUPPORTED;
    }
    if (!cuda_ok(cudaSetDevice(device), "select the GPU", err)) return EDGEAD_ERR_BACKEND;
    edgead_status st = check_build_facts(*m, model_path, device, err);
    if (st != EDGEAD_OK) return st;
    if (files->model.size == 0) {
        edgead_format_error(err, "the TensorRT engine %s is empty", model_path);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }

    std::unique_ptr<TrtState> s(new TrtState());
    s->device = device;
    s->height = m->height;
    s->width = m->width;
    s->runtime.reset(nvinfer1::createInferRuntime(s->logger));
    if (!s->runtime) {
        edgead_format_error(err, "TensorRT could not create a runtime: %s", s->logger.last().c_str());
        return EDGEAD_ERR_BACKEND;
    }
    /* the plan the core hashed, deserialised from memory: never the file read again */
    s->engine.reset(s->runtime->deserializeCudaEngine(files->model.data, files->model.size));
    if (!s->engine) {
        edgead_format_error(err, "TensorRT could not deserialise %s (built by another TensorRT version or for another "
                            "GPU?): %s", model_path, s->logger.last().c_str());
        return EDGEAD_ERR_BACKEND;
    }
    if ((st = check_engine(*s, *m, err)) != EDGEAD_OK) return st;
    s->context.reset(s->engine->createExecutionContext());
    if (!s->context) {
        edgead_format_error(err, "TensorRT could not create an execution context: %s", s->logger.last().c_str());
        return EDGEAD_ERR_BACKEND;
    }
    if (!cuda_ok(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "create a stream", err))
        return EDGEAD_ERR_BACKEND;
    size_t first = static_cast<size_t>(s->max_batch > 0 && s->max_batch <= 64 ? s->max_batch : s->min_batch);
    if (!ensure_capacity(*s, first, err)) return EDGEAD_ERR_OUT_OF_MEMORY;
    cudaDeviceProp props;
    const char* gpu = cudaGetDeviceProperties(&props, device) == cudaSuccess ? props.name : "unknown GPU";
    std::snprintf(desc, EDGEAD_ERR_LEN, "tensorrt %s on GPU %d (%s)", m->precision, device, gpu);
    *state = s.release();
    return EDGEAD_OK;
}

edgead_status trt_infer_impl(TrtState& s, const uint8_t* images, size_t n, float* scores, float* maps, char* err) {
    const size_t pixels = static_cast<size_t>(s.height * s.width);
    if (!cuda_ok(cudaSetDevice(s.device), "select the GPU", err)) return EDGEAD_ERR_BACKEND;
    if (!ensure_capacity(s, n, err)) return EDGEAD_ERR_OUT_OF_MEMORY;
    nvinfer1::IExecutionContext& ctx = *s.context;
    nvinfer1::Dims4 shape(static_cast<int64_t>(n), s.height, s.width, 3);
    if (!ctx.setInputShape(kImages, shape)) {
        edgead_format_error(err, "TensorRT refused a batch of %zu images (the engine takes %d to %d): %s", n,
                            s.min_batch, s.max_batch, s.logger.last().c_str());
        return EDGEAD_ERR_BACKEND;
    }
    if (volume(ctx.getTensorShape(kScores)) != static_cast<int64_t>(n) ||
        volume(ctx.getTensorShape(kMaps)) != static_cast<int64_t>(n * pixels)) {
        edgead_format_error(err, "expected engine outputs of %zu scores and %zu map values, found other shapes", n,
                            n * pixels);
        return EDGEAD_ERR_CORRUPT_ARTIFACT;
    }
    if (!ctx.setTensorAddress(kImages, s.d_images) || !ctx.setTensorAddress(kScores, s.d_scores) ||
        !ctx.setTensorAddress(kMaps, s.d_maps)) {
        edgead_format_error(err, "TensorRT refused the tensor addresses: %s", s.logger.last().c_str());
        return EDGEAD_ERR_BACKEND;
    }
    if (!cuda_ok(cudaMemcpyAsync(s.d_images, images, n * pixels * 3, cudaMemcpyHostToDevice, s.stream),
                 "copy the images to the GPU", err))
        return EDGEAD_ERR_BACKEND;
    if (!ctx.enqueueV3(s.stream)) {
        cudaStreamSynchronize(s.stream);
        edgead_format_error(err, "TensorRT failed to run the batch: %s", s.logger.last().c_str());
        return EDGEAD_ERR_BACKEND;
    }
    bool ok = cuda_ok(cudaMemcpyAsync(scores, s.d_scores, n * sizeof(float), cudaMemcpyDeviceToHost, s.stream),
                      "copy the scores back", err);
    if (ok && maps)
        ok = cuda_ok(cudaMemcpyAsync(maps, s.d_maps, n * pixels * sizeof(float), cudaMemcpyDeviceToHost, s.stream),
                     "copy the maps back", err);
    cudaError_t done = cudaStreamSynchronize(s.stream);
    if (ok) ok = cuda_ok(done, "finish the batch", err);
    return ok ? EDGEAD_OK : EDGEAD_ERR_BACKEND;
}

edgead_status trt_open(const edgead_manifest* m, const char* model_path, edgead_model_files* files,
                       const edgead_options* options, void** state, char* desc, char* err) {
    try {
        return trt_open_impl(m, model_path, files, options, state, desc, err);
    } catch (const std::bad_alloc&) {
        edgead_format_error(err, "out of memory opening the TensorRT engine %s", model_path);
        return EDGEAD_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        edgead_format_error(err, "TensorRT failed to open %s: %s", model_path, e.what());
    } catch (...) {
        edgead_format_error(err, "TensorRT failed to open %s with an unknown exception", model_path);
    }
    return EDGEAD_ERR_BACKEND;
}

edgead_status trt_infer(void* state, const uint8_t* images, size_t n, float* scores, float* maps, char* err) {
    try {
        return trt_infer_impl(*static_cast<TrtState*>(state), images, n, scores, maps, err);
    } catch (const std::bad_alloc&) {
        edgead_format_error(err, "out of memory running the TensorRT engine");
        return EDGEAD_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        edgead_format_error(err, "TensorRT failed to run the batch: %s", e.what());
    } catch (...) {
        edgead_format_error(err, "TensorRT failed to run the batch with an unknown exception");
    }
    return EDGEAD_ERR_BACKEND;
}

void trt_batch_range(void* state, int* min_batch, int* max_batch) {
    const TrtState* s = static_cast<const TrtState*>(state);
    *min_batch = s->min_batch;
    *max_batch = s->max_batch;
}

}  // namespace

extern "C" const edgead_backend edgead_tensorrt_backend = {
    "tensorrt", trt_accepts, trt_open, trt_infer, trt_batch_range, trt_close,
};
