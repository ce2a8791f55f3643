"""`vs-vllm eval`: metrics, the relative table, data validation and the one-line error paths (no server needed)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vs_vllm.evaluation.data import load_samples, parse_ratios
from vs_vllm.evaluation.errors import EvalError
from vs_vllm.evaluation.metrics import (
    anls,
    exact_match,
    levenshtein,
    normalize_answer,
    relative_scores,
    yes_no,
    yes_no_accuracy,
)
from vs_vllm.evaluation.report import aggregate, markdown_table, write_outputs
from vs_vllm.evaluation.runner import check_server, sweep_plan

# ---------------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("text", "norm"),
    [
        ("Red", "red"),
        ("  The RED one. ", "red one"),
        ("a cat, an apple & the dog!", "cat apple dog"),
        ("theatre", "theatre"),  # articles only as whole words
        ("blue\n", "blue"),
        ("", ""),
        ("...", ""),
        ("“Quoted”", "quoted"),
        (42, "42"),
    ],
)
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_exact_match():
    assert exact_match("Red.", "red") == 1.0
    assert exact_match("The red", ["blue", "red"]) == 1.0
    assert exact_match("reddish", "red") == 0.0
    assert exact_match("red shape", "red") == 0.0  # exact, not contains
    assert exact_match("", "red") == 0.0
    assert exact_match("", [""]) == 1.0


def test_yes_no():
    assert yes_no("Yes, it is.") == "yes"
    assert yes_no("I think no") == "no"
    assert yes_no("yesterday") is None
    assert yes_no_accuracy("Yes.", "yes") == 1.0
    assert yes_no_accuracy("No", ["yes"]) == 0.0
    assert yes_no_accuracy("maybe", "no") == 0.0
    assert yes_no_accuracy("red", "red") is None  # not a yes/no sample
    assert yes_no_accuracy("yes", ["Yes", "yes"]) == 1.0


def test_levenshtein():
    assert levenshtein("", "") == 0
    assert levenshtein("abc", "") == 3
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2


def test_anls():
    assert anls("red", "red") == 1.0
    assert anls("RED ", "red") == 1.0  # case and outer spaces do not count
    assert anls("rex", "red") == pytest.approx(1 - 1 / 3)
    assert anls("xyz", "red") == 0.0
    # NL exactly at the threshold scores 0 (the standard uses NL < 0.5).
    assert anls("ab", "ax") == 0.0
    assert anls("abcd", "abxx") == 0.0
    assert anls("abcd", "abcx") == pytest.approx(0.75)
    assert anls("10.5", ["10,5", "ten"]) == pytest.approx(0.75)  # best reference
    assert anls("", "") == 1.0
    assert anls("", "red") == 0.0


def test_relative_scores():
    rows = [
        {"method": "a", "ratio": 1.0, "score": 0.8},
        {"method": "a", "ratio": 0.5, "score": 0.6},
        {"method": "b", "ratio": 0.5, "score": 0.4},  # no own baseline: the shared one
        {"method": "c", "ratio": 0.5, "score": None},
    ]
    out = relative_scores(rows)
    assert [r["relative"] for r in out] == [pytest.approx(1.0), pytest.approx(0.75), pytest.approx(0.5), None]
    assert relative_scores([{"method": "a", "ratio": 0.5, "score": 0.3}])[0]["relative"] is None
    assert relative_scores([{"method": "a", "ratio": 1.0, "score": 0.0}])[0]["relative"] is None


def _pred(method, ratio, em, sid="s", kept=None):
    return {"id": sid, "method": method, "ratio": ratio, "em": em, "anls": em, "yesno": None, "error": None,
            "visual_tokens_kept": kept, "visual_tokens_total": 64, "latency_s": 0.1, "prompt_tokens": 90}


def test_aggregate_shares_the_baseline_and_computes_relative():
    preds = [_pred("m1", 1.0, 1.0, "x", 64), _pred("m1", 1.0, 0.0, "y", 64),
             _pred("m1", 0.5, 0.0, "x", 32), _pred("m1", 0.5, 0.0, "y", 32),
             _pred("m2", 0.5, 1.0, "x", 32), _pred("m2", 0.5, 0.0, "y", 32)]
    rows = aggregate(preds, ["m1", "m2"])
    by = {(r["method"], r["ratio"]): r for r in rows}
    assert set(by) == {("m1", 1.0), ("m1", 0.5), ("m2", 1.0), ("m2", 0.5)}
    assert by[("m2", 1.0)]["shared_baseline"] == 1 and by[("m1", 1.0)]["shared_baseline"] == 0
    assert by[("m1", 1.0)]["score"] == 0.5 and by[("m2", 0.5)]["relative"] == pytest.approx(1.0)
    assert by[("m1", 0.5)]["relative"] == 0.0
    assert by[("m1", 0.5)]["visual_tokens_kept"] == 32
    table = markdown_table(rows, "em")
    assert "| m2 | 0.500 (100.0%) | 0.500 (100.0%) |" in table


def test_write_outputs(tmp_path):
    preds = [_pred("m1", 1.0, 1.0), _pred("m1", 0.5, 0.0), _pred("m2", 0.5, 1.0)]
    paths = write_outputs(preds, ["m1", "m2"], tmp_path, name="t", title="T")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [(r["method"], float(r["ratio"])) for r in rows] == [("m1", 1.0), ("m1", 0.5), ("m2", 1.0), ("m2", 0.5)]
    assert paths["png"].stat().st_size > 1000
    assert len(paths["predictions"].read_text().splitlines()) == 3
    assert "# T" in paths["markdown"].read_text()


def test_sweep_plan():
    assert sweep_plan([0.5, 0.2], ["a", "b"]) == [("a", 1.0), ("a", 0.5), ("b", 0.5), ("a", 0.2), ("b", 0.2)]
    assert sweep_plan([1.0, 0.5], ["a"], add_baseline=False) == [("a", 1.0), ("a", 0.5)]
    assert sweep_plan([0.5], ["a"], add_baseline=False) == [("a", 0.5)]


def test_parse_ratios():
    assert parse_ratios("1.0, 0.5,0.5") == [1.0, 0.5]
    for bad in ("0", "1.5", "x", ""):
        with pytest.raises(EvalError):
            parse_ratios(bad)


# ---------------------------------------------------------------------------------------------------- data


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (28, 28), (200, 10, 10)).save(path)
    return path


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_load_samples_formats(tmp_path):
    _png(tmp_path / "a.png")
    data = _jsonl(tmp_path / "d.jsonl", [
        {"image": "a.png", "question": "Q?", "answer": "red"},
        {"image": "a.png", "question": "Q?", "answers": ["red", "Red"], "id": "two"},
        {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                             {"from": "gpt", "value": "blue"}]},
        {"image": "https://example.com/x.png", "question": "Q?", "answer": "no"},
    ])
    s = load_samples(data)
    assert [x.answers for x in s] == [["red"], ["red", "Red"], ["blue"], ["no"]]
    assert s[1].id == "two" and s[2].question == "What?"
    assert s[0].image_url.startswith("data:image/png;base64,")
    assert s[3].image_url == "https://example.com/x.png"
    assert len(load_samples(data, limit=2)) == 2


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "Q?", "answer": "x"}, "missing field 'image'"),
        ({"image": "a.png", "answer": "x"}, "missing field 'question'"),
        ({"image": "a.png", "question": "Q?"}, "missing field 'answer'"),
        ({"image": "a.png", "question": "Q?", "answers": []}, "'answers' must be a non-empty list"),
        ({"image": "a.png", "conversations": [{"from": "human", "value": "Q"}]}, "no gpt turn"),
        ("{not json", "invalid JSON"),
        ({"image": "missing.png", "question": "Q?", "answer": "x"}, "cannot read image"),
        ({"image": "bad.png", "question": "Q?", "answer": "x"}, "cannot read image"),
    ],
)
def test_load_samples_errors(tmp_path, record, message):
    _png(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    data = _jsonl(tmp_path / "d.jsonl", [{"image": "a.png", "question": "Q", "answer": "x"}, record])
    with pytest.raises(EvalError, match=message) as info:
        load_samples(data)
    assert f"{data}:2:" in str(info.value) and "\n" not in str(info.value)


def test_load_samples_missing_file(tmp_path):
    with pytest.raises(EvalError, match="data file not found"):
        load_samples(tmp_path / "nope.jsonl")
    with pytest.raises(EvalError, match="no samples"):
        load_samples(_jsonl(tmp_path / "empty.jsonl", []))


# ---------------------------------------------------------------------------------------------------- CLI errors


def _closed_port() -> int:
    from vs_vllm.testing.server import free_port

    return free_port()  # bound then released: nothing listens there


def test_check_server_unreachable():
    with pytest.raises(EvalError, match="cannot reach the server"):
        check_server(f"http://127.0.0.1:{_closed_port()}", "tiny", timeout=2)


def _run_cli(args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vs_vllm", "eval", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_cli_unreachable_server_exits_2(tmp_path):
    _png(tmp_path / "a.png")
    data = _jsonl(tmp_path / "d.jsonl", [{"image": "a.png", "question": "Q?", "answer": "red"}])
    proc = _run_cli(["--base-url", f"http://127.0.0.1:{_closed_port()}", "--model", "tiny", "--data", str(data),
                     "--out-dir", str(tmp_path / "out"), "--no-progress"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vs-vllm eval: error: cannot reach the server"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bad_data_exits_2(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    data = _jsonl(tmp_path / "d.jsonl", [{"image": "bad.png", "question": "Q?", "answer": "red"}])
    proc = _run_cli(["--base-url", "http://127.0.0.1:1", "--model", "tiny", "--data", str(data), "--no-progress"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read image" in lines[0] and "Traceback" not in proc.stderr
