"""What the sandbox asks of the Linux kernel (prctl, Landlock, seccomp, limits, cleanup); fd I/O and wire.

Standard library only (ctypes for the calls the stdlib lacks). `prepare_server` sets up, once per server,
what is the same for every child, and reports which isolation layers this kernel gives; each child then
gets `landlock_ruleset` (built by the server), `landlock_enforce` and `forbid_syscalls`. The seccomp
filter itself is in sandbox_seccomp.py. nanocodegen/sandbox.py says what the isolation does and does not
guarantee.
"""

from __future__ import annotations

import _signal
import ctypes
import io
import marshal
import os
import resource
import struct
import sys

if __package__:  # nanocodegen.sandbox_os, imported by the client side (the wire format, the layer names)
    from nanocodegen import sandbox_seccomp
else:  # imported by the server script, which has put this directory on sys.path for the moment
    import sandbox_seccomp

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER, _PR_SET_NAME = 1, 38, 36, 15
# Landlock's syscall numbers are the same on every architecture.
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446

# RLIMIT_NPROC counts a user's processes and does not bind root, so only a non-root server can forbid
# fork() (and threads) this way; the seccomp filter forbids them for everyone.
FORK_LIMIT_BINDS = os.geteuid() != 0
_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
MAX_FD = _hard if 0 < _hard < (1 << 24) else 1 << 24  # close_range upper bound for the child's cleanup

# Landlock access rights (linux/landlock.h). Every right the kernel knows is "handled" (denied unless a
# rule allows it), reads included; the one rule allows the child's private directory.
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_DIR, _FS_REMOVE_FILE, _FS_MAKE_CHAR, _FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_FS_MAKE_REG, _FS_MAKE_SOCK, _FS_MAKE_FIFO, _FS_MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
_FS_MAKE_SYM, _FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15  # ABI 1, 2, 3, 5
_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
# What a program may do beneath its private dir: read, create, write and delete files. Never exec,
# never device files, sockets or fifos.
_FS_PRIVATE = (
    _FS_READ_FILE | _FS_READ_DIR | _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_DIR
    | _FS_MAKE_REG | _FS_MAKE_SYM | _FS_REFER | _FS_TRUNCATE
)  # fmt: skip
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# The OS layer, by what it must stop; the sandbox refuses to run untrusted code when one is missing,
# unless the caller passes allow_weak_isolation. (`nanocodegen doctor` prints them.)
REQUIRED_LAYERS = {
    "fs_read_confined": "no reads outside the private directory, /proc of other processes included (Landlock)",
    "fs_write_confined": "no writes outside the private directory (Landlock)",
    "network_blocked": "no sockets of any kind (seccomp)",
    "processes_blocked": "no fork, clone, threads or exec (seccomp)",
    "signals_blocked": "no signals to, or tracing of, other processes (seccomp; Landlock ABI 6)",
    "syscalls_allowlisted": "only the system calls a Python program needs (seccomp)",
}
LAYER_SWITCHES = ("landlock", "seccomp")  # what Sandbox(disable_layers=...) may turn off, for tests


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} failed: {os.strerror(err)}")
    return ret


def landlock_abi() -> int:
    """Landlock ABI version of this kernel; 0 if it has none (older than 5.13, or Landlock not enabled)."""
    ret = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


_CHILD_FILTER: sandbox_seccomp.SockFprog | None = None  # built by prepare_server; each child installs it


