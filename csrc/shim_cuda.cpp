// CUDA part of the stillflow shim (feature `cuda`): c10 pool streams, the thread-local current stream,
// a stream guard, events, Tensor::record_stream, device properties and caching-allocator statistics.
//
// Streams cross the ABI as c10's pack3() triple (id, device index, device type); c10 streams live for
// the whole process, so the triple is plain data. Events and guards are heap objects owned by Rust.
#include "shim_common.h"

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>

extern "C" {
struct sf_stream {
  int64_t id;
  int8_t device_index;
  int8_t device_type;
};
struct sf_device_props {
  char name[256];
  uint64_t total_bytes;
  uint64_t free_bytes;
  int major;
  int minor;
  int multiprocessors;
};
struct sf_mem_stats {
  int64_t allocated;
  int64_t allocated_peak;
  int64_t reserved;
  int64_t reserved_peak;
};
}

namespace {
using c10::cuda::CUDAEvent;
using c10::cuda::CUDAStream;

sf_stream pack(const CUDAStream& s) {
  auto d = s.pack3();
  return {d.stream_id, static_cast<int8_t>(d.device_index), static_cast<int8_t>(d.device_type)};
}
CUDAStream unpack(sf_stream s) {
  TORCH_CHECK(s.device_type == static_cast<int8_t>(c10::DeviceType::CUDA),
              "not a CUDA stream (device type ", static_cast<int>(s.device_type), ")");
  return CUDAStream::unpack3(s.id, static_cast<c10::DeviceIndex>(s.device_index),
                             static_cast<c10::DeviceType>(s.device_type));
}
c10::DeviceIndex checked_device(int device) {
  const int n = static_cast<int>(c10::cuda::device_count());
  TORCH_CHECK(device >= 0 && device < n, "CUDA device ", device, " does not exist (", n,
              " visible)");
  // Initialises the CUDA context and the caching allocator (lazy in torch) before first use.
  at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
  return static_cast<c10::DeviceIndex>(device);
}
void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so later calls are unaffected
    TORCH_CHECK(false, what, ": ", cudaGetErrorString(err));
  }
}
CUDAEvent* ev(void* e) { return static_cast<CUDAEvent*>(e); }
}  // namespace

extern "C" {
int sf_cuda_device_count(int* out) { SF_TRY(*out = static_cast<int>(c10::cuda::device_count())) }

// ---- streams (the current stream is per thread and per device in c10) ----
int sf_stream_from_pool(int device, int high_priority, sf_stream* out) {
  SF_TRY(*out = pack(c10::cuda::getStreamFromPool(high_priority != 0, checked_device(device))))
}
int sf_stream_current(int device, sf_stream* out) {
  SF_TRY(*out = pack(c10::cuda::getCurrentCUDAStream(checked_device(device))))
}
int sf_stream_default(int device, sf_stream* out) {
  SF_TRY(*out = pack(c10::cuda::getDefaultCUDAStream(checked_device(device))))
}
int sf_stream_set_current(sf_stream s) { SF_TRY(c10::cuda::setCurrentCUDAStream(unpack(s))) }
int sf_stream_synchronize(sf_stream s) { SF_TRY(unpack(s).synchronize()) }
int sf_stream_query(sf_stream s, int* done) { SF_TRY(*done = unpack(s).query() ? 1 : 0) }
int sf_stream_raw(sf_stream s, void** out) {
  SF_TRY(*out = static_cast<void*>(unpack(s).stream()))
}
// Sets the current device and this thread's current stream; sf_stream_guard_free restores both.
int sf_stream_guard_new(sf_stream s, void** out) {
  SF_TRY(*out = new c10::cuda::CUDAStreamGuard(unpack(s)))
}
void sf_stream_guard_free(void* g) {
  try {
    delete static_cast<c10::cuda::CUDAStreamGuard*>(g);
  } catch (...) {
    // A destructor that fails to restore the previous stream has nothing left to report to.
  }
}

// ---- events (the CUDA event is created lazily on the first record) ----
int sf_event_new(int enable_timing, void** out) {
  SF_TRY(*out = new CUDAEvent(enable_timing != 0 ? cudaEventDefault : cudaEventDisableTiming))
}
void sf_event_free(void* e) {
  try {
    delete ev(e);
  } catch (...) {
  }
}
int sf_event_record(void* e, sf_stream s) { SF_TRY(ev(e)->record(unpack(s))) }
// cudaStreamWaitEvent: `s` waits on the GPU, the host does not block.
int sf_event_block(void* e, sf_stream s) { SF_TRY(ev(e)->block(unpack(s))) }
int sf_event_synchronize(void* e) { SF_TRY(ev(e)->synchronize()) }
int sf_event_query(void* e, int* done) { SF_TRY(*done = ev(e)->query() ? 1 : 0) }
int sf_event_elapsed_ms(void* start, void* end, float* ms) {
  SF_TRY(*ms = ev(start)->elapsed_time(*ev(end)))
}

// ---- caching-allocator cross-stream safety ----
int sf_record_stream(const at::Tensor* t, sf_stream s) {
  SF_TRY(const_cast<at::Tensor*>(t)->record_stream(c10::Stream(unpack(s))))
}

// ---- device properties and memory ----
int sf_device_props(int device, sf_device_props* out) {
  SF_TRY({
    const c10::DeviceIndex d = checked_device(device);
    cudaDeviceProp p{};
    check_cuda(cudaGetDeviceProperties(&p, d), "cudaGetDeviceProperties");
    std::memset(out->name, 0, sizeof(out->name));
    std::strncpy(out->name, p.name, sizeof(out->name) - 1);
    out->major = p.major;
    out->minor = p.minor;
    out->multiprocessors = p.multiProcessorCount;
    size_t free_b = 0, total_b = 0;
    {
      c10::cuda::CUDAGuard guard(d);  // cudaMemGetInfo reports on the current device
      check_cuda(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    }
    out->free_bytes = free_b;
    out->total_bytes = total_b;
  })
}
int sf_memory_stats(int device, sf_mem_stats* out) {
  SF_TRY({
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(checked_device(device));
    constexpr auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out->allocated = stats.allocated_bytes[agg].current;
    out->allocated_peak = stats.allocated_bytes[agg].peak;
    out->reserved = stats.reserved_bytes[agg].current;
    out->reserved_peak = stats.reserved_bytes[agg].peak;
  })
}
int sf_reset_peak(int device) {
  SF_TRY(c10::cuda::CUDACachingAllocator::resetPeakStats(checked_device(device)))
}
}
