"""The committed synthetic-benchmark models (benchmarks/synthetic/model, Qwen2.5-VL, and model_qwen3_vl, Qwen3-VL)
served by `vs-vllm serve` with their scorers.

Models whose answers mean something: on fresh images (a generator seed nobody trained or tuned on) each answers the
benchmark question with every visual token, and its learned scorer keeps the answer at ratio 0.1 where a
content-blind selection loses it. Also the Qwen3-VL pipeline end to end (``run_benchmark.py --quick --arch qwen3_vl``).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from vs_vllm.demo import SYNTHETIC_MODEL_DIR, SYNTHETIC_MODEL_DIRS, synthetic_model_available, synthetic_samples
from vs_vllm.testing.client import openai_client

pytestmark = pytest.mark.slow

N_IMAGES = 16
SEED = 5


@pytest.fixture(scope="module")
def samples():
    return synthetic_samples(N_IMAGES, SEED)


@pytest.fixture(scope="module")
def synthetic_server(start_plugin_server):
    assert synthetic_model_available(), f"the committed model is missing from {SYNTHETIC_MODEL_DIR}"
    # Stopped when this module is done, not at session end: later modules should not share the CPUs with its engine.
    server = start_plugin_server(SYNTHETIC_MODEL_DIR, scorer=SYNTHETIC_MODEL_DIR / "scorer.safetensors")
    yield server
    server.stop()


def _correct(server, samples, ratio: float, method: str) -> tuple[int, set[int]]:
    question, items = samples
    client = openai_client(server.base_url)
    hits, kept = 0, set()
    for url, truth in items:
        raw = client.chat.completions.with_raw_response.create(
            model="tiny",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": question}]}],
            max_tokens=4, temperature=0.0,
            extra_body={"retention_ratio": ratio, "selection_method": method},
        )
        resp = raw.parse()
        hits += resp.choices[0].message.content.strip() == truth
        kept.add(int(raw.headers["x-vs-visual-tokens-kept"]))
    return hits, kept


def test_answers_with_every_visual_token(synthetic_server, samples):
    hits, kept = _correct(synthetic_server, samples, 1.0, "visionselector")
    assert kept == {64}
    assert hits >= N_IMAGES - 2, f"{hits}/{N_IMAGES} correct with all 64 visual tokens"


def test_learned_selection_keeps_the_answer(synthetic_server, samples):
    learned, kept = _correct(synthetic_server, samples, 0.1, "visionselector")
    blind, _ = _correct(synthetic_server, samples, 0.1, "random")
    assert kept == {6}
    # The scorer keeps the target in ~85% of images at this ratio (benchmarks/results/synthetic_accuracy.md), random
    # selection in ~40%.
    assert learned >= 11, f"visionselector: {learned}/{N_IMAGES} correct from 6 of 64 tokens"
    assert learned >= blind + 4, f"visionselector {learned} vs random {blind} of {N_IMAGES}"


# ---- Qwen3-VL ------------------------------------------------------------------------------------------------------

QWEN3_VL_DIR = SYNTHETIC_MODEL_DIRS["qwen3_vl"]


@pytest.fixture(scope="module")
def qwen3_vl_samples():
    # Drawn with the model's own dataset.json: 256x256 images, 32-px tokens.
    return synthetic_samples(N_IMAGES, SEED, QWEN3_VL_DIR)


@pytest.fixture(scope="module")
def qwen3_vl_server(start_plugin_server):
    assert synthetic_model_available(QWEN3_VL_DIR), f"the committed model is missing from {QWEN3_VL_DIR}"
    server = start_plugin_server(QWEN3_VL_DIR, scorer=QWEN3_VL_DIR / "scorer.safetensors")
    yield server
    server.stop()  # at module teardown, as synthetic_server


def test_qwen3_vl_answers_with_every_visual_token(qwen3_vl_server, qwen3_vl_samples):
    hits, kept = _correct(qwen3_vl_server, qwen3_vl_samples, 1.0, "visionselector")
    assert kept == {64}
    assert hits >= N_IMAGES - 2, f"{hits}/{N_IMAGES} correct with all 64 visual tokens"


def test_qwen3_vl_learned_selection_keeps_the_answer(qwen3_vl_server, qwen3_vl_samples):
    learned, kept = _correct(qwen3_vl_server, qwen3_vl_samples, 0.1, "visionselector")
    blind, _ = _correct(qwen3_vl_server, qwen3_vl_samples, 0.1, "random")
    assert kept == {6}
    # benchmarks/results/synthetic_qwen3_vl_accuracy.md: the scorer answers far more often than random at ratio 0.1.
    assert learned >= 11, f"visionselector: {learned}/{N_IMAGES} correct from 6 of 64 tokens"
    assert learned >= blind + 4, f"visionselector {learned} vs random {blind} of {N_IMAGES}"


def test_run_benchmark_quick_qwen3_vl(tmp_path):
    """The whole synthetic pipeline with a Qwen3-VL base model on a few images: 256 px data, train_base.py --arch
    qwen3_vl, `vs-vllm train`, target-kept analysis, serve and eval; results under the qwen3_vl name."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic" / "run_benchmark.py"
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--arch", "qwen3_vl", "--artifacts", str(tmp_path / "artifacts"),
         "--results-dir", str(results), "--ratios", "1.0,0.2", "--methods", "visionselector,norm"],
        capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        (tmp_path / "run_benchmark.out").write_text(proc.stdout + "\n---- stderr ----\n" + proc.stderr)
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error" in ln.lower()]
        pytest.fail(f"run_benchmark --quick --arch qwen3_vl exited {proc.returncode}; see "
                    f"{tmp_path / 'run_benchmark.out'}; " + "\n".join(errors[-10:]))
    rows = list(csv.DictReader(open(results / "synthetic_qwen3_vl_accuracy.csv")))
    assert [(r["method"], float(r["ratio"])) for r in rows] == [
        ("visionselector", 1.0), ("visionselector", 0.2), ("norm", 1.0), ("norm", 0.2)]
    md = (results / "synthetic_qwen3_vl_accuracy.md").read_text()
    assert "Qwen3-VL from scratch" in md and "--arch qwen3_vl" in md and "## Target kept" in md
    assert (tmp_path / "artifacts" / "base-model" / "config.json").read_text().count('"qwen3_vl"') >= 1
    assert '"image_size": 256' in (tmp_path / "artifacts" / "data" / "dataset.json").read_text()
    kept = list(csv.DictReader(open(results / "synthetic_qwen3_vl_target_kept.csv")))
    assert {(r["method"], r["ratio"]) for r in kept} >= {("visionselector", "0.2"), ("norm", "0.2")}
    assert not (results / "synthetic_accuracy.csv").exists()


