//! The on-disk format, byte by byte (docs/blobstore.md explains it in prose): the two super
//! blocks, log blocks, checkpoint blocks, and the records both carry. Pure functions of bytes:
//! every decoder takes hostile input and returns an error, never panics.

use thiserror::Error;
use uuid::Uuid;

/// The metadata block: the unit of every metadata read and write (and of atomicity).
pub const BLOCK: usize = 4096;
/// Where a block's CRC32C sits (over the bytes before it).
const CRC_AT: usize = BLOCK - 4;
/// Format version written by this code.
pub const VERSION: u32 = 1;
/// Super block signature.
pub const SUPER_MAGIC: [u8; 8] = *b"FERRYBS\x01";
/// Log block signature.
pub const LOG_MAGIC: u32 = u32::from_le_bytes(*b"FBLG");
/// Checkpoint block signature.
pub const CP_MAGIC: u32 = u32::from_le_bytes(*b"FBCP");
/// Log block header bytes (magic, payload length, epoch, seq).
pub const LOG_HEADER: usize = 24;
/// Payload bytes of a log block.
pub const LOG_PAYLOAD: usize = CRC_AT - LOG_HEADER;
/// Checkpoint block header bytes.
pub const CP_HEADER: usize = 40;
/// Payload bytes of a checkpoint block.
pub const CP_PAYLOAD: usize = CRC_AT - CP_HEADER;
/// Largest encoded record (it must fit a block's payload).
pub const MAX_RECORD: usize = 1024;
/// Most granules (validity bits) per cluster: a bitmap record stays under 600 bytes.
pub const MAX_GRANULES: u64 = 4096;
/// Blob id 0 is the store itself (its xattrs hold the lvstore's name and uuid).
pub const STORE_ID: u64 = 0;

/// Why metadata bytes were refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// The block's checksum does not match its bytes.
    #[error("checksum mismatch")]
    Checksum,
    /// The signature is not ours.
    #[error("bad signature")]
    Magic,
    /// A version or incompatible-feature flag this code does not know.
    #[error("unsupported format version {0}")]
    Version(u32),
    /// A field is out of range or inconsistent; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// A record runs past the end of its block.
    #[error("truncated record")]
    Truncated,
}

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn seal(block: &mut [u8; BLOCK]) {
    let c = crc(&block[..CRC_AT]);
    block[CRC_AT..].copy_from_slice(&c.to_le_bytes());
}

