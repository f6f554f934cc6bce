"""The code sandbox: correct verdicts, and hostile code that leaves the machine untouched and the caller alive."""

import ctypes
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
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
    deadline = time.monotonic() + 30  # SIGKILL is delivered asynchronously; a hang guard, not a bound
    while nobody_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert nobody_processes() == []


def host_directory(prefix: str) -> Path:
    """A new directory, readable by all, in / when we may write there: unlike /tmp, / is visible
    from inside the sandbox's mount namespace, so the sandbox really meets it."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/" if os.access("/", os.W_OK) else None))
    directory.chmod(0o755)
    return directory


@pytest.fixture
def victim():
    """A directory and file of ours, readable by all, that model code must not change."""
    directory = host_directory("rlkit-victim-")
    (directory / "precious.txt").write_text("keep me")
    yield directory
    (directory / "precious.txt").unlink(missing_ok=True)
    directory.rmdir()


def test_assert_and_stdio_verdicts():
    solution = "def double(x):\n    return 2 * x\n"
    assert run_tests(
        solution,
        [{"assert": "assert double(2) == 4"}, {"assert": "assert double(2) == 5"}, {"assert": "assert undefined_name"}],
    ) == [True, False, False]
    program = "import sys\nn = int(input())\nprint(n * 2)   \nsys.exit(0)\n"
    assert run_tests(
        program,
        [{"input": "2\n", "output": "4\n\n"}, {"input": "3\n", "output": "7\n"}, {"input": "x\n", "output": ""}],
    ) == [True, False, False]


def test_early_exit_does_not_pass():
    assert run_tests("import os\nos._exit(0)", [{"assert": "assert False"}]) == [False]
    assert run_tests("import sys\nsys.exit(0)", [{"assert": "assert False"}]) == [False]


def test_malformed_test_case_is_rejected():
    with pytest.raises(ValueError, match="got keys \\['expected', 'input'\\]"):
        run_tests("pass", [{"input": "1", "expected": "1"}])


# The call's whole budget is sandbox.STARTUP_S + timeout_s per test (7 s here): a test left running past
# it raises TimeoutError. So verdicts [False, True] mean the first test was killed by its own limits, in
# time for the second (the same code, ending at once) to run and pass.


def test_infinite_loop_is_killed(mode):
    spin = "def spin(forever):\n    while forever:\n        pass\n"
    assert run_tests(spin, [{"assert": "spin(True)"}, {"assert": "spin(False)"}], FAST) == [False, True]


def test_sleeping_forever_is_killed_by_wall_clock(mode):
    assert run_tests("import time", [{"assert": "time.sleep(60)"}, {"assert": "time.sleep(0)"}], FAST) == [False, True]


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
    targets = [
        "/tmp/rlkit-escaped.txt",
        "/dev/shm/rlkit-escaped.txt",
        "/var/tmp/rlkit-escaped.txt",
        str(tmp_path / "escaped.txt"),
        "/rlkit-escaped.txt",
    ]
    code = "import contextlib\n" + "".join(
        f"with contextlib.suppress(OSError):\n    open({t!r}, 'w').write('x')\n" for t in targets
    )
    assert run_tests(code, PASS) == [True]
    assert [t for t in targets if os.path.exists(t)] == []


def test_environment_secrets_are_not_inherited(mode, monkeypatch):
    monkeypatch.setenv("RLKIT_TEST_SECRET", "hunter2")
    snoop = (
        "import glob, os\nseen = str(os.environ)\nfor path in glob.glob('/proc/*/environ'):\n"
        "    try:\n        seen += open(path).read()\n    except OSError:\n        pass\n"
    )
    assert run_tests(snoop, [{"assert": "assert 'hunter2' not in seen"}, {"assert": "assert 'PATH' in seen"}]) == [
        True,
        True,
    ]


def test_network_is_unreachable(mode):
    if mode == "fallback":
        pytest.skip("without a network namespace only Python's own sockets are blocked (documented)")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    direct = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    via_program = (
        f"import os\nos.system(\"python3 -c 'import socket; "
        f'socket.create_connection((\\"127.0.0.1\\", {port}), timeout=1)\'")\n'
    )
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
    killer = (
        f"import os, signal, contextlib\n"
        f"for pid in (os.getppid(), 1, {me}, -1):\n"
        f"    with contextlib.suppress(OSError):\n        os.kill(pid, signal.SIGKILL)\n"
        f"with contextlib.suppress(OSError):\n    os.killpg(os.getpgid({me}), signal.SIGKILL)\n"
    )
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


def test_an_interpreter_the_tests_cannot_start_is_an_error(mode):
    """Not a row of failed tests, as if the code were wrong."""
    if os.geteuid() != 0:
        pytest.skip("without root the tests run as our own user, who may start it")
    hidden = host_directory("rlkit-hidden-")
    hidden.chmod(0o700)  # nobody cannot look inside
    (hidden / "python3").symlink_to(shutil.which("python3", path=sandbox.CLEAN_ENV["PATH"]))
    try:
        with pytest.raises(RuntimeError, match="PermissionError"):
            run_tests("pass", PASS, FAST, python=str(hidden / "python3"))
    finally:
        shutil.rmtree(hidden)


def test_no_descriptor_but_stdio_is_inherited(mode):
    """Hole: the runner's verdict pipe was inherited as fd 3; writing "ok" on it then exiting passed."""
    forge = "import os\nfor fd in range(3, 1024):\n    try:\n        os.write(fd, b'ok')\n    except OSError:\n        pass\nos._exit(0)\n"
    assert run_tests(forge, [{"assert": "assert False"}, {"input": "", "output": "4"}], FAST) == [False, False]
    census = (
        "import os\nopen_fds = []\nfor fd in range(3, 1024):\n    try:\n        os.fstat(fd)\n"
        "        open_fds.append(fd)\n    except OSError:\n        pass\nprint(open_fds)\n"
    )
    assert run_tests(census, [{"input": "", "output": "[]"}], FAST) == [True]


