"""Shared test setup: offline environment, Triton interpreter on CPU, the vLLM model runner under test, tiny models and
the vLLM servers shared by a session.

``--runner v1|mrv2`` (or ``VS_VLLM_TEST_RUNNER``) picks the vLLM model runner every engine of the session runs:
vLLM's own switch ``VLLM_USE_V2_MODEL_RUNNER`` is set to 0 or 1 for the session and every process it starts, and every
shared server is checked to run that runner (its log says "Using V2 Model Runner" exactly when MRv2 runs). On this
CPU build, MRv2 runs through the test-bed shim that ``make setup`` installs (``vs_vllm/envsetup/mrv2_testbed.py``).
``make test`` runs the whole suite on V1, then every test marked ``runner_matrix`` again on MRv2.
"""

from __future__ import annotations

import os

# Before anything imports triton: on a machine without CUDA the kernels run in Triton's interpreter. @triton.jit picks
# interpreter vs compiler when the decorator runs, so this cannot be set later.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Strict kernels: an automatic Triton call that fails raises instead of falling back to torch, so no test can pass on
# a broken kernel by way of the fallback (tests of the fallback itself unset it).
os.environ.setdefault("VS_VLLM_STRICT_KERNELS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from pathlib import Path

import pytest

RUNNERS = ("v1", "mrv2")
RUNNER_ENV = "VS_VLLM_TEST_RUNNER"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runner", choices=RUNNERS, default=os.environ.get(RUNNER_ENV, "v1"),
        help=f"vLLM model runner for every engine of the session (default: ${RUNNER_ENV} or v1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    runner = config.getoption("--runner")
    # Every vLLM process the session starts inherits vLLM's own switch, so stock `vllm serve`, `vs-vllm serve` and
    # in-process engines all run the runner under test.
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if runner == "mrv2" else "0"
    os.environ[RUNNER_ENV] = runner
    if runner == "mrv2":
        # Child processes get the test bed from its .pth line at start-up; this process started before the switch.
        from vs_vllm.envsetup.mrv2_testbed import install

        install()


def pytest_report_header(config: pytest.Config) -> str:
    return f"vLLM model runner: {config.getoption('--runner')} (VLLM_USE_V2_MODEL_RUNNER={os.environ['VLLM_USE_V2_MODEL_RUNNER']})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    runner = config.getoption("--runner")
    for item in items:
        only = item.get_closest_marker("runner_only")
        if only is not None and runner not in only.args:
            item.add_marker(pytest.mark.skip(reason=f"runs only on the {'/'.join(only.args)} runner: {only.kwargs.get('why', '')}"))


@pytest.fixture(scope="session")
def vllm_runner(pytestconfig: pytest.Config) -> str:
    """The vLLM model runner of this session: "v1" or "mrv2"."""
    return pytestconfig.getoption("--runner")


def check_runner(server, runner: str | None = None):
    """``server`` (started) runs the session's model runner, by vLLM's own log line; returns the server."""
    runner = runner or os.environ[RUNNER_ENV]
    ran = server.model_runner()
    assert ran == runner, f"server on port {server.port} runs the {ran} runner, the session tests {runner}"
    return server


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny Qwen2.5-VL (seed 0), built once per test session."""
    from vs_vllm.testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2_5_vl"), arch="qwen2_5_vl", seed=0)


#: The session-wide servers of the tiny Qwen2.5-VL by fixture name. ``served_arch`` stops them while it serves another
#: architecture (so a pass never holds five tiny servers at once: ``make test`` runs its passes side by side on a
#: 24 GiB machine); :func:`pytest_runtest_setup` starts them again, on a fresh port, for the next test that uses them.
_SHARED_SERVERS: dict = {}


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real ``vllm serve`` of the tiny model on a free loopback port, shared by the whole session.

    Started on first use, stopped by PID at session end (also when tests fail).
    """
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    server = VLLMServer(tiny_model_dir, tiny_serve_args(max_images=4, max_videos=2), log_path=log)
    check_runner(server.start())
    _SHARED_SERVERS["vllm_server"] = server
    try:
        yield server
    finally:
        _SHARED_SERVERS.pop("vllm_server", None)
        server.stop()


@pytest.fixture(scope="session")
def scorer_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scorer with non-trivial weights for the tiny model (the 1e-4 init would score every token ~0)."""
    import json

    import torch

    from vs_vllm.selection.checkpoint import save_scorer
    from vs_vllm.selection.scorer import TransformerScorer

    hidden = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]["hidden_size"]
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(4321)
    scorer = TransformerScorer(hidden)
    scorer.reset_parameters(init_std=0.05)
    torch.random.set_rng_state(gen_state)
    path = tmp_path_factory.mktemp("scorer") / "scorer.safetensors"
    save_scorer(scorer, path)
    return path


@pytest.fixture(scope="session")
def start_plugin_server(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``start(model_dir, scorer=..., extra_args=...)`` runs ``vs-vllm serve`` (plugin enabled, request
    middleware on) on a free loopback port; every server it started is stopped by PID at session end."""
    import sys

    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    started = []

    def start(model_dir: Path, *, scorer: Path | None, extra_args=()):
        args = [*tiny_serve_args(max_images=4, max_videos=2), *extra_args]
        if scorer is not None:
            args = ["--scorer", str(scorer), *args]
        server = VLLMServer(
            model_dir, args, log_path=tmp_path_factory.mktemp("vs-vllm-serve") / "server.log",
            command=[sys.executable, "-m", "vs_vllm", "serve"],
        )
        started.append(server)
        return check_runner(server.start())

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def plugin_server(tiny_model_dir: Path, scorer_file: Path, start_plugin_server):
    """The tiny model served by ``vs-vllm serve`` with a scorer, default ratio 1.0, prefix caching on."""
    server = start_plugin_server(tiny_model_dir, scorer=scorer_file)
    _SHARED_SERVERS["plugin_server"] = server
    yield server
    _SHARED_SERVERS.pop("plugin_server", None)


@pytest.fixture(scope="session")
def tiny_arch_dir(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_arch_dir(arch)`` -> the tiny model of ``arch`` (seed 0), built once per test session."""
    from vs_vllm.testing.tiny_models import build_tiny_model

    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch, seed=0)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tiny_arch_dir) -> Path:
    """The default tiny Qwen2-VL (seed 0), built once per test session."""
    return tiny_arch_dir("qwen2_vl")


#: The ``served_arch`` of the running session (for :func:`pytest_runtest_teardown`).
_SERVED_ARCH: list = []

#: ``vs-vllm serve`` arguments of the chunked-prefill server: 48-token prefill chunks, no prefix cache.
CHUNKED_PREFILL_ARGS = ("--max-num-batched-tokens", "48", "--no-enable-prefix-caching")


@pytest.fixture(scope="session")
def served_arch(request: pytest.FixtureRequest, tiny_arch_dir, start_plugin_server, tmp_path_factory):
    """``served_arch(arch)`` -> (model_dir, stock server, plugin server) for each architecture the e2e matrix covers;
    ``served_arch.chunked(arch)`` -> a ``vs-vllm serve`` of it with chunked prefill (``CHUNKED_PREFILL_ARGS``).

    Qwen2.5-VL's stock and plugin servers are the session-wide ones. Any other architecture gets its own stock ``vllm
    serve`` and ``vs-vllm serve`` (with the shared scorer: every tiny model has the same hidden size), one architecture
    at a time: asking for another stops the previous one's servers. The e2e modules parametrize a session-scoped
    ``arch_setup`` by architecture, so pytest runs the image and video tests of one architecture together and each
    server starts once; :func:`pytest_runtest_teardown` stops them as soon as the next test needs none.
    """
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    made: dict[str, tuple] = {}  # arch -> (model_dir, stock, plugin); stopped servers restart on a fresh port
    chunked_made: dict[str, VLLMServer] = {}
    running: list[VLLMServer] = []  # the extra servers of the current architecture
    current: list[str] = []

    def stop_current() -> None:
        while running:
            running.pop().stop()
        current.clear()

    def _run(server: VLLMServer) -> VLLMServer:
        if server.proc is None:
            running.append(server)
            check_runner(server.start())
        return server

    def get(arch: str):
        if current != [arch]:
            stop_current()
            current.append(arch)
        if arch == "qwen2_5_vl":
            served = (request.getfixturevalue("tiny_model_dir"), request.getfixturevalue("vllm_server"),
                      request.getfixturevalue("plugin_server"))
            _restart_shared_servers(("vllm_server", "plugin_server"))
            return served
        for server in _SHARED_SERVERS.values():  # idle while another architecture is served
            server.stop()
        if arch not in made:
            model_dir = tiny_arch_dir(arch)
            stock = VLLMServer(model_dir, tiny_serve_args(max_images=4, max_videos=2),
                               log_path=tmp_path_factory.mktemp(f"vllm-server-{arch}") / "server.log")
            _run(stock)
            made[arch] = (model_dir, stock, start_plugin_server(model_dir, scorer=request.getfixturevalue("scorer_file")))
            running.append(made[arch][2])
        for server in made[arch][1:]:
            _run(server)
        return made[arch]

    def chunked(arch: str):
        model_dir = get(arch)[0]
        if arch not in chunked_made:
            chunked_made[arch] = start_plugin_server(model_dir, scorer=request.getfixturevalue("scorer_file"),
                                                     extra_args=list(CHUNKED_PREFILL_ARGS))
            running.append(chunked_made[arch])
        return _run(chunked_made[arch])

    get.chunked = chunked  # type: ignore[attr-defined]
    get.release = stop_current  # type: ignore[attr-defined]
    _SERVED_ARCH.append(get)
    try:
        yield get
    finally:
        _SERVED_ARCH.remove(get)
        stop_current()


def _restart_shared_servers(names) -> None:
    for name in names:
        server = _SHARED_SERVERS.get(name)
        if server is not None and server.proc is None:
            check_runner(server.start())


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test finds the session-wide servers it uses running (``served_arch`` stops them while it serves another
    architecture), and a test of one architecture finds that architecture's servers running, even where pytest's
    grouping of the session-scoped ``arch_setup`` parameter did not keep its tests together (the cached value's servers
    restart)."""
    _restart_shared_servers(name for name in _SHARED_SERVERS if name in item.fixturenames)
    arch = getattr(item, "callspec", None) and item.callspec.params.get("arch_setup")
    if _SERVED_ARCH and isinstance(arch, str):
        _SERVED_ARCH[-1](arch)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the per-architecture servers once the next test does not use them, so they never run beside the servers
    of the modules that follow on the 2-core, 24 GiB CI machine."""
    if _SERVED_ARCH and (nextitem is None or "served_arch" not in nextitem.fixturenames):
        _SERVED_ARCH[-1].release()
