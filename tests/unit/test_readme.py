"""The README against the code it describes: the commands it names exist in the CLI's ``--help``, the ``make``
targets in the Makefile, the files it links in the repository, and its ``tiny-model`` line lists the CLI's
architectures. Drift in any of them fails here instead of misleading a reader."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: A command of the CLI in the README's code; {} is the parent command ("bench ") or "".
COMMAND = r"(?m)(?:^\s*(?:\S*/)?vs-vllm|-m vs_vllm) {}([a-z][a-z0-9-]*)"


def _code(text: str) -> list[str]:
    """The README's code: fenced blocks, then inline spans outside them."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    # An inline span may wrap onto the next line (not across a paragraph): read it as one line.
    return fenced + [" ".join(span.split()) for span in re.findall(r"`((?:[^`\n]|\n(?!\n))+)`", rest)]


def _subcommands(*args: str) -> set[str]:
    """The subcommands ``python -m vs_vllm [args] --help`` lists (argparse puts each at a 4-space indent)."""
    r = subprocess.run([sys.executable, "-m", "vs_vllm", *args, "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60, check=True)
    names = set(re.findall(r"^    ([a-z][a-z0-9-]*)(?:\s|$)", r.stdout, flags=re.M))
    assert names, r.stdout
    return names


def _named(pattern: str, code: list[str]) -> set[str]:
    return {m for span in code for m in re.findall(pattern, span)}


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


def test_every_command_the_readme_names_exists(readme):
    code = _code(readme)
    # Where a command starts: a code line or inline span opening with `vs-vllm SUB` or `.venv/bin/vs-vllm SUB`, and
    # `-m vs_vllm SUB` anywhere (prose inside a code block, "stock vLLM vs vs-vllm prefill", is not a command).
    named = _named(COMMAND.format(""), code)
    commands = _subcommands()
    assert {"serve", "bench"} <= named
    assert named <= commands, f"the README names vs-vllm commands the CLI lacks: {sorted(named - commands)}"
    bench = _named(COMMAND.format("bench "), code)
    benchmarks = _subcommands("bench")
    assert bench and bench <= benchmarks, f"unknown `vs-vllm bench` commands: {sorted(bench - benchmarks)}"


def test_the_command_line_section_lists_every_command(readme):
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^vs-vllm ([a-z][a-z0-9-]*)", section, flags=re.M))
    missing = (_subcommands() - {"bench"}) - listed
    assert not missing, f"commands missing from the README's Command line section: {sorted(missing)}"
    listed_bench = set(re.findall(r"^vs-vllm bench ([a-z][a-z0-9-]*)", section, flags=re.M))
    assert _subcommands("bench") == listed_bench


def test_tiny_model_architectures_match_the_cli(readme):
    from vs_vllm.testing.tiny_models import list_archs

    lines = re.findall(r"^vs-vllm tiny-model .*--arch ([a-z0-9_|]+)", readme, flags=re.M)
    assert lines, "the README's Command line section has no `vs-vllm tiny-model ... --arch a|b` line"
    for line in lines:
        assert sorted(line.split("|")) == list_archs(), f"README: {line}; the CLI: {'|'.join(list_archs())}"


def _make_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?![=:])", line)
        if m:
            targets |= set(m.group(1).split())
    return targets


def test_every_make_target_the_readme_names_exists(readme):
    named = _named(r"\bmake ([a-z][a-z0-9-]*)", _code(readme))
    targets = _make_targets()
    assert {"demo", "test", "test-fast", "gpu-check"} <= named
    assert named <= targets, f"the README names make targets the Makefile lacks: {sorted(named - targets)}"


def test_every_relative_link_exists(readme):
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", readme)
    local = [link.split("#", 1)[0] for link in links if not re.match(r"[a-z][a-z0-9+.-]*:|#", link)]
    assert local, "no relative links found: the pattern no longer matches the README"
    missing = [link for link in local if not (README.parent / link).exists()]
    assert not missing, f"the README links files that do not exist: {missing}"
