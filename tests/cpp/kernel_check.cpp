// Checks every instruction-set path of the bit-packed engine that this CPU runs against a direct
// reference computed here, bit for bit: packing (bit c % 64 of word c / 64 is x + bias >= 0) and
// the binary convolution with its output transform, PReLU(fma(dot * prescale, scale, shift)).
//
// Torch-free: it links the kernel sources and isa.cpp only (models/bitpacked/csrc/kernels.h), so it
// builds with a cross compiler and runs under qemu-aarch64; tests/test_arm_build.py drives it.
// Usage: kernel_check [ISA...]; exits 1 on the first mismatch, 2 if a named ISA is not among the
// CPU's paths.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels.h"

namespace {

using bitpacked::ConvArgs;
using bitpacked::ConvWork;
using bitpacked::Isa;
using bitpacked::kPackPixels;
using bitpacked::kTileChannels;
using bitpacked::kTilePixels;
using bitpacked::PackArgs;

using Rng = std::mt19937_64;

int64_t uniform(Rng& rng, int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

// Values on a 0.1 grid, so that x + bias is exactly zero now and then (sign(0) = +1).
std::vector<float> grid(Rng& rng, int64_t n, float spread) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> v(n);
  for (float& x : v) x = std::round(normal(rng) * 10.0f) / 10.0f;
  return v;
}

// [0, n) cut into 1 to 4 consecutive ranges at random points: the kernels must not care how
// torch's threads split their work.
std::vector<std::pair<int64_t, int64_t>> split(Rng& rng, int64_t n) {
  std::vector<int64_t> cuts{0, n};
  for (int64_t i = uniform(rng, 0, 3); i > 0 && n > 1; --i) cuts.push_back(uniform(rng, 1, n - 1));
  std::sort(cuts.begin(), cuts.end());
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    if (cuts[i] < cuts[i + 1]) ranges.emplace_back(cuts[i], cuts[i + 1]);
  }
  return ranges;
}

int64_t words_for(int64_t channels) { return (channels + 63) / 64; }

// x: (images, channels, plane) -> (images, plane, words), the layout PackArgs documents.
std::vector<uint64_t> reference_pack(const std::vector<float>& x, const std::vector<float>& bias, int64_t images,
                                     int64_t channels, int64_t plane) {
  const int64_t words = words_for(channels);
  std::vector<uint64_t> bits(images * plane * words, 0);
  for (int64_t n = 0; n < images; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t p = 0; p < plane; ++p) {
        if (x[(n * channels + c) * plane + p] + bias[c] >= 0.0f) {
          bits[(n * plane + p) * words + c / 64] |= 1ULL << (c % 64);
        }
      }
    }
  }
  return bits;
}

std::vector<uint64_t> isa_pack(const Isa& isa, Rng& rng, const std::vector<float>& x, const std::vector<float>& bias,
                               int64_t images, int64_t channels, int64_t plane) {
  const int64_t words = words_for(channels);
  std::vector<uint64_t> bits(images * plane * words, 0x5A5A5A5A5A5A5A5AULL);  // every word must be written
  const PackArgs args{x.data(), bias.data(), bits.data(), channels, words, plane};
  for (auto [begin, end] : split(rng, images * ((plane + kPackPixels - 1) / kPackPixels))) isa.pack(args, begin, end);
  return bits;
}

bool check_pack(const Isa& isa, Rng& rng, int64_t images, int64_t channels, int64_t plane) {
  const std::vector<float> x = grid(rng, images * channels * plane, 1.0f), bias = grid(rng, channels, 0.3f);
  const std::vector<uint64_t> want = reference_pack(x, bias, images, channels, plane);
  const std::vector<uint64_t> got = isa_pack(isa, rng, x, bias, images, channels, plane);
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i] != want[i]) {
      std::printf("%s pack images=%lld channels=%lld plane=%lld: word %zu is %016llx, expected %016llx\n", isa.name,
                  (long long)images, (long long)channels, (long long)plane, i, (unsigned long long)got[i],
                  (unsigned long long)want[i]);
      return false;
    }
  }
  return true;
}

struct ConvCase {
  int64_t batch, channels, out_channels, height, width;
  int kernel, stride;
  bool saturated;  // all activations +1, all weights -1: every XOR bit set, byte counts at their largest
};

struct ConvData {
  std::vector<float> x, bias;             // (batch, channels, height, width), channels
  std::vector<int8_t> weight;             // (out_channels, channels, kernel, kernel) of +-1
  std::vector<float> prescale, scale, shift, slope;
};

