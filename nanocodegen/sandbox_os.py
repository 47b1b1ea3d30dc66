"""What the sandbox asks of the Linux kernel (prctl, Landlock, seccomp, limits, cleanup); fd I/O and wire.

Standard library only (ctypes for the calls the stdlib lacks). The later hardening phase (a full seccomp
policy, user / network / pid namespaces, a read policy) belongs here: `prepare_server` for what is set once
per server; `landlock_ruleset`, `landlock_enforce` and `forbid_new_processes` for what each child gets.
See nanocodegen/sandbox.py for what the isolation does and does not guarantee.
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

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER, _PR_SET_SECCOMP = 1, 38, 36, 22
# Landlock's syscall numbers are the same on every architecture.
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446

# RLIMIT_NPROC counts a user's processes and does not bind root, so only a non-root server can forbid
# fork() (and threads) this way.
FORK_LIMIT_BINDS = os.geteuid() != 0
_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
MAX_FD = _hard if 0 < _hard < (1 << 24) else 1 << 24  # close_range upper bound for the child's cleanup

# Landlock access rights (linux/landlock.h). Reads are not restricted in this phase: the child needs the
# stdlib, and it may read what the user running the benchmark may read.
_FS_EXECUTE, _FS_WRITE_FILE, _FS_REMOVE_DIR, _FS_REMOVE_FILE = 1 << 0, 1 << 1, 1 << 4, 1 << 5
_FS_MAKE_CHAR, _FS_MAKE_DIR, _FS_MAKE_REG, _FS_MAKE_SOCK = 1 << 6, 1 << 7, 1 << 8, 1 << 9
_FS_MAKE_FIFO, _FS_MAKE_BLOCK, _FS_MAKE_SYM = 1 << 10, 1 << 11, 1 << 12
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_FS_ABI1 = (
    _FS_EXECUTE | _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_CHAR | _FS_MAKE_DIR
    | _FS_MAKE_REG | _FS_MAKE_SOCK | _FS_MAKE_FIFO | _FS_MAKE_BLOCK | _FS_MAKE_SYM
)  # fmt: skip
# What a program may still do beneath its private dir: create, write and delete files. Never exec.
_FS_PRIVATE = (
    _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_DIR | _FS_MAKE_REG | _FS_MAKE_SYM
    | _FS_REFER | _FS_TRUNCATE
)  # fmt: skip
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


# A seccomp filter that refuses to create processes or threads, or to exec: fork, vfork, clone, clone3,
# execve, execveat fail with EPERM, as does every syscall made through another ABI (i386 int 0x80, x32),
# which could reach them by other numbers. Everything else is allowed: the full syscall policy is the next
# hardening phase's. Only where the syscall numbers are known; elsewhere fork is blocked for non-root only.
_NO_PROCESS_SYSCALLS = {  # machine -> (AUDIT_ARCH_*, syscall numbers)
    "x86_64": (0xC000003E, (56, 57, 58, 59, 322, 435)),  # clone fork vfork execve execveat clone3
    "aarch64": (0xC00000B7, (220, 221, 281, 435)),  # clone execve execveat clone3 (no fork/vfork)
}
_X32_SYSCALL_BIT = 0x40000000
_SECCOMP_MODE_FILTER, _SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 2, 0x7FFF0000, 0x00050000
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8)]
    _fields_ += [("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _no_process_filter() -> _SockFprog | None:
    known = _NO_PROCESS_SYSCALLS.get(os.uname().machine)
    if known is None:
        return None
    arch, numbers = known
    deny = _SockFilter(_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | 1)  # EPERM
    allow = _SockFilter(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW)
    # Jump offsets count instructions after the current one; `to_deny(i)` reaches the last instruction.
    n = 4 + len(numbers)  # instructions before `allow`
    to_deny = lambda i: n + 1 - (i + 1)  # noqa: E731
    prog = [
        _SockFilter(_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _SockFilter(_BPF_JEQ_K, 0, to_deny(1), arch),
        _SockFilter(_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _SockFilter(_BPF_JGE_K, to_deny(3), 0, _X32_SYSCALL_BIT),
    ]
    prog += [_SockFilter(_BPF_JEQ_K, to_deny(4 + j), 0, nr) for j, nr in enumerate(numbers)]
    prog += [allow, deny]
    array = (_SockFilter * len(prog))(*prog)
    fprog = _SockFprog(len(prog), array)
    fprog._keep = array  # the struct points into the array: keep it alive with it
    return fprog


_NO_PROCESS_FILTER = _no_process_filter()  # built once, in the server; each child only installs it


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


def prepare_server() -> dict:
    """Set up the server process once, for everything its children share; return the features in use."""
    global _NO_PROCESS_FILTER
    # No set-uid gains after exec (required by Landlock and seccomp); the server itself never execs.
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if _NO_PROCESS_FILTER is not None and not _filter_installs():
        _NO_PROCESS_FILTER = None  # a kernel without seccomp filters: fall back to RLIMIT_NPROC
    abi = landlock_abi()
    features = {
        "landlock_abi": abi,
        "fs_write_confined": abi >= 1,
        "tcp_blocked": abi >= 4,
        "signals_scoped": abi >= 6,
        "fork_blocked": FORK_LIMIT_BINDS or _NO_PROCESS_FILTER is not None,
        "seccomp_no_process": _NO_PROCESS_FILTER is not None,
        # Descendants that leave a child's process group are re-parented here, so the server can kill them.
        "subreaper": _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0,
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
    return features


def forbid_new_processes() -> None:
    """Install the no-fork/no-exec seccomp filter on the calling process (needs no_new_privs, set by
    prepare_server); it and anything it could start inherit it. A no-op where the filter is unknown."""
    if _NO_PROCESS_FILTER is not None:
        ret = _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(_NO_PROCESS_FILTER), 0, 0)
        _check(ret, "prctl(PR_SET_SECCOMP)")


def _filter_installs() -> bool:
    """Whether this kernel accepts the filter: try it in a throwaway child (it cannot be taken back)."""
    pid = os.fork()
    if pid == 0:
        try:
            forbid_new_processes()
            os._exit(0)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def trim_heap() -> None:
    """Return free malloc memory to the kernel (glibc's malloc_trim; a no-op where libc lacks it)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def die_with_parent() -> None:
    """SIGKILL this process when its parent (the server) dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0)


def landlock_ruleset(private_dir: str, abi: int) -> int:
    """A Landlock ruleset fd for one child (-1 without Landlock): no writes or exec outside private_dir;
    ABI >= 4: no TCP bind/connect; ABI >= 6: no signals to, or abstract sockets of, outside processes.
    Building it does not restrict the caller; `landlock_enforce` does."""
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
