"""``make test``'s driver (vs_vllm/testing/suite.py): which passes it runs, their environment, and that any failing
pass (no tests collected included) fails the suite while every pass still runs to its end. The tests that start
processes (small Python scripts standing in for pytest) are marked slow."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass

import pytest

from vs_vllm.testing import suite


def test_the_passes_cover_v1_whole_and_mrv2_engine_tests_once() -> None:
    by_runner = {(p.runner, p.marker) for p in suite.PASSES}
    assert by_runner == {("v1", "runner_matrix"), ("v1", "not runner_matrix"), ("mrv2", "runner_matrix")}
    assert len(suite.PASSES) == 3
    assert suite.PASSES[0].argv(["-q"])[1:] == ["-m", "pytest", "--runner", "mrv2", "-m", "runner_matrix", "-q"]
    # the two engine passes, the ones that start servers all the time, bind their servers to different cores
    engine = {p.runner: p.cores for p in suite.PASSES if p.marker == "runner_matrix"}
    assert engine["v1"] != engine["mrv2"]


def test_side_by_side_binds_each_pass_to_its_core_unless_the_caller_chose() -> None:
    mrv2 = suite.PASSES[0]
    assert suite.pass_env(mrv2, True, base={"A": "1"}) == {"A": "1", suite.BIND_ENV: mrv2.cores}
    assert suite.pass_env(mrv2, False, base={"A": "1"}) == {"A": "1"}
    assert suite.pass_env(mrv2, True, base={suite.BIND_ENV: "nobind"}) == {suite.BIND_ENV: "nobind"}


@dataclass(frozen=True)
class _ScriptPass(suite.TestPass):
    code: str = ""

    def argv(self, pytest_args: list[str]) -> list[str]:
        return [sys.executable, "-c", self.code, *pytest_args]


def _script(name: str, code: str) -> _ScriptPass:
    return _ScriptPass(name, "v1", "x", "0", code=code)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 3])
def test_a_failing_pass_fails_the_suite_and_the_others_still_run(jobs: int, monkeypatch) -> None:
    monkeypatch.delenv(suite.BIND_ENV, raising=False)
    out = io.StringIO()
    passes = (_script("ok", "import os; print('bind', os.environ.get('VLLM_CPU_OMP_THREADS_BIND'))"),
              _script("bad", "import sys; print('failing'); sys.exit(3)"),
              _script("late", "import time, sys; time.sleep(0.5); print('args', sys.argv[1:])"))
    status = suite.run(passes, ["-q", "--x"], jobs, out=suite._Output(out))
    text = out.getvalue()
    assert status == 3
    assert "[bad] failing" in text and "[late] args ['-q', '--x']" in text
    # side by side, a pass's servers get its core; one after another, vLLM's default binding
    assert ("[ok] bind 0" if jobs > 1 else "[ok] bind None") in text
    for name, rc in (("ok", 0), ("bad", 3), ("late", 0)):
        assert f"[make test] {name} pass" in text and f"exit {rc}" in text.split(f"[make test] {name} pass")[1]


@pytest.mark.slow
def test_no_tests_collected_is_a_failure() -> None:
    out = io.StringIO()
    status = suite.run((_script("empty", "import sys; sys.exit(5)"),), [], 1, out=suite._Output(out))
    assert status == 1
    assert "pytest collected no tests" in out.getvalue()


def test_cli_rejects_an_unknown_pass(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        suite.main(["--passes", "v1-engine,v3"])
    assert exc.value.code == 2
    assert "unknown pass v3" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupt_stops_every_pass(tmp_path) -> None:
    import os
    import signal
    import threading
    import time

    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    out = io.StringIO()
    timer = threading.Timer(2.0, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        status = suite.run((_script("sleeper", code),), [], 1, out=suite._Output(out))
    finally:
        timer.cancel()
    assert status == 130 and time.monotonic() - started < 30
    assert "interrupted" in out.getvalue()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
