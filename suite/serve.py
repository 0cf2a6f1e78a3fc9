"""The web application of ``suite serve``: a page to drop MRI images on, and the JSON API behind it.

Routes:

* ``GET /``: the page (``reports/templates/serve.html.j2``): the run's summary, a drop zone,
  and for each image its predicted class, every class probability (calibrated ones and the
  95% prediction set where the run has ``calibration.json``) and its Grad-CAM overlay.
* ``POST /predict``: images as ``multipart/form-data`` (any file field; several at once) ->
  exactly the JSON of ``suite predict --json``, each ``path`` being the uploaded file's name.
* ``POST /gradcam``: one image (and optionally a ``label`` field: the class to explain,
  default the predicted one) -> the Grad-CAM overlay as a PNG.

Every upload is checked before it is decoded (see :class:`ServeLimits`): too many files or
bytes in a request, a file that is not an image, an image whose header announces more pixels
than allowed, one that does not decode (truncated). A refused request gets a 4xx status and
``{"error": "<one line>"}``, plus ``"files": [{"path", "error"}]`` naming the files at fault;
nothing is predicted for it. The model is loaded once, when the app is made, and used in a
worker thread under the predictor's lock, so the event loop keeps answering while it works.

Why Starlette: a small ASGI toolkit that is all this needs (routes, async multipart uploads
through python-multipart, a thread pool for blocking work), served by uvicorn, the usual ASGI
server. FastAPI would add a validation layer over Starlette, and the only input here is image
files, which must be checked by opening them anyway.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path, PurePath

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from suite.data.decode import _quiet_bomb_warnings

GRADCAM_SIZE = 320  # longest side of the overlay in px: sharp on the page, small to send


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """What one request may carry; anything beyond is refused with a 4xx before any decoding.

    Attributes:
        max_files: images per request (default: 16).
        max_request_bytes: the whole request body (default: 64 MiB).
        max_pixels: width x height an image's header may announce (default: 25 megapixels, a
            5000 x 5000 image: far larger than any MRI slice, and a bound on what one decode
            may allocate while several requests decode at once).
    """

    max_files: int = 16
    max_request_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 25_000_000

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"ServeLimits.{field.name} must be at least 1, got {getattr(self, field.name)}")


class UploadRejected(Exception):
    """A request the server refuses: its HTTP status, a one-line message, and the files at fault."""

    def __init__(self, status: int, message: str, files: list[dict] | None = None):
        super().__init__(message)
        self.status, self.message, self.files = status, message, files or []

    def response(self) -> JSONResponse:
        body: dict = {"error": self.message}
        if self.files:
            body["files"] = self.files
        return JSONResponse(body, status_code=self.status)


@dataclasses.dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave it and its bytes."""

    name: str
    data: bytes

    def source(self) -> io.BytesIO:
        return io.BytesIO(self.data)


def create_app(run_dir: str | Path, limits: ServeLimits = ServeLimits(), *, predictor=None) -> Starlette:
    """The application serving ``run_dir``'s model; the model is loaded (and warmed up) here, once.

    Args:
        run_dir: a finished run folder.
        limits: what one request may carry (default: :class:`ServeLimits`'s defaults).
        predictor: a loaded :class:`suite.inference.Predictor` of ``run_dir`` to use instead of
            loading one (default: load it).

    Raises:
        SuiteError: ``run_dir`` is not a run folder, or its model cannot be loaded.
    """
    from reports.serve import render_page, serve_context
    from suite.inference import Predictor

    predictor = predictor or Predictor(run_dir)
    predictor.warm_up()
    page = render_page(serve_context(run_dir, predictor.calibration_note, limits))

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def predict(request: Request) -> Response:
        try:
            uploads, _ = await read_uploads(request, limits)
            checked = [check_upload(u, limits) for u in uploads]
            _refuse_bad(checked)
            results = await run_in_threadpool(predictor.predict, [(u.name, u.source()) for u in uploads])
            _refuse_bad([(422, {"path": r["path"], "error": r["error"]}) for r in results if "error" in r])
        except UploadRejected as exc:
            return exc.response()
        return JSONResponse(results)

    async def gradcam(request: Request) -> Response:
        try:
            uploads, fields = await read_uploads(request, limits)
            if len(uploads) != 1:
                raise UploadRejected(400, f"send exactly one image to /gradcam, got {len(uploads)}")
            label = fields.get("label")
            if label is not None and label not in predictor.labels:
                raise UploadRejected(400, f"unknown class {label!r}: the model's classes are "
                                          f"{', '.join(predictor.labels)}")
            _refuse_bad([check_upload(uploads[0], limits)])
            png = await run_in_threadpool(_overlay, predictor, uploads[0], label)
        except UploadRejected as exc:
            return exc.response()
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def failed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    return Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/gradcam", gradcam, methods=["POST"]),
    ], exception_handlers={Exception: failed})


