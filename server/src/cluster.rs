//! Several nodes: who this node is, who its peers are, and which node owns
//! a dataset. No membership protocol: the node list is configuration
//! (`LONGBOW_PEERS`, filled in by the chart from the StatefulSet's
//! headless Service), and ownership is a rendezvous hash of the dataset's
//! name over it, so that when the list grows or shrinks by one only about
//! 1/N of the datasets change owner.

use arrow_flight::flight_service_client::FlightServiceClient;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// This node's place among its peers. One node with no peers is the
/// single-node store: it owns everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This node's index into `peers`.
    pub node: usize,
    /// Every node's Flight URL, in index order (empty: no peers).
    pub peers: Vec<String>,
}

impl Cluster {
    /// Checks `peers` (comma-separated Flight URLs, in index order; empty
    /// for none) against `node`.
    pub fn new(node: usize, peers: &str) -> Result<Self, String> {
        let peers: Vec<String> = peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.trim_end_matches('/').to_owned())
            .collect();
        for p in &peers {
            if !(p.starts_with("grpc://") || p.starts_with("grpc+tcp://") || p.starts_with("grpc+tls://")) {
                return Err(format!("peer {p:?}: expected a Flight URL (grpc://host:port or grpc+tls://host:port)"));
            }
        }
        let tls = peers.iter().filter(|p| p.starts_with("grpc+tls://")).count();
        if tls != 0 && tls != peers.len() {
            return Err("LONGBOW_PEERS mixes grpc+tls:// and plaintext URLs: the nodes serve TLS or all do not".into());
        }
        if !peers.is_empty() && node >= peers.len() {
            return Err(format!("node id {node} is not an index into the {} peers of LONGBOW_PEERS", peers.len()));
        }
        if peers.is_empty() && node != 0 {
            return Err(format!("node id {node} needs LONGBOW_PEERS listing every node"));
        }
        Ok(Self { node, peers })
    }

    /// Whether the nodes talk TLS (`grpc+tls://` peers).
    pub fn tls(&self) -> bool {
        self.peers.first().is_some_and(|p| p.starts_with("grpc+tls://"))
    }

    pub fn nodes(&self) -> usize {
        self.peers.len().max(1)
    }

    /// The index of the node that owns `dataset`: the highest
    /// `score(dataset, node)` over the nodes.
    pub fn owner(&self, dataset: &str) -> usize {
        (0..self.nodes()).max_by_key(|&n| (score(dataset, n), n)).expect("at least one node")
    }

    pub fn owns(&self, dataset: &str) -> bool {
        self.owner(dataset) == self.node
    }

    /// This node's URL as its peers know it (`None` without peers).
    pub fn own_url(&self) -> Option<&str> {
        self.peers.get(self.node).map(String::as_str)
    }
}

/// Marks a call one node forwarded to another: the receiver serves it
/// itself or refuses it, never forwards it again.
pub const FORWARDED_HEADER: &str = "x-longbow-forwarded";

