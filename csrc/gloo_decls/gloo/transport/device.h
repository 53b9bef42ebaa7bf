// Stand-in (see README.md): ProcessGroupGloo only holds these by shared_ptr / unique_ptr.
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo
