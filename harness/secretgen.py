"""Fresh random secrets for each run. Never logged: reports carry only Secret.fingerprint."""
from __future__ import annotations

import secrets
import string

from .model import Secret
from .scenario import SecretSpec

CANARY_LENGTH = 32
# Printable, without quotes or backslash, so a password survives any textual encoding we look for.
PASSWORD_ALPHABET = string.ascii_letters + string.digits + "!#$%&()*+,-./:;<=>?@[]^_{|}~"


def make_secret(spec: SecretSpec) -> Secret:
    if spec.form == "password":
        value = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(spec.length)).encode()
        return Secret("secret", value, textual=True)
    return Secret("secret", secrets.token_bytes(spec.length))


def make_canary(textual: bool = False) -> Secret:
    """Random bytes, or (for a program's environment, which holds only text) their hex digits."""
    value = secrets.token_bytes(CANARY_LENGTH)
    return Secret("canary", value.hex().encode(), textual=True, control=True) if textual else \
        Secret("canary", value, control=True)
