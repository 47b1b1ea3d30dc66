"""The sandbox's seccomp filters: an allowlist of the system calls a Python program needs, in two stages.

Standard library only (ctypes). Both filters are assembled once per server; `install(prog)` loads one
into the calling process for good (it needs no_new_privs, which sandbox_os.prepare_server sets, not
privilege). Filters stack, and a call must pass every filter of its process:

  server_filter()  installed by the server on itself, once: ALLOWED (what programs need) plus
                   SERVER_ONLY (what the server needs to fork, limit, kill and reap its children).
                   No exec, no sockets, for the server either. Everything else fails with ENOSYS
                   ("Function not implemented"), as if the kernel lacked it, which is also what makes
                   the C library fall back to an older call where one exists; a call through a foreign
                   ABI (i386 `int 0x80`, x32), which would reach kernel functions by other numbers,
                   fails with EPERM.
  child_filter()   installed by each child just before its program runs: SERVER_ONLY fails with EPERM
                   ("Operation not permitted": fork, clone and so threads, kill and every other signal
                   to a process, wait, setpgid, pidfd_*, prctl, Landlock, chmod, sched_setscheduler);
                   calls that could name another process work only with pid 0 ("myself": getpgid,
                   getsid, sched_getaffinity, ...); prlimit64 only reads the caller's own limits; ioctl
                   only for the few terminal and descriptor queries Python makes (IOCTL_REQUESTS).
So a program gets ALLOWED, minus what the child filter narrows. Never allowed to anyone: exec, sockets
of every kind, ptrace, process_vm_*, setrlimit, unshare, mount, bpf, io_uring, userfaultfd, keyctl,
perf_event_open, links, utimes, truncate by path, and every other call not listed.

Why two stages: loading a filter costs the kernel time proportional to its length, and the first one
in a process costs ~130 us more on top (measured: benchmarks/isolation_costs.py), all of it in every
child if the child loaded the whole allowlist. The server pays that once; a child adds a filter of a few
dozen instructions (~10 us). Allowed calls cost nothing per call after the first: since Linux 5.11 the
kernel caches "always allowed" per syscall number, which is why the per-call argument checks are few
and live in the short filter.

Why an allowlist: every system call left open is kernel code a hostile program can reach, and most
kernel exploits start from calls a Python program never needs (see the list above).

Why hand-assembled rather than libseccomp: it is ~60 lines, needs no system library (libseccomp is
not on every machine, and its Python binding is not on PyPI), and is built once per server; the
kernel's verdict cache makes libseccomp's binary-tree layout irrelevant for speed.

Architectures: x86_64 and aarch64 (syscall numbers from the kernel's uapi headers). Elsewhere the
builders return None and the sandbox reports the layer as missing.
"""

from __future__ import annotations

import ctypes
import errno
import os

# --- system calls, by name; numbers per architecture -----------------------------------------------------

ALLOWED = (
    # file descriptors
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "lseek", "close", "close_range", "dup", "dup2", "dup3", "fcntl", "flock", "fsync",
    "fdatasync", "ftruncate", "fallocate", "fadvise64", "sendfile", "copy_file_range", "pipe", "pipe2",
    "eventfd", "eventfd2", "memfd_create", "select", "pselect6", "poll", "ppoll", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "timerfd_create",
    "timerfd_settime", "timerfd_gettime",
    # paths (which paths, and what access, is Landlock's decision)
    "open", "openat", "creat", "stat", "lstat", "fstat", "newfstatat", "statx", "statfs", "fstatfs",
    "access", "faccessat", "faccessat2", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir",
    "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2", "symlink", "symlinkat",
    "umask",
    # memory
    "brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "msync", "mincore", "membarrier",
    # the process's own signals, timers and clocks
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait", "rt_sigsuspend",
    "sigaltstack", "pause", "alarm", "getitimer", "setitimer", "timer_create", "timer_settime",
    "timer_gettime", "timer_getoverrun", "timer_delete", "restart_syscall", "clock_gettime",
    "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "times",
    # threads' bookkeeping that the C library does on its own, and futexes
    "futex", "futex_waitv", "set_robust_list", "get_robust_list", "set_tid_address", "rseq",
    "sched_yield", "arch_prctl",
    # identity and information about this process
    "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid",
    "getresgid", "getpgrp", "uname", "sysinfo", "getrusage", "getrlimit", "getcpu", "getrandom", "capget",
    "sched_get_priority_max", "sched_get_priority_min",
    # leaving
    "exit", "exit_group",
)  # fmt: skip
# The server's own needs beyond ALLOWED; the child filter takes them away again.
SERVER_ONLY = (
    "fork", "vfork", "clone", "clone3", "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "wait4", "waitid", "setpgid", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "prctl",
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self", "chmod", "fchmod", "fchmodat",
    "sched_setscheduler",
)  # fmt: skip
# Allowed to programs only with pid 0 (the caller itself) as the first argument: with another pid they
# would tell a program about processes outside its run. (prlimit64 and ioctl have their own checks.)
SELF_ONLY = ("getpgid", "getsid", "sched_getaffinity", "sched_getparam", "sched_getscheduler")
# prlimit64(pid, resource, new, old): allowed only as getrlimit is, pid 0 and no new limit.
# ioctl(fd, request, ...): only the terminal and fd queries Python makes; not, say, FS_IOC_SETFLAGS, which
# would let root make its files immutable and so outlive the run.
IOCTL_REQUESTS = {"TCGETS": 0x5401, "TIOCGWINSZ": 0x5413, "FIONREAD": 0x541B, "FIONBIO": 0x5421,
                  "FIONCLEX": 0x5450, "FIOCLEX": 0x5451}  # fmt: skip
