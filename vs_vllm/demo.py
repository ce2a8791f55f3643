"""``vs-vllm demo``: serve a small Qwen2.5-VL with ``vs-vllm serve`` and sweep the per-request retention ratio.

Default: the synthetic-benchmark model committed under ``benchmarks/synthetic/model/`` (a 1.4M-parameter Qwen2.5-VL
trained from scratch on "What colour is the striped shape?" plus its VisionSelector scorer). The demo draws fresh
images with the benchmark's generator (a seed the model never saw), starts vLLM's OpenAI server with the plugin on a
free 127.0.0.1 port, asks every image at several ``retention_ratio`` values with ``visionselector`` and two
training-free methods, prints accuracy, visual tokens kept and time to first token per ratio and method, and stops the
server, also on Ctrl-C or error.

``--arch qwen3_vl`` serves the Qwen3-VL counterpart committed under ``benchmarks/synthetic/model_qwen3_vl/`` (the same
task at 256x256, where Qwen3-VL's 32-px tokens give the same 8x8 grid), or with ``--random-model`` a random-weight
tiny Qwen3-VL.

``--random-model`` (or a checkout without the committed model) serves the random-weight tiny model instead: the same
round trip, with answers that mean nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEFAULT_MODEL_DIR = Path(".cache") / "tiny-qwen2_5_vl"
#: Architectures the demo serves; the first is the default.
DEMO_ARCHS = ("qwen2_5_vl", "qwen3_vl")
DEFAULT_RATIOS = (1.0, 0.5, 0.3, 0.1, 0.05)
SYNTHETIC_RATIOS = (1.0, 0.3, 0.1, 0.05)
SYNTHETIC_METHODS = ("visionselector", "norm", "random")
#: The repository's synthetic benchmark (generator + committed model); absent from a wheel-only install.
SYNTHETIC_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic"
SYNTHETIC_MODEL_DIR = SYNTHETIC_DIR / "model"
#: The committed synthetic-benchmark model per architecture.
SYNTHETIC_MODEL_DIRS = {"qwen2_5_vl": SYNTHETIC_MODEL_DIR, "qwen3_vl": SYNTHETIC_DIR / "model_qwen3_vl"}
#: The full benchmark's results per architecture (named in the demo's last line).
SYNTHETIC_RESULTS = {"qwen2_5_vl": "benchmarks/results/synthetic_accuracy.md",
                     "qwen3_vl": "benchmarks/results/synthetic_qwen3_vl_accuracy.md"}
#: Images for the demo come from this generator seed; the model was trained and tested on seed 0.
DEMO_SEED = 1


def synthetic_model_available(model_dir: Path = SYNTHETIC_MODEL_DIR) -> bool:
    return all((model_dir / name).is_file() for name in ("model.safetensors", "scorer.safetensors", "config.json"))


def _check_arch(arch: str) -> None:
    if arch not in DEMO_ARCHS:
        raise ValueError(f"unknown demo arch {arch!r}; known: {', '.join(DEMO_ARCHS)}")


def default_random_model_dir(arch: str = "qwen2_5_vl") -> Path:
    """Where the random-weight tiny model of ``arch`` is built (``.cache/tiny-ARCH``)."""
    _check_arch(arch)
    return Path(".cache") / f"tiny-{arch}"


def ensure_tiny_model(model_dir: Path, seed: int = 0, arch: str = "qwen2_5_vl") -> Path:
    import json

    from vs_vllm.testing.tiny_models import build_tiny_model

    card = model_dir / "vs_vllm_tiny_model.json"
    # Reuse only a model of the asked arch (a directory given by --model-dir may hold another one).
    if (model_dir / "model.safetensors").exists() and card.exists() and \
            json.loads(card.read_text()).get("arch", "qwen2_5_vl") == arch:
        return model_dir
    print(f"[demo] building the tiny random-weight {arch} model in {model_dir} ...", flush=True)
    return build_tiny_model(model_dir, arch=arch, seed=seed)


def ask(client, image_url: str, question: str, ratio: float, method: str, max_tokens: int) -> dict:
    """One streamed chat request; returns TTFT, the answer, usage and the visual-token counts from the headers."""
    start = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": question},
        ]}],
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"retention_ratio": ratio, "selection_method": method},
    )
    ttft = None
    text: list[str] = []
    usage = None
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - start
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    return {
        "ratio": ratio,
        "kept": int(raw.headers.get("x-vs-visual-tokens-kept", -1)),
        "total": int(raw.headers.get("x-vs-visual-tokens-total", -1)),
        "prompt_tokens": usage.prompt_tokens if usage else -1,
        "ttft_ms": (ttft if ttft is not None else time.perf_counter() - start) * 1000,
        "answer": "".join(text),
    }


def run_random_demo(model_dir: Path, question: str, max_tokens: int, ratios=DEFAULT_RATIOS,
                    method: str = "uniform", arch: str = "qwen2_5_vl") -> int:
    from vs_vllm.testing.client import openai_client
    from vs_vllm.testing.images import shape_image, to_data_url
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    model_dir = ensure_tiny_model(model_dir, arch=arch)
    server = VLLMServer(
        model_dir,
        [*tiny_serve_args(max_images=1), "--selection-method", method, "--no-enable-prefix-caching"],
        command=[sys.executable, "-m", "vs_vllm", "serve"],
    )
    print(f"[demo] starting `vs-vllm serve` on {server.base_url} (log: {server.log_path}) ...", flush=True)
    t0 = time.monotonic()
    with server:
        print(f"[demo] server healthy after {time.monotonic() - t0:.0f} s (pid {server.pid})", flush=True)
        client = openai_client(server.base_url)
        image_url = to_data_url(shape_image(448, 448))
        # Warm-up with another image: the first request pays one-time costs, and the same image would hit the
        # encoder cache.
        ask(client, to_data_url(shape_image(448, 448, colour=(30, 30, 220))), question, 1.0, method, 1)
        rows = [ask(client, image_url, question, r, method, max_tokens) for r in ratios]
    print()
    print(f"question: {question!r}   method: {method}   image: 448x448 (the tiny model caps it at 64 tokens)")
    print(f"{'ratio':>6} {'visual kept/total':>18} {'prompt tokens':>14} {'TTFT ms':>8}  answer")
    for row in rows:
        kept_total = f"{row['kept']}/{row['total']}"
        print(f"{row['ratio']:>6.2f} {kept_total:>18} {row['prompt_tokens']:>14} {row['ttft_ms']:>8.0f}  "
              f"{row['answer']!r}")
    print("\nRandom weights: the answers mean nothing; the token counts, the per-request ratio and the round trip do.")
    return 0


def load_synthetic_generator():
    """The repository's ``benchmarks/synthetic/generate.py`` as a module (a script, not part of the package)."""
    from vs_vllm.testing.scripts import load_script

    return load_script(SYNTHETIC_DIR / "generate.py", "vs_vllm_synthetic_generate")


