"""The test tree keeps its layout: every test file in tests/unit, tests/e2e or tests/sim, and
every test directory a package (an __init__.py), so that `tests.<dir>.<module>` names are unique
and helper modules in tests/ are imported the same way from everywhere."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
TEST_DIRS = ("unit", "e2e", "sim")


def test_no_test_file_is_left_directly_in_tests() -> None:
    stray = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert not stray, f"move {stray} into tests/unit, tests/e2e or tests/sim"


def test_every_test_directory_is_a_package() -> None:
    dirs = {p.parent for p in TESTS.rglob("test_*.py")} | {TESTS / d for d in TEST_DIRS}
    missing = sorted(str(d.relative_to(TESTS)) for d in dirs if not (d / "__init__.py").is_file())
    assert not missing, f"no __init__.py in tests/{missing}"


def test_the_sim_tests_are_in_tests_sim() -> None:
    misplaced = sorted(str(p.relative_to(TESTS)) for p in TESTS.rglob("test_sim_*.py")
                       if p.parent != TESTS / "sim")
    assert not misplaced, misplaced
