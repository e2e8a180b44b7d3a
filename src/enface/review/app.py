"""The web application of ``enface review`` (Starlette): the page, its API and its guard.

Every request must carry the session's token: a ``GET`` in the ``token`` query parameter
(the URL the command prints, and the page's own script and stylesheet, whose URLs the
served page carries) or the ``X-Enface-Token`` header (every API call of the page); writes
(``PUT``/``POST``) need the header. The token never travels in a cookie: browsers do not
scope cookies by port, so a cookie set by 127.0.0.1:PORT would be sent to every other
server on 127.0.0.1, and a cookie is never taken as a credential. A request without a token
gets 401, one with a wrong token 403, and so does a request whose ``Host`` header is not the
server's own (DNS rebinding). Static files are a fixed list from the package, never a path
from the request.

API (all under the token)::

    GET  /api/session                       dataset, task, grader, options
    GET  /api/cases                         the case list with statuses (queue order)
    GET  /api/cases/{id}                    grid, spacing, layers, mask versions, prediction
    GET  /api/cases/{id}/enface/{layer}     8-bit PNG (H, W): slo faf mean sub_bm probability uncertainty
    GET  /api/cases/{id}/bscan/{row}        D*W bytes (8-bit grey, depth down) of B-scan `row`, from the memory map
    GET  /api/cases/{id}/mask/{which}       H*W bytes 0/1: reference, grader, prediction
    PUT  /api/cases/{id}/mask               save the grader's mask (H*W bytes; X-Base-Version...)
    POST /api/cases/{id}/review             {"decision": "accept" | "correct" | "reject"}
    POST /api/cases/{id}/promote            {"version": ...}: grader's mask -> mask_<task>.png
    GET  /api/reviews.csv                   the latest decision per case and grader
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import secrets
import urllib.parse
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from enface.errors import DatasetError, UnsafePathError
from enface.review.cases import CaseService, NotFound
from enface.review.log import DECISIONS, REVIEW_COLUMNS
from enface.review.store import STARTS, Conflict, ReadOnly, UploadError, parse_mask_upload

__all__ = ["TOKEN_HEADER", "create_app"]

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-enface-token"
_STATIC = {"review.js": "text/javascript", "review.css": "text/css"}
_JSON_LIMIT = 64 * 1024
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'"),
]


class TokenGuard:
    """ASGI middleware: the token on every request, the header on writes, the server's own Host."""

    def __init__(self, app: ASGIApp, token: str, hosts: frozenset[str]) -> None:
        self.app = app
        self.token = token
        self.hosts = hosts

    def _refusal(self, request: Request) -> Response | None:
        if request.headers.get("host", "").lower() not in self.hosts:
            return PlainTextResponse("403: unknown Host header (open the URL enface review printed)", 403)
        given = request.headers.get(TOKEN_HEADER)
        if not given and request.method in ("GET", "HEAD"):
            given = request.query_params.get("token")
        if not given:
            return PlainTextResponse("401: open the URL that enface review printed (it carries ?token=...)", 401)
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return PlainTextResponse("403: wrong token", 403)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _SECURITY_HEADERS
            await send(message)

        refusal = self._refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes, whatever Content-Length claims."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise UploadError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise UploadError(415, "expected application/json")
    try:
        obj = json.loads(await _body(request, _JSON_LIMIT))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UploadError(400, "not valid JSON") from None
    except RecursionError:
        raise UploadError(400, "JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise UploadError(400, "expected a JSON object")
    return obj


def _number_header(request: Request, name: str) -> float:
    try:
        value = float(request.headers.get(name, "0"))
    except ValueError:
        raise UploadError(400, f"{name} must be a number") from None
    return value if math.isfinite(value) and value >= 0 else 0.0


def _save_headers(request: Request) -> tuple[str, str]:
    """``X-Base-Version`` (required: 428 without it) and ``X-Started-From`` (one of :data:`STARTS`) of a save."""
    base = request.headers.get("x-base-version", "").strip()
    if not base:
        raise UploadError(
            428, "X-Base-Version header missing: the version of the mask the page loaded ('none': it saw no file)"
        )
    started = request.headers.get("x-started-from", "empty")
    if started not in STARTS:
        raise UploadError(400, f"X-Started-From must be one of {', '.join(STARTS)}, not {started[:40]!r}")
    return base, started


class _Endpoints:
    """The request handlers, over one dataset's :class:`CaseService`."""

    def __init__(self, service: CaseService, token: str) -> None:
        self.service = service
        self.token = token

    def page(self, request: Request) -> Response:
        """The page, carrying the token (in a meta tag and in its own files' URLs), and no cookie."""
        text = resources.files("enface.review").joinpath("static/index.html").read_text(encoding="utf-8")
        text = text.replace("{{TOKEN_QUERY}}", html.escape(urllib.parse.quote(self.token, safe="")))
        return Response(text.replace("{{TOKEN}}", html.escape(self.token)), media_type="text/html")

    def favicon(self, request: Request) -> Response:
        return Response(status_code=204)

    def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            raise NotFound(f"no file {name!r}")
        data = resources.files("enface.review").joinpath(f"static/{name}").read_bytes()
        return Response(data, media_type=_STATIC[name])

    def session(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "dataset": self.service.info.get("name"),
                "task": self.service.task,
                "grader": self.service.grader,
                "predictions": self.service.predictions is not None,
                "queue": bool(self.service.queue),
                "decisions": list(DECISIONS),
            }
        )

    def cases(self, request: Request) -> JSONResponse:
        return JSONResponse(self.service.case_list())

    def case(self, request: Request) -> JSONResponse:
        return JSONResponse(self.service.case_info(request.path_params["case_id"]))

    def enface(self, request: Request) -> Response:
        p = request.path_params
        return Response(self.service.enface_png(p["case_id"], p["layer"]), media_type="image/png")

    def bscan(self, request: Request) -> Response:
        p = request.path_params
        return Response(self.service.bscan_bytes(p["case_id"], p["row"]), media_type="application/octet-stream")

    def mask(self, request: Request) -> Response:
        p = request.path_params
        return Response(self.service.mask_bytes(p["case_id"], p["which"]), media_type="application/octet-stream")

    async def save(self, request: Request) -> JSONResponse:
        case = await run_in_threadpool(self.service.case, request.path_params["case_id"])
        self.service.store.writer()
        base, started = _save_headers(request)
        h, w = (await run_in_threadpool(self.service.volume, case)).shape[:2]
        body = await _body(request, h * w)
        mask = parse_mask_upload(body, request.headers.get("content-type", ""), (h, w))
        start = None
        if started == "prediction" and self.service.prediction(case) is not None:
            start = await run_in_threadpool(self.service.prediction(case).load_mask)  # type: ignore[union-attr]
        seconds = _number_header(request, "x-seconds")
        result = await run_in_threadpool(
            self.service.store.save, case.path, mask, base, case.spacing[:2], start, started, seconds
        )
        log.info("saved %s (%d pixels changed, %.3f mm²)", result.path, result.pixels_changed, result.area_mm2)
        return JSONResponse(
            {"version": result.version, "pixels_changed": result.pixels_changed, "area_mm2": result.area_mm2}
        )

    async def review(self, request: Request) -> JSONResponse:
        case = await run_in_threadpool(self.service.case, request.path_params["case_id"])
        decision = (await _json(request)).get("decision")
        if decision not in DECISIONS:
            raise UploadError(400, f"decision must be one of {', '.join(DECISIONS)}")
        entry = await run_in_threadpool(self.service.record_decision, case, str(decision))
        return JSONResponse(entry)

    async def promote(self, request: Request) -> JSONResponse:
        case = await run_in_threadpool(self.service.case, request.path_params["case_id"])
        version = str((await _json(request)).get("version", ""))
        path = await run_in_threadpool(self.service.store.promote, case.path, self.service.root, version)
        return JSONResponse({"promoted": path.name, "reference": self.service.store.version(case.path, None)})

    def reviews_csv(self, request: Request) -> Response:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=REVIEW_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.service.log.review_rows(self.service.task))
        headers = {"content-disposition": f'attachment; filename="reviews_{self.service.task}.csv"'}
        return Response(buf.getvalue(), media_type="text/csv", headers=headers)


