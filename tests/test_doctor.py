"""`nanocodegen doctor`: the layers and live probes, on this machine and with layers turned off."""

from nanocodegen.doctor import PROBES, diagnose, format_report


def test_every_layer_is_active_and_every_probe_contained():
    report = diagnose()
    assert report["ok"], format_report(report)
    assert len(report["probes"]) == len(PROBES) and all(p["contained"] for p in report["probes"])
    text = format_report(report)
    assert "Isolation: complete." in text and "MISSING" not in text


def test_without_the_os_layer_the_probes_get_through_and_the_report_says_so():
    report = diagnose(disable_layers=("landlock", "seccomp"))
    assert not report["ok"] and "fs_read_confined" in report["isolation"]["missing"]
    escaped = {p["probe"] for p in report["probes"] if not p["contained"]}
    assert {"read a host file (/etc/passwd)", "open a socket", "signal the host process"} <= escaped
    text = format_report(report)
    assert "INCOMPLETE" in text and "NOT CONTAINED" in text and "--allow-weak-isolation" in text


def test_the_report_says_how_batched_runs_fork_ahead():
    report = diagnose()
    assert "forks its first children ahead at idle priority" in format_report({**report, "prefork_idle": True})
    text = format_report({**report, "prefork_idle": False})
    assert "at normal priority" in text and "CAP_SYS_NICE" in text
