"""Run untrusted Python programs in a separate, resource-limited process.

The verified stage executes model-written code against unit tests, so the code runs in a child
interpreter that cannot see our environment, our working directory or our stdin, and that is
bounded in wall time, CPU time, address space, file size, process count and output size. What
happened is reported as one ``SandboxResult`` with a closed set of statuses, so callers map
outcomes to ledger rules without reading tracebacks themselves.

This is a first layer, not a jail: the program still shares the network, the filesystem (read and
write wherever the user may) and, when we run as root, can raise its own hard limits. Deeper
isolation (network namespace, unprivileged user, cgroups) belongs in ``Sandbox.command`` and
``Sandbox.child_setup``, which are the only places that would change.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout", "memory_limit", "syntax_error", "output_limit", "crashed"]

SCRIPT_NAME = "program.py"
# How much of each stream a result keeps (the end of it: that is where tracebacks are).
TAIL_CHARS = 4096
_READ_CHUNK = 65536
_SYNTAX_ERRORS = {"SyntaxError", "IndentationError", "TabError"}
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")

RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_NOTE = (
    "running as root: RLIMIT_NPROC is not enforced for root and the program could raise its own hard limits"
)


@dataclass(frozen=True)
class SandboxLimits:
    """Bounds on one program run. ``timeout_seconds`` is wall time, enforced by the parent."""

    timeout_seconds: float
    memory_mb: int
    max_output_bytes: int = 65_536
    max_file_bytes: int = 10 * 1024 * 1024
    # Counted per real user id (all of that user's processes and threads), and ignored for root.
    max_processes: int = 64
    max_open_files: int = 256


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    ``exit_code`` is the child's status (negative: killed by that signal; None: never started).
    ``error`` is a one-line summary for humans ("AssertionError at line 12", "killed by SIGSEGV"),
    ``error_type``/``error_line`` the same facts for programs (the line is in the program source as
    given, from the innermost traceback frame that belongs to it). ``error`` can quote the program's
    exception message: do not copy it into the ledger.
    """

    status: Status
    exit_code: int | None
    stdout: str
    stderr: str
    duration_seconds: float
    error: str | None = None
    error_type: str | None = None
    error_line: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


