"""A bounded, ordered disk spool: messages wait here until their peer has acknowledged them.

One file per message, named by a sequence number that only grows (``000000000042.msg``), written atomically
(temporary name, then rename) so a crash leaves whole messages or none. The sender reads from the head in order
and removes a message only after its acknowledgement; a restart finds the files and delivers them first. When the
spool holds ``max_messages`` or ``max_bytes`` (or the disk refuses the write), a new message is refused (counted
in ``refused``): the messages already waiting keep their order, and the verdict log still has the refused verdict's
row.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path

SUFFIX = ".msg"


class Spool:
    def __init__(self, folder: str | Path, max_messages: int = 100_000, max_bytes: int = 256 << 20) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.refused = 0
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[int, int] = collections.OrderedDict()  # key -> size
        for p in sorted(self.folder.glob("*" + SUFFIX)):
            if p.stem.isdigit():
                self._items[int(p.stem)] = p.stat().st_size
        for p in self.folder.glob("*.tmp"):  # a write that a crash cut short: never acknowledged, never complete
            p.unlink(missing_ok=True)
        self._next = (next(reversed(self._items)) + 1) if self._items else 0
        self.bytes = sum(self._items.values())

    def _path(self, key: int) -> Path:
        return self.folder / f"{key:012d}{SUFFIX}"

    def put(self, payload: bytes) -> int | None:
        """Append a message; its key, or None when the spool is full (the message is refused and counted)."""
        with self._lock:
            if len(self._items) >= self.max_messages or self.bytes + len(payload) > self.max_bytes:
                self.refused += 1
                return None
            key = self._next
            tmp = self.folder / f"{key:012d}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(payload)
                os.replace(tmp, self._path(key))
            except OSError:  # disk full, read-only: refused like a full spool; the log still has the verdict
                tmp.unlink(missing_ok=True)
                self.refused += 1
                return None
            self._next += 1
            self._items[key] = len(payload)
            self.bytes += len(payload)
            return key

    def head(self, n: int, after: int = -1) -> list[tuple[int, bytes]]:
        """Up to ``n`` messages with keys above ``after``, oldest first."""
        with self._lock:
            keys = []
            for k in self._items:  # ascending; the keys at or below ``after`` are the few in flight
                if k > after:
                    keys.append(k)
                    if len(keys) == n:
                        break
        out = []
        for k in keys:
            try:
                out.append((k, self._path(k).read_bytes()))
            except FileNotFoundError:  # acknowledged meanwhile
                continue
        return out

    def remove(self, key: int) -> None:
        """The peer acknowledged the message: delete it."""
        with self._lock:
            size = self._items.pop(key, None)
            if size is None:
                return
            self.bytes -= size
        self._path(key).unlink(missing_ok=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
