//! Core masks as SPDK writes them (`0x3`, `[0,1]`, `0-3`).

use thiserror::Error;

/// A parsed core mask could not be understood or names no core.
#[derive(Debug, Error)]
#[error("invalid cpumask {mask:?}: {reason}")]
pub struct CpumaskError {
    mask: String,
    reason: &'static str,
}

/// A set of CPU cores, kept as a sorted list of core numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpumask {
    cores: Vec<u32>,
}

impl Cpumask {
    /// Parses a hex mask (`0x3` or `3`) or an SPDK core list (`[0,2-3]`).
    pub fn parse(text: &str) -> Result<Self, CpumaskError> {
        let err = |reason| CpumaskError { mask: text.to_string(), reason };
        let t = text.trim();
        let mut cores = Vec::new();
        if let Some(list) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (lo, hi) = match part.split_once('-') {
                    Some((lo, hi)) => (lo.trim(), hi.trim()),
                    None => (part, part),
                };
                let lo: u32 = lo.parse().map_err(|_| err("bad core number"))?;
                let hi: u32 = hi.parse().map_err(|_| err("bad core number"))?;
                if lo > hi || hi >= 1024 {
                    return Err(err("core range out of order or above 1023"));
                }
                cores.extend(lo..=hi);
            }
        } else {
            let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
            if hex.is_empty() || hex.len() > 256 {
                return Err(err("empty or over-long hex mask"));
            }
            for (pos, c) in hex.chars().rev().enumerate() {
                let nibble = c.to_digit(16).ok_or_else(|| err("not a hex digit"))?;
                for bit in 0..4 {
                    if nibble & (1 << bit) != 0 {
                        cores.push((pos * 4 + bit) as u32);
                    }
                }
            }
        }
        cores.sort_unstable();
        cores.dedup();
        if cores.is_empty() {
            return Err(err("no core selected"));
        }
        Ok(Self { cores })
    }

    /// A mask of exactly one core.
    pub fn single(core: u32) -> Self {
        Self { cores: vec![core] }
    }

    /// The cores, ascending.
    pub fn cores(&self) -> &[u32] {
        &self.cores
    }

    /// Whether `core` is in the mask.
    pub fn contains(&self, core: u32) -> bool {
        self.cores.binary_search(&core).is_ok()
    }

    /// Every core of `self` that is also in `other`.
    pub fn intersect(&self, other: &Cpumask) -> Vec<u32> {
        self.cores.iter().copied().filter(|c| other.contains(*c)).collect()
    }
}

impl std::fmt::Display for Cpumask {
    /// SPDK's hex form, e.g. `0x3`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = *self.cores.last().unwrap_or(&0) as usize;
        let mut nibbles = vec![0u8; max / 4 + 1];
        for &c in &self.cores {
            nibbles[c as usize / 4] |= 1 << (c % 4);
        }
        write!(f, "0x")?;
        for n in nibbles.iter().rev() {
            write!(f, "{n:x}")?;
        }
        Ok(())
    }
}

/// Restricts the calling thread to `cores` (threads it starts later inherit the set).
pub fn pin_current_thread(cores: &[u32]) -> std::io::Result<()> {
    if cores.is_empty() || cores.iter().any(|&c| c as usize >= libc::CPU_SETSIZE as usize) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set. CPU_SET writes inside it for
    // core < CPU_SETSIZE (checked above), and sched_setaffinity only reads the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &core in cores {
            libc::CPU_SET(core as usize, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_lists() {
        assert_eq!(Cpumask::parse("0x3").unwrap().cores(), &[0, 1]);
        assert_eq!(Cpumask::parse("5").unwrap().cores(), &[0, 2]);
        assert_eq!(Cpumask::parse("[0,2-3]").unwrap().cores(), &[0, 2, 3]);
        assert_eq!(Cpumask::parse("0x10").unwrap().to_string(), "0x10");
        assert_eq!(Cpumask::parse("[1]").unwrap().to_string(), "0x2");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "0x", "0x0", "zz", "[]", "[3-1]", "[a]", "[0-5000]"] {
            assert!(Cpumask::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
