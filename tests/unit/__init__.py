"""Unit tests: pure functions and in-process parts; no daemon and no simulator process."""
