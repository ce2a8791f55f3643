#!/usr/bin/env python3
"""One prepared command for a short window on a CUDA machine: kernel correctness, kernel timings and the HF 7B
prefill, written as committed evidence (``make gpu-check``; see benchmarks/gpu/README.md).

Stages (each a child process with its own time limit; a failure is recorded and the next stage still runs):

  a   env           GPU, capability, driver / CUDA / torch / triton / transformers versions (fails without CUDA)
  b1  pytest        pytest tests/kernels and tests/unit/test_bench_select_graph.py on the GPU, strict kernels
                    (``VS_VLLM_STRICT_KERNELS=1``, no interpreter);
                    skipped (not failed) when pytest is not installed
  b2  sweep         benchmarks/gpu/kernel_sweep.py: odd shapes, fp32/bf16/fp16, N up to 16385, D up to 5120, strict
                    (b1 and b2 run at the same time: both are correctness checks, mostly Triton compiles)
  c1  bench-select  benchmarks/kernels/bench_select.py (N 576/1196/4096/16384, D 3584, bf16) plus a device-to-device
                    copy of the same bytes per case; each timed twice: the eager call (host launch overhead included)
                    and its GPU time (the call captured in a CUDA graph, graph.replay() timed)
  c2  bench-mmr     benchmarks/kernels/bench_mmr.py (torch vs Triton; very long runs are extrapolated)
  d   hf-prefill    benchmarks/prefill/hf_gpu_prefill.py: Qwen2.5-VL-7B architecture, bf16, one 1280x720 image
  e   summary       benchmarks/results/gpu_check_<gpu>.md (+ .json, .log, CSVs) against the goals

Needs only python3 with torch, triton and transformers: no vLLM, no install of this package (a plain checkout's
kernels/ is made importable as ``vs_vllm.kernels``), no network. The whole run stays inside ``--deadline`` seconds
(default 450). When ``$OUT`` is set, the summary, a .tar.gz of every result file (paths relative to the repository
root) and the log are copied there after every stage, so a run cut short still returns what it measured.

    python3 benchmarks/gpu/gpu_check.py                # GPU; writes benchmarks/results/*_<gpu>.*
    python3 benchmarks/gpu/gpu_check.py --quick        # smaller grids, *_<gpu>_quick.*
    python3 benchmarks/gpu/gpu_check.py --dry-run      # CPU rehearsal: toy sizes, Triton interpreter, temp out-dir
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import datetime as _dt
import functools
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = REPO / "benchmarks" / "results"
BENCH_SELECT = REPO / "benchmarks" / "kernels" / "bench_select.py"
BENCH_MMR = REPO / "benchmarks" / "kernels" / "bench_mmr.py"
HF_PREFILL = REPO / "benchmarks" / "prefill" / "hf_gpu_prefill.py"
SWEEP = HERE / "kernel_sweep.py"

STRICT_ENV = "VS_VLLM_STRICT_KERNELS"
#: Test hook, passed to the sweep: ``select`` breaks the Triton score pass (see kernel_sweep.py).
FAULT_ENV = "VS_GPU_CHECK_INJECT_FAULT"
#: 1: always run children against a symlinked vs_vllm + kernels/ overlay (as on a plain checkout); 0: never.
OVERLAY_ENV = "VS_GPU_CHECK_OVERLAY"
DRY_SLUG = "dry_run_cpu"
LOG_CAP = 1 << 20  # bytes of log kept in the results (head + tail)

# Goals the summary checks (docs: benchmarks/gpu/README.md).
GOAL_SELECT_SPEEDUP = 3.0  # selection chain (select_tokens, Triton) vs the torch reference, N >= GOAL_MIN_N
GOAL_SELECT_COPY_PCT = 50.0  # ... and >= this % of a device-to-device copy of the same bytes
GOAL_MIN_N = 4096
GOAL_PREFILL_SPEEDUP = 2.0  # HF 7B prefill at GOAL_PREFILL_RATIO vs ratio 1.0
GOAL_PREFILL_RATIO = 0.2
PREFILL_RATIOS = "1.0,0.5,0.3,0.2,0.1"


#: What b1 runs on the GPU: the kernel tests, and bench_select's CUDA-graph timer, whose real-GPU test skips anywhere
#: else (its stand-in tests run on the CPU in make test too).
GRAPH_TIMER_TESTS = "tests/unit/test_bench_select_graph.py"
GPU_TESTS = ("tests/kernels", GRAPH_TIMER_TESTS)


@dataclass(frozen=True)
class Profile:
    """Sizes and time limits of one mode (full GPU run, --quick, --dry-run)."""

    select_grid: dict  # replaces bench_select's grid: n, d, r, images
    select_rep: int  # do_bench rep (ms)
    mmr_grid: dict  # replaces bench_mmr's grid: n, r, d
    mmr_args: tuple
    hf_args: tuple
    sweep: str  # kernel_sweep.py profile
    pytest_args: tuple
    deadline: float  # seconds for the whole run
    caps: dict  # seconds per stage at most
    goal_min_n: int


PROFILES = {
    "full": Profile(
        select_grid={"n": [576, 1196, 4096, 16384], "d": [3584], "r": [0.1, 0.2, 0.3], "images": [1, 4]},
        select_rep=100,
        mmr_grid={"n": [576, 1196, 4096, 16384], "r": [0.1, 0.2], "d": 3584},
        mmr_args=("--reps", "3", "--budget", "3", "--batch", "8"),
        hf_args=("--warmup", "3", "--repeats", "10"),
        sweep="full",
        pytest_args=GPU_TESTS,
        deadline=450,
        caps={"env": 90, "pytest": 240, "sweep": 240, "bench-select": 180, "bench-mmr": 120, "hf-prefill": 200},
        goal_min_n=GOAL_MIN_N,
    ),
    "quick": Profile(
        select_grid={"n": [576, 4096, 16384], "d": [3584], "r": [0.2], "images": [1, 4]},
        select_rep=50,
        mmr_grid={"n": [576, 4096], "r": [0.1], "d": 3584},
        mmr_args=("--reps", "3", "--budget", "2", "--batch", "8"),
        hf_args=("--warmup", "2", "--repeats", "5"),
        sweep="quick",
        pytest_args=GPU_TESTS,
        deadline=300,
        caps={"env": 90, "pytest": 180, "sweep": 180, "bench-select": 120, "bench-mmr": 60, "hf-prefill": 150},
        goal_min_n=GOAL_MIN_N,
    ),
    # CPU rehearsal: the same code paths on toy sizes through the Triton interpreter (numbers mean nothing).
    "dry": Profile(
        select_grid={"n": [48, 96], "d": [64], "r": [0.2], "images": [1]},
        select_rep=1,
        mmr_grid={"n": [64], "r": [0.1], "d": 32},
        mmr_args=("--reps", "1", "--budget", "1", "--batch", "2"),
        hf_args=("--tiny", "--warmup", "1", "--repeats", "2"),
        sweep="dry",
        pytest_args=("tests/kernels/test_kernels_gather.py", GRAPH_TIMER_TESTS),
        deadline=300,
        caps={"env": 60, "pytest": 90, "sweep": 90, "bench-select": 90, "bench-mmr": 60, "hf-prefill": 120},
        goal_min_n=96,
    ),
}


@dataclass(frozen=True)
class StageDef:
    letter: str
    name: str
    title: str
    min_s: float  # not started with less than this left (time kept for it by the stages before)


STAGES = (
    StageDef("a", "env", "environment", 10),
    StageDef("b1", "pytest", "kernel tests: pytest tests/kernels + test_bench_select_graph.py (CUDA, strict)", 30),
    StageDef("b2", "sweep", "kernel odd-shape sweep vs torch reference (CUDA, strict)", 30),
    StageDef("c1", "bench-select", "selection timings vs torch reference and device copy", 40),
    StageDef("c2", "bench-mmr", "MMR timings, torch vs Triton", 30),
    StageDef("d", "hf-prefill", "HF Qwen2.5-VL-7B prefill, bf16, 1280x720, ratios 1/0.5/0.3/0.2/0.1", 60),
    StageDef("e", "summary", "summary against the goals", 0),
)
STAGE_NAMES = [s.name for s in STAGES]
#: Run order; the stages of one group run side by side.
GROUPS = (("env",), ("pytest", "sweep"), ("bench-select",), ("bench-mmr",), ("hf-prefill",))


@dataclass
class StageResult:
    letter: str
    name: str
    title: str
    status: str = "not run"  # passed | failed | skipped | not run
    seconds: float = 0.0
    detail: str = ""
    files: list = field(default_factory=list)


def slugify(name: str) -> str:
    """The GPU slug of bench_select.py / bench_mmr.py / hf_gpu_prefill.py ("NVIDIA H200" -> "nvidia_h200")."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "unknown"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "off", "no")


