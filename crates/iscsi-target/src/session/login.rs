//! The login phase of one connection (RFC 7143 §6), as a state machine.
//!
//! [`Login::step`] takes one Login Request and returns what to send and
//! whether the login is still going, done, or failed. It checks, in order:
//! protocol version; the leading-login fields (ISID, TSIH, CID);
//! text continuation (bounded); the required names (InitiatorName,
//! TargetName for Normal sessions); that the target exists and its ACL
//! admits the initiator; authentication (None, or CHAP/mutual CHAP when the
//! target demands it — no skipping to the operational stage); and the stage
//! transitions (0 → 1 → 3, or 0 → 3, or 1 → 3). Operational keys go to the
//! negotiator. The first response of a Normal session carries
//! TargetPortalGroupTag (the portal's, from [`PortalConfig`]); the final one
//! assigns the TSIH.
//!
//! [`LoginPhase`] is what the connection shell drives: it checks that only
//! Login Requests arrive, sends each answer through the [`Wire`] and opens
//! the command window before the final answer goes out.
//!
//! Invariants: every Login Response is built by `Login::answer` (one place
//! for status, stage and TSIH fields, ready for a redirect answer); a
//! failed step answers once and the connection closes; a TSIH is allocated
//! only on the transit to full feature phase.

use std::sync::Arc;

use bytes::Bytes;
use depot_iscsi_proto::chap::{CHALLENGE_LEN, ChapTarget};
use depot_iscsi_proto::encode::{self, TargetPdu};
use depot_iscsi_proto::params::{Negotiator, SessionParams};
use depot_iscsi_proto::pdu::{Header, Pdu};
use depot_iscsi_proto::text::KeyValues;

use crate::config::PortalConfig;
use crate::registry::{TargetEntry, TargetRegistry};

use super::Wire;
use super::window::CmdWindow;

/// Login status classes and details (RFC 7143 §11.13.5).
pub mod status {
    /// Target moved temporarily (class 1, detail 1): log in at the
    /// `TargetAddress` the response carries.
    pub const TARGET_MOVED_TEMPORARILY: (u8, u8) = (1, 1);
    /// Initiator error (class 2, detail 0).
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    /// Authentication failure.
    pub const AUTH_FAILURE: (u8, u8) = (2, 1);
    /// Authorization failure.
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 2);
    /// Target not found.
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    /// Unsupported version.
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    /// Too many connections.
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    /// Missing parameter.
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    /// Session type not supported.
    pub const SESSION_TYPE_UNSUPPORTED: (u8, u8) = (2, 9);
    /// Session does not exist.
    pub const NO_SESSION: (u8, u8) = (2, 10);
    /// Invalid request during login.
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 11);
}

/// Most text accumulated across continued Login Requests.
const MAX_LOGIN_TEXT: usize = 64 * 1024;

/// Kind of session being logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    /// SendTargets only.
    Discovery,
    /// SCSI I/O to one target.
    Normal,
}

/// A completed login.
pub struct Established {
    /// Discovery or Normal.
    pub kind: SessionType,
    /// Initiator name.
    pub initiator: String,
    /// ISID.
    pub isid: [u8; 6],
    /// Assigned TSIH.
    pub tsih: u16,
    /// The target (Normal sessions).
    pub target: Option<Arc<TargetEntry>>,
    /// Negotiated parameters.
    pub params: SessionParams,
    /// CmdSN of the login: the first ExpCmdSN.
    pub cmd_sn: u32,
    /// Connection id.
    pub cid: u16,
}

/// What to do after a login step.
pub enum Step {
    /// Send this and wait for the next request.
    Continue(TargetPdu),
    /// Send this; the connection is now in full feature phase.
    Done(TargetPdu, Box<Established>),
    /// Send this and close the connection.
    Fail(TargetPdu),
}

/// Login state of one connection.
pub struct Login {
    registry: Arc<TargetRegistry>,
    negotiator: Negotiator,
    initiator: Option<String>,
    kind: Option<SessionType>,
    target: Option<Arc<TargetEntry>>,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    cmd_sn: u32,
    cid: u16,
    /// TargetPortalGroupTag of the portal.
    tpgt: u16,
    started: bool,
    sent_tpgt: bool,
    authenticated: bool,
    auth_method_chosen: bool,
    chap: Option<ChapTarget>,
    pending_text: Vec<u8>,
}

