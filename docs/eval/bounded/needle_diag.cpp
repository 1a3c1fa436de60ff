// Needle diagnosis for the bounded schedule (docs/eval/RESULTS.md, section
// "Bounded schedule: diagnosis and the interim policy"; the interim policy
// itself was removed later, see RESULTS.md "Removed variants").
// Not part of the build: compile against a build directory's static libraries
// (see docs/eval/bounded/build.sh) and run from anywhere:
//   needle_diag POLICIES SCHEDULE [STRIDE]      e.g. needle_diag criticalkv,defensivekv bounded
// Environment: RATIO (kept fraction, default 0.2), OBS=1 (layer 2 / KV head 0
// floor statistics through Context::set_round_observer), DUMP=<prefix> (per-task
// correctness, appended to <prefix>.<policy>).
// Per policy it prints: accuracy; the share of the queried needle's digit
// entries resident when the question's first token arrives (last chunk
// boundary before it) and after the prompt, per layer; accuracy conditional on
// each (layer, KV head) keeping all 5 digits / none; entries per (layer, KV head)
// averaged over chunk boundaries and their minimum.
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>
#include "runtime/eval/eval.h"
#include "runtime/text/tokenizer.h"
using namespace defkv;
static std::string shared() { const char* e = getenv("DEFKV_SHARED"); return e && *e ? e : "../shared"; }

