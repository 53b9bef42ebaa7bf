# Source this on a GPU machine that has torch 2.11.0 in its python3 but not the build machine's .venv:
# the binary's RUNPATH points at the build machine's venv, so point the loader at this machine's torch.
#   . scripts/gpu-env.sh && ./run-pipeline doctor
_sf_torch=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))') || return 1 2>/dev/null || exit 1
export LD_LIBRARY_PATH=$_sf_torch/lib:$_sf_torch/../nvidia/cu13/lib:$_sf_torch/../nvidia/nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# NVLink multicast (NVLS) off on multi-GPU hosts: see docs/ARCHITECTURE.md.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
unset _sf_torch
