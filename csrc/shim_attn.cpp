// Attention whose forward result can be kept and reused (always compiled, CPU and CUDA builds):
// selective activation checkpointing keeps each block's self-attention output and log-sum-exp from
// the checkpoint's no-grad forward, so the recomputation in backward does not run attention again.
//
// * sf_attention_fwd_lse: the attention forward through the same fused kernel that
//   at::scaled_dot_product_attention would pick (at::_fused_sdp_choice), asked for its log-sum-exp;
//   returns the output and an opaque SavedAttention (output, lse and what the kernel's backward needs).
// * sf_attention_from_saved: an autograd node whose forward returns the saved output (no attention
//   compute; q/k/v are only saved) and whose backward is that kernel's backward from q, k, v, out, lse.
//
// Only unmasked, non-causal, dropout-free attention with the default scale takes this path. Backends:
//   CPU  flash  -> _scaled_dot_product_flash_attention_for_cpu (+ _backward)
//   CUDA cudnn  -> _scaled_dot_product_cudnn_attention (+ _backward)  [SDPA's default on H100]
//   CUDA flash  -> _scaled_dot_product_flash_attention (+ _backward), head dim multiple of 8 only
//                  (SDPA pads other head dims; we decline them instead)
//   CUDA efficient -> _scaled_dot_product_efficient_attention (+ _backward)
// Anything else (math, overrideable, other devices) is declined: the caller runs plain SDPA and
// the block's recomputation runs attention as before. The argument order of each backward call is
// the one autograd itself uses for these ops (torchgen's derivatives.yaml of libtorch 2.11).
#include "shim_common.h"

#include <ATen/ATen.h>
#include <ATen/SDPBackend.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One kept attention forward. Owned by Rust (through a heap-allocated intrusive_ptr) until the
// recomputation hands it to FromSavedFn, which copies what it needs into its autograd context.
struct SavedAttention : torch::CustomClassHolder {
  int64_t backend = -1;  // at::SDPBackend as an integer
  at::Tensor out, lse;
  // CUDA kernels only (undefined on CPU): cuDNN/flash sequence bookkeeping and RNG state.
  at::Tensor cum_q, cum_k, philox_seed, philox_offset;
  int64_t max_q = 0, max_k = 0;
};
using SavedPtr = c10::intrusive_ptr<SavedAttention>;

int64_t sym(const c10::SymInt& s) { return s.guard_int(__FILE__, __LINE__); }

// The cuDNN and CUDA-flash forwards return the same nine fields: (output, logsumexp, cum_seq_q,
// cum_seq_k, max_q, max_k, philox_seed | rng_state, philox_offset | unused, debug_attn_mask).
template <class Nine>
void keep_nine(SavedAttention& s, const Nine& r) {
  s.out = std::get<0>(r);
  s.lse = std::get<1>(r);
  s.cum_q = std::get<2>(r);
  s.cum_k = std::get<3>(r);
  s.max_q = sym(std::get<4>(r));
  s.max_k = sym(std::get<5>(r));
  s.philox_seed = std::get<6>(r);
  s.philox_offset = std::get<7>(r);
}

// The backend at::scaled_dot_product_attention would use for these inputs when they require grad
// (some backends refuse backward-only configurations, so the choice is made as for training). The
// detached aliases only carry metadata for the choice; no data is read or copied.
at::SDPBackend choose(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  at::Tensor qg = q.detach().requires_grad_(true);
  at::Tensor kg = k.detach().requires_grad_(true);
  at::Tensor vg = v.detach().requires_grad_(true);
  return static_cast<at::SDPBackend>(at::_fused_sdp_choice(qg, kg, vg));
}

// Forward with log-sum-exp; an undefined `saved` means "declined" (no error).
SavedPtr forward_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::SDPBackend b = choose(q, k, v);
  auto s = c10::make_intrusive<SavedAttention>();
  s->backend = static_cast<int64_t>(b);
  if (q.device().is_cpu()) {
    if (b != at::SDPBackend::flash_attention) return SavedPtr();
    std::tie(s->out, s->lse) = at::_scaled_dot_product_flash_attention_for_cpu(
        q, k, v, /*dropout_p=*/0.0, /*is_causal=*/false, /*attn_mask=*/std::nullopt,
        /*scale=*/std::nullopt);
    return s;
  }
  if (!q.device().is_cuda()) return SavedPtr();
  switch (b) {
    case at::SDPBackend::cudnn_attention: {
      keep_nine(*s, at::_scaled_dot_product_cudnn_attention(
                        q, k, v, /*attn_bias=*/std::nullopt, /*compute_log_sumexp=*/true,
                        /*dropout_p=*/0.0, /*is_causal=*/false, /*return_debug_mask=*/false,
                        /*scale=*/std::nullopt));
      return s;
    }
    case at::SDPBackend::flash_attention: {
      if (q.size(-1) % 8 != 0) return SavedPtr();
      // rng_state and unused land in philox_seed / philox_offset.
      keep_nine(*s, at::_scaled_dot_product_flash_attention(
                        q, k, v, /*dropout_p=*/0.0, /*is_causal=*/false,
                        /*return_debug_mask=*/false, /*scale=*/std::nullopt));
      return s;
    }
    case at::SDPBackend::efficient_attention: {
      // (output, log_sumexp, philox_seed, philox_offset)
      auto r = at::_scaled_dot_product_efficient_attention(
          q, k, v, /*attn_bias=*/std::nullopt, /*compute_log_sumexp=*/true, /*dropout_p=*/0.0,
          /*is_causal=*/false, /*scale=*/std::nullopt);
      s->out = std::get<0>(r);
      s->lse = std::get<1>(r);
      s->philox_seed = std::get<2>(r);
      s->philox_offset = std::get<3>(r);
      return s;
    }
    default:
      return SavedPtr();
  }
}

