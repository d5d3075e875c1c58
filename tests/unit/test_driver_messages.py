"""A raylet's message to every driver ("8 PYTHON worker processes have been started…") once
landed in `fuxi job status --json`'s stdout and broke the JSON (CI, test_cli_cluster): the
commands route Ray's driver messages to stderr."""

from __future__ import annotations


def test_ray_driver_messages_go_to_stderr(capsys):
    import ray._private.worker as w

    from base.actors import driver_messages_to_stderr

    before = w.print_to_stdstream
    try:
        driver_messages_to_stderr()
        driver_messages_to_stderr()  # twice: wrapped once
        assert getattr(w.print_to_stdstream, "fuxi_to_stderr", False)
        w.print_to_stdstream({"lines": ["WARNING: 8 PYTHON worker processes have been started"],
                              "pid": "raylet", "is_err": False}, ignore_prefix=False)
        out, err = capsys.readouterr()
        assert out == "" and "8 PYTHON worker processes" in err
    finally:
        w.print_to_stdstream = before
