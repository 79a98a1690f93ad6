//! What a rekey costs in CPU (`cargo bench -p dtun-proto --bench rekey`): the client's side
//! (its Init: an X25519 key and an ML-KEM-768 key pair; then the Reply: X25519 agreement and
//! decapsulation), the server's side (checking the encapsulation key, its X25519 key and
//! agreement, encapsulation), and the key schedule's step (HKDF, both directions' keys).

use criterion::{Criterion, criterion_group, criterion_main};
use ring::rand::SystemRandom;

use dtun_proto::rekey::message::{init_message, reply_message};
use dtun_proto::rekey::{EpochSecret, Initiator, respond};

fn bench_rekey(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let mut g = c.benchmark_group("rekey");
    g.bench_function("client (Init, then Reply)", |b| {
        let (probe, _) = {
            let i = Initiator::new(&rng).unwrap();
            respond(i.share(), &rng).unwrap()
        };
        b.iter(|| {
            let i = Initiator::new(&rng).unwrap();
            // Another Init's Reply: the same work (the secrets differ, the cost does not).
            std::hint::black_box(i.finish(&probe).unwrap());
        })
    });
    let init = Initiator::new(&rng).unwrap();
    g.bench_function("server (Reply)", |b| {
        b.iter(|| std::hint::black_box(respond(init.share(), &rng).unwrap()))
    });
    let (reply, shared) = respond(init.share(), &rng).unwrap();
    let (im, rm) = (init_message(2, init.share()), reply_message(2, &reply));
    let s1 = EpochSecret::from_bytes(1, [7; 32]);
    g.bench_function("schedule (next epoch and its keys)", |b| {
        b.iter(|| {
            let s2 = s1.next(&shared, &im, &rm).unwrap();
            std::hint::black_box(s2.keys())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_rekey);
criterion_main!(benches);
