"""Audio in voice rooms end to end: real `locust` runs on the embedded reference backend, over UDP and the WebSocket."""

import pytest

from tests.support import free_port

ROOMS = """
voiceroom: {rooms: 3, hot_rooms: 1, hopper_share: 0.4, gifter_share: 0, chatter_share: 0, seat_rate: 0.5,
            hold_mean: 4, host_rate: 0, chat_rate: 0, session_mean: 600}
"""

#: a jitter buffer deep enough that a busy test machine's pauses never make a frame late: what is
#: measured on a clean loopback is then exact (nothing lost, late or stalled)
CLEAN = """
media: {rooms: 3, decode_share: 0.5, transport: TRANSPORT, jitter_buffer_ms: 1000}
"""

#: 5 % of every listener's downlink lost: each datagram on its own (scattered), or in bursts of 100 ms on average
LOSSY = """
network:
  mix: [{profile: lossy, share: 1}]
  profiles:
    lossy: {down_loss: 0.05, down_loss_burst_ms: BURST}
"""
SCATTERED, BURSTY = LOSSY.replace("BURST", "0"), LOSSY.replace("BURST", "100")

# hosts come first and speak from the start: later joiners time their first audio after joining
RUN = ("-u", "24", "-r", "8", "-t", "12s", "--drain", "2")


@pytest.mark.parametrize("transport", ["udp", "websocket"])
def test_on_a_clean_backend_listeners_hear_every_frame_on_time(locust_run, write_profile, transport):
    """Speakers' frames reach every listener: none lost, late or stalled; first audio is timed after joins and seats."""
    run = locust_run("voiceroom.py", *RUN, "--profile", write_profile(ROOMS + CLEAN.replace("TRANSPORT", transport)))
    assert run.returncode == 0, run
    audio, operations = run.summary["media"], run.summary["operations"]
    frames = audio["frames"]
    assert audio["transport"] == transport
    assert frames["sent"] > 500 and frames["received"] > 500, audio
    assert frames["lost"] == frames["late"] == frames["duplicated"] == 0, audio
    assert audio["stalls"] == 0 and audio["stall_rate"] == 0, audio
    assert audio["listeners"]["decoding"] > 0 and audio["listeners"]["counting"] > 0, audio
    assert frames["counted"] > 0, audio
    assert audio["jitter_ms"]["count"] > 0 and audio["frame_delay_ms"]["count"] == frames["received"], audio
    for after in ("join", "seat"):
        timed = operations[f"media.first_audio.{after}"]
        assert timed["count"] > 0 and timed["failures"] == 0, operations
        assert audio[f"first_audio_{after}_ms"]["count"] == timed["count"], (audio, timed)
    assert operations["media.open"]["failures"] == 0, operations
    assert f"audio ({transport}," in run.output


def test_five_percent_loss_on_the_downlink_is_measured_and_only_bursts_of_it_stall(locust_run, write_profile):
    """5 % of datagrams dropped on the way down is measured as 5 % ± 1 %; scattered it never stalls, bursty it does."""
    profile = ROOMS + CLEAN.replace("TRANSPORT", "udp")
    clean = locust_run("voiceroom.py", *RUN, "--profile", write_profile(profile, "clean.yaml"))
    scattered = locust_run("voiceroom.py", *RUN, "--profile", write_profile(profile + SCATTERED, "scattered.yaml"))
    bursty = locust_run("voiceroom.py", *RUN, "--profile", write_profile(profile + BURSTY, "bursty.yaml"))
    # lost frames are not failures of the run: without an SLO file the exit code stays 0
    assert clean.returncode == scattered.returncode == bursty.returncode == 0, (clean, scattered, bursty)
    heard = scattered.summary["media"]
    assert heard["expected"] > 5000, heard
    assert 0.04 <= heard["loss_rate"] <= 0.06, heard
    # a loss the listener cannot see (before a stream's first frame heard or after its last) is not counted
    assert heard["frames"]["lost"] <= heard["frames"]["network_dropped"], heard
    # eleven frames in a row lost at 5 % each is a chance of 5e-15: concealed gaps, no stall
    assert clean.summary["media"]["stall_rate"] == heard["stall_rate"] == 0, (clean.summary["media"], heard)
    stalled = bursty.summary["media"]
    assert stalled["stalls"] > 0 and stalled["stall_rate"] > 0, stalled
    assert stalled["frames"]["lost"] <= stalled["frames"]["network_dropped"], stalled


def test_loss_injected_by_the_backend_is_what_listeners_measure(backend, locust_run, write_profile):
    """`loadgen serve --media-loss 0.05`: every listener decodes, and the loss measured is the backend's count of it."""
    server = backend("--media-loss", "0.05", "--seed", "5")
    everyone = ROOMS + CLEAN.replace("TRANSPORT", "udp").replace("decode_share: 0.5", "decode_share: 1")
    run = locust_run("voiceroom.py", *RUN, "--host", server.url, "--profile", write_profile(everyone))
    assert run.returncode == 0, run
    heard = run.summary["media"]
    injected = server.metric("refserver_media_frames_total", outcome="injected_loss")
    assert heard["listeners"]["counting"] == 0 and heard["expected"] > 5000, heard
    assert 0.04 <= heard["loss_rate"] <= 0.06, heard
    # what a listener cannot see (a stream's copies dropped before its first frame heard or after its
    # last) is all that separates the two counts: a few frames per stream at most
    assert heard["frames"]["lost"] <= injected <= heard["frames"]["lost"] + 3 * heard["streams"], (heard, injected)


def test_an_slo_on_the_stall_rate_decides_the_exit_code(locust_run, write_profile, tmp_path):
    """`media.stall_rate: value < 1%` passes a clean run; `media.loss_rate: value < 1%` fails a lossy one."""
    slo = tmp_path / "slo.yaml"
    slo.write_text('media.stall_rate: ["value < 1%"]\nmedia.loss_rate: ["value < 1%"]\n')
    profile = ROOMS + CLEAN.replace("TRANSPORT", "udp")
    clean = locust_run("voiceroom.py", *RUN, "--slo", str(slo), "--profile", write_profile(profile, "clean.yaml"))
    lossy = locust_run("voiceroom.py", *RUN, "--slo", str(slo), "--profile", write_profile(profile + BURSTY, "l.yaml"))
    assert clean.returncode == 0, clean
    assert lossy.returncode == 1, lossy
    verdict = {check["name"]: check for check in lossy.summary["slo"]["checks"]}
    assert verdict["media.loss_rate value < 1%"]["passed"] is False, verdict
    assert verdict["media.loss_rate value < 1%"]["value"] == pytest.approx(lossy.summary["media"]["loss_rate"] * 100)


def test_two_workers_add_up_what_their_listeners_heard(locust_run, write_profile):
    """Across two worker processes, what the listeners of both heard reaches the master's summary."""
    port = str(free_port())
    run = locust_run("voiceroom.py", "--processes", "2", "--master-bind-port", port, "--master-port", port, *RUN,
                     "--profile", write_profile(ROOMS + CLEAN.replace("TRANSPORT", "udp")))  # fmt: skip
    assert run.returncode == 0, run
    audio, workers = run.summary["media"], run.summary["workers"]
    assert run.summary["generator"]["workers"] == 2
    assert audio["frames"]["received"] > 0 and audio["frames"]["lost"] == 0, audio
    listeners = audio["listeners"]["decoding"] + audio["listeners"]["counting"]
    assert listeners >= 2, (audio, workers)