int main(int argc, char** argv) {
  const std::string mpath = shared() + "/models/needle/needle-llama-0.9M-f32.gguf";
  auto model = model::Model::load(mpath);
  auto tokp = text::Tokenizer::from_gguf(model->file()); const text::Tokenizer& tok = *tokp;
  auto tasks = eval::load_needle_tasks(shared() + "/models/needle/eval_tasks.jsonl");
  const char* pols = argc > 1 ? argv[1] : "criticalkv,defensivekv,layer-defensivekv";
  const std::string sched = argc > 2 ? argv[2] : "bounded";
  size_t stride = argc > 3 ? std::stoul(argv[3]) : 1;
  const auto& mc = model->config();
  const uint32_t L = mc.n_layer, Hk = mc.n_head_kv;
  std::string ps = pols;
  size_t a = 0;
  while (a < ps.size()) {
    size_t b = ps.find(',', a); if (b == std::string::npos) b = ps.size();
    std::string pn = ps.substr(a, b - a); a = b + 1;
    engine::ContextParams cp;
    cp.n_threads = 1; cp.kv_type = quant::DType::f32; cp.kv_ratio = getenv("RATIO") ? std::stod(getenv("RATIO")) : 0.2;
    evict::parse_policy(pn, &cp.evict.policy);
    engine::Schedule s; engine::parse_schedule(sched, &s); cp.schedule = s;
    cp.n_ctx = 1100;
    engine::Context ctx(*model, cp);
    int n_tasks = 0, correct = 0;
    // aggregates
    double res_q_sum = 0; std::vector<double> res_q_layer(L, 0), res_end_layer(L, 0);
    double res_end = 0; int ok_given_alive = 0, n_alive = 0, ok_given_dead = 0, n_dead = 0;
    std::vector<double> mean_size(L * Hk, 0), min_size(L * Hk, 1e9); double n_rounds_total = 0;
    std::vector<double> rounds_survived_hist(20, 0);
    double res_before_last = 0;
    double obs_rounds = 0, obs_dig = 0, obs_dig_floor = 0, obs_all = 0, obs_all_floor = 0, obs_pct = 0;
    int64_t cur_first = -1;
    if (getenv("OBS")) ctx.set_round_observer([&](const engine::Context::RoundObservation& ob) {
      if (ob.layer != 2) return;
      const auto& v = *ob.view; const auto& sc = *ob.scores;
      const uint32_t W = v.n_window;
      // value-norm weights of head 0
      const auto& h0 = v.heads[0];
      const uint32_t N = h0.n - W;
      std::vector<float> ratio(N); float mn = 1e30f;
      std::vector<float> layer_scores;
      for (uint32_t hk = 0; hk < v.n_head_kv; ++hk) for (uint32_t j = 0; j + W < v.heads[hk].n; ++j) layer_scores.push_back(sc[hk][j]);
      std::sort(layer_scores.begin(), layer_scores.end());
      int nd = 0;
      for (uint32_t j = 0; j < N; ++j) {
        float den = 0; for (uint32_t hk = 0; hk < v.n_head_kv; ++hk) { const auto& hh = v.heads[hk]; auto it = std::lower_bound(hh.pos, hh.pos + hh.n - W, h0.pos[j]); if (it != hh.pos + hh.n - W && *it == h0.pos[j]) den += hh.vnorm[it - hh.pos]; }
        float w = den > 0 ? h0.vnorm[j] / den : 0; ratio[j] = w > 0 ? sc[0][j] / w : 1e30f; mn = std::min(mn, ratio[j]);
      }
      for (uint32_t j = 0; j < N; ++j) {
        bool fl = ratio[j] <= mn * 1.0001f;
        obs_all += 1; obs_all_floor += fl;
        if (h0.pos[j] >= cur_first && h0.pos[j] < cur_first + 5) {
          nd++; obs_dig += 1; obs_dig_floor += fl;
          obs_pct += double(std::lower_bound(layer_scores.begin(), layer_scores.end(), sc[0][j]) - layer_scores.begin()) / layer_scores.size();
        }
      }
      if (nd) obs_rounds += 1;
    });
    std::vector<int> hk_full_ok(L*Hk,0), hk_full_n(L*Hk,0), hk_none_ok(L*Hk,0), hk_none_n(L*Hk,0);
    double key_res = 0; std::vector<double> key_res_layer(L,0);
    for (size_t ti = 0; ti < tasks.size(); ti += stride) {
      const auto& t = tasks[ti];
      std::vector<int32_t> prompt = tok.encode(t.prompt, true);
      if (prompt.front() != tok.bos()) prompt.insert(prompt.begin(), tok.bos());
      std::string digits; for (char c : t.answer) if (c >= '0' && c <= '9') digits += c;
      int64_t first = -1;
      for (size_t i = size_t(t.needle_token_pos); i + 5 <= prompt.size() && first < 0; ++i) {
        bool ok = true; for (size_t k = 0; k < 5 && ok; ++k) ok = tok.piece(prompt[i + k]) == std::string(1, digits[k]);
        if (ok) first = int64_t(i);
      }
      cur_first = first;
      size_t qi = t.prompt.rfind("What is the secret number");
      uint32_t qpos = uint32_t(tok.encode(t.prompt.substr(0, qi), true).size());
      // per round residency
      std::vector<std::vector<int>> per_round;  // [round][l*Hk+h] digits resident
      std::vector<uint64_t> round_done;
      auto snapshot = [&](uint64_t done) {
        std::vector<int> r(L * Hk, 0);
        std::vector<int32_t> pos;
        for (uint32_t l = 0; l < L; ++l) for (uint32_t h = 0; h < Hk; ++h) {
          pos.resize(ctx.cache().size(l, h));
          ctx.cache().gather(l, h, nullptr, nullptr, pos.data(), nullptr);
          for (int32_t p : pos) if (p >= first && p < first + 5) r[l * Hk + h]++;
          mean_size[l * Hk + h] += pos.size(); min_size[l * Hk + h] = std::min<double>(min_size[l * Hk + h], pos.size());
        }
        n_rounds_total += 1;
        per_round.push_back(r); round_done.push_back(done);
      };
      ctx.set_progress([&](uint64_t done, uint64_t) { snapshot(done); });
      auto out = eval::run_needle_task(ctx, tok, t, 8);
      ctx.set_progress({});
      n_tasks++; correct += out.correct;
      if (getenv("DUMP")) { FILE* f = fopen((std::string(getenv("DUMP")) + "." + pn).c_str(), "a"); fprintf(f, "%zu %d\n", ti, int(out.correct)); fclose(f); }
      // residency at question arrival: last snapshot with done <= qpos
      int qi_round = -1;
      for (size_t r = 0; r < round_done.size(); ++r) if (round_done[r] <= qpos) qi_round = int(r);
      double rq = 0; std::vector<int> rr = qi_round >= 0 ? per_round[qi_round] : std::vector<int>(L * Hk, 5);
      for (uint32_t l = 0; l < L; ++l) { double x = 0; for (uint32_t h = 0; h < Hk; ++h) x += rr[l * Hk + h]; res_q_layer[l] += x / (5.0 * Hk); rq += x; }
      rq /= 5.0 * L * Hk; res_q_sum += rq;
      for (uint32_t l = 0; l < L && l < out.needle_retained_per_layer.size(); ++l) res_end_layer[l] += out.needle_retained_per_layer[l];
      res_end += out.needle_retained;
      {
        std::vector<int32_t> pos;
        double kr = 0;
        for (uint32_t l = 0; l < L; ++l) for (uint32_t h = 0; h < Hk; ++h) {
          pos.resize(ctx.cache().size(l, h));
          ctx.cache().gather(l, h, nullptr, nullptr, pos.data(), nullptr);
          int nd = 0, nk = 0;
          for (int32_t p : pos) { if (p >= first && p < first + 5) nd++; if (p >= t.needle_token_pos && p < first) nk++; }
          const int klen = int(first - t.needle_token_pos);
          kr += double(nk) / klen; key_res_layer[l] += double(nk) / klen / Hk;
          if (nd == 5) { hk_full_n[l*Hk+h]++; hk_full_ok[l*Hk+h] += out.correct; }
          if (nd == 0) { hk_none_n[l*Hk+h]++; hk_none_ok[l*Hk+h] += out.correct; }
        }
        key_res += kr / (L * Hk);
      }
      bool alive = rq > 0.5;  // more than half of digit entries resident at the question
      if (alive) { n_alive++; ok_given_alive += out.correct; } else { n_dead++; ok_given_dead += out.correct; }
    }
    std::printf("%s %s: correct %d/%d; digits resident at question %.1f%% (per layer", pn.c_str(), sched.c_str(), correct, n_tasks, 100 * res_q_sum / n_tasks);
    for (uint32_t l = 0; l < L; ++l) std::printf(" %.1f", 100 * res_q_layer[l] / n_tasks);
    std::printf("), after prompt %.1f%% (per layer", 100 * res_end / n_tasks);
    for (uint32_t l = 0; l < L; ++l) std::printf(" %.1f", 100 * res_end_layer[l] / n_tasks);
    std::printf(")\n  acc | >50%% resident at question: %d/%d ; acc | <=50%%: %d/%d\n", ok_given_alive, n_alive, ok_given_dead, n_dead);
    std::printf("  mean entries per (l,hk) over rounds:");
    for (uint32_t i = 0; i < L * Hk; ++i) std::printf(" %.0f", mean_size[i] / n_rounds_total);
    std::printf("\n  key tokens (needle sentence before digits) resident after prompt %.1f%% (per layer", 100*key_res/n_tasks);
    for (uint32_t l = 0; l < L; ++l) std::printf(" %.1f", 100 * key_res_layer[l] / n_tasks);
    std::printf(")\n  per (l,hk): acc|all 5 digits kept (n) / acc|none kept (n):");
    for (uint32_t i = 0; i < L * Hk; ++i) std::printf(" [%u.%u %d/%d %d/%d]", i / Hk, i % Hk, hk_full_ok[i], hk_full_n[i], hk_none_ok[i], hk_none_n[i]);
    if (getenv("OBS")) std::printf("\n  layer 2 head 0, rounds holding digits %.0f: digit entries at the floor %.1f%% (all entries %.1f%%), digits' mean score percentile in the layer %.1f%%", obs_rounds, 100*obs_dig_floor/std::max(1.0,obs_dig), 100*obs_all_floor/std::max(1.0,obs_all), 100*obs_pct/std::max(1.0,obs_dig));
    std::printf("\n  min entries per (l,hk):");
    for (uint32_t i = 0; i < L * Hk; ++i) std::printf(" %.0f", min_size[i]);
    std::printf("\n");
    std::fflush(stdout);
  }
}
