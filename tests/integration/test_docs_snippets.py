"""Every fenced snippet of README.md, docs/ and examples/*/README.md marked runnable runs.

A snippet is marked by an HTML comment on the line before its fence (invisible on
GitHub): ``<!-- runnable -->`` (run here, so keep its settings small) or
``<!-- runnable: slow -->`` (run only when slow tests are selected). ``bash`` snippets
run line by line in a scratch directory where ``.venv/bin/secure-fl``,
``.venv/bin/python`` and ``secure-fl`` run this checkout; ``python`` snippets run in a
fresh interpreter there; ``toml`` snippets must load with :func:`load_config`.
Every ``python`` block must say whether it runs (``<!-- not runnable: reason -->``
otherwise), so a new example cannot silently drift from the code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from secure_fl.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*/README.md")])
_FENCE = re.compile(r"^```(\w+)?[^\n]*\n(.*?)^```", re.S | re.M)
_MARK = re.compile(r"<!--\s*(runnable(?::\s*slow)?|not runnable:[^>]*)\s*-->\s*$")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    lang: str
    code: str
    mark: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _snippets() -> list[Snippet]:
    out = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = _MARK.search(before)
            out.append(Snippet(path, line, m.group(1) or "", m.group(2), mark.group(1) if mark else None))
    return out


SNIPPETS = _snippets()
RUNNABLE = [s for s in SNIPPETS if s.mark is not None and s.mark.startswith("runnable")]


def _sandbox(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shims = {"python": f'exec "{sys.executable}" "$@"',
             "secure-fl": f'exec "{sys.executable}" -m secure_fl.cli "$@"'}
    for name, body in shims.items():
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        shim.chmod(0o755)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["MPLBACKEND"] = "Agg"
    return env


def test_the_readme_has_runnable_snippets_of_each_kind() -> None:
    kinds = {s.lang for s in RUNNABLE if s.path.name == "README.md" and s.path.parent == ROOT}
    assert {"bash", "python", "toml"} <= kinds


def test_every_python_block_says_whether_it_runs() -> None:
    unmarked = [s.id for s in SNIPPETS if s.lang == "python" and s.mark is None]
    assert not unmarked, f"mark these python blocks runnable or not: {unmarked}"


@pytest.mark.parametrize(
    "snippet",
    [pytest.param(s, id=s.id, marks=[pytest.mark.slow] if "slow" in (s.mark or "") else [])
     for s in RUNNABLE],
)
def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    env = _sandbox(tmp_path)
    if snippet.lang == "toml":
        path = tmp_path / "snippet.toml"
        path.write_text(snippet.code, encoding="utf-8")
        assert load_config(path) is not None
        return
    if snippet.lang == "python":
        cmd = [sys.executable, "-c", snippet.code]
    elif snippet.lang in ("bash", "sh"):
        cmd = ["bash", "-euo", "pipefail", "-c", snippet.code]
    else:
        pytest.fail(f"{snippet.id}: cannot run a {snippet.lang!r} snippet")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{snippet.id} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


#: Statements that were wrong about the code (issue 16 section 8); they must not return.
STALE = [
    ("README.md", "AES-GCM"),
    ("README.md", "reload it to reproduce the run"),
    ("docs/concepts.md", "not yet\n  available"),
    ("docs/concepts.md", "not yet available"),
    ("examples/privacy_tradeoff/README.md", "is wired into the CLI"),
    ("examples/hospitals/README.md", "is available in your build"),
    ("crypto/__init__.py", '"""placeholder"""'),
]


@pytest.mark.parametrize(("name", "phrase"), STALE)
def test_stale_statements_are_gone(name: str, phrase: str) -> None:
    assert phrase not in (ROOT / name).read_text(encoding="utf-8")


def test_readme_states_the_cipher_and_how_to_reproduce() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    from crypto import aead

    assert "ChaCha20-Poly1305" in readme and "ChaCha20Poly1305" in Path(aead.__file__).read_text()
    assert "simulation.reproducible_noise = true" in readme
    concepts = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    assert "d = 4,810 uploads 8,192" in concepts


def test_concepts_padding_figure_matches_the_code() -> None:
    from privacy.rotation import padded_dim

    assert padded_dim(4810) == 8192


def test_nothing_points_outside_the_repository() -> None:
    """No doc, docstring, comment or config names a document beside the repository."""
    import re

    outside = re.compile("|".join(("DESIGN" + r"\.md", "STYLE" + r"\.md", r"\.\./" + "shared", r"\bDESIGN" + " section")))
    skip = {".venv", ".git", "runs", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    offenders = []
    for path in ROOT.rglob("*"):
        if not path.is_file() or path.suffix not in {".py", ".md", ".toml", ".txt", ".cfg"}:
            continue
        if skip & set(path.relative_to(ROOT).parts):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if outside.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not offenders, "references to files outside the repository:\n" + "\n".join(offenders)
