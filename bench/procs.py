"""Peak resident memory of every process of a run (``pivot serve``, its listener child, ``pivot ingest``…).

:class:`PeakRss` samples the process trees of the given pids every ``interval`` seconds from a thread
and keeps, per pid, the largest ``VmHWM`` (the kernel's own peak RSS of that process) it read and
the process's command line; a process that exits between two samples keeps its last reading (its
peak can be up to one interval of growth above it). Linux /proc only; elsewhere it reports nothing.
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/<pid>/task/*/children), depth first."""
    out: list[int] = []
    tasks = Path(f"/proc/{pid}/task")
    try:
        for task in tasks.iterdir():
            for child in (task / "children").read_text().split():
                out.append(int(child))
                out.extend(children(int(child)))
    except OSError:
        pass
    return out


def hwm_kb(pid: int) -> int:
    """``VmHWM`` of ``pid`` in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _name(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in args if a]
    if "-m" in words and words.index("-m") + 1 < len(words):
        words = words[words.index("-m") + 1:]
    elif words:
        words = [Path(words[0]).name, *words[1:]]
    return " ".join(words)[:60]


class PeakRss:
    """Per-process peak RSS of the trees rooted at ``roots`` (add more with :meth:`watch`)."""

    def __init__(self, *roots: int, interval: float = 0.5) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, pid: int) -> None:
        self.roots.append(pid)
        self.sample()

    def sample(self) -> None:
        for root in list(self.roots):
            for pid in [root, *children(root)]:
                kb = hwm_kb(pid)
                if kb:
                    name, old = self.peaks.get(pid, ("", 0))
                    self.peaks[pid] = (name or _name(pid), max(old, kb))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> list[tuple[int, str, float]]:
        """(pid, command, peak MB), largest first."""
        return sorted(((pid, name, kb / 1024) for pid, (name, kb) in self.peaks.items()), key=lambda r: -r[2])


def load_note() -> str:
    """The machine's load average (1, 5, 15 min) and CPUs, for the header of a figure."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} CPUs"


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants (0 for the gone)."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def reaped_cpu_s() -> float:
    """CPU seconds of this process's reaped children so far (the difference around a wait is that child's)."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime
