//! Safe wrappers over c10d: `Store` (TCPStore + PrefixStore) and `ProcessGroup` (Gloo on CPU,
//! NCCL with feature `cuda`) with in-place collectives that return a `Work` to wait on.
//!
//! **Threads.** `Store` and `ProcessGroup` are `Send` but not `Sync`: build them anywhere, move
//! them to the one thread that issues collectives, and issue every collective from that thread.
//! Collectives must be issued in the same order on every rank (c10d matches them by position), and
//! NCCL must not be driven from several threads at once (spec/libtorch_from_rust.md §10.3, NCCL's
//! thread-safety notes). `comm::Comm` adds names, sequence numbers and order checks on top.
//!
//! **Completion.** `Work::wait` on Gloo blocks the host until the result is in place. On NCCL it
//! makes the calling thread's *current CUDA stream* wait for NCCL's stream; the host does not
//! block, and work queued afterwards on that stream sees the result (docs/DISTRIBUTED.md).

use super::env::DistEnv;
use super::ffi;
use anyhow::{bail, Context, Result};
use std::cell::Cell;
use std::ffi::{c_int, c_void, CString};
use std::time::Duration;
use tch::{Device, Tensor};

/// Which c10d backend a group runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// CPU tensors over TCP (always available).
    Gloo,
    /// CUDA tensors over NVLink/InfiniBand (feature `cuda`).
    Nccl,
}

/// Reductions the shim offers. There is no AVG: Gloo lacks it; divide after a `Sum` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum = 0,
    Max = 1,
    Min = 2,
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).with_context(|| format!("{what} {s:?} contains a NUL byte"))
}

fn millis(d: Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// A key/value store shared by all ranks: a TCPStore under a prefix of our own.
pub struct Store {
    raw: *mut c_void,
    timeout: Duration,
}

// SAFETY: the handle is an owned heap object of the shim (an intrusive_ptr to a c10d store); c10d
// stores may be used from any thread. Not Sync: one owner issues its calls.
unsafe impl Send for Store {}

impl Store {
    /// Connects (or, on the rank that hosts it, starts) the store described by `env`:
    /// MASTER_ADDR:MASTER_PORT, keys under `env.store_prefix()`.
    pub fn from_env(env: &DistEnv, timeout: Duration) -> Result<Store> {
        if env.master_addr.is_empty() || env.master_port == 0 {
            bail!(
                "{}: no store address (MASTER_ADDR/MASTER_PORT are not set)",
                env.describe()
            );
        }
        Store::connect(
            &env.master_addr,
            env.master_port,
            env.hosts_store(),
            env.world_size,
            &env.store_prefix(),
            timeout,
        )
        .with_context(|| {
            format!(
                "{}: store at {}:{} ({})",
                env.describe(),
                env.master_addr,
                env.master_port,
                if env.hosts_store() {
                    "hosting it"
                } else {
                    "as a client"
                }
            )
        })
    }

    /// A store at `host:port`; `serve` starts the server in this process.
    pub fn connect(
        host: &str,
        port: u16,
        serve: bool,
        world: usize,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Store> {
        let h = cstring("store host", host)?;
        let p = cstring("store prefix", prefix)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid C strings; `raw` is written only on success.
        let rc = unsafe {
            ffi::sf_dist_store_new(
                h.as_ptr(),
                port as c_int,
                serve as c_int,
                world as c_int,
                millis(timeout),
                p.as_ptr(),
                &mut raw,
            )
        };
        ffi::check(rc, || format!("cannot open the TCPStore at {host}:{port}"))?;
        Ok(Store { raw, timeout })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = cstring("store key", key)?;
        // SAFETY: live handle; `value` is valid for its length.
        let rc =
            unsafe { ffi::sf_dist_store_set(self.raw, k.as_ptr(), value.as_ptr(), value.len()) };
        ffi::check(rc, || format!("store set `{key}`"))
    }

    /// Waits up to `timeout` (the store's own if None) for `key`, then reads it.
    pub fn get(&self, key: &str, timeout: Option<Duration>) -> Result<Vec<u8>> {
        let k = cstring("store key", key)?;
        let t = timeout.unwrap_or(self.timeout);
        let mut buf = std::ptr::null_mut();
        // SAFETY: live handle; `buf` is a new byte vector on success, freed below.
        let rc = unsafe { ffi::sf_dist_store_get(self.raw, k.as_ptr(), millis(t), &mut buf) };
        ffi::check(rc, || {
            format!("store get `{key}` (waited up to {:.0} s)", t.as_secs_f64())
        })?;
        let (mut data, mut len) = (std::ptr::null(), 0usize);
        // SAFETY: `buf` is the live vector from above; the slice is copied before it is freed.
        let out = unsafe {
            ffi::sf_dist_bytes_view(buf, &mut data, &mut len);
            let v = if len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(data, len).to_vec()
            };
            ffi::sf_dist_bytes_free(buf);
            v
        };
        Ok(out)
    }

    /// Atomically adds `delta` to the integer at `key` (0 when absent); returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let k = cstring("store key", key)?;
        let mut out = 0i64;
        // SAFETY: live handle, valid out pointer.
        let rc = unsafe { ffi::sf_dist_store_add(self.raw, k.as_ptr(), delta, &mut out) };
        ffi::check(rc, || format!("store add `{key}`"))?;
        Ok(out)
    }

    /// Deletes `key`; whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        let k = cstring("store key", key)?;
        let mut deleted: c_int = 0;
        // SAFETY: live handle, valid out pointer.
        let rc = unsafe { ffi::sf_dist_store_delete(self.raw, k.as_ptr(), &mut deleted) };
        ffi::check(rc, || format!("store delete `{key}`"))?;
        Ok(deleted != 0)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { ffi::sf_dist_store_free(self.raw) }
    }
}

