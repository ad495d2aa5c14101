//! Tickets and descriptors: how a request names a dataset. Pure.

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{FlightDescriptor, Ticket};
use longbow_engine::Lsn;
use serde::{Deserialize, Serialize};
use tonic::Status;

/// A DoGet ticket's JSON form. `{"dataset": name}` alone reads the whole
/// dataset as before; the other fields select rows:
/// - `columns`, `filter` (a SQL boolean expression), `limit`: a query
///   through the SQL planner;
/// - `min_lsn`/`max_lsn`: one endpoint of a parallel read (rows logged in
///   that LSN range);
/// - `after_lsn` with `follow: true`: the change feed.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketBody {
    pub dataset: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
}

/// What a DoGet ticket asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// The whole dataset, streamed as before (no planner).
    Whole(String),
    /// Through the planner: projection, filter, limit, and optionally only
    /// the rows logged in `lsns` (an endpoint of a parallel read).
    Query(TicketBody),
    /// Every batch logged after `after_lsn`, then new ones as they become
    /// durable.
    Follow { dataset: String, after_lsn: Lsn },
}

/// The ticket ListFlights and GetFlightInfo hand out: `{"dataset": name}`.
pub fn ticket_for(dataset: &str) -> Ticket {
    ticket_of(&TicketBody { dataset: dataset.to_owned(), ..Default::default() })
}

pub fn ticket_of(body: &TicketBody) -> Ticket {
    Ticket { ticket: serde_json::to_vec(body).expect("ticket serializes").into() }
}

/// Reads a ticket: the JSON form above, or the bare dataset name.
pub fn read_from_ticket(ticket: &[u8]) -> Result<Read, Status> {
    if ticket.first() == Some(&b'{') {
        if let Ok(body) = serde_json::from_slice::<TicketBody>(ticket) {
            return read_of(body);
        }
        if let Err(e) = serde_json::from_slice::<TicketBody>(ticket) {
            // JSON that is an object but not a ticket: say why.
            if serde_json::from_slice::<serde_json::Value>(ticket).is_ok_and(|v| v.is_object()) {
                return Err(Status::invalid_argument(format!("bad ticket: {e}")));
            }
        }
    }
    std::str::from_utf8(ticket)
        .map(|s| Read::Whole(s.to_owned()))
        .map_err(|_| Status::invalid_argument("ticket is neither {\"dataset\": name} JSON nor a UTF-8 dataset name"))
}

fn read_of(body: TicketBody) -> Result<Read, Status> {
    let query = !body.columns.is_empty() || body.filter.is_some() || body.limit.is_some();
    let range = body.min_lsn.is_some() || body.max_lsn.is_some();
    if body.follow || body.after_lsn.is_some() {
        if !body.follow {
            return Err(Status::invalid_argument("\"after_lsn\" needs \"follow\": true (the change feed)"));
        }
        if query || range {
            return Err(Status::invalid_argument(
                "a follow ticket takes only \"dataset\" and \"after_lsn\" (no columns, filter, limit or LSN range)",
            ));
        }
        return Ok(Read::Follow { dataset: body.dataset, after_lsn: body.after_lsn.unwrap_or(Lsn::ZERO) });
    }
    if let (Some(lo), Some(hi)) = (body.min_lsn, body.max_lsn) {
        if lo > hi {
            return Err(Status::invalid_argument(format!("min_lsn {lo} is above max_lsn {hi}")));
        }
    }
    Ok(if query || range { Read::Query(body) } else { Read::Whole(body.dataset) })
}

/// The dataset a ticket names.
pub fn dataset_from_ticket(ticket: &[u8]) -> Result<String, Status> {
    Ok(match read_from_ticket(ticket)? {
        Read::Whole(d) | Read::Follow { dataset: d, .. } => d,
        Read::Query(b) => b.dataset,
    })
}

