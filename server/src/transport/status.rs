//! Two statuses tonic produces before a handler runs, corrected to the code
//! a client can act on.
//!
//! - A request message protobuf cannot decode (a `string` field such as a
//!   FlightDescriptor path element that is not UTF-8, or bytes that are not
//!   protobuf at all) is answered by tonic's codec with INTERNAL "failed to
//!   decode Protobuf message: …" (`tonic-prost-0.14.9/src/codec.rs`,
//!   `from_decode_error`). The decoding happens inside tonic (before a unary
//!   handler is called, or in `Streaming` for DoPut), so no handler can map
//!   it; and the FlightService trait fixes the prost types, so paths cannot
//!   be decoded as bytes instead. The client sent bytes that are wrong: it
//!   should not retry, so INVALID_ARGUMENT (pyarrow 26: `ArrowInvalid`;
//!   INTERNAL was `FlightInternalError`). tonic follows gRPC's
//!   statuscodes.md, which files a library's parse failure under INTERNAL;
//!   for a server, the bytes are the client's.
//! - A message over LONGBOW_MAX_MESSAGE_SIZE gets OUT_OF_RANGE "Error,
//!   decoded message length too large: …" from tonic's decoder, where the
//!   README promised INVALID_ARGUMENT like any other bad FlightData.
//!   pyarrow (its `FromGrpcCode`, arrow/flight/transport/grpc/
//!   util_internal.cc) raises `ArrowInvalid` for OUT_OF_RANGE,
//!   INVALID_ARGUMENT and RESOURCE_EXHAUSTED alike, so for pyarrow users
//!   only the code's name changes; other clients get the one code Longbow
//!   uses for input it will never accept.
//!
//! The status is in the response headers when the call fails before its
//! response starts (a trailers-only response), else in the trailers; both
//! are corrected, matched by code and tonic's message prefix only, so the
//! server's own statuses are never touched. The message is kept.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

/// tonic's statuses that are the client's mistake: (code, message prefix).
const CLIENT_ERRORS: &[(&[u8], &[u8])] =
    &[(b"13", b"failed to decode Protobuf message"), (b"11", b"Error, decoded message length too large")];

/// Whether a status (its code as `grpc-status` writes it, and its
/// message) is one of [`CLIENT_ERRORS`].
fn is_client_error(code: &[u8], message: &[u8]) -> bool {
    CLIENT_ERRORS.iter().any(|(c, prefix)| code == *c && message.starts_with(prefix))
}

/// Whether a handler's input stream ended with one of [`CLIENT_ERRORS`]:
/// tonic refused a message the client sent, and the connection is fine.
pub fn is_refused_message(status: &tonic::Status) -> bool {
    is_client_error((status.code() as i32).to_string().as_bytes(), status.message().as_bytes())
}

/// INVALID_ARGUMENT.
const INVALID_ARGUMENT: &str = "3";

/// `grpc-message` as sent: percent-encoded (tonic encodes spaces too).
fn percent_decoded(value: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match (value[i], value.get(i + 1).copied().and_then(hex), value.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Rewrites `grpc-status` in `headers` (response headers or trailers) if it
/// is one of [`CLIENT_ERRORS`]. Returns whether it did.
pub fn correct(headers: &mut HeaderMap) -> bool {
    let (Some(code), Some(message)) = (headers.get(GRPC_STATUS), headers.get(GRPC_MESSAGE)) else {
        return false;
    };
    let client_error = is_client_error(code.as_bytes(), &percent_decoded(message.as_bytes()));
    if client_error {
        headers.insert(GRPC_STATUS, HeaderValue::from_static(INVALID_ARGUMENT));
    }
    client_error
}

/// A response body whose trailers are corrected; it also carries what must
/// live as long as the response (the connection's stream count).
pub struct Corrected<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> Corrected<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Self { inner, _guard: guard }
    }
}

impl<B, G> Body for Corrected<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    G: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame.map(|r| {
            r.map(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    correct(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers tonic writes for a status (message percent-encoded).
    fn headers(code: &str, message: &str) -> HeaderMap {
        let status = tonic::Status::new(tonic::Code::from_bytes(code.as_bytes()), message);
        let mut h = HeaderMap::new();
        status.add_header(&mut h).unwrap();
        h
    }

    #[test]
    fn only_tonics_decode_and_length_errors_are_corrected() {
        for (code, message) in [
            ("13", "failed to decode Protobuf message: FlightDescriptor.path: invalid string value: data is not UTF-8 encoded"),
            ("11", "Error, decoded message length too large: found 70000000 bytes, the limit is: 67108864 bytes"),
        ] {
            assert!(is_refused_message(&tonic::Status::new(tonic::Code::from_bytes(code.as_bytes()), message)));
            let mut h = headers(code, message);
            let sent = h[GRPC_MESSAGE].clone();
            assert!(correct(&mut h));
            assert_eq!(h[GRPC_STATUS], "3");
            assert_eq!(h[GRPC_MESSAGE], sent, "the message is kept");
            assert_eq!(percent_decoded(sent.as_bytes()), message.as_bytes());
        }
        for (code, message) in [
            ("13", "snapshot failed, the WAL is kept"),
            ("11", "failed to decode Protobuf message"),
            ("14", "Error, decoded message length too large"),
            ("0", ""),
        ] {
            assert!(!is_refused_message(&tonic::Status::new(tonic::Code::from_bytes(code.as_bytes()), message)));
            let mut h = headers(code, message);
            assert!(!correct(&mut h), "{code} {message}");
            assert_eq!(h[GRPC_STATUS], code);
        }
        assert!(!correct(&mut HeaderMap::new()));
    }
}
