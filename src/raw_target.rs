//! Raw `>` in a request's path (SPEC 6: subjects "raw or percent-encoded").
//!
//! `curl http://localhost:8080/v1/subjects/orders.>/messages` sends the `>`
//! as is. hyper parses the request target with the `http` crate, whose URI
//! grammar refuses `<`, `>` and `` ` `` and answers a bare 400 before any
//! route runs; neither offers a lenient mode. [`RawTarget`] wraps each
//! accepted connection and percent-encodes those three bytes in the request
//! target of every request head before hyper reads it, which is what a
//! browser or any URL library does anyway: the routes then see `%3E` and
//! decode it as they decode every other escape.
//!
//! To find every request head on a kept-alive connection it follows the
//! framing: a head (parsed with `httparse`, the parser hyper itself uses),
//! then exactly `Content-Length` bytes of body, then the next head. Whatever
//! it does not follow exactly (`Transfer-Encoding`, `Upgrade`, `CONNECT`, a
//! missing or doubtful length, a head that does not parse or is too large)
//! makes it step aside for the rest of the connection: bytes then pass
//! untouched and hyper answers as it always did. Body bytes are never
//! changed. Reads go straight into hyper's buffer, and what needs no change
//! (bodies, heads without those bytes: nearly everything) stays there, so
//! a request costs no copy; a head to escape is taken back and rewritten.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// At most 100 header lines, as hyper allows.
const MAX_HEADERS: usize = 100;
/// Room made in `input` before a read when less than `READ_AT_LEAST` is
/// free: a whole head of the usual size in one read.
const READ_CHUNK: usize = 2048;
const READ_AT_LEAST: usize = 512;

enum State {
    /// Reading a request head.
    Head,
    /// This many body bytes before the next head.
    Body(u64),
    /// Following no more: bytes pass as they come.
    Aside,
}

/// A connection whose request targets get `<`, `>` and `` ` `` escaped.
pub struct RawTarget<S> {
    inner: S,
    state: State,
    /// Read but not yet handed on (a partial head, or what follows one).
    input: BytesMut,
    /// Ready to hand on.
    output: BytesMut,
    max_head: usize,
}

impl<S> RawTarget<S> {
    /// `max_head`: the largest head hyper accepts; a longer one is handed
    /// over as is, for hyper to refuse.
    pub fn new(inner: S, max_head: usize) -> Self {
        RawTarget {
            inner,
            state: State::Head,
            input: BytesMut::new(),
            output: BytesMut::new(),
            max_head,
        }
    }

    /// Follows the framing over `bytes`, just read, as far as they can be
    /// handed on unchanged: bodies, and whole heads whose target has none
    /// of the bytes to escape. Returns how many that is.
    fn pass(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        loop {
            match self.state {
                State::Aside => return bytes.len(),
                State::Body(n) => {
                    let take = usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - at);
                    at += take;
                    self.state = match n - take as u64 {
                        0 => State::Head,
                        left => State::Body(left),
                    };
                    if at == bytes.len() {
                        return at;
                    }
                }
                State::Head => {
                    if at == bytes.len() {
                        return at;
                    }
                    match head(&bytes[at..]) {
                        Head::Complete { len, target, body }
                            if !needs_escape(&bytes[at + target.0..at + target.1]) =>
                        {
                            at += len;
                            self.state = match body {
                                Some(0) => State::Head,
                                Some(n) => State::Body(n),
                                None => State::Aside,
                            };
                        }
                        Head::Unfollowed => {
                            self.state = State::Aside;
                            return bytes.len();
                        }
                        // To escape, or not whole yet: `process` goes on.
                        _ => return at,
                    }
                }
            }
        }
    }

    /// Moves what `input` holds to `output` as far as the framing allows.
    fn process(&mut self) {
        loop {
            match self.state {
                State::Aside => {
                    self.output.extend_from_slice(&self.input);
                    self.input.clear();
                    return;
                }
                State::Body(n) => {
                    let take = usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .min(self.input.len());
                    if take == 0 && n > 0 {
                        return;
                    }
                    self.output.extend_from_slice(&self.input[..take]);
                    self.input.advance(take);
                    self.state = match n - take as u64 {
                        0 => State::Head,
                        left => State::Body(left),
                    };
                }
                State::Head => {
                    if self.input.is_empty() {
                        return;
                    }
                    match head(&self.input) {
                        Head::Partial if self.input.len() <= self.max_head => return,
                        Head::Partial | Head::Unfollowed => {
                            self.state = State::Aside;
                        }
                        Head::Complete { len, target, body } => {
                            let (start, end) = target;
                            let head = &self.input[..len];
                            self.output.extend_from_slice(&head[..start]);
                            escape(&head[start..end], &mut self.output);
                            self.output.extend_from_slice(&head[end..]);
                            self.input.advance(len);
                            self.state = match body {
                                Some(0) => State::Head,
                                Some(n) => State::Body(n),
                                None => State::Aside,
                            };
                        }
                    }
                }
            }
        }
    }
}

