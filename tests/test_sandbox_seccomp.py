"""The seccomp filters as programs: run through a small classic-BPF interpreter, for both architectures
(aarch64's cannot be loaded on this machine, so this is where it is checked), then loaded for real."""

import errno
import struct

import pytest

from nanocodegen import sandbox_seccomp as sc

ALLOW, EPERM, ENOSYS = "allow", "EPERM", "ENOSYS"


def run_bpf(prog, nr: int, arch: int, args=(0, 0, 0, 0, 0, 0)) -> str:
    """The verdict of `prog` (as sandbox_seccomp.assemble_* give it) for one system call."""
    args = (tuple(args) + (0,) * 6)[:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)  # struct seccomp_data, little-endian
    acc, pc = 0, 0
    for _ in range(len(prog) + 1):  # no loops in classic BPF: each step moves forward
        code, jt, jf, k = prog[pc]
        if code == 0x20:  # ld w abs
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x35):  # jeq / jge k
            taken = acc == k if code == 0x15 else acc >= k
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:  # ret k
            if k == 0x7FFF0000:
                return ALLOW
            assert k & 0xFFFF0000 == 0x00050000, hex(k)
            return {errno.EPERM: EPERM, errno.ENOSYS: ENOSYS}[k & 0xFFFF]
        else:
            raise AssertionError(f"unexpected BPF instruction {code:#x}")
    raise AssertionError("the filter ran off its end")


def combined(machine: str, name: str, args=(0, 0, 0, 0, 0, 0), arch: int | None = None, nr: int | None = None):
    """What a child gets: both filters run, and the most restrictive verdict wins."""
    audit_arch, table, _ = sc.ARCHITECTURES[machine]
    nr = table[name] if nr is None else nr
    verdicts = [run_bpf(sc.assemble_server(machine), nr, arch or audit_arch, args),
                run_bpf(sc.assemble_child(machine), nr, arch or audit_arch, args)]  # fmt: skip
    for v in (EPERM, ENOSYS, ALLOW):
        if v in verdicts:
            return v


@pytest.mark.parametrize("machine", sorted(sc.ARCHITECTURES))
def test_what_a_program_may_call(machine):
    table = sc.ARCHITECTURES[machine][1]
    for name in ("read", "write", "openat", "mmap", "futex", "clock_nanosleep", "getrandom", "exit_group"):
        assert combined(machine, name) == ALLOW, name
    for name in ("clone", "clone3", "execve", "socket", "kill", "tgkill", "ptrace", "prctl", "setrlimit",
                 "unshare", "pidfd_open", "wait4", "fchmodat", "linkat", "utimensat", "landlock_restrict_self"):
        assert combined(machine, name) == EPERM, name
    # io_uring_setup, bpf, userfaultfd, keyctl, mount: in neither list, so "not implemented"
    for nr in (425, 321, 323, 250, 165) if machine == "x86_64" else (425, 280, 282, 219, 40):
        assert combined(machine, "", nr=nr) == ENOSYS, nr
    assert {"open", "fork", "stat"} & set(table) == ({"open", "fork", "stat"} if machine == "x86_64" else set())


@pytest.mark.parametrize("machine", sorted(sc.ARCHITECTURES))
def test_argument_checks(machine):
    assert combined(machine, "getpgid", (0,)) == ALLOW
    assert combined(machine, "getpgid", (1,)) == EPERM
    assert combined(machine, "getpgid", (1 << 32,)) == EPERM  # the high word counts
    assert combined(machine, "prlimit64", (0, 9, 0, 0x1000)) == ALLOW  # read my own limit
    assert combined(machine, "prlimit64", (0, 9, 0x1000, 0)) == EPERM  # set one
    assert combined(machine, "prlimit64", (77, 9, 0, 0x1000)) == EPERM  # read another process's
    assert combined(machine, "ioctl", (1, 0x5401)) == ALLOW  # TCGETS
    assert combined(machine, "ioctl", (1, 0x40086602)) == EPERM  # FS_IOC_SETFLAGS


@pytest.mark.parametrize("machine", sorted(sc.ARCHITECTURES))
def test_foreign_abis_are_refused(machine):
    assert combined(machine, "read", arch=0x40000003) == EPERM  # AUDIT_ARCH_I386
    if machine == "x86_64":
        assert combined(machine, "", nr=0x40000000 | 57) == EPERM  # x32 fork


@pytest.mark.parametrize("machine", sorted(sc.ARCHITECTURES))
def test_the_server_keeps_what_it_needs(machine):
    audit_arch, table, _ = sc.ARCHITECTURES[machine]
    server = sc.assemble_server(machine)
    for name in ("clone", "wait4", "kill", "prlimit64", "pidfd_open", "setpgid", "prctl", "landlock_add_rule"):
        assert run_bpf(server, table[name], audit_arch, (5, 0, 0x1000)) == ALLOW, name
    for name in ("execve", "socket", "ptrace"):
        assert run_bpf(server, table[name], audit_arch) == EPERM, name


def test_the_lists_name_real_system_calls():
    names = set(sc.ALLOWED) | set(sc.SERVER_ONLY) | set(sc.SELF_ONLY) | set(sc.DENIED) | {"prlimit64", "ioctl"}
    assert names <= set(sc._X86_64)  # aarch64 lacks the legacy calls (open, fork, ...), by design
    assert not set(sc.ALLOWED) & (set(sc.DENIED) | set(sc.SERVER_ONLY))
    assert sc.assemble_server("riscv64") is None and sc.server_filter("riscv64") is None


def test_the_filters_load_and_python_runs_under_them():
    import os

    if os.uname().machine not in sc.ARCHITECTURES:
        pytest.skip("no filter for this architecture")
    pid = os.fork()
    if pid == 0:  # a throwaway child: filters cannot be taken back
        try:
            import ctypes

            ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # no_new_privs
            sc.install(sc.server_filter())
            sc.install(sc.child_filter())
            ok = sum(range(10)) == 45 and os.getppid() > 0
            try:
                os.fork()
                ok = False
            except PermissionError:
                pass
            os._exit(0 if ok else 1)
        finally:
            os._exit(2)
    assert os.waitpid(pid, 0)[1] == 0
