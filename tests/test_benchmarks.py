"""Each benchmark's --quick mode runs (in CI too): `python benchmarks/X.py --quick` exits 0 and
prints its check lines, its table header and rows with the ratios measured in the run.

The scripts run as subprocesses from the repository root, one BLAS / Numba / torch thread each
(--threads 1 where a script sizes its own pools): on a busy 2-core machine spinning worker
threads make everything several times slower. Numbers are not judged, only that they are there.
benchmarks/gpu.py needs a GPU: without one it must stop with one clear line (no traceback); with
one its --quick run is tested like the others (both marked gpu: each skips on one kind of machine).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"

try:
    import cupy
    HAS_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:                       # no cupy, no driver: the same as no GPU
    HAS_GPU = False


def run_benchmark(script, *args, timeout=300):
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1",
               **{var: "1" for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                       "NUMBA_NUM_THREADS")})
    return subprocess.run([sys.executable, f"benchmarks/{script}.py", "--quick", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def lines_matching(out, pattern):
    return re.findall(pattern, out, flags=re.M)


def check_ran(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_attention_quick():
    out = check_ran(run_benchmark("attention"))
    assert len(lines_matching(out, rf"^check T=(256|512): max rel err out {NUMBER}  dq {NUMBER}")) == 2
    assert lines_matching(out, r"^\s+T \|\s+dense ms \|\s+kernel ms \|\s+speedup$")
    rows = lines_matching(out, rf"^\s+(256|512) \|\s+{NUMBER} \|\s+{NUMBER} \|\s+{NUMBER}x$")
    assert rows == ["256", "512"]


def test_train_step_quick():
    out = check_ran(run_benchmark("train_step", "--threads", "1"))
    assert "; threads 1 (numba 1" in out
    assert lines_matching(out, rf"^check, loss ours / torch: {NUMBER} / {NUMBER}, .*\(max diff {NUMBER}\)$")
    assert lines_matching(out, r"^framework\s+\| ms/step \(median\) \|\s+tokens/s \| ratio vs PyTorch "
                               r"\| share of measured matmul \(1 thr\)$")
    for name in ("MiniTransformer", "PyTorch eager"):
        assert lines_matching(out, rf"^{name}\s+\|\s+{NUMBER} \|\s+{NUMBER} \|\s+{NUMBER}x \|\s+{NUMBER}%$"), name
    assert "MFU" not in out
    for row in (r"attention \(Numba kernel\)", r"attention \(banded\)"):
        assert lines_matching(out, rf"^{row}\s+\|\s+{NUMBER} \|\s+{NUMBER} \|\s+{NUMBER} \|\s+{NUMBER}%$"), row


def test_generate_quick():
    out = check_ran(run_benchmark("generate", "--threads", "1"))
    assert "check: 24 greedy tokens identical with and without the KV cache" in out
    assert "128 new tokens, window 128" in out and "(tokens identical in both modes: yes)" in out
    assert lines_matching(out, r"^mode\s+\|\s+total s \|\s+tokens/s \|\s+speedup$")
    for mode in (r"recompute \(use_cache=False\)", "KV cache"):
        assert lines_matching(out, rf"^{mode}\s+\|\s+{NUMBER} \|\s+{NUMBER} \|\s+{NUMBER}x$"), mode
    assert lines_matching(out, r"^window\s+\| mode\s+\|\s+early ms \|\s+late ms \| late/early$")
    per_token = lines_matching(out, rf"^(64|None)\s+\| (KV cache|recompute)\s*\|\s+{NUMBER} \|\s+{NUMBER} \|\s+{NUMBER}x$")
    assert sorted(per_token) == sorted([("64", "KV cache"), ("64", "recompute"), ("None", "KV cache"), ("None", "recompute")])


def test_tokenizer_quick():
    out = check_ran(run_benchmark("tokenizer_speed"))
    assert "note: --quick" in out and "repeats 1;" in out
    assert lines_matching(out, r"^measurement\s+ours\s+reference\s+HF\s+ratio\s+target\s+met$")
    rows = {
        r"train \d+ merges \(vocab 1024\), s": 0, r"train 30 merges, same work, s": 1,
        r"encode [\d.]+ MB, MB/s \(HF: encode_batch\)": 0, r"bytes per token, held out": 0}
    for what, has_reference in rows.items():
        reference = NUMBER if has_reference else "-"
        assert lines_matching(out, rf"^{what}\s+{NUMBER}\s+{reference}\s+{NUMBER}\s+{NUMBER}\s+.+\s(yes|NO)$"), what
    assert "Checked in this run: reference merges == Numba merges; HF encodes our tokenizer.json" in out


def test_distillation_quick(tmp_path):
    out = check_ran(run_benchmark("distillation", "--on_policy", "--cache_dir", str(tmp_path)))
    assert lines_matching(out, r"^model\s+params\s+steps\s+val loss\s+val ppl")
    for model in ("teacher", "scratch", "scratch@ce0.2", "distilled"):
        assert lines_matching(out, rf"^{re.escape(model)}\s+[\d,]+\s+\d+\s+{NUMBER}\s+{NUMBER}"), model
    assert lines_matching(out, rf"^gap closed vs scratch.*= {NUMBER}%")
    for method in ("kd", "on-policy λ=0.5", "on-policy λ=1", "MiniLLM λ=1", "seq-KD"):
        for budget in ("equal steps", "equal time") if method != "kd" else ("equal steps",):
            assert lines_matching(out, rf"^{re.escape(method)}\s+{budget}\s+\d+\s+{NUMBER}\s+{NUMBER}\s+"
                                       rf"{NUMBER}\s+{NUMBER}x$"), (method, budget)


def test_distributed_quick():
    result = run_benchmark("distributed")         # its workers set their own thread counts
    if result.returncode == 2 and "needs mpi4py and mpiexec" in result.stderr:
        pytest.skip(result.stderr.strip())
    out = check_ran(result)
    assert "note: --quick" in out
    assert lines_matching(out, rf"^check, step-0 gradients after the all-reduce vs 1x1 .*: 1x2 rank 0 max diff "
                               rf"{NUMBER}, 2x1 rank 0 max diff {NUMBER}, 2x1 rank 1 max diff {NUMBER}: equal$")
    assert lines_matching(out, r"^configuration\s+\|\s+ms/step \|\s+tokens/s \| ratio vs 1x1 "
                               r"\| all-reduce ms/step \| all-reduce share of step$")
    for label in ("1 rank x 1 thread", "1 rank x 2 threads"):
        assert lines_matching(out, rf"^{label}\s+\|\s+{NUMBER} \|\s+{NUMBER} \|\s+{NUMBER}x \|\s+- \|\s+-$"), label
    assert lines_matching(out, rf"^2 ranks x 1 thread\s+\|\s+{NUMBER} \|\s+{NUMBER} \|\s+{NUMBER}x \|\s+{NUMBER} "
                               rf"\|\s+{NUMBER}%$")
    assert lines_matching(out, r"^all-reduced per step: [\d,]+ bytes .* in \d+ bucket")
    assert "1x1 numba 1 openblas 1, 1x2 numba 2 openblas 2, 2x1 numba 1 openblas 1" in out


@pytest.mark.gpu                                     # it skips ON a GPU machine
@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU exit; a GPU is present")
def test_teacher_cost_quick():
    out = check_ran(run_benchmark("teacher_cost", "--threads", "1"))
    assert lines_matching(out, r"^measured\s+\|\s+ms \| vs student step$")
    for row in ("student step \\(CE\\)", "teacher forward \\(inference\\)", "distilled step, teacher live",
                "distilled step, top-k cache"):
        assert lines_matching(out, rf"^{row}\s+\|\s+{NUMBER} \|\s+{NUMBER}x$"), row
    assert lines_matching(out, rf"^top-k cache on disk: {NUMBER} bytes per token \(k=32: 256 bytes")


def test_gpu_quick_without_a_gpu_says_so_in_one_line():
    result = run_benchmark("gpu", timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""
    assert re.fullmatch(r"benchmarks/gpu\.py needs a GPU visible to CuPy \(pip install cupy-cuda12x\): .+\n",
                        result.stderr), result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU visible to CuPy")
def test_gpu_quick():
    out = check_ran(run_benchmark("gpu", timeout=600))
    assert lines_matching(out, rf"^CuPy float32 matmul 8192\^3: {NUMBER} TFLOP/s")
    assert lines_matching(out, r"^framework\s+\|\s+ms/step \|\s+tokens/s \| vs PyTorch \| share of measured matmul \(GPU\)$")
    assert lines_matching(out, rf"^MiniTransformer, dense attention\s+\|\s+{NUMBER} \|\s+{NUMBER} \|.*\|\s+{NUMBER}%$")
    assert lines_matching(out, rf"^\s+1024 \|\s+{NUMBER} \|\s+{NUMBER} \|\s+{NUMBER}x \|\s+{NUMBER}$")
    assert lines_matching(out, r"^op\s+\|\s+arrays ms \|\s+fused ms \|\s+speedup \| max rel err$")
    assert "MFU" not in out
