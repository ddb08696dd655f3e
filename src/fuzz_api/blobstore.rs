//! The blobstore target: the metadata loader (super block choice, checkpoint, log replay, the
//! state's record checks) and the offline checker on a device image built from the fuzzer's
//! bytes. Input: entries `[block index u16][4096 bytes]`, placed at that metadata block of an
//! 8 MiB device that is zero elsewhere; the entry's checksum is recomputed unless bit 15 of
//! the index is set, so the parsers behind the CRC see the fuzzer's bytes. The load must end
//! in a store or an error, never a panic, a hang or a huge allocation; a loaded store must be
//! checkable and every blob resolvable.

use super::Input;
use crate::blobstore::blob_io::resolve;
use crate::blobstore::check;
use crate::blobstore::format::BLOCK;
use crate::blobstore::load::{self, BlockRead, ReadFuture};
use std::collections::BTreeMap;

/// The device's size: the geometry of the seeds (`blobstore::crash_tests`).
pub const DEVICE: u64 = 8 << 20;
/// Most blocks an input places.
const MAX_BLOCKS: usize = 96;

/// A device of zeroes with some blocks set.
struct Sparse(BTreeMap<u64, Vec<u8>>);

impl BlockRead for Sparse {
    fn read(&self, start: u64, count: u64) -> ReadFuture<'_> {
        let end = start.checked_add(count).filter(|&e| e <= DEVICE / BLOCK as u64);
        let r = match end {
            None => Err(libc::EIO),
            Some(end) => {
                let mut out = vec![0u8; (count as usize) * BLOCK];
                for (&i, b) in self.0.range(start..end) {
                    let at = ((i - start) as usize) * BLOCK;
                    out[at..at + BLOCK].copy_from_slice(b);
                }
                Ok(out)
            }
        };
        Box::pin(std::future::ready(r))
    }
}

/// Runs one input; returns how far it got (0: no store loaded; else 1 + records replayed +
/// blobs loaded).
pub fn blobstore(data: &[u8]) -> u64 {
    let mut input = Input(data);
    let mut blocks = BTreeMap::new();
    while !input.0.is_empty() && blocks.len() < MAX_BLOCKS {
        let index = input.u16();
        let mut block = input.bytes(BLOCK).to_vec();
        block.resize(BLOCK, 0);
        if index & 0x8000 == 0 {
            let c = crc32c::crc32c(&block[..BLOCK - 4]);
            block[BLOCK - 4..].copy_from_slice(&c.to_le_bytes());
        }
        blocks.insert((index & 0x7fff) as u64 % (DEVICE / BLOCK as u64), block);
    }
    let dev = Sparse(blocks);
    let Ok(loaded) = load::run_now(load::load(&dev, DEVICE)) else { return 0 };
    let report = check::check_loaded(&loaded);
    assert_eq!(report.total, loaded.state.total_clusters);
    let s = &loaded.state;
    for (&id, b) in &s.blobs {
        // The first clusters of each blob (a hostile blob may be huge).
        let len = b.num_clusters.min(4) * s.cluster_size;
        let pieces = resolve(s, id, 0, len);
        assert_eq!(pieces.iter().map(|p| p.len).sum::<u64>(), len, "blob {id} resolves whole");
    }
    1 + loaded.replayed + s.blobs.len() as u64
}

#[cfg(test)]
mod tests {
    use crate::blobstore::crash_tests::sample_store;
    use crate::blobstore::format::BLOCK;
    use std::path::Path;

    /// The seeds: a real store's non-zero metadata blocks, dirty (log to replay) and closed.
    /// Rewritten by `FERRY_WRITE_SEEDS=1 cargo test -p ferry --lib fuzz_api::blobstore`;
    /// otherwise checked to still be what the code makes of such a store.
    #[test]
    fn seeds_are_real_store_metadata() {
        for (name, close) in [("dirty", false), ("closed", true)] {
            let (img, blobs) = sample_store(if close { "fuzz_seed_closed" } else { "fuzz_seed_dirty" }, close);
            let md = 1024 * BLOCK; // past the sample's checkpoint slots and log
            let mut seed = Vec::new();
            for (i, b) in img[..md].chunks(BLOCK).enumerate() {
                if b.iter().any(|&x| x != 0) {
                    seed.extend_from_slice(&(i as u16).to_le_bytes());
                    seed.extend_from_slice(b);
                }
            }
            let reached = super::blobstore(&seed);
            assert!(reached > blobs.len() as u64, "{name}: the seed loads its {} blobs", blobs.len());
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/blobstore").join(name);
            if std::env::var_os("FERRY_WRITE_SEEDS").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &seed).unwrap();
            }
        }
    }
}