/// How to build a process group.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// None: NCCL for a CUDA device, Gloo for the CPU.
    pub backend: Option<BackendKind>,
    /// Where the group's tensors live; None: `cuda:LOCAL_RANK` in a cuda build with a GPU, else CPU.
    pub device: Option<Device>,
    /// Bound on connecting to the store and on each blocking store read.
    pub store_timeout: Duration,
    /// Bound on each collective (the backend's own timeout; NCCL's watchdog uses it too).
    pub timeout: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            backend: None,
            device: None,
            store_timeout: Duration::from_secs(300),
            timeout: Duration::from_secs(600),
        }
    }
}

/// One process's membership in a c10d process group. Owned by the thread that issues collectives
/// (see the module doc for the Send rules).
pub struct ProcessGroup {
    raw: *mut c_void,
    store: Store,
    rank: usize,
    world: usize,
    backend: BackendKind,
    device: Device,
    timeout: Duration,
    /// A collective failed: tear down with abort (peers may never answer a shutdown).
    failed: Cell<bool>,
}

// SAFETY: the handle is an owned heap object of the shim; c10d backends may be created on one
// thread and used on another. Not Sync (Cell, and one thread must issue all collectives).
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group described by `env` (store per `env`, Gloo or NCCL per `opts`).
    pub fn from_env(env: &DistEnv, opts: &GroupOptions) -> Result<ProcessGroup> {
        let device = opts.device.unwrap_or_else(|| default_device(env));
        let store = Store::from_env(env, opts.store_timeout)?;
        let iface = std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default();
        let iface = iface.split(',').next().unwrap_or("").trim().to_string();
        // On one host, loopback always works; elsewhere let Gloo resolve this host's address.
        let host = if is_loopback(&env.master_addr) {
            "127.0.0.1"
        } else {
            ""
        };
        ProcessGroup::new(store, env.rank, env.world_size, device, opts, &iface, host)
            .with_context(|| format!("{}: creating the process group", env.describe()))
    }

    /// Joins a group through an open store. `iface`/`host` pick Gloo's network device (both
    /// empty: Gloo's default); NCCL ignores them.
    pub fn new(
        store: Store,
        rank: usize,
        world: usize,
        device: Device,
        opts: &GroupOptions,
        iface: &str,
        host: &str,
    ) -> Result<ProcessGroup> {
        let backend = opts.backend.unwrap_or(match device {
            Device::Cuda(_) => BackendKind::Nccl,
            _ => BackendKind::Gloo,
        });
        match (backend, device) {
            (BackendKind::Gloo, Device::Cpu) | (BackendKind::Nccl, Device::Cuda(_)) => {}
            (b, d) => bail!("backend {b:?} cannot run on device {d:?} (Gloo: cpu, NCCL: cuda)"),
        }
        if rank >= world {
            bail!("rank {rank} is not below the world size {world}");
        }
        let mut raw = std::ptr::null_mut();
        let t = millis(opts.timeout);
        let rc = match (backend, device) {
            (BackendKind::Nccl, Device::Cuda(i)) => {
                // SAFETY: live store handle; `raw` is written only on success.
                unsafe {
                    ffi::sf_dist_pg_nccl_new(
                        store.raw,
                        rank as c_int,
                        world as c_int,
                        t,
                        i as c_int,
                        &mut raw,
                    )
                }
            }
            _ => {
                let i = cstring("GLOO_SOCKET_IFNAME", iface)?;
                let h = cstring("gloo host", host)?;
                // SAFETY: as above; valid C strings.
                unsafe {
                    ffi::sf_dist_pg_gloo_new(
                        store.raw,
                        rank as c_int,
                        world as c_int,
                        t,
                        i.as_ptr(),
                        h.as_ptr(),
                        &mut raw,
                    )
                }
            }
        };
        ffi::check(rc, || {
            format!("cannot create the {backend:?} process group (rank {rank} of {world})")
        })?;
        Ok(ProcessGroup {
            raw,
            store,
            rank,
            world,
            backend,
            device,
            timeout: opts.timeout,
            failed: Cell::new(false),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world
    }
    pub fn backend(&self) -> BackendKind {
        self.backend
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn check_tensor(&self, what: &str, t: &Tensor) -> Result<()> {
        if !t.defined() {
            bail!("{what}: undefined tensor");
        }
        if t.device() != self.device {
            bail!(
                "{what}: tensor on {:?} but the {:?} group works on {:?}",
                t.device(),
                self.backend,
                self.device
            );
        }
        if !t.is_contiguous() {
            bail!("{what}: tensor {:?} is not contiguous", t.size());
        }
        Ok(())
    }

    fn issue(&self, what: String, f: impl FnOnce(*mut *mut c_void) -> c_int) -> Result<Work<'_>> {
        let mut raw = std::ptr::null_mut();
        let rc = f(&mut raw);
        if rc != 0 {
            self.failed.set(true);
            bail!("{what}: {}", ffi::last_error());
        }
        Ok(Work {
            raw,
            what,
            group: self,
        })
    }

    fn handles(&self, what: &str, ts: &[Tensor]) -> Result<Vec<*mut torch_sys::C_tensor>> {
        if ts.is_empty() {
            bail!("{what}: no tensors");
        }
        for t in ts {
            self.check_tensor(what, t)?;
        }
        Ok(ts.iter().map(|t| t.as_ptr() as *mut _).collect())
    }

    /// Reduces `t` over all ranks, in place.
    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Work<'_>> {
        let p = self.handles("all_reduce", std::slice::from_ref(t))?;
        // SAFETY: live group; `p` holds live tensor handles (the shim keeps its own references).
        self.issue(format!("all_reduce {op:?} {}", describe(t)), |w| unsafe {
            ffi::sf_dist_allreduce(self.raw, p.as_ptr(), 1, op as c_int, w)
        })
    }

    /// Reduces each tensor of `ts` over all ranks in one coalesced operation, in place. All
    /// tensors must share one dtype.
    pub fn all_reduce_coalesced(&self, ts: &[Tensor], op: ReduceOp) -> Result<Work<'_>> {
        let p = self.handles("all_reduce_coalesced", ts)?;
        let n = p.len() as i64;
        // SAFETY: as in all_reduce.
        self.issue(
            format!("all_reduce_coalesced {op:?} of {n} tensors"),
            |w| unsafe {
                ffi::sf_dist_allreduce_coalesced(self.raw, p.as_ptr(), n, op as c_int, w)
            },
        )
    }

    /// Copies `root`'s `t` into every rank's `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<Work<'_>> {
        if root >= self.world {
            bail!(
                "broadcast: root {root} is not a rank (world {})",
                self.world
            );
        }
        let p = self.handles("broadcast", std::slice::from_ref(t))?;
        // SAFETY: as in all_reduce.
        self.issue(
            format!("broadcast from {root} {}", describe(t)),
            |w| unsafe { ffi::sf_dist_broadcast(self.raw, p.as_ptr(), 1, root as c_int, w) },
        )
    }

    /// `output` ← every rank's `input`, concatenated along dim 0 in rank order
    /// (`output.numel() == world · input.numel()`).
    pub fn all_gather_into(&self, output: &Tensor, input: &Tensor) -> Result<Work<'_>> {
        self.check_sizes("all_gather", output, input)?;
        let (o, i) = (output.as_ptr() as *mut _, input.as_ptr() as *mut _);
        // SAFETY: as in all_reduce.
        self.issue(format!("all_gather {}", describe(input)), |w| unsafe {
            ffi::sf_dist_allgather_base(self.raw, o, i, w)
        })
    }

    /// `output` ← this rank's chunk (dim 0, rank order) of the reduction of every rank's `input`
    /// (`input.numel() == world · output.numel()`).
    pub fn reduce_scatter_into(
        &self,
        output: &Tensor,
        input: &Tensor,
        op: ReduceOp,
    ) -> Result<Work<'_>> {
        self.check_sizes("reduce_scatter", input, output)?;
        let (o, i) = (output.as_ptr() as *mut _, input.as_ptr() as *mut _);
        // SAFETY: as in all_reduce.
        self.issue(
            format!("reduce_scatter {op:?} {}", describe(input)),
            |w| unsafe { ffi::sf_dist_reduce_scatter_base(self.raw, o, i, op as c_int, w) },
        )
    }

    /// Returns once every rank reached the barrier.
    pub fn barrier(&self) -> Result<Work<'_>> {
        // SAFETY: live group.
        self.issue("barrier".into(), |w| unsafe {
            ffi::sf_dist_barrier(self.raw, w)
        })
    }

    /// `big` must hold `world` times the elements of `small`, of the same dtype.
    fn check_sizes(&self, what: &str, big: &Tensor, small: &Tensor) -> Result<()> {
        self.check_tensor(what, big)?;
        self.check_tensor(what, small)?;
        if big.kind() != small.kind() {
            bail!(
                "{what}: dtypes differ ({:?} and {:?})",
                big.kind(),
                small.kind()
            );
        }
        if big.numel() != self.world * small.numel() {
            bail!(
                "{what}: the flat tensor has {} elements, want world ({}) × {} = {}",
                big.numel(),
                self.world,
                small.numel(),
                self.world * small.numel()
            );
        }
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once; no Work outlives it (they borrow the group).
        unsafe { ffi::sf_dist_pg_free(self.raw, self.failed.get() as c_int) }
    }
}

