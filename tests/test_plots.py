from nanocodegen.plots import plot_attempts, plot_modes


def attempt(n, context, prefill, overflow=False):
    return {"attempt": n, "context_tokens": context, "prefill_tokens": prefill, "prefill_ms": 1.0 + context / 100,
            "decode_ms": 5.0, "outcome": "context_overflow" if overflow else "wrong_output"}


EPISODES = [{"attempts": [attempt(1, 20, 20), attempt(2, 55, 35), attempt(3, 90, 35), attempt(4, 120, 0, True)]},
            {"attempts": [attempt(1, 18, 18)]}]


def test_pngs_are_written(tmp_path):
    for path in (plot_attempts(EPISODES, "prefix", tmp_path / "a.png"),
                 plot_modes({"none": EPISODES, "attempt": EPISODES, "prefix": EPISODES}, tmp_path / "m.png"),
                 plot_attempts([], "none", tmp_path / "empty.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
