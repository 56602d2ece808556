"""Ask Caracal's published Python verifier (caracalai-verify) about mandates.

One long-lived process for the interop suite (tests/interop.rs, started by
interop/run). Protocol: JSON lines.

On start it writes one line:
    {"ready": true, "package": "caracalai-verify", "version": "1.0.0"}

Then, per request line
    {"token": "...", "issuer": "...", "audience": "...", "zone": "...",
     "jwks_url": "...", "now": int (optional),
     "route": {"scopes": [...], "targets": [...], "agent": bool,
               "delegation": bool, "chain_contains": [...], "max_hops": int|null}}
it writes one answer line
    {"allow": bool, "code": str|null, "status": int|null, "now": int,
     "error": str|null}

`code` is the package's own spelling (e.g. "insufficient_scope"); mapping to the
documented codes is the Rust side's job. With `now`, the package decides as if the
clock read that second (`time.time` and PyJWT's `datetime.now` are held there for
the call), so both verifiers judge time edges on the same clock; the answer's
`now` is the second the decision was made at. An exception the package lets escape is
answered as {"allow": false, "code": "exception", "status": 500, "error": ...}.

Only the package's public API is used: caracalai_verify.authenticate with an
empty caracalai_revocation.InMemoryRevocationStore.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import sys
import time
from importlib import metadata
from unittest import mock

import jwt.api_jwt

import caracalai_verify
from caracalai_revocation import InMemoryRevocationStore


def _write(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class _HeldDatetime(datetime.datetime):
    """`datetime.now` held at `held` seconds since the epoch."""

    held = 0.0

    @classmethod
    def now(cls, tz=None):
        return datetime.datetime.fromtimestamp(cls.held, tz)


def _clock_at(now):
    """Hold the clocks the package reads at `now` (seconds), or leave them be."""
    if now is None:
        return contextlib.nullcontext()
    _HeldDatetime.held = float(now)
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch("time.time", lambda: float(now)))
    stack.enter_context(mock.patch.object(jwt.api_jwt, "datetime", _HeldDatetime))
    return stack


async def _authenticate(request: dict, route: dict, issuer: str, revocations):
    return await caracalai_verify.authenticate(
        request["token"],
        issuer,
        request["audience"],
        list(route.get("scopes") or []),
        request["zone"],
        revocations,
        require_session=bool(route.get("agent")),
        require_delegation=bool(route.get("delegation")),
        require_chain_contains=list(route.get("chain_contains") or []),
        max_hop_count=route.get("max_hops"),
        required_targets=list(route.get("targets") or []),
    )


async def _decide(request: dict, revocations: InMemoryRevocationStore) -> dict:
    route = request.get("route") or {}
    expected_jwks = request.get("jwks_url")
    issuer = request["issuer"]
    # The package derives the JWKS URL from the issuer and the configured zone;
    # the harness sends the URL it serves so a mismatch is caught, not guessed.
    if expected_jwks and not expected_jwks.startswith(issuer.rstrip("/") + "/.well-known/jwks.json?"):
        raise ValueError(f"jwks_url {expected_jwks!r} is not under issuer {issuer!r}")
    with _clock_at(request.get("now")):
        result = await _authenticate(request, route, issuer, revocations)
        now = int(time.time())
    if result.ok:
        return {"allow": True, "code": None, "status": None, "now": now, "error": None}
    code = result.error.code
    return {
        "allow": False,
        "code": code,
        "status": caracalai_verify.http_status_for_auth_error(code),
        "now": now,
        "error": result.error.description,
    }


async def _serve() -> None:
    revocations = InMemoryRevocationStore()
    _write({"ready": True, "package": "caracalai-verify", "version": metadata.version("caracalai-verify")})
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
        except ValueError as err:
            _write({"allow": False, "code": "harness_error", "status": None,
                    "now": int(time.time()), "error": f"bad request line: {err}"})
            continue
        try:
            answer = await _decide(request, revocations)
        except Exception as err:  # noqa: BLE001 - reported, not hidden
            answer = {"allow": False, "code": "exception", "status": 500,
                      "now": int(time.time()), "error": f"{type(err).__name__}: {err}"}
        _write(answer)


if __name__ == "__main__":
    asyncio.run(_serve())
