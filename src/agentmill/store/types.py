"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Float, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

NANO = Decimal("0.000000001")


class Money(TypeDecorator[Decimal]):
    """USD as an exact Decimal, stored as integer nano-dollars (sums stay exact on every engine)."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int((Decimal(value) / NANO).to_integral_value(ROUND_HALF_EVEN))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else (Decimal(int(value)) * NANO).normalize()


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes: ``timestamptz`` on PostgreSQL, epoch seconds on SQLite (fast, sortable)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Float())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:  # a naive time (say, from a query string) is taken as UTC
            value = value.replace(tzinfo=UTC)
        if dialect.name == "sqlite":
            return value.timestamp()
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, UTC)
        assert isinstance(value, datetime)
        return value.astimezone(UTC)


JsonValue = JSON().with_variant(JSONB(), "postgresql")
