//! A cluster on one host's loopback: each member's free addresses and the `[[member]]`
//! tables every member's `node.toml` lists — what `worknode demo` and the process tests
//! both write, kept in one place.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};

/// One member's name and loopback addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopbackMember {
    /// Member id, from 1.
    pub id: u64,
    /// `n<id>`.
    pub name: String,
    /// Peer (Raft) address.
    pub peer: SocketAddr,
    /// Client (etcd API) address.
    pub client: SocketAddr,
    /// Prometheus metrics address.
    pub metrics: SocketAddr,
}

/// Members `n1..=n<count>` on free loopback ports. Every port is held until all are
/// chosen, so no two members get the same one; another process may still take one
/// before the member binds it (a start then fails and says which address).
pub fn loopback_members(count: u64) -> std::io::Result<Vec<LoopbackMember>> {
    let listeners = (0..count * 3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let addresses =
        listeners.iter().map(TcpListener::local_addr).collect::<std::io::Result<Vec<_>>>()?;
    Ok((1..=count)
        .zip(addresses.chunks(3))
        .map(|(id, ports)| LoopbackMember {
            id,
            name: format!("n{id}"),
            peer: ports[0],
            client: ports[1],
            metrics: ports[2],
        })
        .collect())
}

/// The `[[member]]` tables listing `members`, identical in every member's configuration.
pub fn member_tables(members: &[LoopbackMember]) -> String {
    let mut tables = String::new();
    for m in members {
        let _ = write!(
            tables,
            "\n[[member]]\nid = {}\nname = \"{}\"\npeer = \"{}\"\nclient = \"{}\"\nmetrics = \"{}\"\n",
            m.id, m.name, m.peer, m.client, m.metrics
        );
    }
    tables
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

    use super::*;

    #[test]
    fn members_get_distinct_ports_and_tables_name_them_all() {
        let members = loopback_members(3).unwrap();
        let mut ports: Vec<SocketAddr> =
            members.iter().flat_map(|m| [m.peer, m.client, m.metrics]).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 9);
        let tables = member_tables(&members);
        assert_eq!(tables.matches("[[member]]").count(), 3);
        assert!(tables.contains(&format!("client = \"{}\"", members[2].client)), "{tables}");
        assert!(tables.contains("name = \"n3\""), "{tables}");
    }
}
