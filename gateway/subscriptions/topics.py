"""Subscription topics: what makes a change an event, as data.

Our topics are R4B/R5 ``SubscriptionTopic`` resources under ``schemas/subscriptions/`` (R4 has no
SubscriptionTopic resource; the Backport IG names topics by canonical URL, which is what an R4
``Subscription.criteria`` carries). :func:`load_topics` reads and checks them at start-up.

A topic has one resource trigger: a resource type, the interactions it reacts to, and R5
``queryCriteria``: ``previous`` / ``current`` search criteria evaluated against the version before
and after the change, ``resultForCreate`` (what the previous test gives on a create),
``resultForDelete`` (what the current test gives on a delete) and ``requireBoth`` (both tests must
pass, else either). ``canFilterBy`` lists the search parameters a subscriber may add as filters.

A plain R4 criteria string (``CarePlan?category=defi-sante``) becomes an ad-hoc topic with
:func:`criteria_topic`: create or update, and the resource as written matches the criteria.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from gateway.errors import ConfigError, StoreError
from gateway.fhirstore.match import Matcher
from gateway.fhirstore.params import SEARCH_PARAMS, supported
from gateway.fhirstore.query import Params

Interaction = Literal["create", "update", "delete"]
TOPICS_DIR = Path(__file__).resolve().parents[2] / "schemas" / "subscriptions"
_INTERACTIONS: frozenset[str] = frozenset({"create", "update", "delete"})


@dataclass(frozen=True, slots=True)
class Topic:
    """One resource trigger of a subscription topic (or of a plain R4 criteria string)."""

    url: str
    resource: str
    interactions: frozenset[str]
    current: Params | None = None
    previous: Params | None = None
    create_passes: bool = False  # resultForCreate == test-passes
    delete_passes: bool = False  # resultForDelete == test-passes
    require_both: bool = False
    can_filter_by: frozenset[str] = field(default_factory=frozenset)
    title: str = ""
    adhoc: bool = False  # a plain criteria string, not a published topic (no canonical URL)

    def fires(self, interaction: str, previous_ok: bool | None, current_ok: bool | None) -> bool:
        """Whether a change is an event, given the criteria results (None: no such version)."""
        if interaction not in self.interactions:
            return False
        results: list[bool] = []
        if self.previous is not None:
            results.append(self.create_passes if interaction == "create" or previous_ok is None
                           else previous_ok)
        if self.current is not None:
            results.append(self.delete_passes if interaction == "delete" or current_ok is None
                           else current_ok)
        if not results:
            return True
        return all(results) if self.require_both else any(results)


def split_criteria(text: str, default_type: str | None = None) -> tuple[str, Params]:
    """``Type?a=1&b=2`` (or ``a=1&b=2`` when ``default_type`` is given) → (type, parameters)."""
    head, sep, query = text.partition("?")
    if not sep:
        if default_type is None or "=" not in head:
            raise ValueError("criteria must look like Type?name=value")
        return default_type, parse_qsl(head, keep_blank_values=True)
    if not head or not head[:1].isupper() or not head.isalpha():
        raise ValueError("criteria must start with a resource type")
    return head, parse_qsl(query, keep_blank_values=True)


def criteria_topic(criteria: str) -> Topic:
    """The ad-hoc topic of a plain R4 criteria string; ValueError/StoreError when unusable."""
    rtype, params = split_criteria(criteria)
    if not params:
        raise ValueError("criteria need at least one search parameter")
    Matcher.check(rtype, params)
    return Topic(url=criteria, resource=rtype, interactions=frozenset({"create", "update"}), current=params,
                 adhoc=True)


def _query(text: object, rtype: str, where: str) -> Params | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ConfigError(f"{where}: criteria must be a string")
    crit_type, params = split_criteria(text, rtype)
    if crit_type != rtype:
        raise ConfigError(f"{where}: criteria on {crit_type}, trigger on {rtype}")
    try:
        Matcher.check(rtype, params)
    except StoreError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    return params


def topic_from_resource(data: dict[str, Any], where: str = "topic") -> Topic:
    """A checked :class:`Topic` from a SubscriptionTopic resource (ConfigError naming the problem)."""
    url, triggers = data.get("url"), data.get("resourceTrigger")
    if data.get("resourceType") != "SubscriptionTopic" or not isinstance(url, str):
        raise ConfigError(f"{where}: not a SubscriptionTopic with a url")
    if not isinstance(triggers, list) or len(triggers) != 1 or not isinstance(triggers[0], dict):
        raise ConfigError(f"{where}: exactly one resourceTrigger is supported")
    trigger = triggers[0]
    rtype = str(trigger.get("resource", "")).rsplit("/", 1)[-1]
    interactions = frozenset(str(i) for i in trigger.get("supportedInteraction", []))
    if not interactions or not interactions <= _INTERACTIONS:
        raise ConfigError(f"{where}: supportedInteraction must be create, update and/or delete")
    qc = trigger.get("queryCriteria", {})
    if not isinstance(qc, dict):
        raise ConfigError(f"{where}: queryCriteria must be an object")
    filters = frozenset(str(f.get("filterParameter")) for f in data.get("canFilterBy", []) or []
                        if isinstance(f, dict))
    if not supported(rtype):
        raise ConfigError(f"{where}: resource type {rtype} is not stored here")
    unknown = sorted(name for name in filters if name not in SEARCH_PARAMS[rtype])
    if unknown:
        raise ConfigError(f"{where}: canFilterBy names unknown search parameters {', '.join(unknown)}")
    return Topic(url=url, resource=rtype, interactions=interactions,
                 current=_query(qc.get("current"), rtype, where), previous=_query(qc.get("previous"), rtype, where),
                 create_passes=qc.get("resultForCreate") == "test-passes",
                 delete_passes=qc.get("resultForDelete") == "test-passes",
                 require_both=bool(qc.get("requireBoth", False)), can_filter_by=filters,
                 title=str(data.get("title", "")))


def load_topics(directory: Path = TOPICS_DIR) -> dict[str, Topic]:
    """Every ``SubscriptionTopic-*.json`` of ``directory``, by canonical URL (ConfigError if bad)."""
    topics: dict[str, Topic] = {}
    for path in sorted(directory.glob("SubscriptionTopic-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path.name}: unreadable ({type(exc).__name__})") from None
        topic = topic_from_resource(data, path.name)
        if topic.url in topics:
            raise ConfigError(f"{path.name}: duplicate topic url")
        topics[topic.url] = topic
    if not topics:
        raise ConfigError(f"no SubscriptionTopic-*.json under {directory}")
    return topics
