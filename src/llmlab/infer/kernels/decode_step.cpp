// One decode step of a pre-norm decoder in one call: every layer, the final norm and the head, for one new token per
// row over a ragged cache (llmlab.infer.cache.RaggedCache: per layer one [kv_heads, slots, head_dim] buffer of keys
// and one of values, each row in a region of its own). It runs the same ATen operations, in the same order, as the
// model's eager forward does, and llmlab's blocked_linear and decode_attention kernels for the products, so its
// logits are the eager step's; what it saves is the Python between them: on a small CPU model at one row that
// interpreter and dispatch time, and the cache misses it suffers after each matrix has streamed through, are a fifth
// of the step. llmlab.infer.native_step lowers a model to the weights and settings below. Built and loaded by
// llmlab.infer.native; registered as torch.ops.llmlab.decode_step.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

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
    const at::Tensor source = rows_new.contiguous();
    const int64_t rows = source.size(0), kv_heads = source.size(1), dim = source.size(2);
    const float *from = source.data_ptr<float>();
    float *to = buffer.data_ptr<float>();
    for (int64_t row = 0; row < rows; row++)
        for (int64_t head = 0; head < kv_heads; head++)
            std::memcpy(to + (head * buffer.size(1) + slots[row]) * dim, from + (row * kv_heads + head) * dim,
                        dim * sizeof(float));
}

struct Step {
    const std::vector<int64_t> &settings;
    const std::vector<double> &scales;

    // nn.LayerNorm or llmlab's RMSNorm (accumulated in float32, the weight applied last)
    at::Tensor norm(const at::Tensor &x, const std::optional<at::Tensor> &weight,
                    const std::optional<at::Tensor> &bias) const {
        const double eps = scales[kNormEps];
        if (!settings[kRmsNorm]) return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
        at::Tensor h = x.to(at::kFloat);
        h = h * at::rsqrt(h.pow(2).mean(-1, true) + eps);
        return *weight * h.to(x.scalar_type());
    }

    at::Tensor activate(const at::Tensor &x) const {
        switch (settings[kActivation]) {
            case kGelu: return at::gelu(x);
            case kGeluTanh: return at::gelu(x, "tanh");
            case kRelu: return at::relu(x);
            default: return at::silu(x);
        }
    }

    at::Tensor mlp(const at::Tensor &x, const Weights &w, int64_t base) const {
        const int64_t d_ff = settings[kFeedForward], d_model = x.size(-1);
        at::Tensor up = linear(x, w.get(base + kUp), w.get(base + kUpBias), d_ff);
        at::Tensor inner = settings[kGated]
                               ? activate(linear(x, w.get(base + kGate), w.get(base + kGateBias), d_ff)) * up
                               : activate(up);
        return linear(inner, w.get(base + kDown), w.get(base + kDownBias), d_model);
    }

    // Rotary positions on [rows, heads, head_dim] with cos, sin [rows, 1, rotary_dim], as Rotary.rotate does.
    at::Tensor rotate(const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin) const {
        const int64_t rotary = settings[kRotaryDim];
        at::Tensor rot = x.slice(-1, 0, rotary), rest = x.slice(-1, rotary);
        at::Tensor turned;
        if (settings[kRope] == kRopeInterleaved) {
            at::Tensor even = rot.slice(-1, 0, rotary, 2), odd = rot.slice(-1, 1, rotary, 2);
            turned = at::stack({-odd, even}, -1).flatten(-2);
        } else {
            auto halves = rot.chunk(2, -1);
            turned = at::cat({-halves[1], halves[0]}, -1);
        }
        at::Tensor rotated = rot * cos + turned * sin;
        return rest.size(-1) ? at::cat({rotated, rest}, -1) : rotated;
    }
};

at::Tensor decode_step(const at::Tensor &ids, const at::Tensor &positions, const std::optional<at::Tensor> &cos,
                       const std::optional<at::Tensor> &sin, const Weights &weights, std::vector<int64_t> settings,
                       std::vector<double> scales, at::TensorList keys, at::TensorList values,
                       std::vector<int64_t> slots, std::vector<int64_t> starts, std::vector<int64_t> lengths) {
    TORCH_CHECK(settings.size() == kSettings && scales.size() == kScales, "decode_step's settings do not match");
    const int64_t layers = settings[kLayers], heads = settings[kHeads], kv_heads = settings[kKvHeads];
    const int64_t head_dim = settings[kHeadDim], rows = ids.size(0);
    TORCH_CHECK(static_cast<int64_t>(weights.size()) == kGlobals + layers * kLayerSlots &&
                    static_cast<int64_t>(keys.size()) == layers && static_cast<int64_t>(values.size()) == layers,
                "decode_step needs the weights and a key and value buffer of every layer");
    TORCH_CHECK(static_cast<int64_t>(slots.size()) == rows && static_cast<int64_t>(starts.size()) == rows &&
                    static_cast<int64_t>(lengths.size()) == rows,
                "decode_step needs each row's slot and region of the cache");
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
    at::Tensor x = weights.get(kTokens)->index_select(0, ids);
    if (scales[kEmbeddingScale] != 1.0) x = x * scales[kEmbeddingScale];
    if (settings[kLearnedPositions]) x = x + weights.get(kPositions)->index_select(0, positions + settings[kPositionOffset]);
    const int64_t q_width = heads * head_dim, kv_width = kv_heads * head_dim;
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
        if (settings[kRope] != kNoRope) q = step.rotate(q, *cos, *sin), k = step.rotate(k, *cos, *sin);
        at::Tensor key_buffer = keys[layer], value_buffer = values[layer];
        write(key_buffer, k, slots);
        write(value_buffer, v, slots);
        at::Tensor attended = attend(q, key_buffer, value_buffer, starts, lengths, scales[kAttentionScale]);
        at::Tensor o = linear(attended.view({rows, q_width}), weights.get(base + kO), weights.get(base + kOBias),
                              x.size(-1));
        if (settings[kParallelResidual]) {
            const at::Tensor m = settings[kParallelSharedNorm]
                                     ? h
                                     : step.norm(x, weights.get(base + kNorm2Weight), weights.get(base + kNorm2Bias));
            x = x + (o + step.mlp(m, weights, base));
        } else {
            x = x + o;
            x = x + step.mlp(step.norm(x, weights.get(base + kNorm2Weight), weights.get(base + kNorm2Bias)),
                             weights, base);
        }
    }
    if (settings[kFinalNorm]) x = step.norm(x, weights.get(kFinalWeight), weights.get(kFinalBias));
    if (scales[kHeadInputScale] != 1.0) x = x * scales[kHeadInputScale];
    return linear(x, weights.get(kHead), weights.get(kHeadBias), settings[kVocab]);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmlab, m) {
    m.def("decode_step(Tensor ids, Tensor positions, Tensor? cos, Tensor? sin, Tensor?[] weights, int[] settings, "
          "float[] scales, Tensor(a!)[] keys, Tensor(b!)[] values, int[] slots, int[] starts, int[] lengths) "
          "-> Tensor");
}
TORCH_LIBRARY_IMPL(llmlab, CPU, m) { m.impl("decode_step", &decode_step); }
