//! AES-XTS over logical blocks: RustCrypto's `aes` (AES-NI or VAES detected at run time),
//! one XTS data unit (IEEE 1619) per logical block, the tweak made from the block's LBA as
//! SPDK's software accel module makes it.
//!
//! XTS itself is written here over `aes`'s multi-block calls rather than taken from the
//! `xts-mode` crate: `xts-mode` calls the cipher once per 16-byte block, and each call of
//! `aes` 0.9 goes through its run-time backend dispatch, about 350 cycles a block (0.13 GB/s
//! per core measured, docs/performance.md); handing it a batch of blocks fills the AES
//! pipelines. `xts-mode` stays the reference the unit tests compare with, besides IEEE 1619's
//! vectors.

use aes::cipher::consts::U16;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128, Aes256, Block};

/// The XTS tweak of logical block `lba` in SPDK's `SIMPLE_LBA` mode as its software accel
/// module (ISA-L) computes it: a 16-byte IV whose first 8 bytes are zero and whose last 8
/// are the LBA in little-endian order (`iv[0] = 0; iv[1] = lba` on x86). A disk SPDK
/// encrypted with its default (software) accel module therefore reads back with Ferry.
pub fn spdk_tweak(lba: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[8..].copy_from_slice(&lba.to_le_bytes());
    t
}

/// Blocks handed to the cipher at once (512 bytes: its pipelines stay full).
const BATCH: usize = 32;

/// An XTS-AES key pair ready to use: XTS-AES-128 or XTS-AES-256 (data key, tweak key). The
/// AES key schedules are zeroised when it is dropped (`aes`'s `zeroize` feature).
pub enum Xts {
    /// Two 128-bit keys.
    Aes128(Box<(Aes128, Aes128)>),
    /// Two 256-bit keys.
    Aes256(Box<(Aes256, Aes256)>),
}

/// Multiplies a tweak by alpha in GF(2^128) (IEEE 1619's little-endian convention).
#[inline]
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ if t >> 127 == 1 { 0x87 } else { 0 }
}

#[inline]
fn xor(b: &mut Block, t: u128) {
    b.0 = (u128::from_le_bytes(b.0) ^ t).to_le_bytes();
}

/// One data unit (a multiple of 16 bytes) in place: encrypted or decrypted with data key
/// `k1`, its first tweak `tweak` encrypted with `k2`.
fn unit<C>(k1: &C, k2: &C, data: &mut [u8], tweak: [u8; 16], enc: bool)
where
    C: BlockCipherEncrypt + BlockCipherDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let mut t = Block::from(tweak);
    k2.encrypt_block(&mut t);
    let mut t = u128::from_le_bytes(t.0);
    let (blocks, rest) = Block::slice_as_chunks_mut(data);
    debug_assert!(rest.is_empty(), "XTS units here are whole 16-byte blocks");
    let mut tweaks = [0u128; BATCH];
    for batch in blocks.chunks_mut(BATCH) {
        for (b, tw) in batch.iter_mut().zip(tweaks.iter_mut()) {
            *tw = t;
            xor(b, t);
            t = mul_alpha(t);
        }
        if enc {
            k1.encrypt_blocks(batch);
        } else {
            k1.decrypt_blocks(batch);
        }
        for (b, tw) in batch.iter_mut().zip(tweaks.iter()) {
            xor(b, *tw);
        }
    }
}

impl Xts {
    /// The cipher for data key `key1` and tweak key `key2`, both 16 or both 32 bytes.
    pub fn new(key1: &[u8], key2: &[u8]) -> Option<Xts> {
        match (key1.len(), key2.len()) {
            (16, 16) => {
                Some(Xts::Aes128(Box::new((Aes128::new_from_slice(key1).ok()?, Aes128::new_from_slice(key2).ok()?))))
            }
            (32, 32) => {
                Some(Xts::Aes256(Box::new((Aes256::new_from_slice(key1).ok()?, Aes256::new_from_slice(key2).ok()?))))
            }
            _ => None,
        }
    }

    fn run(&self, data: &mut [u8], tweak: [u8; 16], enc: bool) {
        match self {
            Xts::Aes128(k) => unit(&k.0, &k.1, data, tweak, enc),
            Xts::Aes256(k) => unit(&k.0, &k.1, data, tweak, enc),
        }
    }

    /// Encrypts one data unit (a multiple of 16 bytes) in place with IEEE 1619 tweak bytes.
    pub fn encrypt_unit(&self, data: &mut [u8], tweak: [u8; 16]) {
        self.run(data, tweak, true);
    }

    /// Decrypts one data unit in place with IEEE 1619 tweak bytes.
    pub fn decrypt_unit(&self, data: &mut [u8], tweak: [u8; 16]) {
        self.run(data, tweak, false);
    }

    /// Encrypts whole logical blocks of `block_size` bytes (a multiple of 16) in place, the
    /// first being block `lba`.
    pub fn encrypt_blocks(&self, data: &mut [u8], block_size: usize, lba: u64) {
        for (i, u) in data.chunks_exact_mut(block_size).enumerate() {
            self.encrypt_unit(u, spdk_tweak(lba.wrapping_add(i as u64)));
        }
    }

