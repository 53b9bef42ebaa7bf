// Shared by shim_cpu.cpp and shim_cuda.cpp: the thread-local last-error slot and the guard macro
// that keeps every C++ exception on this side of the C ABI.
//
// Convention for every exported function: return 0 on success, -1 on failure; on failure the
// message is readable (on the same thread) through sf_last_error() until the next failing call.
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace stillflow_shim {
// Defined once, in shim_cpu.cpp (always compiled).
void set_last_error(std::string msg);
}  // namespace stillflow_shim

// c10::Error::what() carries a long C++ backtrace; the short form is what a Rust error should show.
#define SF_CATCH_ALL(fail_value)                                                    \
  catch (const c10::Error& e) {                                                     \
    stillflow_shim::set_last_error(e.what_without_backtrace());                     \
    return fail_value;                                                              \
  }                                                                                 \
  catch (const std::exception& e) {                                                 \
    stillflow_shim::set_last_error(e.what());                                       \
    return fail_value;                                                              \
  }                                                                                 \
  catch (...) {                                                                     \
    stillflow_shim::set_last_error("unknown C++ exception");                        \
    return fail_value;                                                              \
  }

// Variadic so that a braced body with commas is one argument.
#define SF_TRY(...) \
  try {             \
    __VA_ARGS__;    \
    return 0;       \
  }                 \
  SF_CATCH_ALL(-1)
