"""Module-level task functions that job-spec tests refer to as ``tests.unit.specfns:NAME``."""

NOT_CALLABLE = 42


def ok_fn(rows):
    """A task function that passes rows through unchanged."""
    return rows


def other_fn(rows):
    """A second task function, so specs can name two different functions."""
    return list(rows)


class Holder:
    """A class whose static method is reachable as ``Holder.run``."""

    @staticmethod
    def run(rows):
        return rows