fn check(block: &[u8]) -> Result<(), FormatError> {
    if block.len() != BLOCK {
        return Err(FormatError::Invalid(format!("metadata block of {} bytes", block.len())));
    }
    let stored = u32::from_le_bytes(block[CRC_AT..].try_into().expect("4 bytes"));
    if crc(&block[..CRC_AT]) != stored {
        return Err(FormatError::Checksum);
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The super block. Two copies (metadata blocks 0 and 1) are written alternately; at load the
/// valid one with the higher `seq` wins, so a torn or corrupt write of one leaves the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperBlock {
    /// Incremented by every super block write; even writes go to copy 0, odd to copy 1.
    pub seq: u64,
    /// The store's uuid.
    pub uuid: Uuid,
    /// What kind of store (`LVOLSTORE` for lvol stores).
    pub bstype: [u8; 16],
    /// The base bdev's block size when the store was made.
    pub io_unit: u32,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Bytes per validity granule (a cluster has `cluster_size / granule` of them).
    pub granule: u64,
    /// Clusters the store spans now (metadata clusters included).
    pub total_clusters: u64,
    /// Clusters `[0, md_clusters)` hold metadata; data clusters follow.
    pub md_clusters: u64,
    /// Clusters the checkpoint slots have room for: the limit of `grow`.
    pub max_clusters: u64,
    /// Blobs the checkpoint slots have room for.
    pub max_blobs: u64,
    /// First metadata block of checkpoint slot 0 and slot 1.
    pub cp_start: [u64; 2],
    /// Blocks per checkpoint slot.
    pub cp_blocks: u64,
    /// First metadata block of the log, and its length in blocks (a ring).
    pub log_start: u64,
    /// Length of the log ring in blocks.
    pub log_blocks: u64,
    /// The slot holding the current checkpoint.
    pub cp_slot: u32,
    /// Blocks the current checkpoint uses.
    pub cp_used: u64,
    /// The current checkpoint's id (its blocks carry it).
    pub cp_id: u64,
    /// Log epoch: log blocks of another epoch are stale and end the replay.
    pub epoch: u64,
    /// Sequence number of the first log block to replay after the checkpoint.
    pub log_head: u64,
    /// Written by a clean unload: the log after `log_head` is empty.
    pub clean: bool,
}

impl SuperBlock {
    /// Encodes and seals it.
    pub fn encode(&self) -> Box<[u8; BLOCK]> {
        let mut b = Box::new([0u8; BLOCK]);
        b[0..8].copy_from_slice(&SUPER_MAGIC);
        put32(&mut b[..], 8, VERSION);
        put32(&mut b[..], 12, 0); // incompatible feature flags: none yet
        put64(&mut b[..], 16, self.seq);
        b[24..40].copy_from_slice(self.uuid.as_bytes());
        b[40..56].copy_from_slice(&self.bstype);
        put32(&mut b[..], 56, BLOCK as u32);
        put32(&mut b[..], 60, self.io_unit);
        put64(&mut b[..], 64, self.cluster_size);
        put64(&mut b[..], 72, self.granule);
        put64(&mut b[..], 80, self.total_clusters);
        put64(&mut b[..], 88, self.md_clusters);
        put64(&mut b[..], 96, self.max_clusters);
        put64(&mut b[..], 104, self.max_blobs);
        put64(&mut b[..], 112, self.cp_start[0]);
        put64(&mut b[..], 120, self.cp_start[1]);
        put64(&mut b[..], 128, self.cp_blocks);
        put64(&mut b[..], 136, self.log_start);
        put64(&mut b[..], 144, self.log_blocks);
        put32(&mut b[..], 152, self.cp_slot);
        put32(&mut b[..], 156, u32::from(self.clean));
        put64(&mut b[..], 160, self.cp_used);
        put64(&mut b[..], 168, self.cp_id);
        put64(&mut b[..], 176, self.epoch);
        put64(&mut b[..], 184, self.log_head);
        seal(&mut b);
        b
    }

    /// Decodes and checks a super block copy, including that its regions fit `device_bytes`.
    pub fn decode(b: &[u8], device_bytes: u64) -> Result<SuperBlock, FormatError> {
        // The signature first: a copy never written yet (zeroes, as `Store::create` leaves the
        // second one) is absent, not a damaged copy to warn about.
        if b.len() != BLOCK || b[0..8] != SUPER_MAGIC {
            return Err(FormatError::Magic);
        }
        check(b)?;
        let version = u32_at(b, 8);
        if version != VERSION || u32_at(b, 12) != 0 {
            return Err(FormatError::Version(version));
        }
        if u32_at(b, 56) as usize != BLOCK {
            return Err(FormatError::Invalid(format!("metadata block size {}", u32_at(b, 56))));
        }
        let sb = SuperBlock {
            seq: u64_at(b, 16),
            uuid: Uuid::from_slice(&b[24..40]).expect("16 bytes"),
            bstype: b[40..56].try_into().expect("16 bytes"),
            io_unit: u32_at(b, 60),
            cluster_size: u64_at(b, 64),
            granule: u64_at(b, 72),
            total_clusters: u64_at(b, 80),
            md_clusters: u64_at(b, 88),
            max_clusters: u64_at(b, 96),
            max_blobs: u64_at(b, 104),
            cp_start: [u64_at(b, 112), u64_at(b, 120)],
            cp_blocks: u64_at(b, 128),
            log_start: u64_at(b, 136),
            log_blocks: u64_at(b, 144),
            cp_slot: u32_at(b, 152),
            clean: u32_at(b, 156) == 1,
            cp_used: u64_at(b, 160),
            cp_id: u64_at(b, 168),
            epoch: u64_at(b, 176),
            log_head: u64_at(b, 184),
        };
        sb.validate(device_bytes)?;
        Ok(sb)
    }

    /// Checks the geometry: every region inside the metadata clusters, which fit the device.
    pub fn validate(&self, device_bytes: u64) -> Result<(), FormatError> {
        let bad = |what: &str| Err(FormatError::Invalid(format!("super block: {what}")));
        if !self.io_unit.is_power_of_two() || !(512..=BLOCK as u32).contains(&self.io_unit) {
            return bad("io_unit");
        }
        if self.cluster_size < BLOCK as u64
            || !self.cluster_size.is_multiple_of(BLOCK as u64)
            || self.cluster_size > 1 << 30
        {
            return bad("cluster_size");
        }
        if self.granule < BLOCK as u64
            || !self.cluster_size.is_multiple_of(self.granule)
            || self.cluster_size / self.granule > MAX_GRANULES
        {
            return bad("granule");
        }
        if self.md_clusters == 0
            || self.md_clusters >= self.total_clusters
            || self.total_clusters > self.max_clusters
            || self.max_clusters > self.total_clusters.saturating_mul(8)
        {
            return bad("cluster counts");
        }
        match self.total_clusters.checked_mul(self.cluster_size) {
            Some(bytes) if bytes <= device_bytes => {}
            _ => return bad("store larger than its device"),
        }
        let md_blocks = self.md_clusters * (self.cluster_size / BLOCK as u64);
        let inside = |start: u64, len: u64| start >= 2 && start.checked_add(len).is_some_and(|end| end <= md_blocks);
        if self.cp_blocks == 0 || !inside(self.cp_start[0], self.cp_blocks) || !inside(self.cp_start[1], self.cp_blocks)
        {
            return bad("checkpoint slots");
        }
        if self.log_blocks < 2 || !inside(self.log_start, self.log_blocks) {
            return bad("log region");
        }
        if self.cp_slot > 1 || self.cp_used > self.cp_blocks || self.max_blobs == 0 {
            return bad("checkpoint");
        }
        Ok(())
    }

    /// Which copy (0 or 1) this super block is written to.
    pub fn copy(&self) -> u64 {
        self.seq % 2
    }

    /// Metadata block of log sequence number `seq`.
    pub fn log_block(&self, seq: u64) -> u64 {
        self.log_start + seq % self.log_blocks
    }

    /// Granules per cluster.
    pub fn granules_per_cluster(&self) -> u64 {
        self.cluster_size / self.granule
    }
}

/// Encodes a log block: `payload` (whole records) at sequence `seq` of `epoch`.
pub fn encode_log_block(epoch: u64, seq: u64, payload: &[u8]) -> Box<[u8; BLOCK]> {
    assert!(payload.len() <= LOG_PAYLOAD, "log payload fits a block");
    let mut b = Box::new([0u8; BLOCK]);
    put32(&mut b[..], 0, LOG_MAGIC);
    put32(&mut b[..], 4, payload.len() as u32);
    put64(&mut b[..], 8, epoch);
    put64(&mut b[..], 16, seq);
    b[LOG_HEADER..LOG_HEADER + payload.len()].copy_from_slice(payload);
    seal(&mut b);
    b
}

/// The payload of a log block, if it is a sealed block of `epoch` at `seq` (else `None`: the
/// log ends here).
pub fn decode_log_block(b: &[u8], epoch: u64, seq: u64) -> Option<&[u8]> {
    check(b).ok()?;
    if u32_at(b, 0) != LOG_MAGIC || u64_at(b, 8) != epoch || u64_at(b, 16) != seq {
        return None;
    }
    let len = u32_at(b, 4) as usize;
    (len <= LOG_PAYLOAD).then(|| &b[LOG_HEADER..LOG_HEADER + len])
}

/// What a checkpoint block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The store's own records (xattrs, blob list, used clusters).
    Store,
    /// One blob's records.
    Blob(u64),
}

