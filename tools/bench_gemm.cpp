// bench_gemm: micro-benchmark of the packed q8_0 / q4_x / q5_x / K-quant / f16 / bf16 matmul on one
// TinyLlama-1.1B layer's shapes (E 2048, F 5632, kv 256), the way the model
// calls them: q/k/v and gate/up through matmul_packed_multi, o and down
// through matmul_packed. Prints per shape the best of --reps runs in GOP/s
// (2 * multiply-adds per second; with 1 thread also per CPU second, which a
// shared machine disturbs less) and, for decode, the packed weight stream in
// GB/s. A checksum of the outputs guards against a benchmark that computes
// nothing.
//
//   bench_gemm [--tokens 1,64,512] [--reps 5] [--copies 8]
//              [--type q8_0|q4_0|q4_1|q5_0|q5_1|q4_K|q5_K|q6_K|f16|bf16]
//              [--bf16]   (also time the alternative: q8_0 dequantised to a
//                          bf16 copy per call + matmul() on it, i.e. oneDNN)
//              [--only qkv|o|gate+up|down] [--small]   (--help: all of them)
//              [--impl scalar|avx2|avx512|neon|neon_dotprod]   (quant::matmul_impl
//                          on the unpacked matrices instead of the packed path:
//                          one ISA's block dots, e.g. AVX2 on an AVX-512 machine)
//   bench_gemm --peak   the kernels' ceilings: per thread, 12 independent
//                       vpdpbusd chains alone and with each kernel family's
//                       scaling ops per 8 of them (AVX-512 VNNI only), and
//                       vdpbf16ps (where AVX512-BF16 exists)
// Threads: OMP_NUM_THREADS. Decode (<= 4 tokens) runs the ops in the model's
// order through --copies copies of the layer, so the weights come from memory.
#include <CLI/CLI.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "quant/blocks.h"
#include "quant/quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace q = defkv::quant;

namespace {

struct Mat {
  std::vector<uint8_t> bytes;  // [rows, cols] in type
  q::Matrix m;
  q::Packed p;
};

Mat make(q::DType t, size_t rows, size_t cols, std::mt19937& rng, bool pack) {
  Mat a;
  a.bytes.resize(rows * q::row_bytes(t, cols));
  uint64_t st = rng() | 1;  // xorshift: matrix set-up must not dominate a profile
  auto next = [&st] { st ^= st << 13; st ^= st >> 7; st ^= st << 17; return st; };
  if (t == q::DType::q8_0) {
    auto* b = reinterpret_cast<q::BlockQ8_0*>(a.bytes.data());
    for (size_t i = 0; i < rows * cols / q::kQ8_0Block; ++i) {
      b[i].d = uint16_t(0x2000 + next() % 0x400);  // fp16 ~ 0.008 .. 0.016
      for (auto& v : b[i].qs) v = int8_t(int(next() % 255) - 127);
    }
  } else if (q::block_elems(t) > 1) {
    // random quants and scales; the fp16 block scales ~ 0.008 .. 0.016 keep the outputs finite
    for (auto& v : a.bytes) v = uint8_t(next());
    const size_t nblk = rows * cols / q::block_elems(t);
    for (size_t i = 0; i < nblk; ++i) {
      auto scale = [&](size_t off) {
        const uint16_t h = uint16_t(0x2000 + next() % 0x400);
        std::memcpy(a.bytes.data() + i * q::block_bytes(t) + off, &h, 2);
      };
      if (t == q::DType::q4_0 || t == q::DType::q5_0) scale(0);
      else if (t == q::DType::q4_1 || t == q::DType::q5_1 || t == q::DType::q4_K || t == q::DType::q5_K) { scale(0); scale(2); }
      else scale(offsetof(q::BlockQ6_K, d));
    }
  } else {
    std::vector<float> row(cols);
    for (size_t r = 0; r < rows; ++r) {
      for (auto& v : row) v = float(int(next() % 2001) - 1000) * 2e-5f;
      q::from_f32(t, row.data(), a.bytes.data() + r * q::row_bytes(t, cols), cols);
    }
  }
  a.m = q::Matrix{t, a.bytes.data(), rows, cols};
  if (pack) a.p = q::pack_for_gemm(a.m);
  return a;
}

double cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

#if defined(__x86_64__)
// The issue-rate ceiling of the int8 kernels: 12 independent vpdpbusd chains
// (enough to hide the latency), inputs loaded from a small L1 buffer that
// changes every iteration so nothing is loop-invariant. Mix 0: vpdpbusd only.
// Mix 1: per chain and 8 vpdpbusd, the Q8_0 / Q4_0 block epilogue (cvtdq2ps,
// mulps, fmadd). Mix 2: the K-quant sub-block epilogue (pmulld, paddd).
// Returns vpdpbusd per second on this thread.
// GCC 12 flags the _mm512_undefined_ps inside its conversion intrinsics as
// uninitialised when they are inlined into a target("...") function.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int Mix>
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) double vnni_rate(long iters, const int32_t* buf,
                                                                                    float* sink) {
  constexpr int C = 12;
  __m512i acc[C];
  __m512 facc[C];
  for (int i = 0; i < C; ++i) {
    acc[i] = _mm512_set1_epi32(i);
    facc[i] = _mm512_setzero_ps();
  }
  const __m512i sc = _mm512_set1_epi32(5);
  const __m512 dw = _mm512_set1_ps(0.5f);
  const double t0 = now_s();
  for (long it = 0; it < iters; ++it) {
    const int32_t* b = buf + (it & 15) * 16;
    const __m512i w0 = _mm512_loadu_si512(b), w1 = _mm512_loadu_si512(b + 256);
    __m512i d[C];
    for (int i = 0; i < C; ++i) d[i] = Mix == 0 ? acc[i] : _mm512_set1_epi32(b[i]);
    for (int k = 0; k < 8; ++k) {
      const __m512i x = _mm512_set1_epi32(b[k + 4]);
      for (int i = 0; i < C; ++i) d[i] = _mm512_dpbusd_epi32(d[i], i % 2 ? w1 : w0, x);
    }
    for (int i = 0; i < C; ++i) {
      if constexpr (Mix == 0) acc[i] = d[i];
      else if constexpr (Mix == 1)
        facc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[i]), _mm512_mul_ps(dw, _mm512_set1_ps(float(b[i]))), facc[i]);
      else acc[i] = _mm512_add_epi32(acc[i], _mm512_mullo_epi32(d[i], sc));
    }
  }
  const double s = now_s() - t0;
  __m512 t = _mm512_setzero_ps();
  for (int i = 0; i < C; ++i) t = _mm512_add_ps(t, _mm512_add_ps(facc[i], _mm512_cvtepi32_ps(acc[i])));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, t);
  for (float v : lanes) *sink += v;
  return double(iters) * 8 * C / s;
}
#pragma GCC diagnostic pop

