"""The same model on CuPy: skipped unless CuPy sees a GPU (CI has none).

The layer code never imports cupy; these tests hand it CuPy arrays and check that the results
equal the NumPy path, that gradient checks hold in float64 on the GPU, and that a checkpoint
written from GPU parameters loads on the CPU with the same logits.
"""
import numpy as np
import pytest

from mini_llm import backend

# marked gpu before the import that may skip: under CI=true only gpu skips are allowed (conftest.py)
pytestmark = [pytest.mark.gpu]
cupy = pytest.importorskip("cupy")
try:
    HAS_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:                       # no driver: the same as no GPU
    HAS_GPU = False
pytestmark.append(pytest.mark.skipif(not HAS_GPU, reason="no GPU visible to CuPy"))

from mini_llm.model import layers                                      # noqa: E402
from mini_llm.model.transformer import MiniTransformer, TransformerConfig  # noqa: E402


@pytest.fixture
def gpu():
    backend.set_device("gpu")
    yield cupy
    backend.set_device("cpu")


def config(**overrides):
    base = dict(vocab_size=31, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=24, max_seq_length=16, sliding_window=3)
    base.update(overrides)
    return TransformerConfig(**base)


def test_layers_on_gpu_equal_numpy(gpu):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 5, 8)), rng.normal(size=8)
    dy = rng.normal(size=(2, 5, 8))
    y_cpu, cache_cpu = layers.rmsnorm_forward(x, w, 1e-5)
    y_gpu, cache_gpu = layers.rmsnorm_forward(cupy.asarray(x), cupy.asarray(w), 1e-5)
    np.testing.assert_allclose(cupy.asnumpy(y_gpu), y_cpu, rtol=1e-12)
    for a, b in zip(layers.rmsnorm_backward(cupy.asarray(dy), cache_gpu), layers.rmsnorm_backward(dy, cache_cpu)):
        np.testing.assert_allclose(cupy.asnumpy(a), b, rtol=1e-12)


@pytest.mark.parametrize("window", [None, 3])
def test_model_gradients_on_gpu_equal_cpu_float64(gpu, window):
    ids = np.random.default_rng(0).integers(0, 31, size=(2, 8))
    results = []
    for device in ("cpu", "gpu"):
        backend.set_device(device)
        model = MiniTransformer(config(sliding_window=window), seed=0, dtype=np.float64)
        logits = model.forward(ids)
        model.backward(backend.xp().ones_like(logits))
        results.append((backend.to_host(logits), {n: backend.to_host(g) for n, g in model.grads.items()}))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-10, atol=1e-12)
    for name in results[0][1]:
        np.testing.assert_allclose(results[1][1][name], results[0][1][name], rtol=1e-8, atol=1e-12, err_msg=name)


def test_gpu_checkpoint_loads_on_cpu(gpu, tmp_path):
    ids = np.random.default_rng(1).integers(0, 31, size=(1, 10))
    model = MiniTransformer(config(), seed=3)
    gpu_logits = backend.to_host(model.forward(ids))
    model.save_pretrained(tmp_path)
    backend.set_device("cpu")
    cpu_logits = MiniTransformer.from_pretrained(tmp_path).forward(ids)
    np.testing.assert_allclose(cpu_logits, gpu_logits, rtol=1e-4, atol=1e-5)
