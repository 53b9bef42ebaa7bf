// CPU part of the stillflow shim (always compiled): the thread-local last error, a small tensor-vector
// API for passing variable-length tensor lists across the C ABI, and activation checkpointing through
// a custom autograd function whose forward and recomputation run a Rust callback.
//
// Tensors cross the ABI as `at::Tensor*` (tch's `C_tensor*` is a `torch::Tensor*`, i.e. an
// `at::Tensor*`). A pointer handed to Rust as an owned tensor is allocated with `new at::Tensor`, which
// is what tch's `at_free` deletes.
#include "shim_common.h"

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace stillflow_shim {
namespace {
thread_local std::string last_error;
}
void set_last_error(std::string msg) { last_error = std::move(msg); }
}  // namespace stillflow_shim

using TensorVec = std::vector<at::Tensor>;

extern "C" {
// Valid until the next failing shim call on this thread.
const char* sf_last_error() { return stillflow_shim::last_error.c_str(); }

// ---- tensor vectors (owned by C++, filled or drained from Rust) ----
void sf_tensor_vec_push(void* vec, const at::Tensor* t) {
  // Rust only pushes tensors it holds; a copy of at::Tensor is a new reference to the same TensorImpl.
  static_cast<TensorVec*>(vec)->push_back(*t);
}
int64_t sf_tensor_vec_len(const void* vec) {
  return static_cast<int64_t>(static_cast<const TensorVec*>(vec)->size());
}
// A new owned handle (free it with tch's at_free, i.e. drop the tch::Tensor).
at::Tensor* sf_tensor_vec_get(const void* vec, int64_t i) {
  return new at::Tensor((*static_cast<const TensorVec*>(vec))[static_cast<size_t>(i)]);
}
void sf_tensor_vec_free(void* vec) { delete static_cast<TensorVec*>(vec); }
void sf_string_set(void* s, const char* msg, size_t len) {
  static_cast<std::string*>(s)->assign(msg, len);
}

// ---- gradients ----
// Drops a tensor's .grad (PyTorch's zero_grad(set_to_none=True)): the memory returns to the
// allocator until the next backward creates a fresh gradient. tch can only zero it in place.
int sf_clear_grad(const at::Tensor* t) {
  try {
    t->mutable_grad().reset();
    return 0;
  } catch (const std::exception& e) {
    stillflow_shim::set_last_error(std::string("clear_grad: ") + e.what());
    return 1;
  }
}
}

// ---- fused AdamW ----
extern "C" {
// ATen's _fused_adamw_ over n parameters: on CUDA a few multi-tensor kernels instead of a dozen
// element-wise passes per parameter (the per-op path reads and writes the 1.3B-parameter state ~25
// times per update). `step` is the step count *after* this update, an f32 0-dim tensor on the
// parameters' device shared by all n (the kernel reads it, does not increment it); `grad_scale`
// (nullable) divides every gradient first (clipping: 1/coef). Gradients must be the parameters' kind.
int sf_fused_adamw(at::Tensor* const* params, at::Tensor* const* grads, at::Tensor* const* exp_avgs,
                   at::Tensor* const* exp_avg_sqs, int64_t n, const at::Tensor* step, double lr,
                   double beta1, double beta2, double weight_decay, double eps,
                   const at::Tensor* grad_scale) {
  SF_TRY({
    std::vector<at::Tensor> p, g, m, v, s;
    p.reserve(n);
    g.reserve(n);
    m.reserve(n);
    v.reserve(n);
    s.reserve(n);
    for (int64_t i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      s.push_back(*step);
    }
    std::optional<at::Tensor> scale;
    if (grad_scale != nullptr) scale = *grad_scale;
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, scale, /*found_inf=*/std::nullopt);
  })
}
}

// ---- activation checkpointing ----
extern "C" {
// Runs the checkpointed function: reads `n_inputs` tensors, pushes its outputs into `out_vec` with
// sf_tensor_vec_push. Returns 0, or non-zero after writing a message into `err` with sf_string_set.
typedef int (*sf_ckpt_cb)(void* user, at::Tensor* const* inputs, int64_t n_inputs, void* out_vec,
                          void* err);
// Releases `user`; called exactly once, when the last owner (the call or the autograd node) goes.
typedef void (*sf_ckpt_drop)(void* user);
}

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The Rust closure, owned by the autograd node (through ctx->saved_data) so that it lives as long as
// the graph that may need to recompute it.
struct RustClosure : torch::CustomClassHolder {
  sf_ckpt_cb cb;
  void* user;
  sf_ckpt_drop drop;
  RustClosure(sf_ckpt_cb c, void* u, sf_ckpt_drop d) : cb(c), user(u), drop(d) {}
  ~RustClosure() override {
    if (drop != nullptr) drop(user);
  }
  TensorVec call(const TensorVec& inputs) const {
    std::vector<at::Tensor*> ptrs;
    ptrs.reserve(inputs.size());
    for (const auto& t : inputs) ptrs.push_back(const_cast<at::Tensor*>(&t));
    TensorVec out;
    std::string err;
    int rc = cb(user, ptrs.data(), static_cast<int64_t>(ptrs.size()), &out, &err);
    if (rc != 0) throw std::runtime_error("checkpointed function failed: " + err);
    for (size_t i = 0; i < out.size(); ++i)
      TORCH_CHECK(out[i].defined(), "checkpointed function returned an undefined tensor at ", i);
    return out;
  }
};

