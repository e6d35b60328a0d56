"""The console's static files (``static/``, shipped in the package), served from memory.

Only the files listed here are served (no path from the request reaches the file system); each has
a suffix pyproject's package-data ships (static/ is a package for that reason; the icon is a data:
URI in index.html). Every console response carries a Content-Security-Policy allowing this origin
only: the pages can load nothing from elsewhere (no CDN, no external font) even by mistake.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import Request, Response

FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "views.js": "text/javascript; charset=utf-8",
    "feeds.js": "text/javascript; charset=utf-8",
    "enroll.js": "text/javascript; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "fr.json": "application/json; charset=utf-8",
    "en.json": "application/json; charset=utf-8",
}
INDEX = "index.html"
LANGUAGES = ("fr", "en")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; font-src 'self'; base-uri 'self'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


class Assets:
    """The files of ``static/`` read once; ``index.html`` gets the console's base path."""

    def __init__(self, base_path: str, fhir_base: str = "/fhir") -> None:
        root = resources.files("gateway.console").joinpath("static")
        self.files: dict[str, Asset] = {}
        for name, media in FILES.items():
            self.files[name] = _asset(root.joinpath(name).read_bytes(), media)
        html = root.joinpath(INDEX).read_text(encoding="utf-8")
        html = html.replace("__BASE__", base_path.rstrip("/") + "/").replace("__FHIR__", fhir_base.rstrip("/"))
        self.index = _asset(html.encode("utf-8"), "text/html; charset=utf-8")

    def response(self, asset: Asset, request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)


def _asset(body: bytes, media: str) -> Asset:
    return Asset(body, media, f'"{hashlib.sha256(body).hexdigest()[:16]}"')