async def read_uploads(request: Request, limits: ServeLimits) -> tuple[list[Upload], dict[str, str]]:
    """The files and text fields of a multipart request, refused past ``limits`` before it is parsed.

    The body is read with a running count, so a request larger than ``max_request_bytes`` is
    refused as soon as it says so (``Content-Length``) or crosses the limit, whatever it claims.

    Raises:
        UploadRejected: not multipart (415), too large (413), too many files (413), no file (400),
            or malformed (400).
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadRejected(415, "send the images as multipart/form-data (a form with file fields)")
    too_large = (f"request too large: at most {limits.max_request_bytes / 2**20:.0f} MiB in one request; "
                 "send fewer or smaller images")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise UploadRejected(413, too_large)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_request_bytes:
                raise UploadRejected(413, too_large)
    except ClientDisconnect:
        raise UploadRejected(400, "the client went away before the upload ended") from None
    form = await _parse_form(request, bytes(body))
    try:
        items = list(form.multi_items())
        files = [value for _, value in items if isinstance(value, UploadFile)]
        if len(files) > limits.max_files:
            raise UploadRejected(413, f"too many files: {len(files)} in one request, at most {limits.max_files}")
        uploads = [Upload(_name(f, i), await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()
    fields = {key: value for key, value in items if isinstance(value, str)}
    if not uploads:
        raise UploadRejected(400, "no image in the request: send one or more files")
    return uploads, fields


async def _parse_form(request: Request, body: bytes):
    """Starlette's multipart parser over an already-read body."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form()
    except HTTPException as exc:  # python-multipart could not parse it: Starlette says why, as a 400
        raise UploadRejected(400, f"malformed upload: {exc.detail}") from None


def _name(upload: UploadFile, index: int) -> str:
    """The uploaded file's name as the client gave it (``upload-N`` when it gave none)."""
    return upload.filename or f"upload-{index + 1}"


def check_upload(upload: Upload, limits: ServeLimits) -> tuple[int, dict] | None:
    """Why ``upload`` cannot be an image the model sees, read from its header alone (nothing is decoded).

    Returns:
        ``None`` for an acceptable header, else ``(HTTP status, {"path", "error"})``.
    """
    def refused(status: int, reason: str) -> tuple[int, dict]:
        return status, {"path": upload.name, "error": reason}

    if not upload.data:
        return refused(400, "empty file")
    _quiet_bomb_warnings()  # Pillow's warning would only repeat, on stderr, what the refusal says
    try:
        with Image.open(upload.source()) as im:
            width, height = im.size
    except UnidentifiedImageError:
        return refused(415, "not an image (unrecognised format)")
    except Image.DecompressionBombError:
        return refused(413, f"image too large: over the limit of {limits.max_pixels / 1e6:.1f} megapixels")
    except Exception as exc:  # noqa: BLE001 - a header Pillow cannot read is the client's problem, not a 500
        return refused(422, f"unreadable image: {type(exc).__name__}: {exc}")
    if width * height > limits.max_pixels:
        return refused(413, f"image too large: {width}x{height} px, {width * height / 1e6:.1f} megapixels, "
                            f"over the limit of {limits.max_pixels / 1e6:.1f} megapixels; not decoded")
    return None


def _refuse_bad(checked) -> None:
    """Raise for the refused files of ``checked`` (the status of the first; every file named)."""
    bad = [c for c in checked if c is not None]
    if not bad:
        return
    files = [entry for _, entry in bad]
    first = files[0]
    more = f" (and {len(files) - 1} more file{'s' if len(files) > 2 else ''})" if len(files) > 1 else ""
    raise UploadRejected(bad[0][0], f"{PurePath(first['path']).name or first['path']}: {first['error']}{more}",
                         files)


def _overlay(predictor, upload: Upload, label: str | None) -> bytes:
    """The Grad-CAM overlay PNG of ``label`` (default: the predicted class) on ``upload``."""
    from reports import plots

    image, reason = predictor.decode(upload.source())
    if image is None:
        raise UploadRejected(422, f"{upload.name}: {reason}", [{"path": upload.name, "error": reason}])
    if label is None:
        label = predictor.predict([(upload.name, upload.source())])[0]["predicted"]
    heat = predictor.heat_map(image, label)
    png = plots.gradcam_overlay_png(upload.source(), heat, GRADCAM_SIZE)
    if png is None:
        raise UploadRejected(422, f"{upload.name}: the overlay could not be drawn")
    return png