/// A checkpoint block's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpHeader {
    /// The checkpoint it belongs to.
    pub cp_id: u64,
    /// Its index in the checkpoint.
    pub index: u32,
    /// Its section.
    pub section: Section,
    /// Its index in its section, and the section's length in blocks.
    pub part: u32,
    /// Blocks in its section.
    pub parts: u32,
}

/// Encodes a checkpoint block.
pub fn encode_cp_block(h: &CpHeader, payload: &[u8]) -> Box<[u8; BLOCK]> {
    assert!(payload.len() <= CP_PAYLOAD, "checkpoint payload fits a block");
    let mut b = Box::new([0u8; BLOCK]);
    put32(&mut b[..], 0, CP_MAGIC);
    put32(&mut b[..], 4, payload.len() as u32);
    put64(&mut b[..], 8, h.cp_id);
    put32(&mut b[..], 16, h.index);
    let (kind, id) = match h.section {
        Section::Store => (0, 0),
        Section::Blob(id) => (1, id),
    };
    put32(&mut b[..], 20, kind);
    put64(&mut b[..], 24, id);
    put32(&mut b[..], 32, h.part);
    put32(&mut b[..], 36, h.parts);
    b[CP_HEADER..CP_HEADER + payload.len()].copy_from_slice(payload);
    seal(&mut b);
    b
}

