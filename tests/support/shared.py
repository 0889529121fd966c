"""Where ../shared (torture messages, peer recipes, fax vectors) is: beside the checkout.

PBX_SHARED overrides it. Tests that need it fail loudly when it is missing; they never skip.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("PBX_SHARED", Path(__file__).resolve().parents[3] / "shared"))
TORTURE = SHARED / "sip-torture"
PEERS = SHARED / "peers"
