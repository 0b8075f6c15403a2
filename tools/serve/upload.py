"""An upload's bytes, read within the limits, and the image they hold: every bad upload a BadUpload
with its HTTP status and one-line reason, which the caption route answers as {"error": reason}."""

import io

from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 50_000_000
# Only formats with plain decoders: no EPS (Ghostscript), no PDF, no exotic plugins.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MULTIPART_SLACK = 64 * 1024  # part headers and boundaries around the file
# A refused upload's body is read and dropped, up to the upload limit plus this many bytes, before
# the answer, so that a client still sending (Python's urllib) reads it instead of a connection reset.
DRAIN_BYTES = 16 * 1024 * 1024
# Leading bytes of the accepted formats: a file that starts like an image but will not open is corrupt (400),
# anything else is not an image (415).
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")


class BadUpload(Exception):
    """A refused upload: its HTTP status and one-line reason."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def read_image(data, max_pixels=MAX_PIXELS):
    """Upload bytes -> decoded upright image (any mode: the captioner converts).

    BadUpload: 415 not an image, 413 too many pixels (checked from the header), 400 corrupt."""
    if not data:
        raise BadUpload(400, "empty upload")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:  # PIL's own guard, past twice its MAX_IMAGE_PIXELS: name ours
        raise BadUpload(
            413, f"image too large: over {2 * Image.MAX_IMAGE_PIXELS} pixels; the limit is {max_pixels}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        if data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise BadUpload(400, "corrupt image: the header cannot be read") from None
        raise BadUpload(415, "not an image (expected JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    width, height = image.size
    # The header gives the size; refuse before decoding a single pixel.
    if width * height > max_pixels:
        raise BadUpload(413, f"image too large: {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width == 0 or height == 0:
        raise BadUpload(400, f"corrupt image: size {width}x{height}")
    try:
        image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        raise BadUpload(400, f"corrupt {image.format} image: {err}") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        pass
    return image


async def read_upload(request, max_bytes):
    """The bytes of form field `image`; the body is cut off as soon as it passes the limit."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadUpload(415, "expected a multipart/form-data upload with the image in field 'image'")
    body_limit = max_bytes + MULTIPART_SLACK
    too_large = f"upload larger than the limit of {max_bytes} bytes"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > body_limit:
        raise BadUpload(413, too_large)

    async def bounded():
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:  # Content-Length may lie or be absent (chunked)
                raise BadUpload(413, too_large)
            yield chunk

    parser = MultiPartParser(request.headers, bounded(), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise BadUpload(400, f"bad multipart form: {err.message}") from None
    try:
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise BadUpload(400, "no file in form field 'image'")
        if upload.size is not None and upload.size > max_bytes:
            raise BadUpload(413, too_large)
        return await upload.read()
    finally:
        await form.close()


async def drain(request, limit):
    """Read and drop the rest of the request body; False when it was left unread (too long, the
    client went away, or it waits for '100 Continue' and so has sent nothing): close then."""
    length = request.headers.get("content-length", "")
    if request.headers.get("expect", "").lower() == "100-continue" or (length.isdigit() and int(length) > limit):
        return False
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return False
    except RuntimeError:  # starlette's "Stream consumed": the whole body was read already
        pass
    except ClientDisconnect:
        return False
    return True