// Forward: returns the kept output; backward: the kept backend's attention backward. The kept
// tensors go into save_for_backward (not into a member of the node) because `out` becomes this
// node's output: SavedVariable stores an output without a strong reference to its grad_fn, so
// node -> out -> node is no cycle.
struct FromSavedFn : torch::autograd::Function<FromSavedFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, SavedPtr s) {
    ctx->save_for_backward({q, k, v, s->out, s->lse, s->cum_q, s->cum_k, s->philox_seed,
                            s->philox_offset});
    ctx->saved_data["backend"] = s->backend;
    ctx->saved_data["max_q"] = s->max_q;
    ctx->saved_data["max_k"] = s->max_k;
    return s->out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3],
                     &lse = saved[4], &cum_q = saved[5], &cum_k = saved[6], &seed = saved[7],
                     &offset = saved[8];
    const auto b = static_cast<at::SDPBackend>(ctx->saved_data["backend"].toInt());
    const int64_t max_q = ctx->saved_data["max_q"].toInt();
    const int64_t max_k = ctx->saved_data["max_k"].toInt();
    const at::Tensor& g = grad_out[0];
    at::Tensor dq, dk, dv;
    if (q.device().is_cpu()) {
      std::tie(dq, dk, dv) = at::_scaled_dot_product_flash_attention_for_cpu_backward(
          g, q, k, v, out, lse, /*dropout_p=*/0.0, /*is_causal=*/false, /*attn_mask=*/std::nullopt,
          /*scale=*/std::nullopt);
    } else if (b == at::SDPBackend::cudnn_attention) {
      // attn_bias: autograd passes the undefined tensor for a None bias.
      std::tie(dq, dk, dv) = at::_scaled_dot_product_cudnn_attention_backward(
          g, q, k, v, out, lse, seed, offset, /*attn_bias=*/at::Tensor(), cum_q, cum_k, max_q,
          max_k, /*dropout_p=*/0.0, /*is_causal=*/false, /*scale=*/std::nullopt);
    } else if (b == at::SDPBackend::flash_attention) {
      std::tie(dq, dk, dv) = at::_scaled_dot_product_flash_attention_backward(
          g, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, /*dropout_p=*/0.0, /*is_causal=*/false,
          /*philox_seed=*/seed, /*philox_offset=*/offset, /*scale=*/std::nullopt);
    } else if (b == at::SDPBackend::efficient_attention) {
      at::Tensor dbias;
      std::tie(dq, dk, dv, dbias) = at::_scaled_dot_product_efficient_attention_backward(
          g, q, k, v, /*attn_bias=*/at::Tensor(), out, lse, seed, offset, /*dropout_p=*/0.0,
          /*grad_input_mask=*/{true, true, true, false}, /*is_causal=*/false,
          /*scale=*/std::nullopt);
    } else {
      TORCH_CHECK(false, "attention_from_saved: no backward for SDPA backend ",
                  static_cast<int64_t>(b));
    }
    // One slot per forward argument: q, k, v, then the holder (not a tensor).
    return {dq, dk, dv, at::Tensor()};
  }
};
}  // namespace

extern "C" {
// q, k, v: [B, heads, L, d] (k/v may be longer than q). Returns 0 with `*out` (owned tensor) and
// `*saved` (free with sf_saved_attention_free) set; 1 when no kernel with a log-sum-exp fits these
// inputs (nothing set, the caller runs plain SDPA); -1 on error (sf_last_error).
int sf_attention_fwd_lse(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                         at::Tensor** out, void** saved) {
  try {
    SavedPtr s = forward_lse(*q, *k, *v);
    if (!s) return 1;
    *out = new at::Tensor(s->out);
    *saved = new SavedPtr(std::move(s));
    return 0;
  }
  SF_CATCH_ALL(-1)
}

void sf_saved_attention_free(void* saved) { delete static_cast<SavedPtr*>(saved); }

// The at::SDPBackend the saved forward ran (diagnostics).
int64_t sf_saved_attention_backend(const void* saved) {
  return (*static_cast<const SavedPtr*>(saved))->backend;
}

// The kept output as an autograd node over q, k, v (which must be the recomputed equals of the
// tensors the kept forward saw). `saved` stays owned by the caller. Returns 0 with `*out` set, or -1.
int sf_attention_from_saved(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                            const void* saved, at::Tensor** out) {
  SF_TRY({
    const SavedPtr& s = *static_cast<const SavedPtr*>(saved);
    TORCH_CHECK(s && s->out.defined(), "attention_from_saved: empty saved attention");
    TORCH_CHECK(q->sizes() == s->out.sizes(), "attention_from_saved: q has shape ", q->sizes(),
                " but the kept output ", s->out.sizes());
    *out = new at::Tensor(FromSavedFn::apply(*q, *k, *v, s));
  })
}
}
