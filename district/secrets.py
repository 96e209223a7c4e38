"""Secrets by reference: an inventory names where a secret lives (`{env: NAME}`, `{file: PATH}`), never the
secret, and the value is read only when a probe needs it, so a rotated secret is picked up on the next poll."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EnvSecret(_Model):
    """A secret read from an environment variable when it is needed."""

    env: Annotated[str, Field(pattern=ENV_RE.pattern, description="Name of the environment variable.")]


# The only variables a {file: PATH} may name: directories that systemd (and the login) hand a service. Any
# other variable may hold a secret itself, and a path built from a secret would be opened, then quoted in an
# error ("cannot read secret file $X (the value)"): one that reaches a log, the status page and `check --json`.
PATH_VARIABLES = (
    "CREDENTIALS_DIRECTORY",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "CONFIGURATION_DIRECTORY",
    "CACHE_DIRECTORY",
    "LOGS_DIRECTORY",
    "HOME",
)
_VAR_RE = re.compile(r"\$(?:\{([^}]*)\}|(\w+))", re.ASCII)  # what os.path.expandvars expands, exactly


def check_file_path(path: str) -> str:
    """Refuse a {file: PATH} naming a variable outside PATH_VARIABLES; the message names it, never its value."""
    for m in _VAR_RE.finditer(path):
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if name not in PATH_VARIABLES:
            hint = f" (for a secret held in ${name}, write {{env: {name}}})" if ENV_RE.match(name) else ""
            raise ValueError(
                f"{{file: PATH}} may name only the directory variables {', '.join('$' + v for v in PATH_VARIABLES)}, "
                f"not ${name}{hint}"
            )
    return path


class FileSecret(_Model):
    """A secret read from a file (first line, stripped) when it is needed, e.g. a systemd credential."""

    file: Annotated[
        str,
        Field(
            min_length=1,
            description="Path of a file whose first line is the secret; ~ and the directory variables "
            "$CREDENTIALS_DIRECTORY, $STATE_DIRECTORY, $RUNTIME_DIRECTORY, $CONFIGURATION_DIRECTORY, "
            "$CACHE_DIRECTORY, $LOGS_DIRECTORY and $HOME (no other) are expanded when it is read, e.g. "
            "${CREDENTIALS_DIRECTORY}/snmp-community.",
        ),
        AfterValidator(check_file_path),
    ]


class SecretError(Exception):
    """A secret reference that cannot be resolved; the message names the reference, never a value."""


def resolve_secret(ref: EnvSecret | FileSecret) -> str:
    """The secret's value, read now (so a rotated secret is picked up on the next poll)."""
    if isinstance(ref, EnvSecret):
        value = os.environ.get(ref.env)
        if not value:
            raise SecretError(f"environment variable {ref.env} is not set (or is empty)")
        return value
    check_file_path(ref.file)  # a FileSecret built with model_construct skips validation; never open a secret
    unset = [n for n in _names(ref.file) if not os.environ.get(n)]
    if unset:
        raise SecretError(f"secret file {ref.file}: ${unset[0]} is not set")
    # Only PATH_VARIABLES can be expanded here (directories, not secrets), so the expanded path may be shown.
    path = os.path.expanduser(os.path.expandvars(ref.file))
    where = ref.file if path == ref.file else f"{ref.file} ({path})"
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.readline().strip()
    except OSError as exc:
        raise SecretError(f"cannot read secret file {where}: {exc.strerror}") from None
    if not value:
        raise SecretError(f"secret file {where} is empty")
    return value


def _names(path: str) -> list[str]:
    return [m.group(1) if m.group(1) is not None else m.group(2) for m in _VAR_RE.finditer(path)]


def _secret_ref(value: Any) -> Any:
    """Turn `{env: NAME}` / `{file: PATH}` into a reference; refuse anything else without echoing it."""
    if isinstance(value, EnvSecret | FileSecret):
        return value
    if isinstance(value, str | int | float | bytes) and not isinstance(value, bool):
        raise ValueError(
            "secret written inline: put it in an environment variable or a file and write {env: NAME} or {file: PATH}"
        )
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in ("env", "file"):
        raise ValueError("a secret is written as {env: NAME} or {file: PATH} (exactly one of the two)")
    if "env" in value:
        name = value["env"]
        if not isinstance(name, str) or not ENV_RE.match(name):
            raise ValueError(
                "{env: NAME} needs an environment variable name: letters, digits and _, not starting with a digit"
            )
        return EnvSecret(env=name)
    path = value["file"]
    if not isinstance(path, str) or not path.strip():
        raise ValueError("{file: PATH} needs a file path")
    return FileSecret(file=path)


SecretRef = Annotated[EnvSecret | FileSecret, BeforeValidator(_secret_ref)]
