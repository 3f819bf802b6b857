"""One base error; everything the daemon raises on purpose sits under it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OAError(Exception):
    """Base of every error OpenAnomaly raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rules file, located like promtool locates it."""

    message: str
    file: str = ""
    line: int = 0
    rule: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        who = f' rule "{self.rule}":' if self.rule else ""
        return f"{where}:{who} {self.message}".lstrip(": ")


class RuleError(OAError):
    """A rules file or rule is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class TsdbError(OAError):
    """The TSDB could not answer: unreachable, timed out, or refused the query."""


class QueryError(TsdbError):
    """The TSDB rejected the query itself (bad PromQL, 4xx): retrying will not help."""


class CardinalityError(OAError):
    """A rule selected more series than its max_series allows."""


class EngineError(OAError):
    """A model engine could not fit or predict."""


class DispatchError(OAError):
    """A job could not be queued, or was lost, or its worker failed it."""


class JobTimeout(DispatchError):
    """A job ran past its time limit and was killed."""


class WorkerDied(DispatchError):
    """The process running a job died before answering (crash, out of memory, killed)."""


class ArtifactError(OAError):
    """A stored model could not be written, found or read."""


class RejectReason(StrEnum):
    """Why a stored model was refused (the `reason` label of oa_artifact_rejected_total)."""

    CORRUPT = "corrupt"  # torn, truncated or damaged: its checksum or structure does not hold
    SIGNATURE = "signature"  # OA_ARTIFACT_KEY is set and its HMAC does not match (tampered, other key, unsigned)
    FORMAT = "format"  # another artifact format version (written by another oa-exporter)
    VERSION = "version"  # fitted by another version of the engine or its libraries
    FINGERPRINT = "fingerprint"  # fitted for another version of the rule
    UNREADABLE = "unreadable"  # intact and trusted, but the engine could not load its payload


class ArtifactRejected(ArtifactError):
    """A stored model exists but must not be used; the rule is refit instead."""

    def __init__(self, reason: RejectReason, message: str):
        self.reason = reason
        super().__init__(message)


class HistoryError(OAError):
    """The history store could not read or keep a rule's history (full: over its disk budget; I/O)."""


class HistoryChanged(HistoryError):
    """Another process rewrote the rule's history while it was being read: read its state again."""


class SinkError(OAError):
    """A result sink could not be set up, e.g. its remote-write queue is held by another process."""


class ConflictError(OAError):
    """A write to the rules cannot be done as asked: the caller's version is stale, or the store is read-only."""


class NotFound(OAError):
    """No rule of that name."""


class PreviewError(OAError):
    """A preview was refused or could not finish: too large, timed out, or another one is running."""

    def __init__(self, message: str, status: int = 422):
        self.status = status  # the HTTP status the API answers with
        super().__init__(message)
