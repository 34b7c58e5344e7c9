//! The server's own certificate authority and its serving certificate.
//!
//! The CA is created once, in the data directory, and reloaded on every start: its
//! SHA-256 fingerprint is what join tokens pin, so regenerating it would orphan every
//! client. The serving certificate is reissued at each start for the configured names.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid PEM in {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("tls configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The CA and the serving certificate of one server.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
}

/// The SHA-256 fingerprint of a certificate, as lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a file readable by its owner only, atomically and durably.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A fresh, randomly named temp file is created 0600; a fixed name could be a stale
    // file of another mode, which opening it would keep.
    let mut file = tempfile::Builder::new()
        .prefix(".offload-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.as_file().sync_all())
        .map_err(io_err(dir))?;
    file.persist(path).map_err(|e| io_err(path)(e.error))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    // Earlier versions wrote through this fixed name; a leftover may hold a key readable
    // by others.
    let _ = fs::remove_file(path.with_extension("tmp"));
    Ok(())
}

/// Creates the data directory (0700) if needed.
pub fn ensure_private_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "offload CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    params
}

/// Loads the CA from `dir`, creating it first if it does not exist.
pub fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), TlsError> {
    ensure_private_dir(dir)?;
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    if cert_path.exists() && key_path.exists() {
        let cert = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        return Ok((cert, key));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    // Key first: a crash between the two writes leaves no CA certificate without its key.
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_private(&cert_path, cert.pem().as_bytes())?;
    Ok((cert.pem(), key))
}

/// The DER of the first certificate in a PEM string.
pub fn first_cert_der(pem: &str, path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl Pki {
    /// Loads or creates the CA in `dir` and issues a serving certificate for `names`
    /// (DNS names or IP addresses) plus localhost and the loopback addresses.
    pub fn load(dir: &Path, names: &[String]) -> Result<Self, TlsError> {
        let (ca_pem, ca_key) = load_or_create_ca(dir)?;
        let ca_path = dir.join("ca.crt");
        let ca_der = first_cert_der(&ca_pem, &ca_path)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;

        let mut sans = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if let Ok(host) = fs::read_to_string("/proc/sys/kernel/hostname") {
            let host = host.trim();
            if !host.is_empty() {
                sans.push(host.to_owned());
            }
        }
        for name in names {
            if !sans.contains(name) {
                sans.push(name.clone());
            }
        }
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "offload server");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2044, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&dir.join("server.crt"), cert.pem().as_bytes())?;
        write_private(&dir.join("server.key"), key.serialize_pem().as_bytes())?;
        let server_key =
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(|e| {
                TlsError::Pem {
                    path: dir.join("server.key"),
                    message: e.to_string(),
                }
            })?;
        Ok(Pki {
            ca_pem,
            server_chain: vec![cert.der().clone(), ca_der.clone()],
            ca_der,
            server_key,
        })
    }

    /// The CA's fingerprint, as join tokens carry it.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// A rustls server configuration serving this certificate, HTTP/2 and HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_survives_reload_and_files_are_private() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load(dir.path(), &[]).unwrap();
        let second = Pki::load(dir.path(), &["offload.example".into()]).unwrap();
        assert_eq!(first.ca_fingerprint(), second.ca_fingerprint());
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        second.server_config().unwrap();
    }

    #[test]
    fn keys_stay_private_over_stale_world_readable_temp_files() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        for stale in ["ca.tmp", "server.tmp"] {
            let path = dir.path().join(stale);
            fs::write(&path, "left by an earlier run").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        Pki::load(dir.path(), &[]).unwrap();
        for key in ["ca.key", "server.key"] {
            let mode = fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
}
