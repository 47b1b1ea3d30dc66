"""The zygote's Forker, run here with os.fork (as a server without clone(CLONE_PARENT) uses it), and
clone_parent. The zygote inside a real server is tested through Sandbox in test_sandbox.py."""

import marshal
import os

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
        job = marshal.dumps({"code": "import os\nresult = os.getcwd()", "policy": "", "check_only": False,
                             "test": None, "entry_point": ""})  # fmt: skip
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
