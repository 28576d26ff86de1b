"""The reviewer console (``/console``): where reviewers who are not engineers work their queue.

``mount(app)`` adds its pages and its static files to keel's FastAPI app.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.console.routes import STATIC_DIR, router


def mount(app: FastAPI) -> None:
    # The console authenticates with its own session cookie (api/console/sessions.py), not with
    # the bearer token every /v1 route requires.
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.include_router(router)
