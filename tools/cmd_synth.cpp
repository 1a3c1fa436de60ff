// defkv synth: write a GGUF (llama, qwen2, qwen3, phi3 or gemma3) with a real model's
// shapes and random weights (for benchmarks of models that are not available offline).
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "quant/quant.h"
#include "tools/commands.h"
#include "tools/flag_checks.h"
#include "tools/synth.h"

namespace defkv::cli {

namespace {

struct SynthArgs {
  std::string out;
  std::string shape;
  uint32_t dim = 0, layers = 0, heads = 0, kv_heads = 0, ffn = 0, vocab = 0, ctx = 0;
  uint32_t head_dim = 0;
  float rope_base = 0, rms_eps = 0;
  bool tied = false, untied = false;
  std::string type = "q8_0";
  uint64_t seed = 1;
  std::string vocab_from;
  bool synthetic_vocab = false;
  bool list = false;
  bool quiet = false;
  int threads = 0;
};

std::string shapes_help() {
  std::string s;
  for (const auto& sh : tools::known_shapes()) {
    char line[256];
    std::snprintf(line, sizeof line,
                  "  %-15s %-6s dim %4u  layers %2u  heads %2u/%u kv  head dim %3u  ffn %4u  "
                  "vocab %6u  ctx %5u  rope %g%s\n",
                  sh.name.c_str(), sh.arch.c_str(), sh.dim, sh.n_layer, sh.n_head, sh.n_head_kv,
                  sh.head_dim_or_default(), sh.ffn, sh.n_vocab, sh.ctx, double(sh.rope_base),
                  sh.tied ? "  tied" : "");
    s += line;
    s += "      " + sh.note + "\n";
  }
  return s;
}

int run_synth(const SynthArgs& a) {
  if (a.list) {
    std::fputs(shapes_help().c_str(), stdout);
    return 0;
  }
  if (a.out.empty()) throw std::invalid_argument("synth: give the output path (OUT.gguf)");
  tools::ModelShape shape;
  if (!a.shape.empty()) {
    const tools::ModelShape* s = tools::find_shape(a.shape);
    if (s == nullptr)
      throw std::invalid_argument("synth: unknown shape '" + a.shape +
                                  "' (see `defkv synth --list-shapes`)");
    shape = *s;
  } else {
    if (!a.dim || !a.layers || !a.heads || !a.ffn || !a.vocab)
      throw std::invalid_argument(
          "synth: give --shape NAME, or all of --dim --layers --heads --ffn --vocab");
    shape.name = "custom";
    shape.n_head_kv = a.heads;
    shape.ctx = 2048;
  }
  if (a.dim) shape.dim = a.dim;
  if (a.layers) shape.n_layer = a.layers;
  if (a.heads) shape.n_head = a.heads;
  if (a.kv_heads) shape.n_head_kv = a.kv_heads;
  if (a.ffn) shape.ffn = a.ffn;
  if (a.vocab) shape.n_vocab = a.vocab;
  if (a.ctx) shape.ctx = a.ctx;
  if (a.head_dim) shape.head_dim = a.head_dim;
  if (a.rope_base > 0) shape.rope_base = a.rope_base;
  if (a.rms_eps > 0) shape.rms_eps = a.rms_eps;
  if (a.tied) shape.tied = true;
  if (a.untied) shape.tied = false;
  const bool modified = a.dim || a.layers || a.heads || a.kv_heads || a.ffn || a.vocab ||
                        a.head_dim || a.tied || a.untied;
  if (!a.shape.empty() && modified) shape.name += "-custom";

  tools::SynthOptions opts;
  opts.shape = shape;
  if (!quant::parse_dtype(a.type, &opts.type))
    throw std::invalid_argument("synth: unknown --type '" + a.type + "' (f32|f16|bf16|q8_0)");
  opts.seed = a.seed;
  opts.n_threads = a.threads;
  if (!a.vocab_from.empty()) {
    opts.vocab.from_path = a.vocab_from;
  } else if (!a.synthetic_vocab) {
    opts.vocab.from_path = tools::default_vocab_file(shape.n_vocab);
    if (opts.vocab.from_path.empty() && tools::known_vocab_file(shape.n_vocab))
      std::fprintf(stderr,
                   "synth: note: the shared tokenizer for vocab %u was not found (set "
                   "DEFKV_SHARED); using a synthetic SPM vocabulary\n",
                   shape.n_vocab);
  }

  shape.validate(opts.type);  // before n_params(), which needs its bounds
  const uint64_t n_params = shape.n_params();
  std::fprintf(stderr, "synth: %s  %s  %.2f M params  seed %llu  vocab: %s\n", shape.name.c_str(),
               quant::dtype_name(opts.type), double(n_params) / 1e6,
               (unsigned long long)opts.seed,
               opts.vocab.from_path.empty() ? "synthetic llama-spm" : opts.vocab.from_path.c_str());
  // A live line on a terminal; otherwise one line per 10% of the data.
  const bool tty = ::isatty(2) != 0;
  int last_decile = -1;
  auto progress = [&](const tools::SynthProgress& p) {
    if (a.quiet) return;
    if (p.tensor == nullptr) {
      if (tty) std::fputs("\n", stderr);
      return;
    }
    const double pct =
        p.bytes_total ? 100.0 * double(p.bytes_done) / double(p.bytes_total) : 0.0;
    if (!tty && int(pct / 10) == last_decile) return;
    last_decile = int(pct / 10);
    std::fprintf(stderr, "%ssynth: [%3zu/%zu] %5.1f%%  %-28s%s", tty ? "\r" : "", p.index + 1,
                 p.count, pct, p.tensor->name.c_str(), tty ? "" : "\n");
    std::fflush(stderr);
  };
  tools::SynthResult r = tools::synthesize(opts, a.out, progress);
  std::fprintf(stderr, "synth: wrote %s: %.1f MiB (%.1f MiB tensor data) in %.1f s\n",
               a.out.c_str(), double(r.file_bytes) / 1048576.0, double(r.data_bytes) / 1048576.0,
               r.seconds);
  return 0;
}

}  // namespace

Handler register_synth(CLI::App& app) {
  auto a = std::make_shared<SynthArgs>();
  CLI::App* c = app.add_subcommand(
      "synth",
      "Write a GGUF with a real model's architecture and shapes and random (untrained) "
      "weights, for benchmarks.");
  c->footer(
      "Shapes (from the real config.json, in the model's own GGUF architecture: llama with "
      "Llama 3 rope_freqs where the model has them, qwen2 with q/k/v biases, qwen3 with q/k "
      "norms, phi3 with fused qkv and gate/up, gemma3 with q/k norms, post norms and sliding-window "
      "layers; custom shapes are llama):\n" +
      shapes_help() +
      "\nWeights: deterministic in --seed (same values for every --type), approx. N(0, 0.02); "
      "attn_output/ffn_down 0.02/sqrt(2*layers); biases N(0, 0.02); norms 1 and always F32.\n"
      "Vocabulary: --vocab-from copies tokenizer.* from a GGUF (its token count must equal "
      "the vocab). Default: vocab 32000 uses ../shared/models/tokenizers/"
      "ggml-vocab-llama-spm.gguf (TinyLlama's real vocab), vocab 512 the stories260K "
      "tokenizer, 128256 / 151936 / 32064 the Llama 3 / Qwen / Phi-3 vocabularies of "
      "../shared/testdata/tokenizers; any other size gets a synthetic llama-SPM vocab (<unk> <s> </s>, 256 byte "
      "tokens, then letter-string filler pieces): self-consistent, but not the model's real "
      "tokenizer.\nThe file is written tensor by tensor (memory stays small); progress on "
      "stderr.");
  c->add_option("out", a->out, "Output GGUF path");
  c->add_option("--shape", a->shape, "Named shape (see below / --list-shapes)");
  c->add_flag("--list-shapes", a->list, "List the named shapes and exit");
  c->add_option("--dim", a->dim, "Embedding width (overrides the shape)")->check(cli::positive());
  c->add_option("--layers", a->layers, "Number of layers")->check(cli::positive());
  c->add_option("--heads", a->heads, "Attention heads")->check(cli::positive());
  c->add_option("--kv-heads", a->kv_heads, "KV heads (default: heads)")->check(cli::positive());
  c->add_option("--ffn", a->ffn, "FFN hidden width")->check(cli::positive());
  c->add_option("--vocab", a->vocab, "Vocabulary size")->check(cli::positive());
  c->add_option("--ctx", a->ctx, "Context length written to the metadata (default 2048)")->check(cli::positive());
  c->add_option("--head-dim", a->head_dim, "Head dimension (default dim/heads)")->check(cli::positive());
  c->add_option("--rope-base", a->rope_base, "RoPE frequency base (default 10000)")->check(cli::positive());
  c->add_option("--rms-eps", a->rms_eps, "RMSNorm epsilon (default 1e-5)")->check(cli::positive());
  auto* tied = c->add_flag("--tied", a->tied, "No output.weight: the head reuses token_embd");
  c->add_flag("--untied", a->untied, "Write a separate output.weight")->excludes(tied);
  c->add_option("--type", a->type, "Weight type: f32|f16|bf16|q8_0 (norms stay F32)")
      ->capture_default_str();
  c->add_option("--seed", a->seed, "Random seed")->capture_default_str();
  auto* vf = c->add_option("--vocab-from", a->vocab_from,
                           "Copy the tokenizer.* metadata of this GGUF");
  c->add_flag("--synthetic-vocab", a->synthetic_vocab,
              "Always synthesize the vocabulary (ignore the shared tokenizer files)")
      ->excludes(vf);
  c->add_option("-t,--threads", a->threads, "Threads for generating weights (default: all)");
  c->add_flag("-q,--quiet", a->quiet, "No per-tensor progress");
  return [a] { return run_synth(*a); };
}

}  // namespace defkv::cli
