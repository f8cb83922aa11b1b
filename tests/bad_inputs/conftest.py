"""Fixtures for the bad-input corpus: a small valid dataset, broken copies of it, a trained checkpoint."""

from __future__ import annotations

from tests.bad_inputs.fixtures import bad_paths  # noqa: F401  (fixture)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.bad_inputs.test_corpus import CASES

    ran = [r for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
           if "test_corpus.py::test_bad_input" in r.nodeid]
    terminalreporter.write_line(f"bad-input corpus: {len(CASES)} cases defined, {len(ran)} ran")
