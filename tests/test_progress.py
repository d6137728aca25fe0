"""mini_llm.progress: the notice for a slow first call (Numba compiling), the bar over an
evaluation, and the time-per-step estimate. Each is checked on what a user sees."""
import time

import numpy as np
import pytest

from mini_llm import progress
from training.loop import evaluate


def test_warm_up_announces_a_slow_first_call_once(capsys):
    calls = []
    progress.warm_up("test slow kernel", "slow test kernel", lambda: (calls.append(1), time.sleep(0.3)),
                     after=0.05)
    progress.warm_up("test slow kernel", "slow test kernel", lambda: calls.append(2), after=0.05)
    err = capsys.readouterr().err
    assert calls == [1]                                  # once per process
    assert err.count("Numba: compiling the slow test kernel; first run only") == 1


def test_warm_up_is_silent_when_the_kernel_loads_fast(capsys):
    progress.warm_up("test fast kernel", "fast test kernel", lambda: None, after=0.5)
    time.sleep(0.6)                                      # the timer, had it not been cancelled
    assert "compiling" not in capsys.readouterr().err


def test_evaluate_with_a_bar_evaluates_the_same_and_fills_it(monkeypatch):
    import training.loop as loop
    bars, real_tqdm = [], loop.tqdm

    def recording_tqdm(*args, **kwargs):
        bars.append(real_tqdm(*args, **kwargs))
        return bars[-1]
    monkeypatch.setattr(loop, "tqdm", recording_tqdm)
    rng = np.random.default_rng(0)
    logits_table = rng.normal(size=(7, 7))
    model = lambda ids: logits_table[ids]                               # noqa: E731
    sequences = rng.integers(0, 7, size=(5, 4))
    loss = evaluate(model, sequences, batch_size=2, desc="evaluating")
    assert [(b.desc, b.n, b.total) for b in bars] == [("evaluating", 5, 5)]
    assert loss == evaluate(model, sequences, batch_size=2)
    assert len(bars) == 2 and bars[-1].n == 0                           # no desc: a disabled bar


@pytest.mark.parametrize("seconds, text", [(0.0213, "21 ms"), (3.21, "3.2 s"), (95, "1.6 min"), (7200, "2.0 h")])
def test_duration(seconds, text):
    assert progress.duration(seconds) == text


def test_step_clock_prints_the_estimate_after_the_third_step(capsys, monkeypatch):
    now = iter([10.0, 12.0, 14.5, 17.0, 19.0])                          # end of steps 1..5
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(now))
    clock = progress.StepClock(start=0, steps=10)
    for _ in range(5):
        clock.tick()
    # steps 2 and 3 took 2 s and 2.5 s: 2.25 s per step, 7 steps left -> 15.75 s
    assert capsys.readouterr().out == "timing: 2.2 s per step (steps 2-3) -> about 15.8 s for the 7 steps left\n"
