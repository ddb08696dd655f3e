//! RAID levels and where each block of the array lives: raid0 stripes strips round-robin over
//! the members, concat appends the members one after the other, raid1 mirrors every block.

/// A RAID level, by SPDK's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaidLevel {
    /// Striping, no redundancy.
    Raid0,
    /// Mirroring.
    Raid1,
    /// Members one after another, no redundancy.
    Concat,
}

impl RaidLevel {
    /// SPDK's `raid_level` strings (`raid0`/`0`, `raid1`/`1`, `concat`). `raid5f`/`5f` are
    /// SPDK levels Ferry does not build: `Err(())` (SPDK: "Unsupported raid level", EINVAL).
    /// Anything else: None.
    pub fn parse(s: &str) -> Option<Result<RaidLevel, ()>> {
        match s {
            "raid0" | "0" => Some(Ok(RaidLevel::Raid0)),
            "raid1" | "1" => Some(Ok(RaidLevel::Raid1)),
            "concat" => Some(Ok(RaidLevel::Concat)),
            "raid5f" | "5f" => Some(Err(())),
            _ => None,
        }
    }

    /// SPDK's name for the level.
    pub fn name(self) -> &'static str {
        match self {
            RaidLevel::Raid0 => "raid0",
            RaidLevel::Raid1 => "raid1",
            RaidLevel::Concat => "concat",
        }
    }

    /// Fewest members SPDK accepts (`base_bdevs_min`).
    pub fn min_members(self) -> usize {
        match self {
            RaidLevel::Raid1 => 2,
            RaidLevel::Raid0 | RaidLevel::Concat => 1,
        }
    }

    /// Whether the array survives losing a member.
    pub fn redundant(self) -> bool {
        self == RaidLevel::Raid1
    }

    /// The level's code in the superblock.
    pub fn code(self) -> u8 {
        match self {
            RaidLevel::Raid0 => 0,
            RaidLevel::Raid1 => 1,
            RaidLevel::Concat => 2,
        }
    }

    /// The level of a superblock code.
    pub fn from_code(c: u8) -> Option<RaidLevel> {
        match c {
            0 => Some(RaidLevel::Raid0),
            1 => Some(RaidLevel::Raid1),
            2 => Some(RaidLevel::Concat),
            _ => None,
        }
    }
}

/// A piece of an array I/O on one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Member slot.
    pub member: usize,
    /// First block on the member's data area (add its data offset for the member LBA).
    pub member_block: u64,
    /// Blocks into the array I/O where this piece starts.
    pub io_block: u64,
    /// Blocks.
    pub blocks: u64,
}

/// The geometry of an array: fixed from creation.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The level.
    pub level: RaidLevel,
    /// Strip size in blocks (0 for raid1).
    pub strip_blocks: u64,
    /// Blocks of each member's data area used by the array.
    pub member_blocks: Vec<u64>,
    /// Blocks of the array.
    pub num_blocks: u64,
}

impl Layout {
    /// The geometry of `level` over members whose data areas hold `available` blocks each;
    /// None when the array would be empty.
    pub fn new(level: RaidLevel, strip_blocks: u64, available: &[u64]) -> Option<Layout> {
        let n = available.len() as u64;
        let (member_blocks, num_blocks) = match level {
            RaidLevel::Raid1 => {
                let min = *available.iter().min()?;
                (vec![min; available.len()], min)
            }
            RaidLevel::Raid0 => {
                let min = available.iter().min()? / strip_blocks * strip_blocks;
                (vec![min; available.len()], min.checked_mul(n)?)
            }
            RaidLevel::Concat => {
                let each: Vec<u64> = available.iter().map(|a| a / strip_blocks * strip_blocks).collect();
                let total = each.iter().try_fold(0u64, |s, b| s.checked_add(*b))?;
                (each, total)
            }
        };
        (num_blocks > 0).then_some(Layout { level, strip_blocks, member_blocks, num_blocks })
    }

    /// Splits array blocks `[offset, offset + blocks)` at strip and member boundaries into
    /// `out` (cleared first). raid1 has no pieces (every member holds every block).
    pub fn split(&self, offset: u64, blocks: u64, out: &mut Vec<Piece>) {
        out.clear();
        let end = offset + blocks;
        let mut pos = offset;
        match self.level {
            RaidLevel::Raid1 => {}
            RaidLevel::Raid0 => {
                let n = self.member_blocks.len() as u64;
                while pos < end {
                    let strip = pos / self.strip_blocks;
                    let within = pos % self.strip_blocks;
                    let len = (self.strip_blocks - within).min(end - pos);
                    out.push(Piece {
                        member: (strip % n) as usize,
                        member_block: (strip / n) * self.strip_blocks + within,
                        io_block: pos - offset,
                        blocks: len,
                    });
                    pos += len;
                }
            }
            RaidLevel::Concat => {
                let mut start = 0u64;
                for (m, &size) in self.member_blocks.iter().enumerate() {
                    if pos >= end {
                        break;
                    }
                    let stop = start + size;
                    if pos < stop {
                        let len = (stop - pos).min(end - pos);
                        out.push(Piece { member: m, member_block: pos - start, io_block: pos - offset, blocks: len });
                        pos += len;
                    }
                    start = stop;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raid0_splits_at_strips_round_robin() {
        let l = Layout::new(RaidLevel::Raid0, 8, &[100, 90]).unwrap();
        assert_eq!(l.member_blocks, vec![88, 88]);
        assert_eq!(l.num_blocks, 176);
        let mut out = Vec::new();
        l.split(6, 12, &mut out);
        assert_eq!(
            out,
            vec![
                Piece { member: 0, member_block: 6, io_block: 0, blocks: 2 },
                Piece { member: 1, member_block: 0, io_block: 2, blocks: 8 },
                Piece { member: 0, member_block: 8, io_block: 10, blocks: 2 },
            ]
        );
    }

    #[test]
    fn concat_splits_at_members() {
        let l = Layout::new(RaidLevel::Concat, 4, &[10, 21]).unwrap();
        assert_eq!(l.member_blocks, vec![8, 20]);
        let mut out = Vec::new();
        l.split(6, 4, &mut out);
        assert_eq!(
            out,
            vec![
                Piece { member: 0, member_block: 6, io_block: 0, blocks: 2 },
                Piece { member: 1, member_block: 0, io_block: 2, blocks: 2 },
            ]
        );
    }

    #[test]
    fn levels_parse_as_spdk() {
        assert_eq!(RaidLevel::parse("0"), Some(Ok(RaidLevel::Raid0)));
        assert_eq!(RaidLevel::parse("1"), Some(Ok(RaidLevel::Raid1)));
        assert_eq!(RaidLevel::parse("raid5f"), Some(Err(())));
        assert_eq!(RaidLevel::parse("raid6"), None);
    }
}
