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
}
