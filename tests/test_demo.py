import subprocess
import sys


def test_demo_replays_the_sketch_with_the_real_pieces():
    proc = subprocess.run([sys.executable, "-m", "nanocodegen.demo"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Training forward pass: logits=torch.Size([4," in out
    assert "Attempt 4:" in out  # the sketch's five timed attempts
    assert "Code: 'result = sum([1, 2, 3, 4, 5])' → OK=True, output='15'" in out
    assert "Code: 'import os; result = os.getcwd()' → OK=False" in out
    assert "'Return the sum of [1, 2, 3, 4, 5]': solved" in out