# ---- the synthetic video task (benchmarks/synthetic/video_quality.py) ----------------------------------------------


def test_video_task_runs_every_method_through_the_server(synthetic_server, tmp_path):
    """The video benchmark's pipeline on a few videos: every method answers through the server, each at its
    K = keep_count(256, r) tokens, and the report is written. (Accuracy is the committed run's business: a handful of
    videos cannot tell methods apart.)"""
    from vs_vllm.selection.budget import keep_count
    from vs_vllm.selection.methods import list_methods
    from vs_vllm.testing.scripts import load_script

    vq = load_script(Path(__file__).parents[2] / "benchmarks" / "synthetic" / "video_quality.py", "video_quality")
    question, videos = vq.make_videos(3, seed=11)
    assert all(v["answer"] and 0 <= v["target_group"] < 4 and len(v["video"]) == 8 for v in videos)
    rows = vq.evaluate(synthetic_server.base_url, question, videos, [1.0, 0.1], list_methods())
    assert len(rows) == 3 * (1 + len(list_methods()))
    assert {r["total"] for r in rows} == {256}
    assert all(r["kept"] == keep_count(256, r["ratio"]) for r in rows)
    assert all(r["output"] for r in rows)
    path = vq.write_report(tmp_path, rows, {"started": "now", "machine": "test", "command": "test", "seed": 11,
                                            "groups": 4, "quality": 95, "size": 224, "scene": "static",
                                            "model": vq.model_description(vq.MODEL_DIR)})
    text = path.read_text()
    assert all(m in text for m in list_methods()) and "r=0.1 (25 tok)" in text
    assert (tmp_path / "synthetic_video_accuracy.csv").is_file()


VIDEO_MODEL_DIR = Path(__file__).parents[2] / "benchmarks" / "synthetic" / "model_video"


def test_video_model_answers_and_learned_selection_keeps_the_answer(start_plugin_server):
    """The committed video model (benchmarks/synthetic/model_video) on 12 fresh videos (a seed nobody trained on):
    right with every visual token, and the image scorer keeps the answer from 25 of 256 tokens where random
    selection loses it (committed run: 0.937, 0.930 and 0.323 on 300 videos)."""
    from vs_vllm.testing.scripts import load_script

    vq = load_script(Path(__file__).parents[2] / "benchmarks" / "synthetic" / "video_quality.py", "video_quality")
    server = start_plugin_server(VIDEO_MODEL_DIR, scorer=VIDEO_MODEL_DIR / "scorer.safetensors")
    try:
        question, videos = vq.make_videos(12, seed=23, model_dir=VIDEO_MODEL_DIR)
        rows = vq.evaluate(server.base_url, question, videos, [1.0, 0.1], ["visionselector", "random"])
    finally:
        server.stop()
    right = {(m, r): sum(x["correct"] for x in rows if (x["method"], x["ratio"]) == (m, r))
             for m, r in [("visionselector", 1.0), ("visionselector", 0.1), ("random", 0.1)]}
    assert right["visionselector", 1.0] >= 9, right
    assert right["visionselector", 0.1] >= 9 and right["visionselector", 0.1] >= right["random", 0.1] + 3, right
