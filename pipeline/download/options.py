"""How a URL build downloads (DownloadOptions: every default written here once) and the
skip reasons a download can end in."""

from dataclasses import asdict, dataclass

from pipeline.errors import CapgenError

USER_AGENT_TOKEN = "capgen"  # what an X-Robots-Tag line may name ("capgen: noai")
USER_AGENT = f"Mozilla/5.0 (compatible; {USER_AGENT_TOKEN}; image-caption shard builder)"
# img2dataset's default disallowed directives: an image whose response carries one is skipped.
DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")

# Skip reasons of a download (the decoder adds corrupt, truncated, too_large); http_<status> besides.
REASONS = (
    "timeout",  # no answer, or the whole response took longer than the timeout (retried)
    "connection_error",  # refused, reset, DNS (retried)
    "incomplete_body",  # the connection closed before Content-Length bytes came (retried)
    "too_many_bytes",  # Content-Length or the body read so far past max_bytes: reading stops
    "not_an_image",  # the body does not start like an image (an HTML page, an empty body)
    "robots",  # X-Robots-Tag names a disallowed directive
    "redirect_loop",  # a redirect back to a URL of the same chain
    "too_many_redirects",  # more than max_redirects redirects
    "bad_redirect",  # a redirect without a Location, or to a scheme other than http(s)
)


@dataclass(frozen=True)
class DownloadOptions:
    """How a URL build downloads; none of it decides a shard's bytes for the same responses.

    concurrency: requests in flight per process; per_host: at most this many of them to one
    host (host:port); timeout: seconds for one attempt (connecting, waiting and reading the
    whole body: a slow trickle times out; a stall mid-body ends at the socket's read timeout,
    also `timeout`, so an attempt lasts at most about twice it), connect_timeout: seconds to
    connect (at most timeout); retries: further attempts after a timeout, a connection error, a body cut short
    or a 5xx, waiting backoff * 2**k seconds before the k-th; max_bytes: a larger body is
    skipped (too_many_bytes) without reading past it; max_redirects: redirects followed."""

    concurrency: int = 64
    per_host: int = 16
    timeout: float = 10.0
    connect_timeout: float = 5.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 20_000_000
    max_redirects: int = 5
    user_agent: str = USER_AGENT
    disallowed_directives: tuple = DISALLOWED_DIRECTIVES

    def check(self, where: str) -> None:
        """CapgenError naming `where` for a value out of range."""
        if self.concurrency < 1 or self.per_host < 1 or self.retries < 0 or self.max_redirects < 0:
            raise CapgenError(f"{where}: need concurrency >= 1, per-host >= 1, retries >= 0, max redirects >= 0")
        if self.timeout <= 0 or self.connect_timeout <= 0 or self.backoff < 0 or self.max_bytes < 1:
            raise CapgenError(f"{where}: need timeouts > 0, backoff >= 0, max bytes >= 1")

    def recorded(self) -> dict:
        """What a manifest's build_args record of these options."""
        out = asdict(self)
        out["disallowed_directives"] = list(self.disallowed_directives)
        return out
