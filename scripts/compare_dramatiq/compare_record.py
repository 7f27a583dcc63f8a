"""The record of scripts/compare's Python peers (Dramatiq, Celery): one
line per finished message, written straight to COMPARE_RECORD/<pid>.done
(one write per line, as the demo example does)."""
import os
import time

RECORD = os.environ["COMPARE_RECORD"]

_fd = None


def record(line):
    global _fd
    if _fd is None:
        _fd = os.open(os.path.join(RECORD, f"{os.getpid()}.done"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, line.encode())


def now_us():
    return time.time_ns() // 1000
