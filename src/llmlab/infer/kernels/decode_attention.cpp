// Attention of one query per row over that row's own keys and values, on the CPU: a decode step over a cache whose
// rows differ in length (llmlab.infer.cache.RaggedCache hands attention one [1, kv_heads, keys, head_dim] view per
// row). Every key is visible (no mask: the new token is the newest key), heads share a key/value head in groups
// (grouped-query attention), and the softmax is exact: max-subtracted, in float32. One (row, head) is a work item;
// its keys' scores stay in a buffer of the thread, its output in registers. A step's attention then costs what
// reading its keys and values costs, where torch's flash kernel, built for blocks of queries, spends several times
// that at one query. decode_attention_spans does the same over the cache's whole buffers and each row's span of them
// (llmlab.infer.native_step's decode step). Built and loaded by llmlab.infer.native; registered as
// torch.ops.llmlab.decode_attention and torch.ops.llmlab.decode_attention_spans.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;  // floats per vector
constexpr int64_t kMaxHeadDim = 512;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef float UnalignedVec __attribute__((vector_size(kLanes * sizeof(float)), aligned(alignof(float))));

inline Vec load(const float *p) { return *reinterpret_cast<const UnalignedVec *>(p); }
inline void store(float *p, Vec v) { *reinterpret_cast<UnalignedVec *>(p) = v; }

inline float sum(Vec v) {
    float total = 0.0f;
    for (int64_t i = 0; i < kLanes; i++) total += v[i];
    return total;
}

// q · k over dim floats: whole vectors, then the rest one by one.
inline float dot(const float *q, const float *k, int64_t dim) {
    Vec acc = {};
    int64_t d = 0;
    for (; d + kLanes <= dim; d += kLanes) acc += load(q + d) * load(k + d);
    float total = sum(acc);
    for (; d < dim; d++) total += q[d] * k[d];
    return total;
}

struct Item {  // one (row, head): where its query, keys, values and output are
    const float *query, *keys, *values;
    int64_t key_stride, value_stride, length;
    float *out;
};

// softmax(q · keys / scale) @ values for one item, scores in a buffer of at least item.length floats.
void attend(const Item &item, int64_t dim, float scale, float *scores) {
    float highest = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < item.length; j++) {
        scores[j] = dot(item.query, item.keys + j * item.key_stride, dim) * scale;
        highest = std::max(highest, scores[j]);
    }
    float total = 0.0f;
    for (int64_t j = 0; j < item.length; j++) {
        scores[j] = std::exp(scores[j] - highest);
        total += scores[j];
    }
    const int64_t vectors = dim / kLanes;
    Vec acc[kMaxHeadDim / kLanes] = {};
    float tail[kLanes] = {};
    for (int64_t j = 0; j < item.length; j++) {
        const float p = scores[j], *v = item.values + j * item.value_stride;
        for (int64_t c = 0; c < vectors; c++) acc[c] += load(v + c * kLanes) * p;
        for (int64_t d = vectors * kLanes; d < dim; d++) tail[d - vectors * kLanes] += v[d] * p;
    }
    const float inverse = 1.0f / total;
    for (int64_t c = 0; c < vectors; c++) store(item.out + c * kLanes, acc[c] * inverse);
    for (int64_t d = vectors * kLanes; d < dim; d++) item.out[d] = tail[d - vectors * kLanes] * inverse;
}

void check_rows(const at::Tensor &query, at::TensorList keys, at::TensorList values) {
    TORCH_CHECK(query.dim() == 4 && query.size(2) == 1 && query.scalar_type() == at::kFloat,
                "decode_attention's query must be float32 [rows, heads, 1, head_dim]");
    TORCH_CHECK(query.size(3) <= kMaxHeadDim, "decode_attention takes heads of at most ", kMaxHeadDim, " features");
    TORCH_CHECK(static_cast<int64_t>(keys.size()) == query.size(0) && values.size() == keys.size(),
                "decode_attention needs one key and one value tensor per query row");
    for (size_t row = 0; row < keys.size(); row++) {
        const at::Tensor &k = keys[row], &v = values[row];
        TORCH_CHECK(k.dim() == 4 && k.size(0) == 1 && k.size(3) == query.size(3) && k.sizes() == v.sizes() &&
                        k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
                    "decode_attention's keys and values must be float32 [1, kv_heads, keys, head_dim] per row");
        TORCH_CHECK(k.size(1) > 0 && query.size(1) % k.size(1) == 0 && k.size(1) == keys[0].size(1),
                    "decode_attention's query heads must be a multiple of its key/value heads");
        TORCH_CHECK(k.size(2) > 0, "decode_attention needs at least one key per row");
        TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "decode_attention's keys and values must be contiguous "
                                                          "in head_dim");
    }
}