/// Decodes a checkpoint block of checkpoint `cp_id` at `index`.
pub fn decode_cp_block(b: &[u8], cp_id: u64, index: u32) -> Result<(CpHeader, &[u8]), FormatError> {
    check(b)?;
    if u32_at(b, 0) != CP_MAGIC {
        return Err(FormatError::Magic);
    }
    let len = u32_at(b, 4) as usize;
    let section = match u32_at(b, 20) {
        0 => Section::Store,
        1 => Section::Blob(u64_at(b, 24)),
        k => return Err(FormatError::Invalid(format!("checkpoint section kind {k}"))),
    };
    let h = CpHeader { cp_id: u64_at(b, 8), index: u32_at(b, 16), section, part: u32_at(b, 32), parts: u32_at(b, 36) };
    if h.cp_id != cp_id || h.index != index {
        return Err(FormatError::Invalid(format!("checkpoint block {index} belongs to checkpoint {}", h.cp_id)));
    }
    if len > CP_PAYLOAD || h.parts == 0 || h.part >= h.parts {
        return Err(FormatError::Invalid("checkpoint block header".into()));
    }
    Ok((h, &b[CP_HEADER..CP_HEADER + len]))
}

/// A blob's parent: where reads of its unwritten granules go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// None: unwritten granules read as zeroes.
    None,
    /// A snapshot blob in the same store.
    Blob(u64),
    /// An external bdev (an esnap clone), by uuid.
    External(Uuid),
}

/// Blob flag: thin provisioned.
pub const FLAG_THIN: u32 = 1;
/// Blob flag: read-only (snapshots, `bdev_lvol_set_read_only`).
pub const FLAG_READ_ONLY: u32 = 2;
/// Blob flags: clear method on delete (2 bits: 0 default, 1 none, 2 unmap, 3 write_zeroes).
pub const FLAG_CLEAR_SHIFT: u32 = 2;
/// Every flag this version knows; others refuse the blob.
pub const FLAGS_KNOWN: u32 = FLAG_THIN | FLAG_READ_ONLY | (3 << FLAG_CLEAR_SHIFT);

