//! Activation checkpointing: run a block without keeping its activations, recompute it in backward.
//!
//! `checkpoint(f, inputs)` returns `f(inputs)` but records a single autograd node (a C++
//! `torch::autograd::Function` in csrc/shim_cpu.cpp) instead of `f`'s graph:
//! * forward: `f` runs once under no-grad; only `inputs` are saved.
//! * backward: the node detaches the saved inputs into fresh leaves (grad-requiring where autograd needs
//!   their gradient), runs `f` again with grad enabled, and backpropagates the incoming gradients
//!   through that recomputed graph with `torch::autograd::backward`. The inputs' gradients flow on to
//!   the rest of the graph; gradients of tensors `f` captured (parameters) are accumulated into their
//!   `.grad`, exactly as a plain `.backward()` through `f` would.
//!
//! Contract for `f` (see docs/CUDA.md):
//! * deterministic: the recomputation must produce the same values (use keyed `crate::rng` draws, never
//!   the global generator) and the same number of outputs;
//! * no in-place change of its inputs, and the captured parameters must not change between forward and
//!   backward (the recomputation would see the new values);
//! * `Send + 'static`: the closure lives inside the autograd graph until the graph is freed, and for
//!   CUDA tensors backward runs on the autograd engine's device thread. Calls are serialised by a mutex,
//!   so `f` need not be `Sync` (it may capture `Tensor`s);
//! * parameter gradients only reach `.grad` through a plain `backward()`. A `run_backward` restricted to
//!   chosen inputs does not execute this node unless those inputs lie upstream of it, and even then the
//!   parameter gradients go to `.grad` rather than into its result (as with PyTorch's reentrant
//!   checkpoint). Double backward (`create_graph`) is not supported.
use super::ffi;
use anyhow::{bail, Result};
use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use tch::Tensor;
use torch_sys::C_tensor;

type BoxedFn = Box<dyn Fn(&[Tensor]) -> Result<Vec<Tensor>> + Send>;

/// What the shim's `user` pointer points to.
struct Closure {
    f: Mutex<BoxedFn>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Called by the shim in forward (no-grad) and in backward (grad enabled). Never unwinds.
unsafe extern "C" fn call_closure(
    user: *mut c_void,
    inputs: *const *mut C_tensor,
    n_inputs: i64,
    out_vec: *mut c_void,
    err: *mut c_void,
) -> c_int {
    let run = AssertUnwindSafe(|| -> Result<Vec<Tensor>> {
        // SAFETY: `user` is the Box<Closure> leaked by try_checkpoint and kept alive by the shim until
        // `drop_closure`; `inputs` holds `n_inputs` live at::Tensor pointers for this call.
        let closure = unsafe { &*(user as *const Closure) };
        let ins: Vec<Tensor> = (0..n_inputs.max(0) as usize)
            .map(|i| unsafe { Tensor::clone_from_ptr(*inputs.add(i)) })
            .collect();
        let f = closure.f.lock().unwrap_or_else(|p| p.into_inner());
        f(&ins)
    });
    let msg = match catch_unwind(run) {
        Ok(Ok(outs)) => {
            for t in &outs {
                // SAFETY: out_vec is the shim's std::vector<at::Tensor>; push copies the handle.
                unsafe { ffi::sf_tensor_vec_push(out_vec, t.as_ptr()) };
            }
            return 0;
        }
        Ok(Err(e)) => format!("{e:#}"),
        Err(p) => format!("panic: {}", panic_message(p.as_ref())),
    };
    // SAFETY: err is the shim's std::string for this call; msg outlives the copy.
    unsafe { ffi::sf_string_set(err, msg.as_ptr().cast(), msg.len()) };
    1
}

/// Called by the shim exactly once, when the last owner of the closure goes away.
unsafe extern "C" fn drop_closure(user: *mut c_void) {
    // SAFETY: `user` came from Box::into_raw in try_checkpoint and is released only here.
    let b = unsafe { Box::from_raw(user as *mut Closure) };
    // Dropping captured tensors cannot normally panic; never let it unwind into C++ anyway.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
}

/// Checkpointed `f(inputs)`; errors from `f` (in forward) or from the shim come back as `Err`.
/// Errors of the recomputation in backward surface where `backward` is called (tch panics there, or
/// `f_backward` returns them).
pub fn try_checkpoint<F>(f: F, inputs: &[Tensor]) -> Result<Vec<Tensor>>
where
    F: Fn(&[Tensor]) -> Result<Vec<Tensor>> + Send + 'static,
{
    let user = Box::into_raw(Box::new(Closure {
        f: Mutex::new(Box::new(f)),
    })) as *mut c_void;
    let ptrs: Vec<*mut C_tensor> = inputs.iter().map(|t| t.as_ptr() as *mut C_tensor).collect();
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: ownership of `user` passes to the shim (it calls drop_closure once, on every path);
    // `ptrs` are live tensors borrowed for the duration of the call.
    let rc = unsafe {
        ffi::sf_checkpoint(
            call_closure,
            user,
            drop_closure,
            ptrs.as_ptr(),
            ptrs.len() as i64,
            &mut out,
        )
    };
    ffi::check(rc, "checkpoint")?;
    if out.is_null() {
        bail!("checkpoint: the shim returned no outputs");
    }
    // SAFETY: `out` is a std::vector<at::Tensor>* owned by us now; get() returns new owned handles.
    let outs = unsafe {
        let n = ffi::sf_tensor_vec_len(out);
        let v = (0..n)
            .map(|i| Tensor::from_ptr(ffi::sf_tensor_vec_get(out, i)))
            .collect();
        ffi::sf_tensor_vec_free(out);
        v
    };
    Ok(outs)
}

/// Checkpointed `f(inputs)` for an infallible `f`; panics with the shim's message on failure.
pub fn checkpoint<F>(f: F, inputs: &[Tensor]) -> Vec<Tensor>
where
    F: Fn(&[Tensor]) -> Vec<Tensor> + Send + 'static,
{
    match try_checkpoint(move |xs| Ok(f(xs)), inputs) {
        Ok(v) => v,
        Err(e) => panic!("{e:#}"),
    }
}

/// Drops `t`'s gradient (`.grad` becomes undefined, as `zero_grad(set_to_none=True)`), returning its
/// memory to the allocator until the next backward. A later backward creates a fresh gradient
/// equal to what accumulating into zeros would give.
pub fn clear_grad(t: &Tensor) -> Result<()> {
    // SAFETY: `t` is a live tensor for the duration of the call; the shim only resets its grad.
    let rc = unsafe { ffi::sf_clear_grad(t.as_ptr()) };
    ffi::check(rc, "clear_grad")
}
