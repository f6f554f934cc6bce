"""The program that runs inside the sandbox: it runs each test of one sample and reports what happened.

Standard library only, and never imported by rlkit: :mod:`rewards.sandbox` starts it as
``python3 -I -c <this source>`` (in fresh network, pid, mount and IPC namespaces when it can), writes one
JSON request on its stdin, ``{"child": <source of rewards._sandbox_child>, "code": ..., "tests":
[{"input": ...} or {"assert": ..., "status": n}, ...], "limits": ..., "isolate": bool}``, and reads one
JSON line ``{"results": [{"exit": int or null, "stdout": str (stdin/stdout tests only)}, ...]}`` from
its stdout. The runner never receives an expected output and judges nothing: the caller does.

The runner itself is trusted and unlimited; model-written code never runs in it. Each test is a fresh
interpreter (:mod:`rewards._sandbox_child`), started as ``nobody`` (when the runner is root) under the
limits, with stdin and stdout on unnamed memory files, stderr on /dev/null and every other descriptor
closed. So the model's code shares no memory, descriptor or file name with the
runner: it cannot read the runner's state, write on its channels, or plant a symlink where the runner,
as root, would write.
"""

import contextlib
import ctypes
import functools
import json
import os
import resource
import select
import signal
import subprocess
import sys

NOBODY = 65534
MS_NOSUID, MS_NODEV, MS_PRIVATE = 0x2, 0x4, 0x40000
PR_SET_NO_NEW_PRIVS = 38
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1  # same on every arch
# Private, empty tmpfs mounts; /run also because it holds the host daemons' sockets, which a read-only
# mount does not stop anyone from connecting to.
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")


class MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


def mount(source, target, fstype, flags, options):
    libc = ctypes.CDLL(None, use_errno=True)
    args = [None if a is None else a.encode() for a in (source, target, fstype)]
    if libc.mount(*args, flags, options and options.encode()) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def read_only_host():
    """Make every mount we see read-only and private (so nothing we mount propagates to the host), in
    one call that keeps each mount's other flags: mount_setattr, Linux 5.12. Every mount rather than a
    tmpfs over each directory that nobody may write: those (world-writable, nobody's own) cannot all
    be listed, and one missed keeps what the program wrote there."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = MountAttr(attr_set=MOUNT_ATTR_RDONLY, propagation=MS_PRIVATE)
    if (
        libc.syscall(
            ctypes.c_long(SYS_MOUNT_SETATTR),
            ctypes.c_int(AT_FDCWD),
            b"/",
            ctypes.c_uint(AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
        != 0
    ):
        raise OSError(ctypes.get_errno(), "mount_setattr / read-only (needs Linux 5.12)")


def ipc_limits(disk_mb):
    """Limits of our fresh IPC namespace (whose objects die with it): the System V defaults let one
    program keep gigabytes of kernel memory that no rlimit counts."""
    return {
        "kernel/shmall": str((disk_mb << 20) // resource.getpagesize()),  # shared memory in all, in pages
        "kernel/msgmni": "16",  # message queues, of msgmnb = 16 KiB each
        "kernel/sem": "250 32000 32 128",  # per array, in all, per semop call, arrays: Linux's old defaults
        "fs/mqueue/queues_max": "16",
    }  # POSIX message queues, of at most 10 x 8 KiB each


def isolate(limits):
    """Inside the fresh namespaces, as root: bound IPC, make the host read-only, give the PRIVATE_DIRS
    private size-capped tmpfs mounts (the only places anything can be written, and in all bounded)
    and work in /tmp/work."""
    for name, value in ipc_limits(limits["disk_mb"]).items():  # before /proc is read-only
        with open(f"/proc/sys/{name}", "w") as f:
            f.write(value)
    read_only_host()
    disk_mb = limits["disk_mb"]
    for path in PRIVATE_DIRS:
        if os.path.isdir(path):  # inodes are kernel memory too: at most one per 4 KiB of space
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_mb}m,nr_inodes={disk_mb * 256},mode=1777")
    os.mkdir("/tmp/work")
    os.chdir("/tmp/work")


def apply_limits(limits):
    """rlimits of one test's process tree (inherited by everything it forks)."""
    mb = 1 << 20
    for kind, value in (
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
        (resource.RLIMIT_FSIZE, limits["output_bytes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_NPROC, limits["processes"]),
        (resource.RLIMIT_CORE, 0),
    ):  # exec makes the test dumpable again: no core files
        resource.setrlimit(kind, (value, value))
    cpu = max(1, int(limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL one second later


def memory_file(name, data=b""):
    """An unnamed file in memory holding ``data``, read from its start: no path that code could replace."""
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def confine(limits):
    """Between fork and exec of a test, already as nobody (when root): its own process group, the limits
    (after the setuid: setuid() over RLIMIT_NPROC would fail the exec) and no_new_privs, so setuid and
    file-capability programs (su, mount, a buggy one) run without their privileges."""
    os.setpgid(0, 0)
    apply_limits(limits)
    if ctypes.CDLL(None).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_NO_NEW_PRIVS)")


def kill_test(proc, in_namespace):
    """Kill the test's process group, and in our own pid namespace everything else but us (which also
    catches processes that left the group with setsid); reap them all and return the test's exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if in_namespace:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
    code = proc.wait()
    while True:  # orphans of the test, whose parent we became as the namespace's init
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return code


def run_test(child, code, test, limits, in_namespace):
    """What one test did: its exit code (None if it ran out of time), and its stdout for a stdin/stdout test.

    The test is a fresh interpreter, as nobody when we are root, with stdin and stdout on memory files,
    stderr on /dev/null and every other descriptor closed (``close_fds``); a failure to start it (say,
    an interpreter that nobody may run) raises here, before any model code ran."""
    job = {"code": code, **test}
    header = json.dumps({k: v for k, v in job.items() if k != "input"}).encode()
    stdin = memory_file("stdin", b"%010d" % len(header) + header + job.get("input", "").encode())
    stdout = memory_file("stdout")
    nobody = NOBODY if os.geteuid() == 0 else None
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", child],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        user=nobody,
        group=nobody,
        extra_groups=None if nobody is None else [],
        preexec_fn=functools.partial(confine, limits),
    )
    os.close(stdin)
    pidfd = os.pidfd_open(proc.pid)
    finished = select.select([pidfd], [], [], limits["timeout_s"])[0]  # the test exited, or the deadline
    os.close(pidfd)
    exit_code = kill_test(proc, in_namespace)
    result = {"exit": exit_code if finished else None}
    if "input" in test:
        result["stdout"] = os.pread(stdout, limits["output_bytes"], 0).decode(errors="replace")
    os.close(stdout)
    return result


def main():
    request = json.loads(sys.stdin.read())
    limits = request["limits"]
    if request["isolate"]:
        isolate(limits)
    if os.geteuid() == 0:
        os.chown(".", NOBODY, NOBODY)  # the tests, run as nobody, may write in the working directory
    in_namespace = os.getpid() == 1
    results = [run_test(request["child"], request["code"], test, limits, in_namespace) for test in request["tests"]]
    print(json.dumps({"results": results}), flush=True)


main()
