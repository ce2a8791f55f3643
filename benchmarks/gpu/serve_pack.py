#!/usr/bin/env python3
"""The slim vLLM bundle that ``make gpu-serve-check`` runs on the GPU machine, built here from the package registry.

The GPU machine has no vLLM, no network and takes at most 64 MiB of files per command (the working tree included); its
Python is 3.12 with torch 2.11.0+cu130, triton 3.6.0 and transformers 5.17.0. vLLM 0.33.0's wheel is 321 MiB, but
its kernel libraries use only PyTorch's stable C ABI, so they load on that torch. The bundle is:

- vLLM 0.33.0's Python and data files, ``_C`` (custom ops) and ``_moe_C`` (fused-MoE helpers, for Qwen3-VL-MoE);
  not FlashAttention 2/3, the MLA / KDA / DeepGEMM / QuTLASS kernels, their C++ headers nor the Rust front end
  (``VLLM_FILES_LEFT_OUT``: the check runs vLLM's Triton attention backend);
- the wheels of vLLM's requirements the GPU machine lacks (API server, tokenizers' helpers, structured output, ...),
  for CPython 3.12 on manylinux x86_64, not the GPU kernel packages the serving path never imports
  (``GPU_KERNEL_PACKAGES_LEFT_OUT``).

Every wheel is pinned with its sha256 in ``serve_pack.lock`` (committed). ``build`` downloads them (cached under
``~/.cache/vs-vllm-gpu-serve-pack/wheels``), checks them, lays them out as ``pip install --target`` would into one
deterministic ``.tar.xz`` and splits it into parts small enough that each one travels with the working tree in one
device command (<= 64 MiB together): ``.cache/gpu-serve-pack/part1``, ``part2``, ... (git-ignored), each holding its
chunk and the manifest of the whole. ``reassemble`` / ``unpack`` are what the GPU side runs (serve_check.py).

    python3 benchmarks/gpu/serve_pack.py build      # make gpu-serve-pack
    python3 benchmarks/gpu/serve_pack.py lock       # re-resolve the requirements and rewrite serve_pack.lock

Needs only the standard library, except ``lock`` and ``build`` (pip, packaging; the repository's .venv has them).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LOCK = HERE / "serve_pack.lock"
PACK_ROOT = REPO / ".cache" / "gpu-serve-pack"
WHEEL_CACHE = Path(os.environ.get("VS_GPU_SERVE_PACK_CACHE", Path.home() / ".cache" / "vs-vllm-gpu-serve-pack"))
WHEELS = WHEEL_CACHE / "wheels"
ARCHIVE_NAME = "vs-vllm-gpu-serve.tar.xz"
MANIFEST = "manifest.json"

#: What one device command may bring along: the working tree (tracked + untracked files that git does not ignore) and
#: the carried paths together.
COMMAND_LIMIT = 64 * 2**20
#: Kept free in every command beside the working tree as measured at build time, so the tree may grow a little.
TREE_HEADROOM = 4 * 2**20

VLLM_VERSION = "0.33.0"
#: The GPU machine's interpreter and the platforms its pip accepts.
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux_2_38_x86_64",
             "manylinux_2_39_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64", "any")

#: The Python packages on the GPU machine (the device tool's KINDS.md, image 'cuda', read on 2026-11-17), with the
#: versions known there. vLLM's requirements among them are used as they are there, never brought along.
GPU_MACHINE_VERSIONS = {"torch": "2.11.0", "triton": "3.6.0", "transformers": "5.17.0", "tokenizers": "0.23.2",
                        "huggingface-hub": "1.33.0", "safetensors": "0.8.0", "numpy": "2.5.2"}
GPU_MACHINE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

#: vLLM requirements left out: GPU kernel packages (and their needs) that serving a Qwen-VL model with the Triton
#: attention backend never imports (vLLM imports them inside the functions of other backends, models and quantizers).
GPU_KERNEL_PACKAGES_LEFT_OUT = {
    "flashinfer-python": "FlashInfer attention / sampling backends (59 MiB)",
    "tilelang": "TileLang kernels (48 MiB)",
    "nvidia-cutlass-dsl": "CuTe DSL kernels (175 MiB with cutlass-dsl-libs)",
    "quack-kernels": "CuTe DSL kernels (needs nvidia-cutlass-dsl)",
    "tokenspeed-mla": "MLA kernels (needs tokenspeed-triton, 90 MiB)",
    "humming-kernels": "quantised GEMM kernels",
    "pynvvideocodec": "NVDEC video decoding (41 MiB); videos are decoded on the CPU",
    "torchcodec": "video decoding through FFmpeg; the check sends JPEG-frame videos",
    "apache-tvm-ffi": "FFI of the CuTe DSL / FlashAttention 4 paths",
    "nvidia-cudnn-frontend": "cuDNN attention / GEMM front end",
    "nvtx": "profiling ranges",
    "fastsafetensors": "GPU-direct weight loading (the check loads dummy or small safetensors weights)",
    "instanttensor": "alternative weight loader",
}

#: Files of vLLM's wheel left out of the bundle, by pattern (a path relative to the wheel root), and why.
VLLM_FILES_LEFT_OUT = {
    r"vllm/vllm_flash_attn/_vllm_fa[23]_C\.abi3\.so": "FlashAttention 2 / 3 kernels (308 + 173 MB): the check runs "
                                                       "vLLM's Triton attention backend",
    r"vllm/_flashmla(_extension)?_C\.abi3\.so": "MLA kernels (DeepSeek-style attention)",
    r"vllm/_flashkda_C\.abi3\.so": "KDA kernels (Kimi linear attention)",
    r"vllm/_deepselect_C\.abi3\.so": "DeepSeek sparse-attention top-k kernels",
    r"vllm/_qutlass_C\.abi3\.so": "QuTLASS quantised GEMMs (needs stable-ABI symbols torch 2.11 lacks)",
    r"vllm/third_party/deep_gemm/_C_extension\.abi3\.so": "DeepGEMM FP8 GEMMs (29 MB)",
    r"vllm/third_party/.*\.(hpp|h|cuh|cu|cpp)": "C++ / CUDA headers of DeepGEMM and the SM100 FMHA (JIT sources)",
    r"vllm/vllm-rs": "the Rust front end binary (61 MB); the check runs the Python API server",
    r"vllm-[0-9.]+\.dist-info/RECORD": "lists the files left out; nothing installs from the bundle",
}
_LEFT_OUT = [re.compile(p) for p in VLLM_FILES_LEFT_OUT]

#: A wheel member under ``<dist>.data/<scheme>/`` goes where ``pip install --target`` puts it.
_DATA_SCHEMES = {"purelib": "", "platlib": "", "scripts": "bin/"}


class PackError(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[gpu-serve-pack] {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------------------------------
# The lock: one pinned wheel per line
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockedWheel:
    name: str
    version: str
    filename: str
    sha256: str

    def line(self) -> str:
        return f"{self.name}=={self.version} {self.filename} sha256={self.sha256}"


def read_lock(path: Path = LOCK) -> list[LockedWheel]:
    wheels = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+) (\S+\.whl) sha256=([0-9a-f]{64})", line)
        if not m:
            raise PackError(f"{path.name} line {number}: expected 'NAME==VERSION FILE.whl sha256=HEX', got {raw!r}")
        wheels.append(LockedWheel(*m.groups()))
    if not wheels or canonical(wheels[0].name) != "vllm":
        raise PackError(f"{path.name}: the first wheel must be vLLM's")
    return wheels


def lock_digest(path: Path = LOCK) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip_target_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


def _stub_wheel(folder: Path, name: str, version: str) -> None:
    """A metadata-only wheel standing for a package the GPU machine has (torch, triton): the resolver then takes it
    as it is there instead of resolving the registry's CUDA wheels and their pins."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: serve_pack\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{dist}/RECORD": ""}
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)