class Sandbox:
    """Runs Python source files in a fresh, scrubbed, limited child process."""

    def __init__(self, limits: SandboxLimits) -> None:
        if limits.timeout_seconds <= 0 or limits.memory_mb <= 0 or limits.max_output_bytes <= 0:
            raise ValueError(f"sandbox limits must be positive, got {limits}")
        self.limits = limits
        self._rlimits = _within_hard_limits(
            (resource.RLIMIT_CORE, 0),
            # Soft = hard: SIGXCPU at the limit. The wall timeout normally fires first; this one
            # stops a program that forks CPU burners the parent cannot see.
            (resource.RLIMIT_CPU, int(limits.timeout_seconds) + 1),
            (resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024),
            (resource.RLIMIT_FSIZE, limits.max_file_bytes),
            (resource.RLIMIT_NPROC, limits.max_processes),
            (resource.RLIMIT_NOFILE, limits.max_open_files),
        )

    def command(self, script: Path) -> list[str]:
        """The argv that runs ``script``.

        Not ``-I``: it implies ``-E``, which would also drop PYTHONHASHSEED, and a fixed hash seed is
        what makes set/dict iteration over strings (and so test outcomes) reproducible. The
        environment is built from scratch instead, so ``-E`` has nothing to protect against;
        ``-s -S -P`` keep user and site packages and the script's folder off ``sys.path``.
        """
        return [sys.executable, "-S", "-s", "-P", "-B", str(script)]

    def environment(self, home: Path) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home), "PYTHONHASHSEED": "0"}

    def child_setup(self) -> None:
        """Resource limits, applied in the forked child before exec (``preexec_fn``).

        Runs between fork and exec while other threads of the parent may hold locks, so it only
        calls ``setrlimit`` with values computed beforehand (``self._rlimits``): no imports, no I/O.
        """
        for kind, value in self._rlimits:
            resource.setrlimit(kind, (value, value))

    def run(self, source: str) -> SandboxResult:
        """Write ``source`` to a fresh temporary folder and run it there; the folder is then deleted."""
        limits = self.limits
        notes = (ROOT_NOTE,) if RUNNING_AS_ROOT else ()
        with tempfile.TemporaryDirectory(prefix="thresher-sandbox-", ignore_cleanup_errors=True) as tmp:
            workdir = Path(tmp)
            script = workdir / SCRIPT_NAME
            script.write_text(source, encoding="utf-8", errors="surrogatepass")
            started = time.monotonic()
            try:
                proc = subprocess.Popen(
                    self.command(script),
                    cwd=workdir,
                    env=self.environment(workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=self.child_setup,
                    close_fds=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return SandboxResult(
                    "crashed", None, "", "", 0.0, f"could not start the interpreter: {exc}", notes=notes
                )
            outcome = _supervise(proc, started + limits.timeout_seconds, limits.max_output_bytes)
            duration = time.monotonic() - started
        status, error, error_type, error_line = _classify(
            proc.returncode, outcome, str(script), limits.max_output_bytes
        )
        return SandboxResult(
            status=status,
            exit_code=proc.returncode,
            stdout=_tail(outcome.stdout),
            stderr=_tail(outcome.stderr),
            duration_seconds=duration,
            error=error,
            error_type=error_type,
            error_line=error_line,
            notes=notes,
        )

    def run_many(self, sources: Sequence[str], workers: int) -> list[SandboxResult]:
        """Run every source, at most ``workers`` at a time; results in input order.

        Threads suffice: each one only waits on its own child process.
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not sources:
            return []
        with ThreadPoolExecutor(max_workers=min(workers, len(sources)), thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.run, sources))


def run_python(
    source: str, *, timeout_seconds: float, memory_mb: int, max_output_bytes: int = 65_536
) -> SandboxResult:
    """Run one Python program in the sandbox (see ``Sandbox``)."""
    return Sandbox(SandboxLimits(timeout_seconds, memory_mb, max_output_bytes)).run(source)


def run_many(
    sources: Sequence[str],
    workers: int,
    *,
    timeout_seconds: float,
    memory_mb: int,
    max_output_bytes: int = 65_536,
) -> list[SandboxResult]:
    """Run many programs with a bounded pool of ``workers`` concurrent children; results in input order."""
    return Sandbox(SandboxLimits(timeout_seconds, memory_mb, max_output_bytes)).run_many(sources, workers)


def _within_hard_limits(*wanted: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Clamp each limit to the hard limit we already run under (the child inherits it): asking
    for more than that would make ``setrlimit`` fail in the child, and every program with it."""
    clamped = []
    for kind, value in wanted:
        hard = resource.getrlimit(kind)[1]
        clamped.append((kind, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return tuple(clamped)


@dataclass
class _Outcome:
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_exceeded: bool


def _supervise(proc: subprocess.Popen[bytes], deadline: float, max_output_bytes: int) -> _Outcome:
    """Collect the child's output until it exits, exceeds its output cap or its deadline.

    Both pipes are read as data arrives (no deadlock on a full pipe) but only the last
    ``max_output_bytes`` of each are kept, so memory stays bounded whatever the program prints.
    The child's exit is watched through a pidfd, which signals exit without reaping: the exited
    leader keeps its process-group id reserved until ``_kill_group`` has stopped any leftovers.
    """
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    totals = dict.fromkeys(buffers, 0)
    timed_out = output_exceeded = exited = False
    pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None

    def read(fd: int) -> bool:
        chunk = os.read(fd, _READ_CHUNK)
        if chunk:
            buf = buffers[fd]
            buf += chunk
            del buf[:-max_output_bytes]
            totals[fd] += len(chunk)
        return bool(chunk)

    try:
        with selectors.DefaultSelector() as selector:
            for fd in buffers:
                selector.register(fd, selectors.EVENT_READ, "output")
            if pidfd is not None:
                selector.register(pidfd, selectors.EVENT_READ, "exit")
            while not exited and not output_exceeded:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                # Without a pidfd, poll for the exit every 50 ms.
                for key, _ in selector.select(
                    timeout=remaining if pidfd is not None else min(remaining, 0.05)
                ):
                    if key.data == "exit":
                        exited = True
                    elif not read(key.fd):
                        selector.unregister(key.fd)
                output_exceeded = any(total > max_output_bytes for total in totals.values())
                exited = exited or (pidfd is None and _has_exited(proc.pid))
            if exited and not output_exceeded:
                # Everything the program wrote is in the pipes now; take it without waiting on
                # leftover background processes that may still hold the pipes open.
                if pidfd is not None:
                    selector.unregister(pidfd)
                while True:
                    ready = selector.select(timeout=0)
                    if not ready:
                        break
                    for key, _ in ready:
                        if not read(key.fd):
                            selector.unregister(key.fd)
                    if any(total > max_output_bytes for total in totals.values()):
                        output_exceeded = True
                        break
    finally:
        if pidfd is not None:
            os.close(pidfd)
        _kill_group(proc)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    out, err = (bytes(b) for b in buffers.values())
    return _Outcome(out, err, timed_out, output_exceeded)


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (WNOWAIT keeps it a zombie)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's whole process group (it leads its own session), including leftovers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _classify(
    returncode: int | None, outcome: _Outcome, script: str, max_output_bytes: int
) -> tuple[Status, str | None, str | None, int | None]:
    """Map exit status, kill reason and the stderr traceback onto one status and a summary."""
    stderr = outcome.stderr.decode("utf-8", errors="replace")
    error_type, message, line = _last_exception(stderr, script)
    at = f" at line {line}" if line is not None else ""
    if outcome.timed_out or returncode == -signal.SIGXCPU:
        return "timeout", "time limit exceeded", None, None
    if outcome.output_exceeded:
        return "output_limit", f"output exceeded {max_output_bytes} bytes", None, None
    # Python ignores SIGXFSZ, so exceeding RLIMIT_FSIZE surfaces as OSError EFBIG ("[Errno 27]").
    if returncode == -signal.SIGXFSZ or (returncode != 0 and (message or "").startswith("[Errno 27]")):
        return "output_limit", "file size limit exceeded", None, None
    if error_type == "MemoryError" or (returncode is not None and returncode < 0 and "MemoryError" in stderr):
        return "memory_limit", f"MemoryError{at}", "MemoryError", line
    if returncode == 0:
        return "passed", None, None, None
    if error_type in _SYNTAX_ERRORS:
        return "syntax_error", f"{error_type}{at}", error_type, line
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return "crashed", f"killed by {name}", None, line
    if error_type is None:
        return "failed", f"exit status {returncode}", None, None
    first = (message or "").splitlines()[0].strip() if message else ""
    summary = f"{error_type}{at}" + (f": {first[:200]}" if first else "")
    return "failed", summary, error_type, line


def _last_exception(stderr: str, script: str) -> tuple[str | None, str | None, int | None]:
    """The final exception's type, message and innermost line in ``script`` from a traceback.

    A traceback lists frames as ``  File "<path>", line N`` (indented, with indented source and caret
    lines under them) and ends with an unindented ``Type: message`` line; a syntax error in the
    script itself has the same shape without the "Traceback" header.
    """
    lines = stderr.splitlines()
    marker = f'File "{script}", line '
    last_frame = None
    script_line = None
    for index, text in enumerate(lines):
        stripped = text.lstrip()
        if stripped.startswith('File "'):
            last_frame = index
            if stripped.startswith(marker):
                digits = re.match(r"\d+", stripped[len(marker) :])
                script_line = int(digits.group()) if digits else script_line
    if last_frame is None:
        return None, None, None
    for text in lines[last_frame + 1 :]:
        if not text or text[0].isspace():
            continue
        match = _EXCEPTION_LINE.match(text)
        if match:
            return match.group(1), match.group(2), script_line
        break
    return None, None, script_line


def _tail(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")[-TAIL_CHARS:]
