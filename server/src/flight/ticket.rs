//! Tickets and descriptors: how a request names a dataset. Pure.

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{FlightDescriptor, Ticket};
use serde::{Deserialize, Serialize};
use tonic::Status;

#[derive(Serialize, Deserialize)]
struct TicketBody {
    dataset: String,
}

/// The ticket ListFlights and GetFlightInfo hand out: `{"dataset": name}`.
pub fn ticket_for(dataset: &str) -> Ticket {
    let body = serde_json::to_vec(&TicketBody { dataset: dataset.to_owned() }).expect("ticket serializes");
    Ticket { ticket: body.into() }
}

/// Reads a ticket: the JSON form above, or the bare dataset name.
pub fn dataset_from_ticket(ticket: &[u8]) -> Result<String, Status> {
    if let Ok(body) = serde_json::from_slice::<TicketBody>(ticket) {
        return Ok(body.dataset);
    }
    std::str::from_utf8(ticket)
        .map(str::to_owned)
        .map_err(|_| Status::invalid_argument("ticket is neither {\"dataset\": name} JSON nor a UTF-8 dataset name"))
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
