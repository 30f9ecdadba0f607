import sys
from pathlib import Path

# The unit tests share small in-memory fakes (tests/unit/fakes.py).
sys.path.insert(0, str(Path(__file__).parent))
