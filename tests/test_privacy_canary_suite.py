"""No health data in logs, across the end-to-end suite: the end-to-end modules run once more, in a
child pytest, with canary people (``PIVOT_SAMPLES_CANARY=1``: see gateway/samples.py) and every
gateway at DEBUG (``PIVOT_LOG_LEVEL``, unless a test sets its own); no name, NAM, birth date or
address of anybody they sent appears in any log line or error message.

What is read, all under this test's tmp_path:

- the ``serve.log`` of every ``pivot serve`` the child started (tests/conftest.py: ServeProcess);
- the stderr of every other Python process it started (``pivot ingest``, ``simulate``, ``audit``,
  ``candidates``…, whose output the tests capture and drop): a ``sitecustomize`` on the child's
  PYTHONPATH copies each process's ``sys.stderr`` into a file (stdout is data, not logs: ``pivot
  candidates --csv`` prints names on purpose); the child pytest and the external FHIR server are
  left out;
- every log record of the in-process gateways (``--log-file`` at DEBUG) and the child's own
  stdout/stderr (``-s``: whatever in-process code prints);
- the headers of every record in the embedded event logs: dead-letter reasons and the other
  error texts.

Looked for, case-insensitively: the canary fragments (``Canari…`` names and street, ``Zéph…``
given names, ``CANZ…`` NAMs, 1931 birth dates in the HL7 and FHIR formats) and, for the people
that do not come from the canary feed (``pivot simulate``, the identity scenario), the exact
names, NAMs, birth dates and address lines of every Patient and RelatedPerson in the child's FHIR
stores, raw and as JSON or bytes escapes would write them. The test also checks that the canaries
did flow: in the raw HL7v2 of the event logs and as Patients in the stores of most modules.

Modules: see MODULES; the child run takes about 100 s on two cores. When this test is selected, the
tests of MODULES are not run a second time in the session itself (tests/canary_plugin.py): this test
is where they run, and a failure of any of them fails it, named. Left out, and why:

- test_defisante_kafka.py (≈20 s): Défi Santé over Kafka is the union of test_defisante_serve
  (alerts, CLI) and test_e2e_kafka (two instances on Kafka); its feed is not the canary feed;
- test_faults.py's Kafka test (≈22 s, mostly waiting for a broker to stop and start again): the
  disk-full test takes the same refusal path (AR, the reason kept) on the embedded log;
- test_defisante_inprocess.py (≈35 s) and test_console_api.py (≈12 s): in-process, a simulated
  year through the intake, the same people as test_defisante_serve;
- test_faults_stress.py and test_fuzz_storm.py (≈100 s and ≈75 s: stress budgets of their own; the
  storm asserts itself that nothing reaches the logs at ERROR level); test_subscriptions*.py and
  test_audit_alerts.py: in-process, their own resources, not the canary feed;
- test_mllp.py, test_connectors_contract.py, test_security_mllp_tls.py: no gateway behind the
  listener (a recording receiver); test_compose_stack.py: needs Docker.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from gateway.samples import CANARY_BIRTH_YEAR, CANARY_ENV, CANARY_NAM_PREFIX, person

ROOT = Path(__file__).resolve().parents[1]
NAM_SYSTEM = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-patient-healthcare-id"

MODULES = (
    "tests/test_e2e_embedded.py",      # pivot serve: MLLP and HTTP, enhanced ACKs, every kind of bad input
    "tests/test_e2e_kafka.py",         # two pivot serve on Kafka, one killed
    "tests/test_crash_recovery.py",    # 2,000 messages, SIGKILL, restart
    "tests/test_security_serve.py",    # auth refusals, the sender allow-list (AR), pivot audit
    "tests/test_privacy_logs.py",      # broken canaries: impossible date, no PID
    "tests/test_defisante_serve.py",   # pivot simulate | pivot ingest, candidates, enrollment, alert, restart
    "tests/test_pipeline_inprocess.py",  # dead letters: list, replay, show
    "tests/test_faults.py::test_disk_full_gives_ar_and_recovers_when_space_returns",  # AR, and why
    "tests/test_listener_process.py",  # the MLLP listener process: serves, dies with the gateway, restarts
    "tests/test_identity_scenario.py",  # one person across sites, merges, delivery to an external server
    "tests/test_pharmacy_pipeline.py",  # ER registration then pharmacy dispenses by NAM, dead letters
)
# tests that may skip where their broker or server is not installed (they skip in the main run too)
ALLOWED_SKIP = re.compile(r"not installed|not found")

# every canary name and street, NAM and birth date, also when a JSON or bytes repr escapes the é
CANARY = re.compile("|".join([
    r"canari",
    r"z(?:é|e|\\u00e9|\\xc3\\xa9|\\xe9)ph[iy]r",
    rf"{CANARY_NAM_PREFIX}\W?\d",
    rf"(?<!\d){CANARY_BIRTH_YEAR}(?:\d{{4}}|-\d\d-\d\d)(?!\d)",
]), re.IGNORECASE)

# DEBUG and INFO records of the client libraries in the child's own process: the tests' HTTP
# requests (a search by NAM has it in the URL) and Kafka consumers (kafka-python dumps the bytes it
# receives at DEBUG). `pivot` keeps these loggers at WARNING (gateway/cli.py: setup_logging,
# gateway/eventlog/kafka.py), and the serve logs, where the gateway's own clients write, are read whole.
CLIENT_LOGGERS = re.compile(r"(?:DEBUG|INFO)\s+(?:httpx|httpcore|hpack|urllib3|kafka)[.:\s]")

SITE_CUSTOMIZE = '''\
"""Written by tests/test_privacy_canary_suite.py: copy this process's stderr to a file."""
import os
import sys
import time