/// One metadata change. The log carries transactions (records ended by `Commit`); a checkpoint
/// carries the records that rebuild the state from nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A new blob.
    Create {
        /// Its id.
        id: u64,
        /// Its size in clusters.
        num_clusters: u64,
        /// FLAG_* bits.
        flags: u32,
        /// Its parent.
        parent: Parent,
    },
    /// The blob is gone; its clusters are free.
    Delete {
        /// The blob.
        id: u64,
    },
    /// New size; clusters at or past it are released.
    Resize {
        /// The blob.
        id: u64,
        /// Its size in clusters.
        num_clusters: u64,
    },
    /// New flags.
    Flags {
        /// The blob.
        id: u64,
        /// FLAG_* bits.
        flags: u32,
    },
    /// New parent.
    SetParent {
        /// The blob.
        id: u64,
        /// The parent.
        parent: Parent,
    },
    /// Sets (`Some`) or removes (`None`) an extended attribute.
    Xattr {
        /// The blob (STORE_ID for the store).
        id: u64,
        /// Name (at most 255 bytes).
        name: String,
        /// Value (at most 512 bytes).
        value: Option<Vec<u8>>,
    },
    /// Cluster `cluster` of the blob lives at `phys`, and granules `[first, first+count)` of it
    /// are valid (written by the blob itself).
    Map {
        /// The blob.
        id: u64,
        /// Cluster index in the blob.
        cluster: u64,
        /// Physical cluster.
        phys: u64,
        /// First valid granule.
        first: u32,
        /// Number of valid granules.
        count: u32,
    },
    /// Clusters `[cluster, cluster+count)` of the blob, fully valid, at `phys..phys+count`.
    MapRun {
        /// The blob.
        id: u64,
        /// First cluster index.
        cluster: u64,
        /// First physical cluster.
        phys: u64,
        /// Number of clusters.
        count: u64,
    },
    /// Cluster `cluster` at `phys` with exactly the granules set in `bits` valid.
    MapBits {
        /// The blob.
        id: u64,
        /// Cluster index.
        cluster: u64,
        /// Physical cluster.
        phys: u64,
        /// Validity bitmap, granule i is bit i%8 of byte i/8.
        bits: Vec<u8>,
    },
    /// Cluster `cluster` of the blob is unallocated again; its physical cluster is free.
    Release {
        /// The blob.
        id: u64,
        /// Cluster index.
        cluster: u64,
    },
    /// Every cluster of `from` that `to` lacks moves to `to` (with its validity); clusters both
    /// hold stay with `to`, and `from`'s copies are freed. (A snapshot moves everything into
    /// an empty blob; deleting a snapshot merges it into its one clone.)
    Move {
        /// Source blob.
        from: u64,
        /// Destination blob.
        to: u64,
    },
    /// Checkpoint only: the next blob id to hand out.
    NextId {
        /// The id.
        next: u64,
    },
    /// Checkpoint only: the blobs that exist (a blob whose section is unreadable is quarantined).
    Blobs {
        /// Their ids.
        ids: Vec<u64>,
    },
    /// Checkpoint only: clusters `[first, first + 8*bits.len())` in use (bit set) or not.
    Used {
        /// First cluster of the bitmap.
        first: u64,
        /// Bitmap.
        bits: Vec<u8>,
    },
    /// Ends a transaction in the log: the records since the last `Commit` take effect together.
    Commit,
}

mod tag {
    pub const CREATE: u8 = 1;
    pub const DELETE: u8 = 2;
    pub const RESIZE: u8 = 3;
    pub const FLAGS: u8 = 4;
    pub const SET_PARENT: u8 = 5;
    pub const XATTR: u8 = 6;
    pub const MAP: u8 = 7;
    pub const MAP_RUN: u8 = 8;
    pub const MAP_BITS: u8 = 9;
    pub const RELEASE: u8 = 10;
    pub const MOVE: u8 = 11;
    pub const NEXT_ID: u8 = 12;
    pub const BLOBS: u8 = 13;
    pub const USED: u8 = 14;
    pub const COMMIT: u8 = 15;
}

/// Longest xattr name and value.
pub const MAX_XATTR_NAME: usize = 255;
/// Longest xattr value.
pub const MAX_XATTR_VALUE: usize = 512;

fn put_parent(out: &mut Vec<u8>, p: &Parent) {
    match p {
        Parent::None => out.extend_from_slice(&[0; 17]),
        Parent::Blob(id) => {
            out.push(1);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&[0; 8]);
        }
        Parent::External(u) => {
            out.push(2);
            out.extend_from_slice(u.as_bytes());
        }
    }
}

