// input @ weight.T + bias on the CPU, over a copy of the weight laid out in blocks of 16 output features:
// blocked[b, k, j] = weight[16 * b + j, k], the last block padded with zeros. A block's columns are one vector and its
// rows follow each other in memory, so a product streams the weight from memory once, in order, whatever the number of
// input rows, and at one row (a decode step) reads it at close to the machine's memory bandwidth. Written with GCC's
// vector extensions, so that -march=native picks the instructions (AVX-512 here, AVX2 or NEON elsewhere). Built and
// loaded by llmlab.infer.native; registered as torch.ops.llmlab.blocked_linear.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlock = 16;  // output features per block: one vector of float32
typedef float Vec __attribute__((vector_size(kBlock * sizeof(float))));
typedef float UnalignedVec __attribute__((vector_size(kBlock * sizeof(float)), aligned(alignof(float))));

#if defined(__AVX512F__)
constexpr int kTileRows = 8, kTileBlocks = 3;  // 24 accumulators in 32 vector registers
#else
constexpr int kTileRows = 2, kTileBlocks = 2;  // a Vec spans two or four registers here
#endif

inline Vec load(const float *p) { return *reinterpret_cast<const UnalignedVec *>(p); }

// Sums run in chunks of kChunk terms, each in registers, then added to a running total: float32 rounding grows with
// the chunk and the number of chunks, not with the whole inner dimension.
constexpr int64_t kChunk = 128;

using Totals = std::array<Vec, kTileBlocks>;  // one row's running sums over a group of blocks

