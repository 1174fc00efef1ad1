#!/usr/bin/env bash
# Check the shipped PTX the way a driver will see it: the header must stay at ISA <= 7.0 and
# sm_52 (JIT-compilable by R470 and every later driver), and NVIDIA's own assembler must accept
# each file for the GPU generations rigdoctor's users run. ptxas needs no GPU; it comes from
# the nvidia-cuda-nvcc-cu12 wheel on PyPI, cached under target/ptxas.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
for f in kernels/*.ptx; do
    version=$(grep -m1 -oE '^\.version [0-9]+\.[0-9]+' "$f" | cut -d' ' -f2)
    target=$(grep -m1 -oE '^\.target [a-z0-9_]+' "$f" | cut -d' ' -f2)
    if [[ -z "$version" || "${version%%.*}" -gt 7 || ( "${version%%.*}" -eq 7 && "${version#*.}" -gt 0 ) ]]; then
        echo "$f: .version '$version' is newer than 7.0 (drivers before R510 reject it)" >&2; fail=1
    fi
    if [[ "$target" != "sm_52" ]]; then
        echo "$f: .target '$target' is not sm_52" >&2; fail=1
    fi
done

ptxas=${PTXAS:-}
if [[ -z "$ptxas" ]] && command -v ptxas >/dev/null; then ptxas=$(command -v ptxas); fi
if [[ -z "$ptxas" ]]; then
    cache=target/ptxas
    ptxas=$cache/nvidia/cuda_nvcc/bin/ptxas
    if [[ ! -x "$ptxas" ]]; then
        mkdir -p "$cache"
        python3 -m pip download --quiet --no-deps -d "$cache" nvidia-cuda-nvcc-cu12==12.4.131
        python3 -c "import zipfile,glob; zipfile.ZipFile(glob.glob('$cache/*.whl')[0]).extract('nvidia/cuda_nvcc/bin/ptxas', '$cache')"
        chmod +x "$ptxas"
    fi
fi

for f in kernels/*.ptx; do
    for arch in sm_52 sm_61 sm_75 sm_80 sm_86 sm_89 sm_90; do
        if ! "$ptxas" -arch="$arch" "$f" -o /dev/null; then
            echo "$f: ptxas rejects it for $arch" >&2; fail=1
        fi
    done
done
[[ $fail -eq 0 ]] && echo "kernels: $(ls kernels/*.ptx | wc -l) PTX file(s) assemble for sm_52..sm_90 with $("$ptxas" --version | tail -1)"
exit $fail
