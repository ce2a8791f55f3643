"""Compile-only checks: every kernel variant compiles to a cubin for sm_80 and sm_90, without spills.

Runs tests/kernels/compile_check.py in subprocesses WITHOUT TRITON_INTERPRET (the interpreter replaces the compiler
in any process that imported triton with it set) and with a private TRITON_CACHE_DIR, one process per architecture,
both at once (~30 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ARCHS = (80, 90)
FULL_ARCHS = (90,)  # fp32 and unaligned (odd D) variants too; sm_80 gets the bf16 aligned set only (time)
SCRIPT = Path(__file__).with_name("compile_check.py")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    procs = {}
    for arch in ARCHS:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp(f"triton_cache_sm{arch}"))
        env["TRITON_DEFAULT_FP_FUSION"] = "1"
        procs[arch] = subprocess.Popen(
            [sys.executable, str(SCRIPT), *(["--full"] if arch in FULL_ARCHS else []), str(arch)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for arch, p in procs.items():
        out, err = p.communicate(timeout=300)
        if p.returncode != 0:
            pytest.fail(f"compile_check.py {arch} exited {p.returncode}:\n{err[-4000:]}")
        results[arch] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return results


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles(compiled, arch):
    from vs_vllm.kernels.select import KERNELS

    recs = compiled[arch]
    failed = [f"{r['kernel']}/{r['dtype']}/aligned={r['aligned']}: {r.get('error')}" for r in recs if not r["ok"]]
    assert not failed, "\n".join(failed)
    compiled_fns = {r["kernel"].split("_")[0] for r in recs}
    for name in KERNELS:  # every kernel has at least one compiled variant
        assert name.split("_")[0] in compiled_fns, name


@pytest.mark.parametrize("arch", ARCHS)
def test_no_register_spills(compiled, arch):
    recs = [r for r in compiled[arch] if r["ok"] and r.get("registers") is not None]
    if not recs:
        pytest.skip("no ptxas able to read triton's PTX (ptxas-blackwell) in this triton build")
    report = ", ".join(
        f"{r['kernel']}/{r['dtype']}{'' if r['aligned'] else '/unaligned'}:{r['registers']}r" for r in recs
    )
    print(f"sm_{arch}: {report}")
    spilled = [
        f"{r['kernel']}/{r['dtype']}{'' if r['aligned'] else '/unaligned'}: {r['spill_stores']} bytes"
        for r in recs
        if r["spill_stores"]
    ]
    assert not spilled, spilled


@pytest.mark.parametrize("arch", ARCHS)
def test_mmr_kernels_compile(compiled, arch):
    """The MMR kernels (kernels/mmr_select.py): every kernel has a compiled variant (both BLOCK_D widths)."""
    from vs_vllm.kernels.mmr_select import MMR_KERNELS

    recs = [r for r in compiled[arch] if r["kernel"].startswith("mmr")]
    for name in MMR_KERNELS:
        assert any(r["ok"] and r["kernel"].startswith(f"{name}_d") for r in recs), name
    print(f"sm_{arch}: " + ", ".join(
        f"{r['kernel']}/{r['dtype']}{'' if r['aligned'] else '/unaligned'}:{r.get('registers')}r/"
        f"{r.get('spill_stores')}B-spill" for r in recs
    ))
