"""A bus consumer process for the tests: records each order id it handled, one a line.

Usage: python consumer_proc.py URL GROUP CONSUMER OUT_FILE [DELAY_S [CLAIM_IDLE_S]]

Prints ``ready`` once connected; stops cleanly on SIGINT (run_forever's Ctrl-C).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from agentstream.bus import RedisBus


def main() -> None:
    url, group, consumer, out = sys.argv[1:5]
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    claim_idle = float(sys.argv[6]) if len(sys.argv) > 6 else 30.0
    bus = RedisBus(
        url,
        group=group,
        consumer=consumer,
        start="0",
        batch=5,
        block_ms=100,
        claim_idle=claim_idle,
        max_in_flight=50,
    )
    sink = open(out, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the process

    @bus.on_order_update()
    def on_order(data: dict[str, Any]) -> None:
        if delay:
            time.sleep(delay)
        sink.write(f"{data['order_id']}\n")

    @bus.on_connect
    def ready() -> None:
        print("ready", flush=True)

    bus.run_forever()
    sink.close()


if __name__ == "__main__":
    main()
