"""The slim vLLM bundle for the GPU machine (benchmarks/gpu/serve_pack.py, ``make gpu-serve-pack``).

The GPU window is short and its machine has no network, so a broken pack must fail here. The fast tests run the
pack's machinery (layout, split, stash, reassembly, refusal of a damaged or foreign part) on a synthetic wheel. The
slow test builds the real pack once (cached under .cache/gpu-serve-pack; ~10 minutes on a fresh clone of a loaded
2-core machine, seconds once built), checks every part fits one device command beside the working tree, reassembles
and unpacks it as the GPU side does, and imports vLLM 0.33's engine, MRv2's GPU model runner, the Qwen-VL models and
the Triton attention backend from the unpacked bundle in a separate interpreter.

What that import cannot show here: the bundle's compiled wheels are for CPython 3.12 (this venv is 3.11) and its
kernel libraries need CUDA, so the interpreter takes vLLM's Python (and its metadata) from the bundle and every other
package from this .venv; whether the cp312 wheels and ``_C`` / ``_moe_C`` load is for the GPU machine's stage b to show.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vs_vllm.testing.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
pack = load_script(REPO / "benchmarks" / "gpu" / "serve_pack.py", "serve_pack")

ENGINE_MODULES = ("vllm.v1.engine.core", "vllm.v1.worker.gpu.model_runner", "vllm.model_executor.models.qwen2_5_vl",
                  "vllm.model_executor.models.qwen3_vl", "vllm.model_executor.models.qwen3_vl_moe",
                  "vllm.v1.attention.backends.triton_attn")


def _synthetic_pack(root: Path, part_bytes: int = 2048, seed: int = 0) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    wheel = root / "demo_pkg-1.0-py3-none-any.whl"
    noise = b"".join(hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(300))  # incompressible
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo_pkg/__init__.py", "VALUE = 42\n")
        zf.writestr("demo_pkg/noise.bin", noise)
        zf.writestr("demo_pkg-1.0.data/purelib/demo_extra.py", "EXTRA = 1\n")
        zf.writestr("demo_pkg-1.0.data/headers/demo.h", "int x;\n")
        zf.writestr("demo_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n")
    archive = root / pack.ARCHIVE_NAME
    stats = pack.write_archive([wheel], archive)
    return pack.split_archive(archive, root, part_bytes, {"vllm": "test", **stats})


def test_split_stash_reassemble_unpack(tmp_path) -> None:
    manifest = _synthetic_pack(tmp_path / "pack")
    assert len(manifest["parts"]) >= 4 and not (tmp_path / "pack" / pack.ARCHIVE_NAME).exists()
    parts = pack.part_dirs(tmp_path / "pack")
    stash = tmp_path / "stash"
    # one device command brings part1 only: the stash names what is still missing
    pack.stash_parts(parts[:1], stash)
    assert pack.missing_parts(stash, manifest) == [p.name for p in parts[1:]]
    with pytest.raises(pack.PackError, match="parts missing"):
        pack.reassemble(stash, manifest, tmp_path / "whole.tar.xz")
    # the next commands bring the others; a later command with no part finds the stash's manifest
    pack.stash_parts(parts[1:], stash)
    assert pack.stash_parts([], stash)["archive_sha256"] == manifest["archive_sha256"]
    archive = pack.reassemble(stash, manifest, tmp_path / "whole.tar.xz")
    site = pack.unpack(archive, tmp_path / "unpacked", manifest)
    assert (site / "demo_pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (site / "demo_extra.py").exists()  # .data/purelib goes where pip --target puts it
    assert not any(p.name == "demo.h" for p in site.rglob("*"))  # headers are not on the import path
    assert pack.unpack(archive, tmp_path / "unpacked", manifest) == site  # idempotent (marker)


def test_damaged_or_foreign_parts_are_refused(tmp_path) -> None:
    manifest = _synthetic_pack(tmp_path / "pack")
    part2 = tmp_path / "pack" / "part2" / manifest["parts"][1]["file"]
    data = bytearray(part2.read_bytes())
    data[10] ^= 0xFF
    part2.write_bytes(bytes(data))
    with pytest.raises(pack.PackError, match="damaged"):
        pack.stash_parts(pack.part_dirs(tmp_path / "pack"), tmp_path / "stash")
    again = _synthetic_pack(tmp_path / "again")
    assert again["archive_sha256"] == manifest["archive_sha256"]  # same wheels: a byte-identical archive
    other = _synthetic_pack(tmp_path / "other", seed=1)
    assert other["archive_sha256"] != manifest["archive_sha256"]
    with pytest.raises(pack.PackError, match="another pack"):
        pack.stash_parts([tmp_path / "again" / "part1", tmp_path / "other" / "part2"], tmp_path / "mixed")
    with pytest.raises(pack.PackError, match="no part"):
        pack.stash_parts([], tmp_path / "empty")


def test_lock_pins_vllm_first_and_every_wheel_by_sha256() -> None:
    wheels = pack.read_lock()
    assert wheels[0].name == "vllm" and wheels[0].version == pack.VLLM_VERSION
    names = {pack.canonical(w.name) for w in wheels}
    assert not names & pack.GPU_MACHINE_PACKAGES, "a package the GPU machine has is brought along"
    assert not names & set(pack.GPU_KERNEL_PACKAGES_LEFT_OUT)
    assert {"fastapi", "openai", "pydantic", "pyzmq", "msgspec", "blake3"} <= names


def test_left_out_vllm_files() -> None:
    wheel = "vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    assert pack.bundle_path(wheel, "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so") is None
    assert pack.bundle_path(wheel, "vllm/third_party/deep_gemm/include/cute/config.hpp") is None
    assert pack.bundle_path(wheel, "vllm/_C_stable_libtorch.abi3.so") == "vllm/_C_stable_libtorch.abi3.so"
    assert pack.bundle_path(wheel, "vllm/_moe_C_stable_libtorch.abi3.so") is not None  # Qwen3-VL-MoE needs it
    assert pack.bundle_path(wheel, "vllm/third_party/deep_gemm/__init__.py") is not None


@pytest.fixture(scope="session")
def built_pack():
    """The real pack, built once into .cache/gpu-serve-pack (reused while serve_pack.lock is unchanged)."""
    return pack.build()


@pytest.mark.slow  # downloads and packs ~390 MB of wheels on first use, then reassembles ~130 MB
@pytest.mark.timeout(2400)  # a fresh clone builds the pack inside this test's fixture: ~10 min (xz) on 2 busy cores
def test_real_pack_fits_reassembles_and_imports_vllm_engine(built_pack, tmp_path) -> None:
    manifest = built_pack
    tree = pack.tree_bytes()
    for part in manifest["parts"]:
        assert part["bytes"] + tree <= pack.COMMAND_LIMIT, (part, tree)
    assert manifest["lock_sha256"] == pack.lock_digest()
    stash = tmp_path / "stash"
    pack.stash_parts(pack.part_dirs(), stash)
    archive = pack.reassemble(stash, manifest, tmp_path / pack.ARCHIVE_NAME)
    site = pack.unpack(archive, tmp_path / "unpacked", manifest)
    archive.unlink()

    # every locked wheel's distribution is there; vLLM's custom ops are, FlashAttention and the Rust binary are not
    dists = {pack.canonical(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    assert {pack.canonical(w.name) for w in pack.read_lock()} <= dists
    assert (site / "vllm" / "_C_stable_libtorch.abi3.so").stat().st_size > 50 * 2**20
    assert (site / "vllm" / "_moe_C_stable_libtorch.abi3.so").exists()
    for gone in ("vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so", "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so",
                 "vllm/vllm-rs"):
        assert not (site / gone).exists(), gone

    # vLLM's Python from the bundle (only vllm/ and its metadata: the bundle's cp312 wheels cannot load on 3.11)
    view = tmp_path / "view"
    view.mkdir()
    for name in ("vllm", f"vllm-{pack.VLLM_VERSION}.dist-info"):
        (view / name).symlink_to(site / name)
    code = ("import importlib, json, vllm\n"
            f"mods = {list(ENGINE_MODULES)!r}\n"
            "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
            "print(json.dumps({'version': vllm.__version__, 'files': files}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VS_VLLM_")}
    env["PYTHONPATH"] = str(view)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["version"] == pack.VLLM_VERSION
    assert all(f.startswith(str(view)) for f in report["files"].values()), report["files"]
