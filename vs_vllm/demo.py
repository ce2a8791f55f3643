"""``vs-vllm demo``: build the tiny model, serve it with vLLM's OpenAI server (plugin loaded), ask about an image.

Everything runs on 127.0.0.1 and offline; the server is stopped when the demo ends, also on Ctrl-C or error.
"""

from __future__ import annotations

import time
from pathlib import Path

DEFAULT_MODEL_DIR = Path(".cache") / "tiny-qwen2_5_vl"


def ensure_tiny_model(model_dir: Path, seed: int = 0) -> Path:
    from vs_vllm.testing.tiny_models import build_tiny_model

    if (model_dir / "model.safetensors").exists() and (model_dir / "vs_vllm_tiny_model.json").exists():
        return model_dir
    print(f"[demo] building the tiny random-weight Qwen2.5-VL in {model_dir} ...", flush=True)
    return build_tiny_model(model_dir, arch="qwen2_5_vl", seed=seed)


def run_demo(model_dir: Path, question: str, max_tokens: int) -> int:
    from openai import OpenAI

    from vs_vllm.testing.images import shape_image, to_data_url
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    model_dir = ensure_tiny_model(model_dir)
    server = VLLMServer(model_dir, tiny_serve_args(max_images=1))
    print(f"[demo] starting vLLM on {server.base_url} (log: {server.log_path}) ...", flush=True)
    t0 = time.monotonic()
    with server:
        print(f"[demo] server healthy after {time.monotonic() - t0:.0f} s (pid {server.pid})", flush=True)
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="EMPTY")
        image = shape_image(320, 240)
        t1 = time.monotonic()
        resp = client.chat.completions.create(
            model="tiny",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": to_data_url(image)}},
                        {"type": "text", "text": question},
                    ],
                }
            ],
            max_tokens=max_tokens,
            temperature=0.0,
        )
        latency = time.monotonic() - t1
    answer = resp.choices[0].message.content
    usage = resp.usage
    print()
    print(f"question : {question}")
    print(f"answer   : {answer!r}   (random weights: the words mean nothing yet)")
    print(f"usage    : prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens} "
          f"total_tokens={usage.total_tokens}")
    print(f"latency  : {latency * 1000:.0f} ms")
    return 0
