"""nanocodegen: the Nano-CodeGen Agent Benchmark.

A small transformer reads a task and writes Python; the code is checked, run in a sandbox and verified;
on failure the error is appended to the prompt and the model tries again. See README.md.
"""

__version__ = "0.1.0"
