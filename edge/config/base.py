"""What every configuration file shares: strict pydantic models, secret references, and a TOML parser
whose errors name the file, the line and the key.

Every model forbids unknown keys, so a typo in a field name is an error rather than a silently ignored
setting. Secrets never appear in a file: fields hold a *reference* (`env:NAME`, `file:/path`,
`credential:NAME`) resolved at use time.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, ValidationError
from pydantic_core import CoreSchema, core_schema

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SECRET_REF = re.compile(r"^(env|file|credential):(.+)$")


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid; the message says where and why."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


ModelT = TypeVar("ModelT", bound=BaseModel)


class SecretRef(str):
    """A reference to a secret, never the secret itself. `repr` shows only the reference."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(_secret_ref, core_schema.str_schema())

    def resolve(self, env: dict[str, str] | None = None) -> str:
        environ = os.environ if env is None else env
        match = SECRET_REF.match(self)
        if match is None:  # validated on load; kept for direct construction
            raise ConfigError(f"secret reference {self!s} must be env:NAME, file:PATH or credential:NAME")
        kind, target = match.groups()
        if kind == "env":
            if target not in environ:
                raise ConfigError(f"secret reference env:{target}: environment variable is not set")
            return environ[target]
        if kind == "credential":
            directory = environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    f"secret reference credential:{target}: CREDENTIALS_DIRECTORY is not set "
                    "(use systemd LoadCredential= or another reference kind)"
                )
            path = Path(directory) / target
        else:
            path = Path(target)
        try:
            return path.read_text(encoding="utf-8").strip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"secret reference {kind}:{target}: cannot read {path}: {exc.strerror}"
            ) from exc


def _secret_ref(value: object) -> SecretRef:
    if not isinstance(value, str) or SECRET_REF.match(value) is None:
        raise ValueError(
            "expected a secret reference 'env:NAME', 'file:/path' or 'credential:NAME', not a literal secret"
        )
    return SecretRef(value)


def _describe(error: Any, text: str | None) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key (not a setting; check the spelling)"
    elif error["type"] == "missing":
        message = "required key is missing"
    line = _line_of(text, error["loc"]) if text else None
    where = f"line {line}: " if line else ""
    got = error.get("input")
    shown = (
        "" if error["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    )
    if "password" in loc:
        shown = ""  # never echo anything that might be a secret
    return f"{where}{loc}: {message}{shown}"


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of the last string key in `loc`, for humans editing the file."""
    keys = [p for p in loc if isinstance(p, str)]
    if not keys:
        return None
    pattern = re.compile(rf"^\s*\"?{re.escape(keys[-1])}\"?\s*=|^\s*\[+\s*{re.escape('.'.join(keys))}\s*\]+")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.search(line):
            return number
    return None


def parse_toml_model(text: str, source: str, model: type[ModelT]) -> ModelT:
    """Validate TOML text against a config model; `ConfigError` names `source`, the line and the key of
    every problem. Shared by the station's and the central's configuration."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        details = "\n  ".join(_describe(e, text) for e in exc.errors())
        raise ConfigError(f"{source}: {exc.error_count()} problem(s):\n  {details}") from None


def read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