impl Record {
    /// Appends its encoding (`tag u8, len u16, payload`) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0]);
        let t = match self {
            Record::Create { id, num_clusters, flags, parent } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&num_clusters.to_le_bytes());
                out.extend_from_slice(&flags.to_le_bytes());
                put_parent(out, parent);
                tag::CREATE
            }
            Record::Delete { id } => {
                out.extend_from_slice(&id.to_le_bytes());
                tag::DELETE
            }
            Record::Resize { id, num_clusters } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&num_clusters.to_le_bytes());
                tag::RESIZE
            }
            Record::Flags { id, flags } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&flags.to_le_bytes());
                tag::FLAGS
            }
            Record::SetParent { id, parent } => {
                out.extend_from_slice(&id.to_le_bytes());
                put_parent(out, parent);
                tag::SET_PARENT
            }
            Record::Xattr { id, name, value } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
                match value {
                    Some(v) => {
                        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
                        out.extend_from_slice(v);
                    }
                    None => out.extend_from_slice(&u16::MAX.to_le_bytes()),
                }
                tag::XATTR
            }
            Record::Map { id, cluster, phys, first, count } => {
                for v in [id, cluster, phys] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                tag::MAP
            }
            Record::MapRun { id, cluster, phys, count } => {
                for v in [id, cluster, phys, count] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                tag::MAP_RUN
            }
            Record::MapBits { id, cluster, phys, bits } => {
                for v in [id, cluster, phys] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(bits);
                tag::MAP_BITS
            }
            Record::Release { id, cluster } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&cluster.to_le_bytes());
                tag::RELEASE
            }
            Record::Move { from, to } => {
                out.extend_from_slice(&from.to_le_bytes());
                out.extend_from_slice(&to.to_le_bytes());
                tag::MOVE
            }
            Record::NextId { next } => {
                out.extend_from_slice(&next.to_le_bytes());
                tag::NEXT_ID
            }
            Record::Blobs { ids } => {
                for id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
                tag::BLOBS
            }
            Record::Used { first, bits } => {
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(bits);
                tag::USED
            }
            Record::Commit => tag::COMMIT,
        };
        let len = out.len() - start - 3;
        assert!(len + 3 <= MAX_RECORD, "record of {len} bytes");
        out[start] = t;
        out[start + 1..start + 3].copy_from_slice(&(len as u16).to_le_bytes());
    }
}

/// Reads the records of a block payload in order.
pub struct Records<'a> {
    rest: &'a [u8],
}

/// The records of `payload`.
pub fn records(payload: &[u8]) -> Records<'_> {
    Records { rest: payload }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn parent(&mut self) -> Result<Parent, FormatError> {
        let kind = self.u8()?;
        let body = self.take(16)?;
        match kind {
            0 => Ok(Parent::None),
            1 => Ok(Parent::Blob(u64::from_le_bytes(body[..8].try_into().expect("8")))),
            2 => Ok(Parent::External(Uuid::from_slice(body).expect("16"))),
            k => Err(FormatError::Invalid(format!("parent kind {k}"))),
        }
    }
    fn done(&self) -> Result<(), FormatError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FormatError::Invalid("record longer than its fields".into()))
        }
    }
}

