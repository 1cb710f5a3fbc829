"""The search service: LESER's merged ranking over HTTP, head queries' expansions from the cache.

    GET /search?q=oak+desk&k=10   ->  200 application/json
    {"query": "oak desk", "key": "oak desk", "k": 10,
     "source": "cache" | "generated" | "none",
     "status": "ok" | a parse rejection reason (source cache or generated: no expansion)
               | "miss" | "budget" | "error" (source none: the original query's results alone),
     "expansions": ["solid oak writing desk", ...],
     "results": [{"product_id": "...", "title": "..."}, ...],   # M(Y)'s first k
     "retrieved": 97,                                           # |M(Y)|
     "timings_ms": {"lookup": .., "expand": .., "search": .., "total": ..}}
    GET /health                   ->  200 {"status": "ok", "cache": N, "online": {...} | null}

The ranking is M(Y) of the reward (reward.merged_ranking of reward.ranked_lists: S_K(q), then
S_K(y) of each expansion, round-robin, repeats skipped), with K = `search_k`, so for the same
query text and expansions it is the ranking that evaluation measured (tests/test_serve.py). Where
the expansions come from: the expansion cache (expansion_cache.py, looked up by the normalised
query) for head queries; for a miss, with an online policy (online_expander.py), a sampler call
shared with the other requests waiting, unless that would pass `latency_budget_ms` (then the
original query's results, status "budget"); without one, none (status "miss"). The budget bounds
the time until the expansions are known; the searches after it add their own few milliseconds.

HTTP: the standard library's ThreadingHTTPServer (a thread per connection, HTTP/1.1 keep-alive)
rather than a framework: the service's concurrency is in the batcher, the cache and Tantivy
(which releases the GIL while it searches), not in the HTTP layer, and http.server parses the
protocol, so no protocol code is written here and no dependency added. A bad request gets a 4xx
with a JSON {"error": message} (`parse_search`): a missing, repeated or empty q, a q longer than
`max_query_chars`, a k that is not an integer in [1, max_k], bytes that are not UTF-8, a path
other than /search and /health (404), a method other than GET (405). An unexpected error in one
request is a 500 for that request alone; the server keeps serving.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import time
import urllib.parse

from leser_jax.catalog import MAX_QUERY_CHARS
from leser_jax.expansion_cache import ExpansionCache, normalise
from leser_jax.online_expander import OnlineExpander
from leser_jax.reward import merged_ranking, ranked_lists
from leser_jax.search import SearchEngine

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Attributes:
      search_k: results per search [K]; the reward's (40), so that M(Y) is evaluation's.
      default_k: results a response holds when the request names no k.
      max_k: the most results a request may ask for.
      max_query_chars: a longer q is refused (the catalog's own limit on a query).
      latency_budget_ms: the most a request waits for online expansions (module docstring).
    """

    search_k: int = 40
    default_k: int = 10
    max_k: int = 100
    max_query_chars: int = MAX_QUERY_CHARS
    latency_budget_ms: float = 200.0

    def __post_init__(self):
        if min(self.search_k, self.default_k, self.max_k, self.max_query_chars) < 1:
            raise ValueError("search_k, default_k, max_k and max_query_chars must be >= 1")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"default_k must be in [1, max_k], got {self.default_k}")
        if not self.latency_budget_ms >= 0:
            raise ValueError(f"latency_budget_ms must be >= 0, got {self.latency_budget_ms}")


class SearchService:
    """Answers a query (no HTTP here: `make_server` puts it behind one). cache and expander are
    optional; both are shared by the request threads."""

    def __init__(self, engine: SearchEngine, cache: ExpansionCache | None = None,
                 expander: OnlineExpander | None = None, config: ServiceConfig = ServiceConfig()):
        self.engine, self.cache, self.expander, self.config = engine, cache, expander, config

    def _online(self, key: str, query: str, start: float) -> tuple[tuple[str, ...], str, str]:
        """(expansions, source, status) of a cache miss with an online policy."""
        answer = self.expander.generated(key)
        if answer is None:
            left = self.config.latency_budget_ms / 1000 - (time.perf_counter() - start)
            fits = self.expander.expected_wait_s() <= left
            future = self.expander.submit(key, query)  # queued even if late: ready next time
            if future is None or not fits:
                return (), "none", "budget"
            try:
                answer = future.result(timeout=max(0.0, left))
            except TimeoutError:
                return (), "none", "budget"
            except Exception:  # the batcher logged it
                return (), "none", "error"
        return answer.expansions, "generated", answer.reason or "ok"

    def search(self, query: str, k: int) -> dict:
        """The response body of GET /search (module docstring) for a valid query and k."""
        start = time.perf_counter()
        key = normalise(query)
        entry = self.cache.get(key) if self.cache is not None else None
        looked_up = time.perf_counter()
        if entry is not None:
            expansions, source, status = entry.expansions, "cache", entry.status
        elif self.expander is not None:
            expansions, source, status = self._online(key, query, start)
        else:
            expansions, source, status = (), "none", "miss"
        expanded = time.perf_counter()
        merged = merged_ranking(ranked_lists(self.engine, query, expansions,
                                             self.config.search_k))
        products = self.engine.catalog.products
        results = [{"product_id": products[r].product_id, "title": products[r].title}
                   for r in merged[:k]]
        done = time.perf_counter()
        return {"query": query, "key": key, "k": k, "source": source, "status": status,
                "expansions": list(expansions), "results": results, "retrieved": len(merged),
                "timings_ms": {"lookup": _ms(start, looked_up),
                               "expand": _ms(looked_up, expanded),
                               "search": _ms(expanded, done), "total": _ms(start, done)}}

    def health(self) -> dict:
        return {"status": "ok", "cache": 0 if self.cache is None else len(self.cache),
                "online": None if self.expander is None else self.expander.stats()}


