"""The adversarial suite: hostile programs that prove the sandbox contains them and the run goes on.

Each attack prepares something on the host that it must not be able to touch (a canary file, a
listening socket, a process, a secret in our environment), runs its program in the sandbox and then
checks the host: ``contained`` is that check, ``status``/``reason`` are the sandbox's verdict. The
tests assert every attack is contained with the expected verdict; ``benchmarks/verify.py`` prints
the table. Attacks that would harm an unisolated host (signalling every process, deleting files) run
only when the sandbox has namespaces; otherwise they are reported as not run, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from thresher.sandbox import Sandbox, SandboxResult

# A name the host puts in its own environment; it must never reach a sandboxed program.
SECRET_VARIABLE = "THRESHER_ADVERSARIAL_SECRET"


@dataclass(frozen=True)
class AttackVerdict:
    """One attack's outcome: the sandbox's verdict and whether the host was unharmed."""

    attack: str
    expected: tuple[str, ...]
    status: str
    reason: str
    contained: bool
    host_check: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.contained and self.status in self.expected


@dataclass(frozen=True)
class Attack:
    """A hostile program and the host-side check that it did no harm.

    ``prepare`` sets up the host (in ``scratch``, a host folder the program must not reach) and
    returns the program source and a check that says whether the host is unharmed, with a description.
    """

    name: str
    expected: tuple[str, ...]
    needs_isolation: bool
    prepare: Callable[[Path], tuple[str, Callable[[SandboxResult], tuple[bool, str]]]]


def _program(source: str) -> str:
    return textwrap.dedent(source).lstrip()


# Prepended to every attack: the uid it runs as, so the host can look for its leftovers.
_ANNOUNCE_UID = "import os as _os, sys as _sys\n_sys.stderr.write(f'sandbox uid {_os.getuid()}\\n')\n"


def _no_sandbox_processes_left(result: SandboxResult) -> tuple[bool, str]:
    """No process of the run's own uid is alive after the run (when it had a uid of its own)."""
    announced = re.search(r"sandbox uid (\d+)", result.stderr)
    if announced is None or int(announced.group(1)) == os.getuid():
        return True, "no uid of its own to look for"
    uid = announced.group(1)
    left = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                left += (entry / "status").read_text().split("\nUid:\t", 1)[1].split("\t", 1)[0] == uid
    return not left, f"{left} of its processes left on the host"


def _infinite_loop(scratch: Path) -> tuple[str, Callable]:
    return "while True:\n    pass\n", _no_sandbox_processes_left


def _fork_bomb(scratch: Path) -> tuple[str, Callable]:
    source = _program(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    return source, _no_sandbox_processes_left


def _memory_bomb(scratch: Path) -> tuple[str, Callable]:
    return "hoard = []\nwhile True:\n    hoard.append(bytearray(10 ** 6))\n", _no_sandbox_processes_left


def _forked_memory_bomb(scratch: Path) -> tuple[str, Callable]:
    """Eight processes each under the per-process limit: only a limit on the whole tree stops them."""
    source = _program(
        """
        import os, time
        for _ in range(3):
            os.fork()
        hoard = []
        for _ in range(200):
            hoard.append(bytearray(10 ** 6))
        time.sleep(30)
        """
    )
    return source, _no_sandbox_processes_left


def _write_outside(scratch: Path) -> tuple[str, Callable]:
    canary = scratch / "canary.txt"
    canary.write_text("original")
    targets = [str(canary), str(scratch / "planted.txt"), "/usr/planted.txt", str(Path.cwd() / "planted.txt")]
    source = _program(
        f"""
        written = []
        for path in {targets!r}:
            try:
                with open(path, "w") as f:
                    f.write("pwned")
                written.append(path)
            except OSError:
                pass
        raise PermissionError(f"{{len(written)}} of {len(targets)} writes outside the sandbox succeeded")
        """
    )

    def check(result: SandboxResult) -> tuple[bool, str]:
        planted = [t for t in targets[1:] if Path(t).exists()]
        intact = canary.read_text() == "original"
        return intact and not planted, f"canary intact: {intact}; files planted: {len(planted)}"

    return source, check


def _read_parent_environment(scratch: Path) -> tuple[str, Callable]:
    secret = os.urandom(16).hex()
    os.environ[SECRET_VARIABLE] = secret
    source = _program(
        f"""
        import os
        found = [repr(dict(os.environ))]
        for pid in (os.getppid(), 1, {os.getpid()}):
            try:
                found.append(open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace"))
            except OSError:
                pass
        print("\\n".join(found))
        """
    )

    def check(result: SandboxResult) -> tuple[bool, str]:
        os.environ.pop(SECRET_VARIABLE, None)
        leaked = secret in result.stdout or secret in result.stderr
        return not leaked, f"host secret seen by the program: {leaked}"

    return source, check


def _open_socket(scratch: Path) -> tuple[str, Callable]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0)
    port = listener.getsockname()[1]
    source = _program(
        f"""
        import socket
        reached = []
        for address in [("127.0.0.1", {port}), ("10.0.0.1", 80)]:
            try:
                socket.create_connection(address, timeout=2).close()
                reached.append(address)
            except OSError:
                pass
        try:
            socket.getaddrinfo("pypi.org", 443)
            reached.append("dns")
        except OSError:
            pass
        if not reached:
            raise ConnectionRefusedError("no network")
        """
    )

    def check(result: SandboxResult) -> tuple[bool, str]:
        accepted = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                listener.accept()[0].close()
                accepted += 1
        listener.close()
        return accepted == 0, f"connections reaching a host listener: {accepted}"

    return source, check


