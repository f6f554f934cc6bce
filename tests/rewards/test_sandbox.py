"""The code sandbox: correct verdicts, and hostile code that leaves the machine untouched and the caller alive."""

import os
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from rewards import sandbox
from rewards.sandbox import Limits, run_tests

FAST = Limits(timeout_s=1.0, cpu_s=1.0)
PASS = [{"assert": "assert True"}]
NOBODY = 65534


@pytest.fixture(params=["namespaces", "fallback"])
def mode(request, monkeypatch):
    """Every hostile test runs with namespaces (when this machine allows them) and without."""
    if request.param == "namespaces" and not sandbox.namespaces_available():
        pytest.skip("this machine cannot create namespaces")
    if request.param == "fallback":
        monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    return request.param


def nobody_processes() -> list[int]:
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid_line = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) == NOBODY:
            pids.append(int(status.parent.name))
    return pids


@pytest.fixture(autouse=True)
def nothing_left_running():
    assert nobody_processes() == [], "processes of nobody were running before the test"
    yield
    deadline = time.monotonic() + 2  # SIGKILL is delivered asynchronously
    while nobody_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert nobody_processes() == []


@pytest.fixture
def victim():
    """A root-owned directory and file in /tmp, readable by all, that model code must not change."""
    directory = Path(tempfile.mkdtemp(prefix="rlkit-victim-"))
    directory.chmod(0o755)
    (directory / "precious.txt").write_text("keep me")
    yield directory
    (directory / "precious.txt").unlink(missing_ok=True)
    directory.rmdir()


def test_assert_and_stdio_verdicts():
    solution = "def double(x):\n    return 2 * x\n"
    assert run_tests(solution, [{"assert": "assert double(2) == 4"}, {"assert": "assert double(2) == 5"},
                                {"assert": "assert undefined_name"}]) == [True, False, False]
    program = "import sys\nn = int(input())\nprint(n * 2)   \nsys.exit(0)\n"
    assert run_tests(program, [{"input": "2\n", "output": "4\n\n"}, {"input": "3\n", "output": "7\n"},
                               {"input": "x\n", "output": ""}]) == [True, False, False]


def test_early_exit_does_not_pass():
    assert run_tests("import os\nos._exit(0)", [{"assert": "assert False"}]) == [False]
    assert run_tests("import sys\nsys.exit(0)", [{"assert": "assert False"}]) == [False]


def test_malformed_test_case_is_rejected():
    with pytest.raises(ValueError, match="got keys \\['expected', 'input'\\]"):
        run_tests("pass", [{"input": "1", "expected": "1"}])


def test_infinite_loop_is_killed(mode):
    start = time.monotonic()
    assert run_tests("while True:\n    pass", PASS, FAST) == [False]
    assert time.monotonic() - start < FAST.timeout_s + 1.5


def test_sleeping_forever_is_killed_by_wall_clock(mode):
    start = time.monotonic()
    assert run_tests("import time\ntime.sleep(60)", PASS, FAST) == [False]
    assert time.monotonic() - start < FAST.timeout_s + 1.5


def test_fork_bomb_is_contained(mode):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert run_tests(bomb, PASS, FAST) == [False]
    assert run_tests("pass", PASS, FAST) == [True]  # and the next sample runs normally


def test_setsid_child_is_killed_with_its_sandbox():
    if not sandbox.namespaces_available():
        pytest.skip("only the pid namespace catches a process that leaves the group (documented)")
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n"
    assert run_tests(escape, PASS, FAST) == [True]
    # the autouse fixture checks that the sleeper is gone


def test_memory_bomb_fails_cleanly(mode):
    assert run_tests("x = bytearray(8 << 30)", PASS, FAST) == [False]
    assert run_tests("x = []\nwhile True:\n    x.append(' ' * 10**7)", PASS, FAST) == [False]


def test_huge_output_is_capped(mode):
    flood = "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\n"
    assert run_tests(flood, [{"input": "", "output": "x"}], FAST) == [False]
    assert run_tests("print('x' * 10)", [{"input": "", "output": "x" * 10}], FAST) == [True]


def test_writing_outside_the_working_directory(mode, tmp_path):
    if mode == "fallback":
        pytest.skip("without a mount namespace, world-writable host directories are writable (documented)")
    targets = ["/tmp/rlkit-escaped.txt", "/dev/shm/rlkit-escaped.txt", "/var/tmp/rlkit-escaped.txt",
               str(tmp_path / "escaped.txt"), "/rlkit-escaped.txt"]
    code = "import contextlib\n" + "".join(
        f"with contextlib.suppress(OSError):\n    open({t!r}, 'w').write('x')\n" for t in targets)
    assert run_tests(code, PASS) == [True]
    assert [t for t in targets if os.path.exists(t)] == []


def test_environment_secrets_are_not_inherited(mode, monkeypatch):
    monkeypatch.setenv("RLKIT_TEST_SECRET", "hunter2")
    snoop = ("import glob, os\nseen = str(os.environ)\nfor path in glob.glob('/proc/*/environ'):\n"
             "    try:\n        seen += open(path).read()\n    except OSError:\n        pass\n")
    assert run_tests(snoop, [{"assert": "assert 'hunter2' not in seen"}, {"assert": "assert 'PATH' in seen"}]) \
        == [True, True]


def test_network_is_unreachable(mode):
    if mode == "fallback":
        pytest.skip("without a network namespace only Python's own sockets are blocked (documented)")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    direct = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    via_program = (f"import os\nos.system(\"python3 -c 'import socket; "
                   f"socket.create_connection((\\\"127.0.0.1\\\", {port}), timeout=1)'\")\n")
    assert run_tests(direct, PASS, FAST) == [False]
    assert run_tests(via_program, PASS, FAST) == [True]
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_python_network_guard_without_namespace(monkeypatch):
    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=1)\n"
    assert run_tests(code, PASS, FAST) == [False]
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_killing_the_parent_leaves_the_caller_alive(mode):
    me = os.getpid()
    killer = (f"import os, signal, contextlib\n"
              f"for pid in (os.getppid(), 1, {me}, -1):\n"
              f"    with contextlib.suppress(OSError):\n        os.kill(pid, signal.SIGKILL)\n"
              f"with contextlib.suppress(OSError):\n    os.killpg(os.getpgid({me}), signal.SIGKILL)\n")
    assert run_tests(killer, [{"assert": "assert True"}] * 2, FAST) == [True, True]
    assert run_tests("pass", PASS, FAST) == [True]


def test_os_system_cannot_harm_the_host(mode, victim):
    command = f"rm -rf {victim}; touch {victim}/pwned; kill -9 {os.getpid()}"
    assert run_tests(f"import os\nos.system({command!r})", PASS, FAST) == [True]
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]


def test_deleting_files_is_refused(mode, victim):
    target = victim / "precious.txt"
    code = f"import os, shutil\nos.chmod({str(target)!r}, 0o777)\nos.remove({str(target)!r})\nshutil.rmtree({str(victim)!r})\n"
    assert run_tests(code, PASS, FAST) == [False]
    assert target.read_text() == "keep me"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
