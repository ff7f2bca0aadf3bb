"""The driver test kit (loadgen.testkit) against the reference driver and a real reference backend."""

import pytest

from loadgen.drivers.reference import ReferenceDriver
from loadgen.testkit import DriverContract


class TestReferenceDriver(DriverContract):
    driver = ReferenceDriver

    @pytest.fixture
    def endpoint(self, backend):
        return backend().url
