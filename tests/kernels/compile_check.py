"""Compile every selection kernel variant for CUDA targets without a GPU (run in subprocesses by
test_kernels_compile.py).

Usage: python compile_check.py [--full] ARCH [ARCH ...]   (e.g. 80 90). Without --full only bf16 with aligned
pointers/sizes; --full adds fp32 and unaligned bf16 (odd D). Prints one JSON object per line:
{"arch", "kernel", "function", "dtype", "aligned", "ok", "error", "registers", "spill_stores", "ptxas",
"ptxas_error", "seconds"}; ``function`` is the jitted Python function's name, ``kernel`` the variant's name.
Must run WITHOUT TRITON_INTERPRET (it is removed here defensively before triton is imported).
Registers and spills come from ``ptxas -v``, run by the first of these that reads the PTX: the ptxas triton's own
compile uses when set (``$TRITON_PTXAS_BLACKWELL_PATH`` for sm_90, ``$TRITON_PTXAS_PATH`` for sm_80), triton's bundled
``ptxas-blackwell`` and ``ptxas``, and the CUDA toolkit's (PATH, /usr/local/cuda*/bin): triton 3.9 writes PTX ISA 9.4
for sm_90, which only its ptxas-blackwell reads (CUDA 12.9 and 13.0 ptxas stop at 8.8 / 9.0). When none can,
``registers`` is null and ``ptxas_error`` says why.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from vs_vllm.kernels.mmr_select import compile_specs as mmr_compile_specs
from vs_vllm.kernels.select import aligned_attrs, compile_specs


def ptxas_candidates(arch: int) -> list[str]:
    """Every ptxas that may read triton's PTX for ``sm_<arch>``, in the order tried (see the module docstring)."""
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    # The one triton's own compile uses for this architecture first (TRITON_PTXAS[_BLACKWELL]_PATH overrides it).
    own = os.environ.get("TRITON_PTXAS_BLACKWELL_PATH" if arch >= 90 else "TRITON_PTXAS_PATH") or ""
    found = [own, *(os.path.join(bundled, name) for name in ("ptxas-blackwell", "ptxas"))]
    found += [shutil.which("ptxas") or "", *sorted(glob.glob("/usr/local/cuda*/bin/ptxas"), reverse=True)]
    out: list[str] = []
    for path in found:
        if path and os.path.isfile(path) and os.access(path, os.X_OK) and os.path.realpath(path) not in out:
            out.append(os.path.realpath(path))
    return out


def _resources(ptx: str, arch: int) -> tuple[int | None, int | None, str | None, str | None]:
    """(registers, spill-store bytes, the ptxas that read the PTX, why none could) of one compiled variant."""
    candidates = ptxas_candidates(arch)
    if not candidates:
        return None, None, None, "no ptxas found ($TRITON_PTXAS[_BLACKWELL]_PATH, triton's bundled bin/, PATH, " \
            "/usr/local/cuda*/bin)"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    errors = []
    try:
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        for ptxas in candidates:
            r = subprocess.run(
                [ptxas, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                capture_output=True,
                check=False,
                text=True,
                timeout=120,
            )
            regs = re.search(r"Used (\d+) registers", r.stderr)
            spills = re.search(r"(\d+) bytes spill stores", r.stderr)
            if r.returncode == 0 and regs is not None:
                return int(regs.group(1)), int(spills.group(1)) if spills else 0, ptxas, None
            fatal = [ln for ln in r.stderr.splitlines() if "fatal" in ln or "error" in ln.lower()]
            errors.append(f"{ptxas} exited {r.returncode}: {(fatal or r.stderr.splitlines() or ['no output'])[0]}")
    finally:
        os.unlink(f.name)
    return None, None, None, "; ".join(errors)


def kernel_function_name(fn) -> str:
    """The Python name of a jitted kernel (``_mean_partial_kernel``): what KERNELS and MMR_KERNELS map to."""
    return getattr(fn, "fn", fn).__name__


def main(argv: list[str]) -> int:
    full = "--full" in argv
    archs = [int(a) for a in argv if a != "--full"] or [80, 90]
    cases = [("bf16", True), ("fp32", True), ("bf16", False)] if full else [("bf16", True)]
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for dtype, aligned in cases:
            specs = {**compile_specs(dtype), **mmr_compile_specs(dtype, aligned=aligned)}
            for name, (fn, sig, constexprs, warps) in specs.items():
                reads_x = name.startswith(("score", "gather", "mean_partial", "mmr"))
                if not aligned and not reads_x:
                    continue  # only the kernels that read x depend on its alignment
                if dtype != "bf16" and not (reads_x or name.startswith(("kbar", "u_"))):
                    continue  # the others do not depend on the element type
                t0 = time.time()
                rec = {"arch": arch, "kernel": name, "function": kernel_function_name(fn), "dtype": dtype,
                       "aligned": aligned, "warps": warps}
                try:
                    attrs = aligned_attrs(fn, sig) if aligned else None
                    k = triton.compile(
                        ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                        target=target,
                        options={"num_warps": warps},
                    )
                    rec["ok"] = bool(k.asm.get("cubin"))
                    rec["registers"], rec["spill_stores"], rec["ptxas"], rec["ptxas_error"] = _resources(
                        k.asm["ptx"], arch
                    )
                except Exception as exc:
                    rec["ok"] = False
                    rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                rec["seconds"] = round(time.time() - t0, 2)
                print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