def vllm_requirements(wheel: Path) -> list[str]:
    """vLLM's Requires-Dist that apply on the GPU machine (CPython 3.12, Linux x86_64, no extras)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(f"vllm-{VLLM_VERSION}.dist-info/METADATA").decode()
    env = {"python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".3", "platform_machine": "x86_64",
           "platform_system": "Linux", "sys_platform": "linux", "os_name": "posix", "extra": ""}
    out = []
    for line in meta.splitlines():
        if line.startswith("Requires-Dist: "):
            req = Requirement(line[len("Requires-Dist: "):])
            if req.marker is None or req.marker.evaluate(env):
                out.append(req)
    return out


def download(specs: str, dest: Path) -> None:
    """``pip download`` of the space-separated ``NAME==VERSION`` specs (no dependencies) for the GPU machine."""
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", *_pip_target_args(),
           "--no-deps", "-d", str(dest), *specs.split()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PackError(f"pip could not download {specs} for CPython {PYTHON_VERSION} / manylinux x86_64:\n"
                        f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")


def make_lock() -> list[LockedWheel]:
    """Resolve vLLM's requirements for the GPU machine and write serve_pack.lock (vLLM's wheel first)."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    download(f"vllm=={VLLM_VERSION}", WHEELS)
    vllm_wheel = next(WHEELS.glob(f"vllm-{VLLM_VERSION}-*.whl"))
    wanted, skipped = [], []
    for req in vllm_requirements(vllm_wheel):
        name = canonical(req.name)
        if name in GPU_MACHINE_PACKAGES:
            skipped.append(f"{req} (on the GPU machine)")
        elif name in GPU_KERNEL_PACKAGES_LEFT_OUT:
            skipped.append(f"{req} (left out: {GPU_KERNEL_PACKAGES_LEFT_OUT[name]})")
        else:
            wanted.append(str(req))
    with tempfile.TemporaryDirectory(prefix="serve-pack-lock-") as tmp:
        tmp = Path(tmp)
        (tmp / "stubs").mkdir()
        pins = []
        for name in ("torch", "triton"):
            _stub_wheel(tmp / "stubs", name, GPU_MACHINE_VERSIONS[name] + "+gpumachine")
            pins.append(f"{name}=={GPU_MACHINE_VERSIONS[name]}+gpumachine")
        # the GPU machine's own versions where they are known (numpy is not pinned: mistral-common asks for < 2.4 on
        # Python 3.12, and the machine's 2.5.2 is what runs anyway)
        pins += [f"{n}=={v}" for n, v in GPU_MACHINE_VERSIONS.items() if n not in ("torch", "triton", "numpy")]
        (tmp / "requirements.txt").write_text("\n".join(wanted + pins) + "\n")
        report = tmp / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--dry-run", "--ignore-installed",
               "--ignore-requires-python", "--report", str(report), *_pip_target_args(), "--find-links",
               str(tmp / "stubs"), "--target", str(tmp / "target"), "-r", str(tmp / "requirements.txt")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PackError(f"resolving vLLM's requirements failed:\n{proc.stderr[-4000:]}")
        installs = json.loads(report.read_text())["install"]
    wheels = [LockedWheel("vllm", VLLM_VERSION, vllm_wheel.name, sha256_file(vllm_wheel))]
    for item in sorted(installs, key=lambda i: canonical(i["metadata"]["name"])):
        name = canonical(item["metadata"]["name"])
        if name in GPU_MACHINE_PACKAGES or name in GPU_KERNEL_PACKAGES_LEFT_OUT:
            continue
        info = item["download_info"]
        wheels.append(LockedWheel(name, item["metadata"]["version"], info["url"].rsplit("/", 1)[-1],
                                  info["archive_info"]["hashes"]["sha256"]))
    header = [f"# vLLM {VLLM_VERSION} and the wheels of its requirements that the GPU machine lacks (CPython "
              f"{PYTHON_VERSION}, manylinux x86_64),",
              "# written by `python3 benchmarks/gpu/serve_pack.py lock`; `make gpu-serve-pack` downloads exactly "
              "these.",
              "# Not brought along (on the GPU machine, or GPU kernel packages the serving path never imports):",
              *(f"#   {s}" for s in skipped), ""]
    LOCK.write_text("\n".join(header + [w.line() for w in wheels]) + "\n")
    say(f"wrote {LOCK.relative_to(REPO)}: {len(wheels)} wheels")
    return wheels


