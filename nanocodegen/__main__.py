"""`python -m nanocodegen ...` is the `nanocodegen` command."""

import sys

from nanocodegen.cli import main

sys.exit(main())
