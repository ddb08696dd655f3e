//! Hostile metadata on real store images: random corruption anywhere in the metadata (raw,
//! and re-sealed with a valid checksum so the parsers behind the CRC see it) loads or fails
//! cleanly, never panics; a damaged checkpoint section quarantines exactly its blob, whose
//! clusters are never reused; a damaged newer super block falls back to the older copy.

use super::check;
use super::crash_tests::{open_desc, read_loaded, recording_bdev, sample_store, CLUSTER, DEVICE};
use super::format::{self, Section, SuperBlock, BLOCK};
use super::load::{self, Loaded, MemReader};
use super::state::QUARANTINED;
use super::store::Store;
use crate::bdev::IoType;
use crate::framework::task::block_on;
use crate::test_rng::Rng;

fn load(img: &[u8]) -> Result<Loaded, load::LoadError> {
    load::run_now(load::load(&MemReader(img), DEVICE))
}

/// Recomputes a metadata block's checksum (as `format::seal` does).
fn reseal(block: &mut [u8]) {
    let c = crc32c::crc32c(&block[..BLOCK - 4]);
    block[BLOCK - 4..].copy_from_slice(&c.to_le_bytes());
}

/// The metadata blocks a store uses: both super copies, its checkpoint, its log.
fn used_blocks(l: &Loaded) -> Vec<u64> {
    let sb = &l.sb;
    let cp = sb.cp_start[sb.cp_slot as usize];
    let mut v = vec![0, 1];
    v.extend(cp..cp + sb.cp_used);
    v.extend((sb.log_head..l.log_tail.max(sb.log_head + 1)).map(|s| sb.log_block(s)));
    v
}

#[test]
fn random_corruption_of_metadata_loads_or_fails_cleanly() {
    let (img, _) = sample_store("hostile_random", false);
    let good = load(&img).expect("the sample loads");
    let used = used_blocks(&good);
    let md_blocks = good.sb.md_clusters * CLUSTER / BLOCK as u64;
    let (mut ok, mut refused, mut quarantines) = (0, 0, 0);
    let mut whole = img.clone();
    for seed in 0..3000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // Mostly blocks in use (where damage matters), sometimes anywhere in the region.
        let blocks = 1 + rng.below(3);
        let mut touched = Vec::new();
        for _ in 0..blocks {
            let b = if rng.one_in(5) { rng.below(md_blocks) } else { used[rng.below(used.len() as u64) as usize] };
            let at = b as usize * BLOCK;
            let block = &mut whole[at..at + BLOCK];
            match rng.below(5) {
                0 | 1 => {
                    for _ in 0..1 + rng.below(8) {
                        let i = rng.below(BLOCK as u64) as usize;
                        block[i] ^= 1 << rng.below(8);
                    }
                }
                2 => {
                    // A header field or the start of the payload: lengths, ids, counts.
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(64) as usize;
                        block[i] = rng.next() as u8;
                    }
                }
                3 => block.iter_mut().for_each(|x| *x = rng.next() as u8),
                _ => {
                    // Another used block copied here (stale or misplaced metadata).
                    let from = used[rng.below(used.len() as u64) as usize] as usize * BLOCK;
                    let copy = img[from..from + BLOCK].to_vec();
                    block.copy_from_slice(&copy);
                }
            }
            // Half the time the damage carries a valid checksum: the parsers must cope.
            if rng.one_in(2) {
                reseal(block);
            }
            touched.push(at);
        }
        let r = std::panic::catch_unwind(|| {
            let outcome = load(&whole);
            if let Ok(l) = &outcome {
                // Whatever loaded is usable: the checker and every blob's reads run.
                let _ = check::check_loaded(l);
                for &id in l.state.blobs.keys() {
                    let _ = read_loaded(&l.state, &whole, id);
                }
            }
            outcome.map(|l| l.state.quarantined.len())
        });
        match r {
            Ok(Ok(q)) => {
                ok += 1;
                quarantines += (q > 0) as u64;
            }
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
            Err(_) => panic!("seed {seed}: the load panicked"),
        }
        for at in touched {
            whole[at..at + BLOCK].copy_from_slice(&img[at..at + BLOCK]);
        }
    }
    println!("hostile metadata: 3000 cases, {ok} loaded ({quarantines} with quarantined blobs), {refused} refused");
    assert!(ok > 100 && refused > 100 && quarantines > 10, "{ok} loaded, {refused} refused, {quarantines} quarantined");
}

