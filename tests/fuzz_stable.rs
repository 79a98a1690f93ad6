//! A stable-toolchain stand-in for `cargo fuzz run client_handshake` where cargo-fuzz is not
//! installed: random mutations (bit flips, byte sets, splices, truncations, insertions, the
//! u16 length fields) of the seeds in `fuzz/corpus/client_handshake/`, each run through the
//! same check the fuzz target runs (`fuzz/checks.rs`). No coverage feedback: it finds what
//! mutations near the seeds find. Run by hand:
//! `DTUN_FUZZ_SECS=600 cargo test --release --test fuzz_stable -- --ignored --nocapture`;
//! a failing input is written to `target/fuzz_stable-crash` before the panic goes on.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
            1 if len > 0 => input[rng.below(len)] = rng.next() as u8,
            2 if len > 0 => {
                let at = rng.below(len);
                input[at] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, 0xfd, 12, 14, 20, 22, 23][rng.below(12)];
            }
            3 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let n = rng.below(other.len() - from + 1);
                let at = rng.below(len + 1);
                input.splice(at..at, other[from..from + n].iter().copied());
            }
            4 if len > 1 => input.truncate(1 + rng.below(len - 1)),
            5 => {
                let at = rng.below(len + 1);
                let n = rng.below(64);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            6 if len > 2 => {
                // A u16 length field (framing or record) set to something nearby.
                let at = rng.below(len - 1);
                let v = u16::from_be_bytes([input[at], input[at + 1]]);
                let v = v.wrapping_add(rng.below(5) as u16).wrapping_sub(2);
                input[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            7 if len > 3 => {
                let a = rng.below(len);
                let b = rng.below(len);
                input.swap(a, b);
            }
            _ => {}
        }
        input.truncate(1 << 16);
    }
}

#[test]
#[ignore = "a fuzzing run of DTUN_FUZZ_SECS seconds; run by hand"]
fn client_handshake_mutations() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/client_handshake");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let secs = std::env::var("DTUN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng(std::process::id() as u64 ^ 0x5eed);
    let (mut execs, mut datagrams) = (0u64, 0u64);
    let mut input = Vec::new();
    while Instant::now() < end {
        for _ in 0..256 {
            input.clear();
            input.extend_from_slice(&seeds[rng.below(seeds.len())]);
            mutate(&mut rng, &seeds, &mut input);
            let r = catch_unwind(AssertUnwindSafe(|| checks::client_handshake(&input)));
            execs += 1;
            match r {
                Ok(n) => datagrams += n as u64,
                Err(_) => {
                    let out =
                        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz_stable-crash");
                    std::fs::write(&out, &input).unwrap();
                    panic!(
                        "client_handshake failed after {execs} executions on {}",
                        out.display()
                    );
                }
            }
        }
    }
    println!(
        "client_handshake: {execs} executions, {datagrams} datagrams fed, 0 crashes in {secs} s"
    );
}
