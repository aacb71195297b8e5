"""A project's bearer tokens in the store (only their digests): what
:mod:`stagelr_service.tokens` reads and writes."""

from __future__ import annotations

from sqlalchemy import (
    select,
    update,
)

from .codec import (
    token_record,
)
from .live import LiveQueries
from .models import (
    ProjectRow,
    TokenRow,
)
from .records import (
    TokenRecord,
)

__all__ = ["TokenQueries"]


class TokenQueries(LiveQueries):
    """Tokens' reads and writes of one transaction."""

    # ------------------------------------------------------------------ tokens

    def create_token(self, project: str, name: str, prefix: str, token_hash: str) -> TokenRecord:
        """Store a token's digest for ``project`` (created if new)."""
        owner = self.get_or_create_project(project)
        row = TokenRow(
            project_id=owner.id,
            name=name,
            prefix=prefix,
            token_hash=token_hash,
            created_at=self._now(),
            last_used_at=None,
            revoked_at=None,
        )
        self._s.add(row)
        self._s.flush()
        return token_record(row, owner.name)

    def token_by_hash(self, token_hash: str) -> tuple[TokenRecord, str] | None:
        """The live (not revoked) token with this digest, and the stored digest."""
        found = self._s.execute(
            select(TokenRow, ProjectRow.name)
            .join(ProjectRow, TokenRow.project_id == ProjectRow.id)
            .where(TokenRow.token_hash == token_hash, TokenRow.revoked_at.is_(None))
        ).first()
        if found is None:
            return None
        row, project = found
        return token_record(row, project), row.token_hash

    def mark_token_used(self, token_id: int) -> None:
        self._s.execute(
            update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=self._now())
        )

    def list_tokens(self, project: str | None = None) -> list[TokenRecord]:
        query = (
            select(TokenRow, ProjectRow.name)
            .join(ProjectRow, TokenRow.project_id == ProjectRow.id)
            .order_by(TokenRow.id)
        )
        if project is not None:
            query = query.where(ProjectRow.name == project)
        return [token_record(row, name) for row, name in self._s.execute(query).all()]

    def revoke_token(self, token_id: int) -> TokenRecord | None:
        """Revoke a token (idempotent); None if there is no such token."""
        found = self._s.execute(
            select(TokenRow, ProjectRow.name)
            .join(ProjectRow, TokenRow.project_id == ProjectRow.id)
            .where(TokenRow.id == token_id)
        ).first()
        if found is None:
            return None
        row, project = found
        if row.revoked_at is None:
            row.revoked_at = self._now()
            self._s.flush()
        return token_record(row, project)
