//! The on-member superblock: what an array is, which members it has, and its write-intent
//! bitmaps, at the start of every member (the data area follows at [`DATA_OFFSET`]).
//! The byte layout is documented in docs/architecture.md ("RAID").

use super::layout::RaidLevel;
use uuid::Uuid;

/// "FERRYRD1".
pub const MAGIC: [u8; 8] = *b"FERRYRD1";
/// Format version.
pub const VERSION: u32 = 1;
/// Bytes of the header (the bitmaps follow it).
pub const HEADER_BYTES: usize = 4096;
/// Bytes reserved at the start of each member: the data area starts here.
pub const DATA_OFFSET: u64 = 1 << 20;
/// Most members a superblock describes.
pub const MAX_SLOTS: usize = 96;
/// Longest array name (SPDK's `RAID_BDEV_SB_NAME_SIZE` - 1).
pub const NAME_MAX: usize = 63;
/// Largest bitmap, in bytes (each of the two).
pub const MAX_BITMAP_BYTES: usize = 4096;
const SLOTS_AT: usize = 256;
const SLOT_BYTES: usize = 40;

/// What the superblock says of a member slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotMark {
    /// No member (removed or failed): the array runs without it.
    Missing = 0,
    /// A member in sync (or being rebuilt: then not counted to assemble).
    Configured = 1,
    /// A member being rebuilt: written, but not readable until the rebuild ends.
    Rebuilding = 2,
}

/// One member slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SbSlot {
    /// The member bdev's uuid (nil when none was ever there).
    pub uuid: Uuid,
    /// Its state.
    pub mark: SlotMark,
    /// Whether the member that left this slot was in sync when it left, so that the regions
    /// marked in the degraded bitmap are all it misses.
    pub delta_ok: bool,
    /// Blocks of its data area the array uses.
    pub data_blocks: u64,
}

/// A decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Bumped at every write; the highest valid one wins at assembly.
    pub seq: u64,
    /// Whether the array was closed cleanly (no resync needed).
    pub clean: bool,
    /// The array's (the raid bdev's) uuid.
    pub uuid: Uuid,
    /// The array's name.
    pub name: String,
    /// Its level.
    pub level: RaidLevel,
    /// SPDK's strip size in KiB (0 for raid1).
    pub strip_size_kb: u32,
    /// Block size of array and members.
    pub block_size: u32,
    /// Blocks of the array.
    pub num_blocks: u64,
    /// Blocks per bitmap bit (0: no bitmap).
    pub region_blocks: u64,
    /// Bits in each bitmap.
    pub bits: u64,
    /// The members.
    pub slots: Vec<SbSlot>,
    /// Regions written while a member was missing or being rebuilt.
    pub degraded: Vec<u64>,
    /// Regions written since the array was last closed cleanly.
    pub active: Vec<u64>,
}

/// Why bytes are not a superblock.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SbError {
    /// No magic: not a Ferry RAID member.
    #[error("no RAID superblock")]
    NoMagic,
    /// Magic present, but the contents are inconsistent or damaged.
    #[error("damaged RAID superblock: {0}")]
    Damaged(&'static str),
}

/// Bytes of one bitmap of `bits` bits (whole 64-bit words).
pub fn bitmap_bytes(bits: u64) -> usize {
    bits.div_ceil(64) as usize * 8
}

/// The bitmap granularity for a member data area of `data_blocks` blocks: at least 1 MiB,
/// a power of two, few enough regions to fit one bitmap in [`MAX_BITMAP_BYTES`].
pub fn region_blocks_for(data_blocks: u64, block_size: u32) -> u64 {
    let min = ((1u64 << 20) / block_size as u64).max(1);
    let max_bits = (MAX_BITMAP_BYTES * 8) as u64;
    data_blocks.div_ceil(max_bits).next_power_of_two().max(min)
}

impl Superblock {
    /// Bytes the encoded superblock takes, rounded up to `block_size`.
    pub fn encoded_len(&self) -> usize {
        let raw = HEADER_BYTES + 2 * bitmap_bytes(self.bits);
        raw.div_ceil(self.block_size as usize) * self.block_size as usize
    }

