// KL(full || policy) on stories260K + tinystories_sample.txt, T=448, C=64, S=64,
// window 16 (the acceptance protocol of docs/eval/RESULTS.md). Prints mean KL,
// p99, top-1 and the per-window mean KL (for paired differences).  Usage: kl_bounded POLICIES SCHEDULE [RATIO]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
#include "runtime/eval/eval.h"
using namespace defkv;
static std::string shared() { const char* e = getenv("DEFKV_SHARED"); return e && *e ? e : "../shared"; }
int main(int argc, char** argv) {
  auto model = model::Model::load(shared() + "/models/stories260K/stories260K.gguf");
  auto tokp = text::Tokenizer::from_gguf(model->file());
  // TEXT, STRIDE, MAXWIN override the text file (relative to the shared dir), stride and window cap
  // (the 80-window run: TEXT=models/needle/filler_heldout.txt STRIDE=512 MAXWIN=80).
  const std::string text_file = getenv("TEXT") ? getenv("TEXT") : "models/data/tinystories_sample.txt";
  auto text = eval::tokenize_text(*tokp, eval::read_text_file(shared() + "/" + text_file));
  eval::WindowSpec spec; spec.prefix_tokens = 448; spec.cont_tokens = 64; spec.stride_tokens = 64;
  if (getenv("STRIDE")) spec.stride_tokens = uint32_t(std::stoul(getenv("STRIDE")));
  if (getenv("MAXWIN")) spec.max_windows = std::stoul(getenv("MAXWIN"));
  engine::ContextParams base; base.n_threads = 1; base.kv_type = quant::DType::f32; base.evict.window = 16;
  auto ref = eval::kld_reference(*model, text, tokp->bos(), spec, base);
  std::string ps = argv[1]; std::string sched = argv[2];
  size_t a = 0;
  while (a < ps.size()) {
    size_t b = ps.find(',', a); if (b == std::string::npos) b = ps.size();
    std::string pn = ps.substr(a, b - a); a = b + 1;
    engine::ContextParams cp = base; cp.kv_ratio = argc > 3 ? std::stod(argv[3]) : 0.2;
    evict::parse_policy(pn, &cp.evict.policy);
    engine::Schedule s; engine::parse_schedule(sched, &s); cp.schedule = s;
    auto r = eval::kld(*model, text, tokp->bos(), spec, cp, ref);
    std::vector<double> per(r.windows, 0);
    for (size_t i = 0; i < r.per_token_kl.size(); ++i) per[i / spec.cont_tokens] += r.per_token_kl[i] / spec.cont_tokens;
    std::printf("%s %s: mean KL %.4f p99 %.3f top1 %.3f windows %zu | per-window:", pn.c_str(), sched.c_str(),
      r.mean_kl, r.p99_kl, r.top1, r.windows);
    for (double x : per) std::printf(" %.5f", x);
    std::printf("\n"); std::fflush(stdout);
  }
}
