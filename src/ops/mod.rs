//! Operating dtun: the configuration file (`-config`), checking it (`-check`) and reloading a
//! running server (SIGHUP).

pub mod check;
pub mod config_file;
pub mod reload;
mod values;
