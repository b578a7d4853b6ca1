// One decode step of a pre-norm decoder in one call: every layer, the final norm and the head, for one new token per
// row over a ragged cache (llmlab.infer.cache.RaggedCache: per layer one [kv_heads, slots, head_dim] buffer of keys
// and one of values, each row in a region of its own). It computes what the model's eager forward computes (the
// same formulas in float32, the activations through ATen's kernels, llmlab's blocked_linear and decode_attention
// kernels for the products and the attention), so its logits are the eager step's to float32 rounding; what it saves
// is the Python between them: on a small CPU model at one row that interpreter and dispatch time, and the cache
// misses it suffers after each matrix has streamed through, were a fifth of the step. llmlab.infer.native_step lowers
// a model to the weights and settings below. Built and loaded by llmlab.infer.native; registered as
// torch.ops.llmlab.decode_step.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

namespace {

// The settings, in the order llmlab.infer.native_step passes them.
enum Setting {
    kLayers, kHeads, kKvHeads, kHeadDim, kFeedForward, kVocab, kRmsNorm, kActivation, kGated, kParallelResidual,
    kParallelSharedNorm, kRope, kRotaryDim, kLearnedPositions, kPositionOffset, kFinalNorm, kFusedQkv, kSettings
};
enum Scale { kNormEps, kAttentionScale, kEmbeddingScale, kHeadInputScale, kScales };
enum Activation { kGelu, kGeluTanh, kRelu, kSilu };
enum Rope { kNoRope, kRopeHalf, kRopeInterleaved };
// Weights: these first, then kLayerSlots per layer; a missing one (no bias, no gate) is None.
enum Global { kTokens, kPositions, kFinalWeight, kFinalBias, kHead, kHeadBias, kGlobals };
enum Slot {
    kNorm1Weight, kNorm1Bias, kQ, kQBias, kK, kKBias, kV, kVBias, kO, kOBias, kNorm2Weight, kNorm2Bias, kGate,
    kGateBias, kUp, kUpBias, kDown, kDownBias, kLayerSlots
};

using Weights = c10::List<std::optional<at::Tensor>>;

at::Tensor linear(const at::Tensor &x, const std::optional<at::Tensor> &packed, const std::optional<at::Tensor> &bias,
                  int64_t out_features) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("llmlab::blocked_linear", "")
                               .typed<at::Tensor(const at::Tensor &, const at::Tensor &,
                                                 const std::optional<at::Tensor> &, int64_t)>();
    return op.call(x, *packed, bias, out_features);
}

at::Tensor attend(const at::Tensor &q, const at::Tensor &keys, const at::Tensor &values, at::IntArrayRef starts,
                  at::IntArrayRef lengths, double scale) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("llmlab::decode_attention_spans", "")
                               .typed<at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                                                 at::IntArrayRef, at::IntArrayRef, double)>();
    return op.call(q, keys, values, starts, lengths, scale);
}

// Each row's new keys (or values) [rows, kv_heads, head_dim] into its slot of a buffer [kv_heads, slots, head_dim].
void write(at::Tensor &buffer, const at::Tensor &rows_new, at::IntArrayRef slots) {
    const int64_t rows = rows_new.size(0), kv_heads = rows_new.size(1), dim = rows_new.size(2);
    const float *from = rows_new.data_ptr<float>();
    float *to = buffer.data_ptr<float>();
    for (int64_t row = 0; row < rows; row++)
        for (int64_t head = 0; head < kv_heads; head++)
            std::memcpy(to + (head * buffer.size(1) + slots[row]) * dim,
                        from + row * rows_new.stride(0) + head * rows_new.stride(1), dim * sizeof(float));
}

// The arithmetic between the products, on rows of float32, as the model's modules define it (the sums of the norms in
// double): a few hundred floats a row, where ATen's dispatch and iterator setup would cost more than the work; the
// activations, a few thousand transcendental functions a row, go through ATen's vectorised kernels.
struct Step {
    const std::vector<int64_t> &settings;
    const std::vector<double> &scales;

