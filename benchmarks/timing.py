"""Wall-clock timing shared by the benchmarks: each call of fn timed alone, medians reported.
Imports neither NumPy nor Numba, so a benchmark can import it before it sizes their pools."""
import statistics
import time


def timed(fn, repeats):
    """Seconds of each of `repeats` calls of fn."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, repeats):
    """Median seconds of `repeats` calls of fn (the caller warms up first, if it must)."""
    return statistics.median(timed(fn, repeats))
