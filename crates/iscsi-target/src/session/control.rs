//! The requests that are not SCSI: Text (SendTargets, renegotiated
//! MaxRecvDataSegmentLength) with continuations, Logout, NOP-Out echo and
//! the target's idle NOP-In ping.
//!
//! Invariants: text accumulated across continued requests stays under
//! [`MAX_TEXT`] (beyond it the connection closes) and at most
//! [`MAX_TEXT_CONTINUATIONS`] long responses wait for the initiator to
//! fetch their rest; a text response PDU never exceeds the initiator's
//! MaxRecvDataSegmentLength; SendTargets lists only targets whose ACL
//! admits the initiator; a logout of the session or this connection stops
//! reading, ends collecting tasks and is answered once the running ones
//! have completed; at most one ping is outstanding.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use depot_iscsi_proto::RESERVED_TAG;
use depot_iscsi_proto::encode::{self, reject};
use depot_iscsi_proto::pdu::{Header, Pdu};
use depot_iscsi_proto::text::KeyValues;

use super::{Fault, Session, Wire};

/// Most text accumulated across continued Text Requests.
pub(super) const MAX_TEXT: usize = 64 * 1024;
/// Most long text responses kept waiting for the initiator to fetch the rest.
pub(super) const MAX_TEXT_CONTINUATIONS: usize = 16;

/// Text exchange state: a request being continued, responses being fetched.
#[derive(Default)]
pub(super) struct TextState {
    /// Rest of long responses by TTT: (ITT, remaining data).
    cont: HashMap<u32, (u32, Bytes)>,
    /// Request text received so far (C bit set).
    acc: Vec<u8>,
}

impl Session {
    /// Answers a Text Request (in CmdSN order).
    pub(super) fn text(&mut self, pdu: &Pdu, out: &mut impl Wire) -> Result<(), Fault> {
        let Header::Text {
            itt,
            ttt,
            cont,
            lun,
            ..
        } = pdu.header
        else {
            return Ok(());
        };
        if pdu.data_digest_error {
            out.send(encode::reject(reject::DATA_DIGEST, &pdu.bhs));
            return Ok(());
        }
        if ttt != RESERVED_TAG {
            // The initiator asks for the rest of a long response.
            let Some((_, rest)) = self.text.cont.remove(&ttt) else {
                out.send(encode::reject(reject::INVALID_PDU_FIELD, &pdu.bhs));
                return Ok(());
            };
            self.send_text(itt, lun, rest, out);
            return Ok(());
        }
        if self.text.acc.len() + pdu.data.len() > MAX_TEXT {
            return Err(Fault::Violation("text request too long"));
        }
        self.text.acc.extend_from_slice(&pdu.data);
        if cont {
            let t = self.tags.next();
            out.send(encode::text_response(
                itt,
                t,
                lun,
                false,
                false,
                Bytes::new(),
            ));
            return Ok(());
        }
        let text = std::mem::take(&mut self.text.acc);
        let Ok(offers) = KeyValues::parse(&text) else {
            out.send(encode::reject(reject::PROTOCOL_ERROR, &pdu.bhs));
            return Ok(());
        };
        let mut resp = KeyValues::default();
        for (key, value) in &offers.0 {
            match key.as_str() {
                "SendTargets" => self.send_targets(value, &mut resp),
                "MaxRecvDataSegmentLength" => {
                    // Declarative; may be renegotiated in full feature phase.
                    if let Ok(v) = value.parse::<u32>()
                        && (512..=0x00ff_ffff).contains(&v)
                    {
                        self.params.initiator_mrdsl = v;
                    }
                }
                _ => resp.push(key, "NotUnderstood"),
            }
        }
        self.send_text(itt, lun, Bytes::from(resp.encode()), out);
        Ok(())
    }