def _routes(service: CaseService, token: str) -> list[Route]:
    e = _Endpoints(service, token)
    case_path = "/api/cases/{case_id}"
    return [
        Route("/", e.page),
        Route("/favicon.ico", e.favicon),
        Route("/static/{name}", e.static),
        Route("/api/session", e.session),
        Route("/api/cases", e.cases),
        Route(case_path, e.case),
        Route(case_path + "/enface/{layer}", e.enface),
        Route(case_path + "/bscan/{row:int}", e.bscan),
        Route(case_path + "/mask/{which}", e.mask),
        Route(case_path + "/mask", e.save, methods=["PUT"]),
        Route(case_path + "/review", e.review, methods=["POST"]),
        Route(case_path + "/promote", e.promote, methods=["POST"]),
        Route("/api/reviews.csv", e.reviews_csv),
    ]


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _handlers() -> dict[Any, Any]:
    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, str(exc))

    async def unsafe(request: Request, exc: Exception) -> Response:
        return _error(403, f"refused: {exc}")

    async def gone(request: Request, exc: Exception) -> Response:
        log.warning("%s %s: the client went away during the request; nothing saved", request.method, request.url.path)
        return Response(status_code=400)  # nobody reads it

    async def upload(request: Request, exc: Exception) -> Response:
        return _error(exc.status if isinstance(exc, UploadError) else 400, str(exc))

    async def conflict(request: Request, exc: Exception) -> Response:
        return _error(409, str(exc), current=exc.current if isinstance(exc, Conflict) else None)

    async def read_only(request: Request, exc: Exception) -> Response:
        return _error(403, str(exc))

    async def bad_file(request: Request, exc: Exception) -> Response:
        return _error(422, str(exc))

    return {
        NotFound: not_found,
        UnsafePathError: unsafe,
        UploadError: upload,
        Conflict: conflict,
        ReadOnly: read_only,
        DatasetError: bad_file,
        ClientDisconnect: gone,
    }


def create_app(service: CaseService, token: str, hosts: tuple[str, ...]) -> ASGIApp:
    """The application, behind the token guard.

    Args:
        service: the dataset's cases and mask store.
        token: the session's secret.
        hosts: accepted values of the ``Host`` header (``"127.0.0.1:8765"``, ...).
    """
    app = Starlette(routes=_routes(service, token), exception_handlers=_handlers())
    return TokenGuard(app, token, frozenset(h.lower() for h in hosts))
