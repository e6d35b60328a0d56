"""One version number: the package's, the API's and the embedded FHIR store's CapabilityStatement."""

from __future__ import annotations

import tomllib
from pathlib import Path

import gateway
from gateway.fhirstore.capability import capability_statement

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_the_same_everywhere() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert gateway.__version__ == declared
    assert capability_statement("http://x/fhir")["software"]["version"] == declared
    assert f"- {declared} " in (ROOT / "README.md").read_text()  # the changelog has an entry for it