    /// Sends a text response, continuing it over several PDUs when longer
    /// than the initiator can receive.
    fn send_text(&mut self, itt: u32, lun: [u8; 8], data: Bytes, out: &mut impl Wire) {
        let max = self.params.initiator_mrdsl.max(512) as usize;
        if data.len() <= max {
            out.send(encode::text_response(
                itt,
                RESERVED_TAG,
                lun,
                true,
                false,
                data,
            ));
        } else {
            let ttt = self.tags.next();
            let head = data.slice(..max);
            let rest = data.slice(max..);
            if self.text.cont.len() >= MAX_TEXT_CONTINUATIONS {
                // Abandoned continuations: forget them rather than grow.
                self.text.cont.clear();
            }
            self.text.cont.insert(ttt, (itt, rest));
            out.send(encode::text_response(itt, ttt, lun, false, true, head));
        }
    }

    /// `SendTargets=<value>`: `All`, the session's own target (empty), or
    /// one target by name; each with this portal's address, then every
    /// other router's portal that serves it (a cluster's paths).
    fn send_targets(&self, value: &str, resp: &mut KeyValues) {
        let tpgt = self.config.portal_group_tag;
        let addr = match self.portal {
            SocketAddr::V4(a) => format!("{}:{},{}", a.ip(), a.port(), tpgt),
            SocketAddr::V6(a) => format!("[{}]:{},{}", a.ip(), a.port(), tpgt),
        };
        for t in self.registry.targets() {
            let wanted = match value {
                "All" => true,
                "" => self.target.as_ref().is_some_and(|cur| cur.name == t.name),
                name => name == t.name,
            };
            if wanted && t.access.read().allows(&self.initiator) {
                resp.push("TargetName", t.name.clone());
                resp.push("TargetAddress", addr.clone());
                for (other, tag) in &t.paths.read().others {
                    resp.push("TargetAddress", format!("{other},{tag}"));
                }
            }
        }
    }

    /// A Logout Request (in CmdSN order): refused for another connection
    /// or recovery; otherwise collecting tasks end and the response waits
    /// for the running ones ([`Session::end`]).
    pub(super) fn logout_request(&mut self, reason: u8, itt: u32, cid: u16, out: &mut impl Wire) {
        let response = match reason {
            0 => 0,
            1 if cid == self.cid => 0,
            1 => 1,
            _ => 2,
        };
        if response != 0 {
            out.send(encode::logout_response(itt, response, 0, 0));
            return;
        }
        // Tasks not yet running are ended; running ones finish first.
        self.abort_collecting(out);
        self.logout = Some(itt);
    }

    /// The Logout Response once nothing runs any more.
    pub(super) fn logout_response(&self, itt: u32) -> encode::TargetPdu {
        encode::logout_response(
            itt,
            0,
            self.params.default_time2wait.min(3600) as u16,
            self.params.default_time2retain.min(3600) as u16,
        )
    }

    /// A NOP-Out with a valid ITT (in CmdSN order): echoed in a NOP-In.
    pub(super) fn nop_out(&mut self, pdu: Pdu, out: &mut impl Wire) {
        let Header::NopOut { itt, lun, .. } = pdu.header else {
            return;
        };
        if pdu.data_digest_error {
            out.send(encode::reject(reject::DATA_DIGEST, &pdu.bhs));
        } else {
            out.send(encode::nop_in(itt, RESERVED_TAG, lun, pdu.data));
        }
    }

    /// A NOP-Out answering a ping (ITT reserved, no CmdSN consumed).
    pub(super) fn ping_answered(&mut self, ttt: u32) {
        if self.ping.is_some_and(|(t, _)| t == ttt) {
            self.ping = None;
        }
    }

    /// When the idle timer fires next: a ping's deadline while one is
    /// outstanding, else the idle interval after the last receive.
    pub fn idle_deadline(&self, last_rx: Instant) -> Instant {
        match self.ping {
            Some((_, sent)) => sent + self.config.nop_timeout,
            None => last_rx + self.config.nop_interval,
        }
    }

    /// The idle timer fired (see [`idle_deadline`](Self::idle_deadline)):
    /// pings the initiator, or gives up on it when the last ping went
    /// unanswered.
    pub fn tick(&mut self, now: Instant, out: &mut impl Wire) -> Result<(), Fault> {
        if self.ping.is_some() {
            return Err(Fault::PingUnanswered);
        }
        let ttt = self.tags.next();
        self.ping = Some((ttt, now));
        out.send(encode::nop_in(RESERVED_TAG, ttt, [0; 8], Bytes::new()));
        Ok(())
    }
}
