"""Who is asking: the ``Principal`` record and the one table of what each kind of caller may do.

A principal is resolved once per HTTP request or Socket.IO connection (``http.py``) and handed to the services,
which filter what they read and change by it. Nothing here imports Flask.

* Roles: ``admin`` and ``user`` (accounts in the database), and ``guest`` for anonymous callers, who exist only
  while ``REQUIRE_AUTH=false``. Guests share one history: the entries with no owner.
* Scopes of a credential: ``transcribe`` (uploads, jobs, live dictation, the OpenAI API, reading one's own
  history) and ``admin`` (everything the account may do; for an admin account that is everything). A login
  session and a token from ``POST /api/auth/token`` carry both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ROLES = ("admin", "user")
SCOPES = ("transcribe", "admin")
TRANSCRIBE, ADMIN = SCOPES
GUEST_ROLE = "guest"
GUEST_NAME = "guest"  # also the name that filters guest entries in admin views (so no account may take it)
RESERVED_NAMES = frozenset({GUEST_NAME, "system", "anonymous"})
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True)
class Principal:
    """An authenticated account (``user_id`` set) or the anonymous guest (``user_id`` None).

    ``credential_id`` names the session or token that authenticated it, so that revoking it can end the
    connections it opened; None for guests and internal callers.
    """

    user_id: int | None
    username: str
    role: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    credential_id: str | None = None

    @property
    def is_guest(self) -> bool:
        return self.role == GUEST_ROLE

    @property
    def full_access(self) -> bool:
        """Everything this account may do (a login, or a token with the ``admin`` scope)."""
        return ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        """An admin account acting with full access: sees and manages everything."""
        return self.role == "admin" and self.full_access

    @property
    def can_transcribe(self) -> bool:
        return TRANSCRIBE in self.scopes or self.full_access

    @property
    def can_edit_history(self) -> bool:
        """Correct texts and cancel jobs: full access, or a guest (guests share their history, as before accounts)."""
        return self.full_access or self.is_guest

    @property
    def can_delete_history(self) -> bool:
        return self.full_access and not self.is_guest

    @property
    def can_manage_account(self) -> bool:
        """Own password and personal tokens."""
        return self.full_access and not self.is_guest

    def sees(self, owner_id: int | None) -> bool:
        """Whether a record owned by ``owner_id`` (None: the guests') is visible to this principal."""
        return self.is_admin or owner_id == self.user_id

    def to_dict(self) -> dict[str, object]:
        return {"id": self.user_id, "username": self.username, "role": self.role, "scopes": sorted(self.scopes),
                "authenticated": not self.is_guest}


GUEST = Principal(user_id=None, username=GUEST_NAME, role=GUEST_ROLE, scopes=frozenset({TRANSCRIBE}))
# Internal work that acts for everyone (start-up, retention, the job runner reading its own records).
SYSTEM = Principal(user_id=None, username="system", role="admin", scopes=frozenset(SCOPES))


@dataclass(frozen=True)
class OwnerFilter:
    """An admin's "only this owner's records" (``user_id`` None: the guests' records)."""

    user_id: int | None
