// Torch-facing ops of the bit-packed engine: argument checks, ISA choice, weight packing, and the
// split of each op into chunks for the engine's work pool (work_pool.h; torch.set_num_threads sets its size).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "fused.h"
#include "kernels.h"
#include "work_pool.h"

namespace bitpacked {
namespace {

Isa& active() {
  static Isa isa = cpu_isas().front();
  return isa;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const Isa& isa : cpu_isas()) names.emplace_back(isa.name);
  return names;
}

std::string active_isa() { return active().name; }

void set_isa(std::string name) {
  for (const Isa& isa : cpu_isas()) {
    if (name == isa.name) {
      active() = isa;
      return;
    }
  }
  TORCH_CHECK(false, "instruction set '", name, "' is not available on this CPU; available: ",
              c10::Join(", ", supported_isas()));
}

// A 64-byte aligned scratch array (the AVX-512 kernel loads whole cache lines from it).
class AlignedWords {
 public:
  explicit AlignedWords(int64_t n) : storage_(new uint64_t[n + 8]) {}
  uint64_t* data() {
    const auto p = reinterpret_cast<uintptr_t>(storage_.get());
    return reinterpret_cast<uint64_t*>((p + 63) & ~static_cast<uintptr_t>(63));
  }

 private:
  std::unique_ptr<uint64_t[]> storage_;
};

// Calls body(begin, end) over [0, items) in chunks of `chunk` items on the engine's work pool
// (work_pool.h), with torch's thread count; inline inside another parallel region.
template <typename Body>
void dynamic_for(int64_t items, int64_t chunk, const Body& body) {
  const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  WorkPool::instance().run(items, chunk, threads, body);
}

// A 64-byte aligned scratch array of the calling thread, reused across calls.
uint64_t* thread_scratch(int64_t words) {
  thread_local std::unique_ptr<AlignedWords> scratch;
  thread_local int64_t size = 0;
  if (words > size) {
    scratch = std::make_unique<AlignedWords>(words);
    size = words;
  }
  return scratch->data();
}

// Chunk size giving each thread about kChunksPerThread chunks, and at least `least` items each.
constexpr int64_t kChunksPerThread = 8;
int64_t chunk_for(int64_t items, int64_t least) {
  return std::max<int64_t>(least, items / (kChunksPerThread * at::get_num_threads()));
}

int64_t words_for(int64_t channels) { return (channels + 63) / 64; }

void check_vector(const at::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.dim() == 1 && t.numel() == n && t.scalar_type() == at::kFloat && t.is_contiguous(),
              what, " must be a contiguous float vector of ", n, " values");
}

// sign(x + bias) of a (N, C, H, W) float map, packed along channels: (N, H, W, ceil(C/64)) int64.
at::Tensor pack(const at::Tensor& x, const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "pack: x must be a 4-d float CPU tensor");
  const at::Tensor input = x.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), words = words_for(c);
  check_vector(bias, c, "pack: bias");
  at::Tensor bits = at::empty({n, h, w, words}, x.options().dtype(at::kLong));
  const PackArgs args{input.data_ptr<float>(), bias.data_ptr<float>(),
                      reinterpret_cast<uint64_t*>(bits.data_ptr<int64_t>()), c, words, h * w};
  const PackFn fn = active().pack;
  const int64_t blocks = n * ((h * w + kPackPixels - 1) / kPackPixels);
  const int64_t grain = c >= 1024 ? 1 : 1024 / c;  // at least about 16K values per chunk
  dynamic_for(blocks, chunk_for(blocks, grain), [&](int64_t begin, int64_t end) { fn(args, begin, end); });
  return bits;
}

// Output channels per work item: whole layers when there are enough pixel tiles to keep every
// thread busy (one gather per tile), smaller chunks for the small late maps.
int64_t chunk_channels(int64_t tiles, int64_t out_channels) {
  const int64_t channel_tiles = (out_channels + kTileChannels - 1) / kTileChannels;
  const int64_t wanted = 4 * static_cast<int64_t>(at::get_num_threads());
  int64_t chunks = tiles >= wanted ? 1 : (wanted + tiles - 1) / tiles;
  chunks = chunks < channel_tiles ? chunks : channel_tiles;
  return (channel_tiles + chunks - 1) / chunks * kTileChannels;
}

