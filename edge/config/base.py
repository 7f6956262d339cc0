"""What every configuration file shares: strict pydantic models, secret references, and a TOML parser
whose errors name the file, the line and the key.

Every model forbids unknown keys, so a typo in a field name is an error rather than a silently ignored
setting. Secrets never appear in a file: fields hold a *reference* (`env:NAME`, `file:/path`,
`credential:NAME`) resolved at use time; `check_secrets_resolve` tries each once at start, so a service
fails at start rather than at the first recorder. A file says which role it configures by its one
required top-level table (`[station]`, `[central]`); given to the other role's command, it is refused in
one sentence naming the command that takes it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, ValidationError
from pydantic_core import CoreSchema, core_schema

from edge.durable.files import SmallFileError, read_small_file

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# An http(s) URL with a host and no white space, or nothing (the feature is off).
HTTP_URL_OR_EMPTY = r"^(https?://[^\s/]+(/[^\s]*)?)?$"
SECRET_REF = re.compile(r"^(env|file|credential):(.+)$")
# A password or token is short; a secret file far larger than this is not one.
MAX_SECRET_BYTES = 64 * 1024


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
            # A FIFO or device planted at the path must not hang the agent at start.
            data = read_small_file(path, MAX_SECRET_BYTES, expected="a secret file")
            return data.decode("utf-8").strip("\r\n")
        except SmallFileError as exc:
            why = str(exc).removeprefix(f"{path}: ")
            raise ConfigError(f"secret reference {kind}:{target}: {why}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"secret reference {kind}:{target}: {path}: not UTF-8 text") from None


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
    if "password" in loc or "secret" in loc or error["type"] == "url_userinfo":
        shown = ""  # never echo anything that might be a secret (a URL's user:password@ included)
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


def parse_toml_model(text: str, source: str, model: type[ModelT], *, role: str | None = None) -> ModelT:
    """Validate TOML text against a config model; `ConfigError` names `source`, the line and the key of
    every problem. Shared by the station's and the central's configuration. With `role`, a file that
    configures another role is refused with one sentence naming the command that takes it, instead of
    a list of every key the two models disagree on."""
    raw = parse_toml_document(text, source)
    if role is not None and (mismatch := role_mismatch(raw, source, role)) is not None:
        raise ConfigError(mismatch)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        details = "\n  ".join(_describe(e, text) for e in exc.errors())
        raise ConfigError(f"{source}: {exc.error_count()} problem(s):\n  {details}") from None


# A configuration file is a few KiB; anything far larger is not one (and is not read into memory).
MAX_CONFIG_BYTES = 1 << 20


def read_config_text(path: Path) -> str:
    """The text of a configuration file; `ConfigError` names the file and what is wrong with it.

    Only a regular file is read (a FIFO or device planted at the path cannot hang or flood the caller),
    and at most `MAX_CONFIG_BYTES`.
    """
    try:
        data = read_small_file(path, MAX_CONFIG_BYTES, expected="a TOML file")
    except SmallFileError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc


# Which role a file configures is told by its one required top-level table.
ROLE_TABLES: dict[str, tuple[str, str, str]] = {
    # table: (what it configures, the command that checks it, the command that runs it)
    "station": ("a docking station or room PC", "edge check-config FILE", "edge run --config FILE"),
    "central": ("the central receiver", "edge central check-config --config FILE",
                "edge central --config FILE"),
}


def config_role(raw: dict[str, Any]) -> str | None:
    """The role a parsed TOML document configures ("station", "central"), or None when it names none
    (or more than one) of them."""
    roles = [table for table in ROLE_TABLES if isinstance(raw.get(table), dict)]
    return roles[0] if len(roles) == 1 else None


def role_mismatch(raw: dict[str, Any], source: str, expected: str) -> str | None:
    """Why a document is not a configuration of role `expected` (naming the command that does take
    it), or None when it is one or names no role at all (then validation reports the missing table)."""
    found = config_role(raw)
    if found is None or found == expected:
        return None
    what, check, run = ROLE_TABLES[found]
    wanted = ROLE_TABLES[expected][0]
    return (
        f"{source}: this file configures {what} ([{found}]), not {wanted}; check it with "
        f"`{check.replace('FILE', source)}` and run it with `{run.replace('FILE', source)}`"
    )


def parse_toml_document(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; `ConfigError` names `source` and the line of a syntax error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc


def secret_references(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, SecretRef]]:
    """Every secret reference in a validated configuration, with the key path that holds it."""
    for name in type(model).model_fields:
        yield from _references(getattr(model, name), f"{prefix}{name}")


def _references(value: object, where: str) -> Iterator[tuple[str, SecretRef]]:
    if isinstance(value, SecretRef):
        yield where, value
    elif isinstance(value, BaseModel):
        yield from secret_references(value, f"{where}.")
    elif isinstance(value, list | tuple):
        for index, element in enumerate(value):
            yield from _references(element, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, element in value.items():
            yield from _references(element, f"{where}.{key}")


def check_secrets_resolve(model: BaseModel, source: str, env: dict[str, str] | None = None) -> None:
    """Resolve every secret reference once, at start, and forget the values; `ConfigError` names each
    key whose reference cannot be resolved (never a value), so a service fails at start, not at the
    first recorder."""
    problems: list[str] = []
    for where, ref in secret_references(model):
        try:
            ref.resolve(env)
        except ConfigError as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        details = "\n  ".join(problems)
        raise ConfigError(f"{source}: {len(problems)} secret reference(s) cannot be resolved:\n  {details}")
