//! `worknode certs init`: a CA and the certificates a first deployment (or a test) needs:
//! per member a client-listener certificate and a peer certificate that names the member
//! (`member-<id>.<cluster id>.worknode`, which peers check), and one client certificate
//! for operators whose common name `[admin] allowed` can list.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::CliError;

/// `worknode certs …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CertsCommand {
    /// Make a CA and certificates for every member and one operator client.
    Init(InitArgs),
}

/// Arguments of `worknode certs init`.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// The cluster name, as in every member's `cluster =` (peer certificates name it).
    #[arg(long)]
    cluster: String,
    /// Member names in id order: the first is member 1 (e.g. `n1,n2,n3`).
    #[arg(long, value_delimiter = ',', required = true)]
    members: Vec<String>,
    /// Host names and IP addresses clients and peers reach members by.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,::1,localhost")]
    hosts: Vec<String>,
    /// Common name of the operator client certificate (list it in `[admin] allowed`).
    #[arg(long, default_value = "admin")]
    client: String,
    /// Directory to write into (created; existing certificates are never overwritten).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(command: &CertsCommand, out: &mut impl Write) -> Result<(), CliError> {
    match command {
        CertsCommand::Init(args) => init(args, out),
    }
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> CliError + '_ {
    move |error| CliError::runtime(format!("cannot make {what}: {error}"))
}

fn init(args: &InitArgs, out: &mut impl Write) -> Result<(), CliError> {
    if args.cluster.is_empty() {
        return Err(CliError::input("--cluster: must not be empty"));
    }
    if let Some(bad) = args.members.iter().chain([&args.client]).find(|n| !plain_name(n)) {
        return Err(CliError::input(format!(
            "{bad:?} is not a usable name (letters, digits, '-', '_' and '.')"
        )));
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::runtime(format!("cannot create {}: {e}", args.out.display())))?;
    let ca_path = args.out.join("ca.pem");
    if ca_path.exists() {
        return Err(CliError::input(format!(
            "{} exists: certs init never overwrites certificates (choose another --out)",
            ca_path.display()
        )));
    }
    let cluster_id = worknode_server::config::cluster_id_of(&args.cluster);
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("the CA"))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("worknode CA for {}", args.cluster));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(rcgen_error("the CA key"))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(rcgen_error("the CA"))?;
    let mut written = Vec::new();
    write(&args.out, "ca.pem", &ca.pem(), false, &mut written)?;
    for (index, name) in args.members.iter().enumerate() {
        let id = index as u64 + 1;
        let (cert, key) = leaf(&ca, name, args.hosts.clone(), true)?;
        write(&args.out, &format!("{name}.pem"), &cert, false, &mut written)?;
        write(&args.out, &format!("{name}-key.pem"), &key, true, &mut written)?;
        let mut peer_names = vec![worknode_raft::tls::peer_name(cluster_id, id)];
        peer_names.extend(args.hosts.iter().cloned());
        let (cert, key) = leaf(&ca, &format!("{name} peer"), peer_names, true)?;
        write(&args.out, &format!("{name}-peer.pem"), &cert, false, &mut written)?;
        write(&args.out, &format!("{name}-peer-key.pem"), &key, true, &mut written)?;
    }
    let (cert, key) = leaf(&ca, &args.client, Vec::new(), false)?;
    write(&args.out, &format!("{}.pem", args.client), &cert, false, &mut written)?;
    write(&args.out, &format!("{}-key.pem", args.client), &key, true, &mut written)?;
    writeln!(out, "wrote {} files to {}:", written.len(), args.out.display())?;
    for file in &written {
        writeln!(out, "  {file}")?;
    }
    writeln!(
        out,
        "member ids follow --members: {}",
        args.members
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n}={}", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(())
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A certificate signed by the CA: its PEM and its key's PEM. A server certificate
/// (`serves`) carries `names` and serves and dials; a client one only dials.
fn leaf(
    ca: &CertifiedIssuer<'_, KeyPair>,
    common_name: &str,
    names: Vec<String>,
    serves: bool,
) -> Result<(String, String), CliError> {
    let mut params = CertificateParams::new(names).map_err(rcgen_error(common_name))?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = if serves {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let key = KeyPair::generate().map_err(rcgen_error(common_name))?;
    let cert = params.signed_by(&key, ca).map_err(rcgen_error(common_name))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(
    dir: &Path,
    name: &str,
    contents: &str,
    secret: bool,
    written: &mut Vec<String>,
) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(|e| CliError::runtime(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| CliError::runtime(format!("cannot write {}: {e}", path.display())))?;
    written.push(name.to_owned());
    Ok(())
}