def synthetic_samples(n_images: int, seed: int, model_dir: Path = SYNTHETIC_MODEL_DIR) -> tuple[str, list[tuple[str, str]]]:
    """(question, [(image data URL, answer)]): the first ``n_images`` test images of generator seed ``seed``, drawn
    with the generator settings the model in ``model_dir`` was trained on (its ``dataset.json``; the generator's
    defaults without one)."""
    import json

    from vs_vllm.testing.images import to_data_url

    gen = load_synthetic_generator()
    info = model_dir / "dataset.json"
    cfg = gen.config_from_info(json.loads(info.read_text())) if info.is_file() else gen.SyntheticConfig()
    samples = []
    for i in range(n_images):
        image, meta = gen.render_sample(gen.sample_rng(seed, "test", i), cfg)
        samples.append((to_data_url(image), meta["colour"]))
    return cfg.prompt, samples


def run_synthetic_demo(model_dir: Path = SYNTHETIC_MODEL_DIR, n_images: int = 12, ratios=SYNTHETIC_RATIOS,
                       methods=SYNTHETIC_METHODS, max_tokens: int = 4,
                       results: str = SYNTHETIC_RESULTS["qwen2_5_vl"]) -> int:
    """Accuracy of each method at each ratio on ``n_images`` fresh synthetic images, through ``vs-vllm serve``."""
    import numpy as np

    from vs_vllm.testing.client import openai_client
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    question, samples = synthetic_samples(n_images, DEMO_SEED, model_dir)
    server = VLLMServer(
        model_dir,
        [*tiny_serve_args(max_images=1), "--scorer", str(model_dir / "scorer.safetensors"),
         "--no-enable-prefix-caching"],
        command=[sys.executable, "-m", "vs_vllm", "serve"],
    )
    print(f"[demo] model: {model_dir} (trained on the synthetic benchmark; scorer: scorer.safetensors)")
    print(f"[demo] starting `vs-vllm serve` on {server.base_url} (log: {server.log_path}) ...", flush=True)
    t0 = time.monotonic()
    rows = []
    with server:
        print(f"[demo] server healthy after {time.monotonic() - t0:.0f} s (pid {server.pid}); asking {n_images} "
              f"images x {len(ratios)} ratios x {len(methods)} methods ...", flush=True)
        client = openai_client(server.base_url)
        ask(client, samples[0][0], question, 1.0, "uniform", 1)  # warm-up: one-time costs stay out of the timings
        for ratio in ratios:
            for method in (methods[:1] if ratio >= 1.0 else methods):
                answers = [ask(client, url, question, ratio, method, max_tokens) for url, _ in samples]
                rows.append({
                    "ratio": ratio,
                    "method": method if ratio < 1.0 else "(all tokens)",
                    "correct": sum(a["answer"].strip() == truth for a, (_, truth) in zip(answers, samples)),
                    "kept": answers[0]["kept"],
                    "total": answers[0]["total"],
                    "ttft_ms": float(np.median([a["ttft_ms"] for a in answers])),
                    "first": answers[0]["answer"].strip(),
                })
    print()
    size = _image_size(model_dir)
    print(f"question: {question!r}   {n_images} fresh {size}x{size} images (generator seed {DEMO_SEED}); "
          f"first image's answer: {samples[0][1]!r}")
    print(f"{'ratio':>6} {'method':>15} {'visual kept/total':>18} {'correct':>8} {'TTFT ms':>8}  first image")
    for row in rows:
        kept_total = f"{row['kept']}/{row['total']}"
        print(f"{row['ratio']:>6.2f} {row['method']:>15} {kept_total:>18} {row['correct']:>4}/{n_images:<3} "
              f"{row['ttft_ms']:>8.0f}  {row['first']!r}")
    print("\n`correct` counts exact answers; the visual tokens each method keeps decide whether the one that shows the "
          f"answer survives.\nFull benchmark: {results}")
    return 0


