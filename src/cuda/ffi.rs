//! The C ABI of csrc/shim_cpu.cpp, csrc/shim_attn.cpp and csrc/shim_cuda.cpp. Every `unsafe` of the module tree is either
//! here or at a call of these functions. Tensors cross as tch's `*mut C_tensor` (a `torch::Tensor*`).
#![allow(dead_code)] // some entry points are used only with feature `cuda`

use std::ffi::{c_char, c_int, c_void, CStr};
use torch_sys::C_tensor;

/// `sf_ckpt_cb` in shim_cpu.cpp.
pub type CkptCallback = unsafe extern "C" fn(
    user: *mut c_void,
    inputs: *const *mut C_tensor,
    n_inputs: i64,
    out_vec: *mut c_void,
    err: *mut c_void,
) -> c_int;
/// `sf_ckpt_drop` in shim_cpu.cpp.
pub type CkptDrop = unsafe extern "C" fn(user: *mut c_void);

extern "C" {
    pub fn sf_last_error() -> *const c_char;
    pub fn sf_tensor_vec_push(vec: *mut c_void, t: *const C_tensor);
    pub fn sf_tensor_vec_len(vec: *const c_void) -> i64;
    pub fn sf_tensor_vec_get(vec: *const c_void, i: i64) -> *mut C_tensor;
    pub fn sf_tensor_vec_free(vec: *mut c_void);
    pub fn sf_string_set(s: *mut c_void, msg: *const c_char, len: usize);
    pub fn sf_clear_grad(t: *const C_tensor) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn sf_fused_adamw(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        n: i64,
        step: *const C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        grad_scale: *const C_tensor,
    ) -> c_int;
    pub fn sf_checkpoint(
        cb: CkptCallback,
        user: *mut c_void,
        drop: CkptDrop,
        inputs: *const *mut C_tensor,
        n_inputs: i64,
        out_vec: *mut *mut c_void,
    ) -> c_int;
    // csrc/shim_attn.cpp
    pub fn sf_attention_fwd_lse(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        out: *mut *mut C_tensor,
        saved: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_saved_attention_free(saved: *mut c_void);
    pub fn sf_saved_attention_backend(saved: *const c_void) -> i64;
    pub fn sf_attention_from_saved(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        saved: *const c_void,
        out: *mut *mut C_tensor,
    ) -> c_int;
}

/// `sf_stream` in shim_cuda.cpp: c10's `CUDAStream::pack3()` (stream id, device index, device type).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RawStream {
    pub id: i64,
    pub device_index: i8,
    pub device_type: i8,
}

/// `sf_device_props` in shim_cuda.cpp.
#[repr(C)]
pub struct RawDeviceProps {
    pub name: [c_char; 256],
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub major: c_int,
    pub minor: c_int,
    pub multiprocessors: c_int,
}

/// `sf_mem_stats` in shim_cuda.cpp (bytes, aggregate over the small and large pools).
#[repr(C)]
#[derive(Default)]
pub struct RawMemStats {
    pub allocated: i64,
    pub allocated_peak: i64,
    pub reserved: i64,
    pub reserved_peak: i64,
}

#[cfg(feature = "cuda")]
extern "C" {
    pub fn sf_cuda_device_count(out: *mut c_int) -> c_int;
    pub fn sf_stream_from_pool(device: c_int, high_priority: c_int, out: *mut RawStream) -> c_int;
    pub fn sf_stream_current(device: c_int, out: *mut RawStream) -> c_int;
    pub fn sf_stream_default(device: c_int, out: *mut RawStream) -> c_int;
    pub fn sf_stream_set_current(s: RawStream) -> c_int;
    pub fn sf_stream_synchronize(s: RawStream) -> c_int;
    pub fn sf_stream_query(s: RawStream, done: *mut c_int) -> c_int;
    pub fn sf_stream_raw(s: RawStream, out: *mut *mut c_void) -> c_int;
    pub fn sf_stream_guard_new(s: RawStream, out: *mut *mut c_void) -> c_int;
    pub fn sf_stream_guard_free(g: *mut c_void);
    pub fn sf_event_new(enable_timing: c_int, out: *mut *mut c_void) -> c_int;
    pub fn sf_event_free(e: *mut c_void);
    pub fn sf_event_record(e: *mut c_void, s: RawStream) -> c_int;
    pub fn sf_event_block(e: *mut c_void, s: RawStream) -> c_int;
    pub fn sf_event_synchronize(e: *mut c_void) -> c_int;
    pub fn sf_event_query(e: *mut c_void, done: *mut c_int) -> c_int;
    pub fn sf_event_elapsed_ms(start: *mut c_void, end: *mut c_void, ms: *mut f32) -> c_int;
    pub fn sf_record_stream(t: *const C_tensor, s: RawStream) -> c_int;
    pub fn sf_device_props(device: c_int, out: *mut RawDeviceProps) -> c_int;
    pub fn sf_memory_stats(device: c_int, out: *mut RawMemStats) -> c_int;
    pub fn sf_reset_peak(device: c_int) -> c_int;
}

/// The message of the last failing shim call on this thread.
pub fn last_error() -> String {
    // SAFETY: sf_last_error returns a pointer into a live thread-local std::string (never null).
    unsafe { CStr::from_ptr(sf_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Turns a shim status code into a Result naming the shim function.
pub fn check(rc: c_int, what: &str) -> anyhow::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        anyhow::bail!("{what}: {}", last_error())
    }
}
