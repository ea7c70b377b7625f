"""The one entry point of Whisper Appliance: ``python src/main.py [serve|transcribe|models|bench] ...``.

It is run as a script from the checkout (the package is not installed), so it puts ``src/`` on ``sys.path``
and hands over to ``whisper_appliance.cli``. No command means ``serve``. The eventlet loop is selected by
``server.serve`` itself when ``ASYNC_MODE=eventlet`` (concurrency.py: the standard library is not patched, so
nothing has to happen before other imports).
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

if __name__ == "__main__":
    from whisper_appliance.cli import main

    sys.exit(main())
