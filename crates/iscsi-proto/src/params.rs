//! Login parameter negotiation (RFC 7143 §6 and §13) from the target's side.
//!
//! [`Negotiator::negotiate`] takes the initiator's offers from one login (or
//! text) request, answers each one it owns in the response, and records the
//! outcome in [`SessionParams`]. Keys it does not own (names, session type,
//! authentication) are left for the login state machine, which calls
//! [`is_login_key`] to tell them apart.
//!
//! Each operational key has the RFC's default, range and result function
//! (min, max, AND, OR, list selection, declarative). Out-of-range or
//! malformed values are answered with `Reject`, unknown keys with
//! `NotUnderstood`, and the obsolete marker keys with `Reject`
//! (RFC 7143 §13.25 forbids `NotUnderstood` for them).

use crate::text::KeyValues;

/// The limits and preferences the target brings to negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLimits {
    /// Our MaxRecvDataSegmentLength, declared to the initiator.
    pub max_recv_data_segment_length: u32,
    /// Largest MaxBurstLength we accept.
    pub max_burst_length: u32,
    /// Largest FirstBurstLength we accept.
    pub first_burst_length: u32,
    /// We accept immediate data.
    pub immediate_data: bool,
    /// We want R2T for all data (false: unsolicited data allowed).
    pub initial_r2t: bool,
    /// Largest MaxOutstandingR2T we accept.
    pub max_outstanding_r2t: u32,
    /// DefaultTime2Wait we offer.
    pub default_time2wait: u32,
    /// DefaultTime2Retain we offer.
    pub default_time2retain: u32,
    /// Accept CRC32C header digests.
    pub allow_header_digest: bool,
    /// Accept CRC32C data digests.
    pub allow_data_digest: bool,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16_776_192,
            first_burst_length: 16_776_192,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 16,
            default_time2wait: 2,
            default_time2retain: 0,
            allow_header_digest: true,
            allow_data_digest: true,
        }
    }
}

/// Negotiated values for one session and its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// What the initiator can receive: our Data-In / text PDUs are cut to it.
    pub initiator_mrdsl: u32,
    /// What we can receive (declared by us).
    pub target_mrdsl: u32,
    /// Maximum data in one Data-In sequence or one R2T.
    pub max_burst_length: u32,
    /// Maximum unsolicited data per command.
    pub first_burst_length: u32,
    /// Immediate data allowed.
    pub immediate_data: bool,
    /// Unsolicited Data-Out forbidden.
    pub initial_r2t: bool,
    /// R2Ts outstanding per task.
    pub max_outstanding_r2t: u32,
    /// Data PDUs in order (always true here).
    pub data_pdu_in_order: bool,
    /// Data sequences in order (always true here).
    pub data_sequence_in_order: bool,
    /// Error recovery level (always 0 here).
    pub error_recovery_level: u32,
    /// DefaultTime2Wait.
    pub default_time2wait: u32,
    /// DefaultTime2Retain.
    pub default_time2retain: u32,
    /// Connections per session.
    pub max_connections: u32,
    /// CRC32C header digest in use.
    pub header_digest: bool,
    /// CRC32C data digest in use.
    pub data_digest: bool,
}

impl SessionParams {
    /// RFC defaults, with our declared receive limit.
    pub fn new(limits: &TargetLimits) -> Self {
        SessionParams {
            initiator_mrdsl: 8192,
            target_mrdsl: limits.max_recv_data_segment_length,
            max_burst_length: 262_144.min(limits.max_burst_length),
            first_burst_length: 65_536.min(limits.first_burst_length),
            immediate_data: limits.immediate_data,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
            header_digest: false,
            data_digest: false,
        }
    }
}

/// Keys handled by the login state machine rather than the negotiator.
pub fn is_login_key(key: &str) -> bool {
    matches!(
        key,
        "InitiatorName"
            | "InitiatorAlias"
            | "TargetName"
            | "SessionType"
            | "AuthMethod"
            | "CHAP_A"
            | "CHAP_I"
            | "CHAP_C"
            | "CHAP_N"
            | "CHAP_R"
    )
}

/// Negotiates operational keys for one session.
#[derive(Debug, Clone)]
pub struct Negotiator {
    limits: TargetLimits,
    /// The outcome so far.
    pub params: SessionParams,
    declared_mrdsl: bool,
}

