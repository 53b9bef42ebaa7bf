// Stand-in (see README.md). ProcessGroupGloo holds contexts by shared_ptr; its inline setTimeout
// names the one member below, which is declared only (never called from this side).
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
