//! Asynchronous messages (RFC 7143 §11.9) telling a logged-in initiator what changed under it
//! without waiting for its next command: the node's LUN set (a LUN added or removed) and a
//! unit's capacity. Each is an AsyncEvent 0 (SCSI asynchronous event) carrying the sense data
//! of the matching unit attention, which the SCSI model also reports on the next command.
//! Checked on the connection's timer (a few times a second), never on the data path.

use super::command::encode_lun;
use super::conn::{Conn, Phase};
use super::outbox::OutData;
use super::pdu::{flag, op, Bhs, RESERVED_TAG};
use crate::scsi::sense::{asc, key, Sense};
use std::sync::atomic::Ordering;

/// AsyncEvent byte offset and its SCSI-event code.
const ASYNC_EVENT: usize = 36;
const SCSI_EVENT: u8 = 0;

impl Conn {
    /// Sends the events due since the last check.
    pub(super) fn async_events(&mut self) {
        if !matches!(self.phase, Phase::Full) {
            return;
        }
        let Some(node) = self.sess.as_ref().and_then(|s| s.node.clone()) else { return };
        let gen = node.generation.load(Ordering::Acquire);
        if gen != self.announced_gen {
            self.announced_gen = gen;
            self.refresh_luns();
            let lun = self.luns.first().map(|(id, _)| *id).unwrap_or(0);
            self.send_scsi_event(lun, Sense::new(key::UNIT_ATTENTION, asc::REPORTED_LUNS_CHANGED));
        }
        let sizes: Vec<(u64, u64)> = self.luns.iter().map(|(id, ch)| (*id, ch.lun.bdev().num_blocks())).collect();
        for (id, blocks) in sizes {
            match self.capacities.iter_mut().find(|(l, _)| *l == id) {
                Some((_, known)) if *known != blocks => {
                    *known = blocks;
                    self.send_scsi_event(id, Sense::new(key::UNIT_ATTENTION, asc::CAPACITY_CHANGED));
                }
                Some(_) => {}
                None => self.capacities.push((id, blocks)),
            }
        }
    }

    fn send_scsi_event(&mut self, lun: u64, sense: Sense) {
        tracing::debug!(peer = %self.peer, lun, "iscsi: sending an asynchronous event");
        let mut r = Bhs::new(op::ASYNC_MSG);
        r.set_flags(flag::FINAL);
        r.set_lun_field(encode_lun(lun));
        r.set_itt(RESERVED_TAG);
        r.set_byte(ASYNC_EVENT, SCSI_EVENT);
        self.seq_numbers(&mut r, true);
        let fixed = sense.to_fixed();
        let mut data = Vec::with_capacity(2 + fixed.len());
        data.extend_from_slice(&(fixed.len() as u16).to_be_bytes());
        data.extend_from_slice(&fixed);
        self.push(r, OutData::Owned(data));
    }
}
