"""Start and stop a real ``vllm serve`` process on loopback (tests, demo, benchmarks).

The server runs in its own process group on a free 127.0.0.1 port, logs to a file, and is always stopped by PID
(SIGTERM to the group, SIGKILL after a grace period), including when the caller fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from vs_vllm.vllm_plugin.serve import CPU_KV_ENV, kv_cache_size_given

#: vLLM's log line when a worker runs Model Runner V2 (``cpu_worker.py`` / ``gpu_worker.py``); V1 logs nothing like it.
MRV2_LOG_LINE = "Using V2 Model Runner"

__all__ = ["MRV2_LOG_LINE", "VLLMServer", "cpu_env", "free_port", "running_server", "tiny_serve_args", "vllm_command"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_command() -> list[str]:
    """The ``vllm`` CLI of the running interpreter's environment."""
    script = Path(sys.executable).with_name("vllm")
    if script.exists():
        return [str(script)]
    found = shutil.which("vllm")
    if found:
        return [found]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def cpu_env(base: Mapping[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """Environment for running vLLM offline on a small CPU machine (see cpu-environment.md §6)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")  # otherwise vLLM picks a non-loopback address for its ZMQ queues
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("VLLM_CACHE_ROOT", os.path.join(tempfile.gettempdir(), "vs_vllm_vllm_cache"))
    # The Triton interpreter is for kernel tests only; vLLM must not inherit it.
    env.pop("TRITON_INTERPRET", None)
    env.update(overrides)
    return env


class VLLMServer:
    """A ``vllm serve MODEL ...`` subprocess. Use as a context manager, or call ``start`` / ``stop``."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 300.0,
        command: Sequence[str] | None = None,
    ) -> None:
        self.model = str(model)
        self.args = list(args)
        self.env = cpu_env(env)
        if kv_cache_size_given(self.args):
            # On the CPU build VLLM_CPU_KVCACHE_SPACE (cpu_env's default: 1 GiB) overrides the size the arguments
            # choose: the arguments win
            self.env.pop(CPU_KV_ENV, None)
        self.host = host
        self.port = port or free_port(host)
        self._port_given = port is not None
        self._starts = 0
        self.startup_timeout = startup_timeout
        self.command = list(command) if command is not None else [*vllm_command(), "serve"]
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        return [*self.command, self.model, "--host", self.host, "--port", str(self.port), *self.args]

    def start(self) -> VLLMServer:
        if self.proc is not None:
            raise RuntimeError("server already started")
        if self._starts and not self._port_given:
            # A restart after stop(): the old port may belong to another process by now
            self.port = free_port(self.host)
        self._starts += 1
        log = open(self.log_path, "wb")
        try:
            # A new session makes the server the leader of its own process group, so stop() reaches its children
            # (EngineCore, workers) too.
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        finally:
            log.close()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def model_runner(self) -> str:
        """The vLLM model runner this (started) server runs, from vLLM's own log line: "mrv2" or "v1"."""
        return "mrv2" if MRV2_LOG_LINE in self.log_path.read_text(errors="replace") else "v1"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def failure_summary(self, chars: int = 3000) -> str:
        """The log's first error lines (the root cause vLLM points back to) and its tail."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in lines if "Error" in line or "error:" in line][:12]
        return "first error lines:\n" + "\n".join(errors) + f"\nlog tail ({self.log_path}):\n" + self.log_tail(chars)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.base_url}/health"
        while time.monotonic() < deadline:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"vllm serve exited with code {code} during start-up; {self.failure_summary()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200 and self._listens_on_port():
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vllm serve not healthy after {self.startup_timeout:.0f} s; {self.failure_summary()}")

    def _listens_on_port(self) -> bool:
        """Whether this server's own processes hold the listening socket on its port: a 200 from /health proves
        nothing while another process (another test session's server) may hold that port."""
        import psutil

        try:
            leader = psutil.Process(self.proc.pid)
            for process in (leader, *leader.children(recursive=True)):
                for conn in process.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == self.port:
                        return True
        except psutil.Error:
            return False
        return False

    def stop(self, grace: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # Children that outlived the leader (they share its process group).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_server(model: str | os.PathLike[str], args: Sequence[str] = (), **kw) -> Iterator[VLLMServer]:
    server = VLLMServer(model, args, **kw)
    with server:
        yield server


def tiny_serve_args(*, max_images: int = 4, max_videos: int = 0, served_model_name: str = "tiny") -> list[str]:
    """``vllm serve`` arguments that fit a tiny model on a 2-core CPU machine (eager, fp32, small KV cache)."""
    return [
        "--served-model-name", served_model_name,
        "--dtype", "float32",
        "--max-model-len", "2048",
        "--max-num-seqs", "8",
        "--enforce-eager",
        "--kv-cache-memory-bytes", str(256 * 1024 * 1024),
        "--limit-mm-per-prompt", f'{{"image": {max_images}, "video": {max_videos}}}',
    ]