/// A descriptor must be a path of exactly one element, the dataset name.
pub fn dataset_from_descriptor(d: Option<&FlightDescriptor>) -> Result<String, Status> {
    let d = d.ok_or_else(|| {
        Status::invalid_argument("missing FlightDescriptor: send a path descriptor naming the dataset")
    })?;
    match DescriptorType::try_from(d.r#type) {
        Ok(DescriptorType::Path) => {}
        _ => {
            return Err(Status::invalid_argument(
                "FlightDescriptor must be a PATH descriptor whose single element is the dataset name",
            ))
        }
    }
    match d.path.as_slice() {
        [name] => Ok(name.clone()),
        p => Err(Status::invalid_argument(format!(
            "FlightDescriptor path must have exactly one element (the dataset name), it has {}",
            p.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets() {
        assert_eq!(dataset_from_ticket(&ticket_for("v.1").ticket).unwrap(), "v.1");
        assert_eq!(dataset_from_ticket(b"plain").unwrap(), "plain");
        assert_eq!(dataset_from_ticket(&[0xff, 0xfe]).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn ticket_forms() {
        let q = read_from_ticket(br#"{"dataset": "d", "columns": ["a"], "filter": "a > 1", "limit": 5}"#).unwrap();
        let Read::Query(b) = q else { panic!("{q:?}") };
        assert_eq!((b.columns, b.filter.as_deref(), b.limit), (vec!["a".to_owned()], Some("a > 1"), Some(5)));
        assert_eq!(
            read_from_ticket(br#"{"dataset": "d", "after_lsn": 7, "follow": true}"#).unwrap(),
            Read::Follow { dataset: "d".into(), after_lsn: Lsn(7) }
        );
        assert_eq!(read_from_ticket(br#"{"dataset": "d"}"#).unwrap(), Read::Whole("d".into()));
        for bad in [
            &br#"{"dataset": "d", "after_lsn": 7}"#[..],
            br#"{"dataset": "d", "follow": true, "limit": 1}"#,
            br#"{"dataset": "d", "filtre": "x"}"#,
            br#"{"dataset": "d", "min_lsn": 5, "max_lsn": 4}"#,
        ] {
            assert_eq!(read_from_ticket(bad).unwrap_err().code(), tonic::Code::InvalidArgument);
        }
        let body =
            TicketBody { dataset: "d".into(), min_lsn: Some(Lsn(1)), max_lsn: Some(Lsn(9)), ..Default::default() };
        assert_eq!(read_from_ticket(&ticket_of(&body).ticket).unwrap(), Read::Query(body));
    }

    #[test]
    fn descriptors() {
        let ok = FlightDescriptor::new_path(vec!["a".into()]);
        assert_eq!(dataset_from_descriptor(Some(&ok)).unwrap(), "a");
        for bad in [
            FlightDescriptor::new_path(vec![]),
            FlightDescriptor::new_path(vec!["a".into(), "b".into()]),
            FlightDescriptor::new_cmd("a"),
        ] {
            assert_eq!(dataset_from_descriptor(Some(&bad)).unwrap_err().code(), tonic::Code::InvalidArgument);
        }
        assert_eq!(dataset_from_descriptor(None).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    proptest::proptest! {
        /// Any bytes give a dataset name or INVALID_ARGUMENT, never a panic.
        #[test]
        fn any_ticket_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            match dataset_from_ticket(&bytes) {
                // Both ticket forms are UTF-8 text.
                Ok(_) => proptest::prop_assert!(std::str::from_utf8(&bytes).is_ok()),
                Err(status) => proptest::prop_assert_eq!(status.code(), tonic::Code::InvalidArgument),
            }
        }

        /// Every name survives the ticket the server hands out.
        #[test]
        fn tickets_round_trip(name in "\\PC{0,64}") {
            proptest::prop_assert_eq!(dataset_from_ticket(&ticket_for(&name).ticket).unwrap(), name);
        }

        /// Any descriptor (type, path, cmd) gives the single path element or
        /// INVALID_ARGUMENT.
        #[test]
        fn any_descriptor_parses_or_fails_cleanly(
            kind in proptest::num::i32::ANY,
            path in proptest::collection::vec("\\PC{0,16}", 0..4),
            cmd in proptest::collection::vec(proptest::num::u8::ANY, 0..32),
        ) {
            let d = FlightDescriptor { r#type: kind, path: path.clone(), cmd: cmd.into() };
            let is_path = DescriptorType::try_from(kind) == Ok(DescriptorType::Path);
            match dataset_from_descriptor(Some(&d)) {
                Ok(name) => {
                    proptest::prop_assert!(is_path && path.len() == 1);
                    proptest::prop_assert_eq!(&name, &path[0]);
                }
                Err(status) => {
                    proptest::prop_assert!(!is_path || path.len() != 1);
                    proptest::prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                }
            }
        }
    }
}
