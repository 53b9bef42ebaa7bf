//! The C ABI of csrc/shim_dist.cpp. Every `unsafe` of src/dist/ is here or at a call of these
//! functions in group.rs. Tensors cross as tch's `*mut C_tensor` (an `at::Tensor*`).

use std::ffi::{c_char, c_int, c_void, CStr};
use torch_sys::C_tensor;

extern "C" {
    // Defined in shim_cpu.cpp; the same thread-local slot every shim function writes.
    fn sf_last_error() -> *const c_char;

    pub fn sf_dist_store_new(
        host: *const c_char,
        port: c_int,
        is_server: c_int,
        world: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_dist_store_free(s: *mut c_void);
    pub fn sf_dist_store_set(
        s: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
    ) -> c_int;
    pub fn sf_dist_store_get(
        s: *mut c_void,
        key: *const c_char,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_dist_bytes_view(b: *const c_void, data: *mut *const u8, len: *mut usize);
    pub fn sf_dist_bytes_free(b: *mut c_void);
    pub fn sf_dist_store_add(
        s: *mut c_void,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
    ) -> c_int;
    pub fn sf_dist_store_delete(s: *mut c_void, key: *const c_char, deleted: *mut c_int) -> c_int;

    pub fn sf_dist_pg_gloo_new(
        store: *mut c_void,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        iface: *const c_char,
        hostname: *const c_char,
        out: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_dist_pg_nccl_new(
        store: *mut c_void,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        device: c_int,
        out: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_dist_pg_free(pg: *mut c_void, abort: c_int);

    pub fn sf_dist_allreduce(
        pg: *mut c_void,
        ts: *const *mut C_tensor,
        n: i64,
        op: c_int,
        work: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_dist_allreduce_coalesced(
        pg: *mut c_void,
        ts: *const *mut C_tensor,
        n: i64,
        op: c_int,
        work: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_dist_broadcast(
        pg: *mut c_void,
        ts: *const *mut C_tensor,
        n: i64,
        root: c_int,
        work: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_dist_allgather_base(
        pg: *mut c_void,
        output: *mut C_tensor,
        input: *mut C_tensor,
        work: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_dist_reduce_scatter_base(
        pg: *mut c_void,
        output: *mut C_tensor,
        input: *mut C_tensor,
        op: c_int,
        work: *mut *mut c_void,
    ) -> c_int;
    pub fn sf_dist_barrier(pg: *mut c_void, work: *mut *mut c_void) -> c_int;
    pub fn sf_dist_work_wait(work: *mut c_void, timeout_ms: i64) -> c_int;
    pub fn sf_dist_work_free(work: *mut c_void);
}

/// The message of the last failing shim call on this thread.
pub fn last_error() -> String {
    // SAFETY: sf_last_error returns a pointer into a live thread-local std::string (never null).
    unsafe { CStr::from_ptr(sf_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Turns a shim status code into a Result naming what was attempted.
pub fn check(rc: c_int, what: impl FnOnce() -> String) -> anyhow::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        anyhow::bail!("{}: {}", what(), last_error())
    }
}
