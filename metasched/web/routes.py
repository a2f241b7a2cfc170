"""The route table's entry. Every route the app serves is one ``Route``: its URI template, what makes its
resource, and its OpenAPI operations. ``create_app`` adds the routes of the table (``web.app.ROUTES``, plus
what the composition root passes, e.g. ``metrics.ROUTES``) to Falcon, and ``openapi.build_document`` makes the
document's paths from the same entries, so a route cannot be served without being documented or the reverse.

A route that is not part of the JSON API (an HTML page of a dashboard, say) says so with ``api=False`` and no
operations: it is served like any other and left out of /openapi.json on purpose.

This module imports nothing of the web layer, so a module of routes (``metrics``, a dashboard's) can build its
entries without importing the app.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

ID = "id"   # a job, queue, node or token id in a path: see web.app.IdConverter
TASK = "task"   # an array task's index in a path: see web.app.TaskConverter

_FIELD = re.compile(r"\{(\w+)(?::[^}]*)?\}")
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def openapi_path(template: str) -> str:
    """Falcon's ``/jobs/{job_id:id}`` as OpenAPI writes it: ``/jobs/{job_id}``."""
    return _FIELD.sub(r"{\1}", template)


@dataclass(frozen=True)
class Route:
    """One route. ``resource``: called with the app's Services, returns the resource instance (a resource class
    whose constructor takes the services is one). ``operations``: the OpenAPI operation of each method the
    resource answers, by lower-case method name. ``api=False``: not part of the API (no operations)."""

    template: str
    resource: Callable[[Any], object]
    operations: Mapping[str, dict] | None = None
    api: bool = True

    def __post_init__(self):
        if self.api and not self.operations:
            raise ValueError(f"route {self.template}: give its OpenAPI operations, or api=False if it is not "
                             f"part of the API")
        if not self.api and self.operations is not None:
            raise ValueError(f"route {self.template}: api=False takes no OpenAPI operations")
        unknown = sorted(set(self.operations or ()) - set(HTTP_METHODS))
        if unknown:
            raise ValueError(f"route {self.template}: {', '.join(unknown)} is not an HTTP method (lower case)")

    @property
    def path(self) -> str:
        """The route's path in the OpenAPI document."""
        return openapi_path(self.template)