_DIR = os.environ.get("PIVOT_CANARY_STDERR_DIR")
_ARGV = list(getattr(sys, "orig_argv", sys.argv))
_SKIP = "pytest" in _ARGV[1:3] or any(os.path.basename(a) == "sekmet" for a in _ARGV[:2])


class _Tee:
    def __init__(self, stream, copy):
        self._stream, self._copy = stream, copy

    def write(self, text):
        try:
            self._copy.write(text)
            self._copy.flush()
        except Exception:
            pass
        return self._stream.write(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


if _DIR and sys.stderr is not None and not _SKIP:
    _copy = open(os.path.join(_DIR, f"{os.getpid()}-{time.time_ns()}.txt"), "a", encoding="utf-8",
                 errors="backslashreplace")
    _copy.write(" ".join(_ARGV) + "\\n")
    _copy.flush()
    sys.stderr = _Tee(sys.stderr, _copy)
'''


def _variants(value: str) -> set[str]:
    """How a value may be written in a log: as is, without accents, JSON-escaped, as bytes repr."""
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return {value, folded, json.dumps(value)[1:-1], repr(value.encode())[2:-1]}


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _resources(base: Path, *rtypes: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The current versions of ``rtypes`` in every embedded FHIR store the child left behind."""
    marks = ",".join("?" * len(rtypes))
    for db in sorted(base.rglob("fhir.sqlite")):
        conn = sqlite3.connect(db, timeout=30)
        try:
            rows = conn.execute(
                "SELECT v.body FROM resources r JOIN versions v ON v.rk = r.rk AND v.version = r.version "
                f"WHERE r.rtype IN ({marks}) AND r.deleted = 0 AND v.body IS NOT NULL", rtypes).fetchall()
        finally:
            conn.close()
        for (body,) in rows:
            yield db, json.loads(body)


def _person_values(resource: dict[str, Any]) -> Iterator[str]:
    for name in resource.get("name") or []:
        yield name.get("family", "")
        yield from name.get("given") or []
    for ident in resource.get("identifier") or []:
        if ident.get("system") == NAM_SYSTEM:
            yield ident.get("value", "")
    if birth := resource.get("birthDate"):
        yield birth
        yield birth.replace("-", "")
    for address in resource.get("address") or []:
        yield from address.get("line") or []


def _needles(base: Path) -> list[str]:
    """Exact values of every person in the stores that the canary pattern would not catch."""
    values = {v for _db, res in _resources(base, "Patient", "RelatedPerson") for v in _person_values(res)}
    return sorted({n for v in values if len(v) >= 3 and not CANARY.search(v) for n in _variants(v)})


def _hits(name: str, text: str, needles: list[str]) -> list[str]:
    """Canary fragments and exact values (as whole words, any case) found in ``text``."""
    words = set(re.findall(r"\w+", text.lower()))
    spans = [m.span() for m in CANARY.finditer(text)]
    for needle in needles:  # a set of words first: a regex of thousands of alternatives is too slow
        if all(w in words for w in re.findall(r"\w+", needle.lower())):
            spans += [m.span() for m in re.finditer(rf"(?<!\w){re.escape(needle)}(?!\w)", text, re.IGNORECASE)]
    return [f"{name}: {text[a:b]!r} in …{text[max(0, a - 80) : b + 80]!r}…" for a, b in sorted(spans)]


def _headers(base: Path) -> Iterator[tuple[str, str]]:
    """The headers of every record of every embedded event log (dead-letter reasons among them)."""
    for db in sorted(base.rglob("log.sqlite")):
        rows = _rows(db, "SELECT topic, headers FROM records")
        yield f"headers in {db.relative_to(base)}", "\n".join(
            f"{topic} {json.dumps(json.loads(headers), ensure_ascii=False)}" for topic, headers in rows)


def _logs(base: Path, stderr_dir: Path, log_file: Path, out: str, err: str) -> Iterable[tuple[str, str]]:
    yield "child stdout", out
    yield "child stderr", err
    records = log_file.read_text(errors="backslashreplace").splitlines()
    yield "child --log-file", "\n".join(r for r in records if not CLIENT_LOGGERS.match(r))
    for path in sorted(base.rglob("serve.log")):
        yield str(path.relative_to(base)), path.read_text(errors="backslashreplace")
    for path in sorted(stderr_dir.iterdir()):
        yield f"stderr of {path.read_text(errors='backslashreplace').split(chr(10), 1)[0]}", path.read_text(
            errors="backslashreplace")


def _junit(path: Path) -> tuple[int, list[str], list[str]]:
    """(tests run, failures and errors, skips with a reason not in ALLOWED_SKIP) of the child run."""
    tree = ElementTree.parse(path)  # the child pytest's own report
    total, failed, skipped = 0, [], []
    for case in tree.iter("testcase"):
        total += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        skip = case.find("skipped")
        if skip is not None and not ALLOWED_SKIP.search(skip.get("message", "")):
            skipped.append(f"{name}: {skip.get('message')}")
    return total, failed, skipped


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_end_to_end_suite_on_canary_people_leaks_nothing_into_logs(tmp_path: Path) -> None:
    base, stderr_dir, site = tmp_path / "child", tmp_path / "stderr", tmp_path / "site"
    for d in (stderr_dir, site, tmp_path / "tmp"):
        d.mkdir()
    (site / "sitecustomize.py").write_text(SITE_CUSTOMIZE)
    log_file, junit = tmp_path / "child-log.txt", tmp_path / "child-junit.xml"
    env = {**os.environ, CANARY_ENV: "1", "PIVOT_LOG_LEVEL": "DEBUG", "PIVOT_CANARY_STDERR_DIR": str(stderr_dir),
           "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
           "TMPDIR": str(tmp_path / "tmp")}
    env.pop("PYTEST_ADDOPTS", None)
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", f"--basetemp={base}",
         f"--log-file={log_file}", "--log-file-level=DEBUG",
         "-o", "log_file_format=%(levelname)s %(name)s %(message)s", f"--junitxml={junit}", "-rfEs", *MODULES],
        cwd=ROOT, env=env, capture_output=True, timeout=840, check=False)
    elapsed = time.monotonic() - started
    out, err = child.stdout.decode(errors="backslashreplace"), child.stderr.decode(errors="backslashreplace")
    total, failed, skipped = _junit(junit) if junit.exists() else (0, [], [])
    # the end-to-end tests run here only (tests/canary_plugin.py): a failure of theirs is named
    assert not failed, f"end-to-end tests failed in the canary run: {failed}\n{out[-6000:]}\n{err[-3000:]}"
    assert child.returncode == 0, f"child run failed:\n{out[-6000:]}\n{err[-3000:]}"
    assert not skipped, f"end-to-end tests skipped in the child run: {skipped}"
    assert total >= 20, out[-2000:]

    _check_flow_and_logs(tmp_path, out, err, elapsed)


def _check_flow_and_logs(tmp_path: Path, out: str, err: str, elapsed: float) -> None:
    base, stderr_dir, log_file = tmp_path / "child", tmp_path / "stderr", tmp_path / "child-log.txt"
    # the canaries flowed: raw HL7v2 into the event logs, Patients into the stores of most modules
    per_log = [int(n) for db in base.rglob("log.sqlite") for (n,) in _rows(
        db, "SELECT count(*) FROM records WHERE topic LIKE '%hl7v2.in' AND instr(value, CAST('Canari' AS BLOB)) > 0")]
    # the crash-recovery stream alone brings ~400 before its SIGKILL; a dozen other gateways a few each
    assert sum(per_log) >= 300, per_log
    assert sum(1 for n in per_log if n) >= 10, per_log
    canary_nams = {person(i, canary=True).nam for i in range(10_000)}
    default_nams = {person(i, canary=False).nam for i in range(10_000)}
    stores: dict[Path, int] = {}
    for db, patient in _resources(base, "Patient"):
        nams = {i["value"] for i in patient.get("identifier") or [] if i.get("system") == NAM_SYSTEM}
        assert not nams & default_nams, f"a default (non-canary) sample person reached {db}: {nams}"
        if nams & canary_nams:
            stores[db] = stores.get(db, 0) + 1
    assert sum(stores.values()) >= 500, stores
    assert len(stores) >= 10, stores

    # the logs are there: every serve process, the CLI subprocesses, the in-process gateways
    logs = list(_logs(base, stderr_dir, log_file, out, err))
    assert sum(name.endswith("serve.log") and "Pivot listening" in text for name, text in logs) >= 8, [
        name for name, _ in logs]
    assert any("gateway.cli ingest" in name for name, _ in logs), [name for name, _ in logs]
    # ~50 KB since `pivot ingest` hands its results over (the serving gateway no longer resolves, and
    # logs, each ingested message a second time; 0.4.0: ~110 KB); a source missing drops it far lower
    assert sum(len(text) for _, text in logs) > 30_000
    assert re.search(r"^INFO\s+pivot\.\w+", logs[2][1], re.MULTILINE), "no in-process gateway log record"

    needles = _needles(base)
    assert len(needles) >= 100, needles  # the people of pivot simulate and of the identity scenario
    leaks = [hit for name, text in [*logs, *_headers(base)] for hit in _hits(name, text, needles)]
    assert not leaks, f"{len(leaks)} leaks (child run {elapsed:.0f} s):\n" + "\n".join(leaks[:40])


def test_the_tests_run_here_are_those_of_modules() -> None:
    """tests/canary_plugin.py deselects from the session exactly the tests MODULES names (run here)."""
    from tests.canary_plugin import rerun_by_canary

    modules = ("tests/test_a.py", "tests/test_b.py::test_one")
    assert rerun_by_canary("tests/test_a.py::test_x", modules)
    assert rerun_by_canary("tests/test_a.py::TestC::test_x[p]", modules)
    assert rerun_by_canary("tests/test_b.py::test_one", modules)
    assert rerun_by_canary("tests/test_b.py::test_one[p1]", modules)
    assert not rerun_by_canary("tests/test_b.py::test_one_more", modules)
    assert not rerun_by_canary("tests/test_b.py::test_two", modules)
    assert not rerun_by_canary("tests/test_ab.py::test_x", modules)
