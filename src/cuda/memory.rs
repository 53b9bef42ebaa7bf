//! Device properties and the CUDA caching allocator's memory statistics.
#[cfg(feature = "cuda")]
use super::ffi;
#[cfg(not(feature = "cuda"))]
use anyhow::bail;
use anyhow::Result;

/// Memory held by the CUDA caching allocator on one device, in bytes (aggregate over its pools).
/// `allocated`: in live tensors now; `peak`: highest `allocated` since start or the last
/// `reset_peak`; `reserved`: obtained from the driver (allocated plus cached free blocks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    pub allocated: u64,
    pub peak: u64,
    pub reserved: u64,
    pub reserved_peak: u64,
}

/// Static and current properties of one CUDA device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceProps {
    pub name: String,
    pub total_bytes: u64,
    /// Free device memory as the driver reports it (cudaMemGetInfo): other processes count too.
    pub free_bytes: u64,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
}

/// Number of visible CUDA devices (0 without feature `cuda` or when none is usable).
pub fn device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        let mut n = 0;
        // SAFETY: out-pointer on our stack.
        if unsafe { ffi::sf_cuda_device_count(&mut n) } == 0 {
            return n.max(0) as usize;
        }
        0
    }
    #[cfg(not(feature = "cuda"))]
    0
}

/// Properties of CUDA device `device`. Without feature `cuda`: an error.
pub fn device_properties(device: usize) -> Result<DeviceProps> {
    #[cfg(feature = "cuda")]
    {
        let d = checked(device)?;
        let mut raw = ffi::RawDeviceProps {
            name: [0; 256],
            total_bytes: 0,
            free_bytes: 0,
            major: 0,
            minor: 0,
            multiprocessors: 0,
        };
        // SAFETY: out-pointer to a repr(C) struct on our stack; the shim NUL-terminates `name`.
        ffi::check(
            unsafe { ffi::sf_device_props(d, &mut raw) },
            "device properties",
        )?;
        // SAFETY: `name` is NUL-terminated within its 256 bytes.
        let name = unsafe { std::ffi::CStr::from_ptr(raw.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(DeviceProps {
            name,
            total_bytes: raw.total_bytes,
            free_bytes: raw.free_bytes,
            compute_capability: (raw.major, raw.minor),
            multiprocessors: raw.multiprocessors,
        })
    }
    #[cfg(not(feature = "cuda"))]
    bail!("device properties of CUDA device {device} need the `cuda` feature (make build-cuda)")
}

/// Caching-allocator statistics of CUDA device `device`. Without feature `cuda`: all zero (there is
/// no CUDA caching allocator; CPU memory is not tracked).
pub fn memory_stats(device: usize) -> Result<MemStats> {
    #[cfg(feature = "cuda")]
    {
        let d = checked(device)?;
        let mut raw = ffi::RawMemStats::default();
        // SAFETY: out-pointer to a repr(C) struct on our stack.
        ffi::check(
            unsafe { ffi::sf_memory_stats(d, &mut raw) },
            "getDeviceStats",
        )?;
        let b = |v: i64| v.max(0) as u64;
        Ok(MemStats {
            allocated: b(raw.allocated),
            peak: b(raw.allocated_peak),
            reserved: b(raw.reserved),
            reserved_peak: b(raw.reserved_peak),
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(MemStats::default())
    }
}

/// Resets the peak statistics of `device` to the current values. Without `cuda`: a no-op.
pub fn reset_peak(device: usize) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        let d = checked(device)?;
        // SAFETY: plain argument.
        ffi::check(unsafe { ffi::sf_reset_peak(d) }, "resetPeakStats")
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(())
    }
}

#[cfg(feature = "cuda")]
fn checked(device: usize) -> Result<std::ffi::c_int> {
    let n = device_count();
    if device >= n {
        anyhow::bail!("CUDA device {device} does not exist ({n} visible)");
    }
    Ok(device as std::ffi::c_int)
}

/// A one-line description of device `i`: name, compute capability, SMs, total and free memory.
pub fn device_description(i: usize) -> String {
    match device_properties(i) {
        Ok(p) => format!(
            "{} (sm_{}{}, {} SMs, {:.1} GiB total, {:.1} GiB free)",
            p.name,
            p.compute_capability.0,
            p.compute_capability.1,
            p.multiprocessors,
            p.total_bytes as f64 / (1u64 << 30) as f64,
            p.free_bytes as f64 / (1u64 << 30) as f64
        ),
        Err(e) => format!("{e:#}"),
    }
}

/// Whether `STILLFLOW_MEMLOG` is set (read once).
pub fn memlog_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("STILLFLOW_MEMLOG").is_some())
}

/// With `STILLFLOW_MEMLOG` set, prints the caching allocator's allocated / peak / reserved memory
/// of a CUDA `device` after `what` (a memory trace to find out where a step runs out of memory).
pub fn memlog(what: &str, device: tch::Device) {
    if !memlog_enabled() {
        return;
    }
    if let tch::Device::Cuda(i) = device {
        if let Ok(m) = memory_stats(i) {
            let g = |b: u64| b as f64 / (1u64 << 30) as f64;
            eprintln!(
                "memory {what}: {:.2} GiB allocated (peak {:.2}, reserved {:.2})",
                g(m.allocated),
                g(m.peak),
                g(m.reserved)
            );
        }
    }
}
