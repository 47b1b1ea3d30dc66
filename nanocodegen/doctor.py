"""`nanocodegen doctor`: which sandbox layers this machine gives, and live proof that they hold.

    nanocodegen doctor              # exit status 0: every layer active and every probe contained

It starts a sandbox (with allow_weak_isolation, so that it can report on a machine where the benchmark
itself would refuse to run), prints the layers the kernel allowed (sandbox_os.REQUIRED_LAYERS), then
runs a few hostile probes without the lint, so that only the OS layer stands in their way, and says
whether each was contained.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from dataclasses import dataclass

from nanocodegen.sandbox import OK, Sandbox
from nanocodegen.sandbox_os import REQUIRED_LAYERS, idle_priority_reversible


@dataclass
class Probe:
    name: str
    code: str  # may use TARGET (a path outside the sandbox) and HOST_PID (the doctor's pid)

    def contained(self, status: str, output: str | None, target: str) -> bool:
        """Contained: the program did not finish normally with "open" (its mark of success), and left
        no file at the target."""
        return not (status == OK and output == "open") and not os.path.exists(target)


PROBES = [
    Probe("read a host file (/etc/passwd)", "open('/etc/passwd').read()\nresult = 'open'"),
    Probe("list the root directory", "import os\nos.listdir('/')\nresult = 'open'"),
    Probe("read another process's /proc", "open(f'/proc/{HOST_PID}/cmdline').read()\nresult = 'open'"),
    Probe("write outside the private dir", "open(TARGET, 'w').write('x')\nresult = 'open'"),
    Probe("open a socket", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
          "result = 'open' if libc.socket(2, 1, 0) >= 0 else f'socket() failed, errno {ctypes.get_errno()}'"),
    Probe("start a process", "import os\nif os.fork() == 0:\n    os._exit(0)\nresult = 'open'"),
    Probe("signal the sandbox server", "import os\nos.kill(os.getppid(), 0)\nresult = 'open'"),
    Probe("signal the host process", "import os\nos.kill(HOST_PID, 0)\nresult = 'open'"),
]


def diagnose(disable_layers: tuple[str, ...] = ()) -> dict:
    """Layers in force and probe results, as plain data."""
    with tempfile.TemporaryDirectory(prefix="ncg-doctor-") as outside:
        os.chmod(outside, 0o777)  # so that only the sandbox, not file permissions, can stop the write
        target = os.path.join(outside, "written-by-the-sandbox")
        with Sandbox(allow_weak_isolation=True, disable_layers=disable_layers) as box:
            isolation = box.isolation
            probes = []
            for probe in PROBES:
                prelude = f"TARGET = {target!r}\nHOST_PID = {os.getpid()}\n"
                run = box.run(prelude + probe.code, timeout_ms=2000)
                contained = probe.contained(run.status, run.output, target)
                why = run.error or (run.output if run.output != "open" else "")
                probes.append({"probe": probe.name, "contained": contained, "status": run.status, "why": why})
    return {
        "machine": f"Linux {platform.release()} {platform.machine()}, Python {platform.python_version()}, "
        f"{'root' if os.geteuid() == 0 else 'not root'}",
        "isolation": isolation,
        "probes": probes,
        "ok": isolation["complete"] and all(p["contained"] for p in probes),
        "prefork_idle": idle_priority_reversible(),  # not a layer: how bench --batch forks ahead (speed only)
    }


def format_report(report: dict) -> str:
    layers = report["isolation"]["layers"]
    lines = [f"Sandbox layers on this machine ({report['machine']}):"]
    lines.append(f"  {'source policy':22} active    lint in the sandbox's checker, before the program runs")
    for name, meaning in REQUIRED_LAYERS.items():
        lines.append(f"  {name:22} {'active ' if layers.get(name) else 'MISSING'}   {meaning}")
    abi = layers.get("landlock_abi", 0)
    extras = [f"Landlock ABI {abi}" if abi else "no Landlock",
              "seccomp filters" if layers.get("seccomp_filter") else "no seccomp filter",
              "TCP blocked by Landlock too" if abi >= 4 else "", "signals scoped by Landlock too" if abi >= 6 else "",
              "subreaper" if layers.get("subreaper") else ""]  # fmt: skip
    lines.append(f"  kernel: {', '.join(e for e in extras if e)}")
    if layers.get("disabled"):
        lines.append(f"  turned off for this check: {', '.join(layers['disabled'])}")
    lines.append("Hostile probes (no lint; only the OS layer can stop them):")
    for p in report["probes"]:
        why = f" ({p['why'][:70]})" if p["why"] else ""
        lines.append(f"  {p['probe']:32} {'contained' if p['contained'] else 'NOT CONTAINED'}{why}")
    if report["prefork_idle"]:
        lines.append("Speed: bench --batch forks its first children ahead at idle priority.")
    else:
        lines.append("Speed: bench --batch forks its first children ahead at normal priority (idle priority "
                     "needs CAP_SYS_NICE or an RLIMIT_NICE of 20, e.g. `<user> - nice 0` in "
                     "/etc/security/limits.conf); batched runs measured ~5 % slower so.")  # fmt: skip
    if report["ok"]:
        lines.append("Isolation: complete.")
    else:
        missing = ", ".join(report["isolation"]["missing"]) or "none"
        lines.append(f"Isolation: INCOMPLETE (missing layers: {missing}). The benchmark refuses to run untrusted "
                     "code here unless given --allow-weak-isolation, which its results record.")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    report = diagnose()
    print(format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
