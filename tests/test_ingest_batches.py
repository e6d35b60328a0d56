"""`pivot ingest` as a bulk path: messages go to the intake in batches (one durable commit each when
the intake takes batches), the summary counts what each reply says, and the intake's mapping results
are handed over so the mapping worker of the gateway serving the data dir does not map them again."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from connectors.base import Origin, Reply
from connectors.files import BATCH, ingest_files
from gateway.errors import GatewayError
from gateway.hl7v2 import parse
from gateway.samples import er_message


class _Receiver:
    """Answers AA, a duplicate for a control id seen before, AR for a control id ending in 7."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.peers: list[str] = []

    def receive(self, raw: bytes, origin: Origin) -> Reply:
        self.peers.append(origin.peer)
        control_id = parse(raw).control_id
        if control_id.endswith("7"):
            return Reply(code="AR", control_id=control_id, error="refused")
        duplicate = raw in self.seen
        self.seen.add(raw)
        return Reply(code="AA", control_id=control_id, duplicate=duplicate)

    def refuse(self, head: bytes, error: GatewayError, origin: Origin) -> Reply:
        raise AssertionError("not a framed transport")


class _BatchReceiver(_Receiver):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def receive_many(self, items: Sequence[tuple[bytes, Origin]]) -> list[Reply]:
        self.batches.append(len(items))
        return [self.receive(raw, origin) for raw, origin in items]


def _feed(tmp_path: Path, msgs: list[bytes]) -> Path:
    path = tmp_path / "feed.hl7"
    path.write_bytes(b"".join(m + b"\r\n" for m in msgs))
    return path


@pytest.mark.parametrize("receiver_type", [_BatchReceiver, _Receiver])
def test_ingest_feeds_batches_in_file_order_and_counts_each_reply(tmp_path: Path, receiver_type: type) -> None:
    msgs = [er_message(i) for i in range(BATCH + 40)]
    msgs.insert(10, msgs[3])  # a resend: a duplicate
    receiver = receiver_type()
    summary = ingest_files([_feed(tmp_path, msgs)], receiver, progress=False, print_summary=False)
    assert receiver.peers == [f"feed.hl7#{n}" for n in range(1, len(msgs) + 1)]
    refused = sum(1 for m in msgs if parse(m).control_id.endswith("7"))
    assert (summary.accepted, summary.duplicates, summary.refused) == (len(msgs) - refused - 1, 1, refused)
    assert summary.codes == {"AA": len(msgs) - refused, "AR": refused}
    if isinstance(receiver, _BatchReceiver):  # one receive_many (one commit) per batch, not per message
        assert receiver.batches == [BATCH, len(msgs) - BATCH]


def test_ingest_hands_its_mapping_results_over_to_the_serving_gateway(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`pivot ingest` beside a running gateway: each accepted message's result is in the handoff, so the
    serving gateway's mapping worker takes it instead of parsing, mapping and resolving it again."""
    from gateway.app import Gateway
    from gateway.cli import main
    from gateway.settings import load_settings

    monkeypatch.setenv("PIVOT_DATA_DIR", str(tmp_path / "data"))
    msgs = [er_message(i) for i in range(5)]
    assert main(["ingest", "--no-progress", str(_feed(tmp_path, msgs))]) == 0
    serving = Gateway(load_settings(), listener_process=True)  # what `pivot serve` builds (embedded defaults)
    try:
        for raw in msgs:
            msg = parse(raw)
            result = serving.cache.pop(f"{msg.sender}|{msg.control_id}")
            assert result is not None
            assert result.patient_id
    finally:
        serving.close()


def test_the_intake_commits_a_batch_once_and_marks_duplicates_after_the_commit(tmp_path: Path) -> None:
    """The real intake: one append_many per batch (one fsync), a resend inside the batch still a
    duplicate, a refusal a dead letter of the same commit; a failed commit answers AR, transient, to
    every message and leaves nothing marked seen (the sender's resend will be taken)."""
    from gateway.app import Gateway
    from gateway.errors import PublishError
    from gateway.settings import load_settings

    gateway = Gateway(load_settings(data_dir=tmp_path / "var", workers=False))
    calls: list[int] = []
    real_append_many, real_append = gateway.log.append_many, gateway.log.append

    def counting(records: Sequence[object]) -> None:
        calls.append(len(records))
        real_append_many(records)  # type: ignore[arg-type]

    singles: list[object] = []

    def forbidden(record: object) -> None:  # the test thread's single appends (the audit drains on its own)
        if threading.current_thread() is threading.main_thread():
            singles.append(record)
        real_append(record)  # type: ignore[arg-type]

    gateway.log.append_many = counting  # type: ignore[method-assign]
    gateway.log.append = forbidden  # type: ignore[method-assign]
    origin = Origin("file", "batch.hl7")
    try:
        batch = [er_message(1), er_message(2), er_message(1), b"MSH|garbage"]
        replies = gateway.intake.receive_many([(raw, origin) for raw in batch])
        assert [(r.code, r.duplicate) for r in replies] == [("AA", False), ("AA", False), ("AA", True), ("AR", False)]
        assert calls == [3]  # two raw messages and one dead letter, one commit
        assert singles == []
        assert gateway.intake.dedupe.seen(parse(er_message(2)).sender, parse(er_message(2)).control_id)

        def down(records: Sequence[object]) -> None:
            raise PublishError("log down")

        gateway.log.append_many = down  # type: ignore[method-assign]
        replies = gateway.intake.receive_many([(er_message(3), origin), (er_message(4), origin)])
        assert [(r.code, r.transient) for r in replies] == [("AR", True), ("AR", True)]
        assert not gateway.intake.dedupe.seen(parse(er_message(3)).sender, parse(er_message(3)).control_id)
    finally:
        gateway.log.append_many, gateway.log.append = real_append_many, real_append  # type: ignore[method-assign]
        gateway.close()