ConvData conv_data(Rng& rng, const ConvCase& c, bool unit_transform) {
  ConvData d;
  const int64_t taps = c.kernel * c.kernel;
  d.x = grid(rng, c.batch * c.channels * c.height * c.width, 1.0f);
  d.bias = grid(rng, c.channels, 0.3f);
  d.weight.resize(c.out_channels * c.channels * taps);
  for (int8_t& w : d.weight) w = c.saturated || uniform(rng, 0, 1) ? -1 : 1;
  if (c.saturated) {
    for (float& v : d.x) v = std::fabs(v);
    for (float& v : d.bias) v = 0.0f;
  }
  std::uniform_real_distribution<float> positive(0.25f, 2.0f), centred(-2.0f, 2.0f);
  for (int64_t o = 0; o < c.out_channels; ++o) {
    d.prescale.push_back(unit_transform ? 1.0f : positive(rng));
    d.scale.push_back(unit_transform ? 1.0f : centred(rng));
    d.shift.push_back(unit_transform ? 0.0f : centred(rng) * 10.0f);
    d.slope.push_back(unit_transform ? 1.0f : centred(rng) / 4.0f);
  }
  return d;
}

// The weight layout of ConvArgs: (out_channels / 8, taps * words, 8), and +1 weights per tap.
void pack_weight(const ConvCase& c, const ConvData& d, std::vector<uint64_t>& packed, std::vector<int32_t>& pop) {
  const int taps = c.kernel * c.kernel;
  const int64_t words = words_for(c.channels), k_words = taps * words;
  packed.assign((c.out_channels + kTileChannels - 1) / kTileChannels * k_words * kTileChannels, 0);
  pop.assign(c.out_channels * taps, 0);
  for (int64_t o = 0; o < c.out_channels; ++o) {
    for (int t = 0; t < taps; ++t) {
      for (int64_t ch = 0; ch < c.channels; ++ch) {
        if (d.weight[(o * c.channels + ch) * taps + t] < 0) continue;
        const int64_t k = t * words + ch / 64;
        packed[(o / kTileChannels * k_words + k) * kTileChannels + o % kTileChannels] |= 1ULL << (ch % 64);
        ++pop[o * taps + t];
      }
    }
  }
}

float transform(int64_t dot, const ConvData& d, int64_t o) {
  const float y = std::fma(static_cast<float>(dot) * d.prescale[o], d.scale[o], d.shift[o]);
  return y > 0.0f ? y : y * d.slope[o];
}

int64_t out_size(const ConvCase& c, int64_t size) { return (size + 2 * (c.kernel / 2) - c.kernel) / c.stride + 1; }

// Direct convolution of the +-1 signs with zero padding: the dot product, then the transform.
std::vector<float> reference_conv(const ConvCase& c, const ConvData& d) {
  const int64_t ho = out_size(c, c.height), wo = out_size(c, c.width), pad = c.kernel / 2;
  std::vector<int8_t> s(d.x.size());
  for (size_t i = 0; i < s.size(); ++i) s[i] = d.x[i] + d.bias[i / (c.height * c.width) % c.channels] >= 0.0f ? 1 : -1;
  std::vector<float> out(c.batch * c.out_channels * ho * wo);
  for (int64_t n = 0; n < c.batch; ++n) {
    for (int64_t o = 0; o < c.out_channels; ++o) {
      for (int64_t y = 0; y < ho; ++y) {
        for (int64_t x = 0; x < wo; ++x) {
          int64_t dot = 0;
          for (int ky = 0; ky < c.kernel; ++ky) {
            for (int kx = 0; kx < c.kernel; ++kx) {
              const int64_t iy = y * c.stride - pad + ky, ix = x * c.stride - pad + kx;
              if (iy < 0 || iy >= c.height || ix < 0 || ix >= c.width) continue;
              for (int64_t ch = 0; ch < c.channels; ++ch) {
                dot += s[((n * c.channels + ch) * c.height + iy) * c.width + ix] *
                       d.weight[((o * c.channels + ch) * c.kernel + ky) * c.kernel + kx];
              }
            }
          }
          out[((n * c.out_channels + o) * ho + y) * wo + x] = transform(dot, d, o);
        }
      }
    }
  }
  return out;
}

// 64-byte aligned scratch, filled with garbage: the kernels must write every word they read.
struct Scratch {
  std::vector<uint64_t> storage;
  uint64_t* data;
  explicit Scratch(int64_t n) : storage(n + 8, 0xC3C3C3C3C3C3C3C3ULL) {
    const auto p = reinterpret_cast<uintptr_t>(storage.data());
    data = reinterpret_cast<uint64_t*>((p + 63) & ~static_cast<uintptr_t>(63));
  }
};

// The conv as ops.cpp runs it: pixel tiles x chunks of output channels, split into work ranges.
std::vector<float> isa_conv(const Isa& isa, Rng& rng, const ConvCase& c, const ConvData& d) {
  const int64_t ho = out_size(c, c.height), wo = out_size(c, c.width), words = words_for(c.channels);
  std::vector<uint64_t> act = isa_pack(isa, rng, d.x, d.bias, c.batch, c.channels, c.height * c.width);
  std::vector<uint64_t> weight;
  std::vector<int32_t> pop;
  pack_weight(c, d, weight, pop);
  std::vector<float> out(c.batch * c.out_channels * ho * wo, std::nanf(""));
  const ConvArgs args{act.data(), weight.data(), pop.data(), d.prescale.data(), d.scale.data(), d.shift.data(),
                      d.slope.data(), out.data(), c.batch, c.height, c.width, words, c.channels, c.out_channels,
                      ho, wo, c.kernel, c.stride, c.kernel / 2};
  const int64_t tiles = (c.batch * ho * wo + kTilePixels - 1) / kTilePixels;
  const int64_t channel_tiles = (c.out_channels + kTileChannels - 1) / kTileChannels;
  const int64_t per_chunk = uniform(rng, 1, channel_tiles) * kTileChannels;
  const int64_t chunks = (c.out_channels + per_chunk - 1) / per_chunk;
  for (auto [begin, end] : split(rng, tiles * chunks)) {
    Scratch buffer(c.kernel * c.kernel * words * kTilePixels);
    isa.conv(args, ConvWork{begin, end, chunks, per_chunk}, buffer.data);
  }
  return out;
}

