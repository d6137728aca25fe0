"""mini_llm/threads.py: one thread count for every pool, spin settings before NumPy loads,
and one error line for a bad --threads."""
import json
import os
import subprocess
import sys

import numba
import pytest
from threadpoolctl import threadpool_info

import evaluate
import generate
import train
from mini_llm import threads
from tests.errors import assert_one_error
from tests.test_bad_inputs import call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_environment(code, **env):
    """Run `code` in a fresh interpreter (env: extra variables) and return its printed JSON."""
    full = {k: v for k, v in os.environ.items() if k not in threads.SPIN_SETTINGS}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


SPIN = "import json, os; print(json.dumps({k: os.environ.get(k) for k in %r}))" % list(threads.SPIN_SETTINGS)


def test_importing_mini_llm_first_sets_the_spin_settings():
    assert child_environment("import mini_llm; " + SPIN) == threads.SPIN_SETTINGS


def test_a_value_the_user_set_wins():
    got = child_environment("import mini_llm; " + SPIN, OPENBLAS_THREAD_TIMEOUT="7")
    assert got["OPENBLAS_THREAD_TIMEOUT"] == "7"


def test_nothing_changes_once_numpy_is_loaded():
    """Too late to matter, so prepare_environment leaves the environment alone (and says so)."""
    code = "import numpy, json, os; from mini_llm import threads; print(json.dumps(threads.prepare_environment()))"
    assert child_environment(code) is False


def test_set_threads_sizes_blas_and_numba():
    before = numba.get_num_threads()
    try:
        assert threads.set_threads(1) == 1
        assert numba.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
        assert threads.describe().startswith("threads: numba 1")
    finally:
        threads.set_threads(before)


def test_default_shares_the_cores_among_the_ranks_of_a_machine():
    before = numba.get_num_threads()
    try:
        cores = min(threads.available_cores(), numba.config.NUMBA_NUM_THREADS)
        assert threads.set_threads() == cores
        assert threads.set_threads(None, ranks_here=cores * 4) == 1
    finally:
        threads.set_threads(before)


@pytest.mark.parametrize("bad", [0, -2, 10_000])
def test_bad_threads_is_one_error_line(tmp_path, bad):
    assert_one_error(call(train.main, ["--use_mock", "--output_dir", tmp_path / "run", "--threads", bad]), "--threads")
    assert_one_error(call(generate.main, ["--checkpoint", tmp_path, "--threads", bad]), "--threads")
    assert_one_error(call(evaluate.main, ["--checkpoint", tmp_path, "--data_path", tmp_path, "--threads", bad]),
                     "--threads")
