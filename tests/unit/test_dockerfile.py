"""docker/Dockerfile: the image serves with the plugin enabled (entry point ``vs-vllm serve``, not the inert
``vllm serve``) and copies what the package needs."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_entry_point_is_vs_vllm_serve() -> None:
    entry = [rest for word, rest in _instructions() if word == "ENTRYPOINT"]
    assert len(entry) == 1 and json.loads(entry[0]) == ["vs-vllm", "serve"]


def test_copied_sources_exist_and_cover_the_package() -> None:
    copied = set()
    for word, rest in _instructions():
        if word == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (REPO / src).exists(), src
                copied.add(src)
    assert {"pyproject.toml", "vs_vllm", "kernels"} <= copied
