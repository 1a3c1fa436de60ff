#include "tools/chat_session.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "tools/api_util.h"

namespace defkv::cli {

ChatSession::ChatSession(const defkv_model* model, std::optional<std::string> tmpl, uint32_t flags,
                         std::string system)
    : model_(model), tmpl_(std::move(tmpl)), flags_(flags), system_(std::move(system)) {
  info_.struct_size = sizeof info_;
  check(defkv_chat_template_get_info(model_, tmpl_ ? tmpl_->c_str() : nullptr, &info_), nullptr, "chat template");
  reset();
}

void ChatSession::reset() {
  messages_.clear();
  if (!system_.empty()) messages_.push_back({"system", system_});
  fed_.clear();
  closed_ = true;
}

std::string ChatSession::render() const { return render(messages_); }

std::string ChatSession::render(const std::vector<std::pair<std::string, std::string>>& messages) const {
  std::vector<defkv_chat_message> ms;
  for (const auto& [role, content] : messages) ms.push_back({role.c_str(), content.c_str()});
  const char* t = tmpl_ ? tmpl_->c_str() : nullptr;
  const uint32_t flags = flags_ | DEFKV_CHAT_ADD_GENERATION_PROMPT;
  size_t n = 0;
  const defkv_status s = defkv_chat_apply_template(model_, t, ms.data(), ms.size(), flags, nullptr, 0, &n);
  if (s != DEFKV_ERR_BUFFER_TOO_SMALL) check(s, nullptr, "chat template");
  std::string out(n + 1, '\0');
  check(defkv_chat_apply_template(model_, t, ms.data(), ms.size(), flags, out.data(), out.size(), &n), nullptr,
        "chat template");
  out.resize(n);
  return out;
}

std::string ChatSession::begin_turn(const std::string& user) {
  messages_.push_back({"user", user});
  std::string full;
  try {
    full = render();
  } catch (...) {
    messages_.pop_back();
    throw;
  }
  size_t at = 0;
  while (at < fed_.size() && at < full.size() && fed_[at] == full[at]) ++at;
  const std::string eot = info_.end_of_turn;
  if (at < fed_.size()) {
    const size_t p = eot.empty() ? std::string::npos : full.find(eot, at);
    if (p != std::string::npos) {
      at = closed_ ? p + eot.size() : p;
    } else {
      // No end-of-turn marker to resynchronise on (the plain format): start
      // where the last reply's rendering ends, so a turn never feeds again
      // what the model has seen in its own version.
      const size_t e = end_of_last_reply();
      if (e != std::string::npos && e > at) at = e;
    }
  }
  std::string delta = full.substr(at);
  fed_ += delta;
  closed_ = true;
  return delta;
}

size_t ChatSession::end_of_last_reply() const {
  // Rendered again with a marker after the reply's content: the text before
  // the marker is the rendering's up to the content's end.
  static const std::string kMark = "\x01defkv-end-of-reply\x01";
  auto ms = messages_;
  for (size_t i = ms.size(); i-- > 0;) {
    if (ms[i].first != "assistant") continue;
    ms[i].second += kMark;
    return render(ms).find(kMark);
  }
  return std::string::npos;
}

void ChatSession::end_turn(const std::string& shown, const std::string& raw, bool closed) {
  messages_.push_back({"assistant", shown});
  fed_ += raw;
  if (closed) fed_ += info_.end_of_turn;
  closed_ = closed;
}

void ChatSession::save(const std::string& state_path) const {
  nlohmann::json j;
  j["messages"] = nlohmann::json::array();
  for (const auto& [role, content] : messages_) j["messages"].push_back({{"role", role}, {"content", content}});
  j["fed"] = fed_;
  j["closed"] = closed_;
  std::ofstream f(state_path + ".chat", std::ios::binary);
  f << j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (!f) throw std::runtime_error("cannot write " + state_path + ".chat");
}

bool ChatSession::load(const std::string& state_path) {
  reset();
  std::ifstream f(state_path + ".chat", std::ios::binary);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.contains("messages") || !j.contains("fed"))
    throw std::runtime_error(state_path + ".chat is not a saved chat session");
  messages_.clear();
  for (const auto& m : j.at("messages")) messages_.push_back({m.at("role"), m.at("content")});
  fed_ = j.at("fed").get<std::string>();
  closed_ = j.value("closed", true);
  return true;
}

}  // namespace defkv::cli