# ---------------------------------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------------------------------


class Child:
    """A child process in its own session, its output streamed line by line (prefixed) to stdout and the log."""

    def __init__(self, label: str, cmd: list, env: dict, cwd: Path, log, lock: threading.Lock):
        self.label, self.cmd = label, [str(c) for c in cmd]
        self.tail: collections.deque = collections.deque(maxlen=40)
        self.t0 = self.ended = time.monotonic()
        self.timed_out = False
        with lock:
            log.write(f"\n$ {' '.join(self.cmd)}\n")
            log.flush()
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._pump, args=(log, lock), daemon=True)
        self.reader.start()

    def _pump(self, log, lock) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            with lock:
                print(f"[{self.label}] {line}", flush=True)
                log.write(f"[{self.label}] {line}\n")
                log.flush()
        self.ended = time.monotonic()  # output closed: the child is done (or killed)

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the child's own process group (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, until: float) -> int:
        """Exit status; at ``until`` (monotonic) SIGINT (pytest still writes its report), SIGKILL 15 s later."""
        try:
            rc = self.proc.wait(timeout=max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self._signal(signal.SIGINT)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                rc = self.proc.wait()
        self.reader.join(timeout=5)
        self.seconds = (self.ended if not self.reader.is_alive() else time.monotonic()) - self.t0
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)

    def why(self, rc: int, limit: float) -> str:
        if self.timed_out:
            return f"timed out after {limit:.0f} s"
        last = [ln for ln in self.tail if ln.strip()]
        err = next((ln for ln in reversed(last) if re.search(r"(Error|Exception|error:|FAILED|needs)", ln)), None)
        return f"exit status {rc}" + (f": {err.strip()[:300]}" if err else "")


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


