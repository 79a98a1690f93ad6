//! The hybrid exchange: X25519 (ring) together with ML-KEM-768 (FIPS 203, libcrux-ml-kem).
//! The client starts ([`Initiator`]: its X25519 share and an ML-KEM encapsulation key), the
//! server answers ([`respond`]: its share and the ciphertext); both end with the same two
//! shared secrets ([`Shared`]). Randomness is passed in.

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::rand::SecureRandom;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use libcrux_ml_kem::mlkem768;

use super::RekeyError;

/// Length of an X25519 share.
pub const X25519_LEN: usize = 32;
/// Length of an ML-KEM-768 encapsulation key.
pub const EK_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const CT_LEN: usize = 1088;
/// Length of each shared secret.
pub const SHARED_LEN: usize = 32;

/// The initiator's half of the message: its X25519 share and ML-KEM encapsulation key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitShare {
    pub x25519: [u8; X25519_LEN],
    pub ek: Box<[u8; EK_LEN]>,
}

/// The responder's half: its X25519 share and the ML-KEM ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyShare {
    pub x25519: [u8; X25519_LEN],
    pub ct: Box<[u8; CT_LEN]>,
}

/// Both shared secrets of one exchange, wiped when dropped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Shared {
    pub x25519: [u8; SHARED_LEN],
    pub mlkem: [u8; SHARED_LEN],
}

/// The initiator between its message and the answer: the X25519 private key (ring's, used
/// once) and the seed of the ML-KEM key pair (wiped when dropped; the key pair is made again
/// from it to decapsulate, so no decapsulation key lives between the two messages).
pub struct Initiator {
    x25519: EphemeralPrivateKey,
    kem_seed: Zeroizing<[u8; 64]>,
    share: InitShare,
}

impl Initiator {
    pub fn new(rng: &dyn SecureRandom) -> Result<Initiator, RekeyError> {
        let x25519 = EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| RekeyError::Random)?;
        let public = x25519
            .compute_public_key()
            .map_err(|_| RekeyError::Random)?;
        let mut kem_seed = Zeroizing::new([0u8; 64]);
        rng.fill(&mut kem_seed[..])
            .map_err(|_| RekeyError::Random)?;
        let pair = mlkem768::generate_key_pair(*kem_seed);
        let mut share = InitShare {
            x25519: [0; X25519_LEN],
            ek: Box::new([0; EK_LEN]),
        };
        share.x25519.copy_from_slice(public.as_ref());
        share.ek.copy_from_slice(pair.public_key().as_slice());
        wipe(pair);
        Ok(Initiator {
            x25519,
            kem_seed,
            share,
        })
    }

    /// What goes in the Init message.
    pub fn share(&self) -> &InitShare {
        &self.share
    }

    /// The answer came: both shared secrets. The private keys are used up either way.
    pub fn finish(self, reply: &ReplyShare) -> Result<Shared, RekeyError> {
        let x25519 = agreement::agree_ephemeral(
            self.x25519,
            &UnparsedPublicKey::new(&X25519, &reply.x25519),
            |ss| {
                let mut out = [0u8; SHARED_LEN];
                out.copy_from_slice(ss);
                out
            },
        )
        .map_err(|_| RekeyError::X25519)?;
        let pair = mlkem768::generate_key_pair(*self.kem_seed);
        let ct = mlkem768::MlKem768Ciphertext::from(*reply.ct);
        // A ciphertext that is not the one encapsulated gives another secret (FIPS 203's
        // implicit rejection): the next epoch's records then fail to authenticate.
        let mlkem = mlkem768::decapsulate(pair.private_key(), &ct);
        wipe(pair);
        Ok(Shared { x25519, mlkem })
    }
}

/// Overwrites an ML-KEM key pair's decapsulation key (libcrux does not wipe its keys when
/// dropped; copies the compiler made when moving it are beyond reach).
fn wipe(pair: mlkem768::MlKem768KeyPair) {
    let (mut sk, _) = pair.into_parts();
    let n = sk.as_slice().len();
    sk[0..n].zeroize();
}

/// The responder: checks the initiator's shares, answers with its own, and has both shared
/// secrets at once.
pub fn respond(
    init: &InitShare,
    rng: &dyn SecureRandom,
) -> Result<(ReplyShare, Shared), RekeyError> {
    let ek = mlkem768::MlKem768PublicKey::from(*init.ek);
    if !mlkem768::validate_public_key(&ek) {
        return Err(RekeyError::EncapsulationKey);
    }
    let ours = EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| RekeyError::Random)?;
    let public = ours.compute_public_key().map_err(|_| RekeyError::Random)?;
    let x25519 =
        agreement::agree_ephemeral(ours, &UnparsedPublicKey::new(&X25519, &init.x25519), |ss| {
            let mut out = [0u8; SHARED_LEN];
            out.copy_from_slice(ss);
            out
        })
        .map_err(|_| RekeyError::X25519)?;
    let mut randomness = Zeroizing::new([0u8; 32]);
    rng.fill(&mut randomness[..])
        .map_err(|_| RekeyError::Random)?;
    let (ct, mlkem) = mlkem768::encapsulate(&ek, *randomness);
    let mut reply = ReplyShare {
        x25519: [0; X25519_LEN],
        ct: Box::new([0; CT_LEN]),
    };
    reply.x25519.copy_from_slice(public.as_ref());
    reply.ct.copy_from_slice(ct.as_slice());
    Ok((reply, Shared { x25519, mlkem }))
}
