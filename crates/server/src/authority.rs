//! Who may change the cluster through `worknode.Admin` (SetSchedule, Partition,
//! InjectFault): with client TLS, a caller whose certificate's common name is in
//! `[admin] allowed`; without it, only a caller on loopback, unless `[admin] open = true`.
//! Reads (Schedule, Turns, Digest, Telemetry) stay open to every client, as etcd's
//! status calls are.

use std::net::SocketAddr;

use tonic::{Code, Status};

/// The `[admin]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Let any client call the mutating methods (a trusted network only).
    #[serde(default)]
    pub open: bool,
    /// Certificate common names allowed to call them when client TLS is on.
    #[serde(default)]
    pub allowed: Vec<String>,
}

/// What a request shows of its caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The connection's remote address, when known.
    pub remote: Option<SocketAddr>,
    /// The client certificate's common name, when the connection is TLS with one.
    pub common_name: Option<String>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Caller {
    /// The caller of a tonic request.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let certs = request.peer_certs();
        let common_name =
            certs.as_ref().and_then(|certs| certs.first()).and_then(|cert| common_name(cert));
        let tls = request
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .is_some();
        Self { remote: request.remote_addr(), common_name, tls }
    }
}

impl AdminConfig {
    /// Whether `caller` may call `method`; `PermissionDenied` saying why not.
    pub fn authorize(&self, method: &str, caller: &Caller) -> Result<(), Status> {
        if self.open {
            return Ok(());
        }
        if caller.tls {
            return match &caller.common_name {
                Some(name) if self.allowed.iter().any(|allowed| allowed == name) => Ok(()),
                Some(name) => Err(Status::new(
                    Code::PermissionDenied,
                    format!("worknode.Admin/{method}: certificate common name {name:?} is not in [admin] allowed"),
                )),
                None => Err(Status::new(
                    Code::PermissionDenied,
                    format!("worknode.Admin/{method} needs a client certificate whose common name is in [admin] allowed"),
                )),
            };
        }
        match caller.remote {
            Some(remote) if remote.ip().is_loopback() => Ok(()),
            remote => Err(Status::new(
                Code::PermissionDenied,
                format!(
                    "worknode.Admin/{method} is allowed only from loopback without client TLS (caller {}); set [admin] open = true to allow every client",
                    remote.map_or_else(|| "unknown".to_owned(), |r| r.ip().to_string())
                ),
            )),
        }
    }
}

/// The subject's common name (OID 2.5.4.3) of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    let certificate = Der::new(der).sequence()?;
    let mut tbs = certificate.sequence()?.contents();
    if tbs.peek_tag() == Some(0xa0) {
        tbs.next()?; // [0] version
    }
    for _ in 0..4 {
        tbs.next()?; // serial number, signature algorithm, issuer, validity
    }
    let mut subject = tbs.next_with_tag(0x30)?;
    while let Some(mut set) = subject.next_with_tag(0x31) {
        while let Some(mut attribute) = set.next_with_tag(0x30) {
            let oid = attribute.next_with_tag(0x06)?;
            let value = attribute.next()?;
            if oid.bytes == COMMON_NAME {
                return String::from_utf8(value.bytes.to_vec()).ok();
            }
        }
    }
    None
}

/// A cursor over DER elements (tag, length, contents), enough to walk a certificate.
#[derive(Clone, Copy, Debug)]
struct Der<'a> {
    bytes: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn contents(self) -> Self {
        self
    }

    fn peek_tag(&self) -> Option<u8> {
        self.bytes.first().copied()
    }

    /// The next element's contents and tag, advancing past it.
    fn element(&mut self) -> Option<(u8, Der<'a>)> {
        let tag = *self.bytes.first()?;
        let first = *self.bytes.get(1)?;
        let (length, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let mut length = 0usize;
            for at in 0..count {
                length = (length << 8) | usize::from(*self.bytes.get(2 + at)?);
            }
            (length, 2 + count)
        };
        let end = header.checked_add(length)?;
        let contents = self.bytes.get(header..end)?;
        self.bytes = &self.bytes[end..];
        Some((tag, Der { bytes: contents }))
    }

    fn next(&mut self) -> Option<Der<'a>> {
        self.element().map(|(_, contents)| contents)
    }

    fn next_with_tag(&mut self, tag: u8) -> Option<Der<'a>> {
        if self.peek_tag()? != tag {
            return None;
        }
        self.next()
    }

    fn sequence(mut self) -> Option<Der<'a>> {
        self.next_with_tag(0x30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(remote: &str, tls: bool, name: Option<&str>) -> Caller {
        Caller {
            remote: Some(remote.parse().unwrap_or_else(|e| panic!("{e}"))),
            common_name: name.map(str::to_owned),
            tls,
        }
    }

    #[test]
    fn without_tls_only_loopback_callers_may_change_the_cluster() {
        let closed = AdminConfig::default();
        assert!(closed.authorize("SetSchedule", &caller("127.0.0.1:5000", false, None)).is_ok());
        assert!(closed.authorize("SetSchedule", &caller("[::1]:5000", false, None)).is_ok());
        let refused = closed.authorize("SetSchedule", &caller("10.1.2.3:5000", false, None));
        let status = refused.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status
            .message()
            .contains("only from loopback without client TLS (caller 10.1.2.3)"));
        let open = AdminConfig { open: true, ..AdminConfig::default() };
        assert!(open.authorize("SetSchedule", &caller("10.1.2.3:5000", false, None)).is_ok());
    }

    #[test]
    fn with_tls_the_certificate_common_name_decides() {
        let config = AdminConfig { allowed: vec!["ops".into()], ..AdminConfig::default() };
        assert!(config.authorize("Partition", &caller("10.0.0.1:1", true, Some("ops"))).is_ok());
        let other = config.authorize("Partition", &caller("127.0.0.1:1", true, Some("app")));
        assert!(other.unwrap_err().message().contains("\"app\" is not in [admin] allowed"));
        let none = config.authorize("Partition", &caller("127.0.0.1:1", true, None));
        assert!(none.unwrap_err().message().contains("needs a client certificate"));
    }

    #[test]
    fn the_common_name_is_read_from_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "worknode");
        params.distinguished_name.push(rcgen::DnType::CommonName, "admin");
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(common_name(cert.der()), Some("admin".to_owned()));
        let mut nameless = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        nameless.distinguished_name = rcgen::DistinguishedName::new();
        let cert = nameless.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(b"\x30\x82\xff"), None);
    }
}