    // nn.LayerNorm or llmlab's RMSNorm (RMSNorm: x · rsqrt(mean(x²) + eps), then the weight) of x [rows, d]
    at::Tensor norm(const at::Tensor &x, const std::optional<at::Tensor> &weight,
                    const std::optional<at::Tensor> &bias) const {
        const int64_t rows = x.size(0), d = x.size(1);
        const double eps = scales[kNormEps];
        at::Tensor out = at::empty_like(x);
        const float *w = weight ? weight->data_ptr<float>() : nullptr, *b = bias ? bias->data_ptr<float>() : nullptr;
        for (int64_t row = 0; row < rows; row++) {
            const float *in = x.data_ptr<float>() + row * x.stride(0);
            float *o = out.data_ptr<float>() + row * d;
            if (settings[kRmsNorm]) {
                double squares = 0.0;
                for (int64_t i = 0; i < d; i++) squares += double(in[i]) * in[i];
                const float scale = 1.0f / std::sqrt(static_cast<float>(squares / d + eps));
                for (int64_t i = 0; i < d; i++) o[i] = w[i] * (in[i] * scale);
            } else {
                double total = 0.0, squares = 0.0;
                for (int64_t i = 0; i < d; i++) total += in[i];
                const double mean = total / d;
                for (int64_t i = 0; i < d; i++) squares += (in[i] - mean) * (in[i] - mean);
                const float centre = static_cast<float>(mean);
                const float scale = static_cast<float>(1.0 / std::sqrt(squares / d + eps));
                for (int64_t i = 0; i < d; i++) {
                    const float y = (in[i] - centre) * scale;
                    o[i] = (w ? y * w[i] : y) + (b ? b[i] : 0.0f);
                }
            }
        }
        return out;
    }

    // The activation in place, through ATen's vectorised kernels (the model's own, to the last bit).
    void activate(at::Tensor &x) const {
        switch (settings[kActivation]) {
            case kGelu: at::gelu_(x); break;
            case kGeluTanh: at::gelu_(x, "tanh"); break;
            case kRelu: at::relu_(x); break;
            default: at::silu_(x);
        }
    }

    at::Tensor mlp(const at::Tensor &x, const Weights &w, int64_t base) const {
        const int64_t d_ff = settings[kFeedForward], d_model = x.size(-1);
        at::Tensor up = linear(x, w.get(base + kUp), w.get(base + kUpBias), d_ff);
        if (settings[kGated]) {
            at::Tensor gate = linear(x, w.get(base + kGate), w.get(base + kGateBias), d_ff);
            activate(gate);
            float *u = up.data_ptr<float>();
            const float *g = gate.data_ptr<float>();
            for (int64_t i = 0; i < up.numel(); i++) u[i] = g[i] * u[i];
        } else {
            activate(up);
        }
        return linear(up, w.get(base + kDown), w.get(base + kDownBias), d_model);
    }

    // Rotary positions, in place, on x [rows, heads, head_dim] (contiguous in head_dim) with each row's cos and sin
    // [rotary_dim] from tables [positions, rotary_dim], as Rotary.rotate does: rot · cos + turned · sin over the
    // first rotary_dim features.
    void rotate(at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin,
                const std::vector<int64_t> &positions) const {
        const int64_t rotary = settings[kRotaryDim], half = rotary / 2;
        const bool interleaved = settings[kRope] == kRopeInterleaved;
        float turned[1024];
        for (int64_t row = 0; row < x.size(0); row++) {
            const float *c = cos.data_ptr<float>() + positions[row] * rotary;
            const float *s = sin.data_ptr<float>() + positions[row] * rotary;
            for (int64_t head = 0; head < x.size(1); head++) {
                float *v = x.data_ptr<float>() + row * x.stride(0) + head * x.stride(1);
                for (int64_t i = 0; i < rotary; i++)
                    turned[i] = interleaved ? (i % 2 ? v[i - 1] : -v[i + 1]) : (i < half ? -v[i + half] : v[i - half]);
                for (int64_t i = 0; i < rotary; i++) v[i] = v[i] * c[i] + turned[i] * s[i];
            }
        }
    }
};

