"""The one error the dev stack raises: what went wrong plus what the person should do next."""

from __future__ import annotations


class DevStackError(RuntimeError):
    """A dev-stack failure a person can act on.

    ``str(error)`` is the full message: the problem, then (when known) what to do about it,
    then (when there is one) the tail of the relevant log file.
    """

    def __init__(self, problem: str, *, hint: str | None = None, log_tail: str | None = None):
        self.problem = problem
        self.hint = hint
        self.log_tail = log_tail
        parts = [problem]
        if hint:
            parts.append(f"What to do: {hint}")
        if log_tail:
            parts.append(f"Last lines of the log:\n{log_tail}")
        super().__init__("\n".join(parts))