def prepare_server(disable: tuple[str, ...] = ()) -> dict:
    """Set up the server process once, for everything its children share; return the layers in use.

    `disable` turns layers off by name (LAYER_SWITCHES), to test and measure the sandbox without them.
    Last, the server confines itself with the server seccomp filter (see sandbox_seccomp)."""
    global _CHILD_FILTER
    unknown = set(disable) - set(LAYER_SWITCHES)
    assert not unknown, f"unknown layers {sorted(unknown)}; choose from {LAYER_SWITCHES}"
    # No set-uid gains after exec (required by Landlock and seccomp); the server itself never execs.
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    server_filter = None
    if "seccomp" not in disable:
        server_filter, _CHILD_FILTER = sandbox_seccomp.server_filter(), sandbox_seccomp.child_filter()
        if server_filter is not None and not _filters_work(server_filter, _CHILD_FILTER):
            server_filter = _CHILD_FILTER = None  # a kernel without seccomp filters
    abi = landlock_abi() if "landlock" not in disable else 0
    seccomp = _CHILD_FILTER is not None
    features = {
        "landlock_abi": abi,
        "seccomp_filter": seccomp,
        "fs_read_confined": abi >= 1,
        "fs_write_confined": abi >= 1,
        "network_blocked": seccomp,
        "tcp_blocked": seccomp or abi >= 4,
        "processes_blocked": seccomp or FORK_LIMIT_BINDS,
        # Signals and ptrace: seccomp refuses them; Landlock scopes ptrace (ABI 1) and signals (ABI 6).
        # Reading another process's /proc entries is a file read: fs_read_confined covers it.
        "signals_blocked": seccomp or abi >= 6,
        "signals_scoped": abi >= 6,
        "syscalls_allowlisted": seccomp,
        # Descendants that leave a child's process group are re-parented here, so the server can kill them.
        "subreaper": _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0,
        "disabled": list(disable),
    }
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Python ignores SIGXFSZ; the default action kills a child the moment it passes the output cap.
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    # The children's stdio: UTF-8 whatever the locale; the server never prints, so the buffers stay empty.
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace"
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    if server_filter is not None:
        sandbox_seccomp.install(server_filter)
    return features


def missing_layers(features: dict) -> list[str]:
    """The REQUIRED_LAYERS that `features` (a server's hello) lacks."""
    return [name for name in REQUIRED_LAYERS if not features.get(name)]


def forbid_syscalls() -> None:
    """Install the child seccomp filter on the calling process, for good (on top of the server's, which
    it inherited). A no-op where the filters are unavailable or disabled (the features say so)."""
    if _CHILD_FILTER is not None:
        sandbox_seccomp.install(_CHILD_FILTER)


def _filters_work(server_filter, child_filter) -> bool:
    """Whether this kernel accepts the filters and Python still works under them, forking included: try
    them in a throwaway child and grandchild (a filter cannot be taken back)."""
    pid = os.fork()
    if pid == 0:
        try:
            sandbox_seccomp.install(server_filter)
            grandchild = os.fork()
            if grandchild == 0:
                try:
                    sandbox_seccomp.install(child_filter)
                    ok = str(sum(range(10))) == "45" and os.getpid() > 0
                    os._exit(0 if ok else 1)
                finally:
                    os._exit(1)
            os._exit(0 if os.waitpid(grandchild, 0)[1] == 0 else 1)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def landlock_ruleset(private_dir: str, abi: int) -> int:
    """A Landlock ruleset fd for one child (-1 without Landlock): no reads, writes or exec anywhere but
    private_dir; ABI >= 4: no TCP bind/connect; ABI >= 6: no signals to, or abstract sockets of, outside
    processes. Building it does not restrict the caller; `landlock_enforce` does."""
    if abi < 1:
        return -1
    handled_fs = _FS_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    handled_fs |= _FS_IOCTL_DEV if abi >= 5 else 0
    attr, size = _RulesetAttr(fs=handled_fs), 8  # the kernel reads only the fields its ABI knows
    if abi >= 4:
        attr.net, size = _NET_BIND_TCP | _NET_CONNECT_TCP, 16
    if abi >= 6:
        attr.scoped, size = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL, 24
    ruleset = _check(
        _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
        "landlock_create_ruleset",
    )
    dir_fd = os.open(private_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        rule = _PathBeneathAttr(allowed_access=_FS_PRIVATE & handled_fs, parent_fd=dir_fd)
        _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0), "landlock_add_rule")
    except OSError:
        os.close(ruleset)
        raise
    finally:
        os.close(dir_fd)
    return ruleset


def landlock_enforce(ruleset: int) -> None:
    """Confine the calling (single-threaded) process to `ruleset` for good; it and its children inherit it."""
    _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)