void check_conv_inputs(const at::Tensor& bits, const at::Tensor& weight, const at::Tensor& weight_pop,
                       int64_t channels, int64_t kernel, int64_t stride) {
  TORCH_CHECK(bits.dim() == 4 && bits.scalar_type() == at::kLong && bits.is_contiguous() && bits.device().is_cpu(),
              "conv: bits must be a contiguous (N, H, W, words) int64 CPU tensor from pack");
  TORCH_CHECK(bits.size(3) == words_for(channels), "conv: bits hold ", bits.size(3), " words per pixel, ",
              channels, " channels need ", words_for(channels));
  TORCH_CHECK(kernel >= 1 && kernel * kernel <= kMaxTaps && kernel % 2 == 1 && stride >= 1,
              "conv: kernel must be odd with at most ", kMaxTaps, " taps, stride positive");
  TORCH_CHECK(weight_pop.dim() == 2 && weight_pop.size(1) == kernel * kernel &&
              weight_pop.scalar_type() == at::kInt && weight_pop.is_contiguous(),
              "conv: weight_pop must be (out_channels, taps) int32 from pack_weight");
  const int64_t tiles = (weight_pop.size(0) + kTileChannels - 1) / kTileChannels;
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == tiles && weight.size(1) == kernel * kernel * bits.size(3) &&
              weight.size(2) == kTileChannels && weight.scalar_type() == at::kLong && weight.is_contiguous(),
              "conv: weight does not match bits and weight_pop (use pack_weight)");
}

// Binary conv (zero padding kernel // 2) of packed bits, then PReLU(fma(dot * prescale, scale, shift)):
// a contiguous (N, O, Ho, Wo) float map.
at::Tensor conv(const at::Tensor& bits, const at::Tensor& weight, const at::Tensor& weight_pop,
                const at::Tensor& prescale, const at::Tensor& scale, const at::Tensor& shift,
                const at::Tensor& slope, int64_t channels, int64_t kernel, int64_t stride) {
  check_conv_inputs(bits, weight, weight_pop, channels, kernel, stride);
  const int64_t out_channels = weight_pop.size(0);
  check_vector(prescale, out_channels, "conv: prescale");
  check_vector(scale, out_channels, "conv: scale");
  check_vector(shift, out_channels, "conv: shift");
  check_vector(slope, out_channels, "conv: slope");
  const int64_t n = bits.size(0), h = bits.size(1), w = bits.size(2), pad = kernel / 2;
  const int64_t ho = (h + 2 * pad - kernel) / stride + 1, wo = (w + 2 * pad - kernel) / stride + 1;
  at::Tensor out = at::empty({n, out_channels, ho, wo}, bits.options().dtype(at::kFloat));
  const ConvArgs args{reinterpret_cast<const uint64_t*>(bits.data_ptr<int64_t>()),
                      reinterpret_cast<const uint64_t*>(weight.data_ptr<int64_t>()),
                      weight_pop.data_ptr<int32_t>(), prescale.data_ptr<float>(), scale.data_ptr<float>(),
                      shift.data_ptr<float>(),
                      slope.data_ptr<float>(), out.data_ptr<float>(), n, h, w, bits.size(3), channels,
                      out_channels, ho, wo, static_cast<int>(kernel), static_cast<int>(stride),
                      static_cast<int>(pad)};
  const int64_t tiles = (n * ho * wo + kTilePixels - 1) / kTilePixels;
  const int64_t per_chunk = chunk_channels(tiles, out_channels);
  const int64_t chunks = (out_channels + per_chunk - 1) / per_chunk;
  const int64_t buffer_words = kernel * kernel * bits.size(3) * kTilePixels;
  const ConvFn fn = active().conv;
  dynamic_for(tiles * chunks, chunk_for(tiles * chunks, 1), [&](int64_t begin, int64_t end) {
    fn(args, ConvWork{begin, end, chunks, per_chunk}, thread_scratch(buffer_words));
  });
  return out;
}

int32_t popcount_words(const uint64_t* words, int64_t n) {
  int32_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += __builtin_popcountll(words[i]);
  return count;
}