/// Flight clients of the other nodes (connected on first use) and the
/// routing of a call.
pub struct Peers {
    pub cluster: Cluster,
    clients: Vec<Option<FlightServiceClient<Channel>>>,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Peers {
    /// `auth_token`: this cluster's bearer token, sent on forwarded calls;
    /// `max_message`: the largest message a forwarded call may carry;
    /// `tls`: the client TLS for `grpc+tls://` peers.
    pub fn new(
        cluster: Cluster,
        auth_token: Option<&str>,
        max_message: usize,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, String> {
        let mut clients = Vec::new();
        for (i, url) in cluster.peers.iter().enumerate() {
            if i == cluster.node {
                clients.push(None);
                continue;
            }
            let http = url
                .replacen("grpc+tcp://", "http://", 1)
                .replacen("grpc+tls://", "https://", 1)
                .replacen("grpc://", "http://", 1);
            let mut endpoint = tonic::transport::Endpoint::from_shared(http)
                .map_err(|e| format!("peer {url:?}: {e}"))?
                .connect_timeout(std::time::Duration::from_secs(5))
                .tcp_nodelay(true);
            if cluster.tls() {
                let tls = tls.clone().ok_or("grpc+tls:// peers need the node's TLS settings")?;
                endpoint = endpoint.tls_config(tls).map_err(|e| format!("peer {url:?}: TLS: {e}"))?;
            }
            let channel = endpoint.connect_lazy();
            clients.push(Some(
                FlightServiceClient::new(channel)
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            ));
        }
        let auth = auth_token
            .map(|t| format!("Bearer {t}").parse().map_err(|_| "the auth token is not a valid header value".to_owned()))
            .transpose()?;
        Ok(Self { cluster, clients, auth })
    }

    /// Where a call for `dataset` goes: `None` to serve it here, or the
    /// owner's index and client. A call another node forwarded is never
    /// forwarded again: if this node does not own the dataset either, the
    /// nodes' LONGBOW_PEERS differ, and the call is refused.
    pub fn route(
        &self,
        dataset: &str,
        forwarded: bool,
    ) -> Result<Option<(usize, FlightServiceClient<Channel>)>, Status> {
        let owner = self.cluster.owner(dataset);
        if owner == self.cluster.node {
            return Ok(None);
        }
        if forwarded {
            return Err(Status::failed_precondition(format!(
                "node {} was sent a call for dataset {dataset:?}, which node {owner} owns: the nodes' LONGBOW_PEERS \
                 differ",
                self.cluster.node
            )));
        }
        Ok(self.clients[owner].clone().map(|c| (owner, c)))
    }

    /// Node `n`'s client (`None` for this node).
    pub fn client(&self, n: usize) -> Option<FlightServiceClient<Channel>> {
        self.clients.get(n).cloned().flatten()
    }

    /// The other nodes' clients, with their indexes.
    pub fn others(&self) -> impl Iterator<Item = (usize, FlightServiceClient<Channel>)> + '_ {
        self.clients.iter().enumerate().filter_map(|(i, c)| c.clone().map(|c| (i, c)))
    }

    /// What every other node lists as its own (ListFlights, forwarded so
    /// that it does not ask on), with the node's index; the nodes are asked
    /// at once.
    pub async fn their_flights(&self) -> Result<Vec<(usize, arrow_flight::FlightInfo)>, Status> {
        let asked = self.others().map(|(node, mut client)| async move {
            let request = self.forward(arrow_flight::Criteria::default());
            let mut infos = client.list_flights(request).await.map_err(|e| peer_status(node, e))?.into_inner();
            let mut theirs = Vec::new();
            while let Some(info) = infos.message().await.map_err(|e| peer_status(node, e))? {
                theirs.push((node, info));
            }
            Ok::<_, Status>(theirs)
        });
        let mut out = Vec::new();
        for theirs in futures::future::join_all(asked).await {
            out.extend(theirs?);
        }
        Ok(out)
    }

    /// Tells every other node to forget what it holds of `dataset` (rows it
    /// has not handed over to this node, the owner, yet), before this node
    /// drops the dataset; all are asked at once. `Ok(true)` if a node held
    /// rows of it. Every node must answer: one that cannot be reached may
    /// hold rows it would hand over into the table after the drop, or into
    /// one made again since, so the drop is refused and retried.
    pub async fn forget_everywhere(&self, dataset: &str) -> Result<bool, Status> {
        let action = arrow_flight::Action { r#type: FORGET_ACTION.into(), body: dataset.to_owned().into() };
        let mut held = false;
        let mut failed = Vec::new();
        for (node, r) in self.ask_everyone(&action).await {
            match r {
                Ok(v) => held |= v["held"].as_bool() == Some(true),
                Err(e) => failed.push((node, e)),
            }
        }
        let Some((_, first)) = failed.first() else { return Ok(held) };
        let which: Vec<String> = failed
            .iter()
            .map(|(node, e)| format!("node {node} ({}): {}", self.cluster.peers[*node], e.message()))
            .collect();
        let message = format!(
            "dropping {dataset:?} needs every node to forget the rows it holds of it first, and {}; the dataset \
             is not dropped: retry once every node answers (the nodes that answered have forgotten theirs)",
            which.join("; ")
        );
        Err(match first.code() {
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => Status::failed_precondition(message),
            _ => Status::unavailable(message),
        })
    }

    /// Sends `action` to every other node at once (forwarded, so that none
    /// asks on) and gives each node's one JSON result, or its failure.
    pub async fn ask_everyone(&self, action: &arrow_flight::Action) -> Vec<(usize, Result<serde_json::Value, Status>)> {
        let asked = self.others().map(|(node, mut client)| async move {
            let request = self.forward(action.clone());
            let answer = async {
                let mut results = client.do_action(request).await?.into_inner();
                let first = results.message().await?.ok_or_else(|| Status::internal("no result"))?;
                while results.message().await?.is_some() {}
                serde_json::from_slice(&first.body).map_err(|e| Status::internal(format!("not JSON: {e}")))
            };
            let r = match tokio::time::timeout(PEER_ANSWER_TIMEOUT, answer).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(format!("no answer in {PEER_ANSWER_TIMEOUT:?}"))),
            };
            (node, r)
        });
        futures::future::join_all(asked).await
    }

    /// `message` as a forwarded call: marked, with this cluster's token.
    pub fn forward<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
        if let Some(auth) = &self.auth {
            r.metadata_mut().insert("authorization", auth.clone());
        }
        r
    }
}

/// A peer's error as this node's answer, naming the peer when it could not
/// be reached.
pub fn peer_status(node: usize, e: Status) -> Status {
    match e.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown if e.message().contains("transport") => {
            Status::unavailable(format!("node {node}, which owns the dataset, cannot be reached: {}", e.message()))
        }
        _ => e,
    }
}

pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

/// The action with which a node that handed a dataset over tells its owner
/// to read the dataset's table again.
pub const REFRESH_ACTION: &str = "refresh_dataset";

/// The action with which a dataset's owner, dropping it, tells the other
/// nodes to forget rows of it that they have not handed over yet.
pub const FORGET_ACTION: &str = "forget_dataset";

