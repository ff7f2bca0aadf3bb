"""The driver test kit (loadgen.testkit) against the Janus driver and a real Janus."""

import pytest

from loadgen.drivers.janus import JanusDriver
from loadgen.testkit import DriverContract


class TestJanusDriver(DriverContract):
    driver = JanusDriver

    @pytest.fixture
    def endpoint(self, janus):
        return janus