// +-1 weights (O, C, k, k) -> (packed (ceil(O/8), k*k*words, 8) int64, +1 count per tap (O, k*k) int32),
// in the layout the conv kernels stream: eight output channels interleaved per word. Packing the
// weight as an NCHW map of O images with k*k pixels gives its words tap-major, as the gather's.
std::tuple<at::Tensor, at::Tensor> pack_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3) && weight.scalar_type() == at::kFloat,
              "pack_weight: weight must be a float (O, C, k, k) tensor");
  const int64_t out_channels = weight.size(0), channels = weight.size(1), taps = weight.size(2) * weight.size(3);
  const int64_t words = words_for(channels), k_words = taps * words;
  const at::Tensor signs = weight.contiguous();
  const at::Tensor zero = at::zeros({channels}, weight.options());
  std::vector<uint64_t> bits(out_channels * k_words);
  const PackArgs args{signs.data_ptr<float>(), zero.data_ptr<float>(), bits.data(), channels, words, taps};
  isa_portable().pack(args, 0, out_channels * ((taps + kPackPixels - 1) / kPackPixels));
  const int64_t tiles = (out_channels + kTileChannels - 1) / kTileChannels;
  at::Tensor packed = at::zeros({tiles, k_words, kTileChannels}, weight.options().dtype(at::kLong));
  at::Tensor pop = at::empty({out_channels, taps}, weight.options().dtype(at::kInt));
  auto* dst = reinterpret_cast<uint64_t*>(packed.data_ptr<int64_t>());
  int32_t* counts = pop.data_ptr<int32_t>();
  for (int64_t o = 0; o < out_channels; ++o) {
    for (int64_t k = 0; k < k_words; ++k) {
      dst[(o / kTileChannels * k_words + k) * kTileChannels + o % kTileChannels] = bits[o * k_words + k];
    }
    for (int64_t t = 0; t < taps; ++t) counts[o * taps + t] = popcount_words(&bits[(o * taps + t) * words], words);
  }
  return {packed, pop};
}

// Binary MAC/s of the active ISA's inner kernel on L1-resident data, every thread running it:
// the ceiling the conv layers are measured against.
double peak(int64_t repeats) {
  constexpr int64_t kWords = 64;
  const int64_t threads = at::get_num_threads();
  const PeakFn fn = active().peak;
  std::vector<int64_t> sums(threads);
  auto run = [&](int64_t times) {
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      AlignedWords buffer(kWords * kTilePixels), weight(kWords * kTileChannels);
      uint64_t state = 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(begin + 1);
      auto next = [&state] { return state = state * 6364136223846793005ULL + 1; };  // any bits will do
      for (int64_t i = 0; i < kWords * kTilePixels; ++i) buffer.data()[i] = next();
      for (int64_t i = 0; i < kWords * kTileChannels; ++i) weight.data()[i] = next();
      for (int64_t t = begin; t < end; ++t) sums[t] = fn(times, buffer.data(), weight.data(), kWords);
    });
  };
  run(repeats / 10 + 1);
  const auto start = std::chrono::steady_clock::now();
  run(repeats);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(threads) * repeats * kWords * 64 * kTilePixels * kTileChannels / seconds;
}

}  // namespace
}  // namespace bitpacked

TORCH_LIBRARY(bicrossnet_bitpacked, m) {
  m.def("supported_isas", &bitpacked::supported_isas);
  m.def("active_isa", &bitpacked::active_isa);
  m.def("set_isa", &bitpacked::set_isa);
  m.def("pack", &bitpacked::pack);
  m.def("pack_weight", &bitpacked::pack_weight);
  m.def("conv", &bitpacked::conv);
  m.def("peak", &bitpacked::peak);
}

// The fused engine's full-precision tail (fused.h): its ISA follows the active binary kernels'.
namespace bitpacked {
namespace {

FusedIsa active_fused() {
  const std::string name = active().name;
#if defined(__x86_64__)
  if (name == "avx512") return fused_avx512();
  if (name == "avx2") return fused_avx2();
#endif
  return fused_portable();
}

void check_map(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
              what, " must be a contiguous 4-d float CPU tensor");
}

// (N, C) means of mix_x * pool(x) + mix_z * z over each plane: the SE gate's input.
at::Tensor tail_means(const at::Tensor& x, const at::Tensor& z, const at::Tensor& mix_x, const at::Tensor& mix_z) {
  check_map(x, "tail_means: x");
  check_map(z, "tail_means: z");
  const int64_t n = z.size(0), c = z.size(1);
  TORCH_CHECK(x.size(0) == n && x.size(1) == c, "tail_means: x and z must have the same images and channels");
  check_vector(mix_x, c, "tail_means: mix_x");
  check_vector(mix_z, c, "tail_means: mix_z");
  at::Tensor means = at::empty({n, c}, z.options());
  const MeansArgs args{x.data_ptr<float>(), z.data_ptr<float>(), mix_x.data_ptr<float>(), mix_z.data_ptr<float>(),
                       means.data_ptr<float>(), c, x.size(2) * x.size(3), z.size(2) * z.size(3)};
  const MeansFn fn = active_fused().means;
  const int64_t least = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, args.x_plane + args.z_plane));
  dynamic_for(n * c, chunk_for(n * c, least), [&](int64_t begin, int64_t end) { fn(args, begin, end); });
  return means;
}

