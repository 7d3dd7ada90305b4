"""How ``cosmos-etcd migrate`` shows its progress: a bar on a terminal (tqdm), else a structured
log line at most every few seconds (keys, the target's revision, how far it lags the source)."""
from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

from cosmos_etcd_shim.migrate.runner import Progress

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 5.0
REFRESH_SECONDS = 0.2


class ProgressDisplay:
    def __init__(self, stream=sys.stderr) -> None:
        self.bar = tqdm(total=0, unit="rev", file=stream, dynamic_ncols=True) if stream.isatty() else None
        self._shown = -float("inf")
        self._phase = ""

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        changed = progress.phase != self._phase
        self._phase = progress.phase
        if self.bar is not None:
            if changed or now - self._shown >= REFRESH_SECONDS:
                self.bar.total = max(progress.source_revision, progress.revision)
                self.bar.n = progress.revision
                self.bar.set_postfix(phase=progress.phase, keys=progress.keys, lag=progress.lag, refresh=False)
                self.bar.refresh()
                self._shown = now
        elif changed or now - self._shown >= LOG_EVERY_SECONDS:
            logger.info("migration progress", extra={"phase": progress.phase, "keys": progress.keys,
                                                     "revision": progress.revision,
                                                     "source_revision": progress.source_revision,
                                                     "lag": progress.lag})
            self._shown = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
