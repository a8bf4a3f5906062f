"""Specification of the code sandbox: what a program can see, what stops it, and how it is reported."""

from __future__ import annotations

import json
import os
import time

import pytest

from thresher.adversarial import ADVERSARIAL_SUITE, run_adversarial_suite
from thresher.sandbox import (
    SANDBOX_DIR,
    TAIL_CHARS,
    Sandbox,
    SandboxLimits,
    SandboxResult,
    run_many,
    run_python,
)

LIMITS = {"timeout_seconds": 5.0, "memory_mb": 256}


def run(source: str, **overrides: float) -> SandboxResult:
    return run_python(source, **{**LIMITS, **overrides})


def test_a_passing_program_reports_passed_and_its_output() -> None:
    result = run("print('hello')")
    assert result.status == "passed"
    assert result.exit_code == 0
    assert result.stdout == "hello\n"
    assert result.error is None
    assert result.duration_seconds < 5


def test_a_failing_assert_reports_its_exception_type_and_line() -> None:
    result = run("x = 1\n\nassert x == 2, 'x should be two'\n")
    assert result.status == "failed"
    assert result.exit_code == 1
    assert result.error_type == "AssertionError"
    assert result.error_line == 3
    assert result.error == "AssertionError at line 3: x should be two"


def test_the_line_is_the_innermost_frame_in_the_program_not_in_the_standard_library() -> None:
    result = run("import json\n\ndef parse(text):\n    return json.loads(text)\n\nparse('{')\n")
    assert result.error_type == "json.decoder.JSONDecodeError"
    assert result.error_line == 4


def test_a_syntax_error_is_its_own_status() -> None:
    result = run("def f(:\n    pass\n")
    assert result.status == "syntax_error"
    assert (result.error_type, result.error_line) == ("SyntaxError", 1)


def test_an_infinite_loop_times_out_within_the_limit_plus_a_little() -> None:
    started = time.monotonic()
    result = run("while True:\n    pass\n", timeout_seconds=1.0)
    assert result.status == "timeout"
    assert time.monotonic() - started < 1.0 + 2.0


def test_a_program_that_sleeps_is_stopped_by_the_wall_clock_not_only_cpu_time() -> None:
    result = run("import time\ntime.sleep(60)\n", timeout_seconds=1.0)
    assert result.status == "timeout"
    assert result.duration_seconds < 3


@pytest.mark.parametrize(
    "bomb",
    ["block = bytearray(2 ** 31)\n", "hoard = []\nwhile True:\n    hoard.append(' ' * 10 ** 6)\n"],
    ids=["one-allocation", "gradual"],
)
def test_a_memory_bomb_hits_the_memory_limit(bomb: str) -> None:
    result = run(bomb, memory_mb=128)
    assert result.status == "memory_limit"
    assert result.error_type == "MemoryError"


def test_huge_output_is_capped_and_stops_the_program() -> None:
    started = time.monotonic()
    result = run("while True:\n    print('x' * 1000)\n", max_output_bytes=10_000)
    assert result.status == "output_limit"
    assert len(result.stdout) <= TAIL_CHARS
    assert time.monotonic() - started < 3


def test_writing_a_huge_file_hits_the_file_size_limit() -> None:
    result = run("with open('big', 'wb') as f:\n    f.write(b'0' * (64 * 1024 * 1024))\n")
    assert result.status == "output_limit"
    assert result.error == "file size limit exceeded"


def test_the_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRESHER_TEST_SECRET", "hunter2")
    result = run("import json, os\nprint(json.dumps(dict(os.environ)))\n")
    env = json.loads(result.stdout)
    assert "hunter2" not in result.stdout
    assert set(env) == {"PATH", "LANG", "HOME", "PYTHONHASHSEED", "PWD"}
    assert env["PATH"] == "/usr/bin:/bin"


def test_the_working_directory_is_a_fresh_private_folder_that_is_gone_afterwards() -> None:
    first = run("import os\nopen('scratch.txt', 'w').write('x')\nprint(os.getcwd(), os.environ['HOME'])\n")
    second = run("import os\nprint(os.listdir('.'))\n")
    cwd, home = first.stdout.split()
    assert cwd == home == SANDBOX_DIR
    assert second.stdout.strip() == "['program.py']"  # the scratch file of the first run is gone