// Writes the unit's output into channels [offset, offset + C) of `out` (see TailArgs: x is the
// unit's input, twice z's height and width where `pooled`); with a
// non-empty `move` (the next unit's LearnableBias) it also returns the output's packed signs, each
// pixel range packed right after it is written, while it is still in cache. Empty `slope`: none.
at::Tensor tail(const at::Tensor& z, const at::Tensor& x, const at::Tensor& gate, const at::Tensor& scale,
                const at::Tensor& shift, const at::Tensor& slope, bool elm, bool pooled, const at::Tensor& out,
                int64_t offset, const at::Tensor& move) {
  check_map(z, "tail: z");
  check_map(x, "tail: x");
  check_map(out, "tail: out");
  const int64_t factor = pooled ? 2 : 1;
  TORCH_CHECK(x.size(0) == z.size(0) && x.size(1) == z.size(1) && x.size(2) == factor * z.size(2) &&
              x.size(3) == factor * z.size(3), "tail: x must have z's images, channels and ", factor,
              "x its height and width");
  const int64_t n = z.size(0), c = z.size(1), plane = z.size(2) * z.size(3);
  TORCH_CHECK(out.size(0) == n && out.size(2) == z.size(2) && out.size(3) == z.size(3) && offset >= 0 &&
              offset + c <= out.size(1), "tail: out must hold channels [offset, offset + C) of z's maps");
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == n && gate.size(1) == c && gate.is_contiguous() &&
              gate.scalar_type() == at::kFloat, "tail: gate must be a contiguous (N, C) float tensor");
  check_vector(scale, c, "tail: scale");
  check_vector(shift, c, "tail: shift");
  if (slope.numel()) check_vector(slope, c, "tail: slope");
  const bool packs = move.numel() > 0;
  if (packs) {
    check_vector(move, c, "tail: move");
    TORCH_CHECK(offset == 0 && out.size(1) == c, "tail: packing needs the whole output map");
  }
  const TailArgs args{z.data_ptr<float>(), x.data_ptr<float>(), gate.data_ptr<float>(), scale.data_ptr<float>(),
                      shift.data_ptr<float>(), slope.numel() ? slope.data_ptr<float>() : nullptr,
                      out.data_ptr<float>(), c, plane, z.size(3), out.size(1), offset, elm, pooled};
  const int64_t words = words_for(c);
  at::Tensor bits = at::empty({packs ? n : 0, z.size(2), z.size(3), words}, z.options().dtype(at::kLong));
  const PackArgs pack_args{out.data_ptr<float>(), packs ? move.data_ptr<float>() : nullptr,
                           reinterpret_cast<uint64_t*>(bits.data_ptr<int64_t>()), c, words, plane};
  // Pixels per item: a multiple of the packing block, about 16K values of each map.
  const int64_t pixels = std::max<int64_t>(kPackPixels, 16384 / c / kPackPixels * kPackPixels);
  const int64_t per_image = (plane + pixels - 1) / pixels, blocks = (plane + kPackPixels - 1) / kPackPixels;
  const TailFn fn = active_fused().tail;
  const PackFn pack_fn = active().pack;
  dynamic_for(n * per_image, chunk_for(n * per_image, 1), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t image = item / per_image, p0 = item % per_image * pixels;
      const int64_t p1 = std::min(p0 + pixels, plane);
      fn(args, image, p0, p1);
      if (packs) {
        pack_fn(pack_args, image * blocks + p0 / kPackPixels, image * blocks + (p1 + kPackPixels - 1) / kPackPixels);
      }
    }
  });
  return bits;
}

}  // namespace
}  // namespace bitpacked

TORCH_LIBRARY_FRAGMENT(bicrossnet_bitpacked, m) {
  m.def("tail_means", &bitpacked::tail_means);
  m.def("tail", &bitpacked::tail);
}
