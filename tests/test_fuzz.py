"""The HTTP API fuzzed from its own OpenAPI document: no input makes it answer 5xx.

schemathesis generates the requests; its pytest plugin does not load under
pytest 9, so each operation's strategy is driven with hypothesis directly.
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings

from service.app import create_app
from tests.conftest import make_settings, project_flows
from tests.support.fakes import RecordingTransport
from tests.support.servers import serve

EXAMPLES_PER_OPERATION = 80


def test_no_generated_request_makes_the_api_fail() -> None:
    app = create_app(make_settings(), project_flows("http://fn.invalid"), RecordingTransport())
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    with serve(app) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def exercise(case: schemathesis.Case) -> None:
                response = case.call(base_url=url, timeout=30)
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path}: {response.status_code}")

            exercise()
    total = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    print(
        f"\nschemathesis: {total} requests over {len(operations)} operations, "
        f"{server_errors} server errors; statuses {dict(sorted(statuses.items()))}"
    )
    assert len(operations) >= 5
    assert failures == []