SNOOP = r"""
import functools, gc, glob, os, re, sys
secret = re.compile(rb"SECRET-[0-9a-f]{32}")
def read(path, offset=0, size=1 << 20):
    with open(path, "rb", 0) as f:
        f.seek(offset)
        return f.read(size)
def regions(pid):
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            for offset in range(start, end, (1 << 20) - 64):  # overlapping pieces, for a bounded heap
                yield functools.partial(read, f"/proc/{pid}/mem", offset, min(1 << 20, end - offset))
places = [functools.partial(read, "/proc/self/fd/0")]  # all of stdin, whatever came before the input
places += [functools.partial(lambda o: repr(o).encode(), o) for o in gc.get_objects() if isinstance(o, dict)]
frame = sys._getframe()
while frame:  # whoever called us, and their variables
    places.append(functools.partial(lambda f: repr(f.f_locals).encode(), frame))
    frame = frame.f_back
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        places += regions(pid)
    except OSError:
        pass
    places += [functools.partial(read, f"/proc/{pid}/{name}") for name in ("cmdline", "environ")]
    places += [functools.partial(read, fd) for fd in glob.glob(f"/proc/{pid}/fd/*")]
for root in (".", "/tmp", "/dev/shm"):
    places += [functools.partial(read, path) for path in glob.glob(f"{root}/**", recursive=True)]
found = set()
for place in places:
    try:
        found.update(secret.findall(place()))
    except (OSError, OverflowError, ValueError, MemoryError):
        pass
print(*sorted(s.decode() for s in found))
"""


def test_expected_output_is_out_of_reach(mode):
    """Hole: the child was a fork of the runner, so it found the expected output in its own memory."""
    if mode == "fallback" and os.geteuid() != 0:
        pytest.skip("without root the program runs as our own user and may read our memory (documented)")
    secret = f"SECRET-{uuid.uuid4().hex}"
    assert run_tests(SNOOP, [{"input": "", "output": secret}], Limits(timeout_s=20, cpu_s=20)) == [False]


def test_no_host_directory_is_writable(mode):
    """Hole: /run/lock (world-writable, not covered by a private mount) kept what the program wrote."""
    if mode == "fallback":
        pytest.skip("without a mount namespace, world-writable host directories are writable (documented)")
    open_to_all, nobodys = host_directory("rlkit-open-"), host_directory("rlkit-nobody-")
    open_to_all.chmod(0o1777)
    os.chown(nobodys, NOBODY, NOBODY)
    name = f"rlkit-escaped-{uuid.uuid4().hex}"
    targets = ["/run/lock", "/tmp", "/var/tmp", "/dev/shm", str(open_to_all), str(nobodys)]
    code = (
        f"import contextlib, os\nfor d in {targets!r} + ['.']:\n    with contextlib.suppress(OSError):\n"
        f"        open(os.path.join(d, {name!r}), 'w').write('x')\n"
    )
    try:
        assert run_tests(code, [{"assert": f"assert os.path.exists({name!r})"}]) == [True]  # cwd is writable
        assert [d for d in targets if os.path.lexists(os.path.join(d, name))] == []
    finally:
        for d in targets:
            Path(d, name).unlink(missing_ok=True)
        open_to_all.rmdir()
        nobodys.rmdir()


def test_private_folders_bound_their_inodes(mode):
    """Empty files take no space but an inode each, kernel memory that the size cap did not count."""
    if mode == "fallback":
        pytest.skip("without a mount namespace the program writes to the host's folders (documented)")
    code = (
        "made = 0\nfor made in range(4096):\n    try:\n        open(f'empty{made}', 'w').close()\n"
        "    except OSError:\n        break\n"
    )
    assert run_tests(code, [{"assert": "assert made <= 2 * 256"}], Limits(disk_mb=2)) == [True]


def nobodys_ipc() -> list[tuple[str, int]]:
    """(kind, id) of the host's System V IPC objects owned by nobody."""
    found = []
    for kind, flag, key in (("shm", "-m", "shmid"), ("msg", "-q", "msqid"), ("sem", "-s", "semid")):
        header, *rows = (line.split() for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines())
        found += [(flag, int(row[header.index(key)])) for row in rows if int(row[header.index("uid")]) == NOBODY]
    return found


