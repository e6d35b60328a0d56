"""`pivot ingest` as the bulk path for history (issue #14): the input is streamed (files, FHS/BHS
batches, MLLP captures, standard input) and split exactly as a whole read would split it; with
``--jobs N`` the pure steps (decode → map + validate) run in worker processes while identity, dedupe
and the durable commit stay in the ingest process, in order: the store, the dead letters and the
summary equal those of a ``--jobs 1`` run."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import connectors.files as files
from connectors.ahead import AheadPool
from connectors.files import stream_messages
from gateway.hl7v2.batch import split_messages
from gateway.samples import er_message
from gateway.simulate import simulate
from tests.scale_helpers import canonical

ROOT = Path(__file__).resolve().parents[1]


def _msg(cid: str) -> bytes:
    return (f"MSH|^~\\&|ADT|HSA|PIVOT|CSSS|202601010800||ADT^A04|{cid}|P|2.5\r"
            f"PID|1||{cid}^^^HSA^MR||Tremblay^Marie\r").encode()


def _shapes() -> list[bytes]:
    a, b, c = _msg("C1"), _msg("C2"), _msg("C3")
    return [
        a + b + c,
        a.replace(b"\r", b"\r\n") + b.replace(b"\r", b"\n") + c,
        b"FHS|^~\\&\rBHS|^~\\&\r" + a + b + b"BTS|2\rBHS|^~\\&\r" + c + b"BTS|1\rFTS|2\r",
        b"\xef\xbb\xbf" + a + b"\xef\xbb\xbf" + b + b"HELLO\r" + c + b"BTS|1\rZZZ|stray\r",
        b"\x0b" + a + b"\x1c\r\x0b" + b + b"\x1c\r" + c + b"\x0b" + a[:30],  # frames, then plain, then a cut frame
        b"junk\r\x0b" + a + b"\x1c" + b + b + b"\x1c\rMSHX|not a boundary\r" + c,
        a + b"MSHX|1\r" + b,
    ]


@pytest.mark.parametrize("chunk", [1, 3, 17, 64, 1 << 20])
@pytest.mark.parametrize("shape", range(len(_shapes())))
def test_streamed_split_equals_the_whole_read_split(shape: int, chunk: int) -> None:
    data = _shapes()[shape]
    assert list(stream_messages(io.BytesIO(data), chunk)) == split_messages(data)


def _feed(path: Path) -> list[bytes]:
    """Site-only records, NAMs coming later by A08, A40 merges, cancellations (gateway.simulate), a
    resend, a message that is not HL7 and one with no PID: refused, dead letters."""
    start = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(days=6)
    raws = [raw for _at, raw in simulate(sites=3, people=14, days=3, seed=5, frequent=0.3, start=start).messages]
    assert any(b"|ADT^A40" in r for r in raws)
    assert any(b"|ADT^A08" in r for r in raws)
    raws.insert(len(raws) // 2, raws[3])  # a resend: a duplicate, nothing changes
    raws.insert(0, b"NOT HL7 AT ALL\r")  # before the first MSH: its own item (later, a segment of the one before)
    raws.insert(len(raws) - 4, er_message(1).split(b"\rPID")[0] + b"\r")  # no PID: AE, dead letter
    path.write_bytes(b"".join(r + b"\n" for r in raws))
    return raws


def _ingest(monkeypatch: pytest.MonkeyPatch, data: Path, feed: Path, jobs: int, capsys: Any) -> str:
    from gateway.cli import main

    monkeypatch.setenv("PIVOT_DATA_DIR", str(data))
    assert main(["ingest", "--no-progress", "--wait", "--jobs", str(jobs), str(feed)]) == 1  # refusals: exit 1
    out: str = capsys.readouterr().out
    return out.strip().splitlines()[-1]


def _fetch(client: TestClient, rtype: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    url: str | None = f"/fhir/{rtype}?_count=500"
    while url:
        bundle = client.get(url).json()
        out.update({e["resource"]["id"]: canonical(e["resource"]) for e in bundle.get("entry", [])
                    if e.get("search", {}).get("mode", "match") == "match"})
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return out


def _state(data: Path) -> dict[str, Any]:
    """Patients and Encounters at /fhir, and the dead letters (stage, codes, sender, MSH-10, reason, raw)."""
    from gateway.app import Gateway, create_app
    from gateway.deadletters import list_deadletters
    from gateway.settings import load_settings

    gateway = Gateway(load_settings(data_dir=data, workers=False))
    try:
        client = TestClient(create_app(gateway), raise_server_exceptions=False)
        return {"Patient": _fetch(client, "Patient"), "Encounter": _fetch(client, "Encounter"),
                "dead": [(d.stage, d.code, d.hl7_code, d.sender, d.control_id, d.reason, d.raw)
                         for d in list_deadletters(gateway)]}
    finally:
        gateway.close()


def test_ingest_with_a_pool_gives_what_one_process_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The same feed, streamed in small chunks and in batches smaller than it: `--jobs 2` (its pool
    used: every batch through it) and `--jobs 1` give the same Patients, Encounters, dead letters and summary."""
    feed = tmp_path / "feed.hl7"
    raws = _feed(feed)
    monkeypatch.setattr(files, "BATCH", 16)
    monkeypatch.setattr(files, "CHUNK", 4096)
    batches: list[int] = []
    real_ordered = AheadPool.ordered

    def counted(self: AheadPool, items: Any) -> Iterator[Any]:
        for done, ahead in real_ordered(self, items):
            assert len(done) == len(ahead)
            batches.append(len(done))
            yield done, ahead

    monkeypatch.setattr(AheadPool, "ordered", counted)
    pooled = _ingest(monkeypatch, tmp_path / "pooled", feed, 2, capsys)
    assert sum(batches) == len(raws)  # every message through the pool, in batches of 16
    assert len(batches) == -(-len(raws) // 16)
    single = _ingest(monkeypatch, tmp_path / "single", feed, 1, capsys)
    assert sum(batches) == len(raws)  # no pool for --jobs 1
    assert pooled == single
    assert f"{len(raws)} message(s): {len(raws) - 3} accepted, 2 refused, 1 duplicate(s)" in pooled
    a, b = _state(tmp_path / "pooled"), _state(tmp_path / "single")
    assert len(a["Patient"]) > 5
    assert len(a["Encounter"]) > 5
    assert any(p.get("active") is False for p in a["Patient"].values())  # an A40's retired record
    assert [d[:5] for d in a["dead"]] == [("parse", "1200", "100", "unknown", ""),
                                          ("structure", "1410", "100", "URGENCE|CSSS-ARGENTEUIL-HLA", "HLA00000001")]
    assert a == b


def test_ingest_reads_standard_input_through_the_pool(tmp_path: Path) -> None:
    """`… | pivot ingest --jobs 2 -`: streamed from the pipe, more messages than a batch, counted once durable."""
    msgs = [er_message(i) for i in range(files.BATCH + 20)]
    msgs.insert(40, msgs[7])
    env = {**os.environ, "PIVOT_DATA_DIR": str(tmp_path / "data")}
    env.pop("PIVOT_LOG_LEVEL", None)
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "ingest", "--jobs", "2", "-"], cwd=ROOT, env=env,
                          input=b"".join(m + b"\r\n" for m in msgs), capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == (f"1 file(s), {len(msgs)} message(s): {len(msgs) - 1} accepted, "
                                            "0 refused, 1 duplicate(s)")
    assert b"Traceback" not in done.stderr