fn decode_record(t: u8, body: &[u8]) -> Result<Record, FormatError> {
    let mut r = Reader(body);
    let rec = match t {
        tag::CREATE => Record::Create { id: r.u64()?, num_clusters: r.u64()?, flags: r.u32()?, parent: r.parent()? },
        tag::DELETE => Record::Delete { id: r.u64()? },
        tag::RESIZE => Record::Resize { id: r.u64()?, num_clusters: r.u64()? },
        tag::FLAGS => Record::Flags { id: r.u64()?, flags: r.u32()? },
        tag::SET_PARENT => Record::SetParent { id: r.u64()?, parent: r.parent()? },
        tag::XATTR => {
            let id = r.u64()?;
            let n = r.u8()? as usize;
            let name = std::str::from_utf8(r.take(n)?)
                .map_err(|_| FormatError::Invalid("xattr name is not UTF-8".into()))?
                .to_string();
            let value = match r.u16()? {
                u16::MAX => None,
                len if len as usize > MAX_XATTR_VALUE => {
                    return Err(FormatError::Invalid(format!("xattr value of {len} bytes")))
                }
                len => Some(r.take(len as usize)?.to_vec()),
            };
            Record::Xattr { id, name, value }
        }
        tag::MAP => Record::Map { id: r.u64()?, cluster: r.u64()?, phys: r.u64()?, first: r.u32()?, count: r.u32()? },
        tag::MAP_RUN => Record::MapRun { id: r.u64()?, cluster: r.u64()?, phys: r.u64()?, count: r.u64()? },
        tag::MAP_BITS => {
            let (id, cluster, phys) = (r.u64()?, r.u64()?, r.u64()?);
            let bits = r.take(r.0.len())?.to_vec();
            Record::MapBits { id, cluster, phys, bits }
        }
        tag::RELEASE => Record::Release { id: r.u64()?, cluster: r.u64()? },
        tag::MOVE => Record::Move { from: r.u64()?, to: r.u64()? },
        tag::NEXT_ID => Record::NextId { next: r.u64()? },
        tag::BLOBS => {
            if r.0.len() % 8 != 0 {
                return Err(FormatError::Invalid("blob list length".into()));
            }
            let ids = r.0.chunks(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect();
            r.0 = &[];
            Record::Blobs { ids }
        }
        tag::USED => {
            let first = r.u64()?;
            let bits = r.take(r.0.len())?.to_vec();
            Record::Used { first, bits }
        }
        tag::COMMIT => Record::Commit,
        t => return Err(FormatError::Invalid(format!("record type {t}"))),
    };
    r.done()?;
    Ok(rec)
}

impl Iterator for Records<'_> {
    type Item = Result<Record, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 3 {
            self.rest = &[];
            return Some(Err(FormatError::Truncated));
        }
        let t = self.rest[0];
        let len = u16::from_le_bytes([self.rest[1], self.rest[2]]) as usize;
        if self.rest.len() < 3 + len {
            self.rest = &[];
            return Some(Err(FormatError::Truncated));
        }
        let body = &self.rest[3..3 + len];
        self.rest = &self.rest[3 + len..];
        Some(decode_record(t, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_super() -> SuperBlock {
        SuperBlock {
            seq: 3,
            uuid: Uuid::new_v4(),
            bstype: *b"LVOLSTORE\0\0\0\0\0\0\0",
            io_unit: 512,
            cluster_size: 1 << 20,
            granule: 4096,
            total_clusters: 64,
            md_clusters: 2,
            max_clusters: 128,
            max_blobs: 64,
            cp_start: [2, 100],
            cp_blocks: 98,
            log_start: 198,
            log_blocks: 256,
            cp_slot: 1,
            cp_used: 3,
            cp_id: 9,
            epoch: 4,
            log_head: 17,
            clean: true,
        }
    }

    #[test]
    fn super_block_round_trips_and_refuses_any_flipped_bit() {
        let sb = sample_super();
        let b = sb.encode();
        assert_eq!(SuperBlock::decode(&b[..], 64 << 20).unwrap(), sb);
        for bit in [0, 8 * 20, 8 * 100 + 3, 8 * 4095 + 7] {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(SuperBlock::decode(&c[..], 64 << 20).is_err(), "bit {bit}");
        }
        assert!(SuperBlock::decode(&b[..], 63 << 20).is_err(), "a store larger than its device is refused");
    }

    #[test]
    fn every_record_round_trips() {
        let all = vec![
            Record::Create { id: 5, num_clusters: 9, flags: FLAG_THIN, parent: Parent::Blob(2) },
            Record::Create { id: 6, num_clusters: 9, flags: 0, parent: Parent::External(Uuid::new_v4()) },
            Record::Delete { id: 5 },
            Record::Resize { id: 5, num_clusters: 1 },
            Record::Flags { id: 5, flags: FLAG_READ_ONLY },
            Record::SetParent { id: 5, parent: Parent::None },
            Record::Xattr { id: 0, name: "name".into(), value: Some(b"lvs0".to_vec()) },
            Record::Xattr { id: 3, name: "uuid".into(), value: None },
            Record::Map { id: 5, cluster: 1, phys: 7, first: 3, count: 2 },
            Record::MapRun { id: 5, cluster: 0, phys: 10, count: 4 },
            Record::MapBits { id: 5, cluster: 2, phys: 11, bits: vec![0xf0; 32] },
            Record::Release { id: 5, cluster: 2 },
            Record::Move { from: 5, to: 6 },
            Record::NextId { next: 77 },
            Record::Blobs { ids: vec![1, 2, 3] },
            Record::Used { first: 0, bits: vec![1, 2, 3] },
            Record::Commit,
        ];
        let mut bytes = Vec::new();
        for r in &all {
            r.encode(&mut bytes);
        }
        let back: Vec<Record> = records(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(back, all);
        // Every truncation is an error, never a panic.
        for cut in 0..bytes.len() {
            let _ = records(&bytes[..cut]).count();
        }
    }

    #[test]
    fn log_block_of_another_epoch_or_seq_ends_the_log() {
        let b = encode_log_block(3, 10, b"abc");
        assert_eq!(decode_log_block(&b[..], 3, 10), Some(&b"abc"[..]));
        assert_eq!(decode_log_block(&b[..], 4, 10), None);
        assert_eq!(decode_log_block(&b[..], 3, 11), None);
    }
}