def test_system_v_ipc_stays_in_the_sandbox(mode):
    """Hole: without an IPC namespace System V objects outlived the sandbox, their size bounded by nothing we set."""
    if mode == "fallback":
        pytest.skip("without an IPC namespace the host's System V limits apply (documented)")
    small = Limits(disk_mb=8)
    prefix = f"rlkit-{uuid.uuid4().hex}-"
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]\n"
        "IPC_CREAT, IPC_PRIVATE = 0o1000, 0\n"
        "kept = libc.shmget(IPC_PRIVATE, 1 << 20, IPC_CREAT | 0o600)\n"
        "huge = libc.shmget(IPC_PRIVATE, 16 << 20, IPC_CREAT | 0o600)  # twice disk_mb\n"
        "queues = sum(libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600) >= 0 for _ in range(100))\n"
        "arrays = sum(libc.semget(IPC_PRIVATE, 250, IPC_CREAT | 0o600) >= 0 for _ in range(200))\n"
        "rt = ctypes.CDLL('librt.so.1')\ntiny = (ctypes.c_long * 4)(0, 1, 1, 0)  # mq_attr: 1 message of 1 byte\n"
        f"posix = sum(rt.mq_open(f'/{prefix}{{i}}'.encode(), 0o102, 0o600, tiny) >= 0 for i in range(100))\n"
    )
    try:
        assert run_tests(
            code,
            [{"assert": "assert kept >= 0 and huge == -1 and queues <= 16 and arrays <= 128 and posix <= 16"}],
            small,
        ) == [True]
        assert nobodys_ipc() == []
    finally:
        for flag, ipc_id in nobodys_ipc():
            subprocess.run(["ipcrm", flag, str(ipc_id)], check=False)
        rt = ctypes.CDLL("librt.so.1")
        for i in range(100):  # what the host kept without an IPC namespace
            rt.mq_unlink(f"/{prefix}{i}".encode())


def test_symlinks_in_the_work_folder_are_not_followed(mode, victim):
    """Hole: the runner, as root, wrote the next test's stdin.txt and stdout.txt by name in a folder
    that the program owns, so symlinks left there made it overwrite any file."""
    target = str(victim / "precious.txt")
    code = (
        "import contextlib, os\nfor name in ('stdin.txt', 'stdout.txt', 'stderr.txt'):\n"
        "    with contextlib.suppress(OSError):\n        os.remove(name)\n"
        f"    os.symlink({target!r}, name)\nprint(input())\n"
    )
    tests = [{"input": "pwned\n", "output": "pwned"}] * 2
    passed = run_tests(code, tests, FAST)
    assert Path(target).read_text() == "keep me"
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert passed == [True, True]


def test_setuid_programs_give_no_privilege(mode, victim):
    """Hole: a setuid-root program on the host (say a buggy one) still ran as root for model code."""
    if os.geteuid() != 0:
        pytest.skip("a setuid-root program takes root to make")
    setuid_id = victim / "id"
    shutil.copy(shutil.which("id"), setuid_id)
    setuid_id.chmod(0o4755)
    try:
        code = f"import subprocess\nprint(subprocess.run([{str(setuid_id)!r}, '-u'], capture_output=True, text=True).stdout)"
        assert run_tests(code, [{"input": "", "output": str(NOBODY)}], FAST) == [True]
    finally:
        setuid_id.unlink()


def test_core_dumps_are_off(mode):
    """A fresh interpreter per test is dumpable again (a forked runner that called setuid was not), so
    the program could raise its core-size limit and write dumps of itself where it runs."""
    code = (
        "import glob, os, resource\nif input() == 'crash':\n"
        "    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)\n    os.abort()\n"
        "print(glob.glob('core*'))\n"
    )
    assert run_tests(code, [{"input": "crash\n", "output": ""}, {"input": "look\n", "output": "[]"}], FAST) == [
        False,
        True,
    ]


def test_host_unix_sockets_are_unreachable(mode):
    """Hole: a subprocess (past the audit hook) could connect to the host's daemons' sockets in /run;
    abstract sockets belong to the network namespace."""
    if mode == "fallback":
        pytest.skip("without namespaces only Python's own sockets are blocked (documented)")
    run_dir = Path(tempfile.mkdtemp(prefix="rlkit-daemon-", dir="/run"))
    run_dir.chmod(0o755)
    listeners = []
    for address in (str(run_dir / "socket"), f"\0rlkit-{uuid.uuid4().hex}"):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(address)
        if not address.startswith("\0"):
            os.chmod(address, 0o777)
        listener.listen()
        listener.setblocking(False)  # run_tests returns after the connecting program ended
        listeners.append((address, listener))
    try:
        for address, listener in listeners:
            connect = f"import socket; socket.socket(socket.AF_UNIX).connect({address!r})"
            code = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {connect!r}], check=True)\n"
            assert run_tests(code, PASS, FAST) == [False]
            with pytest.raises(BlockingIOError):
                listener.accept()
    finally:
        for _, listener in listeners:
            listener.close()
        shutil.rmtree(run_dir)
