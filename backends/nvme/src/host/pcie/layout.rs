//! Where everything lives in the DMA arena: fixed areas per queue id, computed, never
//! allocated, so a controller reset re-creates its queues in the same memory.
//!
//! ```text
//! [ shadow doorbells | event indexes | queue 0 (admin) | queue 1 | ... | queue N ]
//! queue area: [ SQ | CQ | one PRP list page per slot | one bounce buffer per slot ]
//! ```
//! Each command slot (CID) owns a bounce buffer of the queue's largest transfer and, when that
//! spans more than two pages, a PRP list page written once with the buffer's pages: a command
//! only sets PRP1 and PRP2.

/// The memory page size the driver uses (CC.MPS = 0).
pub const PAGE: usize = 4096;
/// Admin queue entries.
pub const ADMIN_QSIZE: u16 = 32;
/// Largest admin data buffer (Identify and log pages: 4 KiB; two pages leave room).
pub const ADMIN_MAX_TRANSFER: usize = 2 * PAGE;
/// Largest I/O transfer (SPDK's NVMe PCIe driver also carries 128 KiB per command).
pub const IO_MAX_TRANSFER: usize = 128 << 10;
/// PRP entries a list page holds.
const PRPS_PER_PAGE: usize = PAGE / 8;

const fn round_up(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

/// One queue's area, as offsets from the arena's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueArea {
    /// Entries of the submission and completion queue.
    pub qsize: u16,
    /// The submission queue (qsize × 64 bytes).
    pub sq: usize,
    /// The completion queue (qsize × 16 bytes).
    pub cq: usize,
    /// PRP list pages, one per slot (none when transfers fit two pages).
    pub prp_lists: Option<usize>,
    /// Bounce buffers, one per slot, `max_transfer` bytes each.
    pub bounce: usize,
    /// Largest transfer of one command.
    pub max_transfer: usize,
}

impl QueueArea {
    fn new(at: usize, qsize: u16, max_transfer: usize) -> (QueueArea, usize) {
        let n = qsize as usize;
        let sq = at;
        let cq = sq + round_up(n * 64);
        let pages = max_transfer / PAGE;
        let (prp_lists, after) = if pages > 2 {
            (Some(cq + round_up(n * 16)), cq + round_up(n * 16) + n * PAGE)
        } else {
            (None, cq + round_up(n * 16))
        };
        let bounce = after;
        let end = bounce + n * max_transfer;
        (QueueArea { qsize, sq, cq, prp_lists, bounce, max_transfer }, end)
    }

    /// Slot `cid`'s bounce buffer offset.
    pub fn bounce_of(&self, cid: u16) -> usize {
        self.bounce + cid as usize * self.max_transfer
    }

    /// Slot `cid`'s PRP list page offset, if the queue has lists.
    pub fn prp_list_of(&self, cid: u16) -> Option<usize> {
        self.prp_lists.map(|p| p + cid as usize * PAGE)
    }
}

/// The arena of a controller with `io_queues` I/O queues of up to `io_qsize` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// I/O queues the arena has room for.
    pub io_queues: u16,
    /// Entries per I/O queue at most.
    pub io_qsize: u16,
    /// The shadow doorbell page(s) (Doorbell Buffer Config's PRP1).
    pub shadow: usize,
    /// The event index page(s) (PRP2).
    pub eventidx: usize,
    admin: QueueArea,
    io_start: usize,
    io_stride: usize,
    len: usize,
}

impl Layout {
    /// The layout for `io_queues` queues of `io_qsize` entries (at least 2).
    pub fn new(io_queues: u16, io_qsize: u16) -> Layout {
        let io_qsize = io_qsize.max(2);
        // Shadow doorbells: two u32 per queue at the 4-byte stride the driver assumes (the
        // buffer is indexed with CAP.DSTRD; DSTRD 0 is checked at bring-up).
        let db_bytes = round_up((io_queues as usize + 1) * 8);
        let shadow = 0;
        let eventidx = db_bytes;
        let (admin, after_admin) = QueueArea::new(2 * db_bytes, ADMIN_QSIZE, ADMIN_MAX_TRANSFER);
        let (_, after_one) = QueueArea::new(after_admin, io_qsize, IO_MAX_TRANSFER);
        let io_stride = after_one - after_admin;
        let len = after_admin + io_stride * io_queues as usize;
        Layout { io_queues, io_qsize, shadow, eventidx, admin, io_start: after_admin, io_stride, len }
    }

    /// The arena's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the arena is empty (never: the admin queue is always there).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue `qid`'s area with `qsize` entries (0: the admin queue; an I/O queue's `qsize` is
    /// at most `io_qsize`), or `None` beyond the arena.
    pub fn queue(&self, qid: u16, qsize: u16) -> Option<QueueArea> {
        if qid == 0 {
            return Some(self.admin);
        }
        if qid > self.io_queues || qsize > self.io_qsize || qsize < 2 {
            return None;
        }
        let at = self.io_start + (qid as usize - 1) * self.io_stride;
        Some(QueueArea::new(at, qsize, IO_MAX_TRANSFER).0)
    }

    /// The PRP entries of slot `cid`'s list page: the bounce buffer's pages after the first.
    pub fn prp_list_entries(area: &QueueArea, iova: u64, cid: u16) -> impl Iterator<Item = u64> {
        let first = iova + area.bounce_of(cid) as u64;
        let pages = (area.max_transfer / PAGE).min(PRPS_PER_PAGE + 1);
        (1..pages).map(move |i| first + (i * PAGE) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_are_page_aligned_disjoint_and_inside_the_arena() {
        let l = Layout::new(4, 128);
        let mut spans = vec![(l.shadow, l.shadow + PAGE), (l.eventidx, l.eventidx + PAGE)];
        for qid in 0..=4 {
            let a = l.queue(qid, if qid == 0 { ADMIN_QSIZE } else { 128 }).unwrap();
            let n = a.qsize as usize;
            for off in [a.sq, a.cq, a.bounce] {
                assert_eq!(off % PAGE, 0);
            }
            spans.push((a.sq, a.sq + n * 64));
            spans.push((a.cq, a.cq + n * 16));
            if let Some(p) = a.prp_lists {
                spans.push((p, p + n * PAGE));
            }
            spans.push((a.bounce, a.bounce + n * a.max_transfer));
        }
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{w:?} overlap");
        }
        assert!(spans.last().unwrap().1 <= l.len());
        assert!(l.queue(5, 128).is_none() && l.queue(1, 129).is_none());
        // A smaller queue of the same id stays inside the full-size area.
        let small = l.queue(2, 16).unwrap();
        assert_eq!(small.sq, l.queue(2, 128).unwrap().sq);
    }

    #[test]
    fn prp_lists_name_every_page_of_the_bounce_buffer_after_the_first() {
        let l = Layout::new(1, 4);
        let a = l.queue(1, 4).unwrap();
        let e: Vec<u64> = Layout::prp_list_entries(&a, 0x1000_0000, 2).collect();
        assert_eq!(e.len(), IO_MAX_TRANSFER / PAGE - 1);
        assert_eq!(e[0], 0x1000_0000 + (a.bounce_of(2) + PAGE) as u64);
        assert!(l.queue(0, ADMIN_QSIZE).unwrap().prp_lists.is_none());
    }
}
