"""Task functions and a service class for the captured-output tests (issue 18 part 2):
module level, so workers and replicas import them."""

from __future__ import annotations

import logging
import os
import sys
import time

MARK_WAIT_S = 60.0  # a task waits at most this long for the test's mark file


def chatty(ctx) -> None:
    """Print, write to stderr and log; wait for the test's mark; fail on attempt 0 when
    ``fail_first``; with ``flood_lines`` print that many lines first."""
    for k in range(int(ctx.params.get("flood_lines", 0))):
        print(f"flood {k} " + "f" * 200)
    print(f"hello from {ctx.task}[{ctx.instance}] attempt {ctx.attempt}")
    sys.stderr.write(f"to stderr attempt {ctx.attempt}\n")
    logging.getLogger("user.task").warning("logged attempt %d", ctx.attempt)
    ctx.log.info("ctx.log attempt %d", ctx.attempt)
    sys.stdout.flush()
    mark = os.path.join(ctx.params["dir"], f"go-{ctx.instance}-{ctx.attempt}")
    until = time.monotonic() + MARK_WAIT_S
    while not os.path.exists(mark) and time.monotonic() < until:
        time.sleep(0.05)
    print(f"released attempt {ctx.attempt}")
    if ctx.params.get("fail_first") and ctx.attempt == 0:
        raise RuntimeError("first attempt fails on purpose")


class Talker:
    """A service whose replica prints at start and on every call."""

    def __init__(self, greeting: str = "hi"):
        self.greeting = greeting
        print(f"talker starting: {greeting}")

    def say(self, who: str) -> str:
        print(f"say called for {who}")
        logging.getLogger("talker").warning("said to %s", who)
        return f"{self.greeting} {who}"
