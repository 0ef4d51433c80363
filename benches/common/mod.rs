//! Fixtures shared by the benches: request bytes, head limits, and config
//! text. Included with `mod common;` by each bench; not every bench uses every
//! item.
#![allow(dead_code)]

use coregate::config::raw::{
    DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_REQUEST_LINE_BYTES,
};
use coregate::http::parse::HeadLimits;

/// The server's default limits, as a shard builds them from the plan.
pub fn default_limits() -> HeadLimits {
    HeadLimits {
        max_request_line: DEFAULT_MAX_REQUEST_LINE_BYTES,
        max_head: DEFAULT_MAX_HEADER_BYTES,
        max_headers: DEFAULT_MAX_HEADERS,
    }
}

/// What `wrk` sends: the smallest realistic keep-alive request.
pub const SMALL_GET: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// A browser navigation with 20 headers (Chrome-like, cookies included).
pub fn browser_request(path: &str) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(b"GET ");
    r.extend_from_slice(path.as_bytes());
    r.extend_from_slice(
        b" HTTP/1.1\r\n\
Host: api.example.com\r\n\
Connection: keep-alive\r\n\
Cache-Control: max-age=0\r\n\
sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n\
sec-ch-ua-mobile: ?0\r\n\
sec-ch-ua-platform: \"Linux\"\r\n\
Upgrade-Insecure-Requests: 1\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-User: ?1\r\n\
Sec-Fetch-Dest: document\r\n\
Referer: https://api.example.com/pets\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en-US;q=0.9,en;q=0.8\r\n\
Cookie: session=9f2c1e7a5b3d4c6e8f0a1b2c3d4e5f60; theme=dark; _ga=GA1.1.123456789.1700000000\r\n\
If-None-Match: W/\"5e-18f2a3b4c5d\"\r\n\
If-Modified-Since: Tue, 14 May 2024 10:00:00 GMT\r\n\
X-Forwarded-For: 198.51.100.7\r\n\
\r\n",
    );
    r
}

/// A small gateway config: one mock route, and proxied routes (static,
/// parameter and greedy) to an upstream on loopback. Nothing connects: the
/// benches only route and render.
pub const PIPELINE_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
shards = 1
cpus = [0]

[[upstreams]]
name = "petstore"
targets = [{ address = "127.0.0.1:9000" }]

[[apis]]
name = "demo"

[[apis.routes]]
key = "GET /health"
integration = { type = "mock", status = 200, headers = { "content-type" = "application/json" }, body = '{"ok":true}' }

[[apis.routes]]
key = "GET /pets"
integration = { type = "http_proxy", url = "http://petstore/pets" }

[[apis.routes]]
key = "GET /pets/{id}"
integration = { type = "http_proxy", url = "http://petstore/pets/{id}" }

[[apis.routes]]
key = "ANY /files/{proxy+}"
integration = { type = "http_proxy", url = "http://petstore/static/{proxy}" }
"#;
