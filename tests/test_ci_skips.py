"""CI strictness (conftest.py): under CI=true a skip fails the run unless the test is marked gpu.

Each test runs an inner pytest session (the `pytester` fixture) whose conftest.py is a copy of
the repository's, on small test files that skip in every way the suite does: pytest.skip in a
test, a skipif mark, pytest.importorskip in a fixture and at module level, the same with the
gpu mark, and an xfail (which is not a skip and must stay an xfail).
"""
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"
MISSING = "module_that_no_machine_has_installed"

TESTS = f'''
import pytest

def test_passes():
    pass

def test_plain_skip():
    pytest.skip("no torch here")

@pytest.mark.skipif(True, reason="a condition says skip")
def test_skipif():
    pass

@pytest.fixture
def reference():
    return pytest.importorskip("{MISSING}")

def test_importorskip_in_a_fixture(reference):
    pass

@pytest.mark.gpu
def test_gpu_skip():
    pytest.skip("no GPU visible to CuPy")

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="no GPU visible to CuPy")
def test_gpu_skipif():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False
'''
MISSING_MODULE = f'''
import pytest
torch = pytest.importorskip("{MISSING}")

def test_never_collected():
    pass
'''
GPU_MODULE = f'''
import pytest
pytestmark = [pytest.mark.gpu]
cupy = pytest.importorskip("{MISSING}")

def test_never_collected():
    pass
'''


@pytest.fixture
def inner(pytester, monkeypatch):
    """An inner session with the repository's conftest.py; returns run(ci_value, *files)."""
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    pytester.makepyfile(test_skips=TESTS, test_missing_module=MISSING_MODULE, test_gpu_module=GPU_MODULE)

    def run(ci, *files):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        return pytester.runpytest("-rA", "-p", "no:cacheprovider", *files)
    return run


@pytest.mark.parametrize("ci", ["true", "1", "True"])
def test_under_ci_a_skip_fails_unless_marked_gpu(inner, ci):
    result = inner(ci, "test_skips.py")
    # a skip in the test body fails the test; one in setup (skipif, a fixture) is an error
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=2, xfailed=1)
    result.stdout.fnmatch_lines_random([
        "FAILED test_skips.py::test_plain_skip - skipped under CI=true: no torch here",
        "ERROR test_skips.py::test_skipif - skipped under CI=true: a condition says skip",
        f"ERROR test_skips.py::test_importorskip_in_a_fixture - skipped under CI=true: could not import '{MISSING}'*",
        "SKIPPED [[]1[]] test_skips.py:*: no GPU visible to CuPy",
    ])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_module_level_importorskip_fails(inner, ci):
    result = inner(ci, "test_missing_module.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*skipped under CI=true: could not import '{MISSING}'*"])
    assert result.ret != pytest.ExitCode.OK


def test_under_ci_a_gpu_module_may_skip(inner):
    result = inner("true", "test_gpu_module.py")
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED     # nothing ran, nothing failed


@pytest.mark.parametrize("ci", [None, "false", "0", ""])
def test_without_ci_everything_skips(inner, ci):
    result = inner(ci)
    result.assert_outcomes(passed=1, skipped=7, xfailed=1)   # 5 in test_skips, 2 modules
    assert "skipped under CI=true" not in result.stdout.str()
    assert result.ret == pytest.ExitCode.OK
