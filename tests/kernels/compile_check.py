"""Compile every selection kernel variant for CUDA targets without a GPU (run as a subprocess by test_compile.py).

Usage: python compile_check.py [--full] ARCH [ARCH ...]   (e.g. 80 90). Without --full only bf16 with aligned
pointers/sizes; --full adds fp32 and unaligned bf16 (odd D). Prints one JSON object per line:
{"arch", "kernel", "dtype", "aligned", "ok", "error", "registers", "spill_stores", "seconds"}.
Must run WITHOUT TRITON_INTERPRET (it is removed here defensively before triton is imported).
Registers and spills come from ``ptxas-blackwell -v`` (triton 3.9's bundled CUDA 12.9 ptxas rejects its PTX).
"""

from __future__ import annotations

import json
import os
import re
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


def _ptxas() -> str | None:
    d = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    return None


def _resources(ptx: str, arch: int) -> tuple[int | None, int | None]:
    ptxas = _ptxas()
    if ptxas is None:
        return None, None
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        r = subprocess.run(
            [ptxas, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
            capture_output=True,
            check=False,
            text=True,
            timeout=120,
        )
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spills = re.search(r"(\d+) bytes spill stores", r.stderr)
    if r.returncode != 0 or regs is None:
        return None, None
    return int(regs.group(1)), int(spills.group(1)) if spills else 0


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
                rec = {"arch": arch, "kernel": name, "dtype": dtype, "aligned": aligned, "warps": warps}
                try:
                    attrs = aligned_attrs(fn, sig) if aligned else None
                    k = triton.compile(
                        ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                        target=target,
                        options={"num_warps": warps},
                    )
                    rec["ok"] = bool(k.asm.get("cubin"))
                    rec["registers"], rec["spill_stores"] = _resources(k.asm["ptx"], arch)
                except Exception as exc:
                    rec["ok"] = False
                    rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                rec["seconds"] = round(time.time() - t0, 2)
                print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