# Refused to everyone with EPERM rather than ENOSYS, so that the error says what happened.
DENIED = (
    "execve", "execveat", "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "sendto",
    "sendmsg", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "setrlimit", "unshare", "setns",
    "seccomp",
    # Landlock has no right for these, so they would reach host files: links, times, truncate by path.
    "link", "linkat", "readlink", "readlinkat", "utime", "utimes", "futimesat", "utimensat", "truncate",
)  # fmt: skip

_X86_64 = dict(
    read=0, write=1, open=2, close=3, stat=4, fstat=5, lstat=6, poll=7, lseek=8, mmap=9, mprotect=10,
    munmap=11, brk=12, rt_sigaction=13, rt_sigprocmask=14, rt_sigreturn=15, ioctl=16, pread64=17,
    pwrite64=18, readv=19, writev=20, access=21, pipe=22, select=23, sched_yield=24, mremap=25, msync=26,
    mincore=27, madvise=28, dup=32, dup2=33, pause=34, nanosleep=35, getitimer=36, alarm=37, setitimer=38,
    getpid=39, sendfile=40, socket=41, connect=42, accept=43, sendto=44, sendmsg=46, bind=49, listen=50,
    socketpair=53, clone=56, fork=57, vfork=58, execve=59, exit=60, wait4=61, kill=62, uname=63, fcntl=72, flock=73,
    fsync=74, fdatasync=75, truncate=76, ftruncate=77, getdents=78, getcwd=79, chdir=80, fchdir=81,
    rename=82, mkdir=83, rmdir=84, creat=85, link=86, unlink=87, symlink=88, readlink=89, chmod=90,
    fchmod=91, umask=95, gettimeofday=96, getrlimit=97, getrusage=98, sysinfo=99, times=100, ptrace=101,
    getuid=102, getgid=104, geteuid=107, getegid=108, setpgid=109, getppid=110, getpgrp=111, getgroups=115,
    getresuid=118, getresgid=120, getpgid=121, getsid=124, capget=125, rt_sigpending=127,
    rt_sigtimedwait=128, rt_sigqueueinfo=129, rt_sigsuspend=130, sigaltstack=131, utime=132, statfs=137,
    fstatfs=138, sched_getparam=143, sched_setscheduler=144, sched_getscheduler=145, sched_get_priority_max=146,
    sched_get_priority_min=147, prctl=157, arch_prctl=158, setrlimit=160, gettid=186, tkill=200, time=201,
    futex=202, sched_getaffinity=204, epoll_create=213, getdents64=217, set_tid_address=218,
    restart_syscall=219, fadvise64=221, timer_create=222, timer_settime=223, timer_gettime=224,
    timer_getoverrun=225, timer_delete=226, clock_gettime=228, clock_getres=229, clock_nanosleep=230,
    exit_group=231, epoll_wait=232, epoll_ctl=233, tgkill=234, utimes=235, waitid=247, openat=257, mkdirat=258,
    futimesat=261, newfstatat=262, unlinkat=263, renameat=264, linkat=265, symlinkat=266, readlinkat=267,
    fchmodat=268, faccessat=269, pselect6=270, ppoll=271, unshare=272, set_robust_list=273,
    get_robust_list=274, utimensat=280, epoll_pwait=281, timerfd_create=283, eventfd=284, fallocate=285,
    timerfd_settime=286, timerfd_gettime=287, accept4=288, eventfd2=290, epoll_create1=291, dup3=292,
    pipe2=293, preadv=295, pwritev=296, rt_tgsigqueueinfo=297, prlimit64=302, setns=308, getcpu=309,
    process_vm_readv=310, process_vm_writev=311, kcmp=312, renameat2=316, seccomp=317, getrandom=318,
    memfd_create=319, execveat=322, membarrier=324, copy_file_range=326, preadv2=327, pwritev2=328, statx=332, rseq=334,
    pidfd_send_signal=424, pidfd_open=434, clone3=435, close_range=436, pidfd_getfd=438, faccessat2=439,
    epoll_pwait2=441, landlock_create_ruleset=444, landlock_add_rule=445, landlock_restrict_self=446,
    futex_waitv=449,
)  # fmt: skip
# aarch64 uses the generic table (include/uapi/asm-generic/unistd.h), which has no legacy calls (open,
# stat, fork, pipe, ...): the C library uses the *at and "2" forms there.
_AARCH64 = dict(
    eventfd2=19, epoll_create1=20, epoll_ctl=21, epoll_pwait=22, getcwd=17, dup=23, dup3=24, fcntl=25,
    ioctl=29, flock=32, mkdirat=34, unlinkat=35, symlinkat=36, linkat=37, renameat=38, statfs=43,
    fstatfs=44, truncate=45, ftruncate=46, fallocate=47, faccessat=48, chdir=49, fchdir=50, fchmod=52,
    fchmodat=53, openat=56, close=57, pipe2=59, getdents64=61, lseek=62, read=63, write=64, readv=65,
    writev=66, pread64=67, pwrite64=68, preadv=69, pwritev=70, sendfile=71, pselect6=72, ppoll=73,
    readlinkat=78, newfstatat=79, fstat=80, fsync=82, fdatasync=83, timerfd_create=85, timerfd_settime=86,
    timerfd_gettime=87, utimensat=88, capget=90, exit=93, exit_group=94, waitid=95, set_tid_address=96,
    unshare=97,
    futex=98, set_robust_list=99, get_robust_list=100, nanosleep=101, getitimer=102, setitimer=103,
    timer_create=107, timer_gettime=108, timer_getoverrun=109, timer_settime=110, timer_delete=111,
    clock_gettime=113, clock_getres=114, clock_nanosleep=115, ptrace=117, sched_setscheduler=119,
    sched_getscheduler=120,
    sched_getparam=121, sched_getaffinity=123, sched_yield=124, sched_get_priority_max=125,
    sched_get_priority_min=126, restart_syscall=128, kill=129, tkill=130, tgkill=131, sigaltstack=132,
    rt_sigsuspend=133, rt_sigaction=134, rt_sigprocmask=135, rt_sigpending=136, rt_sigtimedwait=137,
    rt_sigqueueinfo=138, rt_sigreturn=139, getresuid=148, getresgid=150, times=153, setpgid=154, getpgid=155,
    getsid=156, getgroups=158, uname=160,
    getrlimit=163, setrlimit=164, getrusage=165, umask=166, prctl=167, getcpu=168, gettimeofday=169,
    getpid=172, getppid=173, getuid=174, geteuid=175, getgid=176, getegid=177, gettid=178, sysinfo=179,
    socket=198, socketpair=199, bind=200, listen=201, accept=202, connect=203, sendto=206, sendmsg=211,
    brk=214, munmap=215, mremap=216, clone=220, execve=221, mmap=222, fadvise64=223, mprotect=226,
    msync=227, mincore=232, madvise=233, rt_tgsigqueueinfo=240, accept4=242, wait4=260, prlimit64=261,
    setns=268,
    process_vm_readv=270, process_vm_writev=271, kcmp=272, renameat2=276, getrandom=278,
    seccomp=277, memfd_create=279, execveat=281, membarrier=283, copy_file_range=285, preadv2=286, pwritev2=287,
    statx=291, rseq=293, pidfd_send_signal=424, pidfd_open=434, clone3=435, close_range=436,
    pidfd_getfd=438, faccessat2=439, epoll_pwait2=441, landlock_create_ruleset=444, landlock_add_rule=445,
    landlock_restrict_self=446, futex_waitv=449,
)  # fmt: skip
# machine -> (AUDIT_ARCH_* value, syscall table, whether x32 numbers exist on this ABI)
ARCHITECTURES = {"x86_64": (0xC000003E, _X86_64, True), "aarch64": (0xC00000B7, _AARCH64, False)}