    /// The superblock's bytes (checksummed).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.encoded_len()];
        b[0..8].copy_from_slice(&MAGIC);
        put32(&mut b, 8, VERSION);
        put32(&mut b, 12, HEADER_BYTES as u32);
        put32(&mut b, 20, self.clean as u32);
        put64(&mut b, 24, self.seq);
        b[32..48].copy_from_slice(self.uuid.as_bytes());
        let name = self.name.as_bytes();
        b[48..48 + name.len().min(NAME_MAX)].copy_from_slice(&name[..name.len().min(NAME_MAX)]);
        b[112] = self.level.code();
        b[113] = self.slots.len() as u8;
        put32(&mut b, 116, self.strip_size_kb);
        put32(&mut b, 120, self.block_size);
        put32(&mut b, 124, bitmap_bytes(self.bits) as u32);
        put64(&mut b, 128, self.num_blocks);
        put64(&mut b, 136, DATA_OFFSET);
        put64(&mut b, 144, self.region_blocks);
        put64(&mut b, 152, self.bits);
        for (i, s) in self.slots.iter().enumerate() {
            let at = SLOTS_AT + i * SLOT_BYTES;
            b[at..at + 16].copy_from_slice(s.uuid.as_bytes());
            b[at + 16] = s.mark as u8;
            b[at + 17] = s.delta_ok as u8;
            put64(&mut b, at + 24, s.data_blocks);
        }
        let bm = bitmap_bytes(self.bits);
        for (i, w) in self.degraded.iter().chain(self.active.iter()).enumerate() {
            let at = HEADER_BYTES + i * 8;
            if at + 8 <= HEADER_BYTES + 2 * bm {
                put64(&mut b, at, *w);
            }
        }
        let crc = crc32c::crc32c(&b);
        put32(&mut b, 16, crc);
        b
    }

    /// Decodes a superblock from the start of a member (`bytes` holds at least the header;
    /// [`Superblock::encoded_len`] bytes for the bitmaps).
    pub fn decode(bytes: &[u8]) -> Result<Superblock, SbError> {
        if bytes.len() < HEADER_BYTES || bytes[0..8] != MAGIC {
            return Err(SbError::NoMagic);
        }
        if get32(bytes, 8) != VERSION || get32(bytes, 12) != HEADER_BYTES as u32 {
            return Err(SbError::Damaged("unknown version"));
        }
        let bits = get64(bytes, 152);
        let bm = get32(bytes, 124) as usize;
        if bm > MAX_BITMAP_BYTES || bm != bitmap_bytes(bits) {
            return Err(SbError::Damaged("bitmap size"));
        }
        let block_size = get32(bytes, 120);
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(SbError::Damaged("block size"));
        }
        let len = (HEADER_BYTES + 2 * bm).div_ceil(block_size as usize) * block_size as usize;
        if bytes.len() < len {
            return Err(SbError::Damaged("truncated"));
        }
        let mut copy = bytes[..len].to_vec();
        let crc = get32(&copy, 16);
        put32(&mut copy, 16, 0);
        if crc32c::crc32c(&copy) != crc {
            return Err(SbError::Damaged("checksum"));
        }
        let level = RaidLevel::from_code(copy[112]).ok_or(SbError::Damaged("level"))?;
        let n = copy[113] as usize;
        if n == 0 || n > MAX_SLOTS || get64(&copy, 136) != DATA_OFFSET {
            return Err(SbError::Damaged("geometry"));
        }
        let uuid = Uuid::from_slice(&copy[32..48]).map_err(|_| SbError::Damaged("uuid"))?;
        let name_raw = &copy[48..112];
        let end = name_raw.iter().position(|&c| c == 0).unwrap_or(NAME_MAX);
        let name = std::str::from_utf8(&name_raw[..end]).map_err(|_| SbError::Damaged("name"))?.to_string();
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let at = SLOTS_AT + i * SLOT_BYTES;
            let mark = match copy[at + 16] {
                0 => SlotMark::Missing,
                1 => SlotMark::Configured,
                2 => SlotMark::Rebuilding,
                _ => return Err(SbError::Damaged("slot state")),
            };
            slots.push(SbSlot {
                uuid: Uuid::from_slice(&copy[at..at + 16]).map_err(|_| SbError::Damaged("slot uuid"))?,
                mark,
                delta_ok: copy[at + 17] != 0,
                data_blocks: get64(&copy, at + 24),
            });
        }
        let words = bm / 8;
        let word = |i: usize| get64(&copy, HEADER_BYTES + i * 8);
        Ok(Superblock {
            seq: get64(&copy, 24),
            clean: get32(&copy, 20) & 1 != 0,
            uuid,
            name,
            level,
            strip_size_kb: get32(&copy, 116),
            block_size,
            num_blocks: get64(&copy, 128),
            region_blocks: get64(&copy, 144),
            bits,
            slots,
            degraded: (0..words).map(word).collect(),
            active: (words..2 * words).map(word).collect(),
        })
    }
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            seq: 7,
            clean: false,
            uuid: Uuid::new_v4(),
            name: "r1".into(),
            level: RaidLevel::Raid1,
            strip_size_kb: 0,
            block_size: 512,
            num_blocks: 10_000,
            region_blocks: 2048,
            bits: 5,
            slots: vec![
                SbSlot { uuid: Uuid::new_v4(), mark: SlotMark::Configured, delta_ok: false, data_blocks: 10_000 },
                SbSlot { uuid: Uuid::new_v4(), mark: SlotMark::Missing, delta_ok: true, data_blocks: 10_000 },
            ],
            degraded: vec![0b10100],
            active: vec![1],
        }
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let sb = sample();
        let mut bytes = sb.encode();
        assert_eq!(Superblock::decode(&bytes), Ok(sb));
        bytes[HEADER_BYTES] ^= 1;
        assert_eq!(Superblock::decode(&bytes), Err(SbError::Damaged("checksum")));
        assert_eq!(Superblock::decode(&[0u8; HEADER_BYTES]), Err(SbError::NoMagic));
        assert!(Superblock::decode(&bytes[..100]).is_err());
    }

    #[test]
    fn regions_fit_the_bitmap() {
        assert_eq!(region_blocks_for(65536, 512), 2048);
        let huge = 1u64 << 40;
        let r = region_blocks_for(huge, 512);
        assert!(huge.div_ceil(r) as usize <= MAX_BITMAP_BYTES * 8);
    }
}
