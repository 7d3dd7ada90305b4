"""etcd's simple tokens: random strings handed out by Authenticate, each naming one user.

As etcd's ``simple_token.go``: a token is 16 random letters, a dot and a number; it lives in this
server's memory only, for ``ttl`` seconds after it was issued or last used (every use renews it);
expired tokens are dropped once a second. Changing a user's password or deleting the user drops
the user's tokens; disabling auth drops them all. Tokens are not stored: after a restart (or on
another replica) a client gets "invalid auth token", and etcd's clients then authenticate again.
"""
from __future__ import annotations

import itertools
import secrets
import string
import time
from collections.abc import Callable

TOKEN_LETTERS = string.ascii_letters
TOKEN_PREFIX_LENGTH = 16


class SimpleTokens:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._users: dict[str, str] = {}  # token -> user name
        self._deadlines: dict[str, float] = {}
        self._numbers = itertools.count(1)

    def __len__(self) -> int:
        return len(self._users)

    def issue(self, user: str) -> str:
        prefix = "".join(secrets.choice(TOKEN_LETTERS) for _ in range(TOKEN_PREFIX_LENGTH))
        token = f"{prefix}.{next(self._numbers)}"
        self._users[token] = user
        self._deadlines[token] = self.clock() + self.ttl
        return token

    def user_of(self, token: str) -> str | None:
        """The token's user, renewing the token; None for an unknown or expired token."""
        user = self._users.get(token)
        if user is None:
            return None
        now = self.clock()
        if self._deadlines[token] < now:
            self._drop(token)
            return None
        self._deadlines[token] = now + self.ttl
        return user

    def invalidate_user(self, user: str) -> None:
        for token in [t for t, name in self._users.items() if name == user]:
            self._drop(token)

    def clear(self) -> None:
        self._users.clear()
        self._deadlines.clear()

    def expire(self) -> None:
        now = self.clock()
        for token in [t for t, deadline in self._deadlines.items() if deadline < now]:
            self._drop(token)

    def _drop(self, token: str) -> None:
        self._users.pop(token, None)
        self._deadlines.pop(token, None)
