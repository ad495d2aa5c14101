//! Arrow IPC encapsulated messages as the WAL stores them: the bytes a client
//! sent in `FlightData` (`data_header` flatbuffer + `data_body`), framed as
//!
//! ```text
//! 0xFFFFFFFF  u32 metadata_len (8-aligned)  metadata + zero pad  body
//! ```
//! so a frame payload is a valid Arrow IPC stream fragment. A data frame of
//! version 2 ends with a producer trailer after its IPC messages, the
//! idempotent producer's id and sequence number for the batch, under the
//! same checksum (so a batch and its sequence number are durable together):
//!
//! ```text
//! "LBPS"  u16 id_len  u16 0  u64 seq  id  zero pad to 8
//! ```

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::limits::BODY_BLOCK_BYTES;

const CONTINUATION: [u8; 4] = [0xFF; 4];
const PRODUCER_MAGIC: [u8; 4] = *b"LBPS";
const PRODUCER_TRAILER_HEADER_BYTES: usize = 16;

/// Bytes the producer trailer of an id of `id_len` bytes takes.
pub fn producer_trailer_len(id_len: usize) -> usize {
    (PRODUCER_TRAILER_HEADER_BYTES + id_len).next_multiple_of(8)
}

/// Writes the producer trailer at the start of `out`; returns its length.
pub fn write_producer_trailer(out: &mut [u8], id: &str, seq: u64) -> usize {
    let len = producer_trailer_len(id.len());
    out[0..4].copy_from_slice(&PRODUCER_MAGIC);
    out[4..6].copy_from_slice(&(id.len() as u16).to_le_bytes());
    out[6..8].fill(0);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..16 + id.len()].copy_from_slice(id.as_bytes());
    out[16 + id.len()..len].fill(0);
    len
}

/// One IPC message: flatbuffer metadata and body, as they came off the wire.
#[derive(Debug, Clone)]
pub struct IpcMessage {
    pub header: Bytes,
    pub body: Bytes,
    /// `body` followed by zeros up to a multiple of [`BODY_BLOCK_BYTES`], in
    /// memory aligned to it (see [`IpcMessage::with_aligned_body`]): the WAL
    /// writes this memory as it is instead of copying the body.
    pub padded_body: Option<Bytes>,
}

/// Memory aligned to [`BODY_BLOCK_BYTES`], as the owner of a `Bytes`; back
/// to the body pool when the last reference goes.
struct AlignedBody(Option<super::body_pool::Body>);

impl AsRef<[u8]> for AlignedBody {
    fn as_ref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl Drop for AlignedBody {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            super::body_pool::give(v);
        }
    }
}

impl IpcMessage {
    pub fn new(header: Bytes, body: Bytes) -> Self {
        Self { header, body, padded_body: None }
    }

    /// The message with its body copied, once, into memory aligned to
    /// [`BODY_BLOCK_BYTES`] and zero-padded to a multiple of it. The columns
    /// decoded from `body` and the WAL's write of `padded_body` then share
    /// that memory (frame version 3).
    pub fn with_aligned_body(header: Bytes, body: &[u8]) -> Self {
        let padded = body.len().next_multiple_of(BODY_BLOCK_BYTES);
        let mut v = super::body_pool::take(padded);
        v.extend_from_slice(body);
        v.resize(padded, 0);
        let padded_body = Bytes::from_owner(AlignedBody(Some(v)));
        Self { header, body: padded_body.slice(..body.len()), padded_body: Some(padded_body) }
    }

    /// Bytes of the encapsulated message's prefix: continuation marker,
    /// metadata length and the metadata padded to 8 bytes.
    pub fn prefix_len(&self) -> usize {
        8 + self.header.len().next_multiple_of(8)
    }

