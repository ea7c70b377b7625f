"""Schemathesis against the live server: generated requests from /api/openapi.json find no 5xx and no response
that breaks the spec (status codes, content types, headers, schemas).

Requests carry an admin-scope token of the admin account, so admin reads are checked too. Operations that would
change the shared server's state for the other e2e tests are left out:
  * model load / cancel / delete (would unload tiny.en), database restore;
  * logins, the token grant, registration and password changes (random passwords would trip the failed-login
    limit for 127.0.0.1 and for the admin), logout;
  * user and token creation, change and deletion, history edit / delete / bulk delete / import, job
    cancel/delete (they change or remove data other tests read).
Uploads cannot be valid audio when generated, so on them "valid by the schema" still gets 400/415; the
positive-data-acceptance check is skipped there only.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from whisper_appliance.openapi import build_spec

from .conftest import login

EXCLUDED = {
    ("POST", "/api/models/load"), ("POST", "/api/models/cancel"), ("DELETE", "/api/models/{name}"),
    ("POST", "/api/admin/restore"), ("POST", "/api/auth/password"), ("POST", "/api/auth/login"),
    ("POST", "/api/auth/token"), ("POST", "/api/auth/register"), ("POST", "/api/auth/logout"),
    ("POST", "/api/auth/tokens"), ("DELETE", "/api/auth/tokens/{token_id}"),
    ("POST", "/api/admin/users"), ("PATCH", "/api/admin/users/{user_id}"), ("DELETE", "/api/admin/users/{user_id}"),
    ("PATCH", "/api/history/{entry_id}"), ("DELETE", "/api/history/{entry_id}"), ("POST", "/api/history/delete"),
    ("POST", "/api/history/import"), ("DELETE", "/api/jobs/{job_id}"),
}
MAX_EXAMPLES = 20
UPLOADS = {"/transcribe", "/api/detect-language", "/api/jobs", "/v1/audio/transcriptions",
           "/v1/audio/translations"}




@pytest.fixture(scope="module")
def live_schema(server):
    return schemathesis.openapi.from_url(server.url("/api/openapi.json"), verify=str(server.cert_path), timeout=30)


@pytest.fixture(scope="module")
def http(server) -> requests.Session:
    token = login(server).post(server.url("/api/auth/tokens"), json={"label": "schemathesis", "scope": "admin"},
                               timeout=10).json()["token"]
    return server.session(token=token)


# Parametrised from the spec module at collection time (the live server is not up yet); the test then checks the
# operation as the live server publishes it. schemathesis' own lazy pytest loader (``from_fixture``) does not
# work with pytest 9 (it reads ``request.node._nodeid``), hence the explicit Hypothesis test per operation.
OPERATIONS = sorted((method.upper(), path) for path, item in build_spec()["paths"].items() for method in item
                    if (method.upper(), path) not in EXCLUDED)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_live_server_conforms_to_its_spec(live_schema, server, http, method, path):
    operation = live_schema[path][method]
    excluded = [positive_data_acceptance] if path in UPLOADS else []

    # Positive cases (valid by the spec) must be served; negative ones (breaking it) must be refused with a 4xx.
    @given(case=st.one_of(operation.as_strategy(), operation.as_strategy(GenerationMode.NEGATIVE)))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        case.call_and_validate(base_url=server.base_url, session=http, excluded_checks=excluded, timeout=60,
                              verify=str(server.cert_path))

    check()


def test_exclusions_name_real_operations(server):
    # A renamed route would silently drop out of the exclusions (and be fuzzed destructively): keep them honest.
    spec = requests.get(server.url("/api/openapi.json"), verify=str(server.cert_path), timeout=30).json()
    documented = {(m.upper(), p) for p, item in spec["paths"].items() for m in item if m != "parameters"}
    assert EXCLUDED <= documented
    assert {("POST", p) for p in UPLOADS} <= documented