# ---------------------------------------------------------------------------------------------------------------------
# Build: wheels -> one deterministic .tar.xz -> parts
# ---------------------------------------------------------------------------------------------------------------------


def fetch_wheels(wheels: list[LockedWheel]) -> list[Path]:
    """The locked wheels from the cache (the missing ones downloaded in one pip call), each checked against its
    sha256."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    missing = [w for w in wheels if not (WHEELS / w.filename).exists()]
    if missing:
        say(f"downloading {len(missing)} wheels into {WHEELS} ...")
        download(" ".join(f"{w.name}=={w.version}" for w in missing), WHEELS)
    paths = []
    for w in wheels:
        path = WHEELS / w.filename
        if not path.exists():
            raise PackError(f"pip downloaded {w.name}=={w.version}, but not {w.filename} (a new upload?); re-run "
                            "`serve_pack.py lock`")
        got = sha256_file(path)
        if got != w.sha256:
            raise PackError(f"{w.filename}: sha256 {got}, the lock says {w.sha256}")
        paths.append(path)
    return paths


def bundle_path(wheel_name: str, member: str) -> str | None:
    """Where a wheel member goes in the bundle (relative to the site folder), or None when it is left out."""
    if member.endswith("/"):
        return None
    if wheel_name.startswith("vllm-") and any(p.fullmatch(member) for p in _LEFT_OUT):
        return None
    head, _, rest = member.partition("/")
    if head.endswith(".data"):
        scheme, _, inner = rest.partition("/")
        if scheme not in _DATA_SCHEMES or not inner:
            return None  # headers and data files: nothing on the import path needs them
        return _DATA_SCHEMES[scheme] + inner
    return member


def write_archive(wheel_paths: list[Path], archive: Path, preset: int = 6) -> dict:
    """One .tar.xz of every wheel's files laid out as ``pip install --target`` does, byte-identical for identical
    wheels (sorted members, fixed owners and times)."""
    members: dict[str, tuple[Path, zipfile.ZipInfo]] = {}
    for path in wheel_paths:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                dest = bundle_path(path.name, info.filename)
                if dest is None:
                    continue
                if dest in members and members[dest][0] != path:
                    raise PackError(f"{dest} is in both {members[dest][0].name} and {path.name}")
                members[dest] = (path, info)
    raw = 0
    zips: dict[Path, zipfile.ZipFile] = {}
    try:
        with lzma.open(archive, "wb", preset=preset) as xz, tarfile.open(fileobj=xz, mode="w",
                                                                          format=tarfile.PAX_FORMAT) as tar:
            for dest in sorted(members):
                path, info = members[dest]
                zf = zips.setdefault(path, zipfile.ZipFile(path))
                data = zf.read(info)
                ti = tarfile.TarInfo("site/" + dest)
                ti.size, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0, 0, "", ""
                unix_mode = (info.external_attr >> 16) & 0o777
                ti.mode = 0o755 if unix_mode & 0o111 or dest.startswith("bin/") else 0o644
                tar.addfile(ti, io.BytesIO(data))
                raw += len(data)
    finally:
        for zf in zips.values():
            zf.close()
    return {"files": len(members), "unpacked_bytes": raw}


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of the working tree a device command copies: tracked files and untracked files git does not ignore (and a
    shared/ folder inside the checkout)."""
    def listed(*args: str) -> list[str]:
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=repo, capture_output=True, check=True).stdout
        return [p for p in out.decode().split("\0") if p]

    total = 0
    for rel in dict.fromkeys(listed() + listed("--others", "--exclude-standard")):
        p = repo / rel
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    shared = repo / "shared"
    if shared.is_dir() and not shared.is_symlink():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file() and not p.is_symlink())
    return total


