//! The cluster's certificate authority and each router's certificate.
//!
//! The first router of a cluster creates the CA (an ECDSA P-256 key and a
//! self-signed certificate) and stores it in the cluster state; every
//! router, when it joins, generates its own key and has the CA sign a
//! certificate for the name `<router>.router.depot.invalid`, valid for
//! both ends of a TLS connection. Who can read the CA from etcd can join:
//! etcd's own TLS and authentication are the cluster's admission control
//! (docs/cluster.md, "Trust between routers").
//!
//! Invariant: a certificate this module accepts chains to the cluster CA
//! and names exactly the router the connection claims to be.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::error::{PeerError, PeerResult};

/// DNS suffix of router certificate names (never resolved).
const NAME_SUFFIX: &str = "router.depot.invalid";

/// The certificate name of a router.
pub fn router_dns_name(router: &str) -> String {
    format!("{router}.{NAME_SUFFIX}")
}

fn pki(e: impl std::fmt::Display) -> PeerError {
    PeerError::Pki(e.to_string())
}

/// The cluster CA as stored in the cluster state (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// Common name of the CA (also rebuilds the issuer when signing).
    pub name: String,
    /// CA certificate, PEM.
    pub cert_pem: String,
    /// CA private key, PKCS#8 PEM.
    pub key_pem: String,
}

fn ca_params(name: &str) -> PeerResult<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2026, 1, 1);
    p.not_after = rcgen::date_time_ymd(2126, 1, 1);
    Ok(p)
}

impl CaRecord {
    /// Creates a new CA named `name` (e.g. `Depot cluster <id>`).
    pub fn generate(name: &str) -> PeerResult<CaRecord> {
        let key = KeyPair::generate().map_err(pki)?;
        let cert = ca_params(name)?.self_signed(&key).map_err(pki)?;
        Ok(CaRecord {
            name: name.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> PeerResult<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(pki)
    }

    /// Issues a certificate for `router`: a fresh key and a certificate
    /// naming it, valid as TLS server and client.
    pub fn issue(&self, router: &str) -> PeerResult<RouterIdentity> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(pki)?;
        let issuer = Issuer::new(ca_params(&self.name)?, ca_key);
        let key = KeyPair::generate().map_err(pki)?;
        let mut p = CertificateParams::new(vec![router_dns_name(router)]).map_err(pki)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, router);
        p.distinguished_name = dn;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = rcgen::date_time_ymd(2026, 1, 1);
        p.not_after = rcgen::date_time_ymd(2126, 1, 1);
        let cert = p.signed_by(&key, &issuer).map_err(pki)?;
        Ok(RouterIdentity {
            router: router.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// A router's TLS identity: its certificate and key, and the CA it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterIdentity {
    /// The router's name.
    pub router: String,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl RouterIdentity {
    fn chain(&self) -> PeerResult<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(pki)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(pki)?;
        Ok((vec![cert], key))
    }

    fn roots(&self) -> PeerResult<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(pki)?)
            .map_err(pki)?;
        Ok(Arc::new(roots))
    }

    /// Server side: present our certificate, require a client certificate
    /// issued by the cluster CA.
    pub fn server_config(&self) -> PeerResult<Arc<rustls::ServerConfig>> {
        let (chain, key) = self.chain()?;
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(pki)?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(pki)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(pki)?;
        Ok(Arc::new(cfg))
    }

    /// Client side: trust only the cluster CA, present our certificate.
    pub fn client_config(&self) -> PeerResult<Arc<rustls::ClientConfig>> {
        let (chain, key) = self.chain()?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(pki)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)
            .map_err(pki)?;
        Ok(Arc::new(cfg))
    }
}

/// The TLS server name to expect when connecting to `router`.
pub fn server_name(router: &str) -> PeerResult<ServerName<'static>> {
    ServerName::try_from(router_dns_name(router)).map_err(pki)
}

/// Checks that a (chain-verified) certificate names `router`.
pub fn cert_names(cert: &CertificateDer<'_>, router: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = server_name(router) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_router_only() {
        let ca = CaRecord::generate("Depot cluster test").unwrap();
        let id = ca.issue("r1").unwrap();
        let der = CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap();
        assert!(cert_names(&der, "r1"));
        assert!(!cert_names(&der, "r2"));
        assert!(id.server_config().is_ok());
        assert!(id.client_config().is_ok());
    }
}