def trim_heap() -> None:
    """Return free malloc memory to the kernel (glibc's malloc_trim; a no-op where libc lacks it)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


# clone(2)'s number where its first argument is the flags (x86_64 has its own table; the generic one is
# aarch64's and riscv64's); elsewhere CLONE_PARENT_WORKS is False and the server forks its children itself.
_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220}.get(os.uname().machine, 0)
_SYS_PIDFD_GETFD = 438  # the same on every architecture
_CLONE_PARENT = 0x8000
_CAP_SYS_NICE = 23
CLONE_PARENT_WORKS = _SYS_CLONE != 0
_pylibc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held across the call (see clone_parent)
_pylibc.syscall.restype = ctypes.c_long


def clone_parent() -> int:
    """os.fork(), except that the new process is a child of the caller's parent (CLONE_PARENT), not of
    the caller: 0 in the new process, its pid in the caller.

    The sandbox's zygote forks children this way so that they are the server's own: the server reaps them
    (their exit status and rusage), and they die with it (PR_SET_PDEATHSIG). Python's fork bookkeeping is
    done as os.fork() does it (PyOS_BeforeFork and the after-fork hooks: locks, thread states, the
    os.register_at_fork callbacks such as random's reseeding); the caller must be single-threaded."""
    _before_fork()
    pid = _raw_syscall(_SYS_CLONE, _CLONE_PARENT | _signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        _after_fork_child()
        return 0
    if pid < 0:
        err = ctypes.get_errno()
        _after_fork_parent()
        raise OSError(err, f"clone(CLONE_PARENT) failed: {os.strerror(err)}")
    _after_fork_parent()
    return pid


# Bound once: each attribute lookup on a ctypes library is work (and pages written) in the zygote's loop.
_raw_syscall = _pylibc.syscall
_before_fork = ctypes.pythonapi.PyOS_BeforeFork
_after_fork_child = ctypes.pythonapi.PyOS_AfterFork_Child
_after_fork_parent = ctypes.pythonapi.PyOS_AfterFork_Parent


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A copy of descriptor `fd` of the process behind `pidfd` (the caller may ptrace it: its child), as a
    new close-on-exec descriptor of the caller."""
    return _check(_libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0), "pidfd_getfd")


def idle_priority_reversible() -> bool:
    """Whether this process may take another of its user's processes out of SCHED_IDLE again: the kernel
    treats SCHED_IDLE as nice 20, so leaving it needs CAP_SYS_NICE (root has it) or an RLIMIT_NICE of at
    least 20 (sched_setscheduler(2)). Without that, a process put there would stay there."""
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = 0
    return bool(caps >> _CAP_SYS_NICE & 1) or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20


def set_idle_priority(pid: int, idle: bool) -> bool:
    """Put process `pid` in the SCHED_IDLE class (it runs only on a CPU nothing else wants) or back in
    the normal one; False if it is gone or the kernel refused."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE if idle else os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        return False
    return True


def set_name(name: bytes) -> None:
    """Name this process (what ps and /proc/PID/comm show; at most 15 bytes)."""
    _libc.prctl(_PR_SET_NAME, name, 0, 0, 0)


def die_with_parent() -> None:
    """SIGKILL this process when its parent (the server) dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0)


# --- the client <-> server wire: a 4-byte big-endian length, then marshal. Only ever between the client
# and its own server (both trusted); a child's report has its own format (sandbox_child.py).

HEADER = struct.Struct("!I")


def encode_msg(obj: dict) -> bytes:
    data = marshal.dumps(obj)
    return HEADER.pack(len(data)) + data


def send_msg(fd: int, obj: dict) -> None:
    write_all(fd, encode_msg(obj))


def recv_msg(fd: int) -> dict | None:
    """The next message, or None on EOF between messages."""
    head = read_exact(fd, HEADER.size)
    return None if head is None else marshal.loads(read_exact(fd, HEADER.unpack(head)[0]) or b"")


def read_exact(fd: int, n: int) -> bytes | None:
    """n bytes from fd; None on EOF before the first byte, EOFError on EOF after it."""
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            if buf:
                raise EOFError("the peer closed the channel in the middle of a message")
            return None
        buf += chunk
    return buf


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def remove_tree(path: str) -> None:
    """Delete a run's directory, even if the program chmod-ed things inside it to 0."""
    try:
        os.rmdir(path)  # the common case: the program wrote nothing
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    import shutil  # only now: shutil is two megabytes that every child would otherwise carry

    # chmod follows links, so never chmod a link: it could point anywhere on the host.
    if not os.path.islink(path):
        os.chmod(path, 0o700)
    for dirpath, dirnames, _ in os.walk(path):  # top-down: each dir is opened up before it is listed
        for name in dirnames:
            sub = os.path.join(dirpath, name)
            if not os.path.islink(sub):
                os.chmod(sub, 0o700)
    # Leftovers (a file made undeletable some other way) go when the pool removes its base dir; a hostile
    # program must not be able to stop the server by making its cleanup fail.
    shutil.rmtree(path, ignore_errors=True)