def part_dirs(root: Path = PACK_ROOT) -> list[Path]:
    return sorted((p for p in root.glob("part*") if p.is_dir() and re.fullmatch(r"part\d+", p.name)),
                  key=lambda p: int(p.name[4:]))


def build(root: Path = PACK_ROOT, lock: Path = LOCK, part_bytes: int | None = None, force: bool = False) -> dict:
    """Build the parts under ``root`` (or reuse them: same lock, each part still fits a command beside the working
    tree, every sha256 intact); returns the manifest."""
    wheels = read_lock(lock)
    digest = lock_digest(lock)
    tree = tree_bytes()
    if part_bytes is None:
        part_bytes = COMMAND_LIMIT - tree - TREE_HEADROOM
    if part_bytes < 8 * 2**20:
        raise PackError(f"the working tree is {tree / 2**20:.1f} MiB: too little of a command's "
                        f"{COMMAND_LIMIT / 2**20:.0f} MiB is left for the bundle's parts")
    manifest_path = root / MANIFEST
    if not force and manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        # what matters is that each part still fits one command beside today's working tree
        fits = max((p["bytes"] for p in old.get("parts", [])), default=COMMAND_LIMIT) + tree <= COMMAND_LIMIT
        if old.get("lock_sha256") == digest and fits and verify_parts(root):
            say(f"up to date: {len(old['parts'])} parts in {root} (lock unchanged, each part + working tree fits)")
            return old
    t0 = time.monotonic()
    paths = fetch_wheels(wheels)
    root.mkdir(parents=True, exist_ok=True)
    for old_part in part_dirs(root):
        shutil.rmtree(old_part)
    archive = root / ARCHIVE_NAME
    say(f"packing {len(paths)} wheels into {archive.name} (xz) ...")
    stats = write_archive(paths, archive)
    meta = {"vllm": VLLM_VERSION, "python": PYTHON_VERSION, "lock_sha256": digest, **stats,
            "tree_bytes_at_build": tree,
            "wheels": [{"name": w.name, "version": w.version, "filename": w.filename, "sha256": w.sha256}
                       for w in wheels]}
    manifest = split_archive(archive, root, part_bytes, meta)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"{len(manifest['parts'])} parts of <= {part_bytes / 2**20:.1f} MiB "
        f"({manifest['archive_bytes'] / 2**20:.1f} MiB xz, "
        f"{stats['unpacked_bytes'] / 2**20:.0f} MiB unpacked, {stats['files']} files) in "
        f"{time.monotonic() - t0:.0f} s; working tree {tree / 2**20:.1f} MiB")
    return manifest


