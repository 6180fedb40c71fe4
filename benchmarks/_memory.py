"""Peak resident memory of this process, for the CPU benchmarks (Linux ``/proc``; ``ru_maxrss`` elsewhere), and the
allocator settings a CPU time depends on."""
import os
import resource
from typing import Callable, Dict, List, Tuple

__all__ = ['status_mb', 'reset_peak', 'timed_peak', 'allocator_env']


def allocator_env() -> Dict[str, str]:
    """The environment variables that change how this process allocates memory (a third of a CPU iteration's time
    can be page faults: BENCHMARKS.md), for the results' JSON."""
    return {k: os.environ[k] for k in ('GLIBC_TUNABLES', 'THP_MEM_ALLOC_ENABLE', 'LD_PRELOAD', 'MALLOC_CONF')
            if k in os.environ}


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` entry (``VmRSS``, ``VmHWM``) in MB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak() -> bool:
    """Reset the peak RSS (``VmHWM``) to the current RSS: ``/proc/self/clear_refs`` = 5, Linux >= 4.0."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def timed_peak(run: Callable[[int], None], repeats: int) -> Tuple[List[float], float, float, str]:
    """``run(r)`` for ``r = 1..repeats`` after the caller's warm-up: ``(seconds of each, baseline MB, peak MB,
    method)``; the peak growth ``peak - baseline`` is the memory one run needs."""
    import time
    reset = reset_peak()
    rss0 = status_mb('VmRSS') if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        run(r + 1)
        times.append(time.perf_counter() - t0)
    rss1 = status_mb('VmHWM') if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return times, rss0, rss1, 'VmHWM after clear_refs reset' if reset else 'ru_maxrss delta'
