"""Request and answer bodies of the auth routes (strict: unknown fields are refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Email = Annotated[str, StringConstraints(min_length=3, max_length=254)]
# Policy (8-128 characters after NFC, common passwords) is checked by the route, to say why.
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Name = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
Code = Annotated[str, StringConstraints(min_length=6, max_length=32)]
Opaque = Annotated[str, StringConstraints(min_length=8, max_length=512)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterBody(Strict):
    email: Email
    password: Password
    name: Name = ""


class LoginBody(Strict):
    email: Email
    password: Password


class SecondFactorBody(Strict):
    mfa_token: Opaque
    code: Code | None = None
    recovery_code: Code | None = None


class RefreshBody(Strict):
    refresh_token: Opaque


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105  (the scheme name, not a secret)
    expires_in: int
    refresh_token: str
    session_id: str


class MfaRequired(BaseModel):
    mfa_required: bool = True
    mfa_token: str
    expires_in: int


class PasswordChangeBody(Strict):
    current_password: Password
    new_password: Password


class ResetRequestBody(Strict):
    email: Email


class ResetConfirmBody(Strict):
    token: Opaque
    new_password: Password


class TokenBody(Strict):
    token: Opaque


class ProfileBody(Strict):
    name: Name


class CodeBody(Strict):
    code: Code | None = None
    recovery_code: Code | None = None


class ApiKeyBody(Strict):
    name: Name = ""
    scopes: Annotated[
        list[Annotated[str, StringConstraints(max_length=40)]], Field(min_length=1, max_length=30)
    ]
    expires_at: datetime | None = None


class RotateKeyBody(Strict):
    overlap_s: Annotated[int, Field(ge=0, le=30 * 86_400)] = 86_400


class RoleBody(Strict):
    role: Annotated[str, StringConstraints(max_length=40)]


class DisableBody(Strict):
    reason: Name = ""