def split_archive(archive: Path, root: Path, part_bytes: int, meta: dict) -> dict:
    """Cut ``archive`` into ``root/part1``, ``part2``, ... of at most ``part_bytes`` each, every part folder holding
    its chunk and the manifest of the whole (so any one part says what the others must be); the archive is removed."""
    manifest = {**meta, "archive": archive.name, "archive_sha256": sha256_file(archive),
                "archive_bytes": archive.stat().st_size, "part_limit_bytes": part_bytes, "parts": []}
    with open(archive, "rb") as f:
        index = 1
        while chunk := f.read(part_bytes):
            part = root / f"part{index}"
            part.mkdir()
            name = f"{archive.name}.{index:02d}"
            (part / name).write_bytes(chunk)
            manifest["parts"].append({"dir": part.name, "file": name, "bytes": len(chunk),
                                      "sha256": hashlib.sha256(chunk).hexdigest()})
            index += 1
    text = json.dumps(manifest, indent=2) + "\n"
    for p in manifest["parts"]:
        (root / p["dir"] / MANIFEST).write_text(text)
    archive.unlink()  # the parts are the pack; the whole is rebuilt from them where it is needed
    return manifest


def verify_parts(root: Path) -> bool:
    """Every part the manifest under ``root`` names is there with its sha256."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        return all(sha256_file(root / p["dir"] / p["file"]) == p["sha256"] for p in manifest["parts"])
    except (OSError, ValueError, KeyError):
        return False


# ---------------------------------------------------------------------------------------------------------------------
# The GPU side: collect the parts, reassemble, check, unpack
# ---------------------------------------------------------------------------------------------------------------------


def stash_parts(sources: list[Path], stash: Path) -> dict:
    """Copy the parts found in ``sources`` (part folders) into ``stash``, which outlives one device command; every
    part is checked against the manifest it came with. Returns the manifest."""
    stash.mkdir(parents=True, exist_ok=True)
    manifest = None
    for src in sources:
        m = json.loads((src / MANIFEST).read_text())
        if manifest is None:
            manifest = m
            old = stash / MANIFEST
            if old.exists() and json.loads(old.read_text())["archive_sha256"] != m["archive_sha256"]:
                say("the stash holds parts of another pack: emptied")
                shutil.rmtree(stash)
                stash.mkdir(parents=True)
            (stash / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
        elif m["archive_sha256"] != manifest["archive_sha256"]:
            raise PackError(f"{src} belongs to another pack than the other parts (archive sha256 differs)")
        for p in m["parts"]:
            f = src / p["file"]
            if f.exists():
                if sha256_file(f) != p["sha256"]:
                    raise PackError(f"{f}: sha256 differs from its manifest: the part is damaged")
                shutil.copyfile(f, stash / p["file"])
                say(f"stashed {p['file']} ({p['bytes'] / 2**20:.1f} MiB)")
    if manifest is None:
        old = stash / MANIFEST
        if not old.exists():
            raise PackError("no part of the pack here and none stashed: bring part1 (carry .cache/gpu-serve-pack/"
                            "part1) or run `make gpu-serve-pack` first")
        manifest = json.loads(old.read_text())
    return manifest


def missing_parts(stash: Path, manifest: dict) -> list[str]:
    return [p["dir"] for p in manifest["parts"]
            if not (stash / p["file"]).exists() or sha256_file(stash / p["file"]) != p["sha256"]]


def reassemble(stash: Path, manifest: dict, archive: Path) -> Path:
    """Concatenate the parts into ``archive`` and check the whole against the manifest."""
    missing = missing_parts(stash, manifest)
    if missing:
        raise PackError(f"parts missing or damaged: {', '.join(missing)}")
    h = hashlib.sha256()
    with open(archive, "wb") as out:
        for p in manifest["parts"]:
            data = (stash / p["file"]).read_bytes()
            h.update(data)
            out.write(data)
    if h.hexdigest() != manifest["archive_sha256"]:
        raise PackError(f"the reassembled archive's sha256 is {h.hexdigest()}, the manifest says "
                        f"{manifest['archive_sha256']}")
    return archive


def unpack(archive: Path, dest: Path, manifest: dict) -> Path:
    """Unpack the archive into ``dest`` (its ``site/`` goes on PYTHONPATH); a marker names the archive, so a second
    call with the same archive does nothing."""
    marker = dest / ".unpacked"
    if marker.exists() and marker.read_text().strip() == manifest["archive_sha256"]:
        return dest / "site"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(archive, "r:xz") as tar:
        names = tar.getnames()
        bad = [n for n in names if not n.startswith("site/") or ".." in Path(n).parts]
        if bad:
            raise PackError(f"unexpected paths in the archive: {bad[:3]}")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 (and patched 3.8-3.11): refuse links out of dest
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    if len(names) != manifest["files"]:
        raise PackError(f"the archive holds {len(names)} files, the manifest says {manifest['files']}")
    marker.write_text(manifest["archive_sha256"] + "\n")
    return dest / "site"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download the locked wheels and write the parts (make gpu-serve-pack)")
    b.add_argument("--root", type=Path, default=PACK_ROOT)
    b.add_argument("--part-mib", type=float, default=None,
                   help="part size in MiB (default: 64 MiB less the working tree and 4 MiB of headroom)")
    b.add_argument("--force", action="store_true", help="rebuild even when the parts are up to date")
    sub.add_parser("lock", help="re-resolve vLLM's requirements for the GPU machine and rewrite serve_pack.lock")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "lock":
            make_lock()
        else:
            part = int(args.part_mib * 2**20) if args.part_mib else None
            manifest = build(args.root, part_bytes=part, force=args.force)
            tree = tree_bytes()
            for p in manifest["parts"]:
                say(f"  {p['dir']}: {p['bytes'] / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = "
                    f"{(p['bytes'] + tree) / 2**20:.1f} MiB of {COMMAND_LIMIT / 2**20:.0f} MiB")
    except PackError as exc:
        print(f"serve_pack: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