def _ms(start: float, end: float) -> float:
    return round(1000 * (end - start), 3)


class BadRequest(Exception):
    """A request the service refuses: HTTP `status` (4xx) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_search(target: str, config: ServiceConfig) -> tuple[str, int]:
    """(q, k) of a request target "/search?q=...&k=..." (http.server's path: the request line's
    bytes as Latin-1); BadRequest otherwise (module docstring)."""
    if not target.isascii():  # raw, unescaped bytes: accepted if they are UTF-8
        try:
            target = target.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise BadRequest(400, "the request target is not UTF-8") from None
    url = urllib.parse.urlsplit(target)
    if url.path != "/search":
        raise BadRequest(404, f"no such path {url.path[:100]!r}: GET /search?q=...&k=...")
    try:
        params = urllib.parse.parse_qs(url.query, keep_blank_values=True, errors="strict",
                                       max_num_fields=16)
    except UnicodeDecodeError:
        raise BadRequest(400, "a parameter is not percent-encoded UTF-8") from None
    except ValueError as e:  # more than max_num_fields
        raise BadRequest(400, str(e)) from None
    qs = params.get("q")
    if not qs:
        raise BadRequest(400, "missing q: GET /search?q=...&k=...")
    if len(qs) > 1:
        raise BadRequest(400, "q is given more than once")
    q = qs[0]
    if not q.strip():
        raise BadRequest(400, "q is empty")
    if len(q) > config.max_query_chars:
        raise BadRequest(400, f"q has {len(q):,} characters, more than {config.max_query_chars:,}")
    ks = params.get("k", [str(config.default_k)])
    if len(ks) > 1:
        raise BadRequest(400, "k is given more than once")
    k = ks[0].strip()
    if not (k.isascii() and k.isdigit() and len(k) < 10 and 1 <= int(k) <= config.max_k):
        raise BadRequest(400, f"k must be an integer in [1, {config.max_k}], got {k[:20]!r}")
    return q, int(k)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /search and /health as JSON; every other method 405 (module docstring)."""

    protocol_version = "HTTP/1.1"  # keep-alive: a client's requests share a connection
    # A request line without a version gets a status line (HTTP/0.9's bare body hides the 400).
    default_request_version = "HTTP/1.0"
    timeout = 60  # seconds an idle keep-alive connection holds its thread
    # Headers and body are two writes: with Nagle's algorithm the body waits for the client's
    # delayed ACK of the headers, on every keep-alive response.
    disable_nagle_algorithm = True
    service: SearchService  # set by make_server's subclass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            if status == 405:
                self.send_header("Allow", "GET")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client left; nothing to answer
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        try:
            if urllib.parse.urlsplit(self.path).path == "/health":
                return self._send(200, self.service.health())
            q, k = parse_search(self.path, self.service.config)
            self._send(200, self.service.search(q, k))
        except BadRequest as e:
            self._send(e.status, {"error": str(e)})
        except Exception:
            log.exception("request %r failed", self.path[:200])
            self._send(500, {"error": "internal error (logged by the server)"})

    def _not_allowed(self) -> None:
        self.close_connection = True  # an unread request body must not be taken for a request
        self._send(405, {"error": f"method {self.command[:20]!r} is not allowed: "
                                  "GET /search?q=..."})

    def __getattr__(self, name: str):
        # http.server answers a method without a do_METHOD with 501, a 5xx: every one is ours.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """http.server's own refusals (a malformed request line, a target over 64 KiB: 400,
        414, 431) as JSON, like ours."""
        self.close_connection = True
        self._send(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s " + format, self.address_string(), *args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a hung client never blocks shutdown
    request_queue_size = 128  # the listen backlog: bursts of connections wait, not fail


def make_server(service: SearchService, host: str = "127.0.0.1",
                port: int = 0) -> http.server.ThreadingHTTPServer:
    """A server for `service` bound to host:port (0: a free port, `server.server_address[1]`);
    run it with serve_forever() (in a thread for tests), stop it with shutdown()."""
    handler = type("Handler", (_Handler,), {"service": service})
    return _Server((host, port), handler)