// Arguments: all tensors (the user inputs, then possibly one grad-requiring "anchor", see
// sf_checkpoint), how many of them are user inputs, and the closure.
struct CheckpointFn : torch::autograd::Function<CheckpointFn> {
  static variable_list forward(AutogradContext* ctx, at::TensorList tensors, int64_t n_user,
                               c10::intrusive_ptr<RustClosure> fn) {
    // Function::apply runs this with grad mode off: the callback builds no graph, so nothing of the
    // block's intermediate activations is kept. Only the inputs are saved.
    TensorVec user(tensors.begin(), tensors.begin() + n_user);
    TensorVec out = fn->call(user);
    ctx->save_for_backward(user);
    ctx->saved_data["n_tensors"] = static_cast<int64_t>(tensors.size());
    ctx->saved_data["n_outputs"] = static_cast<int64_t>(out.size());
    ctx->saved_data["fn"] = c10::IValue::make_capsule(std::move(fn));
    // Outputs nobody differentiates arrive as undefined grads instead of materialised zeros.
    ctx->set_materialize_grads(false);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    TensorVec saved = ctx->get_saved_variables();
    auto fn = c10::static_intrusive_pointer_cast<RustClosure>(ctx->saved_data["fn"].toCapsule());
    const int64_t n_tensors = ctx->saved_data["n_tensors"].toInt();
    const int64_t n_outputs = ctx->saved_data["n_outputs"].toInt();

    // Fresh leaves: the recomputed graph stops here, and their .grad is exactly this call's share.
    TensorVec leaves;
    leaves.reserve(saved.size());
    for (size_t i = 0; i < saved.size(); ++i) {
      at::Tensor d = saved[i].detach();
      if (ctx->needs_input_grad(i)) d.requires_grad_(true);
      leaves.push_back(std::move(d));
    }

    // Recompute with a graph (the engine runs backward nodes with grad mode off), then backpropagate
    // the incoming grads through it. torch::autograd::backward with no `inputs` accumulates into
    // every reachable leaf: the detached inputs above and the parameters captured by the closure.
    TensorVec outs;
    {
      at::AutoGradMode enable_grad(true);
      outs = fn->call(leaves);
    }
    TORCH_CHECK(static_cast<int64_t>(outs.size()) == n_outputs,
                "checkpoint: the recomputation returned ", outs.size(), " tensors but the forward ",
                "returned ", n_outputs, " (the checkpointed function must be deterministic)");
    variable_list roots, root_grads;
    for (size_t i = 0; i < outs.size(); ++i) {
      if (i < grad_out.size() && grad_out[i].defined() && outs[i].requires_grad()) {
        roots.push_back(outs[i]);
        root_grads.push_back(grad_out[i]);
      }
    }
    if (!roots.empty()) {
      torch::autograd::backward(roots, root_grads, /*retain_graph=*/false, /*create_graph=*/false);
    }

    // One slot per forward argument: every tensor, then n_user and fn (non-tensors: undefined).
    variable_list grads(static_cast<size_t>(n_tensors) + 2);
    for (size_t i = 0; i < leaves.size(); ++i) {
      if (leaves[i].requires_grad()) grads[i] = leaves[i].grad();
    }
    return grads;
  }
};
}  // namespace

extern "C" {
// Checkpoints `cb` applied to `inputs`. Ownership of `user` passes to the shim in every case: `drop`
// runs once the call failed or the autograd graph holding the closure is freed. On success
// `*out_vec` is a new tensor vector (drain with sf_tensor_vec_get, free with sf_tensor_vec_free).
int sf_checkpoint(sf_ckpt_cb cb, void* user, sf_ckpt_drop drop, at::Tensor* const* inputs,
                  int64_t n_inputs, void** out_vec) {
  c10::intrusive_ptr<RustClosure> fn;
  try {
    fn = c10::make_intrusive<RustClosure>(cb, user, drop);
  } catch (...) {
    drop(user);
    stillflow_shim::set_last_error("checkpoint: out of memory");
    return -1;
  }
  try {
    TensorVec tensors;
    tensors.reserve(static_cast<size_t>(n_inputs) + 1);
    bool any_requires_grad = false;
    for (int64_t i = 0; i < n_inputs; ++i) {
      TORCH_CHECK(inputs[i] != nullptr && inputs[i]->defined(), "checkpoint: input ", i,
                  " is undefined");
      any_requires_grad = any_requires_grad || inputs[i]->requires_grad();
      tensors.push_back(*inputs[i]);
    }
    // Parameters captured by the closure are invisible to autograd's input list. If no input
    // requires grad, an empty grad-requiring anchor still puts the node into the graph, so the
    // backward (and with it the parameters' gradients) happens. Its own gradient stays undefined.
    if (at::GradMode::is_enabled() && !any_requires_grad) {
      auto opts = at::TensorOptions().dtype(at::kFloat);
      if (n_inputs > 0) opts = opts.device(inputs[0]->device());
      tensors.push_back(at::empty({0}, opts).requires_grad_(true));
    }
    variable_list outs = CheckpointFn::apply(at::TensorList(tensors), n_inputs, fn);
    fn.reset();
    *out_vec = new TensorVec(std::move(outs));
    return 0;
  }
  SF_CATCH_ALL(-1)
}
}