const MIN_LEN: u32 = 512;
const MAX_LEN: u32 = 0x00ff_ffff;

fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.len() <= 20 {
        v.parse().ok()
    } else {
        None
    }
}

fn parse_range(v: &str, lo: u32, hi: u32) -> Option<u32> {
    parse_number(v)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (lo..=hi).contains(n))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

impl Negotiator {
    /// A negotiator starting from the RFC defaults.
    pub fn new(limits: TargetLimits) -> Self {
        Negotiator {
            params: SessionParams::new(&limits),
            limits,
            declared_mrdsl: false,
        }
    }

    /// The limits this negotiator enforces.
    pub fn limits(&self) -> &TargetLimits {
        &self.limits
    }

    /// Answers every operational key in `offers` into `resp`. With
    /// `operational_stage`, also declares our MaxRecvDataSegmentLength once.
    pub fn negotiate(&mut self, offers: &KeyValues, resp: &mut KeyValues, operational_stage: bool) {
        for (key, value) in &offers.0 {
            if is_login_key(key) {
                continue;
            }
            if let Some(answer) = self.answer(key, value) {
                resp.push(key, answer);
            }
        }
        if operational_stage && !self.declared_mrdsl {
            self.declared_mrdsl = true;
            resp.push(
                "MaxRecvDataSegmentLength",
                self.params.target_mrdsl.to_string(),
            );
        }
        // FirstBurstLength must not exceed MaxBurstLength (RFC 7143 §13.14).
        if self.params.first_burst_length > self.params.max_burst_length {
            self.params.first_burst_length = self.params.max_burst_length;
        }
    }

    fn digest_choice(&self, value: &str, allowed: bool) -> Option<bool> {
        value.split(',').find_map(|v| match v {
            "None" => Some(false),
            "CRC32C" if allowed => Some(true),
            _ => None,
        })
    }

