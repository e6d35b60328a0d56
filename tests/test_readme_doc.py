"""The README cannot rot: the shell blocks it marks ``<!-- doc-test -->`` run, in order, against a
``pivot serve`` this test starts on free ports with a fresh data directory.

What the test changes, and only that: ``localhost:8080`` → the test gateway's HTTP port;
``--people 5000`` → ``--people 300`` (the same commands over a smaller simulated year); a placeholder
``<ID from pivot deadletter list>`` → the first id that command really prints (the README tells the
reader to do the same). Between two blocks the test waits until the gateway has stored what was
sent (the README says "a moment later"). Each section's blocks run as one ``bash -euo pipefail``
script (so ``ID=…`` carries over, and a failing command or a broken pipe fails the test)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServeProcess

README = ROOT / "README.md"
MARK = "<!-- doc-test -->"
BLOCK = re.compile(r"^" + re.escape(MARK) + r"\n```(?:sh|bash)\n(.*?)^```", re.M | re.S)
PLACEHOLDERS = {
    "'<ID from pivot deadletter list>'":
        "\"$(.venv/bin/pivot deadletter list | grep -oE '[0-9]+:[0-9]+' | head -n 1)\"",
}
SCALE = {"--people 5000": "--people 300"}
WAIT = r"""
__doc_wait() {  # until the gateway's store stops changing (two equal counts a second apart)
  local prev="" now=""
  for _ in $(seq 1 180); do
    now="$(curl -s "$BASE/fhir/Encounter?_summary=count" | grep -o '"total":[0-9]*')"
    now="$now $(curl -s "$BASE/fhir/Communication?_summary=count" | grep -o '"total":[0-9]*')"
    [ "$now" != " " ] && [ "$now" = "$prev" ] && return 0
    prev="$now"; sleep 1
  done
  return 1
}
"""


def sections() -> dict[str, list[str]]:
    """The marked blocks of each ``##``/``###`` section, in README order."""
    out: dict[str, list[str]] = {}
    title = ""
    for part in re.split(r"^(#{2,3} .*)$", README.read_text(encoding="utf-8"), flags=re.M):
        if re.match(r"#{2,3} ", part):
            title = part.strip("# ").strip()
        else:
            out.setdefault(title, []).extend(m.group(1) for m in BLOCK.finditer(part))
    return {k: v for k, v in out.items() if v}


def script(blocks: list[str], base: str) -> str:
    body = "\n__doc_wait\n".join(f'echo "[doc-test] block {n} at $(date +%T)" >&2\n{b}' for n, b in enumerate(blocks))
    for old, new in {**PLACEHOLDERS, **SCALE, "localhost:8080": base.removeprefix("http://")}.items():
        body = body.replace(old, new)
    assert not re.search(r"<[A-Z][^>]* from [^>]*>", body), "a placeholder the test does not know"
    return f"set -euo pipefail\n{WAIT}\n{body}\n__doc_wait\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIVOT_")}
    proc = ServeProcess(tmp_path_factory.mktemp("readme") / "var", env={"PIVOT_LOG_LEVEL": "INFO"})
    proc.env = {**env, **{k: v for k, v in proc.env.items() if k.startswith("PIVOT_")}}
    proc.start(timeout_s=60)
    yield proc
    proc.stop()


def _run(served: ServeProcess, title: str) -> subprocess.CompletedProcess[str]:
    env = {**served.env, "BASE": served.base}
    env.pop("PIVOT_LOG_LEVEL")
    done = subprocess.run(["bash", "-c", script(sections()[title], served.base)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{title}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def test_the_readme_marks_its_runnable_blocks() -> None:
    found = sections()
    assert "Two commands" in found
    assert "Walkthrough (embedded defaults, two terminals)" in found
    assert all("make run" not in block for blocks in found.values() for block in blocks)


def test_the_quick_start_runs(served: ServeProcess) -> None:
    done = _run(served, "Two commands")
    assert "MSA|AA|" in done.stdout
    assert "MSA|AR|" in done.stdout
    assert "0 refused, 1 duplicate(s)" in done.stdout  # explained in the README
    assert "hl7apy (strict)" in done.stdout  # `deadletter show` found the id the list printed


def test_the_walkthrough_runs(served: ServeProcess) -> None:
    done = _run(served, "Walkthrough (embedded defaults, two terminals)")
    out = done.stdout
    Path(os.environ.get("PIVOT_DOC_TEST_OUT", os.devnull)).write_text(out + "\n---\n" + done.stderr)
    assert "Défi Santé candidates:" in out
    assert '"transaction-response"' in out  # the enrollment
    assert "er-arrival" in out  # the alert Communication
    assert re.search(r"cohort: \d+ of \d+ client\(s\) followed >= 90 days", out)
    assert '"resourceType":"AuditEvent"' in out.replace(" ", "")
    assert " INFO " not in done.stderr  # one-shot commands do not chatter
