"""The zygote's Forker, run here with os.fork (as a server without clone(CLONE_PARENT) uses it), and
clone_parent. The zygote inside a real server is tested through Sandbox in test_sandbox.py."""

import marshal
import os
import time

import pytest

from nanocodegen import sandbox_os
from nanocodegen.sandbox import Limits
from nanocodegen.sandbox_child import LEN, RESULT_MAGIC
from nanocodegen.sandbox_zygote import NEW, Forker


def test_a_forker_makes_a_child_that_runs_one_job_in_its_run_directory(tmp_path):
    limits = {**Limits().__dict__, "memory_bytes": 1 << 30}
    forker = Forker(os.fork, str(tmp_path), limits, os.getpid(), landlock_abi=0)
    pid, (ready, go, out, err, res) = forker.make(7, NEW)
    try:
        assert os.read(ready, 1) == b"R"
        program = marshal.dumps(compile("import os\nresult = os.getcwd()", "<code>", "exec"))
        job = marshal.dumps({"program": program, "test": None, "entry_point": ""})
        sandbox_os.write_all(go, LEN.pack(len(job)) + job)
        report = b""
        while chunk := os.read(res, 65536):
            report += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (ready, go, out, err, res):
            os.close(fd)
        forker.close()
    assert report.startswith(RESULT_MAGIC) and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    body = report[len(RESULT_MAGIC) + LEN.size :]
    assert body.split(b"\n")[0] == b"ok" and body.endswith(str(tmp_path / "run7").encode())
    assert (tmp_path / "run7").is_dir() and not forker.rulesets


def test_clone_parent_makes_a_sibling_not_a_child():
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # the zygote's place: its clone becomes a child of the process above it
        try:
            pid = sandbox_os.clone_parent()
            if pid == 0:
                os._exit(5)
            os.write(w, pid.to_bytes(4, "little"))
        finally:
            os._exit(0)
    os.close(w)
    sibling = int.from_bytes(os.read(r, 4), "little")
    os.close(r)
    assert os.waitpid(middle, 0)[1] == 0
    _, status = os.waitpid(sibling, 0)  # ours to reap
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 5


def _run_jobs(server, n: int) -> list[str]:
    """Each job checked by the server's checker, then run in a child of its own, as Server.serve does."""
    outputs = []
    try:
        for i in range(n):
            job = {"code": f"result = {i}", "policy": "", "check_only": False, "test": None, "entry_point": ""}
            request, start = {"job": job, "timeout_ms": 2000}, time.perf_counter()
            checked = server.check(request, start)
            child = server.ready_child(server.spawn())
            reply = server.run(child, request, checked, start, 1.0)  # done within 1 s: no spare forked
            assert not server.spares and reply["status"] == "ok", reply
            server.finish(child)
            outputs.append(reply["output"])
    finally:
        server.retire_checker()
    return outputs


@pytest.mark.parametrize("use_zygote", [True, False])
def test_a_server_runs_jobs_with_its_zygote_or_without(tmp_path, use_zygote):
    from nanocodegen import sandbox_server

    server = sandbox_server.Server(str(tmp_path), dict(Limits().__dict__), {"landlock_abi": 0})
    server.use_zygote = use_zygote
    try:
        assert _run_jobs(server, 3) == ["0", "1", "2"]
        assert (server.zygote is not None, server.forker is not None) == (use_zygote, not use_zygote)
    finally:
        server.stop_zygote()


def test_a_server_forks_children_itself_where_the_zygotes_way_is_refused(tmp_path, monkeypatch):
    from nanocodegen import sandbox_server

    def refused(pidfd, fd):  # as under a ptrace policy that forbids it (Yama's scope 2), or before Linux 5.6
        raise PermissionError(1, "pidfd_getfd failed: Operation not permitted")

    monkeypatch.setattr(sandbox_server.sandbox_os, "pidfd_getfd", refused)
    server = sandbox_server.Server(str(tmp_path), dict(Limits().__dict__), {"landlock_abi": 0})
    try:
        assert _run_jobs(server, 2) == ["0", "1"]
        assert server.zygote is None and server.forker is not None and not server.use_zygote
    finally:
        server.stop_zygote()
