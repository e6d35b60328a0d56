"""The independent FHIR R4 server of the tests: ``sekmet serve`` (PyPI ``sekmet-fhir``) as a subprocess.

``sekmet_server`` gives a running server on a free loopback port with its data in ``tmp_path``
(simulator off, strict structural validation, no auth); ``sekmet_factory`` builds servers with
other settings (bearer tokens, SMART clients, TLS). ``stop()``/``start()`` restart a server on the
same port and data dir (fault tests); every server is killed at the end of its test. The fixtures
are declared with ``name=`` so that a test module can import them without shadowing
(``from tests.fhir_server_fixtures import sekmet_server_fixture``), or conftest can list this module
in ``pytest_plugins``.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sekmet_bin() -> str:
    import sys

    candidate = Path(sys.executable).with_name("sekmet")
    found = str(candidate) if candidate.exists() else shutil.which("sekmet")
    if not found:
        pytest.skip("sekmet (PyPI sekmet-fhir) is not installed")
    return found


class SekmetServer:
    """One ``sekmet serve`` process; its port and data dir survive ``stop()``/``start()``."""

    def __init__(self, root: Path, *, server_auth: dict[str, Any] | None = None,
                 tls: tuple[Path, Path, Path] | None = None, extra: dict[str, Any] | None = None) -> None:
        self.root = root
        self.port = _free_port()
        self.tls = tls
        scheme = "https" if tls else "http"
        self.root_url = f"{scheme}://127.0.0.1:{self.port}"
        self.base_url = f"{self.root_url}/fhir"
        self.token_url = f"{self.root_url}/auth/token"
        root.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "host": "127.0.0.1", "port": self.port, "base_url": self.base_url,
            "data_dir": str(root / "data"), "own_private_key_path": str(root / "keys" / "sekmet.pem"),
            "simulator": {"enabled": False}, "validation": {"inbound": "strict"},
            "log_inbound": False,
        }
        if server_auth:
            config["server_auth"] = server_auth
        if tls:
            config["tls_certfile"], config["tls_keyfile"] = str(tls[0]), str(tls[1])
        config.update(extra or {})
        self.config_path = root / "settings.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = root / "sekmet.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.headers: dict[str, str] = {}
        self.verify: ssl.SSLContext | bool = True
        if tls:  # tls = (certificate, key, CA that signed the certificate)
            self.verify = ssl.create_default_context(cafile=str(tls[2]))

    def start(self, timeout_s: float = 30.0) -> SekmetServer:
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen([_sekmet_bin(), "serve", "-c", str(self.config_path)], cwd=self.root,
                                         stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sekmet exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/metadata", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("sekmet did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    # -- inspection helpers (what the tests count) ----------------------------------------------
    def get(self, path: str, **params: str) -> dict[str, Any]:
        resp = httpx.get(f"{self.base_url}/{path}", params=params, headers=self.headers, timeout=30,
                         verify=self.verify)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def count(self, resource_type: str, **params: str) -> int:
        """How many current resources of a type match the search parameters."""
        return int(self.get(resource_type, _summary="count", **params)["total"])

    def history_total(self, resource_type: str | None = None) -> int:
        """How many versions the server holds (system level, or of one type)."""
        path = f"{resource_type}/_history" if resource_type else "_history"
        return int(self.get(path, _count="1")["total"])


@pytest.fixture(name="sekmet_factory")
def sekmet_factory_fixture(tmp_path: Path) -> Iterator[Callable[..., SekmetServer]]:
    started: list[SekmetServer] = []

    def make(name: str = "sekmet", **kwargs: Any) -> SekmetServer:
        server = SekmetServer(tmp_path / name, **kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.kill()


@pytest.fixture(name="sekmet_server")
def sekmet_server_fixture(sekmet_factory: Callable[..., SekmetServer]) -> SekmetServer:
    """A running sekmet (no auth, strict validation, simulator off) on a free port, data in tmp."""
    return sekmet_factory()


# -- fictitious resources of one ER registration (what the mapping produces, written by hand) ----
def _rid(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def sample_resources(i: int, *, site: str = "HSA") -> list[dict[str, Any]]:
    """Patient + Practitioner (one of three, shared) + Location + Encounter + Condition + Provenance.

    Ids are deterministic hashes of identifiers, references are ``Type/<id>``: like mappings/.
    """
    source = f"urn:pivot:sender:URGENCE:CSSS-{site}#{site}{i:08d}"
    mrn, visit, lic = f"{site}{100000 + i}", f"V{site}{500000 + i}", f"{1234560 + i % 3}"
    pat_id = _rid("Patient", f"urn:pivot:id:{site}", mrn)
    prac_id = _rid("Practitioner", "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-license-physician", lic)
    loc_id = _rid("Location", f"urn:pivot:location:{site}", f"URG^CIV{i % 20:02d}^1")
    enc_id = _rid("Encounter", f"urn:pivot:visit:{site}", visit)
    cond_id = _rid("Condition", enc_id, "R07.4")
    prov_id = _rid("Provenance", site, f"{i:08d}")
    meta = {"source": source}
    family = ("Tremblay", "Gagnon", "Côté", "Gélinas")[i % 4]
    return [
        {"resourceType": "Patient", "id": pat_id, "meta": meta,
         "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                               "code": "MR"}]},
                         "system": f"urn:pivot:id:{site}", "value": mrn},
                        {"system": "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-patient-healthcare-id",
                         "value": f"TREJ4001{i % 100:02d}{i % 10}"}],
         "name": [{"use": "official", "family": family, "given": ["Hélène"]}], "gender": "female",
         "birthDate": f"19{40 + i % 50}-0{1 + i % 9}-1{i % 10}",
         "generalPractitioner": [{"reference": f"Practitioner/{prac_id}"}]},
        {"resourceType": "Practitioner", "id": prac_id, "meta": meta,
         "identifier": [{"system": "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-license-physician",
                         "value": lic}],
         "name": [{"family": ("Bélanger", "Lefebvre", "Nguyen")[i % 3], "given": ["Marie"], "prefix": ["Dre"]}]},
        {"resourceType": "Location", "id": loc_id, "meta": meta,
         "identifier": [{"system": f"urn:pivot:location:{site}", "value": f"URG^CIV{i % 20:02d}^1"}],
         "status": "active", "name": f"{site} URG CIV{i % 20:02d} 1", "mode": "instance"},
        {"resourceType": "Encounter", "id": enc_id, "meta": meta,
         "identifier": [{"system": f"urn:pivot:visit:{site}", "value": visit}],
         "status": "in-progress",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
         "subject": {"reference": f"Patient/{pat_id}"},
         "participant": [{"individual": {"reference": f"Practitioner/{prac_id}"}}],
         "period": {"start": "2026-01-01T08:51:00-05:00"},
         "location": [{"location": {"reference": f"Location/{loc_id}"}, "status": "active"}],
         "diagnosis": [{"condition": {"reference": f"Condition/{cond_id}"}}]},
        {"resourceType": "Condition", "id": cond_id, "meta": meta,
         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                   "code": "encounter-diagnosis"}]}],
         "code": {"coding": [{"system": "https://fhir.infoway-inforoute.ca/CodeSystem/icd10ca", "code": "R07.4",
                              "display": "Douleur thoracique"}]},
         "subject": {"reference": f"Patient/{pat_id}"}, "encounter": {"reference": f"Encounter/{enc_id}"}},
        {"resourceType": "Provenance", "id": prov_id, "meta": meta,
         "target": [{"reference": f"{t}/{x}"} for t, x in (("Patient", pat_id), ("Encounter", enc_id),
                                                            ("Condition", cond_id))],
         "recorded": "2026-01-01T08:51:00-05:00",
         "agent": [{"who": {"reference": f"Practitioner/{prac_id}"}}]},
    ]
