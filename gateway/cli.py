"""``pivot`` command line: serve, ingest files, dead letters.

    pivot serve                       run the gateway (embedded defaults, or Kafka per PIVOT_*)
    pivot ingest FILE…                feed files of messages / FHS-BHS batches through the intake ('-': stdin),
                                      streamed; --jobs N: map + validate in N worker processes
    pivot candidates [--csv]          Défi Santé: frequent ER users, ranked (gateway.defisante.commands)
    pivot outcomes [--csv]            Défi Santé: ER visits before / since enrollment
    pivot simulate …                  a simulated year of ER ADT and its ground truth
    pivot deadletter list             list dead letters (id, stage, codes, sender, MSH-10, reason)
    pivot deadletter show ID          one dead letter with hl7apy's strict diagnostics (positions)
    pivot deadletter replay ID…       send dead letters through the intake again

Every command is pipe-safe (``pivot candidates | head``: a reader that goes away is exit 0, no
traceback); one-shot commands log warnings only unless ``PIVOT_LOG_LEVEL`` is set explicitly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from gateway.errors import ConfigError, GatewayError
from gateway.settings import Settings, load_settings


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    # HTTP client libraries log full request URLs (a conditional update carries ?identifier=<NAM>):
    # never at INFO; our own loggers say what was sent, by id and status only
    for noisy in ("httpx", "httpcore", "hpack", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pivot", description="Pivot: HL7v2 → FHIR R4 gateway (Défi Santé). "
                                "Settings come from PIVOT_* environment variables (see .env.example).")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway in the foreground (HTTP, MLLP, workers)")
    ing = sub.add_parser("ingest", help="ingest files of HL7v2 messages or FHS/BHS batches")
    ing.add_argument("files", nargs="+", type=Path, help="files to read ('-' reads standard input)")
    ing.add_argument("--no-progress", action="store_true", help="no progress bar")
    ing.add_argument("--jobs", type=_jobs, default=os.cpu_count() or 1, metavar="N",
                     help="worker processes for decode + map + validate (default: the CPU count; 1: none, "
                          "everything in this process); identity, dedupe and the log stay here, in order")
    ing.add_argument("--wait", action="store_true",
                     help="also run the mapping and store workers until everything ingested is stored")
    dl = sub.add_parser("deadletter", help="dead letters: list or replay")
    dls = dl.add_subparsers(dest="action", required=True)
    dls.add_parser("list", help="list dead letters")
    show = dls.add_parser("show", help="one dead letter: its reason and hl7apy's strict diagnostics")
    show.add_argument("id", help="an id shown by 'pivot deadletter list'")
    rp = dls.add_parser("replay", help="send dead letters through the intake again")
    rp.add_argument("ids", nargs="+", help="ids shown by 'pivot deadletter list'")
    sub.add_parser("config", help="print the effective settings (no secrets)")
    from gateway.security import audit_cli

    audit_cli.add_parser(sub)
    from gateway.identity import cli as identity_cli

    identity_cli.add_parser(sub)
    from gateway.defisante import commands as defisante_commands

    defisante_commands.add_parsers(sub)
    return p


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= jobs <= 256:
        raise argparse.ArgumentTypeError("between 1 and 256")
    return jobs


def _cli_log_level(command: str, configured: str) -> str:
    """``serve`` logs at the configured level; one-shot commands (ingest, candidates…) print their own
    summary, so the gateway's INFO chatter (identity, workers) is not shown unless ``PIVOT_LOG_LEVEL``
    asks for it explicitly (the progress bar is shown only when stderr is a terminal)."""
    if command == "serve" or "PIVOT_LOG_LEVEL" in os.environ:
        return configured
    return "WARNING" if configured.upper() in ("DEBUG", "INFO") else configured


def _reader_gone() -> int:
    """The reader of our stdout went away (``pivot candidates | head``): not an error. Point stdout at
    /dev/null so the interpreter's final flush does not raise again, and exit 0."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"pivot: configuration error: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(_cli_log_level(args.command, settings.log_level))
    try:
        code = _run(args, settings)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _reader_gone()
    except ConfigError as exc:
        print(f"pivot: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"pivot: {exc.describe()}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from gateway.app import serve

        asyncio.run(serve(settings))
        return 0
    if args.command == "audit":
        from gateway.security import audit_cli

        return audit_cli.run(settings, args)
    if args.command in ("candidates", "outcomes", "simulate"):
        from gateway.defisante import commands as defisante_commands

        return defisante_commands.run(args.command, args, settings)
    if args.command == "config":
        for name, value in settings.model_dump().items():
            print(f"PIVOT_{name.upper()}={value if value is not None else ''}")
        return 0
    if args.command == "ingest":
        return _ingest(settings, args)
    from gateway.app import Gateway

    gateway = Gateway(settings.model_copy(update={"workers": False}))
    try:
        if args.command == "identity":
            from gateway.identity import cli as identity_cli

            return identity_cli.run(args, gateway)
        return _deadletter(gateway, args)
    finally:
        gateway.close()


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    """``pivot ingest``: the worker pool (``--jobs``) starts first, holding none of the gateway's files;
    the intake's results go through the handoff (like the MLLP listener process's), so the mapping
    worker of the gateway serving this data dir takes them instead of mapping again."""
    from contextlib import nullcontext

    from connectors.ahead import AheadPool, bulk_gc
    from connectors.files import ingest_files
    from gateway.app import Gateway
    from gateway.eventlog import walcheckpoint
    from gateway.eventlog.worker import give_way_to_live

    give_way_to_live()  # history after live traffic: this process and its pool below the gateway's workers
    pool = (AheadPool(args.jobs, settings.sender_profiles, settings.identifier_systems, settings.default_timezone)
            if args.jobs > 1 else None)
    with walcheckpoint.bulk(), pool if pool is not None else nullcontext():
        gateway = Gateway(settings.model_copy(update={"workers": bool(args.wait)}), listener_process=settings.embedded)
        try:
            progress = not args.no_progress and sys.stderr.isatty()
            with bulk_gc():
                summary = ingest_files(list(args.files), gateway.intake, progress=progress, pool=pool)
            if args.wait:
                gateway.start_workers()
                from gateway.drain import wait_drained

                wait_drained(gateway)
        finally:
            gateway.close()
    return 0 if summary.refused == 0 else 1


def _deadletter(gateway: object, args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.deadletters import list_deadletters, print_deadletter, print_deadletters, replay

    assert isinstance(gateway, Gateway)
    if args.action == "list":
        print_deadletters(list_deadletters(gateway))
        return 0
    if args.action == "show":
        found = [d for d in list_deadletters(gateway) if d.id == args.id]
        if not found:
            print(f"no dead letter with id {args.id}")
            return 1
        print_deadletter(found[0])
        return 0
    failures = 0
    for ref in args.ids:
        reply = replay(gateway, ref)
        print(f"{ref}: {reply.code}{' ' + reply.error if reply.error else ''}")
        failures += reply.code != "AA"
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
