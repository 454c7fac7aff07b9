#![doc = include_str!("../README.md")]

mod rewrite;
mod settings;
mod token;

pub use rewrite::{RewriteError, rewrite_html};
pub use settings::TrackingSettings;
pub use token::{Link, Rejected, Signer, Target};
