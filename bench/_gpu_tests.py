"""pytest plugin for the ``tests`` section of ``bench/device_check.sh``: a GPU test that skips measured nothing.

    python -m pytest -p bench._gpu_tests -m gpu tests/...                 real mode (a GPU machine)
    python -m pytest -p bench._gpu_tests --gpu-dry-run -m gpu tests/...   the script's --dry-run (the CPU)

Real mode: the session stops at its start, before any test module is collected, when torch sees no CUDA
device (one line, exit status 3: every GPU test would only skip). At the end, a run in which any selected
test skipped (``pytest.skip``, ``skipif``, ``importorskip``) or xfailed exits 1 with a line naming them,
whatever pytest's own status was; so does a run in which no test ran at all. ``--gpu-dry-run`` turns both
checks off and only counts the skips.
"""
from __future__ import annotations

import pytest

START_FAILED = 3


def pytest_addoption(parser):
    parser.addoption("--gpu-dry-run", action="store_true",
                     help="device_check --dry-run: no CUDA needed, skipped GPU tests allowed (counted)")


def pytest_configure(config):
    config.pluginmanager.register(GpuRun(config.getoption("--gpu-dry-run")), "edg-gpu-run")


def _reason(report) -> str:
    if hasattr(report, "wasxfail"):
        return f"xfail: {report.wasxfail}" if report.wasxfail else "xfail"
    lr = report.longrepr
    return str(lr[2]).removeprefix("Skipped: ") if isinstance(lr, tuple) and len(lr) == 3 else str(lr)


class GpuRun:
    """Counts the selected tests that passed and those that skipped, and fails the run as the module says."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.passed = self.failed = 0
        self.skipped: list[tuple[str, str]] = []  # (test id, reason)
        self.verdict: str | None = None

    def pytest_sessionstart(self, session):
        if self.dry:
            return
        import torch
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            msg = (f"tests: FAILED at start: torch sees no CUDA device (torch {torch.__version__}, {build}); "
                   f"the GPU tests would only skip")
            print(msg, flush=True)
            pytest.exit(msg, returncode=START_FAILED)

    def pytest_runtest_logreport(self, report):
        if report.skipped:
            self.skipped.append((report.nodeid, _reason(report)))
        elif report.failed:
            self.failed += 1
        elif report.when == "call" and report.passed:
            self.passed += 1

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus):
        ran = self.passed + len(self.skipped)
        if self.dry:
            self.verdict = f"tests: dry run: {len(self.skipped)} of {ran} GPU tests skipped (allowed on the CPU)"
            return
        if self.skipped:
            names = "; ".join(f"{nodeid} ({why})" for nodeid, why in self.skipped)
            self.verdict = (f"tests: FAILED: {len(self.skipped)} of {ran} GPU tests skipped, so they measured "
                            f"nothing: {names}")
        elif self.passed + self.failed == 0:
            self.verdict = "tests: FAILED: no GPU test ran (none selected)"
        else:
            return
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.verdict:
            terminalreporter.write_line(self.verdict)
