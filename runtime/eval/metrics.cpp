// Per-row metrics (NLL, KL, quantiles), text loading and the loss summary.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "runtime/eval/eval.h"

namespace defkv::eval {
namespace {

// log(sum exp(x)) in double; max-shifted.
double log_sum_exp(std::span<const float> x) {
  double m = -std::numeric_limits<double>::infinity();
  for (float v : x) m = std::max(m, double(v));
  double s = 0;
  for (float v : x) s += std::exp(double(v) - m);
  return m + std::log(s);
}

}  // namespace

double nll(std::span<const float> logits, int32_t target) {
  if (target < 0 || size_t(target) >= logits.size())
    throw std::invalid_argument("nll: target " + std::to_string(target) + " outside the vocabulary of " +
                                std::to_string(logits.size()));
  return log_sum_exp(logits) - double(logits[size_t(target)]);
}

double kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits) {
  if (p_logits.size() != q_logits.size() || p_logits.empty())
    throw std::invalid_argument("kl_divergence: rows of different or zero length");
  const double lp = log_sum_exp(p_logits), lq = log_sum_exp(q_logits);
  double kl = 0;
  for (size_t v = 0; v < p_logits.size(); ++v) {
    const double a = double(p_logits[v]) - lp;  // log p
    const double b = double(q_logits[v]) - lq;  // log q
    kl += std::exp(a) * (a - b);
  }
  return kl > 0 ? kl : 0.0;
}

double quantile(std::vector<double> values, double q) {
  if (values.empty()) throw std::invalid_argument("quantile: no values");
  if (!(q >= 0 && q <= 1)) throw std::invalid_argument("quantile: q must be in [0, 1]");
  std::sort(values.begin(), values.end());
  const double h = q * double(values.size() - 1);
  const size_t lo = size_t(std::floor(h));
  if (lo + 1 >= values.size()) return values.back();
  return values[lo] + (h - double(lo)) * (values[lo + 1] - values[lo]);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read text file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.empty()) throw std::runtime_error("text file '" + path + "' is empty");
  return s;
}

std::vector<int32_t> tokenize_text(const text::Tokenizer& tok, std::string_view text) {
  std::vector<int32_t> t = tok.encode(text, true);  // BOS first, as the model reads it
  if (!t.empty() && t.front() == tok.bos()) t.erase(t.begin());
  if (t.empty()) throw std::invalid_argument("the text yields no tokens");
  return t;
}

bool is_baseline(std::string_view p) {
  return p != "full" && p != "defensivekv" && p != "layer-defensivekv";
}

LossSummary summarize_losses(const std::vector<LossRow>& rows) {
  LossSummary s;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  s.ratio_defensivekv = nan;
  s.ratio_layer_defensivekv = nan;
  bool found = false;
  for (const LossRow& r : rows) {
    if (!is_baseline(r.policy)) continue;
    if (!found || r.loss < s.baseline_loss) {
      s.baseline_loss = r.loss;
      s.strongest_baseline = r.policy;
      found = true;
    }
  }
  if (!found) return s;
  auto ratio = [&](double loss) {
    if (loss > 0) return s.baseline_loss / loss;
    return s.baseline_loss > 0 ? std::numeric_limits<double>::infinity() : nan;
  };
  for (const LossRow& r : rows) {
    if (r.policy == "defensivekv") s.ratio_defensivekv = ratio(r.loss);
    if (r.policy == "layer-defensivekv") s.ratio_layer_defensivekv = ratio(r.loss);
  }
  return s;
}

}  // namespace defkv::eval
