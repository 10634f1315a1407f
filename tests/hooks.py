"""Faults the tests inject into a CLI process they start, so that the package carries no test hooks.

    python -m tests.hooks hold-before-parity RELEASE_FILE -- CLI ARGUMENTS...
        a build that stops before its parity check, says so on stderr, and waits until RELEASE_FILE
        exists: a test can interrupt (or race) a build that is provably mid-way
    python -m tests.hooks hold-after-first-results RELEASE_FILE -- CLI ARGUMENTS...
        a corpus check on Ray that waits after storing its first batch's results

Each wraps one function of the package in this process only, then runs `hubert_export.cli.main`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HOLD_LIMIT_SECONDS = 600


def _hold(step: str, release: str) -> None:
    print(f"holding at step {step} until {release} exists", file=sys.stderr, flush=True)
    deadline = time.monotonic() + HOLD_LIMIT_SECONDS
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def hold_before_parity(release: str) -> None:
    from hubert_export import build

    verify = build._verify

    def held(*args, **kwargs):
        _hold("parity", release)
        return verify(*args, **kwargs)

    build._verify = held


def hold_after_first_results(release: str) -> None:
    from hubert_export.distributed import ResultsFile

    sync = ResultsFile.sync

    def held(self) -> None:
        sync(self)
        _hold("ray-results", release)

    ResultsFile.sync = held


try:  # the [ray] extra: the distributed check's actor, with a fault
    from hubert_export.distributed import ArtifactWorker
except ImportError:  # pragma: no cover
    ArtifactWorker = object


class CrashingArtifactWorker(ArtifactWorker):
    """An artifact actor (check_corpus's worker_class) whose first instance to reach its second batch
    creates $HUBERT_EXPORT_CRASH_MARKER and exits at once, as a node lost mid-run would; Ray restarts
    it and retries the batch. The actors find this module through the runtime_env's PYTHONPATH."""

    def __call__(self, batch):
        import os

        marker = os.environ["HUBERT_EXPORT_CRASH_MARKER"]
        if self.calls == 1 and not os.path.exists(marker):  # mid-run: after a first batch
            Path(marker).touch()
            os._exit(1)
        return super().__call__(batch)


HOOKS = {"hold-before-parity": hold_before_parity, "hold-after-first-results": hold_after_first_results}


def main(argv: list[str]) -> int:
    hook, release, separator, *cli_args = argv
    if hook not in HOOKS or separator != "--":
        raise SystemExit(f"usage: python -m tests.hooks {{{','.join(HOOKS)}}} RELEASE_FILE -- CLI ARGUMENTS...")
    HOOKS[hook](release)
    from hubert_export.cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
