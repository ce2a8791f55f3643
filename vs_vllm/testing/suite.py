"""``make test``: the whole test suite as three pytest processes running side by side.

The suite runs every test on vLLM's V1 model runner and the engine-driving tests (marker ``runner_matrix``) again on
Model Runner V2. Those are three passes, each one ``pytest`` process of its own:

- ``v1-engine``:  ``pytest --runner v1 -m runner_matrix``
- ``mrv2-engine``: ``pytest --runner mrv2 -m runner_matrix``
- ``v1-other``:   ``pytest --runner v1 -m "not runner_matrix"`` (unit, kernel, HF and the other vLLM tests)

so V1 runs every test exactly once and MRv2 every engine test. Run one after another, one pass keeps about one core
of a 2-core machine busy: most of its time goes to starting vLLM servers (three processes that each import vLLM in
turn) and to engines that run on one pinned core with one thread, while the other core idles. Side by side the passes
use both cores. Each pass's vLLM servers get their own core through vLLM's ``VLLM_CPU_OMP_THREADS_BIND``
(``PASS_CORES``; without it every single-worker server on the CPU binds to core 0), unless the caller set that
variable; tests that need two cores (tensor / data / pipeline parallel) set their own binding.

Output: every line of a pass is prefixed with its name; at the end one line per pass gives its exit status and
seconds. The run fails when any pass fails (pytest's "no tests collected", exit 5, counts as a failure).

    python -m vs_vllm.testing.suite [--jobs 1] [--passes v1-engine,mrv2-engine] [-- PYTEST_ARGS...]

``--jobs 1`` runs the passes one after another with vLLM's default binding (for timing one pass alone); fewer than
two usable cores imply it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class TestPass:
    name: str
    runner: str
    marker: str
    #: ``VLLM_CPU_OMP_THREADS_BIND`` of the pass's single-worker vLLM servers when the passes run side by side.
    cores: str

    def argv(self, pytest_args: list[str]) -> list[str]:
        return [sys.executable, "-m", "pytest", "--runner", self.runner, "-m", self.marker, *pytest_args]


#: In start order. The two V1 passes share core 0 (the engine pass's servers are busy, the other pass runs mostly
#: in its own pytest process); Model Runner V2's servers, the heaviest (vLLM's Triton kernels run interpreted), get
#: core 1 alone.
PASSES = (
    TestPass("mrv2-engine", "mrv2", "runner_matrix", "1"),
    TestPass("v1-engine", "v1", "runner_matrix", "0"),
    TestPass("v1-other", "v1", "not runner_matrix", "0"),
)
PASS_NAMES = tuple(p.name for p in PASSES)
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
#: pytest's exit status when it collected no test: a failure here, never a pass.
NO_TESTS_COLLECTED = 5
#: After an interrupt, how long the passes get to stop their servers before they are killed.
STOP_GRACE_S = 60.0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def pass_env(test_pass: TestPass, side_by_side: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one pass: the caller's, plus its servers' core when the passes run side by side (a binding
    the caller set is kept as it is)."""
    env = dict(os.environ if base is None else base)
    if side_by_side and BIND_ENV not in env:
        env[BIND_ENV] = test_pass.cores
    return env


class _Output:
    """Prefixes every line of a pass with its name; one writer at a time."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def write(self, name: str, line: str) -> None:
        with self.lock:
            self.stream.write(f"[{name}] {line}" if line.endswith("\n") else f"[{name}] {line}\n")
            self.stream.flush()

    def copy(self, name: str, pipe) -> None:
        for raw in iter(pipe.readline, b""):
            self.write(name, raw.decode(errors="replace"))
        pipe.close()


def _start(test_pass: TestPass, pytest_args: list[str], side_by_side: bool, out: _Output):
    out.write(test_pass.name, " ".join(test_pass.argv(pytest_args)[1:])
              + (f"  ({BIND_ENV}={pass_env(test_pass, True).get(BIND_ENV)})" if side_by_side else "") + "\n")
    proc = subprocess.Popen(test_pass.argv(pytest_args), env=pass_env(test_pass, side_by_side),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    reader = threading.Thread(target=out.copy, args=(test_pass.name, proc.stdout), daemon=True)
    reader.start()
    return proc, reader, time.monotonic()


def _interrupt(procs: list[subprocess.Popen]) -> None:
    """SIGINT to every running pass (pytest then runs its teardown, which stops its servers by PID); SIGKILL to the
    process groups of those still running after STOP_GRACE_S."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run(passes: tuple[TestPass, ...], pytest_args: list[str], jobs: int, out: _Output | None = None) -> int:
    """Runs ``passes`` (side by side when ``jobs`` > 1); returns the suite's exit status."""
    out = out or _Output()
    side_by_side = jobs > 1 and len(passes) > 1
    results: dict[str, tuple[int, float]] = {}
    running: list = []

    def on_signal(signum, frame):
        _interrupt([proc for _, proc, _, _ in running])
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        queue = list(passes)
        while queue or running:
            while queue and (side_by_side or not running):
                test_pass = queue.pop(0)
                running.append((test_pass, *_start(test_pass, pytest_args, side_by_side, out)))
            for item in list(running):
                test_pass, proc, reader, started = item
                if proc.poll() is not None:
                    reader.join()
                    results[test_pass.name] = (proc.returncode, time.monotonic() - started)
                    running.remove(item)
            time.sleep(0.2)
    except KeyboardInterrupt:
        out.write("make test", "interrupted; the passes were stopped\n")
        return 130
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    status = 0
    for test_pass in passes:
        rc, seconds = results[test_pass.name]
        note = " (pytest collected no tests)" if rc == NO_TESTS_COLLECTED else ""
        out.write("make test", f"{test_pass.name} pass ({test_pass.runner} runner, -m {test_pass.marker!r}): "
                  f"exit {rc}{note} after {seconds:.0f} s\n")
        if rc != 0 and status == 0:
            status = 1 if rc == NO_TESTS_COLLECTED else rc
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vs_vllm.testing.suite",
        description="The whole test suite: the engine tests on V1 and on Model Runner V2, and every other test on V1, "
                    "as three pytest processes side by side (see the module docstring).")
    parser.add_argument("--jobs", type=int, default=None,
                        help="passes at once (default: all of them when at least 2 cores are usable, else 1)")
    parser.add_argument("--passes", default=",".join(PASS_NAMES),
                        help=f"comma-separated subset of {', '.join(PASS_NAMES)} (default: all)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: arguments for every pytest process")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.passes.split(",") if n.strip()]
    unknown = [n for n in names if n not in PASS_NAMES]
    if unknown or not names:
        parser.error(f"--passes {args.passes!r}: unknown pass {', '.join(unknown) or '(none given)'}; "
                     f"known: {', '.join(PASS_NAMES)}")
    jobs = args.jobs if args.jobs is not None else (len(names) if usable_cores() >= 2 else 1)
    if jobs < 1:
        parser.error(f"--jobs {jobs}: must be at least 1")
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    return run(tuple(p for p in PASSES if p.name in names), pytest_args, jobs)


if __name__ == "__main__":
    sys.exit(main())
