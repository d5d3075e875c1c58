"""What the service tests on real Ray share: a service's status, waiting (bounded) for it to
reach a state, and removing it in teardown."""

from __future__ import annotations

import time

REMOVE_WAIT_S = 60.0  # a removed service leaving FuxiMaster's list
STATUS_CALL_S = 30.0  # one status or list call


def service_status(master, name: str) -> dict:
    import ray

    return ray.get(master.service_status.remote(name), timeout=STATUS_CALL_S)


def wait_service(master, name: str, pred, what: str, timeout_s: float, poll_s: float) -> dict:
    """The first status of ``name`` for which ``pred`` holds; AssertionError naming ``what``,
    the autoscaler's state and the last events after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while True:
        st = service_status(master, name)
        if pred(st):
            return st
        if time.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g}s: "
                                 f"{st['autoscaling']} events {st['events'][-8:]}")
        time.sleep(poll_s)


def remove_service(master, name: str) -> None:
    """Remove ``name`` and wait until it is gone (at most REMOVE_WAIT_S); best effort."""
    import ray

    try:
        ray.get(master.service_remove.remote(name), timeout=STATUS_CALL_S)
        deadline = time.time() + REMOVE_WAIT_S
        while any(s["name"] == name
                  for s in ray.get(master.service_list.remote(), timeout=STATUS_CALL_S)):
            assert time.time() < deadline, "the service was not removed"
            time.sleep(0.2)
    except Exception:  # noqa: BLE001 - best effort in teardown
        pass
