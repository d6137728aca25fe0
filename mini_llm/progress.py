"""Progress for the long phases, so that no phase of more than a few seconds is silent: a
one-line notice when a first call (Numba compiling a kernel) takes more than a moment, and the
measured time per training step with the run's estimate. (Evaluations show their own bar:
training.loop.evaluate(..., desc=...).)

Bars and notices go to stderr (tqdm.write keeps them clear of a running bar); stdout keeps
the results: tables, log lines, generated text.
"""
import sys
import threading
import time

from tqdm import tqdm

_warmed = set()                 # kernels already warmed up in this process


def warm_up(name, what, tiny_call, after=1.0):
    """Once per process, before a kernel's first real call: run tiny_call(), the kernel on a
    tiny input, so that it costs only Numba's compile (seconds, on the first run) or the load
    of the compiled code from its on-disk cache (milliseconds, later). If it is still running
    after `after` seconds it is compiling, and one notice says so.

        warm_up("attention forward float32", "attention forward kernel", lambda: _forward(*tiny))
    """
    if name in _warmed:
        return
    _warmed.add(name)
    notice = (f"Numba: compiling the {what}; first run only (seconds each, up to about a minute in all), "
              "cached under __pycache__ for later runs")
    timer = threading.Timer(after, lambda: tqdm.write(notice, file=sys.stderr))
    timer.daemon = True
    timer.start()
    try:
        tiny_call()
    finally:
        timer.cancel()


def duration(seconds):
    """0.0213 -> '21 ms', 3.2 -> '3.2 s', 95 -> '1.6 min', 7200 -> '2.0 h'."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


class StepClock:
    """Times optimizer steps and, after the first few, prints once what a step costs and what
    the run will take. The first step is left out of the average: it includes Numba's compile
    and the first allocation of every buffer.

        clock = StepClock(start=0, steps=180)
        clock.tick()        # after each optimizer step
    -> "timing: 12.4 s per step (steps 2-3) -> about 37.2 min for the 177 steps left"
    """

    def __init__(self, start, steps, measure=2):
        self.step, self.steps, self.measure = start, steps, measure
        self.first = start + 1              # the step after which timing begins
        self.times, self.message = [], None

    def tick(self):
        self.step += 1
        self.times.append(time.perf_counter())
        timed = len(self.times) - 1             # steps timed, from the end of the first one
        if self.message is None and timed == self.measure and self.step < self.steps:
            per_step = (self.times[-1] - self.times[0]) / timed
            left = self.steps - self.step
            self.message = (f"timing: {duration(per_step)} per step (steps {self.first + 1}-{self.step})"
                            f" -> about {duration(per_step * left)} for the {left} steps left")
            tqdm.write(self.message)
