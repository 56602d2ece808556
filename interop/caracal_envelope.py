"""Run Caracal's published envelope codec (caracalai-sdk, module caracalai.envelope).

Used by tests/interop_envelope.rs (started by interop/run). One process per run:
it reads one JSON object from stdin and writes one to stdout.

Input:
    {"decode": [headers, ...], "encode": [envelope, ...]}
where `headers` maps a header name to its value, and `envelope` is
    {"agent_session": str|null, "delegation_edge": str|null,
     "parent_edge": str|null, "session": str|null, "trace_id": str|null,
     "trace_flags": str|null, "trace_state": str|null,
     "baggage": {str: str}, "hop": int}

Output:
    {"package": "caracalai-sdk", "version": "...",
     "decoded": [envelope, ...],     # caracalai.envelope.from_headers
     "encoded": [headers, ...]}      # caracalai.envelope.to_headers

Field names follow the baggage keys (caracal.agent_session is the package's
`session_id`, caracal.delegation_edge its `delegation_id`, caracal.parent_edge
its `parent_delegation_id`, caracal.session its `subject_authority_record_id`).
Only the module's public functions are used.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata

from caracalai.envelope import Envelope, from_headers, to_headers


def decoded(headers: dict[str, str]) -> dict[str, object]:
    env = from_headers(headers)
    return {
        "agent_session": env.session_id,
        "delegation_edge": env.delegation_id,
        "parent_edge": env.parent_delegation_id,
        "session": env.subject_authority_record_id,
        "trace_id": env.trace_id,
        "trace_flags": env.trace_flags,
        "trace_state": env.trace_state,
        "baggage": env.baggage,
        "hop": env.hop,
    }


def encoded(fields: dict[str, object]) -> dict[str, str]:
    env = Envelope(
        session_id=fields.get("agent_session"),
        delegation_id=fields.get("delegation_edge"),
        parent_delegation_id=fields.get("parent_edge"),
        subject_authority_record_id=fields.get("session"),
        trace_id=fields.get("trace_id"),
        trace_flags=fields.get("trace_flags"),
        trace_state=fields.get("trace_state"),
        baggage=dict(fields.get("baggage") or {}),
        hop=int(fields.get("hop") or 0),
    )
    return to_headers(env)


def main() -> None:
    request = json.load(sys.stdin)
    json.dump(
        {
            "package": "caracalai-sdk",
            "version": metadata.version("caracalai-sdk"),
            "decoded": [decoded(h) for h in request.get("decode", [])],
            "encoded": [encoded(e) for e in request.get("encode", [])],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
