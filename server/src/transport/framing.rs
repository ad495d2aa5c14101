//! gRPC framing on the way in: a request body that hands a message to
//! tonic's decoder only once all of it has arrived.
//!
//! Each gRPC message is a 5-byte prefix (compression flag, big-endian
//! length) and a body. tonic's `Streaming` decoder reserves a buffer of the
//! declared length as soon as it has read the prefix
//! (`tonic-0.14.9/src/codec/decode.rs`: `self.buf.reserve(len)` in
//! `decode_chunk`, right after the length check), before any of the body
//! arrives. A client that declares a message just under the size limit and
//! sends one byte of it made the server allocate that limit per stream (100
//! such streams: 65 -> 946 MiB of RSS for 27 KiB of traffic). tonic has no
//! setting against it: `BufferSettings` only sizes the initial buffer and
//! the growth step of decompression.
//!
//! [`WholeMessages`] sits between hyper's body and that decoder. It keeps
//! the chunks of the message being received (h2's own `Bytes`, not copied;
//! small chunks are packed together so that many tiny DATA frames cost no
//! more than their bytes) and passes them on, prefix first, when the last
//! byte is there. tonic then reserves the length of bytes that really
//! arrived. A message longer than the limit is passed on at once, so tonic
//! refuses it at its prefix, as before. Nothing is added to latency: tonic
//! decodes a message only once it is whole anyway. The cost: while tonic
//! copies a completed message into its buffer, the message is briefly held
//! twice (the chunks are freed as they are copied); tonic's own copy was
//! spread over the message's arrival.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame};

/// Compression flag (1 byte) and length (4 bytes, big-endian).
pub const PREFIX_BYTES: usize = 5;

/// Chunks under this size are copied into a packing buffer instead of being
/// kept as they are: a 1-byte DATA frame then costs about a byte, not a
/// `Bytes` handle that pins h2's frame buffer.
const PACK_CHUNK_BYTES_MAX: usize = 4 << 10;

/// A packing buffer is sealed (and a new one started) at this size.
const PACK_BUFFER_BYTES: usize = 16 << 10;

enum State {
    /// Reading a prefix; `have` of its bytes seen.
    Prefix { have: usize, bytes: [u8; PREFIX_BYTES] },
    /// Reading a body; `held`: kept until complete (false: over the limit,
    /// passed straight on for tonic to refuse).
    Body { remaining: usize, held: bool },
}

impl State {
    fn start() -> State {
        State::Prefix { have: 0, bytes: [0; PREFIX_BYTES] }
    }
}

pub struct WholeMessages<B> {
    inner: B,
    message_bytes_max: usize,
    state: State,
    /// The part of the message being received that has arrived.
    held: VecDeque<Bytes>,
    /// Small chunks of it, packed.
    packing: BytesMut,
    /// Chunks the decoder may have, in order.
    ready: VecDeque<Bytes>,
    /// The body ended (or trailers came): what is held goes out, then this.
    ended: bool,
    trailers: Option<Frame<Bytes>>,
}

impl<B> WholeMessages<B> {
    pub fn new(inner: B, message_bytes_max: usize) -> Self {
        Self {
            inner,
            message_bytes_max,
            state: State::start(),
            held: VecDeque::new(),
            packing: BytesMut::new(),
            ready: VecDeque::new(),
            ended: false,
            trailers: None,
        }
    }

    /// Bytes received and not yet handed on (tests).
    pub fn held_bytes(&self) -> usize {
        self.held.iter().map(Bytes::len).sum::<usize>() + self.packing.len()
    }

    fn hold(&mut self, chunk: Bytes) {
        if chunk.len() > PACK_CHUNK_BYTES_MAX {
            self.seal_packing();
            self.held.push_back(chunk);
            return;
        }
        if self.packing.len() + chunk.len() > PACK_BUFFER_BYTES {
            self.seal_packing();
        }
        self.packing.extend_from_slice(&chunk);
    }

    fn seal_packing(&mut self) {
        if !self.packing.is_empty() {
            self.held.push_back(self.packing.split().freeze());
        }
    }

    /// The held message (or what arrived of it) goes to the decoder.
    fn release(&mut self) {
        self.seal_packing();
        self.ready.extend(self.held.drain(..));
    }

    fn push(&mut self, mut chunk: Bytes) {
        while !chunk.is_empty() {
            match &mut self.state {
                State::Prefix { have, bytes } => {
                    let n = (PREFIX_BYTES - *have).min(chunk.len());
                    bytes[*have..*have + n].copy_from_slice(&chunk[..n]);
                    *have += n;
                    let complete = *have == PREFIX_BYTES;
                    let declared = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
                    self.hold(chunk.split_to(n));
                    if complete {
                        let held = declared <= self.message_bytes_max;
                        if !held {
                            // tonic refuses it on reading the prefix, before reserving.
                            self.release();
                        }
                        self.state = State::Body { remaining: declared, held };
                        self.end_message_if_complete();
                    }
                }
                State::Body { remaining, held } => {
                    let n = (*remaining).min(chunk.len());
                    *remaining -= n;
                    let part = chunk.split_to(n);
                    if *held {
                        self.hold(part);
                    } else {
                        self.ready.push_back(part);
                    }
                    self.end_message_if_complete();
                }
            }
        }
    }

