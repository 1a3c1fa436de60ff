// Multi-turn needle retrieval under a KV budget (docs/eval/RESULTS.md,
// "Bounded schedule: lookahead", multi-turn). Not part of the build: compile
// with docs/eval/bounded/build.sh and run from anywhere.
//   multiturn [FILLER_TOKENS]      (default 128)
// Each 512- and 768-token task of eval_tasks.jsonl is split into three eval()
// calls on one context: turn 1 = the haystack (with the needles), turn 2 =
// FILLER_TOKENS of held-out filler text (a different slice per task), turn 3 =
// the question. The budget is RATIO (default 0.2) of turn 1, fixed there and
// kept through turns 2 and 3 (bounded) or applied once after turn 1
// (oneshot). Prints correct / tasks per policy and mode.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include "runtime/eval/eval.h"
#include "runtime/text/sampler.h"
#include "runtime/text/tokenizer.h"
using namespace defkv;
static std::string shared() { const char* e = getenv("DEFKV_SHARED"); return e && *e ? e : "../shared"; }

int main(int argc, char** argv) {
  const size_t n_fill = argc > 1 ? std::stoul(argv[1]) : 128;
  auto model = model::Model::load(shared() + "/models/needle/needle-llama-0.9M-f32.gguf");
  auto tokp = text::Tokenizer::from_gguf(model->file());
  const text::Tokenizer& tok = *tokp;
  auto tasks = eval::load_needle_tasks(shared() + "/models/needle/eval_tasks.jsonl");
  std::ifstream ff(shared() + "/models/needle/filler_heldout.txt");
  std::stringstream fs;
  fs << ff.rdbuf();
  const std::vector<int32_t> filler = tok.encode(fs.str(), false);
  const double ratio = getenv("RATIO") ? std::stod(getenv("RATIO")) : 0.2;
  struct Mode { const char* name; bool budget; engine::Schedule sched; };
  const Mode modes[] = {{"full", false, engine::Schedule::bounded},
                        {"oneshot", true, engine::Schedule::oneshot},
                        {"bounded (lookahead)", true, engine::Schedule::bounded}};
  for (const char* pn : {"criticalkv", "defensivekv", "layer-defensivekv"}) {
    for (const Mode& md : modes) {
      if (!md.budget && std::string(pn) != "criticalkv") continue;
      engine::ContextParams cp;
      cp.n_threads = 1;
      cp.kv_type = quant::DType::f32;
      cp.n_ctx = 1100;
      evict::parse_policy(pn, &cp.evict.policy);
      if (md.budget) {
        cp.kv_ratio = ratio;
        cp.schedule = md.sched;
      }
      engine::Context ctx(*model, cp);
      int n = 0, ok = 0;
      for (size_t ti = 0; ti < tasks.size(); ++ti) {
        const eval::NeedleTask& t = tasks[ti];
        if (t.target_len != 512 && t.target_len != 768) continue;
        const size_t q = t.prompt.rfind(" What is the secret number");
        if (q == std::string::npos) continue;
        std::vector<int32_t> t1 = tok.encode(t.prompt.substr(0, q), true);
        if (tok.bos() >= 0 && (t1.empty() || t1.front() != tok.bos())) t1.insert(t1.begin(), tok.bos());
        const size_t f0 = (ti * 997) % (filler.size() - n_fill);
        const std::vector<int32_t> t2(filler.begin() + f0, filler.begin() + f0 + n_fill);
        const std::vector<int32_t> t3 = tok.encode(t.prompt.substr(q), false);
        ctx.reset();
        ctx.eval(t1);
        ctx.eval(t2);
        std::span<const float> logits = ctx.eval(t3);
        std::string out;
        text::StreamDecoder dec(tok, false);
        for (int i = 0; i < 8; ++i) {
          const int32_t x = text::argmax(logits);
          if (tok.is_eog(x)) break;
          out += dec.push(x);
          if (out.size() >= t.answer.size()) break;
          logits = ctx.step(x);
        }
        out += dec.flush();
        ++n;
        ok += out.compare(0, t.answer.size(), t.answer) == 0 && out.size() >= t.answer.size();
      }
      std::printf("%-18s %-20s %d/%d\n", md.budget ? pn : "full", md.name, ok, n);
      std::fflush(stdout);
    }
  }
}