    /// Writes the message's prefix with its metadata padded to `meta_len`
    /// bytes (a multiple of 8, at least the metadata's own), so that the
    /// body after it can start at an aligned offset; returns its length.
    pub fn write_prefix_to(&self, out: &mut [u8], meta_len: usize) -> usize {
        debug_assert!(meta_len % 8 == 0 && meta_len >= self.header.len());
        out[0..4].copy_from_slice(&CONTINUATION);
        out[4..8].copy_from_slice(&(meta_len as u32).to_le_bytes());
        out[8..8 + self.header.len()].copy_from_slice(&self.header);
        out[8 + self.header.len()..8 + meta_len].fill(0);
        8 + meta_len
    }

    /// Bytes the encapsulated message occupies.
    pub fn encoded_len(&self) -> usize {
        8 + self.header.len().next_multiple_of(8) + self.body.len()
    }

    /// Writes the encapsulated message to the start of `out`; returns its length.
    pub fn write_to(&self, out: &mut [u8]) -> usize {
        let body_at = self.write_prefix_to(out, self.header.len().next_multiple_of(8));
        out[body_at..body_at + self.body.len()].copy_from_slice(&self.body);
        body_at + self.body.len()
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.encoded_len()];
        self.write_to(&mut v);
        v
    }

    /// Encodes a batch the engine holds (re-logging after a shard-count
    /// change). Dictionary columns are refused earlier, at the gateway.
    pub fn from_batch(batch: &RecordBatch) -> Result<Self> {
        let gen = IpcDataGenerator::default();
        let mut tracker = DictionaryTracker::new(false);
        let mut context = IpcWriteContext::default();
        let (dicts, encoded) =
            gen.encode(batch, &mut tracker, &IpcWriteOptions::default(), &mut context).map_err(Error::Arrow)?;
        if !dicts.is_empty() {
            return Err(Error::InvalidInput("dictionary-encoded columns are not supported".into()));
        }
        Ok(Self::new(encoded.ipc_message.into(), encoded.arrow_data.into()))
    }
}

/// The encapsulated schema message written before a dataset's first batch in
/// each segment.
pub fn schema_message(schema: &Schema) -> Vec<u8> {
    let gen = IpcDataGenerator::default();
    let mut tracker = DictionaryTracker::new(false);
    let encoded = gen.schema_to_bytes_with_dictionary_tracker(schema, &mut tracker, &IpcWriteOptions::default());
    IpcMessage::new(encoded.ipc_message.into(), encoded.arrow_data.into()).to_vec()
}

/// Decodes a record batch message's `body` (no dictionaries: they are
/// refused at the gateway). Columns are sliced from `body`, not copied, where
/// it is aligned for them.
pub fn read_batch(
    body: &arrow::buffer::Buffer,
    header: arrow::ipc::RecordBatch<'_>,
    schema: arrow::datatypes::SchemaRef,
    version: arrow::ipc::MetadataVersion,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    arrow::ipc::reader::read_record_batch(body, header, schema, &std::collections::HashMap::new(), None, &version)
}

/// A message read back from a frame payload.
pub enum Decoded {
    Schema(arrow::datatypes::SchemaRef),
    Batch(RecordBatch),
    /// The idempotent producer and sequence number of the frame's batch.
    Producer {
        id: String,
        seq: u64,
    },
}

/// How a frame's payload is laid out (by frame version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadLayout {
    /// Versions 1 and 2: IPC messages back to back, a producer trailer (if
    /// any) last.
    Packed,
    /// Version 3: a producer trailer (if any) first, then the IPC messages,
    /// the last one's body at an aligned offset, then zeros to the end.
    AlignedBody,
}

