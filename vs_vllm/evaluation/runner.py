"""The request sweep: every sample at every (selection method, retention ratio), against one OpenAI-compatible server.

Requests run concurrently (asyncio, the async ``openai`` client, a semaphore of ``concurrency``) with greedy decoding.
The per-request ``retention_ratio`` / ``selection_method`` (and optionally ``selection_seed``) go as top-level body
fields, which ``vs-vllm serve`` understands. Ratio 1.0 keeps every visual token whatever the method, so it is
requested once (with the first method) and shared as the baseline of every method.

A server that cannot be reached, does not serve ``--model``, or refuses a request (4xx: e.g. an unknown method) stops
the run with an :class:`EvalError`; a 5xx or time-out on one request is recorded on that prediction (scored 0).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vs_vllm.evaluation.data import EvalSample
from vs_vllm.evaluation.errors import EvalError
from vs_vllm.evaluation.metrics import score_prediction

__all__ = ["SweepConfig", "check_server", "run_sweep", "sweep_plan"]

BASELINE_RATIO = 1.0


@dataclass
class SweepConfig:
    base_url: str
    model: str
    ratios: Sequence[float]
    methods: Sequence[str]
    concurrency: int = 4
    max_tokens: int = 16
    prompt_suffix: str = ""
    seed: int | None = None
    timeout: float = 300.0
    pruning_fields: bool = True  # False: send no retention fields (an unmodified server; only ratio 1.0 allowed)
    progress: bool = True
    api_key: str = "EMPTY"


def api_root(base_url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` -> ``http://host:port`` (the client adds /v1)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def check_server(base_url: str, model: str, timeout: float = 10.0, api_key: str = "EMPTY") -> list[str]:
    """GET /v1/models; returns the served model ids. EvalError when unreachable or ``model`` is not served."""
    url = f"{api_root(base_url)}/v1/models"
    try:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise EvalError(f"server at {base_url} answered GET /v1/models with HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        raise EvalError(f"cannot reach the server at {base_url} ({reason}); is it running?") from None
    except ValueError as exc:
        raise EvalError(f"invalid --base-url {base_url!r}: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EvalError(f"server at {base_url} is not an OpenAI-compatible API (bad /v1/models body)") from None
    ids = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
    if model not in ids:
        raise EvalError(f"model {model!r} is not served at {base_url}; served: {', '.join(map(str, ids)) or 'none'}")
    return ids


def sweep_plan(ratios: Sequence[float], methods: Sequence[str], *, add_baseline: bool = True) -> list[tuple[str, float]]:
    """(method, ratio) pairs to request: ratio 1.0 once (first method), every other ratio for every method."""
    ratios = list(dict.fromkeys(float(r) for r in ratios))
    if add_baseline and BASELINE_RATIO not in ratios:
        ratios.insert(0, BASELINE_RATIO)
    plan: list[tuple[str, float]] = []
    if BASELINE_RATIO in ratios:
        plan.append((methods[0], BASELINE_RATIO))
    plan += [(m, r) for r in ratios if r != BASELINE_RATIO for m in methods]
    return plan


def _messages(sample: EvalSample, suffix: str) -> list[dict[str, Any]]:
    text = sample.question + (("\n" + suffix) if suffix else "")
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": sample.image_url}},
        {"type": "text", "text": text},
    ]}]


def _visual_tokens(resp: Any, headers: Any) -> tuple[int | None, int | None]:
    usage = getattr(resp, "usage", None)
    vt = None
    if usage is not None:
        vt = getattr(usage, "visual_tokens", None)
        if vt is None and getattr(usage, "model_extra", None):
            vt = usage.model_extra.get("visual_tokens")
    if isinstance(vt, dict) and "kept" in vt:
        return int(vt["kept"]), int(vt.get("total", -1))
    kept, total = headers.get("x-vs-visual-tokens-kept"), headers.get("x-vs-visual-tokens-total")
    if kept is not None and total is not None:
        return int(kept), int(total)
    return None, None


async def _one(client, cfg: SweepConfig, sample: EvalSample, method: str, ratio: float, sem, abort) -> dict[str, Any]:
    import openai

    extra: dict[str, Any] = {}
    if cfg.pruning_fields:
        extra = {"retention_ratio": ratio, "selection_method": method}
        if cfg.seed is not None:
            extra["selection_seed"] = cfg.seed
    rec: dict[str, Any] = {"id": sample.id, "method": method, "ratio": ratio, "question": sample.question,
                           "answers": sample.answers, "prediction": "", "error": None}
    async with sem:
        if abort:
            return rec
        t0 = time.perf_counter()
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=cfg.model, messages=_messages(sample, cfg.prompt_suffix), max_tokens=cfg.max_tokens,
                temperature=0.0, extra_body=extra or None,
            )
            resp = raw.parse()
            rec["prediction"] = (resp.choices[0].message.content or "").strip()
            rec["visual_tokens_kept"], rec["visual_tokens_total"] = _visual_tokens(resp, raw.headers)
            rec["prompt_tokens"] = resp.usage.prompt_tokens if resp.usage else None
        except openai.APITimeoutError:  # a subclass of APIConnectionError: first
            rec["error"] = f"timed out after {cfg.timeout:.0f} s"
        except openai.APIConnectionError as exc:
            abort.append(f"lost the server at {cfg.base_url} ({exc.__class__.__name__}: {exc})")
        except openai.APIStatusError as exc:
            msg = _error_message(exc)
            if 400 <= exc.status_code < 500:
                abort.append(f"server refused {sample.id} at retention_ratio={ratio}, selection_method={method}: "
                             f"HTTP {exc.status_code}: {msg}")
            else:
                rec["error"] = f"HTTP {exc.status_code}: {msg}"
        rec["latency_s"] = round(time.perf_counter() - t0, 4)
    rec.update(score_prediction(rec["prediction"], sample.answers) if rec["error"] is None
               else {"em": 0.0, "anls": 0.0, "yesno": None})
    return rec


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(getattr(exc, "message", exc))


async def _sweep(samples: Sequence[EvalSample], cfg: SweepConfig, plan) -> list[dict[str, Any]]:
    from tqdm import tqdm

    import openai

    client = openai.AsyncOpenAI(base_url=f"{api_root(cfg.base_url)}/v1", api_key=cfg.api_key, timeout=cfg.timeout,
                                max_retries=0)
    sem = asyncio.Semaphore(max(1, cfg.concurrency))
    abort: list[str] = []
    tasks = [asyncio.ensure_future(_one(client, cfg, s, m, r, sem, abort)) for m, r in plan for s in samples]
    results = []
    try:
        with tqdm(total=len(tasks), desc="eval", unit="req", disable=not cfg.progress, dynamic_ncols=True) as bar:
            correct = 0
            for fut in asyncio.as_completed(tasks):
                rec = await fut
                results.append(rec)
                correct += rec.get("em") or 0
                bar.update(1)
                bar.set_postfix(em=f"{correct / len(results):.3f}", refresh=False)
                if abort:
                    break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    if abort:
        raise EvalError(abort[0])
    order = {(m, r): i for i, (m, r) in enumerate(plan)}
    index = {s.id: i for i, s in enumerate(samples)}
    results.sort(key=lambda rec: (order[(rec["method"], rec["ratio"])], index.get(rec["id"], 0)))
    return results


def run_sweep(samples: Sequence[EvalSample], cfg: SweepConfig, *, add_baseline: bool = True) -> list[dict[str, Any]]:
    """Check the server, then run every (method, ratio) of the plan over ``samples``; returns the predictions."""
    if not cfg.methods:
        raise EvalError("no selection methods given")
    plan = sweep_plan(cfg.ratios, cfg.methods, add_baseline=add_baseline)
    if not cfg.pruning_fields and any(r != BASELINE_RATIO for _, r in plan):
        raise EvalError("--no-pruning-fields only makes sense with --ratios 1.0")
    check_server(cfg.base_url, cfg.model, api_key=cfg.api_key)
    return asyncio.run(_sweep(samples, cfg, plan))
