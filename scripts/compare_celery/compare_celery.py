"""Celery's side of scripts/compare: the same task as examples/demo.rs
(record each finished message with its timings). Configured from the
environment: COMPARE_BROKER (URL) and COMPARE_RECORD (directory); the
record is compare_record's, in scripts/compare_dramatiq.

Results are ignored (no result backend), as the other frameworks keep none.
The worker's settings are its command-line options, given by scripts/compare.
"""
import os
import time

from celery import Celery

from compare_record import now_us, record

QUEUE = "celery-compare"

app = Celery("compare_celery", broker=os.environ["COMPARE_BROKER"])
app.conf.task_default_queue = QUEUE
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False

@app.task(name="step")
def step(seq, sent_us, work_ms):
    started = now_us()
    if work_ms:
        time.sleep(work_ms / 1000)
    record(f"{seq} {started} {now_us()} {sent_us}\n")


def send(count, work_ms, interval_ms):
    """Sends `count` step messages over one producer; returns the seconds it took."""
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for seq in range(count):
            if interval_ms:
                time.sleep(interval_ms / 1000)
            step.apply_async((seq, now_us(), work_ms), producer=producer)
    return time.perf_counter() - started


def purge():
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.queue_declare(QUEUE, durable=True, auto_delete=False)
        channel.queue_purge(QUEUE)
