"""``vs-vllm demo``: serve the tiny model with ``vs-vllm serve`` and sweep the per-request retention ratio.

Builds the tiny offline Qwen2.5-VL (if needed), starts vLLM's OpenAI server with the plugin on a free 127.0.0.1 port,
sends the same image and question at several ``retention_ratio`` values through the ``openai`` client (streaming, so
time to first token is measured), prints one row per ratio, and stops the server — also on Ctrl-C or error.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEFAULT_MODEL_DIR = Path(".cache") / "tiny-qwen2_5_vl"
DEFAULT_RATIOS = (1.0, 0.5, 0.3, 0.1, 0.05)


def ensure_tiny_model(model_dir: Path, seed: int = 0) -> Path:
    from vs_vllm.testing.tiny_models import build_tiny_model

    if (model_dir / "model.safetensors").exists() and (model_dir / "vs_vllm_tiny_model.json").exists():
        return model_dir
    print(f"[demo] building the tiny random-weight Qwen2.5-VL in {model_dir} ...", flush=True)
    return build_tiny_model(model_dir, arch="qwen2_5_vl", seed=seed)


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


def run_demo(model_dir: Path, question: str, max_tokens: int, ratios=DEFAULT_RATIOS, method: str = "uniform") -> int:
    from vs_vllm.testing.client import openai_client
    from vs_vllm.testing.images import shape_image, to_data_url
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    model_dir = ensure_tiny_model(model_dir)
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
