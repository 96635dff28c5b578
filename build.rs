//! Where the binaries are installed (the Makefile's BINDIR), so that a transient unit can name
//! the admission gate the way the unit files do (@bindir@).
fn main() {
    let bindir = std::env::var("HOMELAB_BINDIR").unwrap_or_else(|_| "/usr/bin".to_string());
    println!("cargo:rustc-env=HOMELAB_BINDIR={bindir}");
    println!("cargo:rerun-if-env-changed=HOMELAB_BINDIR");
}
