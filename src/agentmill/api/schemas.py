"""API models, named by purpose: ``XCreate`` (input), ``XUpdate``, ``XPublic`` (output)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from agentmill.domain.permissions import Role


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class UserCreate(_In):
    email: EmailStr
    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=8, max_length=256)


class LoginRequest(_In):
    email: EmailStr
    password: str = Field(min_length=1, max_length=256)


class UserPublic(BaseModel):
    id: str
    email: str
    name: str
    created_at: datetime


class TokenPublic(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime


class WorkspaceCreate(_In):
    name: str = Field(min_length=1, max_length=200)


class WorkspaceUpdate(_In):
    name: str = Field(min_length=1, max_length=200)


class WorkspacePublic(BaseModel):
    id: str
    name: str
    created_at: datetime
    role: Role = Field(description="Your role in this workspace.")


class MemberCreate(_In):
    email: EmailStr
    role: Role = Role.MEMBER


class MemberUpdate(_In):
    role: Role


class MemberPublic(BaseModel):
    user_id: str
    email: str
    name: str
    role: Role
    joined_at: datetime


class ApiKeyCreate(_In):
    workspace_id: str
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.MEMBER


class ApiKeyPublic(BaseModel):
    id: str
    workspace_id: str
    name: str
    prefix: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The secret key. It is shown this once; store it now.")


class HealthPublic(BaseModel):
    status: str
    database: str
