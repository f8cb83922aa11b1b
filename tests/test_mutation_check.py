"""scripts/mutation_check.py: every mutant's pattern matches the code exactly once, and its tests exist."""

from __future__ import annotations

import importlib.util
import os
import sys

from tests.conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("mutation_check", os.path.join(REPO, "scripts", "mutation_check.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def test_every_mutant_pattern_matches_exactly_once_and_names_existing_tests():
    mc = _script()
    assert mc.check_patterns(REPO, mc.MUTANTS) == []
    assert len({m.name for m in mc.MUTANTS}) == len(mc.MUTANTS)
    for m in mc.MUTANTS:
        for node in m.tests:
            path, _, name = node.partition("::")  # a whole test file, or one test in it
            with open(os.path.join(REPO, path)) as f:
                assert not name or f"def {name.split('[')[0]}(" in f.read(), node


def test_a_pattern_that_moved_is_reported():
    mc = _script()
    gone = mc.Mutant("gone", (("segformer_tao/io.py", "no such text", "x"),), ("tests/test_io.py::t",))
    twice = mc.Mutant("twice", (("segformer_tao/io.py", "import", "x"),), ("tests/test_io.py::t",))
    problems = mc.check_patterns(REPO, (gone, twice))
    assert problems[0].startswith("gone: segformer_tao/io.py: pattern not found")
    assert problems[1].startswith("twice: segformer_tao/io.py: pattern found ")