// The same for vdpbf16ps (the f16 / bf16 prefill kernel's instruction): 12
// chains, 32 multiply-adds per zmm instruction. Returns instructions per second.
__attribute__((target("avx512f,avx512bf16"), noinline)) double bf16_rate(long iters, const int32_t* buf, float* sink) {
  constexpr int C = 12;
  __m512 acc[C];
  for (int i = 0; i < C; ++i) acc[i] = _mm512_set1_ps(float(i));
  const double t0 = now_s();
  for (long it = 0; it < iters; ++it) {
    const int32_t* b = buf + (it & 15) * 16;
    const __m512bh w0 = __m512bh(_mm512_loadu_si512(b)), w1 = __m512bh(_mm512_loadu_si512(b + 256));
    for (int k = 0; k < 8; ++k) {
      const __m512bh x = __m512bh(_mm512_set1_epi32(b[k + 4]));
      for (int i = 0; i < C; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], i % 2 ? w1 : w0, x);
    }
  }
  const double s = now_s() - t0;
  alignas(64) float lanes[16];
  __m512 t = _mm512_setzero_ps();
  for (int i = 0; i < C; ++i) t = _mm512_add_ps(t, acc[i]);
  _mm512_store_ps(lanes, t);
  for (float v : lanes) *sink += v;
  return double(iters) * 8 * C / s;
}

// Best of 5 of the summed per-thread rates of rate(buf, &sink), every thread
// on its own buffer of 1024 words filled by fill(i).
template <class Fill, class Rate>
double best_rate(int nt, Fill fill, Rate rate) {
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    double sum = 0;
#pragma omp parallel num_threads(nt) reduction(+ : sum)
    {
      std::vector<int32_t> buf(1024);
      for (size_t i = 0; i < buf.size(); ++i) buf[i] = fill(i);
      float sink = 0;
      sum += rate(buf.data(), &sink) + (sink == 1.2345f ? 1 : 0);
    }
    best = std::max(best, sum);
  }
  return best;
}