class GpuCheck:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dry = args.dry_run
        self.mode = "dry" if self.dry else ("quick" if args.quick else "full")
        self.profile = PROFILES[self.mode]
        self.deadline_s = args.deadline or self.profile.deadline
        self.t0 = time.monotonic()
        self.started = _dt.datetime.now().astimezone()
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
        self.out_dir = args.out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.OUT = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
        self.lock = threading.Lock()
        self.log_path = self.work / "gpu_check.log"
        self.log = PortableLog(self.log_path)
        self.results = {s.name: StageResult(s.letter, s.name, s.title) for s in STAGES}
        for r in self.results.values():
            if r.name not in args.stages and r.name != "summary":
                r.detail = "not selected (--stages)"
        self.info: dict = {}
        self.tag = DRY_SLUG if self.dry else "pending"
        self.files: dict[str, Path] = {}  # key -> result file in out_dir
        self.data: dict = {}  # parsed stage outputs for the summary
        self.python = child_python()
        self.overlay = None
        self.active: list[Child] = []
        self.out_of_time: list[str] = []  # stages never started for lack of time (the exit status says so too)

    # -- plumbing -----------------------------------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        with self.lock:
            print(f"[gpu-check {self.elapsed():5.0f}s] {msg}", flush=True)
            self.log.write(f"[gpu-check {self.elapsed():5.0f}s] {msg}\n")
            self.log.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def child_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env[STRICT_ENV] = "1"
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.pop("OUT", None)  # only this process writes $OUT
        if self.dry:
            env["TRITON_INTERPRET"] = "1"  # read when triton is first imported, in every child
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env.pop("TRITON_INTERPRET", None)
        paths = [str(self.overlay)] if self.overlay else []
        paths.append(str(REPO))
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def time_left(self, group: tuple) -> float:
        """Seconds the stages of ``group`` may take: what is left of the deadline, less the minimum time kept for the
        selected stages after them and 10 s for the summary and $OUT."""
        later = GROUPS[GROUPS.index(group) + 1:]
        keep = sum(STAGES[STAGE_NAMES.index(n)].min_s for g in later for n in g if n in self.args.stages)
        return self.deadline_s - self.elapsed() - keep - 10

    def start(self, label: str, cmd: list) -> Child:
        # cwd: the scratch folder, never the checkout: a `python -c` child (some tests spawn them) puts its cwd first on
        # sys.path, where the checkout's vs_vllm/ (without kernels/) would shadow the overlay
        child = Child(label, cmd, self.child_env(), self.work, self.log, self.lock)
        self.active.append(child)
        return child

    def self_cmd(self, child: str, out: Path | None = None) -> list:
        return [self.python, Path(__file__).resolve(), "--child", child, "--mode", self.mode,
                *(["--work", out] if out else [])]

    def record(self, name: str, status: str, detail: str, seconds: float | None = None) -> None:
        r = self.results[name]
        r.status, r.detail = status, detail
        if seconds is not None:
            r.seconds = round(seconds, 1)
        self.say(f"stage {r.letter} {name}: {status.upper()}{' - ' + detail if detail else ''}")

    def keep_file(self, key: str, src: Path, name: str, stage: str) -> None:
        dst = self.out_dir / name
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        self.files[key] = dst
        self.results[stage].files.append(name)

    # -- stages -------------------------------------------------------------------------------------------------------
    def stage_env(self, limit: float) -> None:
        child = self.start("a env", self.self_cmd("env"))
        rc = child.wait(time.monotonic() + limit)
        line = next((ln for ln in child.tail if ln.startswith("GPU_CHECK_ENV ")), None)
        self.info = json.loads(line[len("GPU_CHECK_ENV "):]) if line else {}
        self.info["child_python"] = self.python
        how = "a symlinked overlay of this checkout" if self.overlay else "the installed package"
        self.info["kernels_import"] = f"{how} ({self.info.get('kernels_from')})"
        if self.info.get("cuda_available"):
            self.tag = slugify(self.info.get("gpu_name", "unknown_gpu")) + ("_quick" if self.mode == "quick" else "")
        elif not self.dry:
            self.tag = "no_cuda" + ("_quick" if self.mode == "quick" else "")
        if rc != 0 or not line:
            self.record("env", "failed", child.why(rc, limit), child.seconds)
        elif not self.info.get("cuda_available") and not self.dry:
            self.record("env", "failed", f"no CUDA device: torch.cuda.is_available() is False (torch "
                        f"{self.info.get('torch')}, CUDA build {self.info.get('torch_cuda')}); every GPU stage will "
                        "fail", child.seconds)
        else:
            gpu = self.info.get("gpu_name") or "no GPU (dry run on the CPU)"
            cap = self.info.get("capability")
            self.record("env", "passed", f"{gpu}{' (sm_' + cap + ')' if cap else ''}, torch {self.info.get('torch')}, "
                        f"triton {self.info.get('triton')}, transformers {self.info.get('transformers')}",
                        child.seconds)

    def pytest_shards(self) -> list[tuple[str, list]]:
        """(label, pytest targets): one process per test file of a folder, so the Triton compiles of the files (most
        of their time on a fresh machine) run side by side; one process for --pytest-args."""
        if self.args.pytest_args is not None:
            return [("", shlex.split(self.args.pytest_args))]
        shards = []
        for arg in self.profile.pytest_args:
            path = REPO / arg
            files = sorted(path.glob("test_*.py")) if path.is_dir() else [path]
            shards += [(f.stem.replace("test_kernels_", "").replace("test_", ""), [str(f)]) for f in files]
        return shards

    def stage_kernels(self, limit_pytest: float, limit_sweep: float) -> None:
        """b1 (pytest, sharded by file) and b2 (sweep) side by side."""
        pytest_children: list[tuple[Child, Path]] = []
        sweep = None
        if "pytest" in self.args.stages:
            if importlib.util.find_spec("pytest") is None and self.python == sys.executable:
                self.record("pytest", "skipped", "pytest is not installed here; the sweep (b2) covers the kernels "
                            "without it", 0)
            else:
                for i, (label, targets) in enumerate(self.pytest_shards()):
                    xml = self.work / f"pytest-{i}.xml"
                    cmd = [self.python, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider", f"--rootdir={REPO}",
                           f"--junitxml={xml}"]
                    pytest_children.append((self.start(f"b1 pytest{':' + label if label else ''}", cmd), xml))
        if "sweep" in self.args.stages:
            cmd = [self.python, SWEEP, "--out", self.work / "sweep.csv", "--profile", self.profile.sweep]
            sweep = self.start("b2 sweep", cmd)
        if pytest_children:
            rcs = [child.wait(child.t0 + limit_pytest) for child, _ in pytest_children]
            self._finish_pytest(pytest_children, rcs, limit_pytest)
        if sweep is not None:
            self._finish_sweep(sweep, sweep.wait(sweep.t0 + limit_sweep), limit_sweep)

    def _finish_pytest(self, children: list, rcs: list, limit: float) -> None:
        merged = ET.Element("testsuites")
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
        failed, problems = [], []
        for (child, xml), rc in zip(children, rcs):
            c, f = parse_junit(xml)
            if c:
                for k in counts:
                    counts[k] += c[k]
                for suite in ET.parse(xml).getroot().iter("testsuite"):
                    merged.append(suite)
            failed += f
            label = child.label.replace("b1 ", "")
            if any("No module named pytest" in ln for ln in child.tail):
                problems.append("no pytest")
            elif child.timed_out:
                problems.append(f"{label} timed out after {limit:.0f} s")
            elif rc != 0 and not f:
                problems.append(f"{label}: {child.why(rc, limit)}")
        seconds = max(child.seconds for child, _ in children)
        counts["time"] = round(counts["time"], 1)
        if counts["tests"]:
            xml = self.work / "pytest.xml"
            ET.ElementTree(merged).write(xml, encoding="utf-8", xml_declaration=True)
            self.keep_file("pytest", xml, f"gpu_check_{self.tag}_pytest.xml", "pytest")
        self.data["pytest"] = {"counts": counts if counts["tests"] else {}, "failed": failed, "rc": max(rcs)}
        if problems == ["no pytest"] * len(children):
            self.record("pytest", "skipped", "pytest is not installed; the sweep (b2) covers the kernels", seconds)
        elif all(rc == 0 for rc in rcs) and counts["tests"]:
            self.record("pytest", "passed", f"{fmt_counts(counts)} in {len(children)} process(es)", seconds)
        else:
            detail = "; ".join([*problems, fmt_counts(counts) if counts["tests"] else "no test results"])
            if failed:
                detail += "; failed: " + ", ".join(failed[:8]) + (" ..." if len(failed) > 8 else "")
            self.record("pytest", "failed", detail, seconds)

    def _finish_sweep(self, child: Child, rc: int, limit: float) -> None:
        path = self.work / "sweep.csv"
        rows = read_csv(path)
        if path.exists():
            self.keep_file("sweep", path, f"gpu_check_{self.tag}_sweep.csv", "sweep")
        self.data["sweep"] = rows
        bad = [r for r in rows if r.get("ok") != "True"]
        summary = f"{len(rows) - len(bad)}/{len(rows)} cases passed"
        if rc == 0 and rows and not bad:
            self.record("sweep", "passed", summary, child.seconds)
        else:
            detail = (f"timed out after {limit:.0f} s; {summary}" if child.timed_out else summary) if rows \
                else child.why(rc, limit)
            if bad:
                detail += "; failed: " + "; ".join(f"{r['op']} {r['dtype']} D={r['d']}: {r['detail']}"
                                                   for r in bad[:4]) + (" ..." if len(bad) > 4 else "")
            self.record("sweep", "failed", detail, child.seconds)

    def stage_bench_select(self, limit: float) -> None:
        out = self.work / "bench_select"
        child = self.start("c1 bench-select", self.self_cmd("bench-select", out))
        rc = child.wait(time.monotonic() + limit)
        for src in sorted(out.glob("bench_select_*.csv")) + sorted(out.glob("bench_select_*.md")):
            self.keep_file("bench_select_" + src.suffix[1:], src, f"bench_select_{self.tag}{src.suffix}",
                           "bench-select")
        ext = out / "select_copy.csv"
        rows = read_csv(ext)
        if ext.exists():
            self.keep_file("select", ext, f"gpu_check_{self.tag}_select.csv", "bench-select")
        self.data["select"] = rows
        if rc == 0 and rows:
            best = max(rows, key=lambda r: float(r["speedup"]))
            graphed = [r for r in rows if _num(r.get("triton_graph_ms")) is not None]
            same = sum(str(r.get("graph_same_idx")) == "True" for r in graphed)
            gbest = max((r for r in rows if _num(r.get("speedup_graph")) is not None),
                        key=lambda r: float(r["speedup_graph"]), default=None)
            graph = (f"; GPU time (CUDA graphs): {len(graphed)}/{len(rows)} cases captured, {same} replaying the "
                     "eager indices" + (f", best speedup {float(gbest['speedup_graph']):.2f}x (N={gbest['n']}, "
                                        f"B={gbest['images']})" if gbest else ", no torch graph time"))
            self.record("bench-select", "passed", f"{len(rows)} cases; best speedup {float(best['speedup']):.2f}x "
                        f"(N={best['n']}, B={best['images']}){graph}", child.seconds)
        else:
            self.record("bench-select", "failed", child.why(rc, limit), child.seconds)

    def stage_bench_mmr(self, limit: float) -> None:
        out = self.work / "bench_mmr"
        child = self.start("c2 bench-mmr", self.self_cmd("bench-mmr", out))
        rc = child.wait(time.monotonic() + limit)
        for src in sorted(out.glob("mmr_select_*.csv")) + sorted(out.glob("mmr_select_*.md")):
            self.keep_file("mmr_" + src.suffix[1:], src, f"mmr_select_{self.tag}{src.suffix}", "bench-mmr")
        rows = read_csv(self.files["mmr_csv"]) if "mmr_csv" in self.files else []
        self.data["mmr"] = rows
        if rc == 0 and rows:
            same = all(r.get("same_indices") == "True" for r in rows)
            self.record("bench-mmr", "passed", f"{len(rows)} rows; Triton indices identical to torch: {same}",
                        child.seconds)
        else:
            self.record("bench-mmr", "failed", child.why(rc, limit), child.seconds)

    def stage_hf_prefill(self, limit: float) -> None:
        out = self.work / "hf"
        cmd = [self.python, HF_PREFILL, "--ratios", PREFILL_RATIOS, "--out-dir", out, *self.profile.hf_args]
        child = self.start("d hf-prefill", cmd)
        rc = child.wait(time.monotonic() + limit)
        for src in sorted(out.glob("hf_gpu_prefill_*.csv")) + sorted(out.glob("hf_gpu_prefill_*.md")):
            self.keep_file("hf_" + src.suffix[1:], src, f"hf_gpu_prefill_{self.tag}{src.suffix}", "hf-prefill")
        rows = read_csv(self.files["hf_csv"]) if "hf_csv" in self.files else []
        self.data["hf"] = rows
        at = [r for r in rows if abs(float(r["ratio"]) - GOAL_PREFILL_RATIO) < 1e-9]
        if rc == 0 and rows:
            detail = f"speedup {float(at[0]['speedup']):.2f}x at ratio {GOAL_PREFILL_RATIO}" if at else "no 0.2 row"
            if at and _num(at[0].get("speedup_graph")) is not None:
                detail += f"; {float(at[0]['speedup_graph']):.2f}x with the LLM in CUDA graphs"
            self.record("hf-prefill", "passed", detail, child.seconds)
        else:
            self.record("hf-prefill", "failed", child.why(rc, limit), child.seconds)

    # -- summary and $OUT ---------------------------------------------------------------------------------------------
    def publish(self, final: bool = False) -> None:
        """Summary (md + json) and log into out_dir; summary, tarball and log into $OUT. Never raises: a bug in the
        report must not cost the stages still to run."""
        try:
            self._publish(final)
        except Exception as exc:
            self.say(f"writing the summary failed: {type(exc).__name__}: {exc}")

    def _publish(self, final: bool) -> None:
        goals = evaluate_goals(self.data.get("select", []), self.data.get("hf", []), self.profile.goal_min_n)
        self.data["goals"] = goals
        md = self.out_dir / f"gpu_check_{self.tag}.md"
        md.write_text(portable_text(render_summary(self, goals, final)))
        state = {
            "tag": self.tag, "mode": self.mode, "dry_run": self.dry, "final": final,
            "started": self.started.isoformat(timespec="seconds"), "elapsed_s": round(self.elapsed(), 1),
            "deadline_s": self.deadline_s, "command": " ".join(sys.argv), "env": self.info,
            "kernels_sha256": kernels_fingerprint(), "git_commit": git_commit(),
            "stages": [asdict(self.results[s.name]) for s in STAGES], "goals": goals,
        }
        (self.out_dir / f"gpu_check_{self.tag}.json").write_text(portable_text(json.dumps(state, indent=2)) + "\n")
        with self.lock:
            self.log.flush()
            copy_capped(self.log_path, self.out_dir / f"gpu_check_{self.tag}.log", LOG_CAP)
        self.files.update(summary=md, json=self.out_dir / f"gpu_check_{self.tag}.json",
                          log=self.out_dir / f"gpu_check_{self.tag}.log")
        if self.OUT is not None:
            self.OUT.mkdir(parents=True, exist_ok=True)
            names = sorted({p.name for p in self.files.values() if p.exists()})
            tmp = self.OUT / f"gpu_check_{self.tag}.tar.gz.tmp"
            with tarfile.open(tmp, "w:gz") as tar:
                for name in names:
                    tar.add(self.out_dir / name, arcname=f"benchmarks/results/{name}")
            os.replace(tmp, self.OUT / f"gpu_check_{self.tag}.tar.gz")
            for key in ("summary", "log"):
                shutil.copyfile(self.files[key], self.OUT / f"{self.files[key].name}.tmp")
                os.replace(self.OUT / f"{self.files[key].name}.tmp", self.OUT / self.files[key].name)

    def run(self) -> int:
        self.say(f"mode {self.mode}; stages {', '.join(self.args.stages)}; deadline {self.deadline_s:.0f} s; results "
                 f"-> {self.out_dir}{'; $OUT -> ' + str(self.OUT) if self.OUT else ''}; python {self.python}")
        if self.overlay_needed():
            self.overlay = build_overlay(self.work)
            self.say(f"children import vs_vllm (with kernels/ as vs_vllm.kernels) from the overlay {self.overlay}")
        try:
            for group in GROUPS:
                names = [n for n in group if n in self.args.stages]
                if not names:
                    continue
                first = STAGES[STAGE_NAMES.index(names[0])]
                # env always runs (it names the GPU and the result files); the others only with time left for them
                left = self.profile.caps["env"] if group == ("env",) else self.time_left(group)
                limits = {n: min(self.profile.caps[n], left) for n in names}
                if left < max(first.min_s, 10):
                    for n in names:
                        self.record(n, "skipped", f"not started: out of time ({max(left, 0):.0f} s left for it "
                                    f"within the {self.deadline_s:.0f} s deadline)")
                        self.out_of_time.append(n)
                    continue
                for n in names:
                    st = STAGES[STAGE_NAMES.index(n)]
                    self.say(f"stage {st.letter} {n}: {st.title} (limit {limits[n]:.0f} s)")
                t0 = time.monotonic()
                try:
                    if group == ("pytest", "sweep"):
                        self.stage_kernels(limits.get("pytest", 0), limits.get("sweep", 0))
                    else:
                        getattr(self, "stage_" + names[0].replace("-", "_"))(limits[names[0]])
                except Exception as exc:  # a bug here must not cost the later stages
                    for n in names:
                        if self.results[n].status == "not run":
                            self.record(n, "failed", f"gpu_check error: {type(exc).__name__}: {exc}",
                                        time.monotonic() - t0)
                self.publish()
        finally:
            for child in self.active:
                child.kill()
        failed = [r.name for r in self.results.values() if r.status == "failed"]
        skipped = [r.name for r in self.results.values() if r.status == "skipped"]
        parts = [f"failed: {', '.join(failed)}" if failed else "", f"skipped: {', '.join(skipped)}" if skipped else ""]
        self.record("summary", "passed", "; ".join(p for p in parts if p) or "every selected stage passed", 0)
        self.publish(final=True)
        self.say(f"done in {self.elapsed():.0f} s; summary {self.out_dir / f'gpu_check_{self.tag}.md'}")
        print(summary_text(self), flush=True)
        self.log.close()
        if not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        return 1 if failed or self.out_of_time else 0

    def overlay_needed(self) -> bool:
        if os.environ.get(OVERLAY_ENV, "") in ("0", "1"):
            return os.environ[OVERLAY_ENV] == "1"
        probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vs_vllm.kernels') else 1)"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        try:
            r = subprocess.run([self.python, "-c", probe], cwd=self.work, env=env, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return True
        return r.returncode != 0


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def _portable_text():
    """vs_vllm/benchmarking/paths.py's portable_text, loaded by path: this script runs without the package."""
    path = REPO / "vs_vllm" / "benchmarking" / "paths.py"
    spec = importlib.util.spec_from_file_location("vs_vllm_result_paths", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.portable_text


portable_text = _portable_text()


class PortableLog:
    """The run log, which is committed with the results: every write goes through portable_text, so it names no
    absolute path of the machine (the repository, the scratch folder in the temp dir, the interpreter)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "w", errors="replace")

    def write(self, text: str) -> None:
        self._file.write(portable_text(text))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def child_python() -> str:
    """This interpreter if it has torch, else the first python3 / python on PATH that does."""
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    for name in ("python3", "python"):
        path = shutil.which(name)
        if path and subprocess.run([path, "-c", "import torch"], capture_output=True, timeout=120).returncode == 0:
            return path
    return sys.executable


def build_overlay(work: Path) -> Path:
    """A folder holding ``vs_vllm/`` made of symlinks to this checkout's vs_vllm/ entries plus ``kernels`` ->
    kernels/: what pyproject's package-dir mapping gives an install, for every child process (also the ones the tests
    spawn) through PYTHONPATH."""
    root = work / "overlay"
    pkg = root / "vs_vllm"
    pkg.mkdir(parents=True)
    for entry in (REPO / "vs_vllm").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    if not (pkg / "kernels").exists():
        (pkg / "kernels").symlink_to(REPO / "kernels", target_is_directory=True)
    return root


def read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def parse_junit(path: Path) -> tuple[dict, list]:
    """({tests, failures, errors, skipped, time}, failed test ids) of a pytest junit xml; ({}, []) if unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}, []
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["time"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    failed = [f"{tc.get('classname', '').rsplit('.', 1)[-1]}::{tc.get('name')}" for tc in root.iter("testcase")
              if tc.find("failure") is not None or tc.find("error") is not None]
    return counts, failed


def fmt_counts(c: dict) -> str:
    if not c:
        return "no results"
    passed = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    return (f"{passed} passed, {c['failures']} failed, {c['errors']} errors, {c['skipped']} skipped "
            f"({c['time']:.0f} s)")


def copy_capped(src: Path, dst: Path, cap: int) -> None:
    data = src.read_bytes()
    if len(data) > cap:
        head, tail = data[: cap // 5], data[-(cap - cap // 5):]
        data = head + f"\n... [{len(data) - cap} bytes cut] ...\n".encode() + tail
    dst.write_bytes(data)


def kernels_fingerprint() -> str:
    h = hashlib.sha256()
    for p in sorted((REPO / "kernels").glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def git_commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                           timeout=10)
        if r.returncode != 0 or not r.stdout.strip():
            return "unknown (no git metadata)"
        # A copied checkout can carry older .git metadata than its files (the device tool ships the working tree):
        # say so instead of naming a commit the code no longer is.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        changed = dirty.returncode != 0 or bool(dirty.stdout.strip())
        return r.stdout.strip() + (" + uncommitted changes (see the kernels' sha256)" if changed else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"


def _num(v) -> float | None:
    """A finite float from a CSV cell, else None (empty, "None", "nan", text)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


#: Labels of the two measurements of the selection goals.
EAGER_LABEL = "(eager call, host launch overhead included)"
GRAPH_LABEL = "(GPU time, CUDA-graph replay)"


def evaluate_goals(select_rows: list, hf_rows: list, min_n: int) -> list[dict]:
    """Each goal: threshold, measured value (the worst case), verdict met / NOT met / not measured.

    The selection goals are evaluated twice: on the eager call's times and on the GPU times of the same call replayed
    from a CUDA graph. A graph goal counts only cases whose replayed Triton graph reproduced the eager indices
    (``graph_same_idx``); it is ``met`` only when every case with N >= min_n has a valid graph measurement (a missing
    one gives ``not measured``, or ``NOT met`` when a measured case already misses the threshold).
    """
    goals = []
    num = _num

    def worst(key, label, threshold, unit, graph=False):
        g = {"goal": label, "threshold": f">= {threshold:g}{unit}", "measured": "", "where": "",
             "verdict": "not measured"}
        cases = [r for r in select_rows if (num(r.get("n")) or 0) >= min_n]
        big = [r for r in cases if num(r.get(key)) is not None
               and (not graph or str(r.get("graph_same_idx")) == "True")]
        missing = len(cases) - len(big) if graph else 0
        if big:
            w = min(big, key=lambda r: float(r[key]))
            g["measured"] = f"{float(w[key]):.2f}{unit} (worst)" + (
                f"; {missing} of {len(cases)} cases not measured" if missing else "")
            g["where"] = f"B={w['images']} N={w['n']} D={w['d']} r={w['r']}"
            g["verdict"] = "NOT met" if float(w[key]) < threshold else ("not measured" if missing else "met")
        elif graph and cases:
            why = next((f"{c}: {r[c]}" for r in cases for c in ("triton_graph_note", "torch_graph_note",
                                                                   "copy_graph_note") if r.get(c)), "")
            if not why and any(str(r.get("graph_same_idx")) == "False" for r in cases):
                why = "replayed Triton graph did not reproduce the eager indices"
            g["where"] = why[:200] or "no graph measurement in the results"
        goals.append(g)

    speed = f"selection chain (select_tokens) vs torch reference, N >= {min_n}"
    copy = f"selection chain vs device copy of the same bytes, N >= {min_n}"
    worst("speedup", f"{speed} {EAGER_LABEL}", GOAL_SELECT_SPEEDUP, "x")
    worst("speedup_graph", f"{speed} {GRAPH_LABEL}", GOAL_SELECT_SPEEDUP, "x", graph=True)
    worst("pct_of_copy_same_bytes", f"{copy} {EAGER_LABEL}", GOAL_SELECT_COPY_PCT, "%")
    worst("pct_of_copy_same_bytes_graph", f"{copy} {GRAPH_LABEL}", GOAL_SELECT_COPY_PCT, "%", graph=True)
    g = {"goal": f"HF Qwen2.5-VL-7B prefill speedup at ratio {GOAL_PREFILL_RATIO}",
         "threshold": f">= {GOAL_PREFILL_SPEEDUP:g}x", "measured": "", "where": "", "verdict": "not measured"}
    at = [r for r in hf_rows if abs((num(r.get("ratio")) or 0) - GOAL_PREFILL_RATIO) < 1e-9
          and num(r.get("speedup")) is not None]
    if at:
        s = float(at[0]["speedup"])
        g["measured"] = f"{s:.2f}x"
        g["where"] = f"N={at[0]['N']} K={at[0]['K']}, prefill {float(at[0]['prefill_ms_p50']):.1f} ms"
        g["verdict"] = "met" if s >= GOAL_PREFILL_SPEEDUP else "NOT met"
    goals.append(g)
    # the same with the LLM forward replayed from CUDA graphs (hf_gpu_prefill.py's optional speedup_graph column)
    g = {"goal": f"HF Qwen2.5-VL-7B prefill speedup at ratio {GOAL_PREFILL_RATIO} (LLM in CUDA graphs)",
         "threshold": f">= {GOAL_PREFILL_SPEEDUP:g}x", "measured": "", "where": "", "verdict": "not measured"}
    at = [r for r in hf_rows if abs((num(r.get("ratio")) or 0) - GOAL_PREFILL_RATIO) < 1e-9]
    if at and num(at[0].get("speedup_graph")) is not None:
        s = num(at[0]["speedup_graph"])
        p50 = num(at[0].get("prefill_graph_ms_p50"))
        g["measured"] = f"{s:.2f}x"
        g["where"] = f"N={at[0].get('N')} K={at[0].get('K')}" + (f", prefill {p50:.1f} ms" if p50 is not None else "")
        g["verdict"] = "met" if s >= GOAL_PREFILL_SPEEDUP else "NOT met"
    elif hf_rows:
        g["where"] = "no speedup_graph value in the prefill results"
    goals.append(g)
    return goals


def _table(header: list, rows: list) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _pct(part, whole) -> str:
    """100 * part / whole with one decimal, or "-" when either is missing."""
    a, b = _num(part), _num(whole)
    return "-" if a is None or not b else f"{100 * a / b:.1f}"


def render_summary(check: GpuCheck, goals: list, final: bool) -> str:
    info, data = check.info, check.data
    gpu = info.get("gpu_name") or ("CPU (dry run)" if check.dry else "no CUDA device")
    lines = [f"# GPU check: {gpu}" + (" (DRY RUN: toy sizes on the CPU, numbers mean nothing)" if check.dry else ""),
             ""]
    if not final:
        lines += ["**Partial: the run was still going when this was written (or was cut short).**", ""]
    lines += [
        f"- Run: {check.started.isoformat(timespec='seconds')}, {check.elapsed():.0f} s of a {check.deadline_s:.0f} s "
        f"deadline; mode `{check.mode}`; `{' '.join(['python3', 'benchmarks/gpu/gpu_check.py', *sys.argv[1:]])}`",
        f"- GPU: {gpu}; capability {info.get('capability', '-')}; memory {info.get('gpu_memory_gib', '-')} GiB; "
        f"SMs {info.get('sm_count', '-')}; driver {info.get('driver', '-')}",
        f"- Software: torch {info.get('torch', '-')} (CUDA {info.get('torch_cuda', '-')}), triton "
        f"{info.get('triton', '-')}, transformers {info.get('transformers', '-')}, numpy {info.get('numpy', '-')}, "
        f"pytest {info.get('pytest', '-')}, python {info.get('python', '-')}",
        f"- Code: commit {git_commit()}, kernels/*.py sha256 {kernels_fingerprint()}; kernels imported as "
        f"{info.get('kernels_import', '-')}; strict kernels (`{STRICT_ENV}=1`) in every stage",
        "",
        "## Goals",
        "",
    ]
    lines += _table(["goal", "threshold", "measured", "where", "verdict"],
                    [[g["goal"], g["threshold"], g["measured"] or "-", g["where"] or "-", f"**{g['verdict']}**"]
                     for g in goals])
    lines += ["", "## Stages", ""]
    lines += _table(["", "stage", "status", "seconds", "detail"],
                    [[r.letter, r.name, f"**{r.status}**" if r.status == "failed" else r.status, f"{r.seconds:.0f}",
                      r.detail.replace("|", "/") or "-"] for r in (check.results[s.name] for s in STAGES)])
    sel = data.get("select", [])
    if sel:
        lines += ["", "## Selection chain (c1: `select_tokens`, bf16)", "",
                  "Triton and torch times: `triton.testing.do_bench` medians of the public call (bench_select.py). "
                  "Copy: a device-to-device `copy_` moving the same bytes (read + write = X + kept rows), timed the "
                  "same way; `% copy` = copy time / Triton time. `% 1 GiB copy` is bench_select's figure against the "
                  "peak copy bandwidth of a 1 GiB copy.", ""]
        lines += _table(["B", "N", "D", "r", "K", "Triton ms", "torch ms", "speedup", "copy ms", "% copy",
                         "% 1 GiB copy", "same idx"],
                        [[r["images"], r["n"], r["d"], r["r"], r["k"], r["triton_ms"], r["torch_ms"], r["speedup"],
                          r["copy_same_bytes_ms"], r["pct_of_copy_same_bytes"], r["pct_of_copy_bw"],
                          r["same_indices"]] for r in sel])
        lines += ["", "GPU time of the same calls: each captured once in a CUDA graph (warm-up on a side stream; the "
                  "plan and the pinned copy of the sizes inside the captured call), `do_bench` medians of "
                  "`graph.replay()`, the copy likewise; no host launch overhead (in serving the selection is launched "
                  "asynchronously behind the vision tower). `graph same idx`: the replayed Triton graph holds the "
                  "eager call's indices. `-`: not measured (see the notes).", ""]
        lines += _table(["B", "N", "D", "r", "K", "Triton graph ms", "torch graph ms", "speedup (graph)",
                         "copy graph ms", "% copy (graph)", "% 1 GiB copy (graph)", "graph same idx"],
                        [[r["images"], r["n"], r["d"], r["r"], r["k"]]
                         + [r.get(c) or "-" for c in ("triton_graph_ms", "torch_graph_ms", "speedup_graph",
                                                      "copy_same_bytes_graph_ms", "pct_of_copy_same_bytes_graph",
                                                      "pct_of_copy_bw_graph", "graph_same_idx")] for r in sel])
        if any(r.get("serving_fused_ms") for r in sel):
            lines += ["", "Serving chain (what `embed_multimodal` returns: kept rows + position channels): `unfused` = "
                      "`select_tokens`, then the channels encoded and concatenated in torch (before the fusion); "
                      "`fused` = `select_tokens(..., channels=PositionChannels())`, one gather into the final buffer. "
                      "`% copy (fused, graph)` = copy of the same bytes / fused graph time. `same`: bit-identical.",
                      ""]
            lines += _table(["B", "N", "D", "r", "unfused ms", "fused ms", "fusion speedup", "unfused graph ms",
                             "fused graph ms", "fusion speedup (graph)", "% copy (fused, graph)", "same"],
                            [[r["images"], r["n"], r["d"], r["r"]]
                             + [r.get(c) or "-" for c in ("serving_unfused_ms", "serving_fused_ms", "fusion_speedup",
                                                          "serving_unfused_graph_ms", "serving_fused_graph_ms",
                                                          "fusion_speedup_graph")]
                             + [_pct(r.get("copy_same_bytes_graph_ms"), r.get("serving_fused_graph_ms")),
                                r.get("serving_same", "-")] for r in sel])
        split = [r for r in sel if any(_num(r.get(f"{p}_graph_ms")) is not None
                                       for p in ("meta", "scores", "select", "gather"))]
        if split:
            lines += ["", "Where the chain's GPU time goes (r = 0.2): each pass launched alone from a CUDA graph, ms: "
                      "`meta` the pinned host-to-device copy of the sizes, `scores` mean + mat-vecs + partial dot "
                      "products, `select` one program per image (radix select), `gather` rows + position channels "
                      "into the packed layout; `copy` = the same-bytes copy (graph).", ""]
            lines += _table(["B", "N", "D", "K", "meta", "scores", "select", "gather", "chain (graph)",
                             "fused (graph)", "copy (graph)"],
                            [[r["images"], r["n"], r["d"], r["k"]]
                             + [r.get(c) or "-" for c in ("meta_graph_ms", "scores_graph_ms", "select_graph_ms",
                                                          "gather_graph_ms", "triton_graph_ms",
                                                          "serving_fused_graph_ms", "copy_same_bytes_graph_ms")]
                             for r in split])
        notes = sorted({f"{label}: {r[c]}" for r in sel for label, c in (
            ("Triton graph", "triton_graph_note"), ("torch graph", "torch_graph_note"),
            ("copy graph", "copy_graph_note"), ("serving graph", "serving_graph_note"),
            ("breakdown", "breakdown_note")) if r.get(c)})
        if notes:
            lines += ["", "Graph notes:", ""] + [f"- {n.replace('|', '/')}" for n in notes[:12]] + (
                [f"- ... {len(notes) - 12} more in the CSV"] if len(notes) > 12 else [])
    mmr = data.get("mmr", [])
    if mmr:
        lines += ["", "## MMR selection (c2, bench_mmr.py; * = extrapolated from K = 8, 16)", ""]
        lines += _table(["backend", "images", "N", "K", "ms / image", "GB/s", "same idx"],
                        [[r["backend"], r["images"], r["n"], r["k"],
                          r["ms_per_image"] + ("" if r["timing"] == "measured" else "*"), r["gbps"],
                          r["same_indices"]] for r in mmr])
    hf = data.get("hf", [])
    if hf:
        lines += ["", "## HF prefill (d, hf_gpu_prefill.py)", ""]
        graph_cols = [c for c in ("prefill_graph_ms_p50", "speedup_graph") if c in hf[0]]  # optional columns

        def opt(r, c):
            v = _num(r.get(c))
            return "-" if v is None else (f"{v:.2f}x" if c == "speedup_graph" else f"{v:.1f}")

        lines += _table(["ratio", "K", "prompt tokens", "prefill p50 ms", "LLM ms", "speedup", "ceiling (measured)"]
                        + [{"prefill_graph_ms_p50": "prefill p50 ms (LLM in CUDA graphs)",
                            "speedup_graph": "speedup (LLM in CUDA graphs)"}[c] for c in graph_cols],
                        [[r["ratio"], r["K"], r["prompt_tokens"], f"{float(r['prefill_ms_p50']):.1f}",
                          f"{float(r['llm_ms_p50']):.1f}", f"{float(r['speedup']):.2f}x",
                          f"{float(r['ceiling_measured']):.2f}x"] + [opt(r, c) for c in graph_cols] for r in hf])
    sweep = data.get("sweep", [])
    if sweep:
        by = collections.Counter((r["op"], r["ok"] == "True") for r in sweep)
        ops = sorted({r["op"] for r in sweep})
        lines += ["", "## Kernel sweep (b2)", "",
                  ", ".join(f"{op}: {by[(op, True)]}/{by[(op, True)] + by[(op, False)]} passed" for op in ops)
                  + f"; max score error {max((float(r['max_score_err']) for r in sweep if r['max_score_err']), default=0):.2e}"
                  + f"; indices identical to the reference in {sum(r['same_indices'] == 'True' for r in sweep)} of "
                  f"{sum(r['same_indices'] in ('True', 'False') for r in sweep)} compared cases."]
        bad = [r for r in sweep if r["ok"] != "True"]
        if bad:
            lines += [""] + _table(["op", "dtype", "D", "detail"],
                                   [[r["op"], r["dtype"], r["d"], r["detail"].replace("|", "/")] for r in bad[:20]])
    pt = data.get("pytest")
    if pt:
        lines += ["", "## Kernel tests (b1)", "", fmt_counts(pt["counts"]) + (
            "; failed: " + ", ".join(pt["failed"][:20]) if pt["failed"] else "")]
    lines += ["", "## Files", "", ", ".join(f"`{p.name}`" for p in sorted(set(check.files.values()))) or "-", ""]
    return "\n".join(lines)


def summary_text(check: GpuCheck) -> str:
    out = ["", f"===== gpu-check {check.tag}: {check.elapsed():.0f} s ====="]
    for s in STAGES:
        r = check.results[s.name]
        out.append(f"  {r.letter:3s} {r.name:13s} {r.status:8s} {r.seconds:6.0f} s  {r.detail[:150]}")
    for g in check.data.get("goals", []):
        out.append(f"  goal: {g['goal']} {g['threshold']}: {g['measured'] or '-'} -> {g['verdict']}")
    out.append(f"  results: {check.out_dir}" + (f"; $OUT: {check.OUT}" if check.OUT else ""))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------------
# Child entry points (python3 gpu_check.py --child NAME): run in their own process, environment set by the parent
# ---------------------------------------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def child_env(mode: str) -> int:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "triton": _version("triton"), "transformers": _version("transformers"), "numpy": _version("numpy"),
            "pytest": _version("pytest")}
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        cap = torch.cuda.get_device_capability(0)
        info.update(gpu_name=torch.cuda.get_device_name(0), capability=f"{cap[0]}{cap[1]}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count,
                    device_count=torch.cuda.device_count())
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            info["driver"] = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    try:
        import vs_vllm.kernels

        info["kernels_from"] = str(Path(vs_vllm.kernels.__file__).parent)
    except Exception as exc:
        info["kernels_from"] = None
        print(f"vs_vllm.kernels is not importable: {type(exc).__name__}: {exc}", flush=True)
    for k, v in info.items():
        print(f"{k}: {v}", flush=True)
    print("GPU_CHECK_ENV " + json.dumps(info), flush=True)
    if info["kernels_from"] is None:
        return 4
    return 0 if info["cuda_available"] or mode == "dry" else 3


def fake_cuda_on_cpu() -> None:
    """Dry run only: let the benchmark scripts' CUDA code run on CPU tensors (the kernels through the Triton
    interpreter), so a rehearsal exercises their arguments, outputs and this script's parsing. Times mean nothing."""
    import torch
    import triton.testing

    def on_cpu(fn):
        @functools.wraps(fn)
        def wrapped(*a, **kw):
            if kw.get("device") is not None and torch.device(kw["device"]).type == "cuda":
                kw["device"] = "cpu"
            return fn(*a, **kw)

        return wrapped

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    def do_bench(fn, warmup=None, rep=None, return_mode="median", **kw):
        fn()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]

    class Stream:
        """torch.cuda.Stream stand-in: everything runs in order on the CPU."""

        def __init__(self, *a, **kw):
            pass

        def wait_stream(self, other):
            pass

        def synchronize(self):
            pass

    class CUDAGraph:
        """torch.cuda.CUDAGraph stand-in: the captured body ran once, eagerly, inside ``graph(...)``; replay() does
        nothing, so the outputs keep the capture's results (what a faithful replay of fixed inputs gives)."""

        def __init__(self, *a, **kw):
            self.captured = False

        def replay(self):
            if not self.captured:
                raise RuntimeError("replay of a graph that was never captured")

    class graph:  # the name torch.cuda uses
        """torch.cuda.graph stand-in: checks the arguments the real one takes, runs the body eagerly."""

        def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
            if capture_error_mode not in ("default", "global", "thread_local", "relaxed"):
                raise ValueError(f"unknown capture_error_mode {capture_error_mode!r}")
            self.cuda_graph = cuda_graph

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.cuda_graph.captured = exc[0] is None
            return False

    real_gen = torch.Generator
    for name in ("randn", "empty", "zeros", "ones", "full", "rand", "randint", "arange", "tensor"):
        setattr(torch, name, on_cpu(getattr(torch, name)))
    torch.Generator = lambda device="cpu": real_gen("cpu")
    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_name = lambda *a: "dry-run CPU"
    torch.cuda.get_device_capability = lambda *a: (0, 0)
    torch.cuda.synchronize = lambda *a: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.Event = Event
    torch.cuda.Stream = Stream
    torch.cuda.current_stream = lambda *a: Stream()
    torch.cuda.stream = lambda s=None: contextlib.nullcontext()
    torch.cuda.CUDAGraph = CUDAGraph
    torch.cuda.graph = graph
    triton.testing.do_bench = do_bench


def _load_script(path: Path, name: str):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def child_bench_select(mode: str, out: Path) -> int:
    """bench_select.main on the profile's grid, then a device copy of the same bytes per case."""
    profile = PROFILES[mode]
    if mode == "dry":
        fake_cuda_on_cpu()
    bs = _load_script(BENCH_SELECT, "bench_select")
    bs.FULL = bs.QUICK = dict(profile.select_grid)
    if mode == "dry":
        bs.copy_bandwidth = functools.partial(bs.copy_bandwidth, nbytes=1 << 22)
    rc = bs.main(["--out-dir", str(out), "--rep", str(profile.select_rep), *(["--quick"] if mode == "quick" else [])])
    if rc:
        return rc
    import torch
    import triton.testing

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=profile.select_rep, return_mode="median")

    src_csv = sorted(out.glob("bench_select_*.csv"))[0]
    rows = read_csv(src_csv)
    cache: dict[int, float] = {}
    for row in rows:
        images, n, d, k = (int(row[c]) for c in ("images", "n", "d", "k"))
        elems = images * (n + k) * d // 2  # copy_ moves 2 * elems * 2 bytes = X + kept rows (bf16)
        if elems not in cache:
            src = torch.empty(elems, dtype=torch.bfloat16, device="cuda").normal_()
            dst = torch.empty_like(src)
            cache[elems] = bench(lambda dst=dst, src=src: dst.copy_(src))
            src = dst = None
        copy_ms = cache[elems]
        row["copy_same_bytes_ms"] = round(copy_ms, 4)
        row["copy_same_bytes_gbps"] = round(4 * elems / (copy_ms * 1e-3) / 1e9, 1)
        row["pct_of_copy_same_bytes"] = round(100 * copy_ms / float(row["triton_ms"]), 1)
        print(f"B={images} N={n:5d} D={d} K={k:5d}  copy of the same bytes {copy_ms:.4f} ms "
              f"({row['copy_same_bytes_gbps']} GB/s): selection at {row['pct_of_copy_same_bytes']}% of it",
              flush=True)
    # GPU time of the same copies, replayed from CUDA graphs (after every eager copy): like with like for the
    # selection's graph time, with the same capture / replay timing (bench_select.GraphTimer)
    timer = bs.GraphTimer(torch, bench)
    graphs: dict[int, tuple] = {}
    try:
        for elems in cache:
            src = torch.empty(elems, dtype=torch.bfloat16, device="cuda").normal_()
            dst = torch.empty_like(src)
            graphs[elems] = timer.measure(lambda dst=dst, src=src: dst.copy_(src), "copy")[::2]  # (ms, note)
            src = dst = None
    except Exception as exc:  # never costs the eager columns
        print(f"copy graph pass failed: {bs.reason(exc)}", flush=True)
        for elems in cache:
            graphs.setdefault(elems, (None, f"copy graph pass failed: {bs.reason(exc)}"))
    for row in rows:
        images, n, d, k = (int(row[c]) for c in ("images", "n", "d", "k"))
        copy_graph_ms, note = graphs[images * (n + k) * d // 2]
        tri_graph = _num(row.get("triton_graph_ms"))
        row["copy_same_bytes_graph_ms"] = round(copy_graph_ms, 4) if copy_graph_ms is not None else None
        row["pct_of_copy_same_bytes_graph"] = (round(100 * copy_graph_ms / tri_graph, 1)
                                               if copy_graph_ms is not None and tri_graph else None)
        row["copy_graph_note"] = note
        print(f"B={images} N={n:5d} D={d} K={k:5d}  graph replay: copy of the same bytes "
              f"{row['copy_same_bytes_graph_ms'] or '-'} ms, selection {row.get('triton_graph_ms') or '-'} ms: "
              f"selection at {row['pct_of_copy_same_bytes_graph'] or '-'}% of it"
              + (f" [copy graph: {note}]" if note else ""), flush=True)
    keys = ["gpu", "images", "n", "d", "r", "k", "dtype", "triton_ms", "torch_ms", "speedup", "effective_gbps",
            "copy_same_bytes_ms", "copy_same_bytes_gbps", "pct_of_copy_same_bytes", "pct_of_copy_bw", "copy_gbps",
            "gather_triton_ms", "gather_torch_ms", "same_indices", "same_rows", "max_score_err",
            # GPU time, CUDA-graph replay (empty when not measured; the notes say why)
            "triton_graph_ms", "torch_graph_ms", "speedup_graph", "effective_gbps_graph", "copy_same_bytes_graph_ms",
            "pct_of_copy_same_bytes_graph", "pct_of_copy_bw_graph", "graph_same_idx", "triton_graph_note",
            "torch_graph_note", "copy_graph_note",
            # the serving chain (rows + position channels) before and after the fusion
            "serving_unfused_ms", "serving_fused_ms", "fusion_speedup", "serving_unfused_graph_ms",
            "serving_fused_graph_ms", "fusion_speedup_graph", "serving_same", "serving_graph_note",
            # each pass of the Triton chain alone (graph replay; r = 0.2 cases)
            "meta_graph_ms", "scores_graph_ms", "select_graph_ms", "gather_graph_ms", "breakdown_note"]
    with open(out / "select_copy.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(rows)
    return 0


def child_bench_mmr(mode: str, out: Path) -> int:
    profile = PROFILES[mode]
    if mode == "dry":
        fake_cuda_on_cpu()
    bm = _load_script(BENCH_MMR, "bench_mmr")
    bm.FULL = bm.QUICK = dict(profile.mmr_grid)
    return bm.main(["--out-dir", str(out), *profile.mmr_args, *(["--quick"] if mode == "quick" else [])])


# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", default=env_flag("DRY_RUN"),
                    help="CPU rehearsal without CUDA: toy sizes, Triton interpreter, results in a temp dir "
                    "(also DRY_RUN=1)")
    ap.add_argument("--quick", action="store_true", help="smaller grids and a 300 s deadline; files named *_quick")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where result files go (default: benchmarks/results; with --dry-run a new temp dir)")
    ap.add_argument("--stages", default=",".join(n for n in STAGE_NAMES if n != "summary"),
                    help="comma-separated subset of: " + ", ".join(STAGE_NAMES[:-1]) + " (the summary always runs)")
    ap.add_argument("--deadline", type=float, default=None, help="seconds for the whole run (default 450; --quick "
                    "300; dry run 300)")
    ap.add_argument("--pytest-args", default=None,
                    help="what stage b1 passes to pytest instead of the default (tests/kernels; dry run: the gather "
                    "tests), e.g. \"$PWD/tests/kernels -k mmr\" (children run in a scratch folder: absolute paths)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (child outputs, overlay)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="full", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; choose from {STAGE_NAMES[:-1]}")
    args.stages = ["env", *(s for s in stages if s != "env")]  # env names the GPU: always run
    if args.dry_run:
        if args.out_dir is None:
            args.out_dir = Path(tempfile.mkdtemp(prefix="gpu-check-dry-run-"))
        elif args.out_dir.resolve() == RESULTS.resolve():
            ap.error("a dry run never writes into benchmarks/results (committed results); pick another --out-dir")
    elif args.out_dir is None:
        args.out_dir = RESULTS
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child == "env":
        return child_env(args.mode)
    if args.child == "bench-select":
        return child_bench_select(args.mode, args.work)
    if args.child == "bench-mmr":
        return child_bench_mmr(args.mode, args.work)
    if args.child:
        raise SystemExit(f"unknown child {args.child!r}")
    return GpuCheck(args).run()


if __name__ == "__main__":
    sys.exit(main())
