"""The program that runs inside the sandbox: it runs each test of one sample and reports which passed.

Standard library only, and never imported by rlkit: :mod:`rewards.sandbox` starts it as
``python3 -I -c <this source>`` (in fresh network, pid and mount namespaces when it can), writes one
JSON request on its stdin and reads one JSON line ``{"passed": [bool, ...]}`` from its stdout.

The runner itself is trusted and unlimited; model-written code runs only in a forked child per test,
as ``nobody`` when the runner is root, after the limits are applied, with stdin/stdout/stderr pointing at files in the working directory and
every other descriptor closed (so it cannot write on the result channel). A test passes only when the
child reports success on a private pipe *after* the test ran, so an early ``os._exit(0)`` fails.
This guards against accidents and against the machine being touched, not against code that
deliberately digs through its own process to forge the report.
"""

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys
import traceback

NOBODY = 65534
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def mount(source, target, fstype, flags, options):
    libc = ctypes.CDLL(None, use_errno=True)
    args = [None if a is None else a.encode() for a in (source, target, fstype)]
    if libc.mount(*args, flags, options and options.encode()) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def isolate(limits):
    """Inside the fresh namespaces, as root: give /tmp, /var/tmp, /dev/shm private size-capped tmpfs
    mounts (so nothing written reaches the host and the total is bounded) and work in /tmp/work."""
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # our mounts must not propagate to the host
    for path in PRIVATE_DIRS:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={limits['disk_mb']}m,mode=1777")
    os.mkdir("/tmp/work")
    os.chdir("/tmp/work")


def drop_root():
    """Become ``nobody``: the runner stays root (so model code cannot signal it), each test does not."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def apply_limits(limits):
    """rlimits of one test's process tree (inherited by everything it forks)."""
    mb = 1 << 20
    for kind, value in ((resource.RLIMIT_AS, limits["memory_mb"] * mb),
                        (resource.RLIMIT_FSIZE, limits["output_bytes"]),
                        (resource.RLIMIT_NOFILE, limits["open_files"]),
                        (resource.RLIMIT_NPROC, limits["processes"])):
        resource.setrlimit(kind, (value, value))
    cpu = max(1, int(limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL one second later


def block_network(event, args):
    """Audit hook: a Python-level network guard, the only one where network namespaces are unavailable.
    Code that starts another program or uses ctypes gets past it; the namespace does not have that hole."""
    if event.startswith("socket."):
        raise PermissionError(f"network access is disabled in the sandbox ({event})")


def run_child(code, test, ok_fd, limits):
    """Forked per test: redirect stdio to files, apply limits, run the solution and the test."""
    os.setpgid(0, 0)
    stdin = os.open("stdin.txt", os.O_RDONLY) if "input" in test else os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((stdin, 0), (os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1),
                       (os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.dup2(ok_fd, 3)
    os.closerange(4, 1 << 16)
    if os.geteuid() == 0:
        drop_root()
    apply_limits(limits)
    sys.addaudithook(block_network)
    ok = False
    try:
        namespace = {"__name__": "__main__"}
        exec(compile(code, "solution.py", "exec"), namespace)
        if "assert" in test:
            exec(compile(test["assert"], "test.py", "exec"), namespace)
        ok = True
    except SystemExit as stop:  # a stdin/stdout program may legitimately end with sys.exit()
        ok = "input" in test and stop.code in (None, 0)
    except BaseException:
        traceback.print_exc()
    try:
        sys.stdout.flush()
        if ok:
            os.write(3, b"ok")
    finally:
        os._exit(0)


def same_output(produced: str, expected: str) -> bool:
    """Compare program output ignoring trailing whitespace on each line and trailing blank lines
    (the usual rule of APPS / CodeContests judges)."""
    def lines(text):
        return [line.rstrip() for line in text.rstrip().splitlines()]
    return lines(produced) == lines(expected)


def kill_test(pid, in_namespace):
    """Kill the test's process group, and in our own pid namespace everything else but us
    (which also catches processes that left the group with setsid); then reap them all."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if in_namespace:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def run_test(code, test, limits, in_namespace):
    if "input" in test:
        with open("stdin.txt", "w") as f:
            f.write(test["input"])
    ok_read, ok_write = os.pipe2(os.O_NONBLOCK)  # a setsid-escaped grandchild may still hold the write end
    pid = os.fork()
    if pid == 0:
        os.close(ok_read)
        run_child(code, test, ok_write, limits)
    os.close(ok_write)
    pidfd = os.pidfd_open(pid)
    select.select([pidfd], [], [], limits["timeout_s"])  # returns when the child exits or at the deadline
    os.close(pidfd)
    kill_test(pid, in_namespace)
    try:
        ok = os.read(ok_read, 2) == b"ok"
    except BlockingIOError:
        ok = False
    os.close(ok_read)
    if ok and "output" in test:
        with open("stdout.txt", errors="replace") as f:
            ok = same_output(f.read(limits["output_bytes"]), test["output"])
    return ok


def main():
    request = json.loads(sys.stdin.read())
    limits = request["limits"]
    if request["isolate"]:
        isolate(limits)
    if os.geteuid() == 0:
        os.chown(".", NOBODY, NOBODY)  # the tests, run as nobody, may write in the working directory
    in_namespace = os.getpid() == 1
    results = [run_test(request["code"], test, limits, in_namespace) for test in request["tests"]]
    print(json.dumps({"passed": results}), flush=True)


main()
