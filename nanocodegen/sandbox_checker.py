"""The sandbox's checker: a long-lived, confined process that parses, lints and compiles programs (layer 1).

Why a process of its own: parsing, the lint and compiling in a fresh child cost ~640 us and ~160
copy-on-write faults for a HumanEval program, against ~100 us in a process that has done it before
(measured with an instrumented child; benchmarks/sandbox_cpu.py shows the totals). A check runs no
code of the program (no Python code runs while CPython parses and compiles, and the lint is ours), so
one process can check program after program without one run reaching the next: only what a program
*does* must start from a fresh fork, and that still happens in the run's own child.

The checker is forked like any run's child and set up the same way before its first check (Landlock to
an empty private directory, the seccomp filter, the same rlimits: memory, files, no processes), so a
parser or compiler bomb costs it its time or memory limit, never the server or the caller. A check that
raised anything but a SyntaxError (a bomb's RecursionError or MemoryError, say) ends the checker after
its reply, and so does the MAX_CHECKS-th check; a checker that overruns the program's time limit is
killed; the server starts a fresh one for the next request. Compiler warnings (SyntaxWarning) go to the
checker's stderr, which the server hands on to the run's.

Wire (sandbox_child's descriptors and names): a request on GO_FD is LEN + marshal {"code": str, "policy":
str} (the server's, trusted); the reply on RESULT_FD is one frame, RESULT_MAGIC + LEN + body, body =
b"status\\nrss_kib\\nmore\\n" + payload: the marshalled code object for status OK, else the feedback text
(syntax_error or unsafe), UTF-8; `more` is 0 when the checker exits after this reply, else 1. The
server never unmarshals a payload; the run's child does.

Standard library only, like the rest of the server's side.
"""

from __future__ import annotations

import _ast
import marshal
import resource
import sys

if __package__:  # nanocodegen.sandbox_checker, imported by the tests
    from nanocodegen import sandbox_child as child
    from nanocodegen import sandbox_lint, sandbox_os
else:  # imported by the server script, which has put this directory on sys.path for the moment
    import sandbox_child as child
    import sandbox_lint
    import sandbox_os

MAX_CHECKS = 4096  # then a fresh checker: whatever a long life accumulates (a fragmented heap) stays bounded
NAME = b"ncg-checker"  # its process name (ps, top; benchmarks/sandbox_cpu.py finds it by this)


def check_source(code: str, policy: str) -> tuple[str, bytes, bool]:
    """(status, payload, clean): OK and the marshalled code object, or SYNTAX_ERROR / UNSAFE and the
    feedback text. `clean` is False when parsing or compiling raised anything but a SyntaxError (a
    parser or compiler bomb): the process may be left in a state no later check should start from."""
    try:
        if policy:
            tree = compile(code, child.FILENAME, "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
            violation = sandbox_lint.check(code, tree, policy, child.AVAILABLE_MODULES)
            del tree
            if violation:
                return child.UNSAFE, violation.encode("utf-8", "surrogatepass"), True
        # From the source again, not from the tree: converting a tree back costs more than parsing anew.
        program = marshal.dumps(compile(code, child.FILENAME, "exec", dont_inherit=True))
    except SyntaxError as e:  # IndentationError and TabError too
        return child.SYNTAX_ERROR, child.syntax_error_text(e).encode("utf-8", "surrogatepass"), True
    except Exception as e:  # whatever else a bomb makes the parser, the compiler or marshal raise
        return child.SYNTAX_ERROR, child.syntax_error_text(e).encode("utf-8", "surrogatepass"), False
    return child.OK, program, True


def serve_checks() -> None:
    """The checker's loop, in a child that is set up and has said it is ready; returns when it should
    exit (EOF on GO_FD, an unclean check, MAX_CHECKS)."""
    stderr = sys.stderr
    for n in range(1, MAX_CHECKS + 1):
        head = sandbox_os.read_exact(child.GO_FD, child.LEN.size)
        if head is None:
            return  # the server closed the pipe
        request = marshal.loads(sandbox_os.read_exact(child.GO_FD, child.LEN.unpack(head)[0]))
        status, payload, clean = check_source(request["code"], request["policy"])
        try:
            stderr.flush()  # compiler warnings, for the server to hand on before it reads the reply
        except Exception:
            pass  # past the output cap: the server sees the size
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        more = clean and n < MAX_CHECKS
        body = f"{status}\n{rss_kib}\n{int(more)}\n".encode() + payload
        sandbox_os.write_all(child.RESULT_FD, child.RESULT_MAGIC + child.LEN.pack(len(body)) + body)
        if not more:
            return


def parse_reply(frame: bytes) -> tuple[str, int, bool, bytes] | None:
    """(status, peak RSS in KiB, whether it takes another check, payload) of one complete frame from the
    checker; None if malformed."""
    magic, head = child.RESULT_MAGIC, len(child.RESULT_MAGIC) + child.LEN.size
    if len(frame) < head or not frame.startswith(magic):
        return None
    if len(frame) != head + child.LEN.unpack_from(frame, len(magic))[0]:
        return None
    parts = frame[head:].split(b"\n", 3)
    if len(parts) != 4 or parts[2] not in (b"0", b"1"):
        return None
    try:
        status, rss, more, payload = parts[0].decode(), int(parts[1]), parts[2] == b"1", parts[3]
    except ValueError:
        return None
    return (status, rss, more, payload) if status in (child.OK, child.SYNTAX_ERROR, child.UNSAFE) else None
