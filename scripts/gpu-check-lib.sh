# Shared by the GPU check scripts (dist_, dp_, zero_, disagg_gpu_check.sh, gpu_bench.sh): sourced,
# never run. Expects `here` (the scripts folder) and `root` (the repository) to be set.

# find_cuda_bin [PATH]: sets `bin` to PATH, else to the first cuda build of run-pipeline found
# (make build-cuda's target/run-pipeline-cuda, cargo's target-cuda/release/run-pipeline, or one
# carried next to the scripts); exits 2 naming what to do when there is none.
find_cuda_bin() {
    bin=${1:-}
    if [ -z "$bin" ]; then
        for c in "$root/target/run-pipeline-cuda" "$root/target-cuda/release/run-pipeline" "$here/run-pipeline-cuda"; do
            if [ -x "$c" ]; then bin=$c; break; fi
        done
    fi
    [ -n "$bin" ] && [ -x "$bin" ] || { echo "no cuda build of run-pipeline found (make build-cuda, or pass its path)" >&2; exit 2; }
}

# gpu_env DEVICE NPROC: on `cuda`, the loader path (gpu-env.sh), at least NPROC GPUs (else exit 2)
# and a line per GPU; on `cpu`, no visible GPUs. Always: NVLink multicast off (it can take a shared
# host's GPUs out of service), and `run` = the torchrun launcher.
gpu_env() {
    if [ "$1" = cuda ]; then
        . "$here/gpu-env.sh"
        local ngpu
        ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        if [ "$ngpu" -lt "$2" ]; then
            echo "need $2 GPUs (found $ngpu)" >&2
            exit 2
        fi
        nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
    else
        export CUDA_VISIBLE_DEVICES=
    fi
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    if command -v torchrun >/dev/null; then run=(torchrun); else run=(python3 -m torch.distributed.run); fi
}
