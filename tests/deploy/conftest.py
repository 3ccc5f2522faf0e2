"""deploy/ (the image and stack tooling) is not an installed package: import it from this checkout."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