enum Head {
    Partial,
    /// A head this module does not follow (hyper decides about it).
    Unfollowed,
    Complete {
        len: usize,
        /// Where the target is in the head.
        target: (usize, usize),
        /// The body's length; `None` when it is not followed.
        body: Option<u64>,
    },
}

fn head(buf: &[u8]) -> Head {
    // Left uninitialised: httparse writes the ones it fills and the
    // request shows only those. Zeroing all 100 first was half of what
    // following a head cost (callgrind, 256 B publishes on 64
    // connections: 591 instructions per request, 312 without).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Unfollowed,
    };
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return Head::Unfollowed;
    };
    // The target is a slice of `buf`: its offset is where it starts.
    let start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let target = (start, start + path.len());
    let mut length: Option<u64> = None;
    let mut follow = !method.eq_ignore_ascii_case("CONNECT");
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = (!h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(h.value).ok()?.parse::<u64>().ok())
                .flatten();
            match (length, parsed) {
                (None, Some(n)) => length = Some(n),
                _ => follow = false,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("upgrade")
        {
            follow = false;
        }
    }
    Head::Complete {
        len,
        target,
        body: follow.then_some(length.unwrap_or(0)),
    }
}

/// Whether `target` has a byte that hyper refuses raw.
fn needs_escape(target: &[u8]) -> bool {
    target.iter().any(|b| matches!(b, b'<' | b'>' | b'`'))
}

