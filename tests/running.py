"""`payables` running in a background child process, for tests that act on it mid-run.

A failpoint such as ``sleep:verifier:5`` (see `runtime.failpoints`) announces on stderr
that the child is inside that step; `Child.wait_for` blocks until it does, so a test sends
its signal, starts its rival or restarts Postgres at a known moment, not after a guess.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from runtime.settings import PROJECT_ROOT
from tests.cli import CLI_TIMEOUT_S


@dataclass
class Child:
    """A running `payables` process whose stderr is read as it comes."""

    proc: subprocess.Popen[str]
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _stderr: list[str] = field(default_factory=list)
    _stdout: list[str] = field(default_factory=list)
    _stdout_reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._stdout_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._stdout_reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self._stdout.append(self.proc.stdout.read())

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        """Never leave the child behind when a test fails half-way."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_for(self, text: str, timeout: float = CLI_TIMEOUT_S) -> None:
        """Block until the child writes ``text`` on stderr; fail if it exits first."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no {text!r} on stderr within {timeout}s:\n{''.join(self._stderr)}"
                ) from None
            if line is None:
                self.proc.wait()
                raise AssertionError(
                    f"the child exited ({self.proc.returncode}) before writing {text!r}:\n"
                    + "".join(self._stderr)
                )
            self._stderr.append(line)
            if text in line:
                return

    def finish(self, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Wait for the child to exit and return it as `subprocess.run` would."""
        self.proc.wait(timeout=timeout)
        while (line := self._lines.get(timeout=timeout)) is not None:
            self._stderr.append(line)
        assert self._stdout_reader is not None
        self._stdout_reader.join(timeout=timeout)
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, "".join(self._stdout), "".join(self._stderr)
        )


def start(env: dict[str, str], *args: str) -> Child:
    """Start `payables ARGS` in a new interpreter without waiting for it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", *args],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Child(proc)
