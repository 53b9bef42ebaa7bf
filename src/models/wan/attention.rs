//! Which fused SDPA kernel ATen's `scaled_dot_product_attention` dispatches to on CUDA.
//!
//! ATen 2.11 tries flash attention (FlashAttention-2) first, then memory-efficient, math, and
//! cuDNN last; on Hopper cuDNN's fused attention is the faster kernel for Wan's shapes
//! (head_dim 128, bf16, long sequences). tch has no binding for the priority setter, and the
//! project's C++ shim is not this module's, so the setter is called through its C++ symbol
//! (`at::globalContext().setSDPPriorityOrder(std::vector<int64_t>)`, Itanium ABI: `this` first,
//! the vector by reference). The setting is process-global; backends that cannot take an input
//! (e.g. cuDNN with an unsupported shape) are skipped by ATen, so any order is safe.

use std::ffi::c_void;

/// ATen's `at::SDPBackend` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum SdpBackend {
    Math = 0,
    Flash = 1,
    Efficient = 2,
    Cudnn = 3,
    Overrideable = 4,
}

/// libstdc++'s `std::vector<int64_t>` layout (begin, end, end of storage); only read by the callee.
#[repr(C)]
struct StdVecI64 {
    begin: *const i64,
    end: *const i64,
    cap: *const i64,
}

extern "C" {
    #[link_name = "_ZN2at13globalContextEv"]
    fn at_global_context() -> *mut c_void;
    #[link_name = "_ZN2at7Context19setSDPPriorityOrderERKSt6vectorIlSaIlEE"]
    fn at_set_sdp_priority_order(ctx: *mut c_void, order: *const StdVecI64);
}

/// Sets ATen's SDPA backend priority (all five backends, each once).
pub fn set_sdpa_priority(order: [SdpBackend; 5]) {
    let mut seen = [false; 5];
    for b in order {
        assert!(!seen[b as usize], "set_sdpa_priority: {b:?} listed twice");
        seen[b as usize] = true;
    }
    let vals: Vec<i64> = order.iter().map(|b| *b as i64).collect();
    let v = StdVecI64 {
        begin: vals.as_ptr(),
        // SAFETY: one past the end of `vals`, as std::vector's end pointer.
        end: unsafe { vals.as_ptr().add(vals.len()) },
        cap: unsafe { vals.as_ptr().add(vals.len()) },
    };
    // SAFETY: globalContext() returns a reference to ATen's static context; the setter copies the
    // five values out of the vector (its size check matches num_sdp_backends = 5) and keeps no
    // pointer to it.
    unsafe { at_set_sdp_priority_order(at_global_context(), &v) };
}

/// cuDNN attention first, then ATen's default order (flash, efficient, math, overrideable).
pub fn prefer_cudnn_attention() {
    use SdpBackend::*;
    set_sdpa_priority([Cudnn, Flash, Efficient, Math, Overrideable]);
}

/// ATen's default order.
pub fn default_attention_order() {
    use SdpBackend::*;
    set_sdpa_priority([Flash, Efficient, Math, Cudnn, Overrideable]);
}
