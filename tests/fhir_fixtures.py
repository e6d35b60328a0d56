"""Fixtures of the embedded FHIR store tests: a store in a temp dir and a TestClient on its router.

Registered by tests/conftest.py; a test module defining its own ``store`` or ``client`` wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.fhirstore import FhirStore
from gateway.http import make_fhir_router


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FhirStore]:
    s = FhirStore(tmp_path / "fhir.sqlite")
    yield s
    s.close()


@pytest.fixture
def client(store: FhirStore) -> TestClient:
    app = FastAPI()
    app.include_router(make_fhir_router(lambda: store), prefix="/fhir")
    return TestClient(app, raise_server_exceptions=False)