/// Splits a frame payload into its encapsulated IPC messages and decodes
/// each. `schema` is the dataset's schema so far; record batches need one.
/// Array data is sliced from `payload`, not copied.
pub fn decode_payload(
    payload: &arrow::buffer::Buffer,
    layout: PayloadLayout,
    mut schema: Option<arrow::datatypes::SchemaRef>,
    mut out: impl FnMut(Decoded),
) -> std::result::Result<(), String> {
    use arrow::ipc::MessageHeader;
    let mut at = 0usize;
    let bytes = payload.as_slice();
    while at < bytes.len() {
        if layout == PayloadLayout::AlignedBody && at > 0 && bytes[at..].iter().all(|&b| b == 0) {
            // The body's padding up to the block after it.
            break;
        }
        let word = |i: usize| -> std::result::Result<u32, String> {
            bytes
                .get(i..i + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .ok_or_else(|| format!("message cut short at {i}"))
        };
        if word(at)? == u32::from_le_bytes(PRODUCER_MAGIC) {
            let id_len = (word(at + 4)? & 0xFFFF) as usize;
            let end = at + producer_trailer_len(id_len);
            let placed = match layout {
                PayloadLayout::Packed => end == bytes.len(),
                PayloadLayout::AlignedBody => at == 0 && end < bytes.len(),
            };
            if !placed {
                return Err(format!("producer trailer at payload offset {at} is out of place"));
            }
            let seq = u64::from(word(at + 8)?) | (u64::from(word(at + 12)?) << 32);
            let id = std::str::from_utf8(
                &bytes[at + PRODUCER_TRAILER_HEADER_BYTES..at + PRODUCER_TRAILER_HEADER_BYTES + id_len],
            )
            .map_err(|_| "producer id is not UTF-8")?;
            out(Decoded::Producer { id: id.to_owned(), seq });
            if layout == PayloadLayout::Packed {
                return Ok(());
            }
            at = end;
            continue;
        }
        if word(at)? != u32::from_le_bytes(CONTINUATION) {
            return Err(format!("no IPC continuation marker at payload offset {at}"));
        }
        let meta_len = word(at + 4)? as usize;
        let meta_start = at + 8;
        let meta = bytes.get(meta_start..meta_start + meta_len).ok_or("IPC metadata runs past the payload")?;
        let message = arrow::ipc::root_as_message(meta).map_err(|e| format!("IPC metadata: {e}"))?;
        let body_start = meta_start + meta_len;
        let body_len = usize::try_from(message.bodyLength()).map_err(|_| "negative IPC body length")?;
        if body_start + body_len > bytes.len() {
            return Err("IPC body runs past the payload".into());
        }
        match message.header_type() {
            MessageHeader::Schema => {
                let fb = message.header_as_schema().ok_or("unreadable IPC schema")?;
                let s = schema_from_fb(fb)?;
                let s = std::sync::Arc::new(s);
                schema = Some(s.clone());
                out(Decoded::Schema(s));
            }
            MessageHeader::RecordBatch => {
                let fb = message.header_as_record_batch().ok_or("unreadable IPC record batch")?;
                let schema = schema.clone().ok_or("record batch before its schema")?;
                let body = payload.slice_with_length(body_start, body_len);
                let batch =
                    read_batch(&body, fb, schema, message.version()).map_err(|e| format!("IPC record batch: {e}"))?;
                out(Decoded::Batch(batch));
            }
            other => return Err(format!("unexpected IPC message {:?} in WAL", other.variant_name())),
        }
        at = body_start + body_len;
    }
    Ok(())
}

/// arrow 59's `fb_to_schema` unwraps and `unimplemented!`s on schemas it
/// cannot convert (a missing field list, a big-endian decimal, an unknown
/// type); arrow 60's fallible `try_fb_to_schema` is not there. A schema comes
/// from a client, so its panic is caught here and answered as bad input.
fn schema_from_fb(fb: arrow::ipc::Schema<'_>) -> Result<arrow::datatypes::Schema, String> {
    if fb.fields().is_none() {
        return Err("IPC schema: no field list".into());
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| arrow::ipc::convert::fb_to_schema(fb))).map_err(|cause| {
        let why = cause
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| cause.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unsupported".into());
        format!("IPC schema: {why}")
    })
}