def _kill_parent(scratch: Path) -> tuple[str, Callable]:
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    source = _program(
        f"""
        import os, signal
        for pid in ({victim.pid}, {os.getpid()}, os.getppid(), -1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        raise ProcessLookupError("the host's processes are out of reach")
        """
    )

    def check(result: SandboxResult) -> tuple[bool, str]:
        alive = victim.poll() is None
        victim.kill()
        victim.wait()
        return alive, f"host process alive after the attack: {alive}"

    return source, check


def _flood_stdout(scratch: Path) -> tuple[str, Callable]:
    return "while True:\n    print('x' * 10000)\n", _no_sandbox_processes_left


def _delete_files(scratch: Path) -> tuple[str, Callable]:
    keep = scratch / "keep"
    keep.mkdir()
    for i in range(3):
        (keep / f"{i}.txt").write_text(str(i))
    source = _program(
        f"""
        import os, shutil, sys
        shutil.rmtree({str(keep)!r}, ignore_errors=True)
        for path in [sys.executable, os.__file__, "/usr/bin/env", "/etc/passwd"]:
            try:
                os.remove(path)
            except OSError:
                pass
        raise FileNotFoundError("nothing of the host's files could be deleted")
        """
    )

    def check(result: SandboxResult) -> tuple[bool, str]:
        survivors = len(list(keep.iterdir())) if keep.exists() else 0
        system = [Path(sys.executable).resolve(), Path(os.__file__), Path("/usr/bin/env")]
        intact = all(path.exists() for path in system)
        return (
            survivors == 3 and intact,
            f"host files left: {survivors} of 3; interpreter and /usr intact: {intact}",
        )

    return source, check


def _raise_limits(scratch: Path) -> tuple[str, Callable]:
    source = _program(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        """
    )
    return source, _no_sandbox_processes_left


ADVERSARIAL_SUITE: tuple[Attack, ...] = (
    Attack("infinite_loop", ("timeout",), False, _infinite_loop),
    Attack("fork_bomb", ("process_limit",), True, _fork_bomb),
    Attack("memory_bomb", ("memory_limit",), False, _memory_bomb),
    Attack("forked_memory_bomb", ("memory_limit",), True, _forked_memory_bomb),
    Attack("write_outside_sandbox", ("failed",), True, _write_outside),
    Attack("read_parent_environment", ("passed",), False, _read_parent_environment),
    Attack("open_socket", ("failed",), True, _open_socket),
    Attack("kill_parent", ("failed",), True, _kill_parent),
    Attack("flood_stdout", ("output_limit",), False, _flood_stdout),
    Attack("delete_files", ("failed",), True, _delete_files),
    Attack("raise_hard_limits", ("failed",), True, _raise_limits),
)


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="thresher-adversarial-") as tmp:
        yield Path(tmp)


def run_adversarial_suite(
    sandbox: Sandbox, attacks: tuple[Attack, ...] = ADVERSARIAL_SUITE
) -> list[AttackVerdict]:
    """Run each attack in ``sandbox`` and check the host afterwards; attacks that need isolation the
    host lacks are not run (status "not_run")."""
    verdicts = []
    for attack in attacks:
        if attack.needs_isolation and not sandbox.isolation.namespaces:
            verdicts.append(
                AttackVerdict(
                    attack.name,
                    attack.expected,
                    "not_run",
                    "; ".join(sandbox.isolation.notes),
                    False,
                    "",
                    0.0,
                )
            )
            continue
        with _scratch() as scratch:
            source, check = attack.prepare(scratch)
            result = sandbox.run(_ANNOUNCE_UID + source)
            contained, described = check(result)
        verdicts.append(
            AttackVerdict(
                attack=attack.name,
                expected=attack.expected,
                status=result.status,
                reason=result.error or "exit status 0",
                contained=contained,
                host_check=described,
                seconds=round(result.duration_seconds, 3),
            )
        )
    return verdicts
