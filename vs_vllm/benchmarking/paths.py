"""How result files name the paths of the machine a run happened on: never as absolute paths.

Results are committed under benchmarks/results/ and read on other machines, where ``/work/main/.venv/bin/vllm`` or
``/tmp/vs-bench-decode-x/server.log`` mean nothing. Every command line, path or log line a report writes goes through
:func:`portable_text`: the interpreter running it is ``python``, other executables of its environment are named bare
(``vllm``), paths in the repository are relative to its root (the directory the benchmarks run from), paths in the temp
directory start with ``$TMPDIR/`` and paths in the home directory with ``~/``.

Plain standard library, so scripts that run without the package installed (benchmarks/gpu/gpu_check.py) can load
this file by its path.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

__all__ = ["ABSOLUTE_PATH", "REPO", "portable_text"]

REPO = Path(__file__).resolve().parents[2]
#: An absolute path under the usual roots of a machine, not inside a longer path or a URL (127.0.0.1:80/tmp/x): what
#: a result file must not contain.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/$-])/(?:work|root|tmp|home|opt|usr|var|mnt|scratch)/[^\s`'\",)]*")


def _rewrites() -> list[tuple[str, str]]:
    """(absolute prefix, replacement), most specific first; a prefix matches only up to a path separator."""
    out = [(sys.executable, "python")]
    out.append((os.path.join(sys.prefix, "bin") + os.sep, ""))
    out.append((str(REPO) + os.sep, ""))
    out.append((str(REPO), "."))
    out.append((tempfile.gettempdir().rstrip(os.sep) + os.sep, "$TMPDIR/"))
    home = str(Path.home())
    if home not in ("", os.sep):
        out.append((home + os.sep, "~/"))
    return out


def portable_text(text: str | os.PathLike[str]) -> str:
    """``text`` (a path, a command line, a log line) with this machine's absolute paths rewritten as above."""
    text = os.fspath(text)
    for prefix, repl in _rewrites():
        # Not inside a longer path: /work/main must not rewrite /work/main2, nor /usr/bin/python3 /usr/bin/python3.11.
        end = r"(?![\w.-])" if not prefix.endswith(os.sep) else ""
        text = re.sub(r"(?<![\w.~/-])" + re.escape(prefix) + end, lambda _m, r=repl: r, text)
    return text
