"""Composition root: builds the gateway from Settings and serves HTTP + MLLP (+ Kafka raw input).

``Gateway`` owns the event log, the embedded FHIR store, the intake and the workers;
``create_app`` builds the FastAPI application; ``serve`` runs everything until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from gateway import __version__
from gateway.defisante import DefiSanteRules
from gateway.delivery.client import FhirClient
from gateway.delivery.config import client_from_settings
from gateway.delivery.sink import DeliverySink
from gateway.errors import ConfigError
from gateway.eventlog.base import EventLog
from gateway.eventlog.embedded import private_dir, secure_file
from gateway.eventlog.state.dedupe import open_dedupe
from gateway.eventlog.state.handoff import SpillMapCache, open_handoff
from gateway.eventlog.state.ledger import open_ledger
from gateway.eventlog.state.register import open_register
from gateway.eventlog.worker import Turn, Worker
from gateway.fhirstore import FhirStore
from gateway.identity import IdentityResolver
from gateway.intake import Intake, MapCache
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.security import Security, check_startup, install_security
from gateway.settings import Settings
from gateway.subscriptions import SubscriptionConfig, SubscriptionEngine, make_subscription_router
from gateway.workers import BulkMappingWorker, MappingWorker, RuleHook, StoreSink
from mappings import IdentifierSystems, Profiles

log = logging.getLogger("pivot")


def open_log(settings: Settings, instance_id: str = "") -> EventLog:
    """The embedded log, or Kafka when PIVOT_KAFKA_BOOTSTRAP is set (client id ``pivot-<instance>``:
    the consumer group members of this instance are told apart from the others')."""
    if settings.embedded:
        from gateway.eventlog.embedded import EmbeddedLog

        return EmbeddedLog(settings.data_dir / "log.sqlite")
    from gateway.eventlog.kafka import KafkaLog

    return KafkaLog(settings.kafka_bootstrap, client_id=kafka_client_id(instance_id),
                    session_timeout_ms=settings.kafka_session_timeout_ms)


def kafka_client_id(instance_id: str) -> str:
    return f"pivot-{instance_id}" if instance_id else "pivot"


class Gateway:
    """Everything one gateway process runs, wired from Settings."""

    def __init__(self, settings: Settings, *, listener_process: bool = False) -> None:
        """``listener_process``: the MLLP listener runs in a child process (gateway.listener), so the
        intake's results reach the mapping worker through handoff.sqlite, not this process's memory.

        The shared state (gateway.eventlog.state: dedupe, handoff, identity, alert ledger, Défi Santé
        register) is opened from ``settings.state_url``: SQLite files in the data dir when empty,
        else one PostgreSQL database shared by every instance (the handoff then in every mode)."""
        self.settings = settings
        self.listener_process = listener_process
        # built first: a delivery misconfiguration stops the start-up with the setting's name
        self.fhir_client: FhirClient | None = client_from_settings(settings) if settings.fhir_base_url else None
        private_dir(settings.data_dir)  # 0700 (gateway/eventlog/embedded.py)
        self.metrics = Metrics()
        self.profiles = Profiles.load(settings.sender_profiles, settings.default_timezone)
        self.systems = IdentifierSystems.load(settings.identifier_systems)
        self.instance_id = _instance_id(settings.data_dir)
        if not settings.embedded and not settings.state_url:
            single_instance_check(settings, kafka_client_id(self.instance_id))
        self.log = open_log(settings, self.instance_id)
        self.security = Security(settings, event_log=self.log, metrics=self.metrics)
        self.store = FhirStore(settings.data_dir / "fhir.sqlite")
        from gateway.security.audit_careteam import CareTeamAudit

        self.store.add_listener(CareTeamAudit(self.security.audit, self.store))  # every care-team change
        self.subscriptions = SubscriptionEngine(self.store, SubscriptionConfig(
            base_url=f"http://{settings.host}:{settings.http_port}/fhir",
            state_path=settings.data_dir / "subscriptions.sqlite",
            audit=self.security.audit, allow_private=settings.subscription_allow_private))
        self.dedupe = open_dedupe(settings.state_url, settings.data_dir)
        self.cache: MapCache = MapCache()
        if listener_process or settings.state_url:  # another process or instance may take the record
            self.cache = open_handoff(settings.state_url, settings.data_dir)
        elif settings.workers:  # this process's worker: memory, then a spill file (no result dropped)
            self.cache = SpillMapCache(settings.data_dir)
        self.identity = IdentityResolver(settings.data_dir, settings.state_url)
        self.ledger = open_ledger(settings.state_url, settings.data_dir)
        self.register = open_register(settings.state_url, settings.data_dir)
        from gateway.defisante.shared import RegisterListener

        self.store.add_listener(RegisterListener(self.register))  # every write of a program resource
        self.pipeline = Pipeline(self.profiles, self.systems, self.identity)  # the mapping worker's (cache misses)
        # Défi Santé: program data and conformance resources checked here (a bad file stops the start)
        from gateway.defisante import conformance
        from gateway.defisante.service import DefiSante

        conformance.resources()
        self.defisante = DefiSante(self.store, self.log, settings, register=self.register)
        self.rules = DefiSanteRules(self.store, settings, self.defisante.config, self.metrics,
                                    audit=self.security.audit, ledger=self.ledger, register=self.register)
        from gateway.pharmacy import PharmacyRules

        self.pharmacy = PharmacyRules(self.store, settings, metrics=self.metrics, audit=self.security.audit)
        self.intake = Intake(settings, self.log, self.dedupe, self.profiles, self.systems, self.metrics,
                             self.cache, self.identity, authorize=self.security.authorize_sender)
        self.workers: list[Worker] = []

    def start_workers(self) -> None:
        self.subscriptions.start()  # idempotent; before the store sink so no write is missed
        if self.workers or not self.settings.workers:
            return
        turn = Turn()  # the live lane's batches before the bulk lane's (gateway/eventlog/worker.py)
        hooks: list[RuleHook] = [self.rules, self.pharmacy]
        self.workers = [
            MappingWorker(self.settings, self.log, self.metrics, self.pipeline, self.cache, hooks, turn),
            BulkMappingWorker(self.settings, self.log, self.metrics, self.pipeline, self.cache, hooks, turn),
            StoreSink(self.settings, self.log, self.metrics, self.store, instance_id=self.instance_id),
        ]
        if self.fhir_client is not None:
            self.workers.append(DeliverySink(self.settings, self.log, self.metrics, self.fhir_client))
        for worker in self.workers:
            worker.start()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.join(timeout=10)
        self.workers = []
        self.subscriptions.stop()
        if self.fhir_client is not None:
            self.fhir_client.close()
        self.rules.close()
        self.pharmacy.close()
        self.identity.close()
        self.cache.close()
        self.security.close()  # drains the audit queue into the log: before the log closes
        self.log.close()
        self.store.close()
        self.dedupe.close()
        self.ledger.close()
        self.register.close()


def single_instance_check(settings: Settings, own_client_id: str = "") -> None:
    """Kafka without PIVOT_STATE_URL: each instance keeps its own identity index, dedupe index,
    alert ledger and register, so it must be the only one. Say so, and (when this process runs the
    mapping worker) refuse to start when the mapping workers' consumer group has members of another
    instance (client id ``own_client_id`` is this instance's: a member it left behind when it was
    killed, which tansu keeps listing, is not another instance) one session timeout later. A broker
    that cannot tell (down, or no DescribeGroups) is logged and the start goes on."""
    import time

    group = f"{settings.kafka_group_id}-mapper"
    log.warning("Kafka without PIVOT_STATE_URL: this instance keeps its identity, dedupe and alert state "
                "to itself and must be the only gateway instance of group %s; set PIVOT_STATE_URL "
                "(PostgreSQL) to run several", group)
    if not settings.workers:  # no mapping worker here (pivot ingest, pivot identity): nothing to join
        return
    deadline = time.monotonic() + settings.kafka_session_timeout_ms / 1000 + 3
    others = _other_members(settings, group, own_client_id)
    while others and time.monotonic() < deadline:
        time.sleep(1.0)
        others = _other_members(settings, group, own_client_id)
    if others is None:
        log.warning("could not tell whether consumer group %s already has members", group)
    elif others:
        raise ConfigError(f"consumer group {group} already has {len(others)} member(s) of another gateway "
                          "instance on this Kafka; several instances need PIVOT_STATE_URL (shared state)")


def _other_members(settings: Settings, group: str, own_client_id: str) -> list[str] | None:
    from gateway.eventlog.kafka import group_members

    members = group_members(settings.kafka_bootstrap, group)
    return None if members is None else [m for m in members if not m.startswith(f"{own_client_id}-")]


def _instance_id(data_dir: Path) -> str:
    """A stable id for this gateway instance (its data dir), created 0600 on first start."""
    path = data_dir / "instance-id"
    secure_file(path)  # created empty 0600, or an existing one (earlier versions made it 0644) tightened
    if not path.read_text().strip():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


def create_app(gateway: Gateway, console_options: dict[str, Any] | None = None) -> FastAPI:
    """The HTTP app: POST /hl7v2, /fhir (store, Défi Santé, subscriptions), /console, /healthz, /metrics.

    ``console_options`` are passed to the console router (tests: its config, stream timings)."""
    from connectors.http import make_hl7v2_router
    from gateway.console import make_console_router
    from gateway.defisante import conformance
    from gateway.defisante.routes import make_defisante_router
    from gateway.fhirstore.capability import BACKPORT_OPERATIONS, read_routes
    from gateway.http import install_fhir_error_handler, make_fhir_router

    app = FastAPI(title="Pivot gateway", version=__version__)
    app.include_router(make_hl7v2_router(lambda: gateway.intake,
                                        max_bytes=gateway.settings.mllp_max_message_bytes))
    # the Défi Santé operations first: their paths ($…, CodeSystem…) would else reach the store's routes
    from gateway.security.audit_routes import make_audit_router

    fhir_routers = [make_defisante_router(lambda: gateway.defisante),
                    make_subscription_router(lambda: gateway.subscriptions),
                    make_audit_router(lambda: gateway.security.audit.path), make_fhir_router(lambda: gateway.store)]
    for router in fhir_routers:
        app.include_router(router, prefix="/fhir")
    app.include_router(make_console_router(lambda: gateway, **(console_options or {})))  # under /console
    install_fhir_error_handler(app)
    from gateway.security.limits import Limits, RequestLimits

    app.add_middleware(RequestLimits, limits=Limits.of(gateway.settings))  # inside the guard: after its 401/403
    install_security(app, gateway.security)
    ours = {od["code"]: od["url"] for (rtype, _id), od in conformance.resources().items()
            if rtype == "OperationDefinition"}
    definitions = {**BACKPORT_OPERATIONS, **ours}
    paths = ("/fhir" + str(getattr(route, "path", "")) for router in fhir_routers for route in router.routes)
    app.state.fhir_routes = read_routes(paths, definitions)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "mode": "embedded" if gateway.settings.embedded else "kafka"}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        for worker in gateway.workers:  # a backfill's progress: the bulk mapper's lag (embedded log)
            lag = worker.lag()
            if lag is not None:
                gateway.metrics.gauge_set("pivot_worker_lag_records", lag, "records a worker has not handled yet",
                                          worker=worker.group)
        if not gateway.listener_process:
            return gateway.metrics.render()
        from gateway.listener import read_metrics

        return gateway.metrics.merged(*read_metrics(gateway.settings.data_dir)).render()

    return app


