"""Data parallelism (mini_llm/distributed.py): N ranks with --batch_size b train exactly like one
process with --batch_size N·b.

The first tests need no MPI (the batch split, the buckets, the launcher checks). The others run
`mpiexec -n 2 python train.py ...` (mpi4py and the mpich wheel come with `pip install -e
".[test]"`) on a tiny model and compare its checkpoint with a single process's. Tolerance: the
sums over ranks add the same float32 numbers in another order, so the saved arrays agree to
atol 1e-6 (measured: 7e-9 after 4 steps), the logged losses to rel 1e-5 (a KL of 0.01 summed
in float32 differed by 1.3e-6 of itself).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mini_llm import distributed
from mini_llm.checkpoint import load_training_state
from mini_llm.model.transformer import MiniTransformer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_training.txt"
TINY = ["--data_path", str(SAMPLE), "--vocab_size", "300", "--hidden_size", "16", "--num_layers", "1",
        "--num_heads", "2", "--intermediate_size", "32", "--max_seq_length", "16", "--eval_every", "2",
        "--sample_tokens", "5"]
DISTILLED = ["--use_mock", "--mock_teacher_steps", "3", "--grad_accum_steps", "2"]   # teachers + accumulation
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- without MPI

@pytest.mark.parametrize("n_rows, size, shares", [
    (4, 2, [(0, 2), (2, 4)]), (5, 2, [(0, 3), (3, 5)]), (1, 2, [(0, 1), (1, 1)]),
    (7, 3, [(0, 3), (3, 5), (5, 7)])])
def test_share_cuts_the_global_batch_into_contiguous_blocks(n_rows, size, shares):
    group = distributed.Group()
    got = []
    for rank in range(size):
        group.rank, group.size = rank, size
        s = group.share(n_rows)
        got.append((s.start, s.stop))
    assert got == shares                                    # disjoint, in order, covering all rows


def test_buckets_pack_and_unpack():
    assert distributed.buckets(["a", "b", "c"], {"a": 10, "b": 10, "c": 30}, 25) == [["a", "b"], ["c"]]
    assert distributed.buckets(["a", "b"], {"a": 30, "b": 1}, 25) == [["a"], ["b"]]
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s).astype(np.float32) for s in [(3, 4), (5,), (2, 2, 2)]]
    flat = distributed.pack(arrays)
    assert flat.shape == (12 + 5 + 8,)
    out = [np.zeros_like(a) for a in arrays]
    distributed.unpack(flat * 2, out)
    assert all(np.array_equal(o, 2 * a) for o, a in zip(out, arrays))


def test_one_process_is_one_rank_and_imports_no_mpi(monkeypatch):
    for name in distributed.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)           # importing it would fail
    group = distributed.setup()
    assert (group.rank, group.size, group.comm) == (0, 1, None)
    grads = {"w": np.ones(3)}
    group.allreduce_grads(grads)
    assert np.array_equal(grads["w"], np.ones(3)) and group.sum_values({"ce": 2.0}) == {"ce": 2.0}


def test_a_launcher_without_mpi4py_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(distributed.NoMPI) as info:
        distributed.setup()
    message = str(info.value)
    assert message.splitlines() == [message] and "mpi4py" in message and "2 MPI ranks" in message


# ----------------------------------------------------------------------------- 2 ranks under mpiexec

def mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), else on PATH; None if neither."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(mpiexec() is None or not __import__("importlib").util.find_spec("mpi4py"),
                               reason="needs mpi4py and mpiexec: pip install -e \".[distributed]\"")


def train_py(out, *flags, ranks=1):
    command = [sys.executable, str(ROOT / "train.py"), "--output_dir", str(out), *TINY, *map(str, flags)]
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks), *command]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def arrays(out):
    ckpt = Path(out) / "checkpoint"
    found = dict(MiniTransformer.from_pretrained(ckpt).params)
    state, _ = load_training_state(ckpt / "training_state.safetensors")
    found.update({f"state:{k}": v for k, v in state.items()})
    return found


def assert_same_run(a, b):
    """Same saved arrays (float32 tolerance) and the same logged losses."""
    x, y = arrays(a), arrays(b)
    assert x.keys() == y.keys()
    for name in x:
        np.testing.assert_allclose(x[name], y[name], rtol=1e-4, atol=1e-6, err_msg=name)
    rows = [[json.loads(line) for line in (Path(o) / "metrics.jsonl").read_text().splitlines()]
            for o in (a, b)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]]
    for r0, r1 in zip(*rows):
        for key in r0:
            if key not in ("ms", "lr"):
                assert r1[key] == pytest.approx(r0[key], rel=1e-5, abs=1e-7), key


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, --batch_size 4, a mock teacher pair and 2 accumulated micro-batches."""
    out = tmp_path_factory.mktemp("single")
    result = train_py(out, *DISTILLED, "--batch_size", 4, "--max_steps", 4)
    assert result.returncode == 0, result.stderr
    return out