bool check_conv(const Isa& isa, Rng& rng, const ConvCase& c, bool unit_transform) {
  const ConvData d = conv_data(rng, c, unit_transform);
  const std::vector<float> want = reference_conv(c, d), got = isa_conv(isa, rng, c, d);
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      std::printf("%s conv batch=%lld channels=%lld out=%lld map=%lldx%lld kernel=%d stride=%d%s%s: output %zu is "
                  "%.9g, expected %.9g\n", isa.name, (long long)c.batch, (long long)c.channels,
                  (long long)c.out_channels, (long long)c.height, (long long)c.width, c.kernel, c.stride,
                  c.saturated ? " saturated" : "", unit_transform ? " unit transform" : "", i, got[i], want[i]);
      return false;
    }
  }
  return true;
}

// Every binary conv shape of BNext-T (input channels, kernel, stride) on maps whose tiles span two
// images and end short, then odd widths, kernels and maps, larger maps with interior tiles, and
// saturated counts over more than 31 words (the byte accumulators' limit).
std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> cases;
  const int bnext_tiny[][3] = {{32, 1, 1},   {64, 1, 1},  {128, 1, 1}, {256, 1, 1}, {512, 1, 1},
                               {1024, 1, 1}, {32, 3, 1},  {128, 3, 1}, {256, 3, 1}, {512, 3, 1},
                               {1024, 3, 1}, {64, 3, 2},  {128, 3, 2}, {256, 3, 2}, {512, 3, 2}};
  for (const auto& s : bnext_tiny) {
    const int64_t size = s[2] == 1 ? 5 : 6, out = (s[0] < 64 ? s[0] : 64) + 5;
    cases.push_back({2, s[0], out, size, size, s[1], s[2], false});
  }
  const ConvCase odd[] = {
      {2, 100, 20, 7, 7, 3, 1, false}, {2, 3, 5, 7, 7, 3, 2, false},   {2, 64, 13, 6, 6, 5, 1, false},
      {2, 130, 8, 1, 1, 1, 1, false},  {2, 32, 16, 1, 1, 3, 1, false},  {1, 1, 9, 5, 4, 3, 2, false},
      {2, 65, 11, 9, 7, 1, 2, false},  {1, 127, 17, 8, 5, 3, 2, false}, {1, 129, 8, 3, 10, 3, 1, false},
      {2, 63, 24, 13, 11, 3, 1, false}, {1, 96, 19, 15, 9, 3, 2, false}, {1, 33, 8, 16, 16, 1, 1, false},
      {1, 256, 16, 4, 4, 3, 1, true},  {1, 2112, 8, 3, 3, 1, 1, true},  {1, 96, 12, 5, 5, 5, 1, true},
      {2, 1, 3, 4, 4, 3, 1, true}};
  cases.insert(cases.end(), std::begin(odd), std::end(odd));
  return cases;
}

// (images, channels, plane): odd channel counts around word and half-word edges, planes that end
// inside a vector, a block and a run of kRunBlocks blocks.
const int64_t kPackCases[][3] = {{2, 1, 1},   {1, 3, 7},    {2, 31, 17},  {1, 32, 16},   {2, 33, 5},   {1, 64, 1030},
                                 {2, 65, 33}, {1, 100, 49}, {1, 130, 3},  {2, 1024, 25}, {1, 7, 2049}, {3, 200, 18}};

int check_isa(const Isa& isa) {
  Rng rng(2026);
  int checks = 0;
  for (const auto& p : kPackCases) {
    if (!check_pack(isa, rng, p[0], p[1], p[2])) return -1;
    ++checks;
  }
  for (const ConvCase& c : conv_cases()) {
    for (bool unit : {true, false}) {
      if (!check_conv(isa, rng, c, unit)) return -1;
      ++checks;
    }
  }
  return checks;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<Isa> isas = bitpacked::cpu_isas();
  for (int i = 1; i < argc; ++i) {
    bool found = false;
    for (const Isa& isa : isas) found = found || argv[i] == std::string(isa.name);
    if (!found) {
      std::printf("this CPU does not run the %s path\n", argv[i]);
      return 2;
    }
  }
  for (const Isa& isa : isas) {
    const int checks = check_isa(isa);
    if (checks < 0) return 1;
    std::printf("%s: %d pack and conv cases match the reference\n", isa.name, checks);
  }
  return 0;
}
