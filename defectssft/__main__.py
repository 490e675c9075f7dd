"""``python -m defectssft`` runs the CLI (the GUI starts training this way, in its own process)."""

import sys

from defectssft.cli import main

sys.exit(main())