/// An issued collective. Wait on it before reading its tensors (`wait` consumes it); dropping it
/// unwaited leaves the operation running and only releases the handle.
#[must_use = "a collective's result is only valid after Work::wait"]
pub struct Work<'g> {
    raw: *mut c_void,
    what: String,
    group: &'g ProcessGroup,
}

impl Work<'_> {
    /// Completes the collective (see the module doc for what that means per backend). Uses the
    /// group's timeout; an error marks the group as failed (it is then aborted when dropped).
    pub fn wait(self) -> Result<()> {
        // SAFETY: live work handle (freed in Drop, after this).
        let rc = unsafe { ffi::sf_dist_work_wait(self.raw, millis(self.group.timeout)) };
        if rc != 0 {
            self.group.failed.set(true);
            bail!("{} failed: {}", self.what, ffi::last_error());
        }
        Ok(())
    }
}

impl Drop for Work<'_> {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { ffi::sf_dist_work_free(self.raw) }
    }
}

/// `f32[2, 3] on Cpu`, for messages and order signatures.
pub fn describe(t: &Tensor) -> String {
    format!("{:?}{:?}", t.kind(), t.size())
}

/// `cuda:LOCAL_RANK` where this binary has CUDA and a GPU is visible, else the CPU.
pub fn default_device(env: &DistEnv) -> Device {
    if crate::cuda::built_with_cuda() && tch::Cuda::is_available() {
        Device::Cuda(env.local_rank)
    } else {
        Device::Cpu
    }
}

fn is_loopback(addr: &str) -> bool {
    addr == "localhost" || addr.starts_with("127.") || addr == "::1"
}