def test_stdin_is_closed() -> None:
    result = run("input()\n")
    assert result.status == "failed"
    assert result.error_type == "EOFError"


def test_only_the_standard_library_is_importable() -> None:
    assert run("import json, math, collections\n").status == "passed"
    result = run("import polars\n")
    assert result.error_type == "ModuleNotFoundError"


def test_string_hashing_is_deterministic_across_runs() -> None:
    source = "print(hash('thresher'), list({'a', 'b', 'c', 'd', 'e'}))\n"
    assert run(source).stdout == run(source).stdout


def test_a_crash_by_signal_is_reported_with_the_signal_name() -> None:
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    assert result.status == "crashed"
    assert result.exit_code == -11
    assert result.error == "killed by SIGSEGV"


def test_background_processes_left_behind_are_killed_and_do_not_delay_the_result() -> None:
    result = run("import subprocess\nsubprocess.Popen(['sleep', '30'])\nprint('done')\n")
    assert result.status == "passed"
    assert result.duration_seconds < 2


def test_an_exit_status_without_a_traceback_is_a_plain_failure() -> None:
    result = run("raise SystemExit(3)\n")
    assert (result.status, result.exit_code, result.error) == ("failed", 3, "exit status 3")


def test_this_host_isolates_fully_so_verdicts_carry_no_isolation_notes() -> None:
    """CI and the development machines have bubblewrap and a writable cgroup tree (the Makefile installs
    bubblewrap): a host that lacks either must fail here, not quietly run code unisolated."""
    result = run("pass")
    assert result.notes == ()
    isolation = Sandbox(SandboxLimits(**LIMITS)).isolation
    assert isolation.namespaces and isolation.cgroups
    assert "namespaces" in isolation.describe()


def test_a_host_without_isolation_says_so_in_every_result() -> None:
    result = Sandbox(SandboxLimits(**LIMITS), isolate=False).run("print('ran')")
    assert result.status == "passed"
    assert result.notes == ("not isolated",)


def test_the_program_runs_as_an_unprivileged_user_without_capabilities() -> None:
    result = run(
        "import os\nprint(os.getuid(), os.geteuid())\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
    )
    uids, capabilities = result.stdout.splitlines()
    assert len(set(uids.split())) == 1 and int(uids.split()[0]) not in (0, os.getuid())
    assert int(capabilities, 16) == 0


@pytest.mark.parametrize("attack", ADVERSARIAL_SUITE, ids=lambda a: a.name)
def test_the_adversarial_suite_is_contained_with_a_verdict_and_the_run_goes_on(attack) -> None:
    sandbox = Sandbox(SandboxLimits(timeout_seconds=3.0, memory_mb=256))
    (verdict,) = run_adversarial_suite(sandbox, (attack,))
    assert verdict.contained, verdict.host_check
    assert verdict.status in attack.expected, (verdict.status, verdict.reason)
    assert verdict.reason
    # The run goes on: the same sandbox still runs an ordinary program afterwards.
    assert sandbox.run("print(2 + 2)").stdout == "4\n"


def test_run_many_returns_results_in_input_order_and_runs_them_in_parallel() -> None:
    # The first program is the slowest, so completion order differs from input order.
    sources = [
        f"import time\ntime.sleep({delay})\nprint({i})\n" for i, delay in enumerate([0.6, 0.1, 0.4, 0.2])
    ]
    started = time.monotonic()
    results = run_many(sources, workers=2, **LIMITS)
    elapsed = time.monotonic() - started
    assert [r.stdout.strip() for r in results] == ["0", "1", "2", "3"]
    assert elapsed < 1.3 - 0.1  # serial would take 1.3 s plus four interpreter start-ups


def test_run_many_of_nothing_is_nothing() -> None:
    assert run_many([], workers=2, **LIMITS) == []


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Sandbox(SandboxLimits(timeout_seconds=0, memory_mb=128))