    fn end_message_if_complete(&mut self) {
        if let State::Body { remaining: 0, .. } = self.state {
            self.release();
            self.state = State::start();
        }
    }
}

impl<B> Body for WholeMessages<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.ended {
                if !this.held.is_empty() || !this.packing.is_empty() {
                    // A message cut short: the decoder reports the truncation.
                    this.release();
                    continue;
                }
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => this.ended = true,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let chunk = data.copy_to_bytes(data.remaining());
                        this.push(chunk);
                    }
                    Err(trailers) => {
                        this.ended = true;
                        this.trailers = Some(trailers);
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty()
            && self.held.is_empty()
            && self.packing.is_empty()
            && self.trailers.is_none()
            && (self.ended || self.inner.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A body that yields the given chunks, then ends.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn message(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What the decoder would see: the frames, as byte strings.
    fn run(chunks: Vec<Vec<u8>>, limit: usize) -> Vec<Vec<u8>> {
        let mut body = WholeMessages::new(Chunks(chunks.into_iter().map(Bytes::from).collect()), limit);
        let mut out = Vec::new();
        futures::executor::block_on(futures::future::poll_fn(|cx| loop {
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => out.push(f.into_data().unwrap().to_vec()),
                Poll::Ready(Some(Err(e))) => match e {},
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }));
        out
    }

    #[test]
    fn messages_pass_whole_and_in_order_however_they_are_cut() {
        let stream: Vec<u8> = [message(b"hello"), message(b""), message(&[7; 10_000])].concat();
        for cut in [1, 2, 3, 5, 6, 7, 4096, 4097, 9000, stream.len()] {
            let chunks: Vec<Vec<u8>> = stream.chunks(cut).map(<[u8]>::to_vec).collect();
            let out = run(chunks, 1 << 20);
            assert_eq!(out.concat(), stream, "cut {cut}");
        }
    }

    #[test]
    fn nothing_of_a_message_goes_on_before_its_last_byte() {
        let m = message(&[1; 100]);
        let mut body = WholeMessages::new(Chunks(VecDeque::new()), 1 << 20);
        body.push(Bytes::copy_from_slice(&m[..50]));
        assert!(body.ready.is_empty(), "half a message is held");
        assert_eq!(body.held_bytes(), 50);
        body.push(Bytes::copy_from_slice(&m[50..]));
        assert_eq!(body.ready.iter().map(|c| c.to_vec()).collect::<Vec<_>>().concat(), m);
        assert_eq!(body.held_bytes(), 0);
    }

    #[test]
    fn a_declared_length_costs_nothing_until_bytes_arrive() {
        // A prefix declaring just under 64 MiB and one byte of body: what is
        // held is what arrived.
        let mut body = WholeMessages::new(Chunks(VecDeque::new()), 64 << 20);
        let mut prefix = vec![0];
        prefix.extend_from_slice(&((64u32 << 20) - 1).to_be_bytes());
        prefix.push(42);
        body.push(Bytes::from(prefix));
        assert!(body.ready.is_empty());
        assert_eq!(body.held_bytes(), 6);
        assert!(body.packing.capacity() < 1024, "no buffer of the declared size: {}", body.packing.capacity());
    }

    #[test]
    fn tiny_frames_are_packed() {
        let m = message(&[3; 50_000]);
        let mut body = WholeMessages::new(Chunks(VecDeque::new()), 1 << 20);
        for b in &m[..40_000] {
            body.push(Bytes::copy_from_slice(std::slice::from_ref(b)));
        }
        assert!(body.held.len() <= 40_000 / PACK_BUFFER_BYTES + 1, "{} chunks held", body.held.len());
        assert_eq!(body.held_bytes(), 40_000);
    }

    #[test]
    fn a_message_over_the_limit_goes_on_at_its_prefix_and_a_cut_one_at_the_end() {
        let big = message(&[9; 100]);
        let out = run(vec![big[..10].to_vec()], 50);
        assert_eq!(out.concat(), big[..10].to_vec(), "passed on for tonic to refuse");
        let cut = message(&[9; 100]);
        let out = run(vec![cut[..30].to_vec()], 1000);
        assert_eq!(out.concat(), cut[..30].to_vec(), "at the end, what arrived goes on");
    }
}