async def serve(settings: Settings) -> None:
    """Run the gateway in the foreground until SIGINT/SIGTERM."""
    import uvicorn

    from gateway.http.server import server_config

    for warning in check_startup(settings):  # ConfigError when exposed without auth / plain MLLP
        log.warning("security: %s", warning)
    split = settings.embedded and settings.mllp_process
    gateway = Gateway(settings, listener_process=split)
    gateway.start_workers()
    app = create_app(gateway)
    from gateway.listener import mllp_server, tune_gc

    gateway.intake.pipeline.warm()  # the first message not slower than the next (Pipeline.warm)
    tune_gc()
    mllp: Any
    if split:  # the MLLP listener in its own process: see gateway.listener
        from gateway.eventlog.embedded import EmbeddedLog
        from gateway.listener import ListenerProcess

        assert isinstance(gateway.log, EmbeddedLog)
        mllp = ListenerProcess(settings, gateway.log.follow)
    else:
        mllp = mllp_server(gateway.intake, settings, gateway.metrics, gateway.security)
    connectors: list[Any] = [mllp]
    if settings.kafka_raw_in_topic:
        if settings.embedded:
            raise ConfigError("PIVOT_KAFKA_RAW_IN_TOPIC needs PIVOT_KAFKA_BOOTSTRAP")
        from connectors.kafka_raw import KafkaRawConnector

        connectors.append(KafkaRawConnector(bootstrap=settings.kafka_bootstrap,
                                            topic=settings.kafka_raw_in_topic,
                                            group=f"{settings.kafka_group_id}-raw-in",
                                            receiver=gateway.intake,
                                            session_timeout_ms=settings.kafka_session_timeout_ms))
    config = server_config(app, settings)
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for connector in connectors:
        await connector.start()
    mode = "embedded log + embedded FHIR store" if settings.embedded else f"Kafka {settings.kafka_bootstrap}"
    log.info("Pivot listening: MLLP %s:%d, HTTP http://%s:%d (FHIR at /fhir), %s, data in %s",
             settings.host, mllp.port, settings.host, settings.http_port, mode, settings.data_dir)
    http_task = asyncio.create_task(server.serve())
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    for connector in connectors:
        await connector.stop()
    await http_task
    gateway.close()
    log.info("Pivot stopped")
