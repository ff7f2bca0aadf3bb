"""Profiles: defaults, overrides, and errors naming file, line and key."""

from pathlib import Path

import pytest

from loadgen.profile import MessagingProfile, ProfileError, load_profile, reference
from tests.support import profile_error

ROOT = Path(__file__).resolve().parent.parent


def test_no_profile_gives_defaults():
    """Running without --profile uses every default."""
    assert load_profile(None).messaging == MessagingProfile()


def test_keys_override_defaults(tmp_path):
    """A key set in the file replaces its default; integers are accepted for rates."""
    path = tmp_path / "p.yaml"
    path.write_text("messaging:\n  rooms: 3\n  post_rate: 2\n")
    profile = load_profile(path)
    assert profile.messaging.rooms == 3 and profile.messaging.post_rate == 2.0
    assert profile.messaging.dm_rate == MessagingProfile().dm_rate


@pytest.mark.parametrize(
    "text, where",
    [
        ("messaging:\n  rooms: 3\n  post_rate: fast\n", ":3: messaging.post_rate: must be a float"),
        ("messaging:\n  romos: 3\n", ":2: messaging.romos: unknown key"),
        ("chat:\n  rooms: 3\n", ":1: chat: unknown section"),
        ("messaging:\n  rooms: 0\n", ":2: messaging.rooms: must be at least 1"),
        ("messaging: [1, 2]\n", ":1: messaging: must be a mapping"),
        ("messaging:\n  rooms: [3\n", ": not valid YAML"),
        ("voiceroom:\n  storms:\n    - kind: hail\n", ":3: voiceroom.storms[0].kind: must be one of gift, seat_churn"),
        ("voiceroom:\n  storms: 3\n", ":2: voiceroom.storms: must be a list"),
        ("voiceroom:\n  hopper_share: 0.6\n  gifter_share: 0.6\n", "voiceroom.chatter_share: the shares"),
        ("voiceroom:\n  rooms: 2\n  hot_rooms: 3\n", ":3: voiceroom.hot_rooms: must not exceed rooms"),
    ],
)
def test_bad_profiles_name_file_line_and_key(tmp_path, text, where):
    """Every kind of mistake is reported with the file, the line and the key."""
    assert where in profile_error(tmp_path, text)


def test_missing_file_is_a_profile_error(tmp_path):
    """A profile path that does not exist is named in the error."""
    with pytest.raises(ProfileError, match="nope.yaml: cannot read"):
        load_profile(tmp_path / "nope.yaml")


def test_shipped_profiles_load():
    """Every profile shipped with the locustfiles is valid."""
    for path in sorted((ROOT / "locustfiles" / "profiles").glob("*.yaml")):
        load_profile(path)


def test_storms_are_read_as_a_list(tmp_path):
    """A storm list becomes frozen storm entries with defaults for what is left out."""
    path = tmp_path / "p.yaml"
    path.write_text("voiceroom:\n  storms:\n    - kind: gift\n      at: 3\n    - kind: seat_churn\n")
    storms = load_profile(path).voiceroom.storms
    assert [(s.kind, s.at) for s in storms] == [("gift", 3.0), ("seat_churn", 10.0)]


def test_docs_carry_the_generated_reference():
    """docs/profile.md holds the key tables exactly as the dataclasses write them."""
    assert reference() in (ROOT / "docs" / "profile.md").read_text()