impl Login {
    /// A new login on a fresh connection to a portal with `config`.
    pub fn new(registry: Arc<TargetRegistry>, config: &PortalConfig) -> Self {
        Login {
            registry,
            negotiator: Negotiator::new(config.limits.clone()),
            initiator: None,
            kind: None,
            target: None,
            isid: [0; 6],
            tsih: 0,
            itt: 0,
            cmd_sn: 0,
            cid: 0,
            tpgt: config.portal_group_tag,
            started: false,
            sent_tpgt: false,
            authenticated: false,
            auth_method_chosen: false,
            chap: None,
            pending_text: Vec::new(),
        }
    }

    /// Builds a Login Response: the one place every answer is made.
    fn answer(
        &self,
        transit: bool,
        csg: u8,
        nsg: u8,
        tsih: u16,
        (class, detail): (u8, u8),
        data: Bytes,
    ) -> TargetPdu {
        encode::login_response(
            transit, false, csg, nsg, self.isid, tsih, self.itt, class, detail, data,
        )
    }

    /// A successful answer carrying `kv`.
    fn respond(&self, transit: bool, csg: u8, nsg: u8, tsih: u16, kv: &KeyValues) -> TargetPdu {
        self.answer(transit, csg, nsg, tsih, (0, 0), Bytes::from(kv.encode()))
    }

    /// A failure answer with status `(class, detail)`.
    fn fail(&self, status: (u8, u8)) -> Step {
        Step::Fail(self.answer(false, 0, 0, 0, status, Bytes::new()))
    }

