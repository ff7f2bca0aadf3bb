"""The driver test kit (loadgen.testkit) against the XMPP driver and a real Prosody."""

import pytest

from loadgen.drivers.xmpp import XmppDriver
from loadgen.testkit import DriverContract


class TestXmppDriver(DriverContract):
    driver = XmppDriver

    @pytest.fixture
    def endpoint(self, prosody):
        return prosody
