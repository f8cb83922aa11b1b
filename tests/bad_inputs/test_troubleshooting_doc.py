"""docs/troubleshooting.md is generated from the source by scripts/gen_troubleshooting.py and must be current."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_troubleshooting_doc_is_up_to_date():
    proc = subprocess.run([sys.executable, "scripts/gen_troubleshooting.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\nRun `python scripts/gen_troubleshooting.py`."


def test_no_source_code_survives_in_the_messages():
    """Run-time parts read as <name> (or [optional phrase]), never as the expression that computes them."""
    import re

    sys.path.insert(0, f"{REPO}/scripts")
    try:
        import gen_troubleshooting
    finally:
        sys.path.pop(0)
    for entry in gen_troubleshooting.catalogue():
        for part in re.findall(r"<([^<>]*)>", entry["message"]):
            assert re.fullmatch(r"[A-Za-z0-9_ ./|-]+", part), (part, entry["message"])


def test_catalogue_covers_the_errors_the_corpus_meets():
    sys.path.insert(0, f"{REPO}/scripts")
    try:
        import gen_troubleshooting
    finally:
        sys.path.pop(0)
    messages = " ".join(e["message"] for e in gen_troubleshooting.catalogue())
    for phrase in ("is encrypted but no encryption_key was given", "Refused to load", "Nothing was left half-written",
                   "Unpaired files in split", "has colours not in dataset.segment.palette", "Cannot reach the S3"):
        assert phrase in messages, phrase
