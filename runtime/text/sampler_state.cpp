// Sampler state save/restore: the RNG (std::mt19937_64's standard text form)
// and the repetition history, as one text string.
#include <sstream>
#include <stdexcept>
#include <string>

#include "runtime/text/sampler.h"

namespace defkv::text {

std::string Sampler::state() const {
  std::ostringstream os;
  os << "rng " << rng_ << "\nhistory " << history_.size();
  for (int32_t t : history_) os << ' ' << t;
  os << '\n';
  return os.str();
}

void Sampler::set_state(const std::string& s) {
  std::istringstream is(s);
  std::string tag;
  std::mt19937_64 rng;
  if (!(is >> tag) || tag != "rng" || !(is >> rng))
    throw std::runtime_error("sampler state: malformed RNG state");
  size_t n = 0;
  if (!(is >> tag) || tag != "history" || !(is >> n))
    throw std::runtime_error("sampler state: malformed history");
  if (n > size_t(p_.repeat_last_n) && n > 0)
    throw std::runtime_error("sampler state: history of " + std::to_string(n) + " tokens exceeds repeat_last_n = " +
                             std::to_string(p_.repeat_last_n));
  std::vector<int32_t> h(n);
  for (size_t i = 0; i < n; ++i)
    if (!(is >> h[i])) throw std::runtime_error("sampler state: history truncated");
  rng_ = rng;
  history_.assign(h.begin(), h.end());
}

}  // namespace defkv::text
