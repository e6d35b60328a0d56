"""The command line in a pipe and in scripts: a closed reader is not an error, one-shot commands do not
chatter, and every ``pivot …`` the console or the README names exists (``--help`` exits 0)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIVOT = [sys.executable, "-m", "gateway.cli"]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PIVOT_LOG_LEVEL"}
    return {**env, "PIVOT_DATA_DIR": str(data_dir), **extra}


@pytest.mark.parametrize("argv", [["candidates"], ["outcomes"], ["config"], ["deadletter", "list"],
                                  ["simulate", "--people", "200", "--days", "60"]])
def test_a_reader_that_closes_early_is_not_an_error(tmp_path: Path, argv: list[str]) -> None:
    """`pivot candidates | head`: the reader is gone before the first line; exit 0, no traceback."""
    proc = subprocess.Popen([*PIVOT, *argv], cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # a real pipe whose reader went away
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err
    assert "Traceback" not in err
    assert "BrokenPipe" not in err


def test_shell_pipe_into_head_exits_zero(tmp_path: Path) -> None:
    """The same through a shell, as a user types it (pipefail reports pivot's own status)."""
    cmd = f"{sys.executable} -m gateway.cli simulate --people 300 --days 120 | head -n 3 >/dev/null"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_ingest_from_a_pipe_prints_its_summary_only(tmp_path: Path) -> None:
    """`pivot simulate | pivot ingest -`: the summary line, no INFO log lines, no progress bar."""
    cmd = (f"{sys.executable} -m gateway.cli simulate --people 300 --days 365 2>/dev/null | "
           f"{sys.executable} -m gateway.cli ingest --wait -")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    assert re.search(r"\d+ message\(s\): \d+ accepted", done.stdout)
    assert " INFO " not in done.stderr, done.stderr[:2000]
    assert len(done.stderr.splitlines()) < 5, done.stderr[:2000]


def _named_commands() -> set[tuple[str, ...]]:
    """Every `pivot word [word]` written in the console's static files / templates and the README."""
    sources = [ROOT / "README.md", *sorted((ROOT / "gateway" / "console").rglob("*")),
               *sorted((ROOT / "docs").rglob("*.md"))]
    found: set[tuple[str, ...]] = set()
    for path in sources:
        if not path.is_file() or path.suffix not in (".md", ".js", ".json", ".html", ".py"):
            continue
        for m in re.finditer(r"(?<![\w.-])pivot ([a-z][a-z-]+)\b(?!:)(?: ([a-z][a-z-]+))?", path.read_text()):
            found.add(tuple(w for w in m.groups() if w))
    return found


def _real(words: tuple[str, ...]) -> tuple[str, ...]:
    """The part of the words that is a command: `pivot deadletter list` → both; `pivot ingest file` → one."""
    from gateway.cli import _parser

    parser = _parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    sub = subs.choices.get(words[0])  # type: ignore[attr-defined]
    if sub is None or len(words) == 1:
        return words[:1]
    inner = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
    return words if inner and words[1] in inner[0].choices else words[:1]


def test_the_named_commands_include_the_ones_users_are_told_to_run() -> None:
    named = _named_commands()
    assert ("deadletter", "replay") in named  # the console's feed-health help
    assert ("candidates",) in named or any(w[0] == "candidates" for w in named)


def test_every_command_the_console_or_readme_names_exists() -> None:
    """`pivot deadletters replay` (with an s) once sat in the console's help: it must fail here."""
    words = sorted({_real(w) for w in _named_commands()})
    assert words
    from gateway.cli import main

    failures = []
    for command in words:
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        if exited.value.code != 0:
            failures.append(" ".join(command))
    assert not failures, failures