#[test]
fn a_damaged_checkpoint_section_quarantines_only_its_blob_whose_clusters_stay_unused() {
    let (mut img, contents) = sample_store("hostile_cp", true);
    let good = load(&img).unwrap();
    let ids: Vec<u64> = contents.keys().copied().collect();
    let victim = ids[0]; // the thick blob: nobody reads through it
    let victim_clusters: Vec<u64> = good.state.blobs[&victim].map.iter().copied().filter(|&p| p != 0).collect();
    let sb = &good.sb;
    let cp = sb.cp_start[sb.cp_slot as usize];
    let mut hit = false;
    for i in 0..sb.cp_used {
        let at = ((cp + i) as usize) * BLOCK;
        if let Ok((h, _)) = format::decode_cp_block(&img[at..at + BLOCK], sb.cp_id, i as u32) {
            if h.section == Section::Blob(victim) {
                img[at + 100] ^= 0x40;
                hit = true;
            }
        }
    }
    assert!(hit, "the victim has a checkpoint section");
    let l = load(&img).expect("the store loads without the victim");
    assert_eq!(l.state.quarantined.keys().copied().collect::<Vec<_>>(), vec![victim]);
    for &id in &ids[1..] {
        assert_eq!(read_loaded(&l.state, &img, id).as_ref(), Some(&contents[&id]), "blob {id} keeps its data");
    }
    for &p in &victim_clusters {
        assert_eq!(l.state.owner[p as usize], QUARANTINED, "cluster {p} is held back");
    }
    assert!(check::check_loaded(&l).problems.iter().any(|p| p.contains("quarantined")));

    // Opened by the engine: the blob stays quarantined, and filling the store never writes
    // the clusters it held.
    let rec = recording_bdev("hostile_cp_open", DEVICE);
    rec.0.lock().unwrap().image.copy_from_slice(&img);
    let held = victim_clusters.clone();
    let written = block_on(0, move || async move {
        let (store, loaded) = Store::open(open_desc("hostile_cp_open")).await.expect("open");
        assert!(loaded.state.quarantined.contains_key(&victim));
        let free = store.with_state(|s| s.free_clusters());
        let b = store.create_blob(free + 2, format::FLAG_THIN, super::Parent::None, vec![]).await.unwrap();
        let mut n = 0;
        while super::crash_tests::blob_io(&store, b, IoType::Write, n * CLUSTER, &[0xa5; 4096]).await.is_ok() {
            n += 1;
        }
        assert_eq!(n, free, "every free cluster, and only those, was allocated");
        store.with_state(|s| held.iter().all(|&p| s.owner[p as usize] == QUARANTINED))
    })
    .unwrap();
    assert!(written, "quarantined clusters stayed out of use");
    let after = rec.image();
    for &p in &victim_clusters {
        let r = (p * CLUSTER) as usize..((p + 1) * CLUSTER) as usize;
        assert!(after[r.clone()] == img[r], "cluster {p} of the quarantined blob untouched");
    }
    // And a reload after the refold still knows the blob is quarantined.
    let l = load(&after).unwrap();
    assert!(l.state.quarantined.contains_key(&victim), "quarantine survives a checkpoint");
}

#[test]
fn a_damaged_newer_super_block_falls_back_to_the_older_copy() {
    let (mut img, contents) = sample_store("hostile_super", true);
    let supers: Vec<SuperBlock> =
        (0..2).map(|c| SuperBlock::decode(&img[c * BLOCK..(c + 1) * BLOCK], DEVICE).unwrap()).collect();
    let newer = if supers[0].seq > supers[1].seq { 0 } else { 1 };
    let older_seq = supers[1 - newer].seq;
    assert!(supers[newer].seq > older_seq);
    img[newer * BLOCK + 200] ^= 1;
    let l = load(&img).expect("the older copy loads");
    assert_eq!(l.sb.seq, older_seq, "the older super block was used");
    assert!(l.warnings.iter().any(|w| w.contains(&format!("super block copy {newer}"))), "{:?}", l.warnings);
    assert!(l.state.quarantined.is_empty());
    for (id, want) in &contents {
        assert_eq!(read_loaded(&l.state, &img, *id).as_ref(), Some(want), "blob {id} via the older copy and the log");
    }
    // Both copies damaged: a clear error, not a panic.
    img[(1 - newer) * BLOCK + 200] ^= 1;
    let e = load(&img).expect_err("no valid super block");
    assert!(e.to_string().contains("corrupt"), "{e}");
}

#[test]
fn a_sealed_checkpoint_block_claiming_a_huge_section_is_refused_without_allocating_it() {
    // Found by the fuzz target: `parts` sized a table before anything bounded it.
    let (mut img, contents) = sample_store("hostile_parts", true);
    let good = load(&img).unwrap();
    let (sb, victim) = (&good.sb, *contents.keys().next().unwrap());
    let cp = sb.cp_start[sb.cp_slot as usize];
    let i = (0..sb.cp_used)
        .find(|&i| {
            let at = ((cp + i) as usize) * BLOCK;
            format::decode_cp_block(&img[at..at + BLOCK], sb.cp_id, i as u32)
                .is_ok_and(|(h, _)| h.section == Section::Blob(victim))
        })
        .expect("the victim's section");
    let at = ((cp + i) as usize) * BLOCK;
    img[at + 36..at + 40].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut img[at..at + BLOCK]);
    let l = load(&img).expect("only that blob is lost");
    assert_eq!(l.state.quarantined.keys().copied().collect::<Vec<_>>(), vec![victim]);
}