# --- classic BPF -----------------------------------------------------------------------------------------

_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_X32_SYSCALL_BIT = 0x40000000
# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]. Both supported
# architectures are little-endian: an argument's low word comes first.
_NR, _ARCH = 0, 4
_ARG_LO, _ARG_HI = lambda i: 16 + 8 * i, lambda i: 20 + 8 * i  # noqa: E731
_SECCOMP_MODE_FILTER, _PR_SET_SECCOMP = 2, 22


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8)]
    _fields_ += [("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _resolve(prog: list[tuple], labels: dict[str, int]) -> list[tuple[int, int, int, int]]:
    """Turn label jumps into offsets (BPF jumps count instructions after the current one, forward only)."""
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        jt, jf = (labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf))
        assert 0 <= jt <= 255 and 0 <= jf <= 255, f"BPF jump out of range at instruction {i}"
        out.append((code, jt, jf, k))
    return out


def _head(machine: str) -> tuple[list[tuple], dict[str, int]]:
    """Instructions that refuse a foreign ABI (EPERM) and load the syscall number; the machine's table."""
    arch, table, has_x32 = ARCHITECTURES[machine]
    prog: list[tuple] = [(_LD_W_ABS, 0, 0, _ARCH), (_JEQ_K, 0, "eperm", arch), (_LD_W_ABS, 0, 0, _NR)]
    if has_x32:
        prog.append((_JGE_K, "eperm", 0, _X32_SYSCALL_BIT))
    return prog, table


def _tail(prog: list[tuple], labels: dict[str, int]) -> None:
    labels["allow"] = len(prog)
    prog.append((_RET_K, 0, 0, _RET_ALLOW))
    labels["eperm"] = len(prog)
    prog.append((_RET_K, 0, 0, _RET_ERRNO | errno.EPERM))


def assemble_server(machine: str) -> list[tuple[int, int, int, int]] | None:
    """The server filter for `machine` as (code, jt, jf, k) instructions; None for an unknown machine."""
    if machine not in ARCHITECTURES:
        return None
    prog, table = _head(machine)
    allowed = set(ALLOWED) | set(SERVER_ONLY) | set(SELF_ONLY) | {"prlimit64", "ioctl"}
    prog += [(_JEQ_K, "eperm", 0, nr) for nr in _numbers(table, DENIED)]
    prog += [(_JEQ_K, "allow", 0, nr) for nr in _numbers(table, allowed)]
    prog.append((_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS))
    labels: dict[str, int] = {}
    _tail(prog, labels)
    return _resolve(prog, labels)


def assemble_child(machine: str) -> list[tuple[int, int, int, int]] | None:
    """The child filter for `machine` (it runs after the server filter); None for an unknown machine."""
    if machine not in ARCHITECTURES:
        return None
    prog, table = _head(machine)
    prog += [(_JEQ_K, "eperm", 0, nr) for nr in _numbers(table, SERVER_ONLY)]
    prog += [(_JEQ_K, "self", 0, nr) for nr in _numbers(table, SELF_ONLY)]
    prog.append((_JEQ_K, "prlimit", 0, table["prlimit64"]))
    prog.append((_JEQ_K, "ioctl", 0, table["ioctl"]))
    prog.append((_RET_K, 0, 0, _RET_ALLOW))  # the server filter has already narrowed everything else
    labels = {"self": len(prog)}  # args[0] == 0, then allowed
    prog += _zero_arg(0, "allow")
    labels["prlimit"] = len(prog)  # args[0] == 0 and args[2] == 0
    prog += _zero_arg(0, "prlimit_new")
    labels["prlimit_new"] = len(prog)
    prog += _zero_arg(2, "allow")
    labels["ioctl"] = len(prog)  # args[1] (the request; the kernel reads 32 bits of it) in IOCTL_REQUESTS
    requests = sorted(IOCTL_REQUESTS.values())
    prog.append((_LD_W_ABS, 0, 0, _ARG_LO(1)))
    prog += [(_JEQ_K, "allow", 0 if r != requests[-1] else "eperm", r) for r in requests]
    _tail(prog, labels)
    return _resolve(prog, labels)


def _numbers(table: dict[str, int], names) -> list[int]:
    return sorted({table[n] for n in names if n in table})


def _zero_arg(index: int, then: str) -> list[tuple]:
    """Instructions: if args[index] == 0 (both words) jump to `then`, else to "eperm"."""
    return [
        (_LD_W_ABS, 0, 0, _ARG_LO(index)), (_JEQ_K, 0, "eperm", 0),
        (_LD_W_ABS, 0, 0, _ARG_HI(index)), (_JEQ_K, then, "eperm", 0),
    ]  # fmt: skip


def server_filter(machine: str | None = None) -> SockFprog | None:
    """The server filter as the kernel takes it; None for an unknown architecture."""
    return _fprog(assemble_server(machine or os.uname().machine))


def child_filter(machine: str | None = None) -> SockFprog | None:
    """The child filter as the kernel takes it (built once per server; each child installs it)."""
    return _fprog(assemble_child(machine or os.uname().machine))


def _fprog(prog: list[tuple] | None) -> SockFprog | None:
    if prog is None:
        return None
    array = (_SockFilter * len(prog))(*(_SockFilter(*ins) for ins in prog))
    fprog = SockFprog(len(prog), array)
    fprog._keep = array  # the struct points into the array: keep it alive with it
    return fprog


_libc = ctypes.CDLL(None, use_errno=True)


def install(fprog: SockFprog) -> None:
    """Load the filter into the calling process for good; threads and children it could start inherit it.
    Needs no_new_privs. Raises OSError if the kernel refuses."""
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP) failed: {os.strerror(err)}")