/// How long a dataset's owner waits for each node to forget it: a node may
/// first finish a handover or snapshot of it that is under way.
const PEER_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Hands each of `datasets` (held here, owned by another node under the
/// current node list) over to its owner: the engine commits the WAL tail
/// into the shared table and forgets the dataset, then the owner is told
/// to read the table again. Both steps are retried until they succeed
/// (the object store or the owner may be down for a while); meanwhile the
/// WAL keeps the rows, and calls for the dataset already go to its owner.
pub async fn hand_over(
    engine: longbow_engine::Engine,
    peers: std::sync::Arc<Peers>,
    datasets: Vec<String>,
    pending: prometheus_client::metrics::gauge::Gauge,
) {
    use futures::StreamExt;
    pending.set(datasets.len() as i64);
    futures::stream::iter(datasets)
        .for_each_concurrent(HANDOVERS_AT_ONCE, |name| {
            let (engine, peers, pending) = (engine.clone(), peers.clone(), pending.clone());
            async move {
                let owner = peers.cluster.owner(&name);
                retried(&name, owner, "handover failed; the WAL keeps the rows", || async {
                    match engine.hand_over(&name).await {
                        Err(longbow_engine::Error::NotFound(_)) => Ok(()),
                        r => r,
                    }
                })
                .await;
                let client = peers.client(owner).expect("another node owns it");
                retried(&name, owner, "telling the owner to read a handed-over table failed", || {
                    let (mut client, name) = (client.clone(), name.clone());
                    let action = arrow_flight::Action { r#type: REFRESH_ACTION.into(), body: name.into() };
                    let request = peers.forward(action);
                    async move {
                        let mut results = client.do_action(request).await?.into_inner();
                        while results.message().await?.is_some() {}
                        Ok::<_, Status>(())
                    }
                })
                .await;
                tracing::info!(dataset = name, owner, "handed over");
                pending.dec();
            }
        })
        .await;
}

/// Runs `step` until it succeeds, logging each failure (`what`, retried)
/// and backing off from 0.5 s, doubling up to 30 s.
async fn retried<F, E>(dataset: &str, owner: usize, what: &str, mut step: impl FnMut() -> F)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut wait = std::time::Duration::from_millis(500);
    while let Err(e) = step().await {
        tracing::warn!(dataset, owner, error = %e, "{what}; retried");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
    }
}

const HANDOVERS_AT_ONCE: usize = 4;

/// Rendezvous score of `dataset` on node `n`: CRC-32C of the name and the
/// node's index, spread over 64 bits (splitmix64's finalizer). Pinned by a
/// test: changing it moves datasets between nodes.
fn score(dataset: &str, n: usize) -> u64 {
    let mut h = crc32c::crc32c_append(crc32c::crc32c(dataset.as_bytes()), &(n as u64).to_le_bytes()) as u64;
    h = h.wrapping_add((n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: usize) -> Cluster {
        let peers: Vec<String> = (0..n).map(|i| format!("grpc://127.0.0.1:{}", 3001 + i)).collect();
        Cluster::new(0, &peers.join(",")).unwrap()
    }

    #[test]
    fn peers_are_checked_against_the_node_id() {
        assert!(Cluster::new(3, "grpc://a:1,grpc://b:1").is_err(), "an index into the peers");
        assert!(Cluster::new(1, "").is_err(), "a node id needs peers");
        assert!(Cluster::new(0, "http://a:1").is_err(), "Flight URLs");
        assert!(Cluster::new(0, "grpc+tls://a:1,grpc://b:1").is_err(), "all TLS or none");
        assert!(Cluster::new(1, "grpc+tls://a:1,grpc+tls://b:1").unwrap().tls());
        let single = Cluster::new(0, "").unwrap();
        assert_eq!(single, Cluster { node: 0, peers: Vec::new() });
    }

    #[test]
    fn one_node_owns_everything_and_ownership_spreads() {
        assert!(Cluster::new(0, "").unwrap().owns("anything"));
        let c = cluster(3);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[c.owner(&format!("ds{i}"))] += 1;
        }
        assert!(counts.iter().all(|&k| k > 850), "{counts:?}");
    }

    #[test]
    fn a_node_more_or_less_moves_about_one_in_n_datasets() {
        let names: Vec<String> = (0..4000).map(|i| format!("dataset-{i}")).collect();
        for n in 2..6 {
            let (before, after) = (cluster(n), cluster(n + 1));
            let moved = names.iter().filter(|d| before.owner(d) != after.owner(d)).count();
            // Only to the new node, about 1/(n+1) of them.
            assert!(names.iter().all(|d| before.owner(d) == after.owner(d) || after.owner(d) == n));
            let expected = names.len() / (n + 1);
            assert!(moved.abs_diff(expected) < expected / 5, "{n} -> {}: {moved} moved, ~{expected} expected", n + 1);
        }
    }

    #[test]
    fn owners_are_pinned() {
        // Changing the hash would strand datasets on the wrong node.
        let c = cluster(3);
        let owners: Vec<usize> = ["a", "vectors", "events", "x.y-z_1"].iter().map(|d| c.owner(d)).collect();
        assert_eq!(owners, PINNED);
    }

    const PINNED: [usize; 4] = [2, 1, 0, 0];
}
