"""``vs-vllm serve``: the vllm command and environment it builds, passthrough, validation, help (nothing is exec'd)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from vs_vllm import cli
from vs_vllm.vllm_plugin import serve
from vs_vllm.vllm_plugin.serve import MIDDLEWARE, ServeError, build_serve_command

OURS = ["--trust-request-mm-kwargs", "--middleware", MIDDLEWARE]
# our variables reach Ray workers on other nodes; unreachable media URLs are answered 400 (media_connector.py)
RAY = {"VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY": "VS_VLLM_", "VLLM_MEDIA_CONNECTOR": "vs_vllm"}
REAL_IS_CPU_BUILD = serve.is_cpu_build


def after_serve(cmd: list[str]) -> list[str]:
    return cmd[cmd.index("serve") + 1 :]


@pytest.fixture(autouse=True)
def _no_exec(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Never replace the test process; record what would have been exec'd."""
    calls: list[tuple] = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: calls.append((file, list(args), dict(env))))
    monkeypatch.setattr(serve, "is_cpu_build", lambda: False)  # the CPU KV-cache default has its own tests
    for name in ("VS_VLLM_ENABLE", "VS_VLLM_RETENTION_RATIO", "VS_VLLM_VIDEO_RETENTION_RATIO", "VS_VLLM_SELECTION_METHOD",
                 "VS_VLLM_SCORER"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_command_env_and_passthrough_order() -> None:
    argv = ["M", "--retention-ratio", "0.3", "--max-model-len", "2048", "-tp", "2", "--selection-method=uniform"]
    argv += ["--hf-overrides", '{"a": 1}', "--enforce-eager"]
    cmd, env = build_serve_command(argv, environ={"FOO": "bar"})
    assert after_serve(cmd) == [
        "M",
        *["--max-model-len", "2048", "-tp", "2", "--hf-overrides", '{"a": 1}', "--enforce-eager"],
        *OURS,
    ]
    assert env == {
        "FOO": "bar",
        "VS_VLLM_ENABLE": "1",
        "VS_VLLM_RETENTION_RATIO": "0.3",
        "VS_VLLM_SELECTION_METHOD": "uniform",
        **RAY,
    }


def test_program_is_this_environments_vllm() -> None:
    cmd, _ = build_serve_command(["M"], environ={})
    script = Path(sys.executable).parent / "vllm"
    if script.is_file():
        assert cmd[:2] == [str(script), "serve"]
    else:
        assert cmd[:4] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    assert after_serve(cmd) == ["M", *OURS]


def test_defaults_leave_ratio_and_method_to_the_environment() -> None:
    _, env = build_serve_command(["M"], environ={"VS_VLLM_RETENTION_RATIO": "0.5"})
    assert env == {"VS_VLLM_ENABLE": "1", "VS_VLLM_RETENTION_RATIO": "0.5", **RAY}
    _, env = build_serve_command(["M", "--retention-ratio", "1"], environ={"VS_VLLM_RETENTION_RATIO": "0.5"})
    assert env["VS_VLLM_RETENTION_RATIO"] == "1.0"


@pytest.mark.parametrize(
    ("user", "expected_tail"),
    [
        (["--trust-request-mm-kwargs"], ["--trust-request-mm-kwargs", "--middleware", MIDDLEWARE]),
        (["--trust_request_mm_kwargs"], ["--trust_request_mm_kwargs", "--middleware", MIDDLEWARE]),
        (["--middleware", MIDDLEWARE], ["--middleware", MIDDLEWARE, "--trust-request-mm-kwargs"]),
        ([f"--middleware={MIDDLEWARE}"], [f"--middleware={MIDDLEWARE}", "--trust-request-mm-kwargs"]),
        (["--middleware", "other.Mw"], ["--middleware", "other.Mw", *OURS]),
        (["--no-trust-request-mm-kwargs"], ["--no-trust-request-mm-kwargs", "--middleware", MIDDLEWARE]),
    ],
)
def test_flags_are_not_duplicated(user: list[str], expected_tail: list[str]) -> None:
    cmd, _ = build_serve_command(["M", *user], environ={})
    assert after_serve(cmd) == ["M", *expected_tail]


def test_scorer_becomes_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s.safetensors").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    cmd, env = build_serve_command(["--scorer", "s.safetensors", "M"], environ={})
    assert env["VS_VLLM_SCORER"] == str(tmp_path.resolve() / "s.safetensors")
    assert after_serve(cmd) == ["M", *OURS]


@pytest.mark.parametrize(
    ("argv", "environ", "needle"),
    [
        (["M", "--retention-ratio", "0"], {}, "--retention-ratio"),
        (["M", "--retention-ratio", "1.5"], {}, "--retention-ratio"),
        (["M", "--retention-ratio", "nan"], {}, "--retention-ratio"),
        (["M", "--retention-ratio", "abc"], {}, "--retention-ratio"),
        (["M", "--selection-method", "nope"], {}, "--selection-method"),
        (["M", "--video-retention-ratio", "0"], {}, "--video-retention-ratio"),
        (["M", "--video-retention-ratio", "1.01"], {}, "--video-retention-ratio"),
        (["M", "--video-retention-ratio", "inf"], {}, "--video-retention-ratio"),
        (["M", "--video-retention-ratio", "half"], {}, "--video-retention-ratio"),
        (["M", "--scorer", "/no/such/scorer.safetensors"], {}, "--scorer"),
        (["M"], {"VS_VLLM_RETENTION_RATIO": "2"}, "VS_VLLM_RETENTION_RATIO"),
        (["M"], {"VS_VLLM_SELECTION_METHOD": "nope"}, "VS_VLLM_SELECTION_METHOD"),
        (["M"], {"VS_VLLM_VIDEO_RETENTION_RATIO": "-1"}, "VS_VLLM_VIDEO_RETENTION_RATIO"),
        (["M"], {"VS_VLLM_SCORER": "/no/such/file"}, "VS_VLLM_SCORER"),
    ],
)
def test_bad_values_raise_naming_the_option(argv: list[str], environ: dict, needle: str) -> None:
    with pytest.raises(ServeError, match=needle):
        build_serve_command(argv, environ=environ)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--retention-ratio", "0", "M"], "--retention-ratio"),
        (["M", "--retention-ratio", "-0.1", "--max-model-len", "2048"], "--retention-ratio"),
        (["M", "--selection-method", "nope"], "--selection-method"),
        (["M", "--scorer", "missing.safetensors"], "--scorer"),
        ([], "MODEL"),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], _no_exec: list
) -> None:
    assert cli.main(["serve", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("vs-vllm serve: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert needle in err
    assert _no_exec == []


def test_cli_execs_vllm_with_passthrough(_no_exec: list) -> None:
    cli.main(["serve", "M", "--retention-ratio", "0.3", "--max-model-len", "2048", "--scorer", __file__, "-tp", "2"])
    [(file, args, env)] = _no_exec
    assert file == args[0]
    assert after_serve(args) == ["M", "--max-model-len", "2048", "-tp", "2", *OURS]
    assert env["VS_VLLM_ENABLE"] == "1" and env["VS_VLLM_RETENTION_RATIO"] == "0.3"
    assert env["VS_VLLM_SCORER"] == str(Path(__file__).resolve())
    assert env["PATH"] == os.environ["PATH"]  # the rest of the environment is inherited


def test_cli_options_before_model_are_ours(_no_exec: list) -> None:
    cli.main(["serve", "--selection-method", "random", "M", "--max-model-len", "64"])
    [(_, args, env)] = _no_exec
    assert after_serve(args) == ["M", "--max-model-len", "64", *OURS]
    assert env["VS_VLLM_SELECTION_METHOD"] == "random"


def test_print_command(capsys: pytest.CaptureFixture[str], _no_exec: list) -> None:
    assert cli.main(["serve", "M", "--retention-ratio", "0.3", "--print-command", "--max-model-len", "2048"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert _no_exec == []
    script = Path(sys.executable).parent / "vllm"
    program = "vllm" if script.is_file() else "python -m vllm.entrypoints.cli.main"
    assert out == (
        "VS_VLLM_ENABLE=1 VS_VLLM_RETENTION_RATIO=0.3 VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY=VS_VLLM_ "
        f"VLLM_MEDIA_CONNECTOR=vs_vllm {program} serve M --max-model-len 2048 "
        f"--trust-request-mm-kwargs --middleware {MIDDLEWARE}\n"
    )


def test_print_command_quotes_for_the_shell(tmp_path: Path) -> None:
    scorer = tmp_path / "my scorer.safetensors"
    scorer.write_bytes(b"x")
    cmd, env = build_serve_command(["M", "--scorer", str(scorer), "--hf-overrides", '{"a": 1}'], environ={"X": "y"})
    line = serve.format_command(cmd, env)
    assert f"VS_VLLM_SCORER='{scorer.resolve()}'" in line
    assert """--hf-overrides '{"a": 1}'""" in line
    assert "X=y" not in line


def test_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for needle in (
        "--retention-ratio",
        "--selection-method",
        "--scorer",
        "--print-command",
        "retention_ratio",
        "selection_seed",
        "mm_processor_kwargs",
        "curl",
        "extra_body",
        "usage.visual_tokens",
    ):
        assert needle in out, needle


def test_top_level_help_lists_serve(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "serve" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--video-pruning-rate", "0.5"], ["--video-pruning-rate=0.25"],
                                  ["--video_pruning_rate=0.25"]])
def test_vllm_video_pruning_is_refused_naming_both_options(args) -> None:
    with pytest.raises(serve.ServeError) as info:
        serve.build_serve_command(["/models/x", *args], environ={})
    message = str(info.value)
    assert "--video-pruning-rate" in message and "retention" in message and "VS_VLLM_ENABLE" in message


def test_zero_video_pruning_rate_and_scorer_directory_are_accepted(tmp_path) -> None:
    scorer_dir = tmp_path / "scorer"
    scorer_dir.mkdir()
    cmd, env = serve.build_serve_command(["/models/x", "--scorer", str(scorer_dir), "--video-pruning-rate", "0"],
                                         environ={})
    assert env["VS_VLLM_SCORER"] == str(scorer_dir.resolve())
    assert "--video-pruning-rate" in cmd


def test_selection_lambda_default_is_validated_and_exported() -> None:
    _, env = serve.build_serve_command(["/models/x", "--selection-lambda", "0.25"], environ={})
    assert env["VS_VLLM_SELECTION_LAMBDA"] == "0.25"
    for bad in ("1.5", "-1", "nan", "x"):
        with pytest.raises(serve.ServeError, match="--selection-lambda"):
            serve.build_serve_command(["/models/x", "--selection-lambda", bad], environ={})
    with pytest.raises(serve.ServeError, match="VS_VLLM_SELECTION_LAMBDA"):
        serve.build_serve_command(["/models/x"], environ={"VS_VLLM_SELECTION_LAMBDA": "2"})


def test_video_retention_ratio_default_is_validated_and_exported(capsys: pytest.CaptureFixture[str]) -> None:
    cmd, env = serve.build_serve_command(["/models/x", "--video-retention-ratio", "0.2", "--max-model-len", "64"],
                                         environ={})
    assert env == {"VS_VLLM_ENABLE": "1", "VS_VLLM_VIDEO_RETENTION_RATIO": "0.2", **RAY}
    assert after_serve(cmd) == ["/models/x", "--max-model-len", "64", *OURS]
    _, env = serve.build_serve_command(["/models/x", "--video-retention-ratio=1"], environ={})
    assert env["VS_VLLM_VIDEO_RETENTION_RATIO"] == "1.0"
    assert "VS_VLLM_VIDEO_RETENTION_RATIO=0.2 " in serve.format_command(
        *serve.build_serve_command(["/models/x", "--video-retention-ratio", "0.2"], environ={})
    )
    assert serve.main(["/models/x", "--video-retention-ratio", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vs-vllm serve: error: --video-retention-ratio 2: ") and err.count("\n") == 1


def test_video_retention_ratio_is_in_the_serve_parsers_help() -> None:
    text = serve.build_parser().format_help()
    assert "--video-retention-ratio" in text and "VS_VLLM_VIDEO_RETENTION_RATIO" in text


# ---- the CPU build's bounded KV-cache default ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["M"], {}, "4"),  # nothing chosen: a quarter of RAM, at most 4 GiB (this test pretends 64 GiB of RAM)
        (["M", "--kv-cache-memory-bytes", "1000"], {}, None),  # the user's size wins; the env var would override it
        (["M", "--kv_cache_memory_bytes=1000"], {}, None),
        (["M"], {"VLLM_CPU_KVCACHE_SPACE": "2"}, "2"),  # the user's environment wins
    ],
)
def test_cpu_build_gets_a_bounded_kv_cache(monkeypatch, capsys, argv, environ, expected) -> None:
    monkeypatch.setattr(serve, "is_cpu_build", lambda: True)
    monkeypatch.setattr(serve, "cpu_kv_default_gib", lambda: serve.CPU_KV_DEFAULT_MAX_GIB)
    cmd, env = build_serve_command(argv, environ=environ)
    assert env.get("VLLM_CPU_KVCACHE_SPACE") == expected
    note = capsys.readouterr().err
    assert ("VLLM_CPU_KVCACHE_SPACE=4" in note) == (not environ and len(argv) == 1)
    if expected is not None:
        assert f"VLLM_CPU_KVCACHE_SPACE={expected} " in serve.format_command(cmd, env)


def test_gpu_build_is_left_to_vllm() -> None:
    _, env = build_serve_command(["M"], environ={})
    assert "VLLM_CPU_KVCACHE_SPACE" not in env


@pytest.mark.parametrize(("ram_gib", "expected"), [(2, 1), (8, 2), (24, 4), (512, 4)])
def test_cpu_kv_default_is_a_quarter_of_ram_within_1_to_4_gib(ram_gib, expected) -> None:
    assert serve.cpu_kv_default_gib(ram_gib * 2**30) == expected


def test_cpu_build_is_read_from_package_metadata(monkeypatch) -> None:
    import importlib.metadata

    def version(versions):
        def lookup(name):
            if name not in versions:
                raise importlib.metadata.PackageNotFoundError(name)
            return versions[name]
        return lookup

    for versions, expected in [({"vllm-cpu": "0.32.0", "vllm": "0.32.0+cpu"}, True), ({"vllm": "0.32.0+cpu"}, True),
                               ({"vllm": "0.33.0"}, False), ({}, False)]:
        monkeypatch.setattr(importlib.metadata, "version", version(versions))
        assert REAL_IS_CPU_BUILD() is expected


def test_serve_help_documents_the_cpu_kv_default(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "VLLM_CPU_KVCACHE_SPACE" in capsys.readouterr().out


@pytest.mark.parametrize(("given", "expected"), [(None, "VS_VLLM_"), ("MY_", "MY_,VS_VLLM_"),
                                                 ("VS_VLLM_,MY_", "VS_VLLM_,MY_"), (" A_ , ", "A_,VS_VLLM_")])
def test_our_variables_are_copied_to_ray_workers(given, expected) -> None:
    environ = {} if given is None else {"VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY": given}
    _, env = build_serve_command(["M"], environ=environ)
    assert env["VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY"] == expected


def test_media_connector_is_ours_unless_the_environment_names_one() -> None:
    _, env = build_serve_command(["M"], environ={})
    assert env["VLLM_MEDIA_CONNECTOR"] == "vs_vllm"
    _, env = build_serve_command(["M"], environ={"VLLM_MEDIA_CONNECTOR": "my_connector"})
    assert env["VLLM_MEDIA_CONNECTOR"] == "my_connector"


@pytest.mark.parametrize("pp", [["--pipeline-parallel-size", "2"], ["-pp", "2"], ["--pipeline_parallel_size=4"]])
def test_eager_pipeline_parallel_on_the_cpu_build_is_refused_with_the_fix(monkeypatch, pp) -> None:
    monkeypatch.setattr(serve, "is_cpu_build", lambda: True)
    with pytest.raises(serve.ServeError) as info:
        serve.build_serve_command(["/models/x", *pp, "--enforce-eager"], environ={})
    message = str(info.value)
    assert "--pipeline-parallel-size" in message and "Drop --enforce-eager" in message
    assert "TORCHDYNAMO_DISABLE=1" in message


@pytest.mark.parametrize("args", [
    ["--pipeline-parallel-size", "2"],  # not eager: the warm-up allocates the buffers
    ["--pipeline-parallel-size", "1", "--enforce-eager"],
    ["--pipeline-parallel-size", "2", "--enforce-eager", "--no-enforce-eager"],
    ["--tensor-parallel-size", "2", "--enforce-eager"],
])
def test_other_parallel_and_eager_combinations_pass(monkeypatch, args) -> None:
    monkeypatch.setattr(serve, "is_cpu_build", lambda: True)
    cmd, _ = serve.build_serve_command(["/models/x", *args], environ={})
    assert after_serve(cmd)[: 1 + len(args)] == ["/models/x", *args]


def test_eager_pipeline_parallel_on_a_gpu_build_is_left_to_vllm(monkeypatch) -> None:
    monkeypatch.setattr(serve, "is_cpu_build", lambda: False)
    cmd, _ = serve.build_serve_command(["/models/x", "-pp", "2", "--enforce-eager"], environ={})
    assert "--enforce-eager" in cmd


@pytest.mark.parametrize("flag", [["--kv-cache-memory-bytes", "268435456"], ["--kv_cache_memory_bytes=268435456"]])
def test_test_servers_given_a_kv_size_get_that_size_not_the_cpu_env_default(monkeypatch, flag) -> None:
    # On the CPU build VLLM_CPU_KVCACHE_SPACE overrides --kv-cache-memory-bytes: a test server given a size must not
    # inherit cpu_env's 1 GiB default (nor the caller's variable), or every tiny server holds 1 GiB of KV cache.
    from vs_vllm.testing.server import VLLMServer, cpu_env

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert cpu_env()["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert "VLLM_CPU_KVCACHE_SPACE" not in VLLMServer("M", ["--dtype", "float32", *flag], port=1).env
    assert VLLMServer("M", ["--dtype", "float32"], port=1).env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    assert VLLMServer("M", [], port=1).env["VLLM_CPU_KVCACHE_SPACE"] == "1"
