"""One error tree (issue 15, rule 5): every error a package raises on purpose derives from
base.errors.PlatformError and from the shared class it means; "outcome unknown" is a type in
every layer; the CLI's exit codes follow the tree from one table."""

from __future__ import annotations

import importlib
import inspect

import pytest

from base import errors as B

PACKAGES = ["zhongkui.errors", "nuwa.errors", "pangu.errors", "kuafu.errors", "fuxi.errors"]


@pytest.mark.parametrize("module", PACKAGES)
def test_every_error_class_derives_from_the_one_root(module):
    m = importlib.import_module(module)
    classes = [c for _, c in inspect.getmembers(m, inspect.isclass)
               if issubclass(c, BaseException) and c.__module__ in (module, "base.errors")]
    assert classes
    assert [c.__name__ for c in classes if not issubclass(c, B.PlatformError)] == []


@pytest.mark.parametrize("module,name,shared", [
    ("nuwa.errors", "Denied", B.Denied), ("pangu.errors", "Denied", B.Denied),
    ("kuafu.errors", "Denied", B.Denied), ("zhongkui.errors", "Denied", B.Denied),
    ("nuwa.errors", "Unavailable", B.Unavailable), ("pangu.errors", "Unavailable", B.Unavailable),
    ("kuafu.errors", "Unavailable", B.Unavailable), ("fuxi.errors", "ClusterError", B.Unavailable),
    ("nuwa.errors", "OutcomeUnknown", B.OutcomeUnknown), ("kuafu.errors", "TimedOut", B.OutcomeUnknown),
    ("kuafu.errors", "UnavailableInFlight", B.OutcomeUnknown),
    ("fuxi.errors", "OutcomeUnknown", B.OutcomeUnknown),
    ("nuwa.errors", "Unauthenticated", B.Unauthenticated),
    ("zhongkui.errors", "BadCredentials", B.Unauthenticated),
    ("nuwa.errors", "NoNode", B.NotFound), ("pangu.errors", "NotFound", B.NotFound),
    ("fuxi.errors", "JobNotFound", B.NotFound), ("nuwa.errors", "BadRequest", B.BadInput),
    ("fuxi.errors", "SpecError", B.BadInput), ("kuafu.errors", "RemoteError", B.Failed),
])
def test_each_shared_condition_is_its_base_class(module, name, shared):
    assert issubclass(getattr(importlib.import_module(module), name), shared)


def test_the_shared_classes_are_no_builtin_exceptions():
    """An ``except OSError`` or ``except ValueError`` around I/O must never swallow ours (a
    Nuwa denial once passed for a lost connection)."""
    from nuwa import errors as NE

    for cls in (B.BadInput, B.Denied, B.Unavailable, B.OutcomeUnknown, NE.Denied, NE.BadRequest):
        assert not issubclass(cls, (OSError, ValueError)), cls


def test_a_kuafu_call_lost_in_flight_is_outcome_unknown_on_both_sides_of_the_wire():
    from kuafu import errors as KE

    sent = KE.UnavailableInFlight("lost with the call in flight")
    back = KE.error_from_header(sent.to_header())
    assert isinstance(back, B.OutcomeUnknown) and back.maybe_executed and back.code == "Unavailable"
    safe = KE.error_from_header(KE.Unavailable("no endpoint").to_header())
    assert not isinstance(safe, B.OutcomeUnknown) and not safe.maybe_executed


@pytest.mark.parametrize("error,code", [
    (B.BadInput("x"), 2), (B.LimitExceeded("x"), 2), (B.NotFound("x"), 2), (B.Conflict("x"), 2),
    (B.Denied("x"), 3), (B.Unauthenticated("x"), 3), (B.Unavailable("x"), 3),
    (B.OutcomeUnknown("x"), 3), (B.ClusterError("x"), 3), (B.NoCluster("x"), 3),
    (B.Failed("x"), 1), (B.WaitTimedOut("x"), 4), (KeyboardInterrupt(), 130),
    (RuntimeError("a bug"), 1),
])
def test_exit_codes_come_from_one_table(error, code):
    assert B.exit_code(error) == code
