#!/usr/bin/env bash
# GPU check of src/dist on NCCL: torchrun launches the cuda build's hidden `dist-selftest` on every
# GPU of this host; rank 0 prints one table (all_reduce sum/max, broadcast, broadcast_i64,
# all_gather, reduce_scatter, all_reduce_coalesced, bucketed bf16 gradient mean, the order check
# catching a mismatch, barrier; each ok/FAIL per rank) and the bus bandwidth of a 256 MB all_reduce.
#
# From the build machine through the device tool (after make build-cuda):
#   run(kind=nvidia-h100-x2, carry=["target/run-pipeline-cuda"],
#       command="scripts/dist_gpu_check.sh target/run-pipeline-cuda 2")
#
#   scripts/dist_gpu_check.sh [BINARY] [NPROC]
#     BINARY  the cuda build of run-pipeline (default: target/run-pipeline-cuda, from make build-cuda,
#             else target-cuda/release/run-pipeline)
#     NPROC   processes = GPUs to use (default: every visible GPU, at least 2)
#
# Exit 0 only when every check passed on every rank. Needs python3 with torch 2.11 (for torchrun and
# the libraries; scripts/gpu-env.sh points the loader at them) and the GPUs. NVLink multicast stays
# off (NCCL_NVLS_ENABLE=0), as on every multi-GPU H100/H200 run of this project.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

. "$here/gpu-check-lib.sh"
find_cuda_bin "${1:-}"

. "$here/gpu-env.sh"
# Multicast stays off everywhere (it can take a shared host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# Order checks on every collective in the self-test itself; say so in the log for clarity.
export STILLFLOW_DIST_CHECK_EVERY=${STILLFLOW_DIST_CHECK_EVERY:-1}

ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
nproc=${2:-$ngpu}
if [ "$nproc" -lt 2 ]; then
    echo "need at least 2 GPUs for an NCCL check (found $ngpu)" >&2
    exit 2
fi

if command -v torchrun >/dev/null; then run=(torchrun); else run=(python3 -m torch.distributed.run); fi

echo "== host $(hostname): $ngpu GPU(s), using $nproc; binary $bin"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "nccl", ".".join(map(str, torch.cuda.nccl.version())))' || true
echo "== ${run[*]} --standalone --nproc_per_node=$nproc --no-python $bin dist-selftest"
log=$(mktemp)
set +e
"${run[@]}" --standalone --nproc_per_node="$nproc" --no-python "$bin" dist-selftest 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "== dist-selftest exit code: $rc"
# A binary that does not see the GPUs would fall back to Gloo and still pass: that is a failure here
# (unless DIST_CHECK_ALLOW_GLOO=1, for a smoke test of this script on a CPU machine).
if [ "$rc" -eq 0 ] && ! grep -q "backend Nccl" "$log" && [ "${DIST_CHECK_ALLOW_GLOO:-0}" != 1 ]; then
    echo "== FAIL: the self-test did not run on NCCL (no GPU visible to the binary?)"
    rc=1
fi
rm -f "$log"
exit $rc
