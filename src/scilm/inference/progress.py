"""A progress bar with proteins/s for the long-running inference commands (embed, predict, score-variants).

Drawn on stderr (stdout keeps the command's one-line summary), and only when stderr is a terminal:
a log file or a pipe gets no carriage-return noise. ``enabled=False`` (``--no-progress``) turns it
off everywhere.
"""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, enabled: bool = True, unit: str = "proteins",
                 stream: IO[str] | None = None, initial: int = 0) -> tqdm:
    """A tqdm bar counting ``unit`` up to ``total`` (the rate reads e.g. ``12.3 proteins/s``).

    Disabled (every call a no-op) when ``enabled`` is False or ``stream`` (default stderr) is not a
    TTY. ``initial``: work already done (a resumed run), not counted in the rate.
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    on = bool(enabled and isatty is not None and isatty())
    bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=stream, disable=not on, dynamic_ncols=True,
               smoothing=0.1, initial=initial, leave=True)
    return bar