@needs_mpi
def test_two_ranks_train_like_one_process_with_twice_the_batch(single, tmp_path):
    result = train_py(tmp_path, *DISTILLED, "--batch_size", 2, "--max_steps", 4, ranks=2)
    assert result.returncode == 0, result.stderr
    assert "data parallel: 2 MPI ranks x --batch_size 2 = 4 sequences per micro-batch" in result.stdout
    assert result.stdout.count("checkpoint saved to") == 1             # rank 0 alone prints
    assert_same_run(single, tmp_path)


@needs_mpi
def test_two_ranks_resumed_equal_one_straight_run(single, tmp_path):
    assert train_py(tmp_path, *DISTILLED, "--batch_size", 2, "--max_steps", 2, ranks=2).returncode == 0
    resumed = train_py(tmp_path, "--max_steps", 4, "--resume", ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert "training steps 2..4" in resumed.stdout
    assert_same_run(single, tmp_path)
    other = train_py(tmp_path, "--max_steps", 6, "--resume")            # 1 rank: another schedule
    assert other.returncode == 2 and "trained by 2 rank(s)" in other.stderr


def rank_pids(run):
    """{rank: pid} of the ranks of one test run, found through /proc: their environment holds
    MINILLM_TEST_RUN=run (set for this run) and the launcher's PMI_RANK."""
    pids = {}
    for proc in Path("/proc").iterdir():
        try:
            environ = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
        except (OSError, ValueError):
            continue
        if environ.get(b"MINILLM_TEST_RUN") == str(run).encode() and b"PMI_RANK" in environ:
            pids[int(environ[b"PMI_RANK"])] = int(proc.name)
    return pids


@needs_mpi
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_sigterm_on_one_rank_stops_every_rank_with_a_checkpoint(tmp_path):
    """SIGTERM to rank 1 alone: both ranks stop after the same step, rank 0 saves it, exit 143."""
    command = [mpiexec(), "-n", "2", sys.executable, str(ROOT / "train.py"), "--output_dir",
               str(tmp_path), *TINY, "--teacher", "ngram", "--batch_size", "2", "--max_steps", "100000",
               "--eval_every", "0"]
    env = {**ENV, "MINILLM_TEST_RUN": str(tmp_path)}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    os.kill(rank_pids(tmp_path)[1], signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    _, meta = load_training_state(tmp_path / "checkpoint" / "training_state.safetensors")
    assert meta["step"] == len(metrics.read_text().splitlines()) >= 3
    assert f"interrupted: checkpoint of step {meta['step']} saved" in out


@needs_mpi
def test_ranks_that_disagree_on_the_command_line_stop_with_one_line(tmp_path):
    base = [sys.executable, str(ROOT / "train.py"), "--output_dir", str(tmp_path), *TINY, "--max_steps", "2"]
    command = [mpiexec(), "-n", "1", *base, "--batch_size", "2", ":", "-n", "1", *base, "--batch_size", "3"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "disagree on the command line" in lines[0]
    assert not (tmp_path / "checkpoint").exists()


@needs_mpi
def test_mpiexec_without_mpi4py_is_one_line_and_no_training(tmp_path):
    """Each rank alone would train on all the data: refused, one line from rank 0."""
    script = ("import sys; sys.modules['mpi4py'] = None; import train; "
              f"sys.exit(train.main(['--output_dir', {str(tmp_path)!r}, '--max_steps', '1']))")
    result = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", script], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "mpi4py is not installed" in lines[0]
    assert not (tmp_path / "metrics.jsonl").exists()


@needs_mpi
def test_two_ranks_fill_one_teacher_cache_that_a_later_run_reads(tmp_path):
    """--teacher_cache_topk: each rank stores the top-k of the sequences it computes in the one
    cache rank 0 created; a second 2-rank run reads every row back and trains the same."""
    flags = ["--teacher", "ngram", "--teacher_cache_topk", 8, "--batch_size", 2, "--max_steps", 3]
    one = train_py(tmp_path / "one", *flags[:-4], "--batch_size", 4, "--max_steps", 3)
    first = train_py(tmp_path / "two", *flags, ranks=2)
    assert one.returncode == 0 and first.returncode == 0, first.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two")
    filled = np.load(tmp_path / "two" / "teacher_cache" / "ngram" / "filled.npy")
    assert filled.sum() == 3 * 4                    # 3 steps x 4 sequences, from both ranks
    again = train_py(tmp_path / "two", *flags, "--overwrite", ranks=2)
    assert again.returncode == 0, again.stderr
    assert f"reusing {3 * 4}/" in again.stdout
    assert_same_run(tmp_path / "one", tmp_path / "two")