    /// Decrypts whole logical blocks in place (see [`Xts::encrypt_blocks`]).
    pub fn decrypt_blocks(&self, data: &mut [u8], block_size: usize, lba: u64) {
        for (i, u) in data.chunks_exact_mut(block_size).enumerate() {
            self.decrypt_unit(u, spdk_tweak(lba.wrapping_add(i as u64)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The IEEE 1619 tweak of data unit sequence number `n`: little-endian, 16 bytes.
    fn ieee_tweak(n: u128) -> [u8; 16] {
        n.to_le_bytes()
    }

    /// IEEE Std 1619-2007 Annex B: vectors 1-3 (XTS-AES-128) and 10 (XTS-AES-256, 512 bytes).
    #[test]
    fn ieee_1619_vectors() {
        let seq512: String = (0..512).map(|i| format!("{:02x}", i % 256)).collect();
        let v10 = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44\
            680a86ac35adfc3345befecb4bb188fd5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0\
            c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca2a3e7a7d7df7b10355165c8b9a6d0a7d\
            e8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f\
            93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6\
            dc3966380ad8fecb17b6ba02469a020a84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1\
            505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae9be69a2ffeceb1bec9de244fbe15992b\
            11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac\
            6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e9bfdef33943054ff84011493\
            c27b3429eaedb4ed5376441a77ed43851ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa\
            773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";
        let vectors: [(u32, &str, &str, u128, String, &str); 4] = [
            (
                1,
                "00000000000000000000000000000000",
                "00000000000000000000000000000000",
                0,
                "00".repeat(32),
                "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e",
            ),
            (
                2,
                "11111111111111111111111111111111",
                "22222222222222222222222222222222",
                0x33_3333_3333,
                "44".repeat(32),
                "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0",
            ),
            (
                3,
                "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0",
                "22222222222222222222222222222222",
                0x33_3333_3333,
                "44".repeat(32),
                "af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89",
            ),
            (
                10,
                "2718281828459045235360287471352662497757247093699959574966967627",
                "3141592653589793238462643383279502884197169399375105820974944592",
                0xff,
                seq512,
                v10,
            ),
        ];
        for (n, k1, k2, dusn, ptx, ctx) in vectors {
            let xts = Xts::new(&unhex(k1), &unhex(k2)).unwrap();
            let mut data = unhex(&ptx);
            xts.encrypt_unit(&mut data, ieee_tweak(dusn));
            assert_eq!(data, unhex(ctx), "IEEE 1619 vector {n}");
            xts.decrypt_unit(&mut data, ieee_tweak(dusn));
            assert_eq!(data, unhex(&ptx), "IEEE 1619 vector {n} decrypts");
        }
    }

    /// Block `lba` is the data unit whose IEEE sequence number is `lba << 64` (SPDK's software
    /// module's IV), each block with its own tweak.
    #[test]
    fn blocks_use_spdks_lba_tweak_each() {
        let xts = Xts::new(&[1; 32], &[2; 32]).unwrap();
        let plain: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut data = plain.clone();
        xts.encrypt_blocks(&mut data, 512, 1000);
        for (i, unit) in data.chunks(512).enumerate() {
            let mut want = plain[i * 512..(i + 1) * 512].to_vec();
            xts.encrypt_unit(&mut want, ieee_tweak(((1000 + i) as u128) << 64));
            assert_eq!(unit, &want[..], "block {i}");
        }
        assert_ne!(data[..512], data[512..1024], "blocks of other LBAs differ");
        xts.decrypt_blocks(&mut data, 512, 1000);
        assert_eq!(data, plain);
    }

    #[test]
    fn key_sizes_are_128_or_256_bits_each() {
        assert!(Xts::new(&[1; 16], &[2; 16]).is_some());
        assert!(Xts::new(&[1; 32], &[2; 32]).is_some());
        assert!(Xts::new(&[1; 24], &[2; 24]).is_none(), "AES-192 is not an XTS key SPDK takes");
        assert!(Xts::new(&[1; 16], &[2; 32]).is_none());
    }

    /// The same as `xts-mode` (one block per cipher call) on 512- and 4096-byte units, both
    /// key sizes, encrypting and decrypting.
    #[test]
    fn matches_the_xts_mode_crate() {
        use aes::cipher::KeyInit;
        let (k1, k2): (Vec<u8>, Vec<u8>) = ((0..32).collect(), (100..132).collect());
        let plain: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for len in [16usize, 32] {
            let ours = Xts::new(&k1[..len], &k2[..len]).unwrap();
            for bs in [512usize, 4096] {
                let mut a = plain.clone();
                ours.encrypt_blocks(&mut a, bs, 77);
                let mut b = plain.clone();
                for (i, u) in b.chunks_mut(bs).enumerate() {
                    let tweak = xts_mode::Array(spdk_tweak(77 + i as u64));
                    if len == 16 {
                        let x = xts_mode::Xts128::new(
                            aes::Aes128::new_from_slice(&k1[..16]).unwrap(),
                            aes::Aes128::new_from_slice(&k2[..16]).unwrap(),
                        );
                        x.encrypt_sector(u, tweak);
                    } else {
                        let x = xts_mode::Xts128::new(
                            aes::Aes256::new_from_slice(&k1).unwrap(),
                            aes::Aes256::new_from_slice(&k2).unwrap(),
                        );
                        x.encrypt_sector(u, tweak);
                    }
                }
                assert!(a == b, "{len}-byte keys, {bs}-byte blocks");
                ours.decrypt_blocks(&mut a, bs, 77);
                assert!(a == plain, "decrypts back");
            }
        }
    }
}