// Every item's attention, the (row, head) items split between threads by the floats they read.
void attend_all(const std::vector<Item> &items, int64_t longest, int64_t floats, int64_t dim, double scale) {
    const int64_t per_item = std::max<int64_t>(1, floats / static_cast<int64_t>(items.size()));
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / per_item);  // parallel above ~64 KiB a thread
    const float factor = static_cast<float>(scale);
    at::parallel_for(0, static_cast<int64_t>(items.size()), grain, [&](int64_t begin, int64_t end) {
        std::vector<float> scores(longest);
        for (int64_t i = begin; i < end; i++) attend(items[i], dim, factor, scores.data());
    });
}

at::Tensor decode_attention(const at::Tensor &input, at::TensorList keys, at::TensorList values, double scale) {
    check_rows(input, keys, values);
    const at::Tensor query = input.stride(3) == 1 ? input : input.contiguous();
    const int64_t rows = query.size(0), heads = query.size(1), dim = query.size(3);
    const int64_t group = heads / keys[0].size(1);
    at::Tensor out = at::empty({rows, 1, heads, dim}, query.options());  // the layout the output projection reads
    std::vector<Item> items;
    items.reserve(rows * heads);
    int64_t longest = 0, floats = 0;
    for (int64_t row = 0; row < rows; row++) {
        const at::Tensor &k = keys[row], &v = values[row];
        longest = std::max(longest, k.size(2));
        for (int64_t head = 0; head < heads; head++) {
            items.push_back({query.data_ptr<float>() + row * query.stride(0) + head * query.stride(1),
                             k.data_ptr<float>() + head / group * k.stride(1),
                             v.data_ptr<float>() + head / group * v.stride(1), k.stride(2), v.stride(2), k.size(2),
                             out.data_ptr<float>() + (row * heads + head) * dim});
            floats += 2 * k.size(2) * dim;
        }
    }
    attend_all(items, longest, floats, dim, scale);
    return out.transpose(1, 2);
}

// The same over whole cache buffers [kv_heads, slots, head_dim], row r's keys being slots starts[r] ..
// starts[r] + lengths[r] - 1 (the ragged cache's regions); query [rows, heads, head_dim], contiguous in head_dim.
at::Tensor decode_attention_spans(const at::Tensor &query, const at::Tensor &keys, const at::Tensor &values,
                                  at::IntArrayRef starts, at::IntArrayRef lengths, double scale) {
    TORCH_CHECK(query.dim() == 3 && query.stride(2) == 1 && query.scalar_type() == at::kFloat &&
                    query.size(2) <= kMaxHeadDim,
                "decode_attention_spans's query must be float32 [rows, heads, head_dim]");
    TORCH_CHECK(keys.dim() == 3 && keys.sizes() == values.sizes() && keys.is_contiguous() && values.is_contiguous() &&
                    keys.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat &&
                    keys.size(2) == query.size(2) && query.size(1) % keys.size(0) == 0,
                "decode_attention_spans's buffers must be contiguous float32 [kv_heads, slots, head_dim]");
    const int64_t rows = query.size(0), heads = query.size(1), dim = query.size(2), slots = keys.size(1);
    TORCH_CHECK(static_cast<int64_t>(starts.size()) == rows && static_cast<int64_t>(lengths.size()) == rows,
                "decode_attention_spans needs a span per query row");
    const int64_t group = heads / keys.size(0);
    at::Tensor out = at::empty({rows, heads, dim}, query.options());
    std::vector<Item> items;
    items.reserve(rows * heads);
    int64_t longest = 0, floats = 0;
    for (int64_t row = 0; row < rows; row++) {
        TORCH_CHECK(lengths[row] > 0 && starts[row] >= 0 && starts[row] + lengths[row] <= slots,
                    "decode_attention_spans's spans must lie within the buffers");
        longest = std::max(longest, lengths[row]);
        for (int64_t head = 0; head < heads; head++) {
            const int64_t offset = head / group * slots * dim + starts[row] * dim;
            items.push_back({query.data_ptr<float>() + row * query.stride(0) + head * query.stride(1),
                             keys.data_ptr<float>() + offset, values.data_ptr<float>() + offset, dim, dim,
                             lengths[row], out.data_ptr<float>() + (row * heads + head) * dim});
            floats += 2 * lengths[row] * dim;
        }
    }
    attend_all(items, longest, floats, dim, scale);
    return out;
}

at::Tensor decode_attention_meta(const at::Tensor &query, at::TensorList keys, at::TensorList values, double scale) {
    return at::empty({query.size(0), 1, query.size(1), query.size(3)}, query.options()).transpose(1, 2);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmlab, m) {
    m.def("decode_attention(Tensor query, Tensor[] keys, Tensor[] values, float scale) -> Tensor");
    m.def("decode_attention_spans(Tensor query, Tensor keys, Tensor values, int[] starts, int[] lengths, "
          "float scale) -> Tensor");
}
TORCH_LIBRARY_IMPL(llmlab, CPU, m) {
    m.impl("decode_attention", &decode_attention);
    m.impl("decode_attention_spans", &decode_attention_spans);
}
TORCH_LIBRARY_IMPL(llmlab, Meta, m) { m.impl("decode_attention", &decode_attention_meta); }
