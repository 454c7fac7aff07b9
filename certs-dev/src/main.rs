//! `herald-certs-dev [--force] [OUT_DIR]`: writes development certificates unless a complete
//! set already exists (or `--force` is given), and the development encryption keys that are
//! missing (never replacing one).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut force = false;
    let mut out_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/generated"));
    for argument in std::env::args().skip(1) {
        match argument.as_str() {
            "--force" => force = true,
            other => out_dir = PathBuf::from(other),
        }
    }
    if !force && herald_certs_dev::is_complete(&out_dir) {
        return herald_certs_dev::ensure_keys(&out_dir);
    }
    herald_certs_dev::generate(&out_dir)?;
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "certs-dev: wrote development certificates to {}",
            out_dir.display()
        );
    }
    Ok(())
}
