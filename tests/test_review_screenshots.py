"""scripts/review-screenshots, which makes the pictures of docs/review.md, keeps working."""

import subprocess
import sys

from tests.support import ROOT, SCALE


def test_the_review_pictures_can_be_remade(tmp_path):
    """Short real runs, a report and a comparison that catches the candidate's 30 ms, both shot as PNGs."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "review-screenshots"), "--out", str(tmp_path), "--seconds", "6"],
        capture_output=True,
        text=True,
        timeout=240 * SCALE,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in ("review-report.png", "review-compare.png"):
        picture = (tmp_path / name).read_bytes()
        assert picture.startswith(b"\x89PNG") and len(picture) > 50_000, name
