"""Run untrusted Python programs in a separate, resource-limited, isolated process.

The verified stage executes model-written code against unit tests. Each program runs in a child
interpreter that is bounded in wall time, CPU time, memory, file size, process count and output
size, with a scrubbed environment, no stdin and a fresh working directory. Where the host allows
(Linux with bubblewrap, as here and in CI), it is also isolated:

- namespaces (bubblewrap): its own PID namespace (it cannot see or signal anything outside, the
  parent included), network namespace (no interfaces but a loopback of its own), IPC and UTS
  namespaces, and a mount namespace whose root holds only read-only system and interpreter folders,
  a private /tmp and a private working directory (both size-capped tmpfs): nothing outside can be
  read, written or deleted;
- an unprivileged user (when we run as root): a uid of its own, no capabilities, no new privileges,
  so the process limit binds and hard limits cannot be raised;
- a cgroup (when the cgroup tree is writable): memory and process count are capped for the whole
  process tree, not per process, so forking memory hogs or a fork bomb stay within the limits.

What could not be had on this host is said in every ``SandboxResult.notes`` (and from there in the
verdicts), never silently dropped. bubblewrap is Debian's ``bubblewrap`` package (the Makefile
installs it): the sandbox Flatpak uses, well kept, and unlike writing our own namespace setup it
already handles the many details (pivot_root, /proc, /dev, PR_SET_PDEATHSIG, setsid).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Status = Literal[
    "passed",
    "failed",
    "timeout",
    "memory_limit",
    "process_limit",
    "syntax_error",
    "output_limit",
    "crashed",
]

SCRIPT_NAME = "program.py"
# Where the working directory is inside the isolated sandbox.
SANDBOX_DIR = "/sandbox"
# How much of each stream a result keeps (the end of it: that is where tracebacks are).
TAIL_CHARS = 4096
_READ_CHUNK = 65536
_SYNTAX_ERRORS = {"SyntaxError", "IndentationError", "TabError"}
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")
# Sandboxed programs run as uids from this range (one per run, cycling), never as a real user.
_FIRST_UID = 61_000
_UID_COUNT = 1_000
_next_uid = itertools.count()
_uid_lock = threading.Lock()
_cgroup_counter = itertools.count()

RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class SandboxLimits:
    """Bounds on one program run. ``timeout_seconds`` is wall time, enforced by the parent."""

    timeout_seconds: float
    memory_mb: int
    max_output_bytes: int = 65_536
    max_file_bytes: int = 10 * 1024 * 1024
    max_processes: int = 64
    max_open_files: int = 256
    # Size of the private working directory and /tmp (each), when isolated.
    scratch_mb: int = 64


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    ``exit_code`` is the child's status (negative: killed by that signal; None: never started).
    ``error`` is a one-line summary for humans ("AssertionError at line 12", "killed by SIGSEGV"),
    ``error_type``/``error_line`` the same facts for programs (the line is in the program source as
    given, from the innermost traceback frame that belongs to it). ``error`` can quote the program's
    exception message: do not copy it into the ledger. ``notes`` name the isolation this host could
    not give (empty when fully isolated).
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


# ---------------------------------------------------------------------------------------------
# What this host can do


@dataclass(frozen=True)
class Isolation:
    """The isolation available on this host, probed once per process."""

    bwrap: str | None
    drop_user: bool
    cgroups: tuple[tuple[str, Path], ...]  # (controller, the folder our sandboxes' cgroups go in)
    cgroup_v2: bool
    notes: tuple[str, ...]

    @property
    def namespaces(self) -> bool:
        return self.bwrap is not None

    def describe(self) -> str:
        """One line for run logs and metadata: what the sandbox isolates here."""
        parts = []
        if self.namespaces:
            parts.append("pid, network, mount, ipc and uts namespaces (bubblewrap)")
        if self.drop_user:
            parts.append("an unprivileged uid without capabilities")
        if self.cgroups:
            parts.append("cgroup limits on " + " and ".join(name for name, _ in self.cgroups))
        return "; ".join(parts) or "resource limits only"


@functools.cache
def host_isolation() -> Isolation:
    """Probe bubblewrap and the cgroup tree (cached: the host does not change under a run)."""
    notes = []
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        notes.append(
            "no namespaces: bubblewrap is not installed, so the program shares the host's network, "
            "filesystem and process table"
        )
    elif not _bwrap_works(bwrap):
        notes.append(
            "no namespaces: bubblewrap cannot create them on this host (user namespaces disabled?), so "
            "the program shares the host's network, filesystem and process table"
        )
        bwrap = None
    drop_user = RUNNING_AS_ROOT and bwrap is not None and shutil.which("setpriv") is not None
    if RUNNING_AS_ROOT and not drop_user:
        notes.append("runs as root: the process limit does not bind and hard limits could be raised")
    cgroups, v2 = _cgroup_parents()
    if not cgroups:
        notes.append("no cgroup: memory and process limits apply per process, not to the whole process tree")
    return Isolation(bwrap, drop_user, cgroups, v2, tuple(notes))


def _bwrap_works(bwrap: str) -> bool:
    try:
        probe = subprocess.run(
            [bwrap, *_namespace_flags(), "--ro-bind", "/", "/", "--", "/bin/true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def _namespace_flags() -> list[str]:
    user = [] if RUNNING_AS_ROOT else ["--unshare-user"]
    return [
        *user,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ]


def _cgroup_parents() -> tuple[tuple[tuple[str, Path], ...], bool]:
    """Where we may create a memory and a pids cgroup per run: below our own cgroups, if writable."""
    root = Path("/sys/fs/cgroup")
    try:
        membership = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return (), False
    if (root / "cgroup.controllers").exists():  # unified hierarchy (v2)
        path = next((line.split(":", 2)[2] for line in membership if line.startswith("0::")), None)
        if path is None:
            return (), True
        parent = root / path.lstrip("/")
        enabled = (parent / "cgroup.subtree_control").read_text().split() if parent.exists() else []
        found = tuple((name, parent) for name in ("memory", "pids") if name in enabled)
        return (found if len(found) == 2 and _writable(parent) else ()), True
    found = []
    for line in membership:
        _, controllers, path = line.split(":", 2)
        for name in ("memory", "pids"):
            if name in controllers.split(","):
                parent = root / name / path.lstrip("/")
                if _writable(parent):
                    found.append((name, parent))
    return (tuple(found) if len(found) == 2 else ()), False


def _writable(folder: Path) -> bool:
    probe = folder / f"thresher-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return False
    return True


class _RunCgroup:
    """A memory + pids cgroup for one run; joined by the child before exec, removed afterwards."""

    def __init__(self, isolation: Isolation, limits: SandboxLimits) -> None:
        self.v2 = isolation.cgroup_v2
        name = f"thresher-sandbox-{os.getpid()}-{next(_cgroup_counter)}"
        self.folders = [parent / name for _, parent in isolation.cgroups]
        if self.v2:
            self.folders = self.folders[:1]
        memory = str(limits.memory_mb * 1024 * 1024)
        settings = (
            {"memory.max": memory, "memory.swap.max": "0", "pids.max": str(limits.max_processes)}
            if self.v2
            else {
                "memory.limit_in_bytes": memory,
                "memory.memsw.limit_in_bytes": memory,
                "pids.max": str(limits.max_processes),
            }
        )
        for folder in self.folders:
            folder.mkdir()
            for key, value in settings.items():
                target = folder / key
                if target.exists():
                    with contextlib.suppress(OSError):
                        target.write_text(value)
        self.procs = tuple(str(folder / "cgroup.procs").encode() for folder in self.folders)

    def _read(self, key: str) -> str:
        for folder in self.folders:
            with contextlib.suppress(OSError):
                return (folder / key).read_text()
        return ""

    def memory_exceeded(self) -> bool:
        """Whether the kernel had to kill a process of the run for memory (v1: ``memory.oom_control``)."""
        events = self._read("memory.events" if self.v2 else "memory.oom_control")
        return _event(events, "oom_kill") > 0

    def processes_exceeded(self) -> bool:
        return _event(self._read("pids.events"), "max") > 0

    def close(self) -> None:
        """Kill whatever is left in the cgroup and remove it."""
        for folder in self.folders:
            for _ in range(100):
                try:
                    pids = (folder / "cgroup.procs").read_text().split()
                except OSError:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.01)


def _event(text: str, name: str) -> int:
    match = re.search(rf"(?m)^{name} (\d+)$", text)
    return int(match.group(1)) if match else 0


# ---------------------------------------------------------------------------------------------
# The sandbox


class Sandbox:
    """Runs Python source files in a fresh, scrubbed, limited and (where possible) isolated child."""

    def __init__(self, limits: SandboxLimits, *, isolate: bool = True) -> None:
        if limits.timeout_seconds <= 0 or limits.memory_mb <= 0 or limits.max_output_bytes <= 0:
            raise ValueError(f"sandbox limits must be positive, got {limits}")
        self.limits = limits
        self.isolation = host_isolation() if isolate else Isolation(None, False, (), False, ("not isolated",))
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

    @property
    def interpreter(self) -> list[str]:
        """Python without site packages.

        Not ``-I``: it implies ``-E``, which would also drop PYTHONHASHSEED, and a fixed hash seed is
        what makes set/dict iteration over strings (and so test outcomes) reproducible. The
        environment is built from scratch instead, so ``-E`` has nothing to protect against;
        ``-s -S -P`` keep user and site packages and the script's folder off ``sys.path``.
        """
        return [os.path.realpath(sys.executable), "-S", "-s", "-P", "-B"]

    def environment(self, home: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "PYTHONHASHSEED": "0"}

    def command(self, script: Path, uid: int) -> tuple[list[str], str, str]:
        """(argv, working directory as the program sees it, script path as the program sees it)."""
        isolation = self.isolation
        if isolation.bwrap is None:
            return [*self.interpreter, str(script)], str(script.parent), str(script)
        limits = self.limits
        scratch = str(limits.scratch_mb * 1024 * 1024)
        prefix = os.path.realpath(sys.base_prefix)
        inside = f"{SANDBOX_DIR}/{SCRIPT_NAME}"
        argv = [isolation.bwrap, *_namespace_flags()]
        argv += ["--ro-bind", "/usr", "/usr"]
        for link in ("bin", "lib", "lib64", "sbin"):
            if os.path.islink(f"/{link}"):
                argv += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        if not prefix.startswith("/usr/"):
            argv += ["--ro-bind", prefix, prefix]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777", "--size", scratch, "--tmpfs", "/tmp"]
        argv += ["--perms", "0777", "--size", scratch, "--tmpfs", SANDBOX_DIR]
        argv += ["--ro-bind", str(script), inside, "--chdir", SANDBOX_DIR, "--hostname", "sandbox"]
        argv += ["--clearenv"]
        for key, value in self.environment(SANDBOX_DIR).items():
            argv += ["--setenv", key, value]
        argv.append("--")
        if isolation.drop_user:
            argv += [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ]
        return [*argv, *self.interpreter, inside], SANDBOX_DIR, inside

    def run(self, source: str) -> SandboxResult:
        """Write ``source`` to a fresh temporary folder and run it; the folder is then deleted."""
        limits = self.limits
        notes = self.isolation.notes
        with _uid_lock:
            uid = _FIRST_UID + next(_next_uid) % _UID_COUNT
        with tempfile.TemporaryDirectory(prefix="thresher-sandbox-", ignore_cleanup_errors=True) as tmp:
            workdir = Path(tmp)
            script = workdir / SCRIPT_NAME
            script.write_text(source, encoding="utf-8", errors="surrogatepass")
            if self.isolation.drop_user:
                os.chmod(workdir, 0o755)
                os.chmod(script, 0o644)
            argv, cwd, shown_script = self.command(script, uid)
            try:
                cgroup = _RunCgroup(self.isolation, limits) if self.isolation.cgroups else None
            except OSError:
                cgroup, notes = None, (*notes, "cgroup could not be created for this run")
            started = time.monotonic()
            try:
                try:
                    proc = subprocess.Popen(
                        argv,
                        cwd=workdir,
                        env=self.environment(cwd),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        start_new_session=True,
                        preexec_fn=functools.partial(
                            _child_setup, self._rlimits, cgroup.procs if cgroup else ()
                        ),
                        close_fds=True,
                    )
                except (OSError, subprocess.SubprocessError) as exc:
                    return SandboxResult(
                        "crashed", None, "", "", 0.0, f"could not start the interpreter: {exc}", notes=notes
                    )
                outcome = _supervise(proc, started + limits.timeout_seconds, limits.max_output_bytes)
                duration = time.monotonic() - started
                if cgroup is not None:
                    outcome.memory_exceeded = cgroup.memory_exceeded()
                    outcome.processes_exceeded = cgroup.processes_exceeded()
            finally:
                if cgroup is not None:
                    cgroup.close()
        returncode = proc.returncode
        if self.isolation.bwrap is not None and returncode is not None and 128 < returncode <= 128 + 64:
            returncode = 128 - returncode  # bubblewrap reports a child killed by signal N as 128 + N
        status, error, error_type, error_line = _classify(returncode, outcome, shown_script, limits)
        return SandboxResult(
            status=status,
            exit_code=returncode,
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


def _child_setup(rlimits: tuple[tuple[int, int], ...], cgroup_procs: tuple[bytes, ...]) -> None:
    """Join the run's cgroups and apply the resource limits, in the forked child before exec.

    Runs between fork and exec while other threads of the parent may hold locks, so it only makes
    system calls with values computed beforehand: no imports, no allocation-heavy work. Writing "0"
    to ``cgroup.procs`` moves the writing process, and everything it starts then stays there.
    """
    for procs in cgroup_procs:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    for kind, value in rlimits:
        resource.setrlimit(kind, (value, value))


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
    # From the run's cgroup, when there is one.
    memory_exceeded: bool = False
    processes_exceeded: bool = False


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
    returncode: int | None, outcome: _Outcome, script: str, limits: SandboxLimits
) -> tuple[Status, str | None, str | None, int | None]:
    """Map exit status, kill reason and the stderr traceback onto one status and a summary."""
    stderr = outcome.stderr.decode("utf-8", errors="replace")
    error_type, message, line = _last_exception(stderr, script)
    at = f" at line {line}" if line is not None else ""
    failed = outcome.timed_out or returncode != 0
    # The tree's limits first: a fork bomb or a forked memory hog also runs out of time, but the
    # limit it hit is the reason.
    if failed and outcome.memory_exceeded:
        return (
            "memory_limit",
            f"memory limit ({limits.memory_mb} MB) reached: the kernel killed a process",
            None,
            None,
        )
    if failed and outcome.processes_exceeded:
        return "process_limit", f"process limit ({limits.max_processes}) reached", None, None
    if outcome.timed_out or returncode == -signal.SIGXCPU:
        return "timeout", "time limit exceeded", None, None
    if outcome.output_exceeded:
        return "output_limit", f"output exceeded {limits.max_output_bytes} bytes", None, None
    # Python ignores SIGXFSZ, so exceeding RLIMIT_FSIZE surfaces as OSError EFBIG ("[Errno 27]").
    if returncode == -signal.SIGXFSZ or (returncode != 0 and (message or "").startswith("[Errno 27]")):
        return "output_limit", "file size limit exceeded", None, None
    if error_type == "MemoryError" or (returncode is not None and returncode < 0 and "MemoryError" in stderr):
        return "memory_limit", f"MemoryError{at}", "MemoryError", line
    if returncode == 0:
        return "passed", None, None, None
    if stderr.startswith("bwrap: "):
        return "crashed", "the sandbox could not be set up", None, None
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
