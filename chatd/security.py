"""Password hashing (scrypt) and random tokens. Pure functions, no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt with n=2**14, r=8 uses 16 MiB per hash: memory-hard, ~50 ms on one core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_DUMMY_SALT = b"chatd-dummy-salt"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check; with stored=None it still spends the time of a real check."""
    try:
        if stored is None:
            raise ValueError
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            raise ValueError
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            password.encode(errors="surrogatepass"), salt=_unb64(salt),
            n=int(n), r=int(r), p=int(p), maxmem=64 << 20,
        )
    except (ValueError, TypeError):
        hashlib.scrypt(b"x", salt=_DUMMY_SALT, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20)
        return False
    return hmac.compare_digest(expected, actual)


def new_token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """What the database keeps of a session or API token: never the token itself."""
    return hashlib.sha256(token.encode(errors="surrogatepass")).digest()


def setup_hash(token: str) -> str:
    return hashlib.sha256(token.encode(errors="surrogatepass")).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(errors="surrogatepass"), b.encode(errors="surrogatepass"))
