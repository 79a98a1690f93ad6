//! The one gate of every test that needs root: `common::need_root!()` as its first line. It is
//! the crate `dtun-testgate` (crates/dtun-testgate), which the unit tests of `dtun` and
//! `dtun-linux` that need root share.

pub use dtun_testgate::assert_gated;

/// Returns from the calling test (after printing `SKIPPED <test>: ...`) when this process
/// cannot run tests that need root; panics instead when `CI=true`.
macro_rules! need_root {
    () => {
        dtun_testgate::need_root!()
    };
}
pub(crate) use need_root;