def _image_size(model_dir: Path) -> int:
    """The image side the synthetic model in ``model_dir`` was trained on (its dataset.json; 224 without one)."""
    import json

    info = model_dir / "dataset.json"
    return int(json.loads(info.read_text())["config"]["image_size"]) if info.is_file() else 224


def run_demo(model_dir: Path | None = None, question: str | None = None, max_tokens: int | None = None,
             ratios=None, method: str | None = None, random_model: bool = False, n_images: int = 12,
             arch: str = "qwen2_5_vl") -> int:
    """The synthetic-model demo of ``arch`` when its files are present and nothing asks for the random model, else
    the random tiny model of ``arch``."""
    _check_arch(arch)
    synthetic_dir = model_dir or SYNTHETIC_MODEL_DIRS[arch]
    if not random_model and synthetic_model_available(synthetic_dir):
        return run_synthetic_demo(synthetic_dir, n_images=n_images, ratios=ratios or SYNTHETIC_RATIOS,
                                  methods=(method,) if method else SYNTHETIC_METHODS, max_tokens=max_tokens or 4,
                                  results=SYNTHETIC_RESULTS[arch])
    if not random_model:
        print(f"[demo] no trained synthetic model in {synthetic_dir} (model.safetensors + scorer.safetensors): "
              "serving the random-weight tiny model instead", flush=True)
    return run_random_demo(model_dir or default_random_model_dir(arch),
                           question or "What colour is the shape?", max_tokens or 12,
                           ratios=ratios or DEFAULT_RATIOS, method=method or "uniform", arch=arch)
