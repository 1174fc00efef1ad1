#!/usr/bin/env bash
# Check the shipped PTX the way a driver will see it: the header must stay at ISA <= 7.0 and
# .target sm_52, and NVIDIA's own assembler must accept each file, warnings as errors, for every
# GPU generation rigdoctor's users run, Maxwell (sm_52) to Blackwell (sm_100 data centre, sm_120
# GeForce RTX 50xx). ptxas needs no GPU; it comes from the nvidia-cuda-nvcc-cu12 wheel on PyPI,
# cached under target/ptxas/<version> (or $PTXAS, or a ptxas >= 12.9 on PATH).
#
# Why these rules (kernels/README.md has the details and sources):
# - PTX ISA 7.0 is CUDA 11.0's (PTX ISA release notes, "PTX ISA release history"), and a driver
#   JIT-compiles PTX up to its own CUDA version: every driver since R450 (CUDA 11.0: 450.36.06
#   RC, 450.51.05 GA) loads it. ISA 7.1 would need CUDA 11.1 / R455, 7.4 CUDA 11.4 / R470, 8.x
#   CUDA 12 / R525; older drivers fail with CUDA_ERROR_UNSUPPORTED_PTX_VERSION.
# - PTX for sm_52 JIT-compiles for sm_52 and every later GPU. CUDA 12 still supports sm_50 (the
#   oldest target of CUDA 12; Kepler sm_35/37 went in 12.0): the sm_50 chips (GM107/GM108,
#   GTX 745/750, Quadro K620) are left out; sm_52 is also ptxas' own default -arch.
# - sm_100/sm_120 need ptxas from CUDA 12.8 or later, sm_103/sm_121 from 12.9 (ptxas 12.8.93
#   rejects them: "Value 'sm_103' is not defined for option 'gpu-name'"), hence the 12.9 wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

wheel_version=12.9.86 # nvidia-cuda-nvcc-cu12 on PyPI (`pip index versions nvidia-cuda-nvcc-cu12`)
archs=(sm_52 sm_61 sm_70 sm_75 sm_80 sm_86 sm_89 sm_90 sm_100 sm_103 sm_120 sm_121)

fail=0
for f in kernels/*.ptx; do
    version=$(grep -m1 -oE '^\.version [0-9]+\.[0-9]+' "$f" | cut -d' ' -f2 || true)
    target=$(grep -m1 -oE '^\.target [a-z0-9_]+' "$f" | cut -d' ' -f2 || true)
    if [[ -z "$version" || "${version%%.*}" -gt 7 || ( "${version%%.*}" -eq 7 && "${version#*.}" -gt 0 ) ]]; then
        echo "$f: .version '$version' is newer than 7.0 (CUDA 11.0; drivers before R450 reject 7.0, before R455 7.1, before R525 8.0)" >&2
        fail=1
    fi
    if [[ "$target" != "sm_52" ]]; then
        echo "$f: .target '$target' is not sm_52" >&2
        fail=1
    fi
done

# "Cuda compilation tools, release 12.9, V12.9.86" -> 12.9
release_of() { "$1" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -1; }
new_enough() { # release >= 12.9
    local r=$1
    [[ -n $r ]] && { [[ ${r%%.*} -gt 12 ]] || [[ ${r%%.*} -eq 12 && ${r#*.} -ge 9 ]]; }
}

ptxas=${PTXAS:-}
if [[ -z "$ptxas" ]] && command -v ptxas >/dev/null && new_enough "$(release_of "$(command -v ptxas)")"; then
    ptxas=$(command -v ptxas)
fi
if [[ -z "$ptxas" ]]; then
    cache=target/ptxas/$wheel_version
    ptxas=$cache/nvidia/cuda_nvcc/bin/ptxas
    if [[ ! -x "$ptxas" ]]; then
        rm -rf "$cache.partial"
        mkdir -p "$cache.partial"
        python3 -m pip download --quiet --no-deps -d "$cache.partial" "nvidia-cuda-nvcc-cu12==$wheel_version"
        python3 -c "import zipfile,glob,sys; zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]).extract('nvidia/cuda_nvcc/bin/ptxas', sys.argv[1])" "$cache.partial"
        chmod +x "$cache.partial/nvidia/cuda_nvcc/bin/ptxas"
        rm -f "$cache.partial"/*.whl
        rm -rf "$cache"
        mv "$cache.partial" "$cache"
    fi
fi
if ! new_enough "$(release_of "$ptxas")"; then
    echo "$ptxas: release '$(release_of "$ptxas")' is older than 12.9 and cannot assemble for all of ${archs[*]}" >&2
    exit 1
fi

count=0
for f in kernels/*.ptx; do
    count=$((count + 1))
    for arch in "${archs[@]}"; do
        if ! "$ptxas" --warning-as-error -arch="$arch" "$f" -o /dev/null; then
            echo "$f: ptxas rejects it for $arch" >&2
            fail=1
        fi
    done
done
if [[ $fail -eq 0 ]]; then
    echo "kernels: $count PTX file(s) assemble for ${archs[*]} with $("$ptxas" --version | tail -1)"
fi
exit $fail