    /// Handles one Login Request.
    pub fn step(&mut self, pdu: &Pdu) -> Step {
        let Header::Login {
            transit,
            cont,
            csg,
            nsg,
            version_max,
            version_min,
            isid,
            tsih,
            itt,
            cmd_sn,
            cid,
            ..
        } = pdu.header
        else {
            return self.fail(status::INVALID_DURING_LOGIN);
        };
        self.itt = itt;
        if !self.started {
            self.started = true;
            self.isid = isid;
            self.tsih = tsih;
            self.cmd_sn = cmd_sn;
            self.cid = cid;
            if version_min > 0 || version_max < version_min {
                return self.fail(status::UNSUPPORTED_VERSION);
            }
        } else if isid != self.isid || tsih != self.tsih {
            return self.fail(status::INITIATOR_ERROR);
        }
        if pdu.data_digest_error {
            return self.fail(status::INITIATOR_ERROR);
        }
        if self.pending_text.len() + pdu.data.len() > MAX_LOGIN_TEXT {
            return self.fail(status::INITIATOR_ERROR);
        }
        self.pending_text.extend_from_slice(&pdu.data);
        if cont {
            if transit {
                // T and C together are a protocol error.
                return self.fail(status::INITIATOR_ERROR);
            }
            // Acknowledge and wait for the rest of the text.
            return Step::Continue(self.respond(false, csg, nsg, 0, &KeyValues::default()));
        }
        let text = std::mem::take(&mut self.pending_text);
        let offers = match KeyValues::parse(&text) {
            Ok(kv) if kv.duplicate_key().is_none() => kv,
            _ => return self.fail(status::INITIATOR_ERROR),
        };
        if let Err(st) = self.identify(&offers) {
            return self.fail(st);
        }
        // A target served elsewhere: send a Normal login there (before any
        // authentication; the ACL has allowed the initiator).
        let redirect = match (self.kind, &self.target) {
            (Some(SessionType::Normal), Some(t)) => t.paths.read().redirect.clone(),
            _ => None,
        };
        if let Some(addr) = redirect {
            let mut kv = KeyValues::default();
            kv.push("TargetAddress", addr);
            return Step::Fail(self.answer(
                false,
                csg,
                0,
                0,
                status::TARGET_MOVED_TEMPORARILY,
                Bytes::from(kv.encode()),
            ));
        }
        if tsih != 0 {
            // Adding a connection to an existing session (MC/S) or
            // connection reinstatement: MaxConnections is 1 and ERL is 0, so
            // the initiator must start a new session instead.
            let known = self
                .registry
                .sessions()
                .iter()
                .any(|s| s.tsih == tsih && s.isid == isid);
            return self.fail(if known {
                status::TOO_MANY_CONNECTIONS
            } else {
                status::NO_SESSION
            });
        }
        let mut resp = KeyValues::default();
        if !self.sent_tpgt && self.kind == Some(SessionType::Normal) {
            self.sent_tpgt = true;
            if let Some(alias) = self.target.as_ref().and_then(|t| t.alias.clone()) {
                resp.push("TargetAlias", alias);
            }
            resp.push("TargetPortalGroupTag", self.tpgt.to_string());
        }
        let chap_required = self
            .target
            .as_ref()
            .is_some_and(|t| t.access.read().chap.is_some());
        match csg {
            0 => {
                if let Err(st) = self.security(&offers, chap_required, &mut resp) {
                    return self.fail(st);
                }
                // Operational keys may ride along in the security stage.
                self.negotiator.negotiate(&offers, &mut resp, false);
            }
            1 => {
                if chap_required && !self.authenticated {
                    return self.fail(status::AUTH_FAILURE);
                }
                self.authenticated = true;
                self.negotiator.negotiate(&offers, &mut resp, true);
            }
            _ => return self.fail(status::INITIATOR_ERROR),
        }
        if !transit {
            return Step::Continue(self.respond(false, csg, csg, 0, &resp));
        }
        match (csg, nsg) {
            (0, 1) | (0, 3) | (1, 3) => {}
            _ => return self.fail(status::INITIATOR_ERROR),
        }
        if csg == 0 && !self.authenticated {
            // Still mid-authentication: stay in the security stage.
            return Step::Continue(self.respond(false, csg, csg, 0, &resp));
        }
        if nsg == 1 {
            return Step::Continue(self.respond(true, csg, nsg, 0, &resp));
        }
        // Going to full feature phase. Declare our receive limit if the
        // operational stage was skipped.
        if csg == 0 {
            self.negotiator
                .negotiate(&KeyValues::default(), &mut resp, true);
        }
        let tsih = self.registry.alloc_tsih();
        let pdu = self.respond(true, csg, 3, tsih, &resp);
        let (Some(kind), Some(initiator)) = (self.kind, self.initiator.clone()) else {
            return self.fail(status::MISSING_PARAMETER);
        };
        Step::Done(
            pdu,
            Box::new(Established {
                kind,
                initiator,
                isid: self.isid,
                tsih,
                target: self.target.clone(),
                params: self.negotiator.params.clone(),
                cmd_sn: self.cmd_sn,
                cid: self.cid,
            }),
        )
    }

    /// Records names and session type from the first request that has them
    /// and checks the target and its ACL.
    fn identify(&mut self, offers: &KeyValues) -> Result<(), (u8, u8)> {
        if self.kind.is_some() {
            return Ok(());
        }
        let initiator = offers
            .get("InitiatorName")
            .filter(|n| !n.is_empty())
            .ok_or(status::MISSING_PARAMETER)?;
        let kind = match offers.get("SessionType").unwrap_or("Normal") {
            "Normal" => SessionType::Normal,
            "Discovery" => SessionType::Discovery,
            _ => return Err(status::SESSION_TYPE_UNSUPPORTED),
        };
        if kind == SessionType::Normal {
            let name = offers.get("TargetName").ok_or(status::MISSING_PARAMETER)?;
            let target = self.registry.target(name).ok_or(status::NOT_FOUND)?;
            if !target.access.read().allows(initiator) {
                return Err(status::AUTHORIZATION_FAILURE);
            }
            self.target = Some(target);
        }
        self.initiator = Some(initiator.to_owned());
        self.kind = Some(kind);
        Ok(())
    }

