"""The machine a command runs on: its cores and how busy they are (torch-free).

Compute threads that outnumber the cores slow everything down far more than in proportion: two
trainings with 2 threads each on a 2-core machine ran 7x slower than one alone (13 against 95
crops/s), as the threads of each spin waiting for the others' at every parallel region. So a
command that starts heavy work first looks at the load average and, when its threads would
oversubscribe the machine, says so (:func:`oversubscription`). The load average remembers the last
minute, so it is checked against the threads running at this instant: in a pipeline of jobs run one
after the other, each would otherwise be warned about the one that has just ended.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "IO_THREADS_MAX",
    "IO_THREADS_PER_CORE",
    "Busy",
    "cpu_cores",
    "default_threads",
    "io_threads",
    "oversubscription",
    "others_running",
]


@dataclass(frozen=True)
class Busy:
    """A busy machine: 1-minute ``load`` average, usable ``cores``, and the ``threads`` a run would add."""

    load: float
    cores: int
    threads: int

    def free(self) -> int:
        """Threads the machine has to spare (at least 1)."""
        return max(1, round(self.cores - self.load))


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity, else all)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


IO_THREADS_PER_CORE = 2
IO_THREADS_MAX = 8


def io_threads() -> int:
    """Threads for many small file reads (audio headers): two per core, at most 8.

    More is slower on few cores: the kernel's share of each read grows with the threads that wait on
    it. A cold 1.09M-file tree on 2 cores: 8 threads 124 s (112 s of system time), 4 threads 111 s (83 s).
    """
    return min(IO_THREADS_MAX, IO_THREADS_PER_CORE * cpu_cores())


def default_threads(threads: int | None = None) -> int:
    """The compute threads a torch run will use: ``threads``, else ``OMP_NUM_THREADS``, else a core each."""
    if threads:
        return threads
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return cpu_cores()


def others_running() -> int | None:
    """Threads of other processes that are runnable at this instant (``/proc/loadavg``'s running count,
    less this one), or ``None`` where that is not known."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


def oversubscription(
    threads: int | None = None, load: float | None = None, cores: int | None = None, others: int | None = -1
) -> Busy | None:
    """A :class:`Busy` when other work already keeps the cores busy (1-minute load average of at least
    one, and other threads running now) and ``threads`` more (see :func:`default_threads`) would make
    the runnable threads exceed the cores by a quarter or more; else ``None`` (always for a
    one-thread run, which cannot give a core back). ``load``, ``cores`` and ``others``
    (:func:`others_running`; ``None``: unknown, trust the load) default to the machine's."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            return None
    if others == -1:
        others = others_running()
    if others == 0:  # the load average's memory of work that has ended
        return None
    cores = cores or cpu_cores()
    want = default_threads(threads)
    if want <= 1:  # one thread is the least a run can take: advice to take fewer would be noise
        return None
    if load >= 1.0 and load + want > 1.25 * cores:
        return Busy(round(load, 1), cores, want)
    return None