/// Copies `target` with `<`, `>` and `` ` `` percent-encoded.
fn escape(target: &[u8], out: &mut BytesMut) {
    let mut rest = target;
    while let Some(i) = rest.iter().position(|b| matches!(b, b'<' | b'>' | b'`')) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(match rest[i] {
            b'<' => b"%3C",
            b'>' => b"%3E",
            _ => b"%60",
        });
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

impl<S: AsyncRead + Unpin> AsyncRead for RawTarget<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Nothing buffered: read straight into the caller's buffer and
            // hand on in place whatever needs no change (heads without those
            // bytes, bodies); the rest is taken back and goes through
            // `process`. Shrinking what was filled needs no zeroing, which
            // reading into a part of the buffer would.
            if this.input.is_empty() {
                let before = buf.filled().len();
                let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
                if let Poll::Ready(Ok(())) = polled {
                    let filled = buf.filled().len();
                    if filled > before {
                        let keep = before + this.pass(&buf.filled()[before..]);
                        if keep < filled {
                            this.input.extend_from_slice(&buf.filled()[keep..]);
                            buf.set_filled(keep);
                            this.process();
                            if keep == before {
                                continue;
                            }
                        }
                    }
                }
                return polled;
            }
            // Straight into `input`'s spare room (a buffer on the stack
            // would be zeroed on every poll, found or not).
            if this.input.capacity() - this.input.len() < READ_AT_LEAST {
                this.input.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.input) {
                Poll::Ready(Ok(0)) => {
                    // End of stream: hand on what is left as it is.
                    this.output.extend_from_slice(&this.input);
                    this.input.clear();
                    if this.output.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(_)) => this.process(),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RawTarget<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// What hyper would read from `input` arriving in pieces of `piece`.
    async fn through(input: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut wrapped = RawTarget::new(pieces(input, piece), 16 * 1024);
        wrapped.read_to_end(&mut out).await.expect("read");
        out
    }

    /// A reader handing out `input` `piece` bytes at a time.
    fn pieces(input: &[u8], piece: usize) -> Pieces {
        Pieces(input.chunks(piece.max(1)).map(<[u8]>::to_vec).collect())
    }

    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if let Some(mut p) = this.0.pop_front() {
                let n = p.len().min(buf.remaining());
                buf.put_slice(&p[..n]);
                if n < p.len() {
                    p.drain(..n);
                    this.0.push_front(p);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn targets_are_escaped_and_bodies_pass_untouched() {
        // A body that looks like a request head with a raw `>`, then a
        // pipelined second request.
        let body = b"GET /v1/x.> HTTP/1.1\r\n\r\n";
        let mut input = Vec::new();
        input.extend_from_slice(b"POST /v1/publish/a.> HTTP/1.1\r\nHost: x\r\nContent-Length: ");
        input.extend_from_slice(body.len().to_string().as_bytes());
        input.extend_from_slice(b"\r\n\r\n");
        input.extend_from_slice(body);
        input.extend_from_slice(b"GET /v1/subjects/<a>.`b`/messages?x=> HTTP/1.1\r\n\r\n");
        let mut want = Vec::new();
        want.extend_from_slice(b"POST /v1/publish/a.%3E HTTP/1.1\r\nHost: x\r\nContent-Length: ");
        want.extend_from_slice(body.len().to_string().as_bytes());
        want.extend_from_slice(b"\r\n\r\n");
        want.extend_from_slice(body);
        want.extend_from_slice(b"GET /v1/subjects/%3Ca%3E.%60b%60/messages?x=%3E HTTP/1.1\r\n\r\n");
        for piece in [1, 2, 7, 64, 4096] {
            assert_eq!(
                String::from_utf8_lossy(&through(&input, piece).await),
                String::from_utf8_lossy(&want),
                "in pieces of {piece}"
            );
        }
    }

    #[tokio::test]
    async fn a_read_past_the_body_hands_the_next_head_on_escaped() {
        // The head alone, then the body and the next head in one read: the
        // body goes straight to the caller, the next head is taken back and
        // escaped.
        let head = b"POST /v1/publish/a HTTP/1.1\r\nContent-Length: 4\r\n\r\n".to_vec();
        let rest = b"GET>GET /v1/subjects/a.>/last HTTP/1.1\r\n\r\n".to_vec();
        let mut wrapped = RawTarget::new(Pieces(vec![head.clone(), rest].into()), 16 * 1024);
        let mut out = Vec::new();
        wrapped.read_to_end(&mut out).await.expect("read");
        let mut want = head;
        want.extend_from_slice(b"GET>GET /v1/subjects/a.%3E/last HTTP/1.1\r\n\r\n");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want)
        );
    }

    #[tokio::test]
    async fn what_is_not_followed_passes_as_it_came() {
        let cases: [(&[u8], &[u8], &[u8]); 4] = [
            // Chunked: the rest of the connection is not touched.
            (
                b"POST /a> HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST /a%3E HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"5\r\nGET /b>\r\n0\r\n\r\nGET /c> HTTP/1.1\r\n\r\n",
            ),
            // Two lengths.
            (
                b"POST /a> HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"POST /a%3E HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"xyGET /c> HTTP/1.1\r\n\r\n",
            ),
            // A length that is not a plain number.
            (
                b"POST /a> HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                b"POST /a%3E HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                b"xGET /c> HTTP/1.1\r\n\r\n",
            ),
            // Not HTTP at all.
            (b"", b"", b"\x16\x03\x01 hello > there\r\n\r\n"),
        ];
        for (head, escaped, rest) in cases {
            let input = [head, rest].concat();
            let want = [escaped, rest].concat();
            assert_eq!(
                String::from_utf8_lossy(&through(&input, 3).await),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_head_is_handed_over_for_hyper_to_refuse() {
        let mut input = b"GET /a> HTTP/1.1\r\nX: ".to_vec();
        input.extend(std::iter::repeat_n(b'a', 40_000));
        input.extend_from_slice(b"\r\n\r\n");
        assert_eq!(through(&input, 4096).await, input);
    }

    /// Reads `wrapped` to its end with a caller buffer of `size` bytes.
    async fn read_all(wrapped: &mut RawTarget<Pieces>, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; size.max(1)];
        loop {
            let n = wrapped.read(&mut buf).await.expect("read");
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Requests with raw `<`, `>` and `` ` `` in their targets and
        /// bodies of any bytes (heads among them), arriving in pieces of any
        /// size and read with a buffer of any size: every target escaped,
        /// every body byte for byte.
        #[test]
        fn any_pieces_and_buffers_give_the_same_requests(
            requests in proptest::collection::vec(
                ("[a-z.<>`]{1,12}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), proptest::prelude::any::<bool>()),
                1..6,
            ),
            piece in 1usize..200,
            size in 1usize..300,
        ) {
            let (mut input, mut want) = (Vec::new(), Vec::new());
            for (target, body, looks_like_a_head) in &requests {
                let mut body = body.clone();
                if *looks_like_a_head {
                    body.extend_from_slice(b"GET /x> HTTP/1.1\r\n\r\n");
                }
                let head = |t: &str| format!("POST /v1/{t} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
                let escaped = target.replace('<', "%3C").replace('>', "%3E").replace('`', "%60");
                input.extend_from_slice(head(target).as_bytes());
                input.extend_from_slice(&body);
                want.extend_from_slice(head(&escaped).as_bytes());
                want.extend_from_slice(&body);
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let got = rt.block_on(async {
                let mut wrapped = RawTarget::new(pieces(&input, piece), 16 * 1024);
                read_all(&mut wrapped, size).await
            });
            proptest::prop_assert_eq!(got, want);
        }
    }
}