    fn security(
        &mut self,
        offers: &KeyValues,
        chap_required: bool,
        resp: &mut KeyValues,
    ) -> Result<(), (u8, u8)> {
        if let Some(methods) = offers.get("AuthMethod") {
            if self.auth_method_chosen {
                return Err(status::INITIATOR_ERROR);
            }
            self.auth_method_chosen = true;
            let offered: Vec<&str> = methods.split(',').collect();
            if chap_required {
                if !offered.contains(&"CHAP") {
                    return Err(status::AUTH_FAILURE);
                }
                resp.push("AuthMethod", "CHAP");
                let challenge: [u8; CHALLENGE_LEN] = rand::random();
                self.chap = Some(ChapTarget::new(rand::random(), challenge));
            } else if offered.contains(&"None") {
                resp.push("AuthMethod", "None");
                self.authenticated = true;
            } else {
                // Only CHAP offered but no credentials configured to check
                // it against: refuse rather than pretend.
                return Err(status::AUTH_FAILURE);
            }
        }
        let Some(chap) = self.chap.as_mut() else {
            if !self.auth_method_chosen {
                // The security stage must negotiate AuthMethod first.
                return Err(status::INITIATOR_ERROR);
            }
            return Ok(());
        };
        if let Some(a) = offers.get("CHAP_A") {
            chap.offer(a, resp).map_err(|_| status::AUTH_FAILURE)?;
        } else if offers.get("CHAP_R").is_some() {
            if !chap.awaiting_response() {
                return Err(status::AUTH_FAILURE);
            }
            let creds = self
                .target
                .as_ref()
                .and_then(|t| t.access.read().chap.clone())
                .ok_or(status::AUTH_FAILURE)?;
            if let Err(e) = chap.verify(offers, &creds.initiator, creds.target.as_ref(), resp) {
                tracing::info!(error = %e, initiator = ?self.initiator, "CHAP authentication failed");
                return Err(status::AUTH_FAILURE);
            }
            self.authenticated = true;
        }
        Ok(())
    }
}

/// The numbering a connection's first Login Request sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    /// CmdSN of the login: ExpCmdSN and MaxCmdSN until the login completes.
    pub cmd_sn: u32,
    /// ExpStatSN of the login: the first StatSN to send.
    pub exp_stat_sn: u32,
}

/// What the shell does after the login phase took a PDU.
pub enum LoginFlow {
    /// The answer was sent; wait for the next Login Request.
    Continue,
    /// The final answer was sent (the window opened first): the connection
    /// is in full feature phase.
    Done(Box<Established>),
    /// Close the connection once what was sent is on the wire.
    Close,
}

/// The login phase of one connection, as the shell drives it.
pub struct LoginPhase {
    login: Login,
    queue_depth: u32,
}

impl LoginPhase {
    /// Starts the login phase with the connection's first PDU (not yet
    /// stepped). `None` when it is not a Login Request: the connection
    /// closes without an answer.
    pub fn start(
        first: &Pdu,
        registry: Arc<TargetRegistry>,
        config: &PortalConfig,
    ) -> Option<(LoginPhase, Opening)> {
        let Header::Login {
            cmd_sn,
            exp_stat_sn,
            ..
        } = first.header
        else {
            return None;
        };
        let phase = LoginPhase {
            login: Login::new(registry, config),
            queue_depth: config.queue_depth,
        };
        Some((
            phase,
            Opening {
                cmd_sn,
                exp_stat_sn,
            },
        ))
    }

    /// Handles one PDU of the login phase and sends the answer.
    pub fn step(&mut self, pdu: &Pdu, out: &mut impl Wire) -> LoginFlow {
        if !matches!(pdu.header, Header::Login { .. }) {
            // Only Login Requests until the login completes.
            return LoginFlow::Close;
        }
        match self.login.step(pdu) {
            Step::Continue(resp) => {
                out.send(resp);
                LoginFlow::Continue
            }
            Step::Done(resp, est) => {
                // Open the command window before the final response goes out.
                let window = CmdWindow::new(est.cmd_sn, self.queue_depth);
                out.publish_window(window.exp(), window.max());
                out.send(resp);
                LoginFlow::Done(est)
            }
            Step::Fail(resp) => {
                out.send(resp);
                LoginFlow::Close
            }
        }
    }
}
