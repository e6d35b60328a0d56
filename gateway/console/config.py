"""The console's data (``console.json`` beside this module, or a deployment's own file), checked at load.

    feeds.silent_after_minutes        default silent-feed threshold (minutes, > 0)
    feeds.senders[]                   expected senders: sender ("MSH-3|MSH-4"), label, silent_after_minutes
    sites                             sending facility (MSH-4.1) → the name case managers read
    case_managers[]                   reference (Practitioner/…) and display, offered by the enroll form

A malformed file raises ConfigError naming the file and the entry (never a value from a message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

DEFAULT_SILENT_MINUTES = 30.0


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    """One expected sender: shown even when it never sent anything, with its own threshold."""

    sender: str
    label: str
    silent_after_minutes: float


@dataclass(frozen=True, slots=True)
class CaseManager:
    reference: str
    display: str


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    silent_after_minutes: float
    senders: tuple[SenderPolicy, ...]
    sites: dict[str, str]
    case_managers: tuple[CaseManager, ...]

    @property
    def names(self) -> dict[str, str]:
        """Reference → name of the configured case managers (when the store has no Practitioner)."""
        return {m.reference: m.display for m in self.case_managers}

    def threshold(self, sender: str) -> float:
        """The silent-feed threshold of ``sender`` in minutes."""
        return next((s.silent_after_minutes for s in self.senders if s.sender == sender), self.silent_after_minutes)

    def label(self, sender: str) -> str:
        return next((s.label for s in self.senders if s.sender == sender), "")


def _minutes(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: silent_after_minutes must be a number > 0")
    return float(value)


def parse_config(data: Any, name: str = "console.json") -> ConsoleConfig:
    """Check and build the configuration (ConfigError naming ``name`` and the entry)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a JSON object")
    feeds = data.get("feeds") or {}
    if not isinstance(feeds, dict):
        raise ConfigError(f"{name}: feeds must be an object")
    default = _minutes(feeds.get("silent_after_minutes", DEFAULT_SILENT_MINUTES), f"{name} feeds")
    senders: list[SenderPolicy] = []
    for n, item in enumerate(feeds.get("senders") or []):
        where = f"{name} feeds.senders[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("sender"), str) or "|" not in item["sender"]:
            raise ConfigError(f"{where}: needs sender as 'MSH-3|MSH-4'")
        minutes = _minutes(item.get("silent_after_minutes", default), where)
        senders.append(SenderPolicy(item["sender"], str(item.get("label") or ""), minutes))
    if len({s.sender for s in senders}) != len(senders):
        raise ConfigError(f"{name} feeds.senders: a sender is listed twice")
    sites = data.get("sites") or {}
    if not isinstance(sites, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sites.items()):
        raise ConfigError(f"{name}: sites must map facility codes to names")
    managers: list[CaseManager] = []
    for n, item in enumerate(data.get("case_managers") or []):
        ref = item.get("reference") if isinstance(item, dict) else None
        if not isinstance(ref, str) or not ref.startswith(("Practitioner/", "PractitionerRole/")) or \
                not ref.split("/", 1)[1]:
            raise ConfigError(f"{name} case_managers[{n}]: reference must be Practitioner/<id> "
                              "or PractitionerRole/<id>")
        managers.append(CaseManager(ref, str(item.get("display") or ref)))
    return ConsoleConfig(default, tuple(senders), dict(sites), tuple(managers))


def load_config(path: Path | None = None) -> ConsoleConfig:
    """The file at ``path``, else the packaged ``console.json``."""
    if path is None:
        text = resources.files("gateway.console").joinpath("console.json").read_text(encoding="utf-8")
        name = "console.json"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"console configuration {path.name}: cannot be read ({type(exc).__name__})") from None
        name = path.name
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(f"{name}: not valid JSON") from None
    return parse_config(data, name)
