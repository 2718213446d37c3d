from __future__ import annotations

import sys

from pneumo.cli import main

sys.exit(main())