// x += y, row by row (x [rows, d] contiguous; y [rows, d], rows apart by its stride)
void add_to(at::Tensor &x, const at::Tensor &y) {
    for (int64_t row = 0; row < x.size(0); row++) {
        float *to = x.data_ptr<float>() + row * x.size(1);
        const float *from = y.data_ptr<float>() + row * y.stride(0);
        for (int64_t i = 0; i < x.size(1); i++) to[i] += from[i];
    }
}

at::Tensor decode_step(const at::Tensor &ids, std::vector<int64_t> positions, const std::optional<at::Tensor> &cos,
                       const std::optional<at::Tensor> &sin, const Weights &weights, std::vector<int64_t> settings,
                       std::vector<double> scales, at::TensorList keys, at::TensorList values,
                       std::vector<int64_t> slots, std::vector<int64_t> starts, std::vector<int64_t> lengths,
                       std::vector<int64_t> windows) {
    TORCH_CHECK(settings.size() == kSettings && scales.size() == kScales, "decode_step's settings do not match");
    const int64_t layers = settings[kLayers], heads = settings[kHeads], kv_heads = settings[kKvHeads];
    const int64_t head_dim = settings[kHeadDim], rows = ids.size(0);
    TORCH_CHECK(static_cast<int64_t>(weights.size()) == kGlobals + layers * kLayerSlots &&
                    static_cast<int64_t>(keys.size()) == layers && static_cast<int64_t>(values.size()) == layers,
                "decode_step needs the weights and a key and value buffer of every layer");
    TORCH_CHECK(static_cast<int64_t>(slots.size()) == rows && static_cast<int64_t>(starts.size()) == rows &&
                    static_cast<int64_t>(lengths.size()) == rows && static_cast<int64_t>(windows.size()) == layers,
                "decode_step needs each row's slot and region of the cache, and each layer's window");
    for (int64_t layer = 0; layer < layers; layer++)
        TORCH_CHECK(keys[layer].is_contiguous() && values[layer].is_contiguous() && keys[layer].dim() == 3 &&
                        keys[layer].sizes() == values[layer].sizes() && keys[layer].size(0) == kv_heads &&
                        keys[layer].scalar_type() == at::kFloat && values[layer].scalar_type() == at::kFloat,
                    "decode_step's cache buffers must be contiguous float32 [kv_heads, slots, head_dim]");
    for (int64_t row = 0; row < rows; row++)
        TORCH_CHECK(slots[row] >= starts[row] && slots[row] < starts[row] + lengths[row] &&
                        starts[row] + lengths[row] <= keys[0].size(1),
                    "decode_step's rows must write within their regions of the cache");
    const Step step{settings, scales};
    at::NoGradGuard no_grad;
    const at::Tensor &tokens = *weights.get(kTokens);
    const int64_t d_model = tokens.size(1);
    TORCH_CHECK(tokens.is_contiguous() && ids.dim() == 1 && ids.scalar_type() == at::kLong &&
                    static_cast<int64_t>(positions.size()) == rows,
                "decode_step needs one int64 token id and one position per row");
    const auto id_of = ids.accessor<int64_t, 1>();
    if (settings[kRope]) {
        TORCH_CHECK(cos && sin && cos->is_contiguous() && sin->is_contiguous() && cos->dim() == 2 &&
                        cos->sizes() == sin->sizes() && cos->size(1) == settings[kRotaryDim] &&
                        settings[kRotaryDim] <= 1024,
                    "decode_step's rotary cos and sin must be [positions, rotary_dim]");
        for (int64_t row = 0; row < rows; row++)
            TORCH_CHECK(positions[row] >= 0 && positions[row] < cos->size(0), "decode_step's position ",
                        positions[row], " is past its rotary tables");
    }
    at::Tensor x = at::empty({rows, d_model}, tokens.options());
    const float embedding_scale = static_cast<float>(scales[kEmbeddingScale]);
    for (int64_t row = 0; row < rows; row++) {
        const int64_t id = id_of[row];
        TORCH_CHECK(id >= 0 && id < tokens.size(0), "decode_step's token id ", id, " is outside the vocabulary");
        const float *embedding = tokens.data_ptr<float>() + id * d_model;
        float *to = x.data_ptr<float>() + row * d_model;
        for (int64_t i = 0; i < d_model; i++) to[i] = embedding[i] * embedding_scale;
        if (settings[kLearnedPositions]) {
            const at::Tensor &table = *weights.get(kPositions);
            const int64_t position = positions[row] + settings[kPositionOffset];
            TORCH_CHECK(position >= 0 && position < table.size(0), "decode_step's position ", position,
                        " is outside the position table");
            const float *added = table.data_ptr<float>() + position * d_model;
            for (int64_t i = 0; i < d_model; i++) to[i] += added[i];
        }
    }
    const int64_t q_width = heads * head_dim, kv_width = kv_heads * head_dim;
    std::vector<int64_t> first(rows), visible(rows);  // each row's keys a layer attends to
    for (int64_t layer = 0; layer < layers; layer++) {
        const int64_t base = kGlobals + layer * kLayerSlots;
        const at::Tensor h = step.norm(x, weights.get(base + kNorm1Weight), weights.get(base + kNorm1Bias));
        at::Tensor q, k, v;
        if (settings[kFusedQkv]) {
            at::Tensor qkv = linear(h, weights.get(base + kQ), weights.get(base + kQBias), q_width + 2 * kv_width);
            auto parts = qkv.split_with_sizes({q_width, kv_width, kv_width}, -1);
            q = parts[0], k = parts[1], v = parts[2];
        } else {
            q = linear(h, weights.get(base + kQ), weights.get(base + kQBias), q_width);
            k = linear(h, weights.get(base + kK), weights.get(base + kKBias), kv_width);
            v = linear(h, weights.get(base + kV), weights.get(base + kVBias), kv_width);
        }
        q = q.view({rows, heads, head_dim});
        k = k.view({rows, kv_heads, head_dim});
        v = v.view({rows, kv_heads, head_dim});
        if (settings[kRope] != kNoRope) {
            step.rotate(q, *cos, *sin, positions);
            step.rotate(k, *cos, *sin, positions);
        }
        at::Tensor key_buffer = keys[layer], value_buffer = values[layer];
        write(key_buffer, k, slots);
        write(value_buffer, v, slots);
        for (int64_t row = 0; row < rows; row++) {  // a sliding window sees the newest keys only
            visible[row] = windows[layer] > 0 ? std::min(lengths[row], windows[layer]) : lengths[row];
            first[row] = starts[row] + lengths[row] - visible[row];
        }
        at::Tensor attended = attend(q, key_buffer, value_buffer, first, visible, scales[kAttentionScale]);
        at::Tensor o = linear(attended.view({rows, q_width}), weights.get(base + kO), weights.get(base + kOBias),
                              x.size(-1));
        if (settings[kParallelResidual]) {  // x + (attention + mlp), in the model's order
            const at::Tensor m = settings[kParallelSharedNorm]
                                     ? h
                                     : step.norm(x, weights.get(base + kNorm2Weight), weights.get(base + kNorm2Bias));
            add_to(o, step.mlp(m, weights, base));
            add_to(x, o);
        } else {
            add_to(x, o);
            add_to(x, step.mlp(step.norm(x, weights.get(base + kNorm2Weight), weights.get(base + kNorm2Bias)),
                               weights, base));
        }
    }
    if (settings[kFinalNorm]) x = step.norm(x, weights.get(kFinalWeight), weights.get(kFinalBias));
    if (scales[kHeadInputScale] != 1.0) x.mul_(scales[kHeadInputScale]);
    return linear(x, weights.get(kHead), weights.get(kHeadBias), settings[kVocab]);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmlab, m) {
    m.def("decode_step(Tensor ids, int[] positions, Tensor? cos, Tensor? sin, Tensor?[] weights, int[] settings, "
          "float[] scales, Tensor(a!)[] keys, Tensor(b!)[] values, int[] slots, int[] starts, int[] lengths, "
          "int[] windows) "
          "-> Tensor");
}
TORCH_LIBRARY_IMPL(llmlab, CPU, m) { m.impl("decode_step", &decode_step); }
