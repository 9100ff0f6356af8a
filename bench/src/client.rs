//! The load generator's raw HTTP/1.1 client: requests serialised once ([`HitRequest`]) and sent
//! over bare keep-alive connections ([`HitClient`]), with no client library in between.

use std::time::Instant;

use anyhow::{Context, bail};

/// A request as [`HitClient`]s send it: its bytes on the wire, made once.
#[derive(Clone)]
pub struct HitRequest {
    pub addr: std::net::SocketAddr,
    bytes: bytes::Bytes,
}

impl HitRequest {
    pub fn post(addr: std::net::SocketAddr, path: &str, token: &str, body: &[u8]) -> Self {
        let mut bytes = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        Self {
            addr,
            bytes: bytes.into(),
        }
    }

    pub fn get(addr: std::net::SocketAddr, path: &str, token: &str) -> Self {
        let bytes =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
        Self {
            addr,
            bytes: bytes::Bytes::from(bytes),
        }
    }
}

/// One HTTP/1.1 keep-alive connection to the api, sending [`HitRequest`]s one at a time, as
/// `wrk` does: the request's bytes written as they are, the answer read up to its
/// `Content-Length`, one task, no client library. The load generator shares the two cores with
/// the service, so its own cost shows in the figures: a hyper client connection (a task of its
/// own per connection) costs ~12 µs of CPU per request, reqwest's pool ~18.
pub struct HitClient {
    /// Where a failed connection is opened again.
    addr: std::net::SocketAddr,
    stream: tokio::net::TcpStream,
    /// What was read of the answer (kept across requests: no allocation per request).
    buffer: Vec<u8>,
    /// Where the last answer's body starts in `buffer`.
    body_at: usize,
}

impl HitClient {
    async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            stream,
            buffer: Vec::with_capacity(4096),
            body_at: 0,
        })
    }

    pub async fn connect_many(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Vec<Self>> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(Self::connect(addr).await?);
        }
        Ok(clients)
    }

    /// Sends `request`, timed: the client back, whether it was answered with the status
    /// `expected`, and when it was due and answered.
    pub async fn send_due(
        mut self,
        request: HitRequest,
        expected: u16,
        due: Instant,
    ) -> (Self, bool, Instant, Instant) {
        let answered = self.send_or_reconnect(&request.bytes).await == Some(expected);
        (self, answered, due, Instant::now())
    }

    /// Sends `request` (its bytes on the wire) and reads the whole answer: its status. A
    /// connection that failed is replaced for the next request (and this one has none).
    async fn send_or_reconnect(&mut self, request: &[u8]) -> Option<u16> {
        match self.send(request).await {
            Ok(status) => status,
            Err(_) => {
                if let Ok(fresh) = Self::connect(self.addr).await {
                    *self = fresh;
                }
                None
            }
        }
    }

    /// Sends `request` and reads the whole answer: its status and body.
    pub async fn exchange(&mut self, request: &HitRequest) -> anyhow::Result<(u16, &[u8])> {
        let status = self
            .send(&request.bytes)
            .await?
            .context("an answer without a status")?;
        Ok((status, &self.buffer[self.body_at..]))
    }

    async fn send(&mut self, request: &[u8]) -> anyhow::Result<Option<u16>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(request).await?;
        self.buffer.clear();
        let (status, length) = loop {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the api closed the connection");
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buffer)? {
                let body = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .context("an answer without Content-Length")?;
                self.body_at = head;
                break (response.code, head + body);
            }
        };
        while self.buffer.len() < length {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the api closed the connection mid-answer");
            }
        }
        Ok(status)
    }
}
