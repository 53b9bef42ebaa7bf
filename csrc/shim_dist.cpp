// Distributed part of the stillflow shim: c10d stores, process groups and collectives, the same ones
// PyTorch's torch.distributed drives (spec/libtorch_from_rust.md §10).
//
// * TCPStore (+ PrefixStore): rendezvous and small key/value traffic (order checks in src/dist/comm.rs).
// * Backends: ProcessGroupGloo on CPU (always compiled: libtorch_cpu.so has it), ProcessGroupNCCL
//   under feature `cuda` (STILLFLOW_CUDA + USE_C10D_NCCL, libtorch_cuda.so).
// * Collectives return a Work handle; sf_dist_work_wait completes it. For Gloo the wait blocks the
//   host until the result is in place; for NCCL it makes the calling thread's *current CUDA stream*
//   wait for NCCL's stream (the host does not block) — see docs/DISTRIBUTED.md.
//
// Handles are heap objects owned by Rust (sf_dist_*_free). Every entry point follows shim_common.h:
// 0 on success, -1 with sf_last_error() set on failure; no C++ exception crosses the ABI.
#include "shim_common.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

// Gloo's own headers are not in the wheel; csrc/gloo_decls/ stands in for them (see its README).
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#ifdef STILLFLOW_CUDA
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace {
struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};
struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
};
struct WorkHandle {
  c10::intrusive_ptr<c10d::Work> work;
  // The collective reads and writes these in place; holding them keeps their storage alive until
  // the work is freed, whatever Rust does with its own handles meanwhile.
  std::vector<at::Tensor> keep;
};

std::chrono::milliseconds ms(int64_t v) { return std::chrono::milliseconds(v); }

// Our codes (src/dist/ffi.rs ReduceOp): 0 sum, 1 max, 2 min. AVG is not offered: Gloo lacks it,
// and sum-then-divide is exact for every backend.
c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default:
      TORCH_CHECK(false, "unknown reduce op code ", op);
  }
}

c10d::Backend& backend(void* pg) {
  TORCH_CHECK(pg != nullptr, "process group handle is null");
  return *static_cast<Group*>(pg)->backend;
}

std::vector<at::Tensor> tensors(at::Tensor* const* ts, int64_t n) {
  TORCH_CHECK(n > 0, "a collective needs at least one tensor");
  std::vector<at::Tensor> v;
  v.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(ts[i] != nullptr && ts[i]->defined(), "tensor ", i, " is undefined");
    v.push_back(*ts[i]);
  }
  return v;
}

void* wrap(c10::intrusive_ptr<c10d::Work> w, std::vector<at::Tensor> keep) {
  return new WorkHandle{std::move(w), std::move(keep)};
}
}  // namespace

extern "C" {
// ---- stores ----

// A TCPStore at host:port (the server when is_server != 0), wrapped in PrefixStore(prefix).
// `timeout_ms` bounds connecting and every blocking get/wait.
int sf_dist_store_new(const char* host, int port, int is_server, int world, int64_t timeout_ms,
                      const char* prefix, void** out) {
  SF_TRY({
    TORCH_CHECK(port > 0 && port < 65536, "store port ", port, " is out of range");
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(port);
    o.isServer = is_server != 0;
    o.numWorkers = static_cast<std::size_t>(world);
    // Do not block the server's constructor until every worker connected: the process group's
    // own rendezvous (and our order checks) wait with their timeouts instead.
    o.waitWorkers = false;
    o.timeout = ms(timeout_ms);
    o.multiTenant = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    auto pre = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    *out = new Store{pre};
  })
}
void sf_dist_store_free(void* s) {
  try {
    delete static_cast<Store*>(s);
  } catch (...) {
  }
}
int sf_dist_store_set(void* s, const char* key, const uint8_t* data, size_t len) {
  SF_TRY(static_cast<Store*>(s)->store->set(std::string(key), std::vector<uint8_t>(data, data + len)))
}
// Waits up to timeout_ms for `key`, then returns its value as a byte buffer (sf_dist_bytes_*).
int sf_dist_store_get(void* s, const char* key, int64_t timeout_ms, void** out) {
  SF_TRY({
    auto& st = *static_cast<Store*>(s)->store;
    const std::string k(key);
    st.wait({k}, ms(timeout_ms));
    *out = new std::vector<uint8_t>(st.get(k));
  })
}
void sf_dist_bytes_view(const void* b, const uint8_t** data, size_t* len) {
  const auto* v = static_cast<const std::vector<uint8_t>*>(b);
  *data = v->data();
  *len = v->size();
}
void sf_dist_bytes_free(void* b) { delete static_cast<std::vector<uint8_t>*>(b); }
int sf_dist_store_add(void* s, const char* key, int64_t delta, int64_t* out) {
  SF_TRY(*out = static_cast<Store*>(s)->store->add(std::string(key), delta))
}
int sf_dist_store_delete(void* s, const char* key, int* deleted) {
  SF_TRY(*deleted = static_cast<Store*>(s)->store->deleteKey(std::string(key)) ? 1 : 0)
}

// ---- process groups ----

// Gloo over TCP. Device: the network interface `iface` if non-empty, else the address of
// `hostname` if non-empty, else Gloo's default (this host's name, falling back to loopback).
int sf_dist_pg_gloo_new(void* store, int rank, int world, int64_t timeout_ms, const char* iface,
                        const char* hostname, void** out) {
  SF_TRY({
    TORCH_CHECK(store != nullptr, "store handle is null");
    auto opts = c10d::ProcessGroupGloo::Options::create(ms(timeout_ms));
    const std::string ifc(iface), host(hostname);
    if (!ifc.empty()) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifc));
    } else if (!host.empty()) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(static_cast<Store*>(store)->store, rank,
                                                         world, opts);
    *out = new Group{pg};
  })
}

