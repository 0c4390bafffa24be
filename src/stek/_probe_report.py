"""What ``stek probe`` found: endpoints, the matrix, the diagnoses (data only).

The JSON of ``stek probe --json`` is :meth:`Report.to_dict`: ``endpoints``,
``matrix`` and ``diagnoses[{kind, tls, targets, message}]``, plus ``names``
when several server names were probed (``--sni`` given more than once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXIT_ALL_RESUME = 0
EXIT_SOME_DO_NOT = 1
EXIT_ERROR = 2

#: Client authentication, as the probe saw it: the server asked for no
#: certificate, asked for one but served a client without, or failed the
#: handshake without one.
CLIENT_AUTH_NONE, CLIENT_AUTH_REQUESTED, CLIENT_AUTH_REQUIRED = "none", "requested", "required"

#: Diagnoses that make the probe fail (exit 1) whatever the matrix shows.
FAILING_KINDS = frozenset({"unreachable", "version-refused", "handshake-failed",
                           "client-auth-bypass"})
CROSS_NAME = "cross-name-resumption"


@dataclass
class EndpointResult:
    """One endpoint under one TLS version."""

    target: str
    tls: str
    tickets: int
    lifetime_hint: int | None
    key_name: str | None
    self_resume: bool | None
    cipher: str
    certificate: str
    #: With a ring: the key's state ("active", ...) or "not in the ring".
    key_state: str | None = None
    #: With a ring that opens the ticket: the session id context sealed in it (hex).
    sid_ctx: str | None = None
    #: With a ring: seconds since the key started encrypting.
    key_age: int | None = None
    #: "none", "requested" or "required" (see CLIENT_AUTH_*).
    client_auth: str = CLIENT_AUTH_NONE
    #: The ticket measured here was issued to the operator's certificate (--cert).
    client_cert: bool = False
    #: Why the endpoint could not be measured under this version (None: it was).
    error: str | None = None
    #: The diagnosis kind of ``error``: unreachable, version-refused, handshake-failed.
    error_kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Cell:
    """A ticket from ``src`` offered to ``dst``."""

    src: str
    dst: str
    tls: str
    resumed: bool
    offered: bool = True  # False: ``src`` had no ticket to offer, or ``dst`` is unreachable
    error: str | None = None  # the offer's handshake failed

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.src, "to": self.dst, "tls": self.tls, "resumed": self.resumed,
                "offered": self.offered, "error": self.error}


@dataclass(frozen=True)
class NameCell:
    """A ticket one endpoint issued under server name ``src`` offered to it under ``dst``."""

    target: str
    tls: str
    src: str
    dst: str
    resumed: bool
    offered: bool = True
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "tls": self.tls, "from_sni": self.src,
                "to_sni": self.dst, "resumed": self.resumed, "offered": self.offered,
                "error": self.error}


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # different-keys, no-resumption, client-auth-bypass, unreachable, ...
    tls: str | None
    targets: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tls": self.tls, "targets": list(self.targets),
                "message": self.message}


@dataclass
class Report:
    now: float
    targets: tuple[str, ...]
    endpoints: list[EndpointResult]
    matrix: list[Cell]
    diagnoses: list[Diagnosis] = field(default_factory=list)
    store: str | None = None
    watch: dict[str, Any] | None = None
    names: list[NameCell] = field(default_factory=list)
    #: --allow-cross-name: a cross-name resumption is reported, not a failure.
    allow_cross_name: bool = False

    @property
    def all_resume(self) -> bool:
        return bool(self.matrix) and all(c.resumed for c in self.matrix)

    @property
    def failed(self) -> bool:
        """Exit 1: some pair does not resume, an endpoint could not be measured,
        or a session crossed a boundary it must not."""
        kinds = FAILING_KINDS if self.allow_cross_name else FAILING_KINDS | {CROSS_NAME}
        return not self.all_resume or any(d.kind in kinds for d in self.diagnoses)

    @property
    def exit_status(self) -> int:
        return EXIT_SOME_DO_NOT if self.failed else EXIT_ALL_RESUME

    def up(self, target: str) -> bool:
        """A TLS server answered on ``target`` under every version probed."""
        return all(e.error is None for e in self.endpoints if e.target == target)

    def endpoint(self, target: str, tls: str) -> EndpointResult | None:
        return next((e for e in self.endpoints if e.target == target and e.tls == tls), None)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "now": int(self.now),
            "store": self.store,
            "all_resume": self.all_resume,
            "endpoints": [e.to_dict() for e in self.endpoints],
            "matrix": [c.to_dict() for c in self.matrix],
            "diagnoses": [d.to_dict() for d in self.diagnoses],
        }
        if self.names:
            doc["names"] = [n.to_dict() for n in self.names]
        if self.watch is not None:
            doc["watch"] = self.watch
        return doc
