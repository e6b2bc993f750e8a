"""pytest plugin of `make mutation` (`-p mutation.premigrated`): the lane's migrated database.

mutation/run.py migrates one database per lane and names it in TEST_MIGRATED_DATABASE_URL; this
plugin hands it to the tests as the suite's `database_url`, so that no mutant pays for a
`flask db upgrade`. tests/conftest.py knows nothing of it.
"""

from __future__ import annotations

import os
from typing import Any

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    """`database_url` is the lane's database; every other fixture is set up as usual."""
    if fixturedef.argname != "database_url":
        return None
    url = os.environ["TEST_MIGRATED_DATABASE_URL"]
    fixturedef.cached_result = (url, fixturedef.cache_key(request), None)
    return url