// NCCL on cuda:`device`, connected eagerly so that a broken setup fails here, not in the first
// collective. Without feature `cuda` this reports that the binary lacks NCCL.
int sf_dist_pg_nccl_new(void* store, int rank, int world, int64_t timeout_ms, int device,
                        void** out) {
#ifdef STILLFLOW_CUDA
  SF_TRY({
    TORCH_CHECK(store != nullptr, "store handle is null");
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = ms(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(static_cast<Store*>(store)->store, rank,
                                                         world, opts);
    const at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    pg->setBoundDeviceId(dev);
    pg->eagerConnectSingleDevice(dev);
    *out = new Group{pg};
  })
#else
  (void)store;
  (void)rank;
  (void)world;
  (void)timeout_ms;
  (void)device;
  (void)out;
  stillflow_shim::set_last_error(
      "NCCL is not in this binary: build with `--features cuda` (make build-cuda)");
  return -1;
#endif
}

// Orderly end (abort != 0: after a failure, tear the communicators down without waiting for
// peers). Frees the handle in both cases.
void sf_dist_pg_free(void* pg, int abort) {
  auto* g = static_cast<Group*>(pg);
  if (g == nullptr) return;
  try {
    if (abort != 0) {
      g->backend->abort();
    } else {
      g->backend->shutdown();
    }
  } catch (...) {
    // Nothing left to report to: the process is tearing the group down.
  }
  try {
    delete g;
  } catch (...) {
  }
}

// ---- collectives (in place; each returns a work handle) ----

int sf_dist_allreduce(void* pg, at::Tensor* const* ts, int64_t n, int op, void** work) {
  SF_TRY({
    auto v = tensors(ts, n);
    c10d::AllreduceOptions o;
    o.reduceOp = reduce_op(op);
    auto w = backend(pg).allreduce(v, o);
    *work = wrap(std::move(w), std::move(v));
  })
}
int sf_dist_allreduce_coalesced(void* pg, at::Tensor* const* ts, int64_t n, int op, void** work) {
  SF_TRY({
    auto v = tensors(ts, n);
    c10d::AllreduceCoalescedOptions o;
    o.reduceOp = reduce_op(op);
    auto w = backend(pg).allreduce_coalesced(v, o);
    *work = wrap(std::move(w), std::move(v));
  })
}
int sf_dist_broadcast(void* pg, at::Tensor* const* ts, int64_t n, int root, void** work) {
  SF_TRY({
    auto v = tensors(ts, n);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    auto w = backend(pg).broadcast(v, o);
    *work = wrap(std::move(w), std::move(v));
  })
}
// output = concatenation of every rank's input along dim 0 (output numel = world * input numel).
int sf_dist_allgather_base(void* pg, at::Tensor* output, at::Tensor* input, void** work) {
  SF_TRY({
    auto v = tensors(&output, 1);
    auto in = tensors(&input, 1);
    auto w = backend(pg)._allgather_base(v[0], in[0], c10d::AllgatherOptions());
    v.push_back(in[0]);
    *work = wrap(std::move(w), std::move(v));
  })
}
// output = this rank's chunk of the reduction of every rank's input (input numel = world * output).
int sf_dist_reduce_scatter_base(void* pg, at::Tensor* output, at::Tensor* input, int op,
                                void** work) {
  SF_TRY({
    auto v = tensors(&output, 1);
    auto in = tensors(&input, 1);
    c10d::ReduceScatterOptions o;
    o.reduceOp = reduce_op(op);
    auto w = backend(pg)._reduce_scatter_base(v[0], in[0], o);
    v.push_back(in[0]);
    *work = wrap(std::move(w), std::move(v));
  })
}
int sf_dist_barrier(void* pg, void** work) {
  SF_TRY({
    auto w = backend(pg).barrier(c10d::BarrierOptions());
    *work = wrap(std::move(w), {});
  })
}

// timeout_ms <= 0: the backend's own timeout. Throws (returns -1) on a failed or timed-out work.
int sf_dist_work_wait(void* work, int64_t timeout_ms) {
  SF_TRY({
    auto& w = *static_cast<WorkHandle*>(work)->work;
    if (timeout_ms > 0) {
      w.wait(ms(timeout_ms));
    } else {
      w.wait();
    }
  })
}
void sf_dist_work_free(void* work) {
  try {
    delete static_cast<WorkHandle*>(work);
  } catch (...) {
  }
}
}
