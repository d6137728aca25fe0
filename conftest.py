# Tests import the library as installed (pip install -e .); this file being at the root lets
# pytest import `tests` as a package too (tests/errors.py, the shared one-line-error check).
#
# CI strictness: under CI=true (also CI=1 / CI=True) a skip fails the run, unless the test (or the
# module) is marked `gpu`. A missing outside reference (torch, transformers, tokenizers,
# hypothesis, ...) must not pass silently in CI; only a missing GPU may. Two places can skip:
# a test's setup/call/teardown (pytest.skip, skipif, importorskip inside a test or a fixture),
# and the collection of a module (a module-level pytest.importorskip).
import ast
import os

import pytest


def ci_is_strict():
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def skip_reason(longrepr):
    """The reason text of a skip report: longrepr is (path, lineno, "Skipped: reason") or text."""
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def module_marks_gpu(path):
    """True when a test file assigns `pytestmark` at top level with pytest.mark.gpu in it.

    Needed for a module that skips while it is imported (pytest.importorskip("cupy") at top
    level): pytest reads a module's marks only after the import succeeded, so the file's text
    is the only place left to find them."""
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets, value = [node.target], node.value
        else:
            continue
        if value is None or not any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
            continue
        if any(isinstance(n, ast.Attribute) and n.attr == "gpu"
               and isinstance(n.value, ast.Attribute) and n.value.attr == "mark" for n in ast.walk(value)):
            return True
    return False


def fail_the_skip(report):
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true: {skip_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and ci_is_strict() and not hasattr(report, "wasxfail")   # xfail is no skip
            and item.get_closest_marker("gpu") is None):
        fail_the_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and ci_is_strict()):
        return
    if collector.get_closest_marker("gpu") is not None:
        return
    path = getattr(collector, "path", None)
    if path is not None and str(path).endswith(".py") and module_marks_gpu(path):
        return
    fail_the_skip(report)
