"""Shared test setup: the count line the project's summary reads, and the
`install` marker of the slow virtual-environment install."""

import os

import pytest

_counts = {"passed": 0, "failed": 0}


def pytest_configure(config):
    config.addinivalue_line("markers", "install: installs the package into a virtual "
                            "environment (slow; a meson test of its own)")


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        _counts["passed"] += 1
    elif report.failed:  # a failed call, or a setup/teardown error
        _counts["failed"] += 1


def pytest_terminal_summary(terminalreporter):
    # tests/summarize.py counts a test program's cases from this line
    terminalreporter.write_line(f"tl-check: {_counts['passed']} passed, "
                                f"{_counts['failed']} failed")


@pytest.fixture
def env_path():
    """A path from the environment the meson test sets, or a skip."""
    def get(name):
        value = os.environ.get(name)
        if not value:
            pytest.skip(f"{name} is not set (run through meson test)")
        return value
    return get
