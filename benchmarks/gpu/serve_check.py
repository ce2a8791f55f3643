#!/usr/bin/env python3
"""vLLM with the plugin on the GPU machine, from the slim bundle (``make gpu-serve-check``; benchmarks/gpu/README.md).

The GPU machine has no vLLM and takes at most 64 MiB per command, so the bundle (serve_pack.py) travels in parts, one
per device command, each command carrying one part (``carry=[".cache/gpu-serve-pack/partN"]``) and running this same
script: stage a stashes the parts it finds under ``/tmp/vs-vllm-gpu-serve`` (kept while the machine stays warm) and,
until every part is there, stops saying which ones are still to bring (exit status 3). Once all are there:

  a  unpack    reassemble the parts, check every sha256, unpack the bundle (skipped when already unpacked)
  b  env       GPU and versions; vLLM's engine, GPU model runner, Qwen-VL models and Triton attention import from the
               bundle on this torch; which of vLLM's requirements are absent here
  c  models    tiny random-weight Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE (vs_vllm.testing.tiny_models) and a scorer; the
               7B-shaped Qwen2.5-VL config (real sizes, tiny tokenizer; served with --load-format dummy, bf16)
  d  serve     per tiny model, stock ``vllm serve`` vs ``vs-vllm serve`` (MRv2, Triton attention, eager, fp32): ratio
               1.0 token-identical to stock (images, a video, image + video), pruned == the HF reference on CUDA
               (fp32), chunked prefill == unchunked, prefix cache across ratios, 32 concurrent mixed requests, kernels
               compiled at load and no Triton compile of ours while serving; the runner and attention backend logged
  e  sync      the selection path on CUDA under ``torch.cuda.set_sync_debug_mode("error")``: no host sync
  f  bench-7b  7B-shaped Qwen2.5-VL (bf16 random weights), one 1280x720 image: TTFT and requests/s, stock vs plugin
               at ratios 1 / 0.5 / 0.2 / 0.1, concurrency 1 / 8 / 32, against the Amdahl ceiling from the vision
               tower's and the LLM's measured times (HF, same sizes); ratio 1.0's overhead vs stock
  g  summary   serve_check_<gpu>.{md,json,log} + serve_check_<gpu>_bench.csv + a .tar.gz of every file and server log

Every stage is a child process with a time limit (benchmarks/gpu/gpu_check.py's machinery); results go to ``$OUT``
after every stage. ``--dry-run`` rehearses it on the CPU in under a minute: a small synthetic pack through the same
stash / reassemble / unpack code, the CPU vLLM of the .venv for the imports, only the tiny Qwen2.5-VL, and no vLLM
server (the request plans, the HF reference path on the CPU and the report are exercised; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [p for p in (str(HERE), str(REPO)) if p not in sys.path]

import gpu_check  # noqa: E402  (the stage machinery: Child, PortableLog, overlay, slugs)
import serve_pack  # noqa: E402

STASH = Path(os.environ.get("VS_GPU_SERVE_STASH", "/tmp/vs-vllm-gpu-serve"))
DRY_SLUG = "dry_run_cpu"
EXIT_WAITING = 3  # parts still to bring: not a failure of the check
TINY_ARCHS = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
SCORER_SEED = 4321
QUESTION = "What colour is the shape?"
MAX_TOKENS = 8
#: Image sets of the tiny-model matrix (width, height), as in tests/vllm/test_plugin_e2e.py.
IMAGE_SETS = {"square": [(224, 224)], "odd": [(300, 200)], "two-images": [(140, 420), (252, 196)]}
VIDEO = (112, 112, 4)  # width, height, frames of the test video
PRUNED_RATIOS = (0.5, 0.1)
BENCH_RATIOS = (1.0, 0.5, 0.2, 0.1)
BENCH_CONCURRENCY = (1, 8, 32)
BENCH_IMAGE = (1280, 720)
#: vLLM arguments of every GPU server: the backends the bundle carries (Triton attention for the LLM, torch SDPA for
#: the vision tower: FlashAttention's kernels are not in the bundle), eager mode (no torch.compile / CUDA graphs).
GPU_SERVE_ARGS = ("--attention-backend", "TRITON_ATTN", "--mm-encoder-attn-backend", "TORCH_SDPA", "--enforce-eager")
#: Qwen/Qwen2.5-VL-7B-Instruct's sizes (benchmarks/prefill/hf_gpu_prefill.py holds the same config for HF).
QWEN25_VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000)
QWEN25_VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)


@dataclass(frozen=True)
class Stage:
    letter: str
    name: str
    title: str
    cap_s: float  # time limit (full run)
    min_s: float  # not started with less than this left


STAGES = (
    Stage("a", "unpack", "stash the parts; reassemble, check and unpack the bundle", 120, 10),
    Stage("b", "env", "GPU, versions, vLLM imports from the bundle", 90, 10),
    Stage("c", "models", "tiny Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE + scorer; 7B-shaped config", 90, 15),
    Stage("d", "serve", "stock vllm serve vs vs-vllm serve on the tiny models (CUDA, fp32)", 240, 60),
    Stage("e", "sync", "selection path on CUDA without host sync", 60, 10),
    Stage("f", "bench-7b", "7B-shaped Qwen2.5-VL, bf16, 1280x720: TTFT and throughput vs the ceiling", 240, 90),
)
STAGE_NAMES = [s.name for s in STAGES]
DEADLINE_S = 540  # the whole check, parts already on the machine; with the part commands about 10 GPU minutes
DRY_DEADLINE_S = 240
#: The dry run's per-stage limit and minimum (its stages take seconds; the GPU's minimums would not fit its deadline).
DRY_CAP_S, DRY_MIN_S = 120, 5


@dataclass
class Result:
    letter: str
    name: str
    title: str
    status: str = "not run"  # passed | failed | skipped | waiting | not run
    seconds: float = 0.0
    detail: str = ""
    data: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# The parent: stages in order, each a child with a limit; results published after every stage
# ---------------------------------------------------------------------------------------------------------------------


class ServeCheck:
    def __init__(self, args: argparse.Namespace):
        self.args, self.dry = args, args.dry_run
        self.t0 = time.monotonic()
        self.started = _dt.datetime.now().astimezone()
        self.deadline = args.deadline or (DRY_DEADLINE_S if self.dry else DEADLINE_S)
        self.work = Path(tempfile.mkdtemp(prefix="serve-check-work-"))
        self.stash = args.stash
        self.out_dir = args.out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.OUT = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
        self.lock = threading.Lock()
        self.log_path = self.work / "serve_check.log"
        self.log = gpu_check.PortableLog(self.log_path)
        self.results = {s.name: Result(s.letter, s.name, s.title) for s in STAGES}
        self.tag = DRY_SLUG if self.dry else "pending"
        self.python = gpu_check.child_python()
        self.overlay: Path | None = None
        self.site: Path | None = None
        self.commit = functools.cache(gpu_check.git_commit)  # once per run: git status is slow on a loaded machine

    def say(self, msg: str) -> None:
        line = f"[serve-check {time.monotonic() - self.t0:5.0f}s] {msg}"
        with self.lock:
            print(line, flush=True)
            self.log.write(line + "\n")
            self.log.flush()

    def child_env(self) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", VS_VLLM_STRICT_KERNELS="1")
        env.pop("OUT", None)
        env.pop("TRITON_INTERPRET", None)
        if self.dry:
            env["CUDA_VISIBLE_DEVICES"] = ""
        paths = [str(p) for p in (self.overlay, self.site) if p] + [str(REPO)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def run_stage(self, stage: Stage) -> Result:
        r = self.results[stage.name]
        cap, keep = (DRY_CAP_S, DRY_MIN_S) if self.dry else (stage.cap_s, stage.min_s)
        left = self.deadline - (time.monotonic() - self.t0) - sum(
            DRY_MIN_S if self.dry else s.min_s for s in STAGES[STAGES.index(stage) + 1:]
            if s.name in self.args.stages) - 5
        limit = min(cap, left)
        if limit < keep:
            r.status, r.detail = "skipped", f"not started: out of time ({max(left, 0):.0f} s left for it)"
            self.say(f"stage {r.letter} {r.name}: SKIPPED - {r.detail}")
            return r
        out = self.work / stage.name
        out.mkdir(exist_ok=True)
        cmd = [self.python, Path(__file__).resolve(), "--child", stage.name, "--work", out, "--models",
               self.work / "models", "--stash", self.stash, *(["--dry-run"] if self.dry else [])]
        self.say(f"stage {r.letter} {r.name}: {r.title} (limit {limit:.0f} s)")
        child = gpu_check.Child(f"{r.letter} {r.name}", cmd, self.child_env(), self.work, self.log, self.lock)
        rc = child.wait(time.monotonic() + limit)
        r.seconds = round(child.seconds, 1)
        result_file = out / "result.json"
        data = json.loads(result_file.read_text()) if result_file.exists() else {}
        r.data = data
        if rc == EXIT_WAITING and stage.name == "unpack":
            r.status, r.detail = "waiting", data.get("detail", "parts still to bring")
        elif rc == 0 and data.get("ok"):
            r.status, r.detail = "passed", data.get("detail", "")
        else:
            r.status = "failed"
            r.detail = data.get("detail") or child.why(rc, limit)
            if child.timed_out:
                r.detail = f"timed out after {limit:.0f} s; " + r.detail
        self.say(f"stage {r.letter} {r.name}: {r.status.upper()}{' - ' + r.detail if r.detail else ''}")
        for f in sorted(out.iterdir()):
            if f.is_file() and f.name != "result.json":
                shutil.copyfile(f, self.out_dir / f"serve_check_{self.tag}_{stage.name}_{f.name}")
        return r

    def run(self) -> int:
        self.say(f"stages {', '.join(self.args.stages)}; deadline {self.deadline:.0f} s; stash {self.stash}; results "
                 f"-> {self.out_dir}{'; $OUT -> ' + str(self.OUT) if self.OUT else ''}")
        if gpu_check.GpuCheck.overlay_needed(self):  # the same probe as make gpu-check: a plain checkout
            self.overlay = gpu_check.build_overlay(self.work)
            write_plugin_entry_point(self.overlay)
        waiting = False
        for stage in STAGES:
            if stage.name not in self.args.stages:
                self.results[stage.name].detail = "not selected (--stages)"
                continue
            if waiting or (stage.name != "unpack" and self.results["unpack"].status == "failed"):
                self.results[stage.name].detail = "not run: the bundle is not unpacked"
                continue
            r = self.run_stage(stage)
            if stage.name == "unpack":
                waiting = r.status == "waiting"
                if r.status == "passed":
                    self.site = Path(r.data["site"])
            if stage.name == "env" and r.data.get("gpu_name"):
                self.tag = gpu_check.slugify(r.data["gpu_name"])
            elif stage.name == "env" and not self.dry:
                self.tag = "no_cuda"
            self.publish()
        self.publish(final=True)
        print(self.summary_text(), flush=True)
        self.log.close()
        if not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        if waiting:
            return EXIT_WAITING
        return 1 if any(r.status in ("failed", "skipped") for r in self.results.values()) else 0

    # -- reports ------------------------------------------------------------------------------------------------------
    def publish(self, final: bool = False) -> None:
        """Summary (md + json), the bench CSV and the log into out_dir; those and a tarball of everything into $OUT.
        Never raises: a bug in the report must not cost the stages still to run."""
        try:
            self._publish(final)
        except Exception as exc:
            self.say(f"writing the summary failed: {type(exc).__name__}: {exc}")

    def _publish(self, final: bool) -> None:
        stem = f"serve_check_{self.tag}"
        files = {}
        md = self.out_dir / f"{stem}.md"
        md.write_text(gpu_check.portable_text(render_summary(self, final)))
        files["md"] = md
        state = {"tag": self.tag, "dry_run": self.dry, "final": final,
                 "elapsed_s": round(time.monotonic() - self.t0, 1),
                 "started": self.started.isoformat(timespec="seconds"), "git_commit": self.commit(),
                 "stages": [asdict(self.results[s.name]) for s in STAGES]}
        js = self.out_dir / f"{stem}.json"
        js.write_text(gpu_check.portable_text(json.dumps(state, indent=2, default=str)) + "\n")
        files["json"] = js
        rows = self.results["bench-7b"].data.get("rows") or []
        if rows:
            bench = self.out_dir / f"{stem}_bench.csv"
            write_csv(bench, rows)
            files["csv"] = bench
        with self.lock:
            self.log.flush()
            gpu_check.copy_capped(self.log_path, self.out_dir / f"{stem}.log", gpu_check.LOG_CAP)
        files["log"] = self.out_dir / f"{stem}.log"
        # earlier names of this run (before env named the GPU) are not results of it
        for old in self.out_dir.glob("serve_check_pending*"):
            if self.tag != "pending":
                old.unlink()
        if self.OUT is not None:
            self.OUT.mkdir(parents=True, exist_ok=True)
            for old in self.OUT.glob("serve_check_pending*"):
                if self.tag != "pending":
                    old.unlink()
            tmp = self.OUT / f"{stem}.tar.gz.tmp"
            with tarfile.open(tmp, "w:gz") as tar:
                for p in sorted(self.out_dir.glob(f"{stem}*")):
                    if p.is_file() and not p.name.endswith(".tar.gz"):
                        tar.add(p, arcname=f"benchmarks/results/{p.name}")
            os.replace(tmp, self.OUT / f"{stem}.tar.gz")
            for p in files.values():
                shutil.copyfile(p, self.OUT / f"{p.name}.tmp")
                os.replace(self.OUT / f"{p.name}.tmp", self.OUT / p.name)

    def summary_text(self) -> str:
        out = ["", f"===== gpu-serve-check {self.tag}: {time.monotonic() - self.t0:.0f} s ====="]
        for s in STAGES:
            r = self.results[s.name]
            out.append(f"  {r.letter} {r.name:9s} {r.status:8s} {r.seconds:6.0f} s  {r.detail[:160]}")
        return "\n".join(out)


def write_plugin_entry_point(root: Path) -> Path:
    """vLLM finds plugins through the ``vllm.general_plugins`` entry points of installed distributions: a checkout
    that is not installed gets a metadata-only ``vs_vllm`` distribution beside the overlay, naming the same entry point
    as pyproject.toml."""
    dist = root / "vs_vllm-0.0.0+checkout.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vs-vllm\nVersion: 0.0.0+checkout\n")
    text = (REPO / "pyproject.toml").read_text()
    m = re.search(r'\[project\.entry-points\."vllm\.general_plugins"\]\s*\n([^\n]+)', text)
    if not m:
        raise RuntimeError("pyproject.toml names no vllm.general_plugins entry point")
    (dist / "entry_points.txt").write_text(f"[vllm.general_plugins]\n{m.group(1).strip()}\n")
    return dist


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def render_summary(check: ServeCheck, final: bool) -> str:
    env = check.results["env"].data
    gpu = env.get("gpu_name") or ("CPU (dry run)" if check.dry else "no CUDA device")
    lines = [f"# vLLM serve check: {gpu}" + (" (DRY RUN: no vLLM server, numbers mean nothing)" if check.dry else ""),
             ""]
    if not final:
        lines += ["**Partial: the run was still going when this was written (or was cut short).**", ""]
    lines += [f"- Run: {check.started.isoformat(timespec='seconds')}, {time.monotonic() - check.t0:.0f} s of "
              f"{check.deadline:.0f} s; commit {check.commit()}",
              f"- vLLM {env.get('vllm', '-')} from {env.get('vllm_from', '-')}; torch {env.get('torch', '-')} (CUDA "
              f"{env.get('torch_cuda', '-')}), triton {env.get('triton', '-')}, transformers "
              f"{env.get('transformers', '-')}, python {env.get('python', '-')}",
              f"- Runner / attention: {check.results['serve'].data.get('runners', '-')}",
              "", "## Stages", ""]
    lines += gpu_check._table(["", "stage", "status", "seconds", "detail"],
                              [[r.letter, r.name, f"**{r.status}**" if r.status == "failed" else r.status,
                                f"{r.seconds:.0f}", (r.detail or "-").replace("|", "/")]
                               for r in (check.results[s.name] for s in STAGES)])
    checks = check.results["serve"].data.get("checks") or []
    if checks:
        lines += ["", "## Tiny models: stock vs plugin, plugin vs HF (d)", ""]
        lines += gpu_check._table(["arch", "check", "case", "ok", "detail"],
                                  [[c["arch"], c["check"], c["case"], "yes" if c["ok"] else "**NO**",
                                    str(c.get("detail", "")).replace("|", "/")[:160]] for c in checks])
    rows = check.results["bench-7b"].data.get("rows") or []
    if rows:
        lines += ["", "## 7B-shaped Qwen2.5-VL, 1280x720, bf16 (f)", "",
                  "TTFT p50 and requests/s of closed-loop runs (max_tokens 1); speedups vs stock at the same "
                  "concurrency; ceiling: Amdahl bound from the HF vision-tower and LLM times (only the LLM shrinks).",
                  ""]
        lines += gpu_check._table(["config", "concurrency", "K", "TTFT p50 ms", "TTFT speedup", "req/s",
                                   "throughput speedup", "ceiling"],
                                  [[r["config"], r["concurrency"], r.get("visual_kept", "-"),
                                    _fmt(r.get("ttft_p50_ms"), ".1f"), _fmt(r.get("ttft_speedup"), ".2f", "x"),
                                    _fmt(r.get("req_per_s"), ".2f"), _fmt(r.get("throughput_speedup"), ".2f", "x"),
                                    _fmt(r.get("ceiling"), ".2f", "x")] for r in rows])
        ov = check.results["bench-7b"].data.get("overhead_pct")
        if ov:
            lines += ["", "Ratio 1.0 vs stock (TTFT p50, + = slower): " + ", ".join(
                f"c={c}: {v:+.1f}%" for c, v in sorted(ov.items(), key=lambda kv: int(kv[0])))]
    lines += ["", "## Files", "", ", ".join(f"`{p.name}`" for p in sorted(check.out_dir.glob(
        f"serve_check_{check.tag}*")) if p.is_file()) or "-", ""]
    return "\n".join(lines)


def _fmt(v, spec: str, suffix: str = "") -> str:
    try:
        return f"{float(v):{spec}}{suffix}"
    except (TypeError, ValueError):
        return "-"


# ---------------------------------------------------------------------------------------------------------------------
# Children (python3 serve_check.py --child NAME): each writes <work>/result.json {"ok", "detail", ...}
# ---------------------------------------------------------------------------------------------------------------------


def finish(work: Path, ok: bool, detail: str, **data) -> int:
    (work / "result.json").write_text(json.dumps({"ok": ok, "detail": detail, **data}, indent=2, default=str))
    print(f"{'OK' if ok else 'FAILED'}: {detail}", flush=True)
    return 0 if ok else 1


def child_unpack(args) -> int:
    """Stash the parts this command brought; when all are there, reassemble, check and unpack."""
    stash = args.stash
    if args.dry_run:  # a small synthetic pack through the same code: several parts of a few KiB
        sources = dry_run_pack(args.work / "pack")
    else:
        sources = serve_pack.part_dirs(serve_pack.PACK_ROOT)
    try:
        manifest = serve_pack.stash_parts(sources, stash / "parts")
        missing = serve_pack.missing_parts(stash / "parts", manifest)
        if missing:
            have = [p["dir"] for p in manifest["parts"] if p["dir"] not in missing]
            detail = (f"stashed {', '.join(have) or 'nothing'} of {len(manifest['parts'])} parts in {stash}; still to "
                      f"bring: {', '.join(missing)} (run `make gpu-serve-check` again with carry="
                      f"[\".cache/gpu-serve-pack/{missing[0]}\"])")
            finish(args.work, False, detail, missing=missing)
            return EXIT_WAITING
        t0 = time.monotonic()
        archive = serve_pack.reassemble(stash / "parts", manifest, stash / serve_pack.ARCHIVE_NAME)
        site = serve_pack.unpack(archive, stash / "unpacked", manifest)
        archive.unlink()
    except (serve_pack.PackError, OSError, ValueError, KeyError) as exc:
        return finish(args.work, False, f"{type(exc).__name__}: {exc}")
    return finish(args.work, True, f"{len(manifest['parts'])} parts, {manifest['files']} files, "
                  f"{manifest['unpacked_bytes'] / 2**20:.0f} MiB in {time.monotonic() - t0:.0f} s (vLLM "
                  f"{manifest['vllm']})", site=str(site))


def dry_run_pack(root: Path) -> list[Path]:
    """A pack of one synthetic wheel, split into 4 KiB parts, for the rehearsal of stage a."""
    import zipfile

    root.mkdir(parents=True, exist_ok=True)
    wheel = root / "vs_dry_run_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        # incompressible bytes, so the pack has several parts of 4 KiB
        noise = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(400))
        zf.writestr("vs_dry_run_pkg/__init__.py", "VALUE = 42\n")
        zf.writestr("vs_dry_run_pkg/noise.bin", noise)
        zf.writestr("vs_dry_run_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: vs-dry-run-pkg\n"
                    "Version: 1.0\n")
    lock = root / "dry.lock"
    sha = serve_pack.sha256_file(wheel)
    lock.write_text(f"vllm==0.0 {wheel.name} sha256={sha}\n")
    archive = root / serve_pack.ARCHIVE_NAME
    stats = serve_pack.write_archive([wheel], archive)
    manifest = serve_pack.split_archive(archive, root, 4096, {"vllm": "dry run", "lock_sha256": sha, **stats})
    return [root / p["dir"] for p in manifest["parts"]]


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


#: What stage b imports from the bundle: the engine, MRv2's GPU model runner, the three model families, the Triton
#: attention backend, the OpenAI server and the custom-op libraries.
ENV_MODULES = ("vllm.v1.engine.core", "vllm.v1.worker.gpu.model_runner", "vllm.model_executor.models.qwen2_5_vl",
               "vllm.model_executor.models.qwen3_vl", "vllm.model_executor.models.qwen3_vl_moe",
               "vllm.v1.attention.backends.triton_attn", "vllm.entrypoints.openai.api_server", "vllm._custom_ops")
GPU_ONLY_MODULES = ("vllm._C_stable_libtorch", "vllm._moe_C_stable_libtorch")


def child_env(args) -> int:
    import importlib
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "triton": _version("triton"), "transformers": _version("transformers"), "numpy": _version("numpy"),
            "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info.update(gpu_name=torch.cuda.get_device_name(0),
                    capability="".join(map(str, torch.cuda.get_device_capability(0))))
    import vllm

    info.update(vllm=vllm.__version__, vllm_from=str(Path(vllm.__file__).parent.parent))
    problems = []
    for name in ENV_MODULES + (GPU_ONLY_MODULES if info["cuda"] else ()):
        t0 = time.monotonic()
        try:
            importlib.import_module(name)
            print(f"imported {name} ({time.monotonic() - t0:.1f} s)", flush=True)
        except Exception as exc:  # every failing import is reported, not only the first
            problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
            print(f"IMPORT FAILED {problems[-1]}", flush=True)
    # vLLM's requirements that are absent here: expected only for the GPU kernel packages the bundle leaves out
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    absent = []
    for spec in requires("vllm") or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if _version(req.name) is None:
            absent.append(serve_pack.canonical(req.name))
    # (the dry run's vLLM is the CPU build, whose requirements are another list)
    unexpected = [] if args.dry_run else sorted(set(absent) - set(serve_pack.GPU_KERNEL_PACKAGES_LEFT_OUT))
    info.update(absent_requirements=absent, unexpected_absent=unexpected, import_problems=problems)
    print("SERVE_CHECK_ENV " + json.dumps(info), flush=True)
    if not args.dry_run and not info["cuda"]:
        problems.append("no CUDA device")
    if not args.dry_run and not info["vllm_from"].startswith(str(args.stash)):
        problems.append(f"vllm imported from {info['vllm_from']}, not from the bundle")
    ok = not problems and not unexpected
    detail = (f"vLLM {info['vllm']} on torch {info['torch']}, {len(ENV_MODULES)} modules imported; absent "
              f"requirements: {len(absent)} (all left out on purpose)" if ok else
              "; ".join(problems + ([f"absent requirements not left out on purpose: {unexpected}"] if unexpected
                                    else [])))
    return finish(args.work, ok, detail, **info)


def scorer_path(models: Path) -> Path:
    return models / "scorer.safetensors"


def child_models(args) -> int:
    import torch

    from vs_vllm.selection.checkpoint import save_scorer
    from vs_vllm.selection.scorer import TransformerScorer
    from vs_vllm.testing.tiny_models import build_tiny_model

    models = args.models
    archs = TINY_ARCHS[:1] if args.dry_run else TINY_ARCHS
    hidden = set()
    for arch in archs:
        t0 = time.monotonic()
        build_tiny_model(models / arch, arch=arch, seed=0)
        hidden.add(json.loads((models / arch / "config.json").read_text())["text_config"]["hidden_size"])
        print(f"built {arch} in {time.monotonic() - t0:.1f} s", flush=True)
    if len(hidden) != 1:
        return finish(args.work, False, f"the tiny models' hidden sizes differ ({sorted(hidden)}): one scorer "
                      "cannot serve them all")
    for width, path in ((hidden.pop(), scorer_path(models)),
                        (QWEN25_VL_7B_TEXT["hidden_size"], models / "scorer_7b.safetensors")):
        torch.manual_seed(SCORER_SEED)
        scorer = TransformerScorer(width)
        scorer.reset_parameters(init_std=0.05)  # the 1e-4 init would score every token ~0
        save_scorer(scorer, path)
    seven = write_7b_config(models / "qwen2_5_vl", models / "qwen2_5_vl_7b")
    return finish(args.work, True, f"{', '.join(archs)} + scorer; 7B-shaped config at {seven.name}",
                  archs=list(archs))


def write_7b_config(tiny: Path, out: Path) -> Path:
    """The tiny Qwen2.5-VL's tokenizer and processor with Qwen2.5-VL-7B's sizes and real pixel bounds, no weights
    (vLLM's --load-format dummy fills them at random)."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(tiny, out, ignore=shutil.ignore_patterns("*.safetensors", "vs_vllm_tiny_model.json"))
    config = json.loads((out / "config.json").read_text())
    config["text_config"].update(QWEN25_VL_7B_TEXT)
    config["text_config"]["rope_parameters"] = {**config["text_config"].get("rope_parameters", {}),
                                                "mrope_section": [16, 24, 24]}
    config["vision_config"].update(QWEN25_VL_7B_VISION)
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    pre = json.loads((out / "preprocessor_config.json").read_text())
    pre.update(min_pixels=3136, max_pixels=12845056, size={"shortest_edge": 3136, "longest_edge": 12845056})
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    return out


# -- stage d: the tiny-model matrix -----------------------------------------------------------------------------------


def post_json(base_url: str, path: str, body: dict, timeout: float = 300) -> dict:
    req = urllib.request.Request(base_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"HTTP {exc.code} from {path}: {exc.read()[:500]!r}") from exc


def images_of(key: str):
    from vs_vllm.testing.images import noise_image

    return [noise_image(w, h, seed=31 + i) for i, (w, h) in enumerate(IMAGE_SETS[key])]


def test_video():
    from vs_vllm.testing.images import noise_video

    return noise_video(*VIDEO, seed=7)


def chat_body(images, videos=(), **options) -> dict:
    from vs_vllm.testing.client import chat_messages

    return {"model": "tiny", "messages": chat_messages(images, QUESTION, videos), "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "return_token_ids": True, "ignore_eos": True, **options}


def answer(resp: dict) -> tuple:
    """(prompt token ids, generated token ids, prompt tokens, visual tokens kept/total) of a chat response."""
    vis = (resp.get("usage") or {}).get("visual_tokens") or {}
    return (resp.get("prompt_token_ids"), resp["choices"][0].get("token_ids"), resp["usage"]["prompt_tokens"],
            vis.get("kept"), vis.get("total"))


class HFReference:
    """Greedy tokens of the transformers reference (fp32, on CUDA when there is one) with the same scorer."""

    def __init__(self, model_dir: Path, scorer: Path, device: str):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from vs_vllm.hf.qwen_vl import QwenVLSelector
        from vs_vllm.selection.checkpoint import load_scorer

        self.proc = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        self.selector = QwenVLSelector(model, load_scorer(scorer).to(device))

    def __call__(self, images, ratio: float, method: str = "visionselector", seed: int | None = None):
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": QUESTION}]
        prompt = self.proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False)
        inputs = self.proc(text=[prompt], images=list(images), return_tensors="pt")
        tokens, pruned = self.selector.generate(inputs, ratio=ratio, method=method, max_new_tokens=MAX_TOKENS,
                                                seed=seed)
        return list(tokens), pruned.prompt_tokens


class Checks(list):
    def add(self, arch: str, check: str, case: str, ok: bool, detail: str = "") -> None:
        self.append({"arch": arch, "check": check, "case": case, "ok": bool(ok), "detail": detail})
        print(f"{'ok ' if ok else 'MISMATCH'} {arch} {check} {case} {detail}", flush=True)


def our_kernel_names() -> set[str]:
    """The Triton kernels of kernels/*.py (the names Triton's cache files carry)."""
    names = set()
    for p in (REPO / "kernels").glob("*.py"):
        names.update(re.findall(r"@triton\.jit[^\n]*\n(?:@[^\n]*\n)*def (\w+)", p.read_text()))
    return names


def compiled_kernels(cache: Path) -> set[str]:
    return {p.stem for p in cache.rglob("*.json") if not p.name.startswith("__grp__")} if cache.exists() else set()


def server_facts(log_path: Path) -> dict:
    """Runner, attention backends and the plugin's kernel warm-up, as the server logged them."""
    from vs_vllm.testing.server import MRV2_LOG_LINE

    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    backends = sorted(set(re.findall(r"Using (?:AttentionBackendEnum\.)?([A-Z_]+) (?:attention )?backend", text)))
    warm = re.findall(r"vs-vllm: Triton selection-kernel warm-up on [^\n]*", text)
    return {"runner": "mrv2" if MRV2_LOG_LINE in text else "v1", "attention_backends": backends,
            "kernel_warmup": warm[-1][:300] if warm else ""}


def child_serve(args) -> int:
    if args.dry_run:
        return serve_dry_run(args)
    from vs_vllm.testing.server import VLLMServer

    models, work = args.models, args.work
    servers: dict[tuple[str, str], VLLMServer] = {}
    common = ["--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "4096", "--max-num-seqs", "32",
              "--kv-cache-memory-bytes", str(512 * 2**20), "--gpu-memory-utilization", "0.08",
              "--limit-mm-per-prompt", '{"image": 4, "video": 2}', *GPU_SERVE_ARGS]
    plugin_cmd = [sys.executable, "-m", "vs_vllm", "serve"]
    scorer = ["--scorer", str(scorer_path(models))]
    for arch in TINY_ARCHS:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VS_VLLM_")}
        servers[(arch, "stock")] = VLLMServer(models / arch, common, env=env, log_path=work / f"{arch}_stock.log",
                                              startup_timeout=200)
        penv = dict(env, TRITON_CACHE_DIR=str(work / f"triton-{arch}"))
        servers[(arch, "plugin")] = VLLMServer(models / arch, [*scorer, *common], env=penv, command=plugin_cmd,
                                               log_path=work / f"{arch}_plugin.log", startup_timeout=200)
    servers[("qwen2_5_vl", "chunked")] = VLLMServer(
        models / "qwen2_5_vl", [*scorer, *common, "--max-num-batched-tokens", "48", "--no-enable-prefix-caching"],
        env=dict(os.environ), command=plugin_cmd, log_path=work / "qwen2_5_vl_chunked.log", startup_timeout=200)
    # every server starts at once (start-up is mostly CPU work and CUDA initialisation; the GPU has room for all)
    errors = {}

    def start(key):
        try:
            servers[key].start()
        except Exception as exc:
            errors[key] = f"{type(exc).__name__}: {str(exc)[:600]}"

    t0 = time.monotonic()
    threads = [threading.Thread(target=start, args=(k,)) for k in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{len(servers) - len(errors)} of {len(servers)} servers healthy in {time.monotonic() - t0:.0f} s",
          flush=True)
    checks = Checks()
    runners = {f"{a}/{k}": server_facts(s.log_path) for (a, k), s in servers.items()}
    try:
        if errors:
            return finish(work, False, "servers failed to start: " + "; ".join(f"{a}/{k}: {e}" for (a, k), e in
                                                                                  errors.items()), runners=runners)
        for arch in TINY_ARCHS:
            run_arch_matrix(arch, servers, models, work, checks)
        runners = {f"{a}/{k}": server_facts(s.log_path) for (a, k), s in servers.items()}
    except Exception as exc:
        import traceback

        traceback.print_exc()
        return finish(work, False, f"{type(exc).__name__}: {str(exc)[:400]}", checks=checks, runners=runners)
    finally:
        for s in servers.values():
            s.stop()
    bad = [c for c in checks if not c["ok"]]
    if checks:
        write_csv(work / "checks.csv", checks)
    runner_kinds = sorted({f"{r['runner']} / {','.join(r['attention_backends']) or '?'}" for r in runners.values()})
    failed = ", ".join(f"{c['arch']} {c['check']} {c['case']}" for c in bad[:6])
    return finish(work, not bad, f"{len(checks) - len(bad)}/{len(checks)} checks passed; runner / attention: "
                  f"{'; '.join(runner_kinds)}" + (f"; failed: {failed}" if bad else ""), checks=checks,
                  runners="; ".join(runner_kinds), server_facts=runners)


def run_arch_matrix(arch: str, servers: dict, models: Path, work: Path, checks: Checks) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from vs_vllm.selection.budget import keep_count

    stock, plugin = servers[(arch, "stock")].base_url, servers[(arch, "plugin")].base_url
    cache = work / f"triton-{arch}"
    at_load = compiled_kernels(cache)
    ours = our_kernel_names()
    checks.add(arch, "kernels compiled at load", "-", bool(at_load & ours),
               f"{len(at_load & ours)} of our kernels in the Triton cache after start-up; "
               f"{server_facts(servers[(arch, 'plugin')].log_path)['kernel_warmup'][:120]}")
    video = test_video()
    cases = [("square", [], images_of("square")), ("two-images", [], images_of("two-images")),
             ("video", [video], []), ("image+video", [video], images_of("odd"))]
    for name, videos, imgs in cases:
        a = answer(post_json(plugin, "/v1/chat/completions", chat_body(imgs, videos, retention_ratio=1.0)))
        b = answer(post_json(stock, "/v1/chat/completions", chat_body(imgs, videos)))
        checks.add(arch, "ratio 1.0 == stock", name, a[:3] == b[:3], f"prompt {a[2]} / {b[2]} tokens")
    # pruned videos: the kept count the plugin reports, and the prompt shrinks by exactly N - K
    full = answer(post_json(plugin, "/v1/chat/completions", chat_body([], [video], retention_ratio=1.0)))
    pruned = answer(post_json(plugin, "/v1/chat/completions", chat_body([], [video], video_retention_ratio=0.3)))
    k = keep_count(full[4], 0.3) if full[4] else None
    checks.add(arch, "video pruned", "r=0.3", pruned[3] == k and pruned[2] == full[2] - (full[4] - k),
               f"kept {pruned[3]} (expected {k}) of {full[4]}, prompt {pruned[2]} vs {full[2]}")
    ref = HFReference(models / arch, scorer_path(models), "cuda")
    for key in IMAGE_SETS:
        for ratio in PRUNED_RATIOS:
            tokens, prompt_tokens = ref(images_of(key), ratio)
            got = answer(post_json(plugin, "/v1/chat/completions", chat_body(images_of(key), retention_ratio=ratio)))
            checks.add(arch, "pruned == HF (CUDA, fp32)", f"{key} r={ratio}", got[1] == tokens and
                       got[2] == prompt_tokens, f"prompt {got[2]} / HF {prompt_tokens}")
    # prefix cache across ratios: the same image alternating ratios answers as the first time at that ratio
    seen: dict[float, tuple] = {}
    hits_ok = True
    for ratio in (1.0, 0.3, 1.0, 0.3, 0.1, 1.0):
        got = answer(post_json(plugin, "/v1/chat/completions", chat_body(images_of("square"), retention_ratio=ratio)))
        if ratio in seen and got[1:3] != seen[ratio][1:3]:
            hits_ok = False
        seen.setdefault(ratio, got)
    tokens, prompt_tokens = ref(images_of("square"), 0.3)
    checks.add(arch, "prefix cache across ratios", "1/0.3/1/0.3/0.1/1", hits_ok and seen[0.3][1] == tokens,
               f"r=0.3 == HF: {seen[0.3][1] == tokens}")
    if arch == "qwen2_5_vl":
        chunked = servers[(arch, "chunked")].base_url
        for key, ratio in (("square", 1.0), ("two-images", 0.5), ("odd", 0.1)):
            a = answer(post_json(chunked, "/v1/chat/completions", chat_body(images_of(key), retention_ratio=ratio)))
            b = answer(post_json(plugin, "/v1/chat/completions", chat_body(images_of(key), retention_ratio=ratio)))
            checks.add(arch, "chunked prefill == unchunked", f"{key} r={ratio}", a[1:3] == b[1:3],
                       f"prompt {a[2]} / {b[2]}")
    # 32 concurrent mixed requests: each answers as it does alone
    methods = ("visionselector", "random", "uniform", "norm")
    mixed = [(key, (1.0, 0.5, 0.3, 0.1)[i % 4], methods[(i // 4) % 4])
             for i, key in enumerate(list(IMAGE_SETS) * 11)][:32]

    def body(c):
        return chat_body(images_of(c[0]), retention_ratio=c[1], selection_method=c[2], selection_seed=3)

    alone = [answer(post_json(plugin, "/v1/chat/completions", body(c))) for c in mixed]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda c: answer(post_json(plugin, "/v1/chat/completions", body(c))), mixed))
    diff = [f"{c[0]} r={c[1]} {c[2]}" for c, a, b in zip(mixed, alone, together) if a[1:3] != b[1:3]]
    checks.add(arch, "32 concurrent == alone", "mixed ratios x methods x images", not diff,
               f"{len(diff)} differ: {diff[:3]}" if diff else "32 identical")
    after = compiled_kernels(cache)
    new_ours = sorted((after - at_load) & ours)
    checks.add(arch, "no Triton compile of ours while serving", "-", not new_ours,
               f"new: {new_ours}; vLLM's own compiled while serving: {len(after - at_load - ours)}")
    del ref
    import torch

    torch.cuda.empty_cache()


def serve_dry_run(args) -> int:
    """No server: the request bodies of the matrix, one HF reference answer on the CPU, the report's files."""
    checks = Checks()
    bodies = 0
    for key in IMAGE_SETS:
        for ratio in (1.0, *PRUNED_RATIOS):
            bodies += len(json.dumps(chat_body(images_of(key), retention_ratio=ratio))) > 0
    bodies += len(json.dumps(chat_body(images_of("odd"), [test_video()], retention_ratio=1.0))) > 0
    ref = HFReference(args.models / "qwen2_5_vl", scorer_path(args.models), "cpu")
    tokens, prompt_tokens = ref(images_of("square"), 0.5)
    checks.add("qwen2_5_vl", "HF reference runs", "square r=0.5", len(tokens) == MAX_TOKENS,
               f"{prompt_tokens} prompt tokens")
    checks.add("qwen2_5_vl", "request bodies", "matrix", bodies == len(IMAGE_SETS) * 3 + 1, f"{bodies} bodies")
    checks.add("qwen2_5_vl", "our kernel names", "kernels/*.py", bool(our_kernel_names()),
               f"{len(our_kernel_names())} Triton kernels")
    write_csv(args.work / "checks.csv", checks)
    return finish(args.work, all(c["ok"] for c in checks), f"dry run: {len(checks)} rehearsal checks, no server",
                  checks=checks, runners="dry run (no server)")


# -- stage e: no host sync on the selection path ----------------------------------------------------------------------


def child_sync(args) -> int:
    import torch

    from vs_vllm.kernels.dispatch import gather_selected, select_tokens
    from vs_vllm.kernels.position_channels import PositionChannels

    device = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    d, sizes = 64 if args.dry_run else 3584, [48, 20] if args.dry_run else [1196, 576, 16384]
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((sum(sizes), d), generator=gen, device=device).to(dtype)
    weights = tuple(torch.randn(shape, generator=gen, device=device).to(dtype) * 0.05
                    for shape in ((d, d), (d,), (d, d), (d,)))
    cu = [0]
    for n in sizes:
        cu.append(cu[-1] + n)
    keeps = [max(1, n // 5) for n in sizes]
    grids = [(1, 1, n) for n in sizes]
    cu_keep = [0]
    for k in keeps:
        cu_keep.append(cu_keep[-1] + k)

    def serving_calls():
        sel = select_tokens(x, cu, keeps, *weights, grids=grids, channels=PositionChannels())
        idx = torch.cat([torch.arange(k, device=device) for k in keeps])
        gather_selected(x, cu, idx, cu_keep, grids=grids, channels=PositionChannels())
        return sel

    serving_calls()  # compile outside the trap
    if args.dry_run:
        serving_calls()
        return finish(args.work, True, "dry run: the serving calls ran on the CPU (no sync trap without CUDA)")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        serving_calls()
    except RuntimeError as exc:
        return finish(args.work, False, f"host sync on the selection path: {str(exc)[:300]}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return finish(args.work, True, f"select_tokens + gather_selected ({len(sizes)} images, N {sizes}, bf16, "
                  "packed layout) under set_sync_debug_mode('error'): no sync")


# -- stage f: the 7B-shaped benchmark ---------------------------------------------------------------------------------


def component_times(media, dry: bool) -> dict:
    """Median ms of the vision tower and of the LLM prefill (N visual + text tokens) in HF, same sizes, random bf16
    weights, on CUDA (hf_gpu_prefill.py's model builder)."""
    import statistics

    import torch

    sys.path.insert(0, str(REPO / "benchmarks" / "prefill"))
    import hf_gpu_prefill as hf

    from vs_vllm.benchmarking.model import TEXT_BEFORE, TEXT_TOKENS

    spec = hf.TINY if dry else hf.QWEN25_VL_7B
    device, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    model = hf.build_model(spec, device, dtype, "sdpa")
    inputs, grid, n, _ = hf.build_inputs(spec, media.width, media.height, TEXT_BEFORE, TEXT_TOKENS - TEXT_BEFORE,
                                         device, dtype, seed=0)

    def timed(fn, repeats=2 if dry else 10):
        fn()
        out = []
        for _ in range(repeats):
            if not dry:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if not dry:
                torch.cuda.synchronize()
            out.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(out)

    with torch.inference_mode():
        t_enc = timed(lambda: model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]))
        embeds = model.model.get_input_embeddings()(inputs["input_ids"])
        t_llm = timed(lambda: model.lm_head(model.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]))
    model = None  # the servers of a next run need the memory back
    if not dry:
        torch.cuda.empty_cache()
    return {"t_enc_ms": t_enc, "t_llm_ms": t_llm, "visual_tokens": n, "text_tokens": TEXT_TOKENS, "grid": grid}


def child_bench(args) -> int:
    from vs_vllm.benchmarking.flops import Media, amdahl_ceiling
    from vs_vllm.benchmarking.prefill import PayloadFactory, SweepConfig, all_slots, bench_server_args, run_sweep
    from vs_vllm.selection.budget import keep_count

    work, models = args.work, args.models
    model_dir = models / "qwen2_5_vl_7b"
    cfg = SweepConfig(image_sizes=[BENCH_IMAGE], ratios=list(BENCH_RATIOS), concurrencies=list(BENCH_CONCURRENCY),
                      repeats=1, min_requests=8, requests_per_slot=2, warmup_requests=1, eager=True, dtype="bfloat16",
                      max_model_len=4096, max_num_seqs=32, max_num_batched_tokens=16384, kv_cache_bytes=8 * 2**30,
                      switch_pause_s=0.0, startup_timeout=240, served_model_name="bench")
    media = Media(*BENCH_IMAGE)
    rows: list[dict] = []
    if args.dry_run:  # no server: the payloads and the report from made-up times
        payload = PayloadFactory(cfg).make(1, media, all_slots(cfg)[1])[0]
        comp = component_times(media, dry=True)
        runs = [{"config": s.label, "server": s.server, "ratio": s.ratio, "concurrency": c,
                 "visual_kept": keep_count(comp["visual_tokens"], s.ratio or 1.0), "ttft_p50_ms": 100.0,
                 "req_per_s": 10.0} for s in all_slots(cfg) for c in cfg.concurrencies]
        detail_extra = f"dry run: {len(json.dumps(payload))}-byte payload, no server"
    else:
        from vs_vllm.testing.server import VLLMServer

        common = [*bench_server_args(cfg, '{"image": 1, "video": 0}'), "--load-format", "dummy",
                  "--gpu-memory-utilization", "0.35", *GPU_SERVE_ARGS[:-1]]  # --enforce-eager comes from cfg.eager
        env = {k: v for k, v in os.environ.items() if not k.startswith("VS_VLLM_")}
        servers = {"stock": VLLMServer(model_dir, common, env=env, log_path=work / "7b_stock.log", startup_timeout=240),
                   "plugin": VLLMServer(model_dir, ["--scorer", str(models / "scorer_7b.safetensors"), *common],
                                        env=env, command=[sys.executable, "-m", "vs_vllm", "serve"],
                                        log_path=work / "7b_plugin.log", startup_timeout=240)}
        errors = {}
        threads = [threading.Thread(target=lambda k=k: _start(servers[k], k, errors)) for k in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            if errors:
                return finish(work, False, "7B servers failed to start: " + "; ".join(errors.values()))
            runs, _ = run_sweep(cfg, model_dir, servers, all_slots(cfg), PayloadFactory(cfg))
        finally:
            for s in servers.values():
                s.stop()
        comp = component_times(media, dry=False)
        detail_extra = (f"ViT {comp['t_enc_ms']:.1f} ms, LLM {comp['t_llm_ms']:.1f} ms at N={comp['visual_tokens']}; "
                        f"runner / attention: {server_facts(work / '7b_plugin.log')}")
    stock = {r["concurrency"]: r for r in runs if r["server"] == "stock"}
    overhead = {}
    for r in runs:
        s = stock.get(r["concurrency"])
        k = int(r["visual_kept"])
        ceiling = amdahl_ceiling(comp["t_enc_ms"], comp["t_llm_ms"], comp["visual_tokens"],
                                 min(k, comp["visual_tokens"]), comp["text_tokens"])
        row = {k2: r.get(k2) for k2 in ("config", "server", "ratio", "concurrency", "visual_kept", "ttft_p50_ms",
                                        "req_per_s", "ok", "failed", "prompt_tokens")}
        row.update(ttft_speedup=s["ttft_p50_ms"] / r["ttft_p50_ms"] if s and r["ttft_p50_ms"] else None,
                   throughput_speedup=r["req_per_s"] / s["req_per_s"] if s and s["req_per_s"] else None,
                   ceiling=ceiling, t_enc_ms=comp["t_enc_ms"], t_llm_ms=comp["t_llm_ms"])
        if r["server"] == "plugin" and float(r["ratio"]) == 1.0 and s:
            overhead[str(r["concurrency"])] = 100 * (r["ttft_p50_ms"] / s["ttft_p50_ms"] - 1)
        rows.append(row)
    write_csv(work / "bench.csv", rows)
    failed = sum(int(r.get("failed") or 0) for r in runs)
    best = max((r for r in rows if r["server"] == "plugin" and r["ttft_speedup"]), key=lambda r: r["ttft_speedup"],
               default=None)
    detail = (f"{len(rows)} runs, {failed} failed requests; best TTFT speedup "
              + (f"{best['ttft_speedup']:.2f}x ({best['config']}, c={best['concurrency']}, ceiling "
                 f"{best['ceiling']:.2f}x)" if best else "-") + f"; {detail_extra}")
    return finish(work, failed == 0, detail, rows=rows, overhead_pct=overhead, components=comp)


def _start(server, key: str, errors: dict) -> None:
    try:
        server.start()
    except Exception as exc:
        errors[key] = f"{key}: {type(exc).__name__}: {str(exc)[:600]}"


CHILDREN = {"unpack": child_unpack, "env": child_env, "models": child_models, "serve": child_serve,
            "sync": child_sync, "bench-7b": child_bench}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", default=gpu_check.env_flag("DRY_RUN"),
                    help="CPU rehearsal: synthetic pack, the .venv's vLLM, no server (also DRY_RUN=1)")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where result files go (default benchmarks/results; dry run: a new temp dir)")
    ap.add_argument("--stages", default=",".join(STAGE_NAMES), help="comma-separated subset of " + ", ".join(
        STAGE_NAMES) + " (unpack always runs)")
    ap.add_argument("--deadline", type=float, default=None, help=f"seconds for the whole run (default {DEADLINE_S})")
    ap.add_argument("--stash", type=Path, default=None, help=f"where parts and the unpacked bundle live (default "
                    f"{STASH}; dry run: a temp dir)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (server logs, models)")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGE_NAMES))
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; choose from {STAGE_NAMES}")
    args.stages = ["unpack", *(s for s in stages if s != "unpack")]
    if args.dry_run:
        args.out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="serve-check-dry-run-"))
        if args.out_dir.resolve() == gpu_check.RESULTS.resolve():
            ap.error("a dry run never writes into benchmarks/results (committed results); pick another --out-dir")
        args.stash = args.stash or Path(tempfile.mkdtemp(prefix="serve-check-dry-stash-"))
    else:
        args.out_dir = args.out_dir or gpu_check.RESULTS
        args.stash = args.stash or STASH
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        args.models.mkdir(parents=True, exist_ok=True)
        return CHILDREN[args.child](args)
    return ServeCheck(args).run()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