int run_peak() {
  if (!__builtin_cpu_supports("avx512vnni")) {
    std::fprintf(stderr, "bench_gemm --peak: this CPU has no AVX-512 VNNI\n");
    return 1;
  }
  const int nt = omp_get_max_threads();
  constexpr long kIters = 20000000;
  std::printf("bench_gemm --peak: %d threads, 12 independent zmm chains per thread, best of 5\n", nt);
  const auto bytes = [](size_t i) { return int32_t(i * 2654435761u); };
  const struct {
    const char* name;
    double (*rate)(long, const int32_t*, float*);
  } mixes[3] = {{"vpdpbusd alone", &vnni_rate<0>},
                {"+ q8_0/q4_0 block scaling (cvt, mul, fma per 8)", &vnni_rate<1>},
                {"+ K-quant sub-block scaling (pmulld, paddd per 8)", &vnni_rate<2>}};
  for (const auto& m : mixes) {
    const double best = best_rate(nt, bytes, [&](const int32_t* b, float* sink) { return m.rate(kIters, b, sink); });
    // 64 multiply-adds = 128 ops per zmm vpdpbusd
    std::printf("  %-52s %6.2f G/s  %7.1f GOP/s (%.1f per thread)\n", m.name, best * 1e-9, best * 128e-9,
                best * 128e-9 / nt);
  }
  if (__builtin_cpu_supports("avx512bf16")) {
    const double best = best_rate(
        nt, [](size_t i) { return int32_t(0x3f803f80u + i); },  // bf16 pairs near 1
        [](const int32_t* b, float* sink) { return bf16_rate(kIters, b, sink); });
    // 32 multiply-adds = 64 FLOP per zmm vdpbf16ps
    std::printf("  %-52s %6.2f G/s  %7.1f GFLOP/s (%.1f per thread)\n", "vdpbf16ps alone (f16 / bf16 prefill)",
                best * 1e-9, best * 64e-9, best * 64e-9 / nt);
  }
  return 0;
}
#else
int run_peak() {
  std::fprintf(stderr, "bench_gemm --peak: x86-64 with AVX-512 VNNI only\n");
  return 1;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  std::vector<size_t> tokens = {1, 64, 512};
  size_t E = 2048, F = 5632, KV = 256;
  int reps = 5;
  size_t copies = 8;
  bool bf16 = false;
  std::string only;  // run one op only (qkv | o | gate+up | down)
  std::string type_name = "q8_0";
  bool small = false;
  bool peak = false;
  std::string impl_name;  // empty: the packed path
  CLI::App app{"Micro-benchmark of the packed q8_0 / q4_0 / q4_1 / q5_0 / q5_1 / q4_K / q5_K / q6_K / f16 matmul on one TinyLlama-1.1B layer's shapes "
               "(threads: OMP_NUM_THREADS)"};
  app.add_option("--tokens", tokens, "Token counts, comma-separated")->delimiter(',')->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "Best of this many runs")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--copies", copies, "Copies of the layer decode streams through (weights from memory)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--type", type_name, "Weight type")
      ->check(CLI::IsMember({"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_K", "q5_K", "q6_K", "f16", "bf16"}))
      ->capture_default_str();
  app.add_flag("--bf16", bf16, "Also time q8_0 dequantised to a bf16 copy per call + matmul() (oneDNN)");
  app.add_option("--only", only, "Run one op only")->check(CLI::IsMember({"qkv", "o", "gate+up", "down"}));
  app.add_flag("--small", small, "L2-resident shapes (E 256, F 512, kv 32): the kernel alone");
  app.add_flag("--peak", peak,
               "Measure the vpdpbusd issue rate (the int8 kernels' ceiling) per thread, alone and with the "
               "kernels' scaling ops, instead of the matmuls");
  app.add_option("--impl", impl_name,
                 "Run quant::matmul_impl with this implementation on the unpacked matrices instead of the packed path")
      ->check(CLI::IsMember({"scalar", "avx2", "avx512", "neon", "neon_dotprod"}));
  CLI11_PARSE(app, argc, argv);
  if (peak) return run_peak();
  bool use_impl = false;
  q::MatmulImpl impl = q::MatmulImpl::scalar;
  if (!impl_name.empty()) {
    q::MatmulImpl avail[8];
    const size_t n_avail = q::available_matmul_impls(avail, 8);
    for (size_t i = 0; i < n_avail; ++i)
      if (impl_name == q::matmul_impl_name(avail[i])) impl = avail[i], use_impl = true;
    if (!use_impl) {
      std::fprintf(stderr, "bench_gemm: --impl %s is not available on this machine/build\n", impl_name.c_str());
      return 1;
    }
  }
  if (small) { E = 256; F = 512; KV = 32; }
  q::DType type = q::DType::q8_0;
  q::parse_dtype(type_name, &type);  // one of the checked names
  std::mt19937 rng(7);
  // per copy: q k v o gate up down
  const size_t shapes[7][2] = {{E, E}, {KV, E}, {KV, E}, {E, E}, {F, E}, {F, E}, {E, F}};
  std::vector<std::vector<Mat>> layers;
  const size_t max_tok = *std::max_element(tokens.begin(), tokens.end());
  const size_t n_copies = max_tok == 1 || std::count(tokens.begin(), tokens.end(), size_t(1)) ? copies : 1;
  for (size_t l = 0; l < n_copies; ++l) {
    layers.emplace_back();
    for (auto& s : shapes) layers.back().push_back(make(type, s[0], s[1], rng, !use_impl));
  }
  std::printf("bench_gemm: %s, %s, %d threads, best of %d\n", q::dtype_name(type),
              use_impl ? (std::string("matmul_impl ") + impl_name).c_str() : "packed", omp_get_max_threads(), reps);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(max_tok * F);
  for (auto& v : x) v = nd(rng);
  std::vector<float> y(max_tok * F * 2);
  std::vector<uint16_t> wbf;  // bf16 scratch for --bf16
  std::vector<float> rowf;

  struct Op { const char* name; int first; int n; };
  const Op ops[] = {{"qkv", 0, 3}, {"o", 3, 1}, {"gate+up", 4, 2}, {"down", 6, 1}};
  auto run_op = [&](const Op& op, size_t l, size_t nt) {
    const auto& L = layers[l];
    if (use_impl) {
      float* yo = y.data();
      for (int i = 0; i < op.n; ++i) {
        const q::Matrix& m = L[size_t(op.first + i)].m;
        q::matmul_impl(impl, m, x.data(), yo, nt, m.rows);
        yo += nt * m.rows;
      }
    } else if (op.n == 1) {
      q::matmul_packed(L[size_t(op.first)].p, x.data(), y.data(), nt, L[size_t(op.first)].m.rows);
    } else {
      q::PackedProduct pr[3];
      float* yo = y.data();
      for (int i = 0; i < op.n; ++i) {
        const auto& M = L[size_t(op.first + i)];
        pr[i] = {&M.p, yo, M.m.rows};
        yo += nt * M.m.rows;
      }
      q::matmul_packed_multi(pr, size_t(op.n), x.data(), nt);
    }
  };
  const bool one_thread = omp_get_max_threads() == 1;  // process CPU time is exact only then
  for (size_t nt : tokens) {
    if (nt <= 4 && only.empty()) {
      // Decode in the model's order (every op of copy 0, then copy 1, ...):
      // between two uses of one matrix all copies' weights pass (n_copies *
      // ~47 MB), so even the small matrices come from memory, not the L3.
      double best_op[4] = {1e30, 1e30, 1e30, 1e30}, best_layer = 1e30;
      for (const Op& op : ops) run_op(op, 0, nt);
      for (int r = 0; r < reps; ++r) {
        double per_op[4] = {0, 0, 0, 0};
        const double t_layer = now_s();
        for (size_t l = 0; l < n_copies; ++l)
          for (int k = 0; k < 4; ++k) {
            const double t0 = now_s();
            run_op(ops[k], l, nt);
            per_op[k] += now_s() - t0;
          }
        best_layer = std::min(best_layer, (now_s() - t_layer) / double(n_copies));
        for (int k = 0; k < 4; ++k) best_op[k] = std::min(best_op[k], per_op[k] / double(n_copies));
      }
      double layer_bytes = 0;
      for (int k = 0; k < 4; ++k) {
        double bytes = 0;
        for (int i = ops[k].first; i < ops[k].first + ops[k].n; ++i) {
          const q::Matrix& m = layers[0][size_t(i)].m;
          bytes += double(m.rows * q::row_bytes(type, m.cols));
        }
        layer_bytes += bytes;
        std::printf("  tokens %4zu %-8s %8.3f ms  %6.1f GB/s (weights from memory, model order)\n", nt, ops[k].name,
                    best_op[k] * 1e3, bytes / best_op[k] * 1e-9);
      }
      std::printf("  tokens %4zu layer    %8.3f ms  %6.1f GB/s\n", nt, best_layer * 1e3, layer_bytes / best_layer * 1e-9);
      continue;
    }
    double total_s = 0, total_ops = 0, total_bytes = 0;
    double total_bf_s = 0, total_cpu_s = 0;
    for (const Op& op : ops) {
      if (!only.empty() && only != op.name) continue;
      double macs = 0, bytes = 0;
      for (int i = op.first; i < op.first + op.n; ++i) {
        const q::Matrix& m = layers[0][size_t(i)].m;
        macs += double(m.rows) * double(m.cols) * double(nt);
        bytes += double(m.rows * q::row_bytes(type, m.cols));
      }
      const size_t cols = layers[0][size_t(op.first)].m.cols;
      const size_t nl = nt == 1 ? n_copies : 1;
      auto run_once = [&](size_t l) { run_op(op, l, nt); };
      run_once(0);
      double best = 1e30, best_cpu = 1e30;
      for (int r = 0; r < reps; ++r) {
        const double t0 = now_s(), c0 = cpu_s();
        for (size_t l = 0; l < nl; ++l) run_once(l);
        best = std::min(best, (now_s() - t0) / double(nl));
        best_cpu = std::min(best_cpu, (cpu_s() - c0) / double(nl) / double(omp_get_max_threads()));
      }
      double sum = 0;
      for (size_t i = 0; i < nt * layers[0][size_t(op.first)].m.rows; i += 7) sum += y[i];
      std::printf("  tokens %4zu %-8s %8.3f ms  %7.1f GOP/s", nt, op.name, best * 1e3, 2 * macs / best * 1e-9);
      if (one_thread) std::printf(" (cpu-time %7.1f)", 2 * macs / best_cpu * 1e-9);
      if (nt <= 4) std::printf("  %6.1f GB/s", bytes / best * 1e-9);
      (void)cols;
      // Alternative: dequantise to bf16 into a reused scratch per call, then
      // matmul() on the bf16 matrix (oneDNN from 32 tokens).
      if (bf16 && type == q::DType::q8_0 && nt >= 32) {
        double best_bf = 1e30, best_conv = 1e30;
        for (int r = 0; r < reps; ++r) {
          const double t0 = now_s();
          float* yo = y.data();
          double conv = 0;
          for (int i = op.first; i < op.first + op.n; ++i) {
            const q::Matrix& m = layers[0][size_t(i)].m;
            const double c0 = now_s();
            wbf.resize(m.rows * m.cols);
            const auto nr = static_cast<long long>(m.rows);
#pragma omp parallel for schedule(static)
            for (long long rr = 0; rr < nr; ++rr) {
              thread_local std::vector<float> tmp;
              tmp.resize(m.cols);
              q::to_f32(q::DType::q8_0, static_cast<const uint8_t*>(m.data) + size_t(rr) * q::row_bytes(m.type, m.cols),
                        tmp.data(), m.cols);
              q::from_f32(q::DType::bf16, tmp.data(), wbf.data() + size_t(rr) * m.cols, m.cols);
            }
            conv += now_s() - c0;
            const q::Matrix mb{q::DType::bf16, wbf.data(), m.rows, m.cols};
            q::matmul(mb, x.data(), yo, nt, m.rows);
            yo += nt * m.rows;
          }
          best_bf = std::min(best_bf, now_s() - t0);
          best_conv = std::min(best_conv, conv);
        }
        total_bf_s += best_bf;
        std::printf("  | bf16 %8.3f ms %7.1f GOP/s (convert %.3f ms)", best_bf * 1e3, 2 * macs / best_bf * 1e-9,
                    best_conv * 1e3);
      }
      std::printf("  [sum %.4g]\n", sum);
      total_s += best;
      total_cpu_s += best_cpu;
      total_ops += 2 * macs;
      total_bytes += bytes;
    }
    std::printf("  tokens %4zu layer    %8.3f ms  %7.1f GOP/s", nt, total_s * 1e3, total_ops / total_s * 1e-9);
    if (one_thread) std::printf(" (cpu-time %7.1f)", total_ops / total_cpu_s * 1e-9);
    if (nt <= 4) std::printf("  %6.1f GB/s", total_bytes / total_s * 1e-9);
    if (total_bf_s > 0) std::printf("  | bf16 %7.1f GOP/s", total_ops / total_bf_s * 1e-9);
    std::printf("\n");
  }
  return 0;
}
