#!/usr/bin/env bash
# Gather the Python wheels that the lent GPU machine (no internet) lacks for tools/gpu_suite.py, slimmed so that
# they and the working tree fit the device tool's 64 MiB carry. See docs/gpu-suite.md.
#
#   tools/gpu_wheels.sh            # -> .whl/ in the repository root (ignored through .git/info/exclude)
#   tools/gpu_wheels.sh DIR        # another folder (relative to the repository root)
#
# The GPU image already has torch 2.11.0+cu130, triton, numpy, safetensors, einops, pyyaml, pillow, psutil, rich,
# lightning, pytest (see the device notes, KINDS.md); torch itself is never carried (GBs). Missing there and needed
# by the suite: PyAV (flashvsr_q.video imports it), torchao, bitsandbytes, sageattention, comfy-kitchen.
# Environment overrides (defaults = the versions this project's tests run with):
#   GPU_PYTHON=3.12  BNB_CUDA=130 (bitsandbytes library kept: torch's CUDA 13.0)  CARRY_LIMIT_MIB=64
#   TORCHAO_VERSION BITSANDBYTES_VERSION SAGEATTENTION_VERSION COMFY_KITCHEN_VERSION AV_VERSION
#   CK_CUDA=auto|yes|no  comfy-kitchen's CUDA extension (35 MiB): auto keeps it only if everything still fits
#   WITH_PROJECT=1       also build the flashvsr-q wheel (not needed: the working tree travels with every run)
#   PYTHON=...           the local interpreter whose pip downloads (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:-.whl}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
GPU_PYTHON=${GPU_PYTHON:-3.12}
BNB_CUDA=${BNB_CUDA:-130}
CARRY_LIMIT_MIB=${CARRY_LIMIT_MIB:-64}
CK_CUDA=${CK_CUDA:-auto}
PINS=(
    "av==${AV_VERSION:-18.1.0}"
    "torchao==${TORCHAO_VERSION:-0.18.0}"
    "bitsandbytes==${BITSANDBYTES_VERSION:-0.50.2}"
    "sageattention==${SAGEATTENTION_VERSION:-1.0.6}"
    "comfy-kitchen==${COMFY_KITCHEN_VERSION:-0.2.40}"
)

case "$DIR" in /*|../*) echo "error: DIR must be inside the repository (the device tool carries repo paths)" >&2; exit 2;; esac
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF "/${DIR%/}/" "$exclude" 2>/dev/null || echo "/${DIR%/}/" >> "$exclude"
rm -rf "$DIR"
mkdir -p "$DIR"

# manylinux tags: pip matches each N exactly, so name the ones these packages publish
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DIR" "${PINS[@]}"

if [ "${WITH_PROJECT:-0}" = 1 ]; then
    "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" .
fi

# Slim: drop the native libraries the GPU machine cannot use (other CUDA versions, ROCm, XPU), rewrite RECORD,
# then check the carry limit against the working tree that travels with every run.
"$PYTHON" - "$DIR" "$BNB_CUDA" "$CK_CUDA" "$CARRY_LIMIT_MIB" <<'PY'
import re
import subprocess
import sys
import zipfile
from pathlib import Path

folder, bnb_cuda, ck_cuda, limit_mib = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
MIB = 1024**2
DROP = {
    "bitsandbytes": rf"bitsandbytes/libbitsandbytes_(?!cuda{bnb_cuda}\.|cpu\.)\w+\.so",
    "comfy_kitchen": r"comfy_kitchen/backends/hip/_C[^/]*\.so",
}
CK_CUDA_EXT = r"comfy_kitchen/backends/cuda/_C[^/]*\.so"


def repack(wheel: Path, pattern: str) -> None:
    """Rewrite ``wheel`` without the members matching ``pattern`` (and their RECORD lines)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if re.fullmatch(pattern, item.filename):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                kept = [line for line in data.decode().splitlines() if not re.fullmatch(pattern, line.split(",")[0])]
                data = ("\n".join(kept) + "\n").encode()
            dst.writestr(item, data)
    tmp.replace(wheel)


def tree_bytes() -> int:
    """Tracked plus untracked-not-ignored files: what the device tool sends with every call."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    return sum(p.stat().st_size for p in map(Path, filter(None, names)) if p.is_file())


def wheels_bytes() -> int:
    return sum(p.stat().st_size for p in folder.glob("*.whl"))


for wheel in folder.glob("*.whl"):
    package = wheel.name.split("-")[0]
    if package in DROP:
        repack(wheel, DROP[package])
ck = next(folder.glob("comfy_kitchen-*.whl"), None)
tree = tree_bytes()
if ck is not None and (ck_cuda == "no" or (ck_cuda == "auto" and (tree + wheels_bytes()) / MIB > limit_mib - 2)):
    repack(ck, CK_CUDA_EXT)
    print("comfy-kitchen: CUDA extension dropped to fit the carry (its Triton and eager backends remain)")
for wheel in sorted(folder.glob("*.whl")):
    print(f"{wheel.stat().st_size / MIB:7.1f} MiB  {wheel.name}")
total = (tree + wheels_bytes()) / MIB
print(f"{wheels_bytes() / MIB:7.1f} MiB  wheels; working tree {tree / MIB:.1f} MiB; together {total:.1f} of "
      f"{limit_mib:g} MiB")
if total > limit_mib:
    sys.exit(f"error: {total:.1f} MiB is over the device tool's {limit_mib:g} MiB carry limit; drop a wheel "
             "(e.g. CK_CUDA=no) or untracked files")
PY
echo "carry: [\"${DIR%/}\"]; on the GPU machine: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ${DIR%/}/*.whl"
