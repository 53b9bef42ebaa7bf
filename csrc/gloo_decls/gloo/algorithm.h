// Stand-in (see README.md): ProcessGroupGloo.hpp includes this, but uses nothing of it.
#pragma once
