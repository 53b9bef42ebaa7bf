#!/usr/bin/env bash
# GPU self-test of the CUDA shim (src/cuda, csrc/shim_cuda.cpp): streams (thread-local current stream,
# guard), event hand-off across threads with record_stream, the caching allocator's reuse with and
# without record_stream, event timing, memory statistics, activation checkpointing on CUDA, and the
# kept attention of selective checkpointing (cuda_attention: kept forward and replayed backward
# against SDPA's).
#
#   scripts/gpu_selftest.sh            # build here (feature cuda, needs the CUDA header wheels), then run
#   scripts/gpu_selftest.sh --stage D  # build, then copy the binaries and this script's helpers into D
#   D/gpu_selftest.sh D                # on a GPU machine: run the prebuilt binaries found in D
#
# On a machine other than the build machine the binaries' RUNPATH points at the build venv, so
# gpu-env.sh (next to this script, or in scripts/) points the loader at the local torch first.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

TESTS="cuda_gpu cuda_checkpoint cuda_stubs cuda_attention"

# Builds run-pipeline and the test binaries with feature cuda; copies them into $1.
build_into() {
    local dest=$1 root json t exe
    root=$(cd "$here/.." && pwd)
    mkdir -p "$dest"
    (
        cd "$root"
        . scripts/dev-env.sh
        cargo build --release --features cuda >&2
        json=$(cargo test --release --features cuda $(printf -- '--test %s ' $TESTS) --no-run \
            --message-format=json 2>/dev/null)
        for t in $TESTS; do
            exe=$(printf '%s\n' "$json" | sed -n "s/.*\"executable\":\"\([^\"]*\/$t-[^\"]*\)\".*/\1/p" | tail -n 1)
            [ -n "$exe" ] || { echo "test binary $t not found" >&2; exit 1; }
            cp "$exe" "$dest/$t"
        done
        cp target/release/run-pipeline "$dest/run-pipeline-cuda"
    )
}

run_in() {
    local dir=$1
    if [ -f "$dir/gpu-env.sh" ]; then . "$dir/gpu-env.sh"; else . "$here/gpu-env.sh"; fi
    echo "== host: $(hostname)  torch lib: ${LD_LIBRARY_PATH%%:*}"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    echo "== run-pipeline doctor (cuda build)"
    "$dir/run-pipeline-cuda" doctor || echo "doctor exited with $?"
    echo "== cuda_gpu tests (one thread: the memory checks assume no concurrent allocation)"
    "$dir/cuda_gpu" --test-threads=1 --nocapture
    echo "== kept attention (selective checkpointing) against SDPA"
    "$dir/cuda_attention" --test-threads=1 --nocapture
    echo "== CPU checkpoint and host-stream tests, cuda build"
    "$dir/cuda_checkpoint"
    "$dir/cuda_stubs"
}

case "${1:-}" in
    --stage)
        dest=${2:?usage: gpu_selftest.sh --stage DIR}
        build_into "$dest"
        cp "$here/gpu_selftest.sh" "$here/gpu-env.sh" "$dest/"
        du -sh "$dest"
        ;;
    "")
        tmp=$(mktemp -d)
        build_into "$tmp"
        run_in "$tmp"
        ;;
    *)
        run_in "$(cd "$1" && pwd)"
        ;;
esac
