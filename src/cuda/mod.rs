//! CUDA extras that tch 0.24 lacks (streams, events, record_stream, device properties), through the
//! C++ shim in csrc/. Without the `cuda` feature these are CPU stubs.

/// A one-line description of device `i` (name, memory); "unknown" details without the shim.
pub fn device_description(i: usize) -> String {
    let _ = i;
    "details need the `cuda` feature (make build-cuda)".to_string()
}
