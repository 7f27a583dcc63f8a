"""Dramatiq's side of scripts/compare: the same actors as examples/demo.rs
(record each finished message with its timings) and the memory scenario's
failing actor. Configured from the environment: COMPARE_BROKER (URL) and
COMPARE_RECORD (directory)."""
import os
import time

import dramatiq

from compare_record import now_us, record

URL = os.environ["COMPARE_BROKER"]

if URL.startswith("redis"):
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=URL)
else:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="dramatiq-compare", max_retries=0)
def step(seq, sent_us, work_ms):
    started = now_us()
    if work_ms:
        time.sleep(work_ms / 1000)
    record(f"{seq} {started} {now_us()} {sent_us}\n")


class LargeError(Exception):
    def __init__(self, buffer):
        super().__init__(f"failed with {len(buffer)} bytes of context")
        self.buffer = buffer


@dramatiq.actor(queue_name="dramatiq-compare-fail", max_retries=20, min_backoff=10, max_backoff=100)
def fail_large():
    record(f"attempt {now_us()}\n")
    raise LargeError(bytearray(b"\xa5" * (10 * 1024 * 1024)))