    /// The answer for one key, or `None` for declarative keys that need none.
    fn answer(&mut self, key: &str, value: &str) -> Option<String> {
        let reject = || Some("Reject".to_owned());
        let p = &mut self.params;
        let l = &self.limits;
        match key {
            "HeaderDigest" => match self.digest_choice(value, l.allow_header_digest) {
                Some(d) => {
                    self.params.header_digest = d;
                    Some(if d { "CRC32C" } else { "None" }.to_owned())
                }
                None => reject(),
            },
            "DataDigest" => match self.digest_choice(value, l.allow_data_digest) {
                Some(d) => {
                    self.params.data_digest = d;
                    Some(if d { "CRC32C" } else { "None" }.to_owned())
                }
                None => reject(),
            },
            "MaxConnections" => match parse_range(value, 1, 65535) {
                Some(_) => {
                    p.max_connections = 1;
                    Some("1".into())
                }
                None => reject(),
            },
            "InitialR2T" => match parse_bool(value) {
                Some(v) => {
                    p.initial_r2t = v || l.initial_r2t;
                    Some(yes_no(p.initial_r2t).into())
                }
                None => reject(),
            },
            "ImmediateData" => match parse_bool(value) {
                Some(v) => {
                    p.immediate_data = v && l.immediate_data;
                    Some(yes_no(p.immediate_data).into())
                }
                None => reject(),
            },
            "MaxRecvDataSegmentLength" => {
                // Declarative: what the initiator can receive. No answer.
                match parse_range(value, MIN_LEN, MAX_LEN) {
                    Some(v) => {
                        p.initiator_mrdsl = v;
                        None
                    }
                    None => reject(),
                }
            }
            "MaxBurstLength" => match parse_range(value, MIN_LEN, MAX_LEN) {
                Some(v) => {
                    p.max_burst_length = v.min(l.max_burst_length);
                    Some(p.max_burst_length.to_string())
                }
                None => reject(),
            },
            "FirstBurstLength" => match parse_range(value, MIN_LEN, MAX_LEN) {
                Some(v) => {
                    p.first_burst_length = v.min(l.first_burst_length);
                    Some(p.first_burst_length.to_string())
                }
                None => reject(),
            },
            "MaxOutstandingR2T" => match parse_range(value, 1, 65535) {
                Some(v) => {
                    p.max_outstanding_r2t = v.min(l.max_outstanding_r2t);
                    Some(p.max_outstanding_r2t.to_string())
                }
                None => reject(),
            },
            "DataPDUInOrder" => match parse_bool(value) {
                // OR with our Yes: always Yes.
                Some(_) => Some("Yes".into()),
                None => reject(),
            },
            "DataSequenceInOrder" => match parse_bool(value) {
                Some(_) => Some("Yes".into()),
                None => reject(),
            },
            "ErrorRecoveryLevel" => match parse_range(value, 0, 2) {
                Some(_) => {
                    p.error_recovery_level = 0;
                    Some("0".into())
                }
                None => reject(),
            },
            "DefaultTime2Wait" => match parse_range(value, 0, 3600) {
                Some(v) => {
                    p.default_time2wait = v.max(l.default_time2wait);
                    Some(p.default_time2wait.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Retain" => match parse_range(value, 0, 3600) {
                Some(v) => {
                    p.default_time2retain = v.min(l.default_time2retain);
                    Some(p.default_time2retain.to_string())
                }
                None => reject(),
            },
            "OFMarker" | "IFMarker" | "OFMarkInt" | "IFMarkInt" => reject(),
            "iSCSIProtocolLevel" => match parse_range(value, 0, 31) {
                Some(v) => Some(v.min(1).to_string()),
                None => reject(),
            },
            "TaskReporting" => Some("RFC3720".into()),
            // Target-declarative keys the initiator must not send, and
            // SendTargets outside a Text request.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "SendTargets" => {
                Some("Irrelevant".into())
            }
            _ => Some("NotUnderstood".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> KeyValues {
        KeyValues(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn open_iscsi_offer() {
        let mut n = Negotiator::new(TargetLimits::default());
        let mut resp = KeyValues::default();
        n.negotiate(
            &kv(&[
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("DefaultTime2Wait", "2"),
                ("DefaultTime2Retain", "0"),
                ("IFMarker", "No"),
                ("OFMarker", "No"),
                ("ErrorRecoveryLevel", "0"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("MaxOutstandingR2T", "1"),
                ("MaxConnections", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("MaxRecvDataSegmentLength", "262144"),
                ("X-com.example.Foo", "1"),
            ]),
            &mut resp,
            true,
        );
        assert_eq!(resp.get("IFMarker"), Some("Reject"));
        assert_eq!(resp.get("InitialR2T"), Some("No"));
        assert_eq!(resp.get("X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(resp.get("MaxRecvDataSegmentLength"), Some("262144"));
        assert_eq!(n.params.initiator_mrdsl, 262_144);
        assert_eq!(n.params.first_burst_length, 262_144);
        assert_eq!(n.params.max_burst_length, 16_776_192);
        assert!(!n.params.initial_r2t);
    }

    #[test]
    fn ranges_and_results() {
        let mut n = Negotiator::new(TargetLimits::default());
        let mut resp = KeyValues::default();
        n.negotiate(
            &kv(&[
                ("MaxBurstLength", "100"),
                ("FirstBurstLength", "0x10000"),
                ("DefaultTime2Wait", "1"),
                ("DefaultTime2Retain", "20"),
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "Bogus"),
                ("ErrorRecoveryLevel", "2"),
                ("MaxOutstandingR2T", "99"),
                ("InitialR2T", "maybe"),
            ]),
            &mut resp,
            false,
        );
        assert_eq!(resp.get("MaxBurstLength"), Some("Reject"));
        assert_eq!(resp.get("FirstBurstLength"), Some("65536"));
        assert_eq!(resp.get("DefaultTime2Wait"), Some("2"));
        assert_eq!(resp.get("DefaultTime2Retain"), Some("0"));
        assert_eq!(resp.get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(resp.get("DataDigest"), Some("Reject"));
        assert_eq!(resp.get("ErrorRecoveryLevel"), Some("0"));
        assert_eq!(resp.get("MaxOutstandingR2T"), Some("16"));
        assert_eq!(resp.get("InitialR2T"), Some("Reject"));
        assert!(resp.get("MaxRecvDataSegmentLength").is_none());
        assert!(n.params.header_digest);
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut n = Negotiator::new(TargetLimits::default());
        let mut resp = KeyValues::default();
        n.negotiate(
            &kv(&[("MaxBurstLength", "65536"), ("FirstBurstLength", "262144")]),
            &mut resp,
            true,
        );
        assert_eq!(n.params.first_burst_length, 65_536);
    }
}