// totals[r][c] += sum over k in [start, stop) of x[r, k] * blocks[c][k, :], for R rows and C blocks, every
// accumulator in a register.
template <int R, int C>
void accumulate(const float *x, int64_t x_stride, const float *blocks, int64_t block_stride, int64_t start,
                int64_t stop, Totals *totals) {
    Vec acc[R][C] = {};
    for (int64_t k = start; k < stop; k++) {
        Vec w[C];
        for (int c = 0; c < C; c++) w[c] = load(blocks + c * block_stride + k * kBlock);
        for (int r = 0; r < R; r++) {
            const float xk = x[r * x_stride + k];
            for (int c = 0; c < C; c++) acc[r][c] += w[c] * xk;
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) totals[r][c] += acc[r][c];
}

// The same for one row, n blocks and the whole inner dimension: a block at a time, in one stream through memory, over
// four accumulators (k mod 4) so that the additions' latency is hidden.
void accumulate_row(const float *x, const float *blocks, int64_t block_stride, int64_t in, int64_t n,
                    Totals &totals) {
    for (int64_t c = 0; c < n; c++) {
        const float *w = blocks + c * block_stride;
        for (int64_t start = 0; start < in; start += kChunk) {
            const int64_t stop = std::min(in, start + kChunk);
            Vec acc[4] = {};
            int64_t k = start;
            for (; k + 4 <= stop; k += 4)
                for (int u = 0; u < 4; u++) acc[u] += load(w + (k + u) * kBlock) * x[k + u];
            for (; k < stop; k++) acc[0] += load(w + k * kBlock) * x[k];
            totals[c] += (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    }
}

// out[r, 16c : 16c + 16] = totals[r][c] + bias for r rows and n blocks, the last block possibly cut at out_features.
void store(const Totals *totals, int64_t r, int64_t n, const float *bias, float *out, int64_t out_stride,
           int64_t out_features) {
    for (int64_t c = 0; c < n; c++) {
        const int64_t width = std::min(kBlock, out_features - c * kBlock);
        Vec b = {};
        if (bias) std::memcpy(&b, bias + c * kBlock, width * sizeof(float));
        for (int64_t row = 0; row < r; row++) {
            const Vec v = totals[row][c] + b;
            std::memcpy(out + row * out_stride + c * kBlock, &v, width * sizeof(float));
        }
    }
}

using AccumulateFn = void (*)(const float *, int64_t, const float *, int64_t, int64_t, int64_t, Totals *);

template <int R, int... C>
constexpr void fill_row(AccumulateFn (&table)[kTileRows][kTileBlocks], std::integer_sequence<int, C...>) {
    ((table[R][C] = &accumulate<R + 1, C + 1>), ...);
}

template <int... R>
constexpr void fill(AccumulateFn (&table)[kTileRows][kTileBlocks], std::integer_sequence<int, R...>) {
    (fill_row<R>(table, std::make_integer_sequence<int, kTileBlocks>{}), ...);
}

struct Tiles {  // accumulate<r, c> for every tile of r rows and c blocks
    AccumulateFn table[kTileRows][kTileBlocks];
    Tiles() { fill(table, std::make_integer_sequence<int, kTileRows>{}); }
};
const Tiles tiles;

at::Tensor blocked_linear(const at::Tensor &input, const at::Tensor &blocked, const std::optional<at::Tensor> &bias,
                          int64_t out_features) {
    TORCH_CHECK(input.scalar_type() == at::kFloat && blocked.scalar_type() == at::kFloat,
                "blocked_linear takes float32 tensors");
    TORCH_CHECK(blocked.dim() == 3 && blocked.size(2) == kBlock && blocked.is_contiguous(),
                "blocked_linear's weight must be a contiguous [blocks, in_features, 16] tensor");
    const int64_t in = blocked.size(1), n_blocks = blocked.size(0);
    TORCH_CHECK(input.size(-1) == in, "blocked_linear's input has ", input.size(-1), " features, its weight ", in);
    TORCH_CHECK(out_features > (n_blocks - 1) * kBlock && out_features <= n_blocks * kBlock,
                "blocked_linear's out_features does not match its weight's blocks");
    TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == out_features),
                "blocked_linear's bias must be a contiguous float32 tensor of out_features");
    const at::Tensor x = input.reshape({-1, in}).contiguous();
    const int64_t rows = x.size(0);
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
    shape.back() = out_features;
    at::Tensor out = at::empty(shape, input.options());
    if (rows == 0) return out;
    const float *px = x.data_ptr<float>(), *pw = blocked.data_ptr<float>();
    const float *pb = bias ? bias->data_ptr<float>() : nullptr;
    float *po = out.data_ptr<float>();
    const int64_t groups = (n_blocks + kTileBlocks - 1) / kTileBlocks;
    const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows;
    // Work items are (group of blocks, span of row tiles), groups outermost so that a thread's items reuse a group's
    // blocks from its cache; rows are split only as far as needed to give every thread several items.
    const int64_t spans = std::clamp<int64_t>(4 * at::get_num_threads() / groups, 1, row_tiles);
    const int64_t tiles_per_span = (row_tiles + spans - 1) / spans;
    const int64_t bytes_per_item = in * kBlock * kTileBlocks * sizeof(float) * tiles_per_span;
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / bytes_per_item);  // parallel only above ~256 KiB
    at::parallel_for(0, groups * spans, grain, [&](int64_t begin, int64_t end) {
        std::vector<Totals> totals(tiles_per_span * kTileRows);
        for (int64_t item = begin; item < end; item++) {
            const int64_t group = item / spans, span = item % spans;
            const int64_t block = group * kTileBlocks, n = std::min<int64_t>(kTileBlocks, n_blocks - block);
            const int64_t first = span * tiles_per_span * kTileRows;
            const int64_t last = std::min(rows, first + tiles_per_span * kTileRows);
            const float *blocks = pw + block * in * kBlock;
            std::fill(totals.begin(), totals.end(), Totals{});
            if (rows == 1) {
                accumulate_row(px, blocks, in * kBlock, in, n, totals[0]);
            } else {
                // a chunk of the inner dimension for every row tile before the next, so that the group's blocks
                // are read from memory once and from the nearest cache for the other row tiles
                for (int64_t start = 0; start < in; start += kChunk) {
                    const int64_t stop = std::min(in, start + kChunk);
                    for (int64_t row = first; row < last; row += kTileRows) {
                        const int64_t r = std::min<int64_t>(kTileRows, last - row);
                        tiles.table[r - 1][n - 1](px + row * in, in, blocks, in * kBlock, start, stop,
                                                  &totals[row - first]);
                    }
                }
            }
            for (int64_t row = first; row < last; row += kTileRows)
                store(&totals[row - first], std::min<int64_t>(kTileRows, last - row), n,
                      pb ? pb + block * kBlock : nullptr, po + row * out_features + block * kBlock, out_features,
                      out_features - block * kBlock);
        }
    });
    return out;
}

at::Tensor blocked_linear_meta(const at::Tensor &input, const at::Tensor &blocked,
                               const std::optional<at::Tensor> &bias, int64_t out_features) {
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
    shape.back() = out_features;
    return at::empty(shape, input.options());
}

}  // namespace

TORCH_LIBRARY(llmlab, m) { m.def("blocked_linear(Tensor input, Tensor blocked, Tensor? bias, int out_features) -> Tensor"); }
TORCH_LIBRARY_IMPL(llmlab, CPU, m) { m.impl("blocked_linear", &blocked_linear); }
TORCH_LIBRARY_IMPL(llmlab, Meta, m) { m.impl("blocked_linear", &blocked_linear_meta); }
