"""Domain errors. Category bases map to HTTP statuses once, in metasched.web.app (STATUS_OF)."""
from __future__ import annotations


class MetaschedError(Exception):
    """Base of every error the service reports to a caller."""

    title = "error"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(MetaschedError):
    title = "invalid configuration"


class Invalid(MetaschedError):          # 400
    title = "invalid request"


class Unauthenticated(MetaschedError):  # 401
    title = "not authenticated"


class Forbidden(MetaschedError):        # 403
    title = "forbidden"


class NotFound(MetaschedError):         # 404
    title = "not found"

    def __init__(self, kind: str, ident):
        super().__init__(f"{kind} {ident} not found", kind=kind, id=str(ident))


class Conflict(MetaschedError):         # 409
    title = "conflict"


class Unavailable(MetaschedError):      # 503
    title = "service unavailable"


class JobStateConflict(Conflict):
    def __init__(self, job_id: int, status: str, action: str):
        super().__init__(f"job {job_id} is {status}: cannot {action}", job_id=job_id, job_status=status)


class NoOutput(NotFound):               # 404: the job exists, this output of it does not (yet)
    def __init__(self, message: str, **details):
        MetaschedError.__init__(self, message, **details)
