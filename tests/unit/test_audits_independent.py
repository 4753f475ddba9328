"""Dependencies point one way: ``audits`` never imports ``secure_fl`` (issue 12).

Not at import time and not lazily inside a function: the empirical re-run receives
what it needs from its caller (:class:`audits.replay.JobReplay`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import audits

AUDITS_DIR = Path(audits.__file__).parent


def _imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            found += [(node.lineno, a.value) for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return found


def test_no_module_of_audits_imports_secure_fl_anywhere() -> None:
    offenders = [
        f"{path.name}:{line} imports {name}"
        for path in sorted(AUDITS_DIR.glob("*.py"))
        for line, name in _imports_of(path)
        if name == "secure_fl" or name.startswith("secure_fl.")
    ]
    assert not offenders, offenders


def test_importing_audits_loads_no_secure_fl_module() -> None:
    code = (
        "import sys, audits, audits.audit, audits.cli, audits.empirical, audits.replay, audits.report\n"
        "bad = sorted(m for m in sys.modules if m == 'secure_fl' or m.startswith('secure_fl.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
