"""The one exception type users see.

Every failure caused by the user's input (a bad checkpoint, a bad recipe, unreadable audio, an
artifact that no longer matches its manifest) is raised as `HubertExportError` with a message that
names the problem and the fix. The CLI prints that message on one line and exits with
`exit_code`; a traceback is shown only with `--debug`.
"""

from __future__ import annotations

# Exit codes of every command: 0 success, 1 a parity/accuracy threshold failed, 2 bad input,
# 3 an internal error (a bug of ours), 130 interrupted.
EXIT_OK = 0
EXIT_PARITY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class HubertExportError(Exception):
    """A problem with the user's input, with a message that says what to do about it."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        # Keep the message on one line: it is printed as the whole of the CLI's error output.
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class InternalError(HubertExportError):
    """A failure that is ours, not the user's (a graph pass that broke the model, an engine build
    that failed on a valid graph): the same one-line message, exit code 3, and a request to report it."""

    exit_code: int = EXIT_INTERNAL
