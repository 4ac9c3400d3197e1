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
/// before the member binds it (a start then fails and says which address). The ports
/// lie below the kernel's ephemeral range: a port the kernel picks (`:0`) comes from that
/// range, where any outgoing connection on the host — a member dialing its peers — may
/// take it as its source port in the moment between our release and the member's bind.
pub fn loopback_members(count: u64) -> std::io::Result<Vec<LoopbackMember>> {
    let listeners = free_ports(count as usize * 3)?;
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

/// The lowest port of this host's ephemeral range (Linux's default when unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// `count` loopback listeners on ports from 10,000 up to the ephemeral range, starting
/// at a point drawn from the time and process id (two tests starting together rarely
/// meet); the kernel's choice if that range is too small or full.
fn free_ports(count: usize) -> std::io::Result<Vec<TcpListener>> {
    const LOW: u16 = 10_000;
    let high = ephemeral_low();
    let mut listeners = Vec::with_capacity(count);
    if high > LOW + 1_000 {
        let span = u32::from(high - LOW);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        let start = seed % span;
        for step in 0..span {
            if listeners.len() == count {
                break;
            }
            let port = LOW + ((start + step * 7) % span) as u16;
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(listener);
            }
        }
    }
    while listeners.len() < count {
        listeners.push(TcpListener::bind("127.0.0.1:0")?);
    }
    Ok(listeners)
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
        let low = ephemeral_low();
        assert!(ports.iter().all(|p| p.port() < low), "{ports:?} not below {low}");
        let tables = member_tables(&members);
        assert_eq!(tables.matches("[[member]]").count(), 3);
        assert!(tables.contains(&format!("client = \"{}\"", members[2].client)), "{tables}");
        assert!(tables.contains("name = \"n3\""), "{tables}");
    }
}
